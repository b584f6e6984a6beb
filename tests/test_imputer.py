"""Imputer decoding, objective and expert alignments: exact step counts, schedules and oracles.

Oracles: counting wrappers for network evaluations; CTC greedy for K = 1; a network whose output is
a fixed, known distribution (so the fixing order must follow its confidences); each utterance
decoded alone; the CTC loss for a fully masked objective; collapse of stored alignments back to the
transcripts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lhotse import CutSet
from lhotse.array import TemporalArray
from lhotse.testing.dummies import DummyManifest
from lhotse.utils import fastcopy
from torch import Tensor

import imputer_asr.decoding.imputer as imputer_decoding
import imputer_asr.training.imputer as imputer_train
from imputer_asr.cli import main
from imputer_asr.config import (
    DataConfig,
    ExperimentConfig,
    ImputerConfig,
    ModelConfig,
    TrainConfig,
    save_config,
)
from imputer_asr.data.dataset import load_cuts, make_loader
from imputer_asr.decoding.ctc import ctc_greedy_search
from imputer_asr.decoding.imputer import decode_imputer, decode_imputer_adaptive, imputer_emissions
from imputer_asr.model.alignment import collapse
from imputer_asr.model.conformer import ImputerModel, subsampled_lengths
from imputer_asr.training.checkpoint import load_packaged, package_model
from imputer_asr.training.imputer import (
    align_cuts,
    alignment_storage,
    imputer_objective,
    imputer_start,
    learner_alignment,
    sample_hours,
)
from imputer_asr.training.loop import ctc_objective

VOCAB = 7


def _model(inject_layer: int = 0, num_layers: int = 2, seed: int = 0, vocab: int = VOCAB) -> ImputerModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab,
        mask_id=vocab,
        d_model=32,
        num_heads=2,
        ff_dim=64,
        num_layers=num_layers,
        inject_layer=inject_layer,
    )
    return ImputerModel(cfg).eval()


def _ragged_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three utterances of 24, 14 and 7 encoder frames: full blocks, a partial one, padding."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 100, 80, generator=g), torch.tensor([100, 60, 31])


def _expected_counts(length: int, steps: int) -> list[int]:
    """Frames fixed at each step in a block of ``length`` masked frames: ceil(r / s)."""
    counts, remaining = [], length
    for steps_left in range(steps, 0, -1):
        counts.append(-(-remaining // steps_left))
        remaining -= counts[-1]
    return counts


class _Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.rows: list[int] = []

    def hook(self, *args) -> None:
        self.calls += 1


@pytest.mark.parametrize("inject_layer", [0, 2])
def test_exactly_k_evaluations_and_acoustic_encoder_once(monkeypatch, inject_layer):
    model = _model(inject_layer=inject_layer, num_layers=3)
    features, lengths = _ragged_batch()
    encode, impute = _Counter(), _Counter()
    blocks = [_Counter() for _ in model.blocks]
    for counter, block in zip(blocks, model.blocks, strict=True):
        # A block's first FFN: the whole block runs it, and so does the top block's mix-only pass
        block.ff1.register_forward_pre_hook(counter.hook)
    real_encode, real_impute, real_step = model.encode_acoustic, model.impute, model.impute_step
    monkeypatch.setattr(model, "encode_acoustic", lambda *a: (encode.hook(), real_encode(*a))[1])
    # An evaluation is either call (impute_step: one block above inject_layer, reusing its work)
    monkeypatch.setattr(model, "impute", lambda *a: (impute.hook(), real_impute(*a))[1])
    monkeypatch.setattr(model, "impute_step", lambda *a: (impute.hook(), real_step(*a))[1])
    for steps in (1, 2, 4, 8):
        encode.calls = impute.calls = 0
        for counter in blocks:
            counter.calls = 0
        result = decode_imputer(model, features, lengths, steps, block_size=8)
        assert result.evaluations == steps == impute.calls
        assert encode.calls == 1
        assert [c.calls for c in blocks] == [1] * inject_layer + [steps] * (3 - inject_layer)


def test_one_step_is_ctc_greedy():
    model = _model()
    features, lengths = _ragged_batch(seed=3)
    log_probs, out_lengths = model(features, lengths)
    result = decode_imputer(model, features, lengths, steps=1)
    assert result.tokens == ctc_greedy_search(log_probs, out_lengths, blank=0)
    assert torch.equal(result.lengths, out_lengths)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8])
def test_every_valid_frame_fixed_on_schedule(steps):
    model = _model(inject_layer=1)
    features, lengths = _ragged_batch(seed=1)
    result = decode_imputer(model, features, lengths, steps, block_size=8)
    n, t = result.alignment.shape
    valid = torch.arange(t) < result.lengths.unsqueeze(1)
    assert bool((result.history[valid] >= 1).all() and (result.history[valid] <= steps).all())
    assert bool((result.history[~valid] == -1).all() and (result.alignment[~valid] == -1).all())
    assert bool((result.alignment[valid] >= 0).all() and (result.alignment[valid] < VOCAB).all())
    for i in range(n):
        length = int(result.lengths[i])
        for start in range(0, length, 8):
            block = result.history[i, start : min(start + 8, length)]
            got = [int((block == s).sum()) for s in range(1, steps + 1)]
            assert got == _expected_counts(len(block), steps), (i, start)


def _fixed_network(monkeypatch, model: ImputerModel, log_probs: torch.Tensor) -> _Counter:
    """Make ``model.impute`` return ``log_probs`` whatever the alignment it is shown, for the rows
    of the batch it is given (adaptive decoding passes only the unfinished utterances; they are
    told apart by their acoustic states, which the first call, over the whole batch, records)."""
    counter = _Counter()
    first: list[torch.Tensor] = []

    def impute(hidden, lengths, tokens, frames=None):  # every frame's, whatever ``frames`` asks for
        counter.hook()
        counter.rows.append(hidden.size(0))
        if not first:
            first.append(hidden)
        width = hidden.size(1)
        rows = [next(j for j, full in enumerate(first[0]) if torch.equal(full[:width], h)) for h in hidden]
        return log_probs[rows, :width]

    monkeypatch.setattr(model, "impute", impute)
    return counter


def _peaked(confidence: torch.Tensor, best: torch.Tensor, vocab: int = VOCAB) -> torch.Tensor:
    """Log-distributions with max-probability ``confidence`` (N, T) on token ``best`` (N, T)."""
    rest = (1 - confidence) / (vocab - 1)
    probs = rest.unsqueeze(-1).expand(*confidence.shape, vocab).clone()
    probs.scatter_(-1, best.unsqueeze(-1), confidence.unsqueeze(-1))
    return probs.log()


def test_fixing_order_follows_confidence(monkeypatch):
    model = _model()
    features, lengths = _ragged_batch()
    g = torch.Generator().manual_seed(5)
    confidence = 0.3 + 0.6 * torch.rand(3, 24, generator=g)  # distinct, all above 1/VOCAB
    best = torch.randint(VOCAB, (3, 24), generator=g)
    _fixed_network(monkeypatch, model, _peaked(confidence, best))
    result = decode_imputer(model, features, lengths, steps=8, block_size=8)
    for i in range(3):
        length = int(result.lengths[i])
        assert result.alignment[i, :length].tolist() == best[i, :length].tolist()
        for start in range(0, length, 8):
            stop = min(start + 8, length)
            by_confidence = confidence[i, start:stop].argsort(descending=True)
            assert result.history[i, start:stop][by_confidence].tolist() == list(range(1, stop - start + 1))


@pytest.mark.parametrize("threshold", [None, 0.3], ids=["k_step", "adaptive"])
def test_reusing_the_top_blocks_frame_by_frame_work_changes_nothing(monkeypatch, threshold):
    model = _model(inject_layer=2, num_layers=3, seed=3).double()  # one block above inject_layer
    with torch.no_grad():
        model.token_embed.weight.normal_()  # the alignment moves the output
    features, lengths = _ragged_batch(seed=3)

    def decode():
        if threshold is None:
            return decode_imputer(model, features.double(), lengths, steps=8)
        return decode_imputer_adaptive(model, features.double(), lengths, threshold=threshold, max_steps=8)

    rows, real_step = [], model.impute_step
    monkeypatch.setattr(model, "impute_step", lambda *a: (rows.append(a[0].size(0)), real_step(*a))[1])
    reused = decode()
    # Every step went through impute_step; adaptive decoding ran some with the finished rows left out
    assert len(rows) == reused.evaluations and (rows == [3] * 8 if threshold is None else min(rows) < 3)
    monkeypatch.setattr(imputer_decoding, "_one_top_block", lambda model: False)
    plain = decode()
    assert reused.tokens == plain.tokens and torch.equal(reused.alignment, plain.alignment)
    assert torch.equal(reused.history, plain.history) and reused.evaluations == plain.evaluations


def test_batching_invariance():
    model = _model(inject_layer=1, seed=2).double()
    features, lengths = _ragged_batch(seed=2)
    features = features.double()
    for decode in (
        lambda f, n: decode_imputer(model, f, n, steps=4),
        lambda f, n: decode_imputer_adaptive(model, f, n, threshold=0.3, max_steps=4),
    ):
        batch = decode(features, lengths)
        for i in range(3):
            alone = decode(features[i : i + 1, : int(lengths[i])], lengths[i : i + 1])
            t = alone.alignment.size(1)
            assert alone.tokens[0] == batch.tokens[i]
            assert torch.equal(alone.alignment[0], batch.alignment[i, :t])
            assert torch.equal(alone.history[0], batch.history[i, :t])


def test_adaptive_stops_early_when_confident(monkeypatch):
    model = _model()
    features, lengths = _ragged_batch()
    best = torch.randint(VOCAB, (3, 24), generator=torch.Generator().manual_seed(0))
    counter = _fixed_network(monkeypatch, model, _peaked(torch.full((3, 24), 0.95), best))
    result = decode_imputer_adaptive(model, features, lengths, threshold=0.9)
    assert result.evaluations == counter.calls == 1
    valid = result.history >= 0
    assert torch.equal(result.alignment[valid], best[valid])


def test_adaptive_runs_the_network_over_unfinished_utterances_only(monkeypatch):
    model = _model()
    features, lengths = _ragged_batch()
    confidence = 0.2 + 0.2 * torch.rand(3, 24, generator=torch.Generator().manual_seed(3))
    confidence[1] = 0.95  # utterance 1 is done after one step
    best = torch.randint(VOCAB, (3, 24), generator=torch.Generator().manual_seed(4))
    counter = _fixed_network(monkeypatch, model, _peaked(confidence, best))
    result = decode_imputer_adaptive(model, features, lengths, threshold=0.9, block_size=8)
    last_step = result.history.max(dim=1).values  # the evaluations each utterance took
    assert last_step[1] == 1 and last_step.max() == 8
    # Step s evaluates exactly the utterances that still had masked frames before it.
    assert counter.rows == [int((last_step >= step).sum()) for step in range(1, 9)]
    assert counter.rows[1] == 2
    valid = result.history >= 0
    assert torch.equal(result.alignment[valid], best[valid])


def test_adaptive_fixes_at_least_one_per_block_per_step(monkeypatch):
    model = _model()
    features, lengths = _ragged_batch()
    g = torch.Generator().manual_seed(1)
    confidence = 0.2 + 0.2 * torch.rand(3, 24, generator=g)
    confidence[:, ::5] = 0.95  # a few confident frames: fixed in the first step
    counter = _fixed_network(monkeypatch, model, _peaked(confidence, torch.zeros(3, 24, dtype=torch.long)))
    result = decode_imputer_adaptive(model, features, lengths, threshold=0.9, block_size=8)
    assert result.evaluations == counter.calls <= 8
    for i in range(3):
        length = int(result.lengths[i])
        confident = confidence[i, :length] > 0.9
        assert bool((result.history[i, :length][confident] == 1).all())
        for start in range(0, length, 8):
            block = result.history[i, start : min(start + 8, length)]
            last = int(block.max())
            assert all(int((block == s).sum()) >= 1 for s in range(1, last + 1))
    # The threshold 1 leaves only the schedule: one frame per full block per step, B steps.
    result = decode_imputer_adaptive(model, features, lengths, threshold=1.0, block_size=8)
    assert result.evaluations == 8
    assert sorted(result.history[0, :8].tolist()) == list(range(1, 9))


def test_decoders_reject_bad_arguments():
    model = _model()
    features, lengths = _ragged_batch()
    with pytest.raises(ValueError, match="steps"):
        decode_imputer(model, features, lengths, steps=9, block_size=8)
    with pytest.raises(ValueError, match="steps"):
        decode_imputer(model, features, lengths, steps=0)
    with pytest.raises(ValueError, match="threshold"):
        decode_imputer_adaptive(model, features, lengths, threshold=1.5)


def _aligned_batch(model: ImputerModel, seed: int = 0) -> dict:
    """A ragged batch with random targets and their forced alignments under ``model``."""
    features, feature_lengths = _ragged_batch(seed)
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(1, VOCAB, (3, 5), generator=g)
    target_lengths = torch.tensor([5, 4, 3])
    alignment = learner_alignment(model, features, feature_lengths, targets, target_lengths)
    return {
        "features": features,
        "feature_lengths": feature_lengths,
        "targets": targets,
        "target_lengths": target_lengths,
        "alignments": alignment,
        "alignment_lengths": (alignment >= 0).sum(dim=1),
        "cut_ids": ["a", "b", "c"],
    }


def test_objective_fully_masked_is_ctc():
    """block_size 1 masks k = B = 1 frame per block: every frame, so the loss is CTC's."""
    model = _model(inject_layer=1)
    batch = _aligned_batch(model)
    loss, tokens = imputer_objective(block_size=1)(model, batch)
    want, want_tokens = ctc_objective(model, batch)
    assert tokens == want_tokens == 12
    torch.testing.assert_close(loss, want)
    loss, _ = imputer_objective(block_size=1, ctc_weight=0.5)(model, batch)
    torch.testing.assert_close(loss, 1.5 * want)


