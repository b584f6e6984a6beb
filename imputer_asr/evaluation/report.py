"""Comparison reports: the WER / decoding-cost table of several experiments, and pictures.

An experiment directory holds, for each decoding ``<part>-<decoder>``, the ``wer-<part>-<decoder>.json``
written by the score stage (:func:`imputer_asr.evaluation.scoring.write_report`; ``wer`` and ``cer`` are
fractions) and the ``timing-<part>-<decoder>.json`` written by the decode stage (``decode_seconds``,
``rtf`` and, for the Imputer, ``evaluations_per_batch``). The recipe's decoders are ``greedy`` (CTC)
and ``k1`` ... ``k8`` and ``adaptive`` (Imputer). A decoder name never contains ``-``, so the
decodings of ``test`` and of ``test-other`` cannot be confused.

- :func:`collect_results` reads them into :class:`ResultRow` s, :func:`format_markdown_table`
  renders a GitHub table, :func:`plot_wer_vs_steps` draws WER and real-time factor against the
  number of network evaluations.
- :func:`plot_imputation` draws one utterance's alignment being filled in step by step,
  :func:`show_imputation` decodes one cut of a manifest with a packaged model and draws it.

>>> row = ResultRow("Imputer", "k4", wer=11.1, cer=4.25, steps=4.0, decode_seconds=3.5, rtf=0.0123)
>>> print(format_markdown_table([row]))
| system  | decoder | WER % | CER % | steps | decode s |    RTF |
|:--------|:--------|------:|------:|------:|---------:|-------:|
| Imputer | k4      | 11.10 |  4.25 |     4 |     3.50 | 0.0123 |
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.decoding.imputer import ImputerResult
from imputer_asr.evaluation.plots import _save_png
from imputer_asr.files import write_text_atomic

if TYPE_CHECKING:  # matplotlib is imported where a picture is drawn: it costs every command ~1 s
    from matplotlib.axes import Axes

__all__ = [
    "ResultRow",
    "collect_results",
    "format_markdown_table",
    "format_wer_by_part",
    "fill_results_section",
    "plot_wer_vs_steps",
    "plot_imputation",
    "show_imputation",
    "write_markdown_report",
]

_K_DECODER = re.compile(r"k(\d+)$")
_TABLE_NOTE = (
    "steps: network evaluations per batch (the mean for adaptive decoding, 1 for CTC greedy); "
    "RTF: decoding seconds per second of audio."
)
_MASKED = "#d4d4d4"
_BLANK = "#ffffff"
# Light, distinct fills: consecutive output tokens alternate through them, so black text stays readable.
_TOKEN_COLOURS = ("#8dd3c7", "#fdb462", "#bebada", "#fb8072", "#80b1d3", "#b3de69", "#fccde5", "#ffed6f")


@dataclass(frozen=True)
class ResultRow:
    """One decoding of one system: WER and CER in percent, ``steps`` network evaluations per
    batch (a mean for adaptive decoding), wall time of the decoding and its real-time factor."""

    system: str
    decoder: str
    wer: float
    cer: float
    steps: float
    decode_seconds: float
    rtf: float


# ---------------------------------------------------------------------------------------------
# Results table


def _decoder_order(decoder: str) -> tuple[int, int, str]:
    """greedy, then k1 < k2 < ... by K, then adaptive, then anything else by name."""
    if decoder == "greedy":
        return (0, 0, "")
    if m := _K_DECODER.match(decoder):
        return (1, int(m.group(1)), "")
    if decoder == "adaptive":
        return (2, 0, "")
    return (3, 0, decoder)


def _read_json(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    """A JSON object that holds numbers under ``keys``; ValueError naming the file otherwise."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    for key in keys:
        if not isinstance(obj.get(key), (int, float)):
            raise ValueError(f"{path}: no number under {key!r}")
    return obj


