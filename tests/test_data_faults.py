"""Faults in the data around a run: a manifest line that is not JSON, a cut-short manifest, feature
files that are missing or corrupt, transcripts the tokenizer cannot spell, and recipe stages killed
part-way. The oracles: the message names the file (and line or cut); training goes on without the
bad cut and counts it; a rerun of a killed stage writes exactly what a clean run writes."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from lhotse import CutSet, NumpyHdf5Writer

import imputer_asr.training.imputer as imputer_train
from imputer_asr.cli import main
from imputer_asr.config import DataConfig, ExperimentConfig, FeatureConfig, TrainConfig, save_config
from imputer_asr.data.dataset import alignment_file, load_cuts, make_loader
from imputer_asr.data.prepare import filter_cuts
from imputer_asr.decoding.ctc import decode_cuts
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.training.imputer import align_cuts, alignment_storage, check_cut_alignments
from imputer_asr.training.loop import fit

pytestmark = pytest.mark.faults


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


def _write_lines(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_a_manifest_line_that_is_not_json_is_named_with_its_line(tiny_corpus, tmp_path, capsys, fault_tally):
    lines = _lines(tiny_corpus.fbank_cuts("train"))
    bad = _write_lines(tmp_path / "cuts.jsonl.gz", lines[:2] + ['{"id": "half a line'] + lines[3:])
    cuts = load_cuts(bad)  # lazy: the pass that meets the line names it
    with pytest.raises(ValueError, match=rf"{bad}, line 3: not JSON"):
        list(cuts)
    # Through the command line: one line on stderr, exit status 1, no traceback.
    bpe = tiny_corpus.fbank_dir.parent / "bpe.model"
    dev = tiny_corpus.fbank_cuts("dev")
    save_config(ExperimentConfig(), tmp_path / "config.json")
    argv = ["train", "--config", str(tmp_path / "config.json"), "--exp-dir", str(tmp_path / "exp")]
    argv += ["--train-cuts", str(bad), "--dev-cuts", str(dev), "--bpe", str(bpe)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "line 3: not JSON" in err and "Traceback" not in err
    assert not (tmp_path / "exp" / "train.done").exists()
    fault_tally(injected=1, checked=1)


def test_a_json_line_that_is_not_a_cut_and_a_cut_short_manifest_are_named(tiny_corpus, tmp_path, fault_tally):
    lines = _lines(tiny_corpus.fbank_cuts("train"))
    not_cut = _write_lines(tmp_path / "other.jsonl.gz", lines[:4] + ['{"hello": 1}'])
    with pytest.raises(ValueError, match=rf"{not_cut}, line 5: not a cut"):
        list(load_cuts(not_cut))
    whole = tiny_corpus.fbank_cuts("train").read_bytes()
    short = tmp_path / "short.jsonl.gz"
    short.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=rf"{short}: cannot be read after line \d+"):
        list(load_cuts(short))
    with pytest.raises(ValueError, match=rf"{short}: cannot be read after line \d+"):
        len(load_cuts(short))
    with pytest.raises(ValueError, match=rf"{tmp_path / 'absent.jsonl.gz'}: no such cuts manifest"):
        load_cuts(tmp_path / "absent.jsonl.gz")
    assert len(load_cuts(tiny_corpus.fbank_cuts("train"))) == len(lines)
    fault_tally(injected=3, checked=5)


def _with_bad_features(tiny_corpus, tmp_path: Path, how: str) -> tuple[CutSet, str]:
    """The training cuts with the features of one of them made unreadable: its storage file
    ``missing``, or ``corrupt`` (a file of the same size, all zeros)."""
    cuts = CutSet.from_file(tiny_corpus.fbank_cuts("train")).to_eager()
    victim = cuts[3]
    features = victim.features
    if how == "missing":
        features.storage_path = str(tmp_path / "gone")
    else:
        broken = tmp_path / "broken.lca"
        broken.write_bytes(bytes(Path(features.storage_path).stat().st_size))  # zeros: no valid chunk
        features.storage_path = str(broken)
    return cuts, victim.id


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_unreadable_features_leave_the_cut_out_of_training_and_fail_decoding_by_name(
    tiny_corpus, small_model_config, tmp_path, caplog, how, fault_tally
):
    cuts, victim = _with_bad_features(tiny_corpus, tmp_path, how)
    tok = tiny_corpus.tokenizer
    # Every training batch is complete but for the one cut.
    seen = []
    for batch in make_loader(cuts, tok, DataConfig(max_duration=15.0), train=True, seed=0):
        seen += batch["cut_ids"]
        assert all(victim in m for m in batch["unreadable"])
    assert sorted(seen) == sorted(c.id for c in cuts if c.id != victim)
    # A run trains to its end; the cut is logged, named and counted once per epoch.
    cfg = ExperimentConfig(
        model=small_model_config(tok),
        data=DataConfig(max_duration=15.0),
        train=TrainConfig(epochs=2, warmup_steps=2, checkpoint_minutes=0),
    )
    dev = CutSet.from_file(tiny_corpus.fbank_cuts("dev")).to_eager()
    with caplog.at_level(logging.WARNING, logger="imputer_asr"):
        fit(cfg, tmp_path / "exp", cuts, dev, tok)
    done = json.loads((tmp_path / "exp" / "train.done").read_text())
    assert done["unreadable"] == 2 and done["epochs"] == 2
    logged = [
        r for r in map(json.loads, (tmp_path / "exp" / "train_log.jsonl").open()) if r["kind"] == "unreadable"
    ]
    assert len(logged) == 2 and all(victim in r["cut"] for r in logged)
    assert victim in caplog.text
    # Decoding must not drop it silently: the error names the cut and its storage.
    model = fit(cfg, tmp_path / "exp", cuts, dev, tok, resume=True)
    with pytest.raises(ValueError, match=rf"unreadable features: {victim} \("):
        decode_cuts(model, tok, cuts)
    fault_tally(injected=1, resumed=0, checked=3)


def test_a_transcript_the_tokenizer_cannot_spell_drops_its_cut_by_name(tiny_corpus, caplog, fault_tally):
    cuts = CutSet.from_file(tiny_corpus.fbank_cuts("train")).to_eager()
    odd = cuts[2]
    odd.supervisions[0].text = odd.supervisions[0].text + " ЖЯ"
    with caplog.at_level(logging.INFO, logger="imputer_asr"):
        kept = filter_cuts(cuts, tiny_corpus.tokenizer, FeatureConfig(), max_duration=float("inf"))
    assert sorted(kept.ids) == sorted(c.id for c in cuts if c.id != odd.id)
    assert "1 with characters outside the tokenizer" in caplog.text
    assert f"cut {odd.id}: 'ЖЯ' not in the tokenizer" in caplog.text
    fault_tally(injected=1, checked=1)


def _asr(*args: str) -> list[str]:
    return [sys.executable, "-m", "imputer_asr.cli", *args]


def _kill_when(command: list[str], ready, timeout: float = 120.0) -> None:
    """Start ``command`` and SIGKILL it and its worker processes once ``ready()`` is true (it must not
    finish first)."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before the kill: {process.stderr.read().decode()[-1000:]}"
        assert time.monotonic() < deadline, "the stage never reached the kill point"
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: a pool's workers outlive their parent
    process.wait()