def test_ctc_objective_mixes_in_intermediate_ctc():
    model = _model(inject_layer=1, num_layers=3)
    model.eval()
    batch = _aligned_batch(model)
    plain, tokens = ctc_objective(model, batch)
    mixed_model = ImputerModel(dataclasses.replace(model.cfg, interctc_layer=2, interctc_weight=0.25)).eval()
    mixed_model.load_state_dict(model.state_dict())
    mixed, mixed_tokens = ctc_objective(mixed_model, batch)
    hidden, lengths = model.encode_acoustic(batch["features"], batch["feature_lengths"])
    _, intermediate = mixed_model.impute_with_intermediate(hidden, lengths, model.all_mask(hidden))
    inter = F.ctc_loss(
        intermediate.transpose(0, 1), batch["targets"], lengths, batch["target_lengths"], reduction="sum"
    )
    assert mixed_tokens == tokens
    torch.testing.assert_close(mixed, 0.75 * plain + 0.25 * inter)


@pytest.mark.parametrize("score_observed", [True, False])
def test_objective_scores_observed_frames_only_when_asked(monkeypatch, score_observed):
    model = _model(inject_layer=1)
    batch = _aligned_batch(model, seed=1)
    seen = {}
    real_mask, real_impute = imputer_train.block_mask, model.impute

    def block_mask(*args, **kwargs):
        seen["tokens_in"], seen["observed"] = real_mask(*args, **kwargs)
        return seen["tokens_in"], seen["observed"]

    def impute(*args):
        seen["log_probs"] = real_impute(*args)
        seen["log_probs"].retain_grad()
        return seen["log_probs"]

    monkeypatch.setattr(imputer_train, "block_mask", block_mask)
    monkeypatch.setattr(model, "impute", impute)
    generator = torch.Generator().manual_seed(0)
    objective = imputer_objective(block_size=8, score_observed=score_observed, generator=generator)
    loss, _ = objective(model, batch)
    loss.backward()
    grad, observed = seen["log_probs"].grad, seen["observed"]
    assert bool((observed >= 0).any()) and bool((observed == -1).any())
    # d(-log p_t(o_t))/d log p_t(o_t) = -1 at a scored shown frame's token (the DP adds nothing there)
    rows, frames = (observed >= 0).nonzero(as_tuple=True)
    at_token = grad[rows, frames, observed[rows, frames]]
    if score_observed:
        assert bool((at_token == -1).all())
    else:
        assert bool((grad[observed >= 0] == 0).all())
    assert bool((grad[observed == -1].abs().sum(-1) > 0).any())
    shown = observed >= 0  # the network is shown exactly the observed tokens, [MASK] elsewhere
    assert torch.equal(seen["tokens_in"][shown], observed[shown])
    assert bool((seen["tokens_in"][~shown] == model.cfg.mask_id).all())
    assert torch.isfinite(loss) and loss > 0


