"""Shared fixtures: a tiny synthesized corpus, prepared once per test session.

The corpus is rendered by the same code as the synth recipe (espeak-ng/flite), so tests that use it
are skipped with a clear reason when those tools are missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from imputer_asr.config import FeatureConfig, ModelConfig
from imputer_asr.data.prepare import compute_fbank, manifest_texts, prepare_manifests
from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer

PARTS = ("train", "dev", "test")


@dataclass(frozen=True)
class TinyCorpus:
    corpus_dir: Path
    manifest_dir: Path
    fbank_dir: Path
    tokenizer: Tokenizer

    def fbank_cuts(self, part: str) -> Path:
        return self.fbank_dir / f"cuts_{part}_fbank.jsonl.gz"


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """One torch thread for this test (tiny models run faster without it), restored afterwards.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model_config(tokenizer: Tokenizer, **fields) -> ModelConfig:
    """A ModelConfig with the special ids of ``tokenizer``."""
    return ModelConfig(
        vocab_size=tokenizer.vocab_size, blank_id=tokenizer.blank_id, mask_id=tokenizer.mask_id, **fields
    )


@pytest.fixture(scope="session")
def tiny_model_config():
    """Factory of the smallest conformer the tests package: 20 mel bins, 2 blocks of d_model 16.

    ``tiny_model_config(tokenizer, **changes)`` takes the special ids from ``tokenizer``.
    """

    def make(tokenizer: Tokenizer, **changes) -> ModelConfig:
        tiny = dict(input_dim=20, subsampling_channels=4, d_model=16, num_heads=2, ff_dim=32, num_layers=2)
        return _model_config(tokenizer, **{**tiny, "conv_kernel": 3, "inject_layer": 1, **changes})

    return make


@pytest.fixture(scope="session")
def small_model_config():
    """Factory of a small conformer over the tiny corpus's 80-dim fbank: 2 blocks of d_model 32, for
    training tests. ``small_model_config(tokenizer, **changes)``."""

    def make(tokenizer: Tokenizer, **changes) -> ModelConfig:
        small = dict(d_model=32, num_heads=2, ff_dim=64, num_layers=2)
        return _model_config(tokenizer, **{**small, **changes})

    return make


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> TinyCorpus:
    from imputer_asr.data.synth.voices import INSTALL_HINT, missing_tools

    if missing_tools():
        pytest.skip(INSTALL_HINT)
    from imputer_asr.data.synth import render_corpus

    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus"
    render_corpus(
        corpus,
        num_utts={"train": 12, "dev": 4, "test": 4},
        num_speakers={"train": 3, "dev": 1, "test": 1},
        seed=1,
        num_jobs=2,
    )
    manifests = root / "manifests"
    prepare_manifests(corpus, manifests, PARTS)
    tokenizer = train_tokenizer(manifest_texts(manifests, "train"), root / "bpe.model", vocab_size=60)
    for part in PARTS:
        compute_fbank(manifests, part, root / "fbank", tokenizer, FeatureConfig(), num_jobs=1)
    return TinyCorpus(corpus, manifests, root / "fbank", tokenizer)


@pytest.fixture
def noise_cuts(tmp_path: Path):
    """A maker of cut manifests: noise recordings of 1 s plus ``growth`` seconds per cut, transcribed
    as ``texts``, with 20-bin fbank features stored in tmp_path; returns the manifest's path."""

    def make(texts: list[str], growth: float = 0.25, mel_bins: int = 20) -> Path:
        import numpy as np
        import soundfile as sf
        from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter, Recording, SupervisionSegment

        cuts = []
        for i, text in enumerate(texts):
            wav = tmp_path / f"utt{i}.wav"
            samples = 16000 + int(16000 * growth) * i
            sf.write(wav, np.random.default_rng(i).normal(0, 0.1, samples), 16000)
            recording = Recording.from_file(wav, recording_id=f"utt{i}")
            cut = recording.to_cut()
            cut.supervisions = [SupervisionSegment(f"utt{i}", f"utt{i}", 0.0, recording.duration, text=text)]
            cuts.append(cut)
        cuts = CutSet.from_cuts(cuts).compute_and_store_features(
            Fbank(FbankConfig(num_mel_bins=mel_bins)), tmp_path / "feats", storage_type=LilcomChunkyWriter
        )
        path = tmp_path / "cuts.jsonl.gz"
        cuts.to_file(path)
        return path

    return make


# ---- The fault-injection suite's summary: tests marked ``faults`` report what they injected and checked ----
_FAULTS = {"injected": 0, "resumed": 0, "checked": 0, "passed": 0, "failed": 0}


@pytest.fixture
def fault_tally():
    """``fault_tally(injected=, resumed=, checked=)``: add to the fault-injection summary (call it
    after the test's checks, so that a test that fails reports nothing it did not verify)."""

    def add(injected: int = 0, resumed: int = 0, checked: int = 0) -> None:
        _FAULTS["injected"] += injected
        _FAULTS["resumed"] += resumed
        _FAULTS["checked"] += checked

    return add


def pytest_runtest_logreport(report):
    if report.when == "call" and "faults" in report.keywords:
        _FAULTS["passed" if report.passed else "failed"] += report.failed or report.passed


def pytest_terminal_summary(terminalreporter):
    if _FAULTS["passed"] or _FAULTS["failed"]:
        lost = "nothing lost" if not _FAULTS["failed"] else f"{_FAULTS['failed']} fault test(s) FAILED"
        terminalreporter.write_line(
            f"fault injection: {_FAULTS['injected']} faults injected, {_FAULTS['resumed']} runs resumed, "
            f"{_FAULTS['checked']} files checked, {lost}"
        )