def _read_row(system: str, decoder: str, wer_path: Path, timing_path: Path) -> ResultRow:
    if not timing_path.is_file():
        raise ValueError(
            f"{timing_path}: no such timing file for {wer_path.name}; rerun the decode stage of "
            f"{system!r} (it writes timing-<part>-<decoder>.json)"
        )
    scores = _read_json(wer_path, ("wer", "cer"))
    timing = _read_json(timing_path, ("decode_seconds", "rtf"))
    # The Imputer's decode writes evaluations per utterance (fewer than K when adaptive decoding
    # stops early) and per batch; CTC greedy runs the network once per batch.
    steps = timing.get(
        "evaluations_per_utterance", timing.get("evaluations_per_batch", timing.get("steps", 1))
    )
    return ResultRow(
        system=system,
        decoder=decoder,
        wer=100.0 * scores["wer"],
        cer=100.0 * scores["cer"],
        steps=float(steps),
        decode_seconds=float(timing["decode_seconds"]),
        rtf=float(timing["rtf"]),
    )


def collect_results(exp_dirs: Mapping[str, Path], part: str) -> list[ResultRow]:
    """Rows of every ``wer-<part>-<decoder>.json`` (with its timing file) of every system.

    Args:
        exp_dirs: system label -> experiment directory, in the order the rows should come.
        part: the data part, e.g. ``test``.

    Returns:
        The rows of each system in turn, its decoders ordered greedy, k1, k2, ..., adaptive.

    Raises:
        ValueError: a directory is missing or holds no decoding of ``part``, a timing file is
            missing (the message names it), or a file is not the JSON the stages write.
    """
    if not part or "/" in part:
        raise ValueError(f"part must be a plain name such as 'test', got {part!r}")
    pattern = re.compile(rf"wer-{re.escape(part)}-([^-/]+)\.json$")
    rows: list[ResultRow] = []
    for system, exp_dir in exp_dirs.items():
        exp_dir = Path(exp_dir)
        if not exp_dir.is_dir():
            raise ValueError(f"{exp_dir}: no such experiment directory (system {system!r})")
        found = {m.group(1): p for p in exp_dir.glob(f"wer-{part}-*.json") if (m := pattern.match(p.name))}
        if not found:
            raise ValueError(f"{exp_dir}: no wer-{part}-<decoder>.json; run the score stage first")
        for decoder in sorted(found, key=_decoder_order):
            timing = exp_dir / f"timing-{part}-{decoder}.json"
            rows.append(_read_row(system, decoder, found[decoder], timing))
    return rows


def _format_steps(steps: float) -> str:
    return str(int(steps)) if float(steps).is_integer() else f"{steps:.2f}"


def format_markdown_table(rows: Sequence[ResultRow]) -> str:
    """A GitHub markdown table, columns padded to line up; WER/CER with 2 decimals, RTF with 4.

    No trailing newline. Raises ValueError when there are no rows.
    """
    if not rows:
        raise ValueError("no results to tabulate")
    header = ("system", "decoder", "WER %", "CER %", "steps", "decode s", "RTF")
    body = [
        (
            r.system,
            r.decoder,
            f"{r.wer:.2f}",
            f"{r.cer:.2f}",
            _format_steps(r.steps),
            f"{r.decode_seconds:.2f}",
            f"{r.rtf:.4f}",
        )
        for r in rows
    ]
    return _markdown(header, body, left=(True, True, False, False, False, False, False))


def _markdown(header: Sequence[str], body: Sequence[Sequence[str]], left: Sequence[bool]) -> str:
    """Cells padded so that the columns line up; ``left`` aligns a column left, else right."""
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(cells, widths, left, strict=True))
        return "| " + " | ".join(padded) + " |"

    dashes = (
        ":" + "-" * (w + 1) if lft else "-" * (w + 1) + ":" for w, lft in zip(widths, left, strict=True)
    )
    return "\n".join([line(header), "|" + "|".join(dashes) + "|", *(line(b) for b in body)])


