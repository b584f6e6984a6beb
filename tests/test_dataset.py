"""Lazily read manifests: the same batches as the eager set, the same filtering and statistics, no
sampler warning; alignments read from their HDF5 storage by forked workers. Oracles: the eager CutSet of
the same file under the same seed; lhotse's own reader; the batches of a loader without workers."""

from __future__ import annotations

import logging
import random
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from lhotse import CutSet
from lhotse.features.io import lookup_cache_or_open

from imputer_asr.config import DataConfig, FeatureConfig
from imputer_asr.data.dataset import AsrDataset, count_cuts, load_cuts, make_loader
from imputer_asr.data.prepare import combine_manifests, filter_cuts
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.training.imputer import align_cuts
from imputer_asr.training.loop import feature_stats

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def aligned_train(tiny_corpus, small_model_config, tmp_path_factory):
    """The tiny training cuts with alignments under an untrained model, in array storage."""
    torch.manual_seed(0)
    model = ImputerModel(small_model_config(tiny_corpus.tokenizer))
    out = tmp_path_factory.mktemp("aligned") / "cuts_train_aligned.jsonl.gz"
    align_cuts(model, load_cuts(tiny_corpus.fbank_cuts("train")), tiny_corpus.tokenizer, out)
    return out


def test_a_lazy_manifest_reads_the_cuts_lhotse_reads(tiny_corpus):
    path = tiny_corpus.fbank_cuts("train")
    cuts = load_cuts(path)
    want = CutSet.from_file(path).to_eager()
    assert cuts.is_lazy and len(cuts) == len(want)
    assert [c.to_dict() for c in cuts] == [c.to_dict() for c in want]
    assert [c.id for c in cuts] == [c.id for c in want]  # a second pass reads the file again


def _batches(cuts: CutSet, tokenizer, train: bool, sort: bool) -> list[dict]:
    """Every batch of one epoch, with SpecAugment's randomness seeded (one process: no workers)."""
    cfg = DataConfig(max_duration=15.0, num_workers=0, num_buckets=3)
    random.seed(0)  # SpecAugment draws from all three
    np.random.seed(0)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(make_loader(cuts, tokenizer, cfg, train=train, sort_by_duration=sort, seed=7))
    eager_warning = [w for w in caught if "eagerly read CutSet" in str(w.message)]
    assert bool(eager_warning) == (train and not sort and not cuts.is_lazy)
    return batches


@pytest.mark.parametrize(("train", "sort"), [(True, False), (True, True), (False, False)])
def test_the_lazy_manifest_gives_the_eager_batches(tiny_corpus, aligned_train, train, sort):
    tok = tiny_corpus.tokenizer
    lazy = _batches(load_cuts(aligned_train), tok, train, sort)
    eager = _batches(CutSet.from_file(aligned_train).to_eager(), tok, train, sort)
    assert [b["cut_ids"] for b in lazy] == [b["cut_ids"] for b in eager]
    every = sorted(load_cuts(aligned_train).ids)
    assert len(lazy) > 1 and sorted(i for b in lazy for i in b["cut_ids"]) == every
    for got, want in zip(lazy, eager, strict=True):
        assert got.keys() == want.keys() and "alignments" in got
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value, key


def test_forked_workers_read_the_alignments_one_process_reads(tiny_corpus, aligned_train, monkeypatch):
    """Two DataLoader workers forked after this process opened the alignment storage (lhotse keeps it
    open): the batches equal a loader's without workers, bit for bit, and each worker opens the
    storage itself instead of reading through the handle it inherited."""
    tok = tiny_corpus.tokenizer
    cuts = load_cuts(aligned_train)
    next(iter(cuts)).custom["alignment"].load()
    assert lookup_cache_or_open.cache_info().currsize > 0  # the handle a worker inherits
    cfg = DataConfig(max_duration=15.0, num_workers=0, num_buckets=3, spec_augment=False)
    want = list(make_loader(cuts, tok, cfg, train=True, seed=7))
    getitem = AsrDataset.__getitem__

    def counting_getitem(self, batch_cuts):  # runs in the worker: the handles it has on starting
        open_before = lookup_cache_or_open.cache_info().currsize
        return {**getitem(self, batch_cuts), "open_before": open_before}

    monkeypatch.setattr(AsrDataset, "__getitem__", counting_getitem)
    got = list(make_loader(cuts, tok, replace(cfg, num_workers=2), train=True, seed=7))
    assert len(got) == len(want) > 2
    assert [b["open_before"] for b in got[:2]] == [0, 0]  # each worker's first batch
    for batch, expected in zip(got, want, strict=True):
        assert batch.keys() - {"open_before"} == expected.keys() and "alignments" in batch
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(batch[key], value), key
            else:
                assert batch[key] == value, key