def test_objective_greedy_rollin_shows_its_own_argmax_and_scores_every_alignment():
    """greedy_fraction 1: the network is shown the block-masked argmax of its all-[MASK] pass (not the
    stored alignment) and the loss is CTC's over every alignment, computed here by hand from the same
    random draws; the CTC term adds the all-[MASK] pass's CTC loss."""
    from imputer_asr.model.losses import ctc_loss
    from imputer_asr.training.masking import block_mask

    model = _model(inject_layer=1).eval()
    batch = _aligned_batch(model)
    batch["alignments"] = torch.where(batch["alignments"] >= 0, 1, -1)  # an expert it must not be shown
    for ctc_weight in (0.0, 0.5):
        objective = imputer_objective(
            block_size=4,
            ctc_weight=ctc_weight,
            greedy_fraction=1.0,
            generator=torch.Generator().manual_seed(3),
        )
        loss, _ = objective(model, batch)
        g = torch.Generator().manual_seed(3)
        torch.rand(3, generator=g), torch.rand(3, generator=g)  # the learner and greedy draws
        hidden, lengths = model.encode_acoustic(batch["features"], batch["feature_lengths"])
        all_mask = model.impute(hidden, lengths, model.all_mask(hidden))
        own = all_mask.argmax(-1).masked_fill(batch["alignments"] < 0, -1)
        assert not torch.equal(own, batch["alignments"])
        shown, _ = block_mask(own, lengths, 4, mask_id=model.cfg.mask_id, generator=g)
        args = (batch["targets"], lengths, batch["target_lengths"])
        want = ctc_loss(model.impute(hidden, lengths, shown), *args, reduction="sum")
        want = want + ctc_weight * ctc_loss(all_mask, *args, reduction="sum")
        torch.testing.assert_close(loss, want)
    with pytest.raises(ValueError, match="greedy_fraction"):
        imputer_objective(greedy_fraction=1.5)