def format_wer_by_part(rows_by_part: Mapping[str, Sequence[ResultRow]]) -> str:
    """WER % of each system and decoder (a line) on each part (a column; "-" where not decoded).

    >>> ctc = ResultRow("CTC", "greedy", wer=5.0, cer=2.0, steps=1, decode_seconds=1.0, rtf=0.01)
    >>> print(format_wer_by_part({"test-clean": [ctc], "test-other": []}))
    | system | decoder | test-clean | test-other |
    |:-------|:--------|-----------:|-----------:|
    | CTC    | greedy  |       5.00 |          - |
    """
    keys = list(dict.fromkeys((r.system, r.decoder) for rows in rows_by_part.values() for r in rows))
    if not keys:
        raise ValueError("no results to tabulate")
    wer = {(part, r.system, r.decoder): r.wer for part, rows in rows_by_part.items() for r in rows}
    body = [
        (
            system,
            decoder,
            *(f"{wer[p, system, decoder]:.2f}" if (p, system, decoder) in wer else "-" for p in rows_by_part),
        )
        for system, decoder in keys
    ]
    return _markdown(
        ("system", "decoder", *rows_by_part), body, left=(True, True, *(False for _ in rows_by_part))
    )


def fill_results_section(path: Path, table: str, section: str = "results") -> None:
    """Put ``table`` between the ``<!-- <section>:begin -->`` and ``<!-- <section>:end -->`` lines of
    ``path`` (a recipe's README), keeping the rest of the file; ValueError naming the file when it
    has no such section."""
    path = Path(path)
    begin_mark, end_mark = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    if not path.is_file():
        raise ValueError(f"{path}: no such file to write the results into")
    text = path.read_text(encoding="utf-8")
    begin, end = text.find(begin_mark), text.find(end_mark)
    if begin < 0 or end < begin:
        raise ValueError(f"{path}: no '{begin_mark}' ... '{end_mark}' section to fill")
    write_text_atomic(path, text[: begin + len(begin_mark)] + "\n" + table + "\n" + text[end:])


def write_markdown_report(rows: Sequence[ResultRow], out_md: Path, title: str = "") -> str:
    """Write the table (under ``# title`` when given) and a note on the columns; return the text."""
    text = (f"# {title}\n\n" if title else "") + format_markdown_table(rows) + f"\n\n{_TABLE_NOTE}\n"
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out_md), text)
    return text


# ---------------------------------------------------------------------------------------------
# WER and speed against the number of steps


def _label_point(ax: Axes, x: float, y: float, text: str, colour: str, below: bool = False) -> None:
    ax.annotate(
        text,
        (x, y),
        xytext=(0, -14 if below else 8),
        textcoords="offset points",
        ha="center",
        fontsize=8,
        color=colour,
        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
    )


def _draw_metric(ax: Axes, rows: Sequence[ResultRow], value: str, fmt: str) -> list[float]:
    """One panel: K-step decodings as a line per system, adaptive as a star, greedy as a dashed
    horizontal line. Returns the x positions used."""
    xs: list[float] = []
    colours = {s: f"C{i}" for i, s in enumerate(dict.fromkeys(r.system for r in rows))}
    for system, colour in colours.items():
        mine = [r for r in rows if r.system == system]
        k_rows = sorted((r for r in mine if _K_DECODER.match(r.decoder)), key=lambda r: r.steps)
        if k_rows:
            x, y = [r.steps for r in k_rows], [getattr(r, value) for r in k_rows]
            ax.plot(x, y, marker="o", color=colour, label=f"{system} (K steps)")
            for xi, yi in zip(x, y, strict=True):
                _label_point(ax, xi, yi, fmt.format(yi), colour)
        for r in mine:
            y = getattr(r, value)
            if r.decoder == "greedy":
                ax.axhline(y, color=colour, linestyle="--", label=f"{system} greedy ({fmt.format(y)})")
                continue
            if _K_DECODER.match(r.decoder):
                xs.append(r.steps)
                continue
            adaptive = r.decoder == "adaptive"
            ax.plot(
                [r.steps],
                [y],
                marker="*" if adaptive else "X",
                markersize=15 if adaptive else 9,
                linestyle="none",
                color=colour,
                markeredgecolor="black",
                label=f"{system} {r.decoder} ({_format_steps(r.steps)} steps)",
            )
            _label_point(ax, r.steps, y, fmt.format(y), colour, below=True)
            xs.append(r.steps)
    return xs


