"""recipes/librispeech offline: the download stage's clear failure and its skip, and every stage end
to end on a tiny synthesized corpus with LibriSpeech's part names (CORPUS_DIR, a tiny config)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "librispeech"
LIBRISPEECH_PARTS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is needed")


def _make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The recipe's make with this checkout's code and Python (not a .venv of the repository)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = ["make", "-C", str(RECIPE), f"PY={sys.executable}", f"ASR={sys.executable} -m imputer_asr.cli"]
    return subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_download_fails_in_one_line_without_network(tmp_path):
    # Port 9 (discard) on the loopback refuses the connection at once, as no network would.
    run = _make("download", f"DATA={tmp_path}", "LIBRISPEECH_URL=http://127.0.0.1:9/resources")
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("imputer-asr download: error:")]
    assert len(errors) == 1, run.stderr
    assert "cannot download LibriSpeech from http://127.0.0.1:9/resources" in errors[0]
    assert "CORPUS_DIR" in errors[0]


def test_download_is_skipped_with_corpus_dir(tmp_path):
    run = _make("download", f"DATA={tmp_path / 'data'}", f"CORPUS_DIR={tmp_path}")
    assert run.returncode == 0, run.stderr
    assert "download: skipped" in run.stdout
    assert not (tmp_path / "data").exists()


def test_help_lists_every_stage():
    run = _make("help")
    assert run.returncode == 0, run.stderr
    stages = ("download", "manifests", "fbank", "bpe", "train-ctc", "align", "train-imputer", "decode")
    for stage in (*stages, "score", "results"):
        assert f"\n  {stage} " in run.stdout, stage
    for variable in ("PARTS=", "CORPUS_DIR=", "NPROC=", "TORCHRUN_ARGS=", "SPEED_PERTURB=", "CONF="):
        assert variable in run.stdout, variable


def test_torchrun_launch_with_nproc():
    run = _make("-n", "train-ctc", "NPROC=8", "TORCHRUN_ARGS=--nnodes=2", "CORPUS_DIR=/nonexistent")
    train = [line for line in run.stdout.splitlines() if " train --config" in line]
    assert len(train) == 1, run.stdout
    assert "-m torch.distributed.run --nproc_per_node=8 --nnodes=2 -m imputer_asr.cli train" in train[0]


@pytest.fixture(scope="module")
def tiny_librispeech(tmp_path_factory) -> Path:
    from imputer_asr.data.synth.voices import INSTALL_HINT, missing_tools

    if missing_tools():
        pytest.skip(INSTALL_HINT)
    from imputer_asr.data.synth import render_corpus

    corpus = tmp_path_factory.mktemp("tiny-librispeech") / "LibriSpeech"
    sizes = {part: 2 for part in LIBRISPEECH_PARTS} | {"train-clean-100": 10}
    speakers = {part: 1 for part in LIBRISPEECH_PARTS} | {"train-clean-100": 2}
    render_corpus(corpus, num_utts=sizes, num_speakers=speakers, seed=3, num_jobs=2)
    return corpus


@pytest.mark.slow
def test_recipe_end_to_end(tiny_librispeech, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# results\n<!-- results-100h:begin -->\n<!-- results-100h:end -->\nkept\n")
    conf = RECIPE / "conf" / "tiny.json"
    run = _make(
        "all",
        f"CORPUS_DIR={tiny_librispeech}",
        f"DATA={tmp_path / 'data'}",
        f"EXP={tmp_path / 'exp'}",
        f"CONF={conf}",
        f"IMPUTER_CONF={conf}",
        f"RESULTS_MD={readme}",
        "VOCAB=40",
        "SPEED_PERTURB=0",
        "JOBS=1",
        "STEPS=1 8",
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Each part's K = 1 and 8 in one process, and each decoding scored itself: no score stage ran.
    sweeps = [line for line in run.stdout.splitlines() if " decode-imputer " in line]
    assert len(sweeps) == len(LIBRISPEECH_PARTS) - 1 and all("--steps 1 8" in line for line in sweeps)
    assert " score --hyps" not in run.stdout
    text = readme.read_text()
    assert text.startswith("# results\n<!-- results-100h:begin -->\n| system") and text.endswith("kept\n")
    header = next(line for line in text.splitlines() if line.startswith("| system"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == list(LIBRISPEECH_PARTS[1:])
    rows = [
        line.split("|")[1:3] for line in text.splitlines() if line.startswith("| ") and "system" not in line
    ]
    assert [(s.strip(), d.strip()) for s, d in rows] == [
        ("CTC", "greedy"),
        ("Imputer", "k1"),
        ("Imputer", "k8"),
    ]
    for part in LIBRISPEECH_PARTS[1:]:
        assert (tmp_path / "exp" / "imputer" / f"wer-{part}-k8.txt").is_file()
    lm = _make(
        "score-ctc-lm",
        f"CORPUS_DIR={tiny_librispeech}",
        f"DATA={tmp_path / 'data'}",
        f"EXP={tmp_path / 'exp'}",
        f"CONF={conf}",
        "VOCAB=40",
        "LM_WEIGHTS=0.5 1",
        "WORD_SCORES=0",
        "LM_PRIOR_SIZE=2000",  # wordfreq's 2,000 commonest words join the transcripts' own
        timeout=300,
    )
    assert lm.returncode == 0, lm.stdout[-3000:] + lm.stderr[-3000:]
    lexicons = list((tmp_path / "data").glob("*/lang/lexicon_bpe40-wordfreq2000.txt"))
    assert len(lexicons) == 1 and "BECAUSE" in lexicons[0].read_text().split()
    tuned = json.loads((tmp_path / "exp" / "ctc" / "lm-weights.json").read_text())
    assert [g["lm_weight"] for g in tuned["grid"]] == [0.5, 1.0]
    for part in LIBRISPEECH_PARTS[1:]:
        assert (tmp_path / "exp" / "ctc" / f"wer-{part}-lm.txt").is_file()


def test_download_refuses_unknown_parts(tmp_path):
    from imputer_asr.data.prepare import download_corpus

    with pytest.raises(ValueError, match="not LibriSpeech part"):
        download_corpus(tmp_path, ["train-clean-100", "train-dirty-7"])
    assert not any(tmp_path.iterdir())


def test_fill_results_section_keeps_the_rest(tmp_path):
    from imputer_asr.evaluation.report import fill_results_section

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- r:begin -->\nold\n<!-- r:end -->\noutro\n")
    fill_results_section(readme, "| new |", "r")
    fill_results_section(readme, "| newer |", "r")
    assert readme.read_text() == "intro\n<!-- r:begin -->\n| newer |\n<!-- r:end -->\noutro\n"
    with pytest.raises(ValueError, match="README.md: no '<!-- other:begin -->'"):
        fill_results_section(readme, "| x |", "other")