def test_objective_learner_rollin_and_length_check():
    model = _model(inject_layer=1).train()
    batch = _aligned_batch(model)
    del batch["alignments"], batch["alignment_lengths"]
    loss, _ = imputer_objective(learner_fraction=1.0)(model, batch)
    assert model.training and torch.isfinite(loss)
    loss.backward()
    rollin = learner_alignment(
        model, batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"]
    )
    assert model.training
    for row, target, n in zip(rollin, batch["targets"], batch["target_lengths"], strict=True):
        assert collapse(row) == target[:n].tolist()
    bad = _aligned_batch(model)
    bad["alignment_lengths"] = bad["alignment_lengths"] + torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="b .15 vs 14"):
        imputer_objective()(model, bad)


@pytest.fixture(scope="module")
def aligned(tiny_corpus, tmp_path_factory):
    """(model, input cuts, the cuts align_cuts wrote, the alignments it computed: cut id -> tensor)."""
    tok = tiny_corpus.tokenizer
    model = _model(vocab=tok.vocab_size)
    cuts = CutSet.from_file(tiny_corpus.fbank_cuts("train")).to_eager()
    computed = _ComputedAlignments()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imputer_train, "with_progress", computed.batches)
        patch.setattr(imputer_train, "_align_feasible", computed.align)
        out = align_cuts(model, cuts, tok, tmp_path_factory.mktemp("align") / "aligned.jsonl.gz")
    return model, cuts, out, computed.by_cut()