def _steps_axis(ax: Axes, xs: Sequence[float]) -> None:
    """Log2 x axis with a tick at every whole number of steps that is plotted."""
    ticks = sorted({int(x) for x in xs if float(x).is_integer()} | {1})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.minorticks_off()
    lo, hi = min([*xs, 1.0]), max([*xs, float(ticks[-1]), 2.0])
    ax.set_xlim(lo / 1.25, hi * 1.25)
    ax.set_xlabel("network evaluations per batch (K)")
    ax.grid(True, alpha=0.3)


def plot_wer_vs_steps(rows: Sequence[ResultRow], out_png: Path, title: str = "") -> None:
    """Two panels against the number of network evaluations: WER, and real-time factor.

    Each system's K-step decodings form a line, its adaptive decoding a star at its mean number of
    evaluations, and a greedy CTC decoding a dashed horizontal line (it runs the network once).
    """
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("plot_wer_vs_steps needs at least one result")
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax_wer, ax_rtf = fig.subplots(1, 2)
    xs = _draw_metric(ax_wer, rows, "wer", "{:.2f}")
    _draw_metric(ax_rtf, rows, "rtf", "{:.4f}")
    for ax in (ax_wer, ax_rtf):
        _steps_axis(ax, xs)
        ax.legend(fontsize=8)
    ax_wer.set(title="WER vs decoding steps", ylabel="WER (%)")
    ax_wer.set_ylim(bottom=0, top=max(r.wer for r in rows) * 1.2 + 0.5)
    ax_rtf.set(title="decoding cost vs decoding steps", ylabel="real-time factor (decode s / audio s)")
    ax_rtf.set_ylim(bottom=0, top=max(r.rtf for r in rows) * 1.2 or 1.0)
    if title:
        fig.suptitle(title)
    _save_png(fig, out_png)


# ---------------------------------------------------------------------------------------------
# One utterance imputed step by step


def _utterance_frames(result: ImputerResult, utterance: int) -> tuple[list[int], list[int], int]:
    """Final alignment, fixing step of each frame (1-based) and the number of steps."""
    n = result.alignment.size(0)
    if not 0 <= utterance < n:
        raise ValueError(f"utterance must be in [0, {n}), got {utterance}")
    length = int(result.lengths[utterance])
    alignment = result.alignment[utterance, :length].tolist()
    history = result.history[utterance, :length].tolist()
    steps = result.evaluations
    if length == 0 or any(not 1 <= h <= steps for h in history) or min(alignment) < 0:
        raise ValueError(f"utterance {utterance}: alignment/history inconsistent with {steps} steps")
    return alignment, history, steps


def _segment_colours(alignment: Sequence[int], blank: int) -> list[str | None]:
    """Fill colour of each frame of the final alignment: None for blank, otherwise a colour per
    output token (a run of repeats is one token), alternating so neighbours always differ."""
    colours: list[str | None] = []
    index, prev = -1, None
    for token in alignment:
        if token == blank:
            colours.append(None)
        else:
            index += token != prev
            colours.append(_TOKEN_COLOURS[index % len(_TOKEN_COLOURS)])
        prev = token
    return colours


def _cell_image(colours: Sequence[str | None], history: Sequence[int], steps: int) -> np.ndarray:
    """(steps, T, 3) RGB: the state of every frame after every step."""
    from matplotlib.colors import to_rgb

    masked, blank = np.array(to_rgb(_MASKED)), np.array(to_rgb(_BLANK))
    image = np.empty((steps, len(colours), 3))
    for t, (colour, fixed_at) in enumerate(zip(colours, history, strict=True)):
        done = blank if colour is None else np.array(to_rgb(colour))
        for s in range(steps):
            image[s, t] = done if fixed_at <= s + 1 else masked
    return image