def test_a_lazy_filter_keeps_the_eager_cuts_and_logs_once(tiny_corpus, caplog):
    path = tiny_corpus.fbank_cuts("train")
    eager = CutSet.from_file(path).to_eager()
    limit = sorted(c.duration for c in eager)[-3]  # drops the two longest
    logged = "filtered 2 of 12 cuts: 2 longer than"
    with caplog.at_level(logging.INFO, logger="imputer_asr"):
        want = filter_cuts(eager, tiny_corpus.tokenizer, FeatureConfig(), max_duration=limit)
    assert caplog.text.count(logged) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imputer_asr"):
        kept = filter_cuts(load_cuts(path), tiny_corpus.tokenizer, FeatureConfig(), max_duration=limit)
        assert caplog.text.count(logged) == 1  # counted when filtered, not when read
        assert kept.is_lazy and len(kept) == len(want) == len(eager) - 2
        assert [c.id for c in kept] == [c.id for c in want] == [c.id for c in kept]
    assert caplog.text.count(logged) == 1


def test_feature_stats_of_a_lazy_manifest_equal_the_eager_ones(tiny_corpus):
    path = tiny_corpus.fbank_cuts("train")
    want = feature_stats(CutSet.from_file(path).to_eager(), max_cuts=5)
    for cuts in (load_cuts(path), load_cuts(path).filter(_always)):  # the second has no len
        got = feature_stats(cuts, max_cuts=5)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))

    def double(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return 2.0 * feats

    mean, std = feature_stats(load_cuts(path), max_cuts=5, shape=double)  # of what the model is fed
    torch.testing.assert_close((mean, std), (2.0 * want[0], 2.0 * want[1]))
    short = load_cuts(path).filter(_shorter_than_5_s)
    assert count_cuts(short) == sum(_shorter_than_5_s(c) for c in load_cuts(path))


def _always(cut) -> bool:
    return True


def _shorter_than_5_s(cut) -> bool:
    return cut.duration < 5.0


def test_combined_manifests_hold_every_part_in_order(tiny_corpus, tmp_path):
    for part in ("dev", "test"):
        shutil.copy(tiny_corpus.manifest_dir / f"cuts_{part}.jsonl.gz", tmp_path)
    out = combine_manifests(tmp_path, ["dev", "test"], "devtest")
    parts = [CutSet.from_file(tmp_path / f"cuts_{p}.jsonl.gz") for p in ("dev", "test")]
    assert [c.to_dict() for c in CutSet.from_file(out)] == [c.to_dict() for p in parts for c in p]
    with pytest.raises(ValueError, match="no parts"):
        combine_manifests(tmp_path, [], "none")


def test_batches_are_padded_to_a_multiple_of_pad_frames_and_hold_each_cut_unchanged(tiny_corpus):
    """Oracle: each cut's own features as lhotse loads them; past its length, only padding."""
    from imputer_asr.data.dataset import PAD_FRAMES

    cuts = CutSet.from_file(tiny_corpus.fbank_cuts("dev")).to_eager()
    batches = _batches(cuts, tiny_corpus.tokenizer, train=False, sort=False)
    assert any(int(b["feature_lengths"].max()) % PAD_FRAMES for b in batches)  # padding was needed
    for batch in batches:
        features, lengths = batch["features"], batch["feature_lengths"]
        assert features.size(1) % PAD_FRAMES == 0
        assert features.size(1) - int(lengths.max()) < PAD_FRAMES
        for row, cut_id, n in zip(features, batch["cut_ids"], lengths.tolist(), strict=True):
            own = torch.from_numpy(cuts[cut_id].load_features())
            assert n == len(own) and torch.equal(row[:n], own)