class _ComputedAlignments:
    """Records what align_cuts computes: the cut ids of each batch and the alignments of its rows."""

    def __init__(self) -> None:
        self.real_align = imputer_train._align_feasible
        self.cut_ids: list[list[str]] = []
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def batches(self, loader, *args, **kwargs):
        for batch in loader:
            self.cut_ids.append(list(batch["cut_ids"]))
            yield batch

    def align(self, log_probs, lengths, *args, **kwargs):
        alignment, feasible = self.real_align(log_probs, lengths, *args, **kwargs)
        self.rows.append((alignment.clone(), lengths.clone(), feasible.clone()))
        return alignment, feasible

    def by_cut(self) -> dict[str, torch.Tensor]:
        out = {}
        for ids, (alignment, lengths, feasible) in zip(self.cut_ids, self.rows, strict=True):
            for i, cut_id in enumerate(ids):
                if feasible[i]:
                    out[cut_id] = alignment[i, : int(lengths[i])]
        return out


def test_align_cuts_collapse_to_transcripts(tiny_corpus, aligned):
    tok = tiny_corpus.tokenizer
    _, cuts, out, _ = aligned
    assert out.is_lazy and [c.id for c in out] == [c.id for c in cuts]
    for cut in out:
        stored = cut.custom["alignment"]
        assert isinstance(stored, TemporalArray) and stored.array.storage_type == "numpy_hdf5"
        alignment = stored.load()
        assert alignment.shape == (int(subsampled_lengths(torch.tensor(cut.num_frames))),)
        text = " ".join(s.text for s in cut.supervisions)
        assert collapse(torch.from_numpy(alignment).long()) == tok.encode(text)


def test_an_alignment_round_trips_bit_exactly_through_storage_into_the_batch(tiny_corpus, aligned):
    """The oracle: the alignments align_cuts computed (recorded before they were stored)."""
    tok = tiny_corpus.tokenizer
    _, cuts, out, computed = aligned
    assert sorted(computed) == sorted(c.id for c in cuts)
    # One file beside the manifest holds them all, as int32, one dataset per cut (read with h5py itself).
    folder = Path(next(iter(out)).custom["alignment"].array.storage_path).parent
    storage = alignment_storage(folder / "aligned.jsonl.gz")
    assert sorted(p.name for p in storage.parent.iterdir()) == ["aligned.alignments.h5", "aligned.jsonl.gz"]
    assert {c.custom["alignment"].array.storage_path for c in out} == {str(storage)}
    with h5py.File(storage, "r") as stored:
        assert sorted(stored) == sorted(quote(cut_id, safe="") for cut_id in computed)
        for cut in out:
            row = stored[cut.custom["alignment"].array.storage_key]
            assert row.dtype == np.int32
            assert torch.equal(torch.from_numpy(row[:]).long(), computed[cut.id])
    seen = []
    for batch in make_loader(out, tok, DataConfig(max_duration=12.0), train=False):
        assert batch["alignment_lengths"].tolist() == [len(computed[i]) for i in batch["cut_ids"]]
        for row, length, cut_id in zip(
            batch["alignments"], batch["alignment_lengths"], batch["cut_ids"], strict=True
        ):
            assert torch.equal(row[:length], computed[cut_id])
            assert bool((row[length:] == -1).all())
        seen += batch["cut_ids"]
    assert sorted(seen) == sorted(computed)


def test_align_cuts_runs_the_model_without_autograd(tiny_corpus, aligned, monkeypatch, tmp_path):
    model, cuts, _, _ = aligned
    seen = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    align_cuts(model, cuts.subset(first=2), tiny_corpus.tokenizer, tmp_path / "aligned.jsonl.gz")
    assert seen and all(seen)