def _piece_label(piece: str) -> str:
    return piece.replace("\u2581", "_") if piece != "\u2581" else "_"


def _draw_cells(
    ax: Axes,
    alignment: Sequence[int],
    history: Sequence[int],
    colours: Sequence[str | None],
    steps: int,
    tokenizer: Tokenizer,
    blank: int,
) -> None:
    from matplotlib.patches import Rectangle

    frames = len(alignment)
    image = _cell_image(colours, history, steps)
    ax.imshow(image, aspect="auto", interpolation="nearest", extent=(-0.5, frames - 0.5, steps + 0.5, 0.5))
    for t, (token, fixed_at) in enumerate(zip(alignment, history, strict=True)):
        ax.add_patch(
            Rectangle((t - 0.5, fixed_at - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.4, zorder=3)
        )
        if token != blank:
            text = _piece_label(tokenizer.id_to_piece(token))
            ax.text(
                t,
                fixed_at,
                text,
                ha="center",
                va="center",
                fontsize=7,
                zorder=4,
                rotation=90 if len(text) > 1 else 0,
            )
    ax.set_xticks(np.arange(-0.5, frames, 1), minor=True)
    ax.set_yticks(np.arange(0.5, steps + 1, 1), minor=True)
    ax.grid(which="minor", color="#b0b0b0", linewidth=0.3)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(range(0, frames, 10))
    ax.set_yticks(range(1, steps + 1), labels=[f"step {s}" for s in range(1, steps + 1)])


def _annotate_steps(ax: Axes, history: Sequence[int], steps: int) -> None:
    """Right of each row: frames of the whole utterance fixed at that step, and still masked."""
    for s in range(1, steps + 1):
        new = sum(h == s for h in history)
        left = sum(h > s for h in history)
        ax.text(
            1.005,
            s,
            f"+{new} fixed, {left} masked",
            transform=ax.get_yaxis_transform(),
            va="center",
            fontsize=8,
        )


def _legend_handles() -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=_MASKED, edgecolor="#b0b0b0", label="[MASK]"),
        Patch(facecolor=_BLANK, edgecolor="#b0b0b0", label="fixed to blank"),
        Patch(facecolor=_TOKEN_COLOURS[0], edgecolor="#b0b0b0", label="fixed to a token (piece shown)"),
        Patch(facecolor="none", edgecolor="black", linewidth=1.4, label="fixed at this step"),
        Line2D([], [], color="#404040", linewidth=1.2, label="block boundary"),
    ]


def plot_imputation(
    result: ImputerResult,
    tokenizer: Tokenizer,
    out_png: Path,
    title: str = "",
    *,
    utterance: int = 0,
    block_size: int | None = None,
    reference: str | None = None,
    max_frames: int = 120,
) -> None:
    """Draw how Imputer decoding filled in one utterance's alignment, step by step.

    Columns are encoder frames, rows the decoding steps 1..K (top to bottom); a cell shows the
    frame after that step: [MASK] (grey), blank (white) or a token (coloured, one colour per output
    token). The cell of the step that fixed a frame has a bold border and, for a token, its
    sentencepiece piece (``_`` marks a word start). Under the grid: the collapsed transcript and,
    when given, the reference. Utterances longer than ``max_frames`` show their first
    ``max_frames`` frames (the title says so).

    Args:
        result: decoding of a batch (e.g. :func:`imputer_asr.decoding.imputer.decode_imputer`).
        tokenizer: the model's tokenizer (pieces and the blank id).
        utterance: which utterance of the batch.
        block_size: B, to draw block boundaries; None draws none.
    """
    from matplotlib.figure import Figure

    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    alignment, history, steps = _utterance_frames(result, utterance)
    blank = tokenizer.blank_id
    total = len(alignment)
    frames = min(total, max_frames)
    shown = f"first {frames} of {total} frames" if frames < total else f"{total} frames"
    heading = f"{title} ({shown})" if title else f"Imputer decoding, {steps} steps ({shown})"
    width = max(9.0, 2.6 + 0.17 * frames)
    text = _transcripts(
        tokenizer.decode(result.tokens[utterance]), reference, frames < total, int(width * 11)
    )
    text_height = 0.2 * (text.count("\n") + 1) + 0.4  # and a row for the legend

    fig = Figure(figsize=(width, 1.4 + 0.42 * steps + text_height), layout="constrained")
    ax, ax_text = fig.subplots(2, 1, height_ratios=(0.42 * steps, text_height))
    colours = _segment_colours(alignment, blank)[:frames]
    _draw_cells(ax, alignment[:frames], history[:frames], colours, steps, tokenizer, blank)
    _annotate_steps(ax, history, steps)
    if block_size:
        for edge in range(block_size, frames, block_size):
            ax.axvline(edge - 0.5, color="#404040", linewidth=1.2, zorder=5)
    ax.set_xlabel("encoder frame")
    ax.set_title(heading, loc="left")
    ax_text.axis("off")
    ax_text.text(
        0.0, 1.0, text, va="top", ha="left", fontsize=10, family="monospace", transform=ax_text.transAxes
    )
    ax_text.legend(handles=_legend_handles(), loc="lower left", ncol=5, fontsize=8, frameon=False)
    _save_png(fig, out_png)


