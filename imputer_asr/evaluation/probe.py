"""Input-use probe of an Imputer: does the network read the partial alignment it is shown?

For each shown fraction p the expert alignment (the forced alignment of the transcript under the
model's own all-[MASK] output: the CTC expert of a CTC-initialised Imputer) is cut into blocks of B
frames and round(p * B) random frames of every block are shown (:func:`shown_frames`). The same shown
positions then carry one of four inputs:

- ``none``: nothing, every frame [MASK] (the CTC network; the baseline);
- ``expert``: the expert alignment's tokens;
- ``greedy``: the model's own greedy (per-frame argmax) all-[MASK] alignment;
- ``random``: uniformly random tokens of the vocabulary.

On the masked frames only (within the length and not shown) each input is scored against the expert
alignment: accuracy of the argmax, mean negative log-likelihood of the expert token, and mean
KL(p_input || p_none). A model that ignores its input scores every input as ``none``: an expert
NLL ratio NLL(expert) / NLL(none) of exactly 1 and a KL of exactly 0.

Two more figures: the size of what a token adds to the acoustic states (the mean norm of
``alignment_input(token) - alignment_input([MASK])`` over the vocabulary and over the expert tokens,
divided by the mean norm of the acoustic states it is added to), and how often K = 1 and K = B block
decoding disagree (frames of the final alignment, and collapsed token sequences).

:func:`probe_batches` works on batches of tensors (the dicts of :func:`imputer_asr.data.dataset.make_loader`);
:func:`probe_cuts` loads a CutSet; :func:`format_probe` renders a report as a markdown table.

>>> import torch
>>> shown = shown_frames(torch.tensor([16, 11]), 16, fraction=0.75, block_size=8)
>>> shown.view(2, 2, 8).sum(dim=-1).tolist()  # 6 of 8 per full block, round(0.75 * 3) of the last 3
[[6, 6], [6, 2]]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch
import torch.nn.functional as F
from lhotse import CutSet
from torch import Tensor

from imputer_asr.config import DataConfig
from imputer_asr.data.dataset import make_loader
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.decoding.ctc import greedy_alignment
from imputer_asr.decoding.imputer import decode_imputer
from imputer_asr.model.alignment import collapse
from imputer_asr.model.conformer import ImputerModel, padding_mask
from imputer_asr.model.losses import imputer_loss
from imputer_asr.training.imputer import _align_feasible

__all__ = [
    "CONDITIONS",
    "DEFAULT_FRACTIONS",
    "SUCCESS_FRACTION",
    "SUCCESS_RATIO",
    "ConditionResult",
    "FractionResult",
    "ProbeReport",
    "shown_per_block",
    "shown_frames",
    "check_probe_arguments",
    "probe_batches",
    "probe_cuts",
    "format_probe",
]

CONDITIONS = ("none", "expert", "greedy", "random")
"""The inputs shown at the shown frames, in report order."""
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 0.875)
"""Shown fractions p probed by default."""
SUCCESS_FRACTION, SUCCESS_RATIO = 0.875, 0.5
"""The issue's criterion: at p = 0.875 the expert NLL ratio is at most 0.5."""
_BATCH_KEYS = ("features", "feature_lengths", "targets", "target_lengths")
_Tally = TypeVar("_Tally", "_Sums", "_Counts")


def shown_per_block(fraction: float, block_size: int) -> int:
    """round(fraction * block_size), halves rounded up: the frames shown in a block of that size."""
    return math.floor(fraction * block_size + 0.5)


