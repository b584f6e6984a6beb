"""Tests for imputer_asr.evaluation.report: result collection, the markdown table, the pictures, the CLI."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from imputer_asr.cli import main
from imputer_asr.config import ExperimentConfig
from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer
from imputer_asr.decoding.imputer import ImputerResult
from imputer_asr.evaluation.report import (
    ResultRow,
    collect_results,
    format_markdown_table,
    plot_imputation,
    plot_wer_vs_steps,
    show_imputation,
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXTS = ["THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS UP"] * 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return train_tokenizer(_TEXTS, tmp_path_factory.mktemp("bpe") / "bpe.model", vocab_size=40)


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == _PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _write_decoding(exp: Path, name: str, wer: float, cer: float, seconds: float, **timing) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    (exp / f"wer-{name}.json").write_text(json.dumps({"wer": wer, "cer": cer, "num_utterances": 10}))
    audio = 100.0
    payload = {"audio_seconds": audio, "decode_seconds": seconds, "rtf": seconds / audio, **timing}
    (exp / f"timing-{name}.json").write_text(json.dumps(payload))


def _fake_experiments(root: Path) -> dict[str, Path]:
    ctc, imp = root / "ctc", root / "imputer"
    _write_decoding(ctc, "test-greedy", 0.1234, 0.05, 1.5)
    _write_decoding(ctc, "dev-greedy", 0.5, 0.5, 1.0)  # another part: ignored
    _write_decoding(ctc, "test-other-greedy", 0.9, 0.9, 1.0)  # part test-other: ignored
    for k, wer in ((8, 0.10), (1, 0.13), (4, 0.105), (2, 0.12)):  # written out of order
        _write_decoding(imp, f"test-k{k}", wer, wer / 2, 1.2 * k, steps=k, evaluations_per_batch=float(k))
    _write_decoding(imp, "test-adaptive", 0.1015, 0.0501, 4.0, steps=8, evaluations_per_batch=10 / 3)
    return {"CTC": ctc, "Imputer": imp}


_EXPECTED_TABLE = """\
| system  | decoder  | WER % | CER % | steps | decode s |    RTF |
|:--------|:---------|------:|------:|------:|---------:|-------:|
| CTC     | greedy   | 12.34 |  5.00 |     1 |     1.50 | 0.0150 |
| Imputer | k1       | 13.00 |  6.50 |     1 |     1.20 | 0.0120 |
| Imputer | k2       | 12.00 |  6.00 |     2 |     2.40 | 0.0240 |
| Imputer | k4       | 10.50 |  5.25 |     4 |     4.80 | 0.0480 |
| Imputer | k8       | 10.00 |  5.00 |     8 |     9.60 | 0.0960 |
| Imputer | adaptive | 10.15 |  5.01 |  3.33 |     4.00 | 0.0400 |"""


def test_collect_results_and_table(tmp_path: Path) -> None:
    rows = collect_results(_fake_experiments(tmp_path), "test")
    assert [(r.system, r.decoder) for r in rows] == [
        ("CTC", "greedy"),
        ("Imputer", "k1"),
        ("Imputer", "k2"),
        ("Imputer", "k4"),
        ("Imputer", "k8"),
        ("Imputer", "adaptive"),
    ]
    assert rows[0].wer == pytest.approx(12.34) and rows[0].steps == 1.0
    assert rows[-1].steps == pytest.approx(10 / 3)
    assert format_markdown_table(rows) == _EXPECTED_TABLE


def test_missing_timing_names_the_file(tmp_path: Path) -> None:
    exps = _fake_experiments(tmp_path)
    missing = exps["Imputer"] / "timing-test-k4.json"
    missing.unlink()
    with pytest.raises(ValueError, match=str(missing)):
        collect_results(exps, "test")


def test_missing_or_empty_experiment(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such experiment directory"):
        collect_results({"CTC": tmp_path / "nope"}, "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="wer-test-<decoder>.json"):
        collect_results({"CTC": tmp_path / "empty"}, "test")


def test_corrupt_wer_file_is_named(tmp_path: Path) -> None:
    exps = _fake_experiments(tmp_path)
    (exps["CTC"] / "wer-test-greedy.json").write_text("{not json")
    with pytest.raises(ValueError, match="wer-test-greedy.json"):
        collect_results(exps, "test")


def test_table_needs_rows() -> None:
    with pytest.raises(ValueError):
        format_markdown_table([])


def test_plot_wer_vs_steps(tmp_path: Path) -> None:
    rows = collect_results(_fake_experiments(tmp_path), "test")
    matched = ResultRow("CTC-matched", "greedy", wer=11.5, cer=4.9, steps=1, decode_seconds=1.6, rtf=0.016)
    out = tmp_path / "plots" / "wer_vs_steps.png"
    plot_wer_vs_steps([*rows, matched], out, title="synthetic test")
    width, height = _png_size(out)
    assert (width, height) == (1300, 500)
    assert [p.name for p in out.parent.iterdir()] == ["wer_vs_steps.png"]  # no temp file left


def _synthetic_result(tokenizer: Tokenizer, frames: int = 40, steps: int = 4) -> ImputerResult:
    """A 40-frame alignment of "THE CAT SAT" (pieces with repeats and blanks), fixed over 4 steps:
    in every block of 8 frames two frames per step, the last step fixing the rest."""
    ids = tokenizer.encode("THE CAT SAT ON THE MAT")
    alignment = [0] * frames
    for i, token in enumerate(ids):
        start = 2 + 6 * i
        if start + 1 < frames:
            alignment[start] = alignment[start + 1] = token
    rng = np.random.default_rng(0)
    history = []
    for block in range(0, frames, 8):
        order = rng.permutation(min(8, frames - block))
        history += [min(1 + int(r) // 2, steps) for r in order]
    pad = 5  # padding past the length, as in a batch
    align = torch.tensor([alignment + [-1] * pad])
    hist = torch.tensor([history + [-1] * pad])
    from imputer_asr.model.alignment import collapse

    return ImputerResult(align, torch.tensor([frames]), [collapse(alignment, 0)], hist, steps)


def test_plot_imputation(tmp_path: Path, tokenizer: Tokenizer) -> None:
    result = _synthetic_result(tokenizer)
    out = tmp_path / "imputation.png"
    plot_imputation(result, tokenizer, out, "synthetic", block_size=8, reference="THE CAT SAT ON THE MAT")
    width, height = _png_size(out)
    assert width >= 900 and 300 <= height <= 600


def test_plot_imputation_truncates_long_utterances(tmp_path: Path, tokenizer: Tokenizer) -> None:
    out = tmp_path / "short.png"
    plot_imputation(_synthetic_result(tokenizer), tokenizer, out, max_frames=16)
    _png_size(out)
    with pytest.raises(ValueError, match="utterance"):
        plot_imputation(_synthetic_result(tokenizer), tokenizer, out, utterance=1)


def test_plot_imputation_rejects_inconsistent_history(tmp_path: Path, tokenizer: Tokenizer) -> None:
    result = _synthetic_result(tokenizer)
    bad = ImputerResult(result.alignment, result.lengths, result.tokens, result.history + 10, 4)
    with pytest.raises(ValueError, match="inconsistent"):
        plot_imputation(bad, tokenizer, tmp_path / "bad.png")


def _cuts_with_features(tmp_path: Path, mel_bins: int) -> Path:
    """Two cuts of noise with fbank features stored in tmp_path."""
    import soundfile as sf
    from lhotse import (
        CutSet,
        Fbank,
        FbankConfig,
        LilcomChunkyWriter,
        Recording,
        RecordingSet,
        SupervisionSegment,
        SupervisionSet,
    )

    cuts, sups = [], []
    for i, seconds in enumerate((1.2, 2.0)):
        wav = tmp_path / f"utt{i}.wav"
        sf.write(wav, np.random.default_rng(i).normal(0, 0.1, int(16000 * seconds)), 16000)
        rec = Recording.from_file(wav, recording_id=f"utt{i}")
        sup = SupervisionSegment(f"utt{i}", f"utt{i}", 0.0, rec.duration, text="THE CAT SAT")
        cuts.append(rec)
        sups.append(sup)
    cuts = CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(cuts), supervisions=SupervisionSet.from_segments(sups)
    ).modify_ids(lambda cut_id: cut_id.split("-")[0])
    cuts = cuts.compute_and_store_features(
        Fbank(FbankConfig(num_mel_bins=mel_bins)), tmp_path / "feats", storage_type=LilcomChunkyWriter
    )
    path = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(path)
    return path


def test_show_imputation(tmp_path: Path, tokenizer: Tokenizer, tiny_model_config) -> None:
    from imputer_asr.model.conformer import ImputerModel
    from imputer_asr.training.checkpoint import package_model

    model_cfg = tiny_model_config(tokenizer)
    torch.manual_seed(0)
    package_model(
        ImputerModel(model_cfg).state_dict(),
        ExperimentConfig(model=model_cfg),
        tokenizer,
        tmp_path / "model.pt",
    )
    cuts = _cuts_with_features(tmp_path, mel_bins=20)
    result = show_imputation(tmp_path / "model.pt", cuts, "utt1", 4, tmp_path / "one.png")
    assert result.evaluations == 4 and result.alignment.size(0) == 1
    assert int(result.lengths[0]) == 49  # 2 s: 200 fbank frames -> 49 encoder frames
    _png_size(tmp_path / "one.png")
    assert (
        main(
            [
                "show-imputation",
                "--model",
                str(tmp_path / "model.pt"),
                "--cuts",
                str(cuts),
                "--out",
                str(tmp_path / "cli.png"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    _png_size(tmp_path / "cli.png")
    with pytest.raises(ValueError, match="no cut with id 'nope'"):
        show_imputation(tmp_path / "model.pt", cuts, "nope", 4, tmp_path / "x.png")


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exps = _fake_experiments(tmp_path)
    md, png = tmp_path / "out" / "compare-test.md", tmp_path / "out" / "wer_vs_steps.png"
    argv = ["compare", "--exp", f"CTC={exps['CTC']}", "--exp", f"Imputer={exps['Imputer']}"]
    argv += ["--exp", f"CTC-matched={tmp_path / 'missing'}", "--part", "test"]
    assert main([*argv, "--out-md", str(md), "--out-png", str(png)]) == 0
    captured = capsys.readouterr()
    assert _EXPECTED_TABLE in captured.out
    assert "CTC-matched" in captured.err and "skipping" in captured.err
    assert _EXPECTED_TABLE in md.read_text()
    _png_size(png)


def test_cli_compare_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out-md", str(tmp_path / "a.md"), "--out-png", str(tmp_path / "a.png")]
    assert main(["compare", "--exp", f"CTC={tmp_path / 'missing'}", *out]) == 1
    assert "no experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--exp", "no-equals-sign", *out])
    assert exc.value.code == 2