def _transcripts(hypothesis: str, reference: str | None, truncated: bool, width: int) -> str:
    """The hypothesis (and reference) lines under the grid, wrapped at ``width`` characters."""
    lines = [f"hypothesis{' (whole utterance)' if truncated else ''}: {hypothesis or '(empty)'}"]
    if reference is not None:
        lines.append(f"reference:  {reference}")
    return "\n".join(textwrap.fill(line, width, subsequent_indent="    ") for line in lines)


# ---------------------------------------------------------------------------------------------
# From a packaged model and a manifest


def show_imputation(
    model_path: Path,
    cuts_path: Path,
    cut_id: str | None,
    steps: int | None,
    out_png: Path,
    *,
    max_frames: int = 120,
) -> ImputerResult:
    """Decode one cut with :func:`decode_imputer` and draw it with :func:`plot_imputation`.

    Args:
        model_path: packaged ``model.pt`` (:func:`imputer_asr.training.checkpoint.load_packaged`).
        cuts_path: cuts manifest with features (the fbank stage's output).
        cut_id: the cut to draw; None takes the first cut of the manifest.
        steps: K; None uses the block size B of the model's imputer config.
        out_png: where to write the picture.

    Returns:
        The decoding of the cut alone (a batch of one).
    """
    from lhotse import CutSet

    from imputer_asr.data.dataset import AsrDataset
    from imputer_asr.decoding.imputer import decode_imputer
    from imputer_asr.training.checkpoint import load_packaged

    packaged = load_packaged(model_path)
    if not Path(cuts_path).is_file():
        raise ValueError(f"{cuts_path}: no such cuts manifest; run the fbank stage first")
    cuts = CutSet.from_file(cuts_path)
    cut = _pick_cut(cuts, cut_id, cuts_path)
    block_size = packaged.config.imputer.block_size
    steps = block_size if steps is None else steps
    batch = AsrDataset(packaged.tokenizer)[CutSet.from_cuts([cut])]
    result = decode_imputer(packaged.model, batch["features"], batch["feature_lengths"], steps, block_size)
    plot_imputation(
        result,
        packaged.tokenizer,
        out_png,
        f"{cut.id}: Imputer decoding in K={steps} steps, blocks of B={block_size} frames",
        block_size=block_size,
        reference=batch["texts"][0],
        max_frames=max_frames,
    )
    return result


def _pick_cut(cuts, cut_id: str | None, cuts_path: Path):
    if cut_id is None:
        for cut in cuts:
            return cut
        raise ValueError(f"{cuts_path}: the manifest holds no cuts")
    for cut in cuts:
        if cut.id == cut_id:
            return cut
    raise ValueError(f"{cuts_path}: no cut with id {cut_id!r}")