def check_probe_arguments(fractions: Sequence[float], block_size: int) -> None:
    """Raise ValueError unless every fraction lies in (0, 1), leaves a masked frame in every full
    block of ``block_size`` >= 1 frames, and appears once."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    if not fractions:
        raise ValueError("fractions must not be empty")
    if len(set(fractions)) != len(fractions):
        raise ValueError(f"fractions must be distinct, got {list(fractions)}")
    for p in fractions:
        if not 0.0 < p < 1.0:
            raise ValueError(f"fractions must lie in (0, 1), got {p}")
        if shown_per_block(p, block_size) >= block_size:
            raise ValueError(
                f"fraction {p} shows all {block_size} frames of a block (round(p * B) = B): nothing to "
                f"probe; with B = {block_size} fractions must be below {(block_size - 0.5) / block_size:g}"
            )


def shown_frames(
    lengths: Tensor,
    width: int,
    fraction: float,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(N, width) bool, True at the shown frames: round(p * B) random frames of every full block of
    ``block_size`` frames, round(p * L) of a last block of L < B frames, none past ``lengths``.

    Draws happen on the generator's device (CPU by default) and the mask is moved to ``lengths``'s.
    """
    check_probe_arguments([fraction], block_size)
    if lengths.dim() != 1 or lengths.is_floating_point() or width < 0:
        raise ValueError(
            f"lengths must be an integer (N,) tensor and width >= 0, got {lengths.shape}, {width}"
        )
    if lengths.numel() and (lengths.min() < 0 or lengths.max() > width):
        raise ValueError(f"lengths must lie in [0, {width}], got {lengths.tolist()}")
    n, n_blocks = lengths.numel(), -(-width // block_size)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(n, n_blocks, block_size, generator=generator, device=draw_device).to(lengths.device)
    frames = torch.arange(n_blocks * block_size, device=lengths.device).view(n_blocks, block_size)
    valid = frames.unsqueeze(0) < lengths.view(n, 1, 1)
    rank = noise.masked_fill(~valid, 2.0).argsort(dim=-1).argsort(dim=-1)  # invalid frames rank last
    count = torch.floor(valid.sum(dim=-1).double() * fraction + 0.5).long()  # as shown_per_block
    shown = (rank < count.unsqueeze(-1)) & valid
    return shown.view(n, -1)[:, :width]


@dataclass(frozen=True)
class _Sums:
    """Sums over the masked frames of one (fraction, condition) cell."""

    frames: int = 0
    correct: int = 0
    nll: float = 0.0
    kl: float = 0.0
    completion: float = 0.0

    def __add__(self, other: _Sums) -> _Sums:
        return _add_fields(self, other)


@dataclass(frozen=True)
class _Counts:
    """Sums over the feasible utterances of some batches (norms summed over their valid frames)."""

    cells: Mapping[tuple[float, str], _Sums]
    utterances: int = 0
    skipped: int = 0
    valid_frames: int = 0
    hidden_norm: float = 0.0
    expert_token_norm: float = 0.0
    frames_differ: int = 0
    utterances_differ: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        keys = self.cells.keys() | other.cells.keys()
        cells = {key: self.cells.get(key, _Sums()) + other.cells.get(key, _Sums()) for key in keys}
        return _add_fields(self, other, cells=cells)


def _add_fields(a: _Tally, b: _Tally, **given: object) -> _Tally:
    """``a`` with each field the sum of ``a``'s and ``b``'s, but those ``given``."""
    sums = {f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(a) if f.name not in given}
    return replace(a, **sums, **given)


@dataclass(frozen=True)
class ConditionResult:
    """One input at one shown fraction, over the masked frames: argmax accuracy against the expert
    alignment, mean NLL of its token, mean KL(p_input || p_none), NLL / NLL(none), and the
    completion NLL per masked frame with its ratio to none's.

    The completion NLL is the Imputer's own measure: -log of the probability, summed over every
    completion of the masked frames that agrees with the shown expert frames and collapses to the
    transcript (the Imputer loss without the shown frames' term). The frame NLL asks for the
    expert's exact token where several fit (a blank or a repeat at a boundary); the objective
    only asks for some consistent completion, so the two can move apart.
    """

    accuracy: float
    nll: float
    kl: float
    nll_ratio: float
    completion_nll: float = math.nan
    completion_ratio: float = math.nan


@dataclass(frozen=True)
class FractionResult:
    """The four inputs at one shown fraction; ``shown`` frames of each full block were shown and the
    ``masked_frames`` (summed over utterances) scored."""

    fraction: float
    shown: int
    masked_frames: int
    conditions: Mapping[str, ConditionResult]

    @property
    def expert_nll_ratio(self) -> float:
        """NLL(expert) / NLL(none): 1 for a model that ignores its input, below 1 when it reads it."""
        return self.conditions["expert"].nll_ratio


@dataclass(frozen=True)
class ProbeReport:
    """What :func:`probe_batches` measures.

    Attributes:
        block_size: B.
        fractions: one :class:`FractionResult` per shown fraction, in the order asked.
        utterances: utterances probed (those with a feasible alignment).
        skipped: utterances skipped, their transcript having no alignment in their frames.
        valid_frames: encoder frames of the probed utterances.
        token_norm: mean over the non-[MASK] tokens of ||alignment_input(token) - alignment_input([MASK])||.
        expert_token_norm: the same norm averaged over the valid frames' expert tokens.
        hidden_norm: mean norm of the acoustic states (``encode_acoustic``) at the valid frames.
        frame_disagreement: share of valid frames whose K = 1 and K = B final alignments differ.
        utterance_disagreement: share of utterances whose K = 1 and K = B token sequences differ.
    """

    block_size: int
    fractions: tuple[FractionResult, ...]
    utterances: int
    skipped: int
    valid_frames: int
    token_norm: float
    expert_token_norm: float
    hidden_norm: float
    frame_disagreement: float
    utterance_disagreement: float

    @property
    def norm_ratio(self) -> float:
        """token_norm / hidden_norm: how large a token's contribution is beside the acoustic state."""
        return _ratio(self.token_norm, self.hidden_norm)

    @property
    def expert_norm_ratio(self) -> float:
        """expert_token_norm / hidden_norm."""
        return _ratio(self.expert_token_norm, self.hidden_norm)

    def at(self, fraction: float) -> FractionResult:
        """The result at ``fraction``; KeyError when it was not probed."""
        for result in self.fractions:
            if result.fraction == fraction:
                return result
        raise KeyError(f"fraction {fraction} was not probed ({[r.fraction for r in self.fractions]})")

    def to_dict(self) -> dict:
        """A JSON-ready dict (NaN, from an empty denominator, becomes None)."""
        fields = ("utterances", "skipped", "valid_frames", "token_norm", "expert_token_norm", "hidden_norm")
        fields += ("norm_ratio", "expert_norm_ratio", "frame_disagreement", "utterance_disagreement")
        out: dict = {"block_size": self.block_size}
        out.update({name: _json_number(getattr(self, name)) for name in fields})
        out["fractions"] = [_fraction_dict(result) for result in self.fractions]
        return out


def _fraction_dict(result: FractionResult) -> dict:
    conditions = {
        name: {key: _json_number(value) for key, value in vars(cond).items()}
        for name, cond in result.conditions.items()
    }
    return {
        "fraction": result.fraction,
        "shown": result.shown,
        "masked_frames": result.masked_frames,
        "expert_nll_ratio": _json_number(result.expert_nll_ratio),
        "conditions": conditions,
    }


def _json_number(value: float | int) -> float | int | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


@contextlib.contextmanager
def _evaluating(model: ImputerModel) -> Iterator[None]:
    """Eval mode without gradient; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: ImputerModel) -> torch.device:
    return next(model.parameters()).device


def _cell(log_probs: Tensor, reference: Tensor, baseline: Tensor, masked: Tensor, completion: float) -> _Sums:
    """Accuracy, NLL and KL(p || p_baseline) sums of ``log_probs`` (N, T, C) at the ``masked`` frames
    against the ``reference`` tokens (N, T), and the summed ``completion`` NLL."""
    log_probs, baseline, reference = log_probs[masked].double(), baseline[masked].double(), reference[masked]
    nll = -log_probs.gather(-1, reference.unsqueeze(-1)).sum()
    kl = F.kl_div(baseline, log_probs, reduction="sum", log_target=True)
    correct = (log_probs.argmax(dim=-1) == reference).sum()
    return _Sums(int(masked.sum()), int(correct), float(nll), float(kl), completion)


def _completion_nll(
    log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, observed: Tensor, blank: int
) -> float:
    """Summed -log p(transcript | masked frames completed consistently with ``observed``)."""
    nll = imputer_loss(
        log_probs.float(),
        targets,
        lengths,
        target_lengths,
        observed,
        blank=blank,
        reduction="none",
        score_observed=False,
    )
    return float(nll.double().sum())


def _fraction_cells(
    model: ImputerModel,
    hidden: Tensor,
    lengths: Tensor,
    sources: Mapping[str, Tensor],
    fraction: float,
    block_size: int,
    generator: torch.Generator | None,
) -> dict[tuple[float, str], _Sums]:
    """The four cells of one fraction: ``sources`` holds the all-[MASK] log-probs ("none") and the
    expert and greedy alignments; the random tokens are drawn here."""
    none, expert = sources["none"], sources["expert"]
    shown = shown_frames(lengths, hidden.size(1), fraction, block_size, generator=generator)
    masked = ~padding_mask(lengths, hidden.size(1)) & ~shown
    draw_device = generator.device if generator is not None else torch.device("cpu")
    vocab = model.cfg.vocab_size
    random = torch.randint(0, vocab, expert.shape, generator=generator, device=draw_device).to(expert.device)
    observed = torch.where(shown, expert, -1)
    blank = model.cfg.blank_id

    def cell(log_probs: Tensor) -> _Sums:
        completion = _completion_nll(
            log_probs, lengths, sources["targets"], sources["target_lengths"], observed, blank
        )
        return _cell(log_probs, expert, none, masked, completion)

    cells = {(fraction, "none"): cell(none)}
    for name, tokens in (("expert", expert), ("greedy", sources["greedy"]), ("random", random)):
        cells[(fraction, name)] = cell(
            model.impute(hidden, lengths, torch.where(shown, tokens, model.cfg.mask_id))
        )
    return cells


def _token_offsets(model: ImputerModel) -> Tensor:
    """(C,) ||alignment_input(token) - alignment_input([MASK])|| of every non-[MASK] token."""
    device = _device(model)
    tokens = torch.arange(model.cfg.vocab_size, device=device).unsqueeze(0)
    mask = torch.full((1, 1), model.cfg.mask_id, device=device)
    with _evaluating(model):
        return (model.alignment_input(tokens) - model.alignment_input(mask)).squeeze(0).norm(dim=-1)


def _disagreement(
    model: ImputerModel, features: Tensor, feature_lengths: Tensor, greedy: Tensor, block_size: int
) -> tuple[int, int]:
    """Valid frames and utterances whose K = 1 and K = B decodings differ; K = 1 decoding is the
    greedy alignment of the all-[MASK] output, which the probe already has (``greedy``)."""
    full = decode_imputer(model, features, feature_lengths, block_size, block_size)
    one = greedy[:, : full.alignment.size(1)]
    frames = int((one != full.alignment).sum())  # both -1 past the lengths
    blank = model.cfg.blank_id
    one_tokens = [collapse(row, blank) for row in one.tolist()]
    utterances = sum(a != b for a, b in zip(one_tokens, full.tokens, strict=True))
    return frames, utterances


def _probe_batch(
    model: ImputerModel,
    batch: Mapping[str, Tensor],
    fractions: Sequence[float],
    block_size: int,
    generator: torch.Generator | None,
    offsets: Tensor,
) -> _Counts:
    """The sums of one batch (model in eval mode, no gradient: see :func:`probe_batches`);
    ``offsets`` are the token offset norms of :func:`_token_offsets`."""
    missing = [key for key in _BATCH_KEYS if key not in batch]
    if missing:
        raise ValueError(f"batch lacks {', '.join(missing)}")
    device = _device(model)
    features, feature_lengths = batch["features"].to(device), batch["feature_lengths"].to(device)
    hidden, lengths = model.encode_acoustic(features, feature_lengths)
    none = model.impute(hidden, lengths, model.all_mask(hidden))
    blank = model.cfg.blank_id
    expert, feasible = _align_feasible(none, lengths, batch["targets"], batch["target_lengths"], blank)
    rows = feasible.nonzero().squeeze(1)
    skipped = int(feasible.numel() - rows.numel())
    if not rows.numel():
        return _Counts({}, skipped=skipped)
    hidden, lengths, none, expert = hidden[rows], lengths[rows], none[rows], expert[rows]
    sources = {
        "none": none,
        "expert": expert,
        "greedy": greedy_alignment(none, lengths),
        "targets": batch["targets"].to(device)[rows],
        "target_lengths": batch["target_lengths"].to(device)[rows],
    }
    cells: dict[tuple[float, str], _Sums] = {}
    for fraction in fractions:
        cells.update(_fraction_cells(model, hidden, lengths, sources, fraction, block_size, generator))
    valid = ~padding_mask(lengths, hidden.size(1))
    frames_differ, utterances_differ = _disagreement(
        model, features[rows], feature_lengths[rows], sources["greedy"], block_size
    )
    return _Counts(
        cells,
        utterances=int(rows.numel()),
        skipped=skipped,
        valid_frames=int(valid.sum()),
        hidden_norm=float(hidden[valid].double().norm(dim=-1).sum()),
        expert_token_norm=float(offsets[expert[valid]].double().sum()),
        frames_differ=frames_differ,
        utterances_differ=utterances_differ,
    )


def probe_batches(
    model: ImputerModel,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    block_size: int = 8,
    seed: int = 0,
) -> ProbeReport:
    """Probe ``model`` (in eval mode, without gradient, on its own device) on ``batches``.

    Args:
        model: the Imputer; its training mode is restored afterwards.
        batches: dicts with "features" (N, T, F), "feature_lengths" (N,), "targets" (N, S) and
            "target_lengths" (N,), as :func:`imputer_asr.data.dataset.make_loader` yields them.
        fractions: shown fractions p, each in (0, 1) with round(p * B) < B.
        block_size: B, frames per block of the masking and of K = B decoding.
        seed: seed of the shown positions and of the random tokens (a CPU generator).

    Returns:
        A :class:`ProbeReport`.

    Raises:
        ValueError: on bad arguments or batches, or when no utterance has a feasible alignment.
    """
    check_probe_arguments(fractions, block_size)
    generator = torch.Generator().manual_seed(seed)
    offsets = _token_offsets(model)
    counts = _Counts({})
    with _evaluating(model):
        for batch in batches:
            counts = counts + _probe_batch(model, batch, fractions, block_size, generator, offsets)
    if not counts.utterances:
        raise ValueError(f"no utterance to probe ({counts.skipped} skipped: no feasible alignment)")
    return _report(counts, offsets, fractions, block_size)


def _report(counts: _Counts, offsets: Tensor, fractions: Sequence[float], block_size: int) -> ProbeReport:
    results = tuple(_fraction_result(counts, fraction, block_size) for fraction in fractions)
    return ProbeReport(
        block_size=block_size,
        fractions=results,
        utterances=counts.utterances,
        skipped=counts.skipped,
        valid_frames=counts.valid_frames,
        token_norm=float(offsets.double().mean()),
        expert_token_norm=_ratio(counts.expert_token_norm, counts.valid_frames),
        hidden_norm=_ratio(counts.hidden_norm, counts.valid_frames),
        frame_disagreement=_ratio(counts.frames_differ, counts.valid_frames),
        utterance_disagreement=_ratio(counts.utterances_differ, counts.utterances),
    )


def _fraction_result(counts: _Counts, fraction: float, block_size: int) -> FractionResult:
    sums = {name: counts.cells[(fraction, name)] for name in CONDITIONS}
    none_nll = sums["none"].nll
    conditions = {
        name: ConditionResult(
            accuracy=_ratio(s.correct, s.frames),
            nll=_ratio(s.nll, s.frames),
            kl=_ratio(s.kl, s.frames),
            nll_ratio=_ratio(s.nll, none_nll),
            completion_nll=_ratio(s.completion, s.frames),
            completion_ratio=_ratio(s.completion, sums["none"].completion),
        )
        for name, s in sums.items()
    }
    return FractionResult(fraction, shown_per_block(fraction, block_size), sums["none"].frames, conditions)


def probe_cuts(
    model: ImputerModel,
    tokenizer: Tokenizer,
    cuts: CutSet,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    block_size: int = 8,
    seed: int = 0,
    max_duration: float = 200.0,
) -> ProbeReport:
    """:func:`probe_batches` over the cuts (with precomputed features), ``max_duration`` seconds of
    audio per batch."""
    check_probe_arguments(fractions, block_size)
    loader = make_loader(cuts, tokenizer, DataConfig(max_duration=max_duration), train=False)
    return probe_batches(model, loader, fractions=fractions, block_size=block_size, seed=seed)


def format_probe(report: ProbeReport) -> str:
    """A markdown table, one row per fraction and input, followed by the summary figures."""
    b = report.block_size
    lines = [
        f"Input-use probe. Utterances probed: {report.utterances}, skipped (no feasible alignment): "
        f"{report.skipped}, encoder frames: {report.valid_frames}, block size B = {b}.",
        "",
        "| p | shown / B | masked frames | input | accuracy | NLL | KL to none | NLL / NLL(none) "
        "| completion NLL | / none |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report.fractions:
        for name, c in result.conditions.items():
            lines.append(
                f"| {result.fraction:g} | {result.shown}/{b} | {result.masked_frames} | {name} | "
                f"{c.accuracy:.3f} | {c.nll:.3f} | {c.kl:.3f} | {c.nll_ratio:.2f} | "
                f"{c.completion_nll:.3f} | {c.completion_ratio:.2f} |"
            )
    lines.append("")
    if any(r.fraction == SUCCESS_FRACTION for r in report.fractions):
        ratio = report.at(SUCCESS_FRACTION).expert_nll_ratio
        verdict = "met" if ratio <= SUCCESS_RATIO else "not met"
        lines.append(
            f"Expert NLL ratio at p = {SUCCESS_FRACTION:g}: {ratio:.2f} (criterion <= {SUCCESS_RATIO:.2f}: "
            f"{verdict}; a model that ignores its input gives 1.00)."
        )
    lines += [
        f"Token offset / acoustic state norm: {report.norm_ratio:.3f} over the vocabulary, "
        f"{report.expert_norm_ratio:.3f} over the expert tokens (|hidden| {report.hidden_norm:.2f}).",
        f"K = 1 vs K = {b}: {100 * report.frame_disagreement:.1f}% of frames and "
        f"{100 * report.utterance_disagreement:.1f}% of utterances differ.",
    ]
    return "\n".join(lines) + "\n"