def _corpus_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_corpus_rendering_killed_part_way_is_finished_by_the_rerun_as_a_clean_run_writes_it(
    tmp_path, fault_tally
):
    from imputer_asr.data.synth.voices import INSTALL_HINT, missing_tools

    if missing_tools():
        pytest.skip(INSTALL_HINT)
    sizes = ["--train-utts", "40", "--dev-utts", "4", "--test-utts", "4", "--train-speakers", "4"]
    sizes += ["--dev-speakers", "1", "--test-speakers", "1", "--seed", "3", "--jobs", "2"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_asr("synth-corpus", "--out-dir", str(clean), *sizes), check=True, capture_output=True)
    _kill_when(
        _asr("synth-corpus", "--out-dir", str(killed), *sizes),
        lambda: len(list(killed.rglob("*.flac"))) >= 10,
    )
    assert not (killed / ".completed").exists()
    subprocess.run(_asr("synth-corpus", "--out-dir", str(killed), *sizes), check=True, capture_output=True)
    want, got = _corpus_files(clean), _corpus_files(killed)
    assert sorted(got) == sorted(want)
    flacs = [name for name in want if name.endswith(".flac")]
    assert len(flacs) == 48
    for name in want:  # FLAC headers hold no dates: equal audio is equal bytes
        assert got[name] == want[name], name
    assert not list(killed.rglob("*.partial"))
    fault_tally(injected=1, resumed=1, checked=len(want))


