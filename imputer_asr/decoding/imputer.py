"""Imputer decoding: fill in a CTC alignment block by block in a fixed (or adaptive) number of steps.

Block decoding (Chan et al., ICML 2020, section 3.2) starts from an all-[MASK] alignment. Every
step runs the network once over the acoustic frames plus the current partial alignment; in every
block of B frames the still-masked positions whose distribution has the highest maximum probability
are fixed to their argmax. With K steps a block with r masked frames and s steps left fixes
ceil(r / s) of them, so every frame is fixed after exactly K network evaluations whatever the
length; the alignment is then collapsed (merge repeats, drop blanks). K = 1 is CTC greedy decoding
of the all-[MASK] network; K = B fixes one frame per block per step, as in the paper.

With ``inject_layer`` k > 0 the acoustic encoder (subsampling and the bottom k blocks) runs once per
batch and only the top blocks run per step (:meth:`ImputerModel.impute`). A step computes the
output only at the frames still masked, the frames it chooses among; with a single top block, K-step
decoding also recomputes that block's per-frame work only where the alignment changed since the
last step (:meth:`ImputerModel.impute_step`).

Adaptive decoding fixes, at each step, every masked frame whose maximum probability exceeds a
threshold (at least the schedule's ceil(r / s) per block, so at least one) and stops as soon as
nothing is left: confident utterances take fewer evaluations.

:func:`imputer_emissions` runs the first K - 1 steps of K-step decoding and hands out the
log-probabilities of the K-th evaluation instead of fixing the remaining frames by argmax, for a
search with a language model (:mod:`imputer_asr.decoding.lm_search`) to read.

>>> from imputer_asr.config import ModelConfig
>>> from imputer_asr.model.conformer import ImputerModel
>>> cfg = ModelConfig(vocab_size=10, mask_id=10, d_model=32, num_heads=2, ff_dim=64, num_layers=2)
>>> model = ImputerModel(cfg)
>>> result = decode_imputer(model, torch.randn(2, 100, 80), torch.tensor([100, 60]), steps=4)
>>> result.evaluations, tuple(result.alignment.shape), result.history.max().item()
(4, (2, 24), 4)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lhotse import CutSet
from torch import Tensor

from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.decoding.decoder import BatchDecoding, Hypothesis, decode_cutset
from imputer_asr.model.alignment import collapse
from imputer_asr.model.conformer import ImputerModel, StepCache, padding_mask

__all__ = [
    "ImputerResult",
    "ImputerDecoding",
    "decode_imputer",
    "decode_imputer_adaptive",
    "imputer_emissions",
    "KStepDecoder",
    "AdaptiveDecoder",
    "decode_cuts_imputer",
]

# (confidence (N, blocks, B) with -inf at fixed and padded frames, remaining (N, blocks), steps
# left) -> how many frames to fix in each block at this step (N, blocks).
_Schedule = Callable[[Tensor, Tensor, int], Tensor]


@dataclass(frozen=True)
class ImputerResult:
    """Output of Imputer decoding for one batch.

    Attributes:
        alignment: (N, T') int64 final alignment, -1 past each length.
        lengths: (N,) int64 encoder frames per utterance.
        tokens: token ids of each utterance after the CTC collapse.
        history: (N, T') int64 step (1-based) at which each frame was fixed, -1 past each length.
        evaluations: network evaluations for the whole batch (== steps for :func:`decode_imputer`).
    """

    alignment: Tensor
    lengths: Tensor
    tokens: list[list[int]]
    history: Tensor
    evaluations: int


def decode_imputer(
    model: ImputerModel,
    features: Tensor,
    feature_lengths: Tensor,
    steps: int,
    block_size: int = 8,
) -> ImputerResult:
    """K-step block decoding: exactly ``steps`` network evaluations for the batch.

    Args:
        model: the Imputer (run in eval mode; its mode is restored afterwards).
        features: (N, T, F) fbank features.
        feature_lengths: (N,) valid fbank frames per utterance.
        steps: K, in [1, block_size]; more steps than frames per block would evaluate the network
            with nothing left to fix.
        block_size: B, encoder frames per block.

    Returns:
        An :class:`ImputerResult` with ``evaluations == steps``.
    """
    _check_steps(steps, block_size, "steps")
    run = _step_loop(model, features, feature_lengths, block_size, steps, _fixed_schedule, stop_early=False)
    return _collapsed(run, model.cfg.blank_id)


def imputer_emissions(
    model: ImputerModel,
    features: Tensor,
    feature_lengths: Tensor,
    steps: int,
    block_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """The log-probabilities of the K-th (last) evaluation of K-step block decoding.

    The first K - 1 steps are those of :func:`decode_imputer`; the K-th evaluation reads the
    partial alignment they leave, and its output is returned where :func:`decode_imputer` would fix
    the remaining frames by argmax. Frames fixed earlier keep the network's distribution at them
    (not a one-hot of the fixed token). K = 1 is the all-[MASK] (CTC) network, ``model(features,
    feature_lengths)``.

    Args:
        model, features, feature_lengths, steps, block_size: as for :func:`decode_imputer`.

    Returns:
        (N, T', C) log-probabilities and (N,) int64 encoder frames per utterance.

    >>> from imputer_asr.config import ModelConfig
    >>> cfg = ModelConfig(vocab_size=10, mask_id=10, d_model=32, num_heads=2, ff_dim=64, num_layers=2)
    >>> model = ImputerModel(cfg)
    >>> log_probs, lengths = imputer_emissions(model, torch.randn(2, 100, 80), torch.tensor([100, 60]), 4)
    >>> tuple(log_probs.shape), lengths.tolist()
    ((2, 24, 10), [24, 14])
    """
    _check_steps(steps, block_size, "steps")
    run = _step_loop(
        model, features, feature_lengths, block_size, steps, _fixed_schedule, stop_early=False, fix_last=False
    )
    if run.last_log_probs is None:  # steps >= 1 and no early stop: never happens
        raise RuntimeError("Imputer decoding ran no evaluation")
    return run.last_log_probs, run.lengths


def decode_imputer_adaptive(
    model: ImputerModel,
    features: Tensor,
    feature_lengths: Tensor,
    threshold: float,
    block_size: int = 8,
    max_steps: int | None = None,
) -> ImputerResult:
    """Confidence-driven block decoding that stops when every frame is fixed.

    Each step fixes every masked frame whose maximum probability exceeds ``threshold`` and, in
    every block with masked frames left, at least ceil(r / s) of them (r masked, s steps left
    before ``max_steps``), the most confident first: so at least one per block per step, and all
    fixed after ``max_steps`` steps at most.

    Args:
        model, features, feature_lengths, block_size: as for :func:`decode_imputer`.
        threshold: probability in [0, 1]; 0 fixes everything in one step (CTC greedy), 1 follows
            the ``max_steps`` schedule alone.
        max_steps: at most this many evaluations, in [1, block_size]; default ``block_size``.

    Returns:
        An :class:`ImputerResult` whose ``evaluations`` is the number of steps actually run.
    """
    max_steps = block_size if max_steps is None else max_steps
    _check_adaptive(threshold, max_steps, block_size)
    log_threshold = math.log(threshold) if threshold > 0 else float("-inf")

    def schedule(confidence: Tensor, remaining: Tensor, steps_left: int) -> Tensor:
        confident = (confidence > log_threshold).sum(dim=-1)  # -inf (fixed, padded) never counts
        return torch.maximum(confident, _ceil_div(remaining, steps_left))

    run = _step_loop(model, features, feature_lengths, block_size, max_steps, schedule, stop_early=True)
    return _collapsed(run, model.cfg.blank_id)


@dataclass(frozen=True)
class _Imputation:
    """Where the step loop leaves a batch: the alignment (N, T') with [MASK] at the frames still
    masked (``masked``, valid frames only), the 1-based step that fixed each frame (-1: none), the
    encoder lengths, the log-probs (N, T', C) of the last evaluation (None when none ran; -inf at
    the frames it did not choose among, unless it fixed nothing) and how many were run."""

    tokens: Tensor
    masked: Tensor
    history: Tensor
    lengths: Tensor
    last_log_probs: Tensor | None
    evaluations: int


def _step_loop(
    model: ImputerModel,
    features: Tensor,
    feature_lengths: Tensor,
    block_size: int,
    max_steps: int,
    schedule: _Schedule,
    *,
    stop_early: bool,
    fix_last: bool = True,
) -> _Imputation:
    """The imputation loop of every Imputer decoder: up to ``max_steps`` evaluations, each fixing
    the scheduled frames of every block; ``stop_early`` stops once nothing is masked, and with
    ``fix_last`` False the last evaluation fixes nothing (its log-probs are the result)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            hidden, lengths = model.encode_acoustic(features, feature_lengths)
            tokens = model.all_mask(hidden)
            masked = ~padding_mask(lengths, hidden.size(1))
            history = torch.full_like(tokens, -1)
            log_probs: Tensor | None = None
            evaluations = 0
            # A single top block reuses its frame-by-frame work on the frames whose token did not
            # change since the last step (ImputerModel.impute_step).
            reuse = _one_top_block(model)
            cache: StepCache | None = None
            for step in range(max_steps):
                if stop_early and not bool(masked.any()):
                    break
                if step == max_steps - 1 and not fix_last:  # every frame's distribution is the result
                    log_probs = model.impute(hidden, lengths, tokens)
                    evaluations += 1
                    break
                log_probs, cache = _evaluate(
                    model, hidden, lengths, tokens, masked, cache, skip_done_rows=stop_early, reuse=reuse
                )
                evaluations += 1
                confidence, best = log_probs.max(dim=-1)
                fix = _choose(confidence, masked, block_size, max_steps - step, schedule)
                tokens = torch.where(fix, best, tokens)
                history = history.masked_fill(fix, step + 1)
                masked = masked & ~fix
    finally:
        model.train(was_training)
    return _Imputation(tokens, masked, history, lengths, log_probs, evaluations)


def _evaluate(
    model: ImputerModel,
    hidden: Tensor,
    lengths: Tensor,
    tokens: Tensor,
    masked: Tensor,
    cache: StepCache | None,
    *,
    skip_done_rows: bool,
    reuse: bool,
) -> tuple[Tensor, StepCache | None]:
    """One network evaluation for choosing among the ``masked`` frames: their log-probs, -inf
    elsewhere (the network's frame-by-frame tail runs on them alone, :meth:`ImputerModel.impute`);
    with ``reuse``, through :meth:`ImputerModel.impute_step`, whose ``cache`` goes in and comes out
    brought up to date for the rows that ran (the others are done with).

    With ``skip_done_rows`` the network runs only over the utterances with masked frames left. An
    adaptive decoder is done with a confident utterance after a step or two while the rest of its
    batch goes on; running the network over the unfinished ones only is what makes stopping early
    save time.
    """
    rows = masked.any(dim=1).nonzero().squeeze(1) if skip_done_rows else None
    if rows is None or len(rows) == len(lengths) or (reuse and cache is None):
        return _network(model, hidden, lengths, tokens, masked, cache, reuse)
    width = int(lengths[rows].max())
    sub = (hidden[rows, :width], lengths[rows], tokens[rows, :width], masked[rows, :width])
    part, part_cache = _network(model, *sub, None if cache is None else cache.rows(rows, width), reuse)
    out = part.new_full((*tokens.shape, part.size(-1)), float("-inf"))
    out[rows, :width] = part
    return out, None if cache is None or part_cache is None else cache.with_rows(rows, part_cache)


def _network(
    model: ImputerModel,
    hidden: Tensor,
    lengths: Tensor,
    tokens: Tensor,
    frames: Tensor,
    cache: StepCache | None,
    reuse: bool,
) -> tuple[Tensor, StepCache | None]:
    if reuse:
        return model.impute_step(hidden, lengths, tokens, frames, cache)
    return model.impute(hidden, lengths, tokens, frames), None


def _one_top_block(model: ImputerModel) -> bool:
    """Whether ``model`` can impute step by step reusing frame-by-frame work (a PyTorch network
    with a single block above ``inject_layer``; not an onnxruntime one)."""
    one_block = model.cfg.num_layers - model.cfg.inject_layer == 1
    return one_block and callable(getattr(model, "impute_step", None))


def _collapsed(run: _Imputation, blank: int) -> ImputerResult:
    """The result of a step loop that fixed every frame: the alignment and its CTC collapse."""
    if bool(run.masked.any()):  # the schedules guarantee this never happens
        raise RuntimeError("Imputer decoding left masked frames")
    alignment = run.tokens.masked_fill(padding_mask(run.lengths, run.tokens.size(1)), -1)
    collapsed = [collapse(row, blank) for row in alignment.tolist()]
    return ImputerResult(alignment, run.lengths, collapsed, run.history, run.evaluations)


def _fixed_schedule(confidence: Tensor, remaining: Tensor, steps_left: int) -> Tensor:
    """K-step decoding: ceil(r / s) frames of a block with r masked and s steps left."""
    return _ceil_div(remaining, steps_left)


def _choose(
    confidence: Tensor, masked: Tensor, block_size: int, steps_left: int, schedule: _Schedule
) -> Tensor:
    """(N, T') bool: in each block, the scheduled number of masked frames of highest confidence.

    Ties go to the earlier frame (stable sort), so the choice is deterministic.
    """
    n, t = confidence.shape
    n_blocks = -(-t // block_size)
    pad = n_blocks * block_size - t
    score = confidence.float().masked_fill(~masked, float("-inf"))
    score = F.pad(score, (0, pad), value=float("-inf")).view(n, n_blocks, block_size)
    remaining = F.pad(masked, (0, pad), value=False).view(n, n_blocks, block_size).sum(dim=-1)
    count = torch.minimum(schedule(score, remaining, steps_left), remaining)
    order = score.sort(dim=-1, descending=True, stable=True).indices
    rank = order.argsort(dim=-1)
    chosen = (rank < count.unsqueeze(-1)).view(n, -1)[:, :t]
    return chosen & masked


def _ceil_div(a: Tensor, b: int) -> Tensor:
    return torch.div(a + b - 1, b, rounding_mode="floor")


def _check_steps(steps: int, block_size: int, name: str) -> None:
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    if not 1 <= steps <= block_size:
        raise ValueError(f"{name} must lie in [1, block_size={block_size}], got {steps}")


def _check_adaptive(threshold: float, max_steps: int, block_size: int) -> None:
    _check_steps(max_steps, block_size, "max_steps")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")


@dataclass(frozen=True)
class KStepDecoder:
    """:func:`decode_imputer` as a :class:`~imputer_asr.decoding.decoder.Decoder`: K = ``steps``
    evaluations per batch; token ids per utterance."""

    steps: int
    block_size: int = 8

    def __post_init__(self) -> None:
        _check_steps(self.steps, self.block_size, "steps")

    def __call__(
        self, model: ImputerModel, features: Tensor, feature_lengths: Tensor
    ) -> BatchDecoding[list[int]]:
        return _batch_decoding(decode_imputer(model, features, feature_lengths, self.steps, self.block_size))


@dataclass(frozen=True)
class AdaptiveDecoder:
    """:func:`decode_imputer_adaptive` as a :class:`~imputer_asr.decoding.decoder.Decoder`: at most
    ``max_steps`` (default ``block_size``) evaluations, fewer for confident utterances."""

    threshold: float
    block_size: int = 8
    max_steps: int | None = None

    def __post_init__(self) -> None:
        max_steps = self.block_size if self.max_steps is None else self.max_steps
        _check_adaptive(self.threshold, max_steps, self.block_size)

    def __call__(
        self, model: ImputerModel, features: Tensor, feature_lengths: Tensor
    ) -> BatchDecoding[list[int]]:
        result = decode_imputer_adaptive(
            model, features, feature_lengths, self.threshold, self.block_size, self.max_steps
        )
        return _batch_decoding(result)


def _batch_decoding(result: ImputerResult) -> BatchDecoding[list[int]]:
    """Token ids, and the evaluations each utterance took: the last step that fixed one of its
    frames (0 for an utterance without frames)."""
    history = result.history
    each = history.max(dim=1).values.clamp(min=0).tolist() if history.size(1) else [0] * history.size(0)
    return BatchDecoding(result.tokens, result.evaluations, each)


@dataclass(frozen=True)
class ImputerDecoding:
    """Imputer decoding of a CutSet: hypotheses (in the manifest's order), decoding wall time (s),
    network evaluations summed over batches, the number of batches, and the evaluations each
    utterance took, summed (fewer than ``steps`` per utterance only for adaptive decoding, which
    stops early)."""

    hyps: list[Hypothesis]
    seconds: float
    evaluations: int
    batches: int
    utterance_evaluations: int = 0


def decode_cuts_imputer(
    model: ImputerModel,
    tokenizer: Tokenizer,
    cuts: CutSet,
    *,
    steps: int,
    block_size: int = 8,
    threshold: float | None = None,
    max_duration: float = 200.0,
) -> ImputerDecoding:
    """Decode every cut (:func:`~imputer_asr.decoding.decoder.decode_cutset`) with
    :func:`decode_imputer` (K = ``steps``) or, when ``threshold`` is given,
    :func:`decode_imputer_adaptive` with ``max_steps = steps``."""
    decoder: KStepDecoder | AdaptiveDecoder
    if threshold is None:
        decoder = KStepDecoder(steps, block_size)
    else:
        _check_steps(steps, block_size, "steps")
        decoder = AdaptiveDecoder(threshold, block_size, max_steps=steps)
    run = decode_cutset(model, tokenizer, cuts, decoder, max_duration=max_duration, desc=f"decode, K={steps}")
    hyps = run.hypotheses([tokenizer.decode(ids) for ids in run.outputs])
    return ImputerDecoding(hyps, run.seconds, run.evaluations, run.batches, run.utterance_evaluations)