def test_align_cuts_drops_unalignable(tiny_corpus, aligned, tmp_path):
    model, cuts, _, _ = aligned
    first = cuts[0]
    long_text = " ".join(["hello world"] * 200)
    sups = [dataclasses.replace(first.supervisions[0], text=long_text)]
    changed = CutSet.from_cuts([fastcopy(first, supervisions=sups)] + list(cuts)[1:3])
    out = align_cuts(model, changed, tiny_corpus.tokenizer, tmp_path / "aligned.jsonl.gz")
    assert [c.id for c in out] == [c.id for c in list(cuts)[1:3]]
    with h5py.File(tmp_path / "aligned.alignments.h5", "r") as stored:
        assert sorted(stored) == sorted(c.custom["alignment"].array.storage_key for c in out)
        assert len(stored) == 2
    for few in (changed.subset(first=1), CutSet([])):
        out = align_cuts(model, few, tiny_corpus.tokenizer, tmp_path / "few.jsonl.gz")
        assert len(out) == 0
        with h5py.File(tmp_path / "few.alignments.h5", "r") as stored:
            assert len(stored) == 0


def test_realigning_a_manifest_in_place_replaces_it_and_its_storage(tiny_corpus, aligned, tmp_path):
    """Also in a process that has read the old alignments: lhotse keeps the old file open under the
    same path, and the new ones must be read, not that file's."""
    model, cuts, _, computed = aligned
    path = tmp_path / "aligned.jsonl.gz"
    align_cuts(_model(vocab=tiny_corpus.tokenizer.vocab_size, seed=5), cuts, tiny_corpus.tokenizer, path)
    old = {c.id: c.custom["alignment"].load() for c in load_cuts(path)}  # lhotse now holds the file open
    assert any(not np.array_equal(old[i], computed[i].numpy()) for i in old)
    alignment_storage(path).unlink()  # the old alignments unreadable: not read
    out = align_cuts(model, load_cuts(path), tiny_corpus.tokenizer, path)
    assert [c.id for c in out] == [c.id for c in cuts]
    for cut in out:
        assert torch.equal(torch.from_numpy(cut.custom["alignment"].load()).long(), computed[cut.id])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligned.alignments.h5", "aligned.jsonl.gz"]


def test_cli_align_train_decode(tiny_corpus, tmp_path):
    """The three new stages end to end on the tiny corpus, with a throwaway (untrained) CTC model."""
    tok = tiny_corpus.tokenizer
    model_cfg = dataclasses.replace(_model(vocab=tok.vocab_size).cfg, blank_id=tok.blank_id)
    cfg = ExperimentConfig(
        model=model_cfg,
        data=DataConfig(max_duration=30.0, num_workers=0),
        train=TrainConfig(epochs=1, warmup_steps=1, num_threads=1),
        imputer=ImputerConfig(block_size=4, ctc_weight=0.1),
    )
    ctc = tmp_path / "ctc.pt"
    package_model(ImputerModel(model_cfg).state_dict(), cfg, tok, ctc)
    bpe = tmp_path / "bpe.model"
    bpe.write_bytes(tok.model_proto)
    conf = tmp_path / "imputer.json"
    save_config(cfg, conf)
    aligned_cuts = tmp_path / "aligned.jsonl.gz"
    assert (
        main(
            [
                "align",
                "--model",
                str(ctc),
                "--cuts",
                str(tiny_corpus.fbank_cuts("train")),
                "--out",
                str(aligned_cuts),
            ]
        )
        == 0
    )
    exp = tmp_path / "imputer"
    common = [
        "--config",
        str(conf),
        "--exp-dir",
        str(exp),
        "--bpe",
        str(bpe),
        "--train-cuts",
        str(aligned_cuts),
    ]
    dev = ["--dev-cuts", str(tiny_corpus.fbank_cuts("dev"))]
    bad = ["--set", "model.d_model=16", "--set", "model.num_heads=1"]
    assert main(["train-imputer", *common, *dev, *bad, "--init-from", str(ctc)]) == 1  # config mismatch
    assert main(["train-imputer", *common, *dev, "--init-from", str(ctc)]) == 0
    model_pt = exp / "model.pt"
    assert main(["package", "--exp-dir", str(exp), "--bpe", str(bpe), "--out", str(model_pt)]) == 0
    assert load_packaged(model_pt).config.imputer.block_size == 4
    assert load_packaged(model_pt).info["trained_as"] == "imputer"  # transcribe's default decoder
    test_cuts = str(tiny_corpus.fbank_cuts("test"))
    for name, extra in (("k2", ["--steps", "2"]), ("adaptive", ["--adaptive", "0.9"])):
        args = [
            "decode-imputer",
            "--model",
            str(model_pt),
            "--cuts",
            test_cuts,
            "--out-dir",
            str(exp),
            "--name",
            name,
        ]
        assert main(args + extra) == 0
        hyps = (exp / f"hyps-{name}.jsonl").read_text().splitlines()
        assert len(hyps) == len(CutSet.from_file(test_cuts))
        timing = json.loads((exp / f"timing-{name}.json").read_text())
        assert timing["block_size"] == 4 and timing["utterances"] == len(hyps)
        if name == "k2":
            assert timing["steps"] == 2 and timing["evaluations"] == 2 * timing["batches"]
        else:
            assert timing["adaptive_threshold"] == 0.9 and timing["evaluations"] <= 4 * timing["batches"]