def _training_epoch(aligned_cuts: Path, tok) -> tuple[list[str], list[str]]:
    """One training epoch's cut ids, and the unreadable cuts it named, over the aligned manifest."""
    seen, named = [], []
    cfg = DataConfig(max_duration=15.0, num_workers=0, num_buckets=3)
    for batch in make_loader(load_cuts(aligned_cuts), tok, cfg, train=True, seed=0):
        seen += batch["cut_ids"]
        named += batch["unreadable"]
    return seen, named


def _feature_table(path: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """cut id -> (the cut without its storage location, its feature matrix)."""
    table = {}
    for cut in load_cuts(path):
        feats = cut.load_features()
        record = cut.to_dict()
        record["features"].pop("storage_path")
        table[cut.id] = (record, feats)
    return table


def test_fbank_killed_part_way_is_redone_by_the_rerun_as_a_clean_run_writes_it(
    tiny_corpus, tmp_path, fault_tally
):
    bpe = tiny_corpus.fbank_dir.parent / "bpe.model"

    def fbank(out: Path) -> list[str]:
        args = ["--manifest-dir", str(tiny_corpus.manifest_dir), "--out-dir", str(out), "--bpe", str(bpe)]
        return _asr("fbank", *args, "--part", "train", "--augment", "--speeds", "0.9", "1.1", "--jobs", "2")

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(fbank(clean), check=True, capture_output=True)
    _kill_when(fbank(killed), lambda: any(p.stat().st_size > 0 for p in killed.rglob("feats-*")))
    manifest = "cuts_train_fbank.jsonl.gz"
    assert not (killed / manifest).exists()
    subprocess.run(fbank(killed), check=True, capture_output=True)
    want, got = _feature_table(clean / manifest), _feature_table(killed / manifest)
    assert list(got) == list(want)
    for cut_id, (record, feats) in want.items():
        assert got[cut_id][0] == record
        np.testing.assert_array_equal(got[cut_id][1], feats)
    fault_tally(injected=1, resumed=1, checked=len(want))


@pytest.fixture
def aligned_cuts(tiny_corpus, small_model_config, tmp_path) -> Path:
    """The tiny training cuts aligned under an untrained model: ``tmp_path/aligned.jsonl.gz``."""
    torch.manual_seed(0)
    model = ImputerModel(small_model_config(tiny_corpus.tokenizer))
    out = tmp_path / "aligned.jsonl.gz"
    align_cuts(model, load_cuts(tiny_corpus.fbank_cuts("train")), tiny_corpus.tokenizer, out)
    return out


@pytest.mark.parametrize("how", ["missing", "another array"])
def test_an_unreadable_alignment_is_named_and_left_out_of_training(
    tiny_corpus, aligned_cuts, how, fault_tally
):
    """One cut's entry in the HDF5 storage deleted, or replaced by an array of another shape."""
    tok = tiny_corpus.tokenizer
    victim = next(iter(load_cuts(aligned_cuts)))
    array = victim.custom["alignment"].array
    where = alignment_file(victim.custom["alignment"])
    assert where == f"{alignment_storage(aligned_cuts)}, key {array.storage_key}"
    with h5py.File(array.storage_path, "a") as storage:
        del storage[array.storage_key]
        if how == "another array":
            storage[array.storage_key] = np.zeros(3, dtype=np.int32)
    # Before training: the cut and its storage named.
    unstored = rf"1 cut.s. have no alignment .* \(e.g. {victim.id} in {re.escape(array.storage_path)}\)"
    with pytest.raises(ValueError, match=unstored):
        check_cut_alignments(load_cuts(aligned_cuts))
    # Decoding, validation, alignment: an error naming the cut and the file.
    eval_loader = make_loader(load_cuts(aligned_cuts), tok, DataConfig(max_duration=200.0), train=False)
    with pytest.raises(ValueError, match=rf"unreadable alignments: {victim.id} \({re.escape(where)}: "):
        list(eval_loader)
    # Training: every batch complete but for that cut, which is named with its file.
    seen, named = _training_epoch(aligned_cuts, tok)
    assert sorted(seen) == sorted(c.id for c in load_cuts(aligned_cuts) if c.id != victim.id)
    assert len(named) == 1 and named[0].startswith(f"{victim.id} ({where}: ")
    fault_tally(injected=1, checked=3)


@pytest.mark.parametrize("how", ["missing", "cut short", "not HDF5"])
def test_an_unreadable_alignment_storage_is_named_before_and_during_training(
    tiny_corpus, aligned_cuts, how, fault_tally
):
    """The one file of a manifest's alignments gone, cut short (a disk that filled under a copy), or
    overwritten with zeros: the check before training names it; every cut's read names it."""
    tok = tiny_corpus.tokenizer
    storage = alignment_storage(aligned_cuts)
    size = storage.stat().st_size
    if how == "missing":
        storage.unlink()
    elif how == "cut short":
        storage.write_bytes(storage.read_bytes()[: size // 2])
    else:
        storage.write_bytes(bytes(size))
    fault = "no such alignment storage" if how == "missing" else "not a readable alignment storage"
    with pytest.raises(ValueError, match=rf"{re.escape(str(storage))}: {fault}"):
        check_cut_alignments(load_cuts(aligned_cuts))
    eval_loader = make_loader(load_cuts(aligned_cuts), tok, DataConfig(max_duration=200.0), train=False)
    with pytest.raises(ValueError, match=rf"unreadable alignments: \S+ \({re.escape(str(storage))}, key "):
        list(eval_loader)
    seen, named = _training_epoch(aligned_cuts, tok)
    assert seen == [] and sorted(m.split(" ", 1)[0] for m in named) == sorted(load_cuts(aligned_cuts).ids)
    assert all(m.split(" ", 1)[1].startswith(f"({storage}, key ") for m in named)
    fault_tally(injected=1, checked=3)


def test_a_missing_alignment_storage_or_inline_alignments_are_refused_before_training(
    tiny_corpus, aligned_cuts, tmp_path, fault_tally
):
    tok = tiny_corpus.tokenizer
    check_cut_alignments(load_cuts(aligned_cuts))  # as written: fine
    # An older align stage's manifest, its alignments inline: refused, in training too.
    inline = tmp_path / "inline.jsonl.gz"
    old = [c.with_custom("alignment", [0] * c.custom["alignment"].shape[0]) for c in load_cuts(aligned_cuts)]
    CutSet(old).to_file(inline)
    with pytest.raises(ValueError, match="12 cut.s. carry their alignment inline .* rerun the align stage"):
        check_cut_alignments(load_cuts(inline))
    with pytest.raises(ValueError, match="is a list in the manifest, not an array in storage"):
        next(iter(make_loader(load_cuts(inline), tok, DataConfig(num_workers=0), train=True)))
    # The storage gone: named before training starts.
    storage = alignment_storage(aligned_cuts)
    storage.unlink()
    with pytest.raises(ValueError, match=rf"{re.escape(str(storage))}: no such alignment storage"):
        check_cut_alignments(load_cuts(aligned_cuts))
    fault_tally(injected=2, checked=3)


def _alignment_files(out: Path) -> dict[str, bytes]:
    """The manifest's bytes and its alignment storage's, by name."""
    storage = alignment_storage(out)
    return {out.name: gzip.decompress(out.read_bytes()), storage.name: storage.read_bytes()}


@pytest.mark.parametrize("where", ["storage", "flush", "manifest"])
def test_an_align_stage_failing_part_way_keeps_the_previous_manifest_and_storage(
    tiny_corpus, small_model_config, aligned_cuts, monkeypatch, where, fault_tally
):
    """The failure is a full disk part-way through the new storage, when flushing it to disk, or
    part-way through the new manifest; the previous pair stays whole and readable, nothing temporary
    is left, and the rerun writes what a clean run writes, and is what a batch reads."""
    tok = tiny_corpus.tokenizer
    before = _alignment_files(aligned_cuts)
    torch.manual_seed(1)  # another model: other alignments
    model = ImputerModel(small_model_config(tok))
    cuts = load_cuts(tiny_corpus.fbank_cuts("train"))
    clean = aligned_cuts.with_name("clean.jsonl.gz")
    align_cuts(model, cuts, tok, clean)
    writes = []

    def full_disk(*args, **kwargs):
        writes.append(1)
        if len(writes) > 4:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    if where == "storage":
        real = NumpyHdf5Writer.write
        monkeypatch.setattr(NumpyHdf5Writer, "write", lambda self, *a: full_disk(self, *a))
    elif where == "flush":
        real = imputer_train._fsync
        writes += [1] * 4
        monkeypatch.setattr(imputer_train, "_fsync", full_disk)
    else:
        real = imputer_train.write_cuts_atomic
        writes += [1] * 4
        monkeypatch.setattr(imputer_train, "write_cuts_atomic", full_disk)
    with pytest.raises(OSError, match="No space left"):
        align_cuts(model, cuts, tok, aligned_cuts)
    assert _alignment_files(aligned_cuts) == before
    assert sorted(p.name for p in aligned_cuts.parent.iterdir()) == sorted(
        [aligned_cuts.name, alignment_storage(aligned_cuts).name, clean.name, alignment_storage(clean).name]
    )
    batch = next(iter(make_loader(load_cuts(aligned_cuts), tok, DataConfig(), train=False)))
    assert "alignments" in batch  # and lhotse now holds the previous storage open
    monkeypatch.undo()
    align_cuts(model, cuts, tok, aligned_cuts)
    rerun = _alignment_files(aligned_cuts)
    want = {
        k.replace("clean", "aligned"): v.replace(b"clean.alignments", b"aligned.alignments")
        for k, v in _alignment_files(clean).items()
    }
    assert rerun == want and rerun != before
    assert torch.equal(_first_alignments(aligned_cuts, tok), _first_alignments(clean, tok))
    fault_tally(injected=1, resumed=1, checked=len(want) + 1)


def _first_alignments(manifest: Path, tokenizer) -> torch.Tensor:
    """The alignments of the first batch a decoding loader reads from ``manifest``."""
    return next(iter(make_loader(load_cuts(manifest), tokenizer, DataConfig(), train=False)))["alignments"]


def test_an_align_stage_failing_between_its_renames_leaves_no_manifest(
    tiny_corpus, small_model_config, aligned_cuts, monkeypatch, fault_tally
):
    """The new storage is in place and the new manifest not yet: there is no manifest at all (never
    the previous one naming the new storage), the next stage says to rerun, and the rerun completes."""
    tok = tiny_corpus.tokenizer
    torch.manual_seed(1)
    model = ImputerModel(small_model_config(tok))
    cuts = load_cuts(tiny_corpus.fbank_cuts("train"))
    real = imputer_train._fsync

    def failing_on_directories(path: Path) -> None:
        if path.is_dir():
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(imputer_train, "_fsync", failing_on_directories)
    with pytest.raises(OSError, match="Input/output error"):
        align_cuts(model, cuts, tok, aligned_cuts)
    assert sorted(p.name for p in aligned_cuts.parent.iterdir()) == [alignment_storage(aligned_cuts).name]
    with pytest.raises(ValueError, match="no such cuts manifest; run the stage that writes it"):
        load_cuts(aligned_cuts)
    monkeypatch.undo()
    align_cuts(model, cuts, tok, aligned_cuts)
    check_cut_alignments(load_cuts(aligned_cuts))
    fault_tally(injected=1, resumed=1, checked=2)
