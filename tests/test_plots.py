"""Tests for imputer_asr.evaluation.plots: log reading, extracted series and PNG output."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from imputer_asr.evaluation.plots import plot_training_curves, plot_wer_vs_time, read_log, training_series

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(epochs: int = 3, steps_per_epoch: int = 100) -> list[dict]:
    records: list[dict] = []
    for epoch in range(1, epochs + 1):
        for k in range(1, 5):
            step = (epoch - 1) * steps_per_epoch + 25 * k
            records.append(
                {
                    "kind": "train",
                    "epoch": epoch,
                    "step": step,
                    "wall_time": 0.5 * step,
                    "loss": 3.0 / step**0.5,
                    "lr": 1e-3 * min(1.0, step / 100),
                    "audio_seconds": 40.0 * step,
                }
            )
        step = epoch * steps_per_epoch
        records.append(
            {
                "kind": "valid",
                "epoch": epoch,
                "step": step,
                "wall_time": 60.0 * epoch,
                "loss": 2.0 / epoch,
                "wer": 0.6 / epoch,
                "cer": 0.3 / epoch,
            }
        )
    return records


def _write_log(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == _PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_read_log_round_trip(tmp_path: Path) -> None:
    records = _records()
    assert read_log(_write_log(tmp_path / "log.jsonl", records)) == records


def test_read_log_drops_truncated_last_line(tmp_path: Path) -> None:
    records = _records()
    log = _write_log(tmp_path / "log.jsonl", records, tail='{"kind": "train", "ste')
    assert read_log(log) == records


def test_read_log_rejects_corrupt_middle_line(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"kind": "train", "step": 1}\n{"kind": \n{"kind": "train", "step": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_log(log)


def test_training_series_units() -> None:
    series = training_series(_records(epochs=2))
    assert [t for t, _ in series.dev_wer] == [1.0, 2.0]  # minutes
    assert [w for _, w in series.dev_wer] == pytest.approx([60.0, 30.0])  # percent
    assert [c for _, c in series.dev_cer] == pytest.approx([30.0, 15.0])
    assert [s for s, _ in series.valid_loss] == [100, 200]
    assert [s for s, _ in series.train_loss] == [25, 50, 75, 100, 125, 150, 175, 200]
    assert series.lr[-1] == (200, pytest.approx(1e-3))


def test_training_series_skips_missing_wer() -> None:
    records = [
        {"kind": "valid", "step": 10, "wall_time": 30.0, "loss": 1.0},
        {"kind": "valid", "step": 20, "wall_time": 90.0, "loss": 0.9, "wer": None},
        {"kind": "valid", "step": 30, "wall_time": 120.0, "loss": 0.8, "wer": 0.25},
    ]
    series = training_series(records)
    assert series.dev_wer == ((2.0, 25.0),)
    assert series.dev_cer == ()
    assert len(series.valid_loss) == 3


def test_plot_training_curves_writes_png(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "train_log.jsonl", _records(), tail='{"kind": "va')
    out = tmp_path / "plots" / "curves.png"
    plot_training_curves(log, out, title="conformer-ctc tiny")
    width, height = _png_size(out)
    assert (width, height) == (1500, 450)
    # The curves are drawn from the log: another dev WER at one epoch changes the picture.
    changed = [dict(r, wer=0.9) if r["kind"] == "valid" and r["epoch"] == 2 else r for r in _records()]
    other = tmp_path / "other.png"
    plot_training_curves(_write_log(tmp_path / "other.jsonl", changed), other, title="conformer-ctc tiny")
    assert not np.array_equal(imread(out), imread(other))


def test_plot_training_curves_without_validation(tmp_path: Path) -> None:
    train_only = [r for r in _records() if r["kind"] == "train"]
    log = _write_log(tmp_path / "train_log.jsonl", train_only)
    out = tmp_path / "curves.png"
    plot_training_curves(log, out)
    assert _png_size(out) == (1500, 450)
    # No dev points: the picture differs from the one of the whole log.
    full = tmp_path / "full.png"
    plot_training_curves(_write_log(tmp_path / "full.jsonl", _records()), full)
    assert not np.array_equal(imread(out), imread(full))


def test_plot_training_curves_empty_log(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    log.write_text("")
    out = tmp_path / "curves.png"
    plot_training_curves(log, out)
    _png_size(out)


def test_plot_wer_vs_time_overlays_runs(tmp_path: Path) -> None:
    run_a = _write_log(tmp_path / "a.jsonl", _records(epochs=3))
    run_b = _write_log(tmp_path / "b.jsonl", [r for r in _records() if r["kind"] == "train"])
    out = tmp_path / "wer_vs_time.png"
    plot_wer_vs_time({"imputer": run_a, "ctc (no dev yet)": run_b}, out)
    width, height = _png_size(out)
    assert (width, height) == (800, 500)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # A second run with dev WER adds its curve to the picture.
    alone, both = tmp_path / "a.png", tmp_path / "a-and-c.png"
    run_c = _write_log(tmp_path / "c.jsonl", _records(epochs=2))
    plot_wer_vs_time({"imputer": run_a}, alone)
    plot_wer_vs_time({"imputer": run_a, "ctc": run_c}, both)
    assert not np.array_equal(imread(alone), imread(both))


def test_plot_wer_vs_time_needs_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_wer_vs_time({}, tmp_path / "x.png")