def test_sample_hours_draws_just_enough_audio_in_input_order():
    durations = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    cuts = CutSet.from_cuts(
        fastcopy(cut, duration=d)
        for cut, d in zip(DummyManifest(CutSet, begin_id=0, end_id=8), durations, strict=True)
    )
    ids = [c.id for c in cuts]
    seen = set()
    for seed in range(20):
        subset = sample_hours(cuts, 10.0 / 3600, seed=seed)
        picked = [c.id for c in subset]
        assert picked == sorted(picked, key=ids.index)  # input order kept
        total = sum(c.duration for c in subset)
        # enough, and overshooting by less than the last cut drawn (at most the longest one)
        assert 10.0 <= total < 10.0 + max(durations)
        assert [c.id for c in sample_hours(cuts, 10.0 / 3600, seed=seed)] == picked  # deterministic
        seen.add(tuple(picked))
    assert len(seen) > 1  # the seed matters
    assert [c.id for c in sample_hours(cuts, 1.0)] == ids  # more than there is: all of them
    with pytest.raises(ValueError, match="positive"):
        sample_hours(cuts, 0.0)


def test_sample_hours_of_a_lazy_manifest_is_the_eager_draw_read_lazily(tmp_path):
    durations = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    eager = CutSet.from_cuts(
        fastcopy(cut, duration=d)
        for cut, d in zip(DummyManifest(CutSet, begin_id=0, end_id=8), durations, strict=True)
    )
    eager.to_file(tmp_path / "cuts.jsonl.gz")
    lazy = load_cuts(tmp_path / "cuts.jsonl.gz")
    for seed in range(5):
        subset = sample_hours(lazy, 10.0 / 3600, seed=seed)
        want = [c.id for c in sample_hours(eager, 10.0 / 3600, seed=seed)]
        assert subset.is_lazy and len(subset) == len(want)
        assert [c.id for c in subset] == want == [c.id for c in subset]  # every pass the same


def test_cli_align_max_hours_aligns_a_subset(tiny_corpus, aligned, tmp_path, caplog):
    model, cuts, _, _ = aligned
    tok = tiny_corpus.tokenizer
    cfg = ExperimentConfig(model=model.cfg, data=DataConfig(max_duration=30.0, num_workers=0))
    ctc = tmp_path / "ctc.pt"
    package_model(model.state_dict(), cfg, tok, ctc)
    half_hours = sum(c.duration for c in cuts) / 2 / 3600
    out = tmp_path / "aligned.jsonl.gz"
    args = ["align", "--model", str(ctc), "--cuts", str(tiny_corpus.fbank_cuts("train")), "--out", str(out)]
    with caplog.at_level(logging.INFO, logger="imputer_asr"):
        assert main([*args, "--max-hours", str(half_hours), "--seed", "3"]) == 0
    subset = CutSet.from_file(out).to_eager()
    expected = sample_hours(cuts, half_hours, seed=3)
    assert [c.id for c in subset] == [c.id for c in expected] and len(subset) < len(cuts)
    assert all("alignment" in c.custom for c in subset)
    assert f"aligning {len(subset)} of {len(cuts)} cuts" in caplog.text


def test_imputer_start_computes_the_ctc_function_whatever_it_is_shown():
    ctc = _model(inject_layer=0).eval()
    with torch.no_grad():
        ctc.token_embed.weight[: ctc.cfg.mask_id].normal_()  # imputer_start must zero it
    imputer = ImputerModel(ctc.cfg).eval()
    imputer.load_state_dict(imputer_start(ctc.state_dict(), ctc.cfg.mask_id))
    batch = _aligned_batch(ctc)
    want, _ = ctc(batch["features"], batch["feature_lengths"])
    shown = batch["alignments"].clamp(min=0)
    got, _ = imputer(batch["features"], batch["feature_lengths"], shown)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got_ctc, _ = ctc(batch["features"], batch["feature_lengths"], shown)
    assert not torch.allclose(got_ctc, want)  # without it, the random rows change the output


def test_objective_mixes_expert_and_learner_alignments(monkeypatch):
    model = _model(inject_layer=1)
    # The "expert": another model's alignments. The seed is one whose alignment differs from the
    # learner's on every row (the 7-frame row of seed 5 coincides), so each pick below is identifiable.
    batch = _aligned_batch(_model(inject_layer=1, seed=6))
    seen = {}
    real_mask = imputer_train.block_mask

    def block_mask(alignment, *args, **kwargs):
        seen["alignment"] = alignment.clone()
        return real_mask(alignment, *args, **kwargs)

    monkeypatch.setattr(imputer_train, "block_mask", block_mask)
    own = learner_alignment(
        model, batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"]
    )
    expert = batch["alignments"]
    assert all(not torch.equal(a, b) for a, b in zip(own, expert, strict=True))
    for fraction, want in ((0.0, expert), (1.0, own)):
        imputer_objective(learner_fraction=fraction)(model, batch)
        torch.testing.assert_close(seen["alignment"], want)
    picks = set()
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        imputer_objective(learner_fraction=0.5, generator=generator)(model, batch)
        for i, row in enumerate(seen["alignment"]):
            assert torch.equal(row, expert[i]) or torch.equal(row, own[i])
            picks.add((i, torch.equal(row, own[i])))
    assert len(picks) == 6  # each utterance drew both sources
    with pytest.raises(ValueError, match="learner_fraction"):
        imputer_objective(learner_fraction=1.5)


