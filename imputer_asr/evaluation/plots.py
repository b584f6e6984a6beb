"""Training curves from a ``train_log.jsonl``: loss, learning rate and dev WER against wall time.

The log is JSON Lines, one object per line. Training records come every few steps::

    {"kind": "train", "epoch": 1, "step": 120, "wall_time": 53.2, "loss": 1.83, "lr": 0.001,
     "audio_seconds": 4000.0}

and a validation record at the end of each epoch (``wer``/``cer`` are fractions and may be
missing)::

    {"kind": "valid", "epoch": 1, "step": 400, "wall_time": 180.0, "loss": 1.2, "wer": 0.45,
     "cer": 0.2}

``wall_time`` is seconds since training started. Figures are drawn on matplotlib's Agg canvas
without pyplot, so nothing needs a display and no global backend is switched; PNGs are
written atomically so a dashboard polling the file never reads half an image.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imputer_asr.files import write_bytes_atomic

if TYPE_CHECKING:  # matplotlib is imported where a picture is drawn: it costs every command ~1 s
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "TrainingSeries",
    "read_log",
    "training_series",
    "plot_training_curves",
    "plot_wer_vs_time",
]

_NO_VALID = "no validation yet"
_NO_TRAIN = "no training records yet"


@dataclass(frozen=True)
class TrainingSeries:
    """The (x, y) series that the training-curves figure draws.

    Steps are optimizer steps, times are minutes of wall time, WER and CER are percentages.
    """

    train_loss: tuple[tuple[int, float], ...]
    valid_loss: tuple[tuple[int, float], ...]
    lr: tuple[tuple[int, float], ...]
    dev_wer: tuple[tuple[float, float], ...]
    dev_cer: tuple[tuple[float, float], ...]


def read_log(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines training log; blank lines are skipped.

    An unparsable *last* line is dropped (a run killed mid-write leaves one); an unparsable
    line anywhere else, or a line that is not a JSON object, raises ValueError.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                break
            raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {line[:80]!r}")
        records.append(record)
    return records


def _points(
    records: Sequence[Mapping[str, Any]], kind: str, x_key: str, y_key: str
) -> list[tuple[float, float]]:
    """(x, y) of the records of ``kind`` that carry both keys with non-null values."""
    return [
        (r[x_key], float(r[y_key]))
        for r in records
        if r.get("kind") == kind and r.get(x_key) is not None and r.get(y_key) is not None
    ]


def training_series(records: Sequence[Mapping[str, Any]]) -> TrainingSeries:
    """Extract the plotted series from log records (the figure's data, testable without it)."""
    wer = _points(records, "valid", "wall_time", "wer")
    cer = _points(records, "valid", "wall_time", "cer")
    return TrainingSeries(
        train_loss=tuple((int(s), y) for s, y in _points(records, "train", "step", "loss")),
        valid_loss=tuple((int(s), y) for s, y in _points(records, "valid", "step", "loss")),
        lr=tuple((int(s), y) for s, y in _points(records, "train", "step", "lr")),
        dev_wer=tuple((t / 60.0, 100.0 * y) for t, y in wer),
        dev_cer=tuple((t / 60.0, 100.0 * y) for t, y in cer),
    )


def _say(ax: Axes, message: str) -> None:
    """Write ``message`` in the middle of an empty panel."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")


def _draw(ax: Axes, points: Sequence[tuple[float, float]], **style: Any) -> None:
    ax.plot([x for x, _ in points], [y for _, y in points], **style)


def _draw_loss(ax: Axes, series: TrainingSeries) -> None:
    if series.train_loss:
        _draw(ax, series.train_loss, label="train", linewidth=1)
    if series.valid_loss:
        _draw(ax, series.valid_loss, label="valid", marker="o")
    if not series.train_loss and not series.valid_loss:
        _say(ax, _NO_TRAIN)
    else:
        ax.legend()
    ax.set(title="loss", xlabel="step", ylabel="loss")


def _draw_lr(ax: Axes, series: TrainingSeries) -> None:
    if series.lr:
        _draw(ax, series.lr, linewidth=1)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    else:
        _say(ax, _NO_TRAIN)
    ax.set(title="learning rate", xlabel="step", ylabel="lr")


def _draw_dev_error(ax: Axes, series: TrainingSeries) -> None:
    if series.dev_wer:
        _draw(ax, series.dev_wer, label="WER", marker="o")
    if series.dev_cer:
        _draw(ax, series.dev_cer, label="CER", marker="s")
    if not series.dev_wer and not series.dev_cer:
        _say(ax, _NO_VALID)
    else:
        ax.legend()
    ax.set(title="dev error vs wall time", xlabel="wall time (min)", ylabel="%")


def _save_png(fig: Figure, out_png: Path) -> None:
    """Render ``fig`` with Agg and replace ``out_png`` atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(out_png, buf.getvalue())


def plot_training_curves(log_path: Path, out_png: Path, title: str = "") -> None:
    """Draw loss vs step, learning rate vs step and dev WER/CER vs wall time into a PNG."""
    from matplotlib.figure import Figure

    series = training_series(read_log(log_path))
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_loss, ax_lr, ax_err = fig.subplots(1, 3)
    _draw_loss(ax_loss, series)
    _draw_lr(ax_lr, series)
    _draw_dev_error(ax_err, series)
    for ax in (ax_loss, ax_lr, ax_err):
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    _save_png(fig, out_png)


def plot_wer_vs_time(runs: Mapping[str, Path], out_png: Path, title: str = "") -> None:
    """Overlay dev WER against wall time for several runs; ``runs`` maps label -> log path.

    Runs without validation records appear in the legend as ``label (no validation yet)``.
    """
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("plot_wer_vs_time needs at least one run")
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for label, log_path in runs.items():
        wer = training_series(read_log(log_path)).dev_wer
        if wer:
            _draw(ax, wer, label=label, marker="o")
        else:
            ax.plot([], [], label=f"{label} ({_NO_VALID})")
    if not any(line.get_xydata().size for line in ax.get_lines()):
        _say(ax, _NO_VALID)
    ax.legend()
    ax.grid(True, alpha=0.3)
    ax.set(title=title or "dev WER vs wall time", xlabel="wall time (min)", ylabel="WER (%)")
    _save_png(fig, out_png)