def _alignment_sensitive_model(inject_layer: int) -> ImputerModel:
    """A random Imputer whose output depends on the alignment it is shown (the zero-initialised
    token embedding would make every step's distributions equal)."""
    model = _model(inject_layer=inject_layer, seed=4)
    with torch.no_grad():
        model.token_embed.weight.normal_()
    return model


def _recording_impute(monkeypatch, model: ImputerModel) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Record the alignment shown to, the log-probs returned by, and the frames asked for (all of
    them when none are named) of every ``model.impute`` and ``model.impute_step`` call."""
    calls, real = [], model.impute

    def impute(hidden, lengths, tokens, frames=None):
        log_probs = real(hidden, lengths, tokens, frames)
        asked = torch.ones_like(tokens, dtype=torch.bool) if frames is None else frames.clone()
        calls.append((tokens.clone(), log_probs.clone(), asked))
        return log_probs

    def impute_step(hidden, lengths, tokens, frames, cache=None):  # one block above inject_layer
        log_probs, cache = real_step(hidden, lengths, tokens, frames, cache)
        calls.append((tokens.clone(), log_probs.clone(), frames.clone()))
        return log_probs, cache

    real_step = model.impute_step
    monkeypatch.setattr(model, "impute", impute)
    monkeypatch.setattr(model, "impute_step", impute_step)
    return calls


@pytest.mark.parametrize("inject_layer", [0, 1])
def test_imputer_emissions_of_one_step_are_the_ctc_network(inject_layer):
    model = _alignment_sensitive_model(inject_layer)
    features, lengths = _ragged_batch(seed=6)
    log_probs, out_lengths = imputer_emissions(model, features, lengths, steps=1, block_size=8)
    expected, expected_lengths = model(features, lengths)
    assert torch.equal(log_probs, expected) and torch.equal(out_lengths, expected_lengths)


@pytest.mark.parametrize("steps", [2, 3, 8])
def test_imputer_emissions_are_the_last_step_of_k_step_decoding(monkeypatch, steps):
    model = _alignment_sensitive_model(inject_layer=1)
    features, lengths = _ragged_batch(seed=6)
    calls = _recording_impute(monkeypatch, model)
    result = decode_imputer(model, features, lengths, steps, block_size=8)
    decoded = list(calls)
    calls.clear()
    log_probs, out_lengths = imputer_emissions(model, features, lengths, steps, block_size=8)
    # The same K evaluations over the same partial alignments; the emissions are the K-th output,
    # over every frame where decoding asked for the still-masked ones.
    assert len(calls) == len(decoded) == steps
    for (shown, out, _), (decode_shown, decode_out, _) in zip(calls[:-1], decoded[:-1], strict=True):
        assert torch.equal(shown, decode_shown) and torch.equal(out, decode_out)
    (shown, out, asked), (decode_shown, decode_out, decode_asked) = calls[-1], decoded[-1]
    assert torch.equal(shown, decode_shown) and bool(asked.all()) and not bool(decode_asked.all())
    assert torch.allclose(out[decode_asked], decode_out[decode_asked], atol=1e-5)
    assert bool((decode_out[~decode_asked] == float("-inf")).all())
    assert torch.equal(log_probs, out) and torch.equal(out_lengths, result.lengths)
    # That K-th alignment holds the frames fixed before step K and [MASK] at the rest, and fixing
    # those by the emissions' argmax gives decode_imputer's alignment.
    last_shown = calls[-1][0]
    valid = result.history >= 1
    earlier, last = valid & (result.history < steps), result.history == steps
    assert bool(last.any()) and bool(earlier.any())
    assert torch.equal(last_shown[earlier], result.alignment[earlier])
    assert bool((last_shown[~earlier] == model.cfg.mask_id).all())
    filled = torch.where(last, log_probs.argmax(dim=-1), last_shown).masked_fill(~valid, -1)
    assert torch.equal(filled, result.alignment)
    assert not torch.equal(log_probs, model(features, lengths)[0])  # not the CTC output


def test_imputer_emissions_reject_bad_steps():
    model = _model()
    features, lengths = _ragged_batch()
    for steps, block_size in ((0, 8), (5, 4)):
        with pytest.raises(ValueError, match="steps"):
            imputer_emissions(model, features, lengths, steps, block_size)
