"""CTC alignments: the Viterbi (forced) best path of a transcript, and collapsing a path to labels.

The Imputer is trained on partially shown alignments. Its expert alignment is the forced alignment
of the transcript under a trained CTC model (computed once per training cut); the learner roll-in is
the forced alignment under the model being trained. Both come from :func:`forced_align`, the Viterbi
path over the CTC topology (blanks between labels, optional except between repeated labels): on CPU
torchaudio's C++ aligner, one utterance at a time; on other devices a batched Viterbi in tensor ops
(measured on CPU, N=32, T=250, S=60: 13 ms for the torchaudio loop, 38 ms batched; on a GPU the
batched form needs T steps for the whole batch where torchaudio needs T kernel launches per utterance).

>>> import torch
>>> log_probs = torch.randn(1, 5, 4).log_softmax(-1)
>>> path = forced_align(log_probs, torch.tensor([5]), torch.tensor([[2, 2]]), torch.tensor([2]))
>>> collapse(path[0])
[2, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio.functional as taf
from torch import Tensor

__all__ = ["check_ctc_inputs", "collapse", "forced_align", "min_alignment_length"]

# Stands in for -inf log-probabilities, so that every path keeps a comparable finite score.
_VERY_UNLIKELY = -1.0e30


def forced_align(
    log_probs: Tensor,
    input_lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    *,
    batched: bool | None = None,
) -> Tensor:
    """Most probable CTC alignment of each target under ``log_probs``.

    Args:
        log_probs: (N, T, C) frame log-probabilities.
        input_lengths: (N,) valid frames per utterance, at most T.
        targets: (N, S) padded label ids in [0, C), never ``blank`` within ``target_lengths``.
        target_lengths: (N,) valid labels per utterance, at most S.
        blank: id of the CTC blank.
        batched: True for the batched Viterbi in tensor ops, False for torchaudio's aligner run on
            each utterance; None (default) picks torchaudio on CPU and the batched one elsewhere.

    Returns:
        (N, T) int64 alignment: row n is a best path over frames [0, input_lengths[n]) that
        collapses to ``targets[n, :target_lengths[n]]``, and -1 from ``input_lengths[n]`` on. The
        two implementations may break exact ties differently. -inf log-probabilities are treated as
        very unlikely rather than impossible, so a path is always returned.

    Raises:
        ValueError: on malformed inputs, or when an utterance has fewer frames than its labels plus
            one blank per repeated adjacent label (no alignment exists); the message names it.
    """
    check_ctc_inputs(log_probs, targets, input_lengths, target_lengths, blank)
    device = log_probs.device
    targets = targets.to(device, torch.long)
    input_lengths = input_lengths.to(device, torch.long)
    target_lengths = target_lengths.to(device, torch.long)
    _check_feasible(targets, input_lengths, target_lengths)
    dtype = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
    scores = log_probs.detach().to(dtype).clamp(min=_VERY_UNLIKELY)
    if batched is None:
        batched = device.type != "cpu"
    align = _align_batched if batched else _align_each
    return align(scores, input_lengths, targets, target_lengths, blank)


def min_alignment_length(targets: Tensor, target_lengths: Tensor) -> Tensor:
    """(N,) fewest frames a CTC alignment of each target needs: its labels plus one blank between
    each pair of equal adjacent labels.

    >>> min_alignment_length(torch.tensor([[1, 1, 2, 0]]), torch.tensor([3]))
    tensor([4])
    """
    if targets.shape[1] < 2:
        return target_lengths.clone()
    positions = torch.arange(1, targets.shape[1], device=targets.device)
    within = positions.unsqueeze(0) < target_lengths.to(targets.device).unsqueeze(1)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & within).sum(dim=1)
    return target_lengths + repeats.to(target_lengths.device, target_lengths.dtype)


def check_ctc_inputs(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
) -> None:
    """Raise ValueError unless a CTC problem's inputs have consistent shapes, dtypes and ranges.

    log_probs (N, T, C) float; targets (N, S) integer with values in [0, C) other than ``blank``
    within ``target_lengths``; input_lengths and target_lengths (N,) integer in [0, T] and [0, S].
    """
    if log_probs.dim() != 3 or not log_probs.is_floating_point():
        raise ValueError(f"log_probs must be a float (N, T, C) tensor, got {_describe(log_probs)}")
    n, t, c = log_probs.shape
    if targets.dim() != 2 or targets.shape[0] != n or not _is_integer(targets):
        raise ValueError(f"targets must be an integer ({n}, S) tensor, got {_describe(targets)}")
    _check_lengths("input_lengths", input_lengths, n, t)
    _check_lengths("target_lengths", target_lengths, n, targets.shape[1])
    if not 0 <= blank < c:
        raise ValueError(f"blank must lie in [0, {c}), got {blank}")
    positions = torch.arange(targets.shape[1], device=targets.device)
    valid = targets[positions.unsqueeze(0) < target_lengths.to(targets.device).unsqueeze(1)]
    if valid.numel() and (valid.min() < 0 or valid.max() >= c or (valid == blank).any()):
        raise ValueError(f"targets must lie in [0, {c}) and differ from blank={blank}")


def collapse(alignment: Tensor | Sequence[int], blank: int = 0) -> list[int]:
    """Labels of one CTC alignment (a 1-D tensor or a sequence of ints): drop the -1 padding, merge
    repeated tokens, drop blanks. The CTC collapse of every decoder and aligner.

    >>> collapse(torch.tensor([0, 3, 3, 0, 3, 5, -1]))
    [3, 3, 5]
    >>> collapse([1, 1, 0, 2, 1, -1], blank=0)
    [1, 2, 1]
    """
    if isinstance(alignment, Tensor):
        if alignment.dim() != 1:
            raise ValueError(f"alignment must be 1-D, got shape {tuple(alignment.shape)}")
        alignment = alignment.tolist()
    labels: list[int] = []
    previous = None
    for token in alignment:
        if token < 0:
            continue
        if token != previous and token != blank:
            labels.append(int(token))
        previous = token
    return labels


def _check_lengths(name: str, lengths: Tensor, n: int, limit: int) -> None:
    """Raise ValueError unless lengths is an integer (n,) tensor with values in [0, limit]."""
    if lengths.shape != (n,) or not _is_integer(lengths):
        raise ValueError(f"{name} must be an integer ({n},) tensor, got {_describe(lengths)}")
    if n and (lengths.min() < 0 or lengths.max() > limit):
        raise ValueError(f"{name} must lie in [0, {limit}], got {lengths.tolist()}")


def _check_feasible(targets: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> None:
    """Raise ValueError naming the first utterance too short for any alignment of its target."""
    needed = min_alignment_length(targets, target_lengths)
    short = (input_lengths < needed).nonzero().flatten().tolist()
    if short:
        i = short[0]
        raise ValueError(
            f"utterance {i} has {int(input_lengths[i])} frames but its target needs at least "
            f"{int(needed[i])} (labels plus a blank between repeats); too short: {short}"
        )


def _is_integer(tensor: Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def _describe(tensor: Tensor) -> str:
    return f"shape {tuple(tensor.shape)} dtype {tensor.dtype}"


def _align_each(
    scores: Tensor, input_lengths: Tensor, targets: Tensor, target_lengths: Tensor, blank: int
) -> Tensor:
    """Forced alignment one utterance at a time with torchaudio's C++ Viterbi (fastest on CPU)."""
    paths = torch.full(scores.shape[:2], -1, dtype=torch.long, device=scores.device)
    for i, (t, s) in enumerate(zip(input_lengths.tolist(), target_lengths.tolist(), strict=True)):
        if s == 0:  # torchaudio rejects empty targets; the only path is all blank
            paths[i, :t] = blank
            continue
        path, _ = taf.forced_align(scores[i : i + 1, :t], targets[i : i + 1, :s], blank=blank)
        paths[i, :t] = path[0]
    return paths


def _align_batched(
    scores: Tensor, input_lengths: Tensor, targets: Tensor, target_lengths: Tensor, blank: int
) -> Tensor:
    """Forced alignment of the whole batch at once: T small tensor steps, for GPUs."""
    if scores.shape[1] == 0:
        return torch.empty(scores.shape[:2], dtype=torch.long, device=scores.device)
    states = _extended_states(targets, target_lengths, blank)
    emissions = scores.gather(2, states.unsqueeze(1).expand(-1, scores.shape[1], -1))
    steps, final = _viterbi(emissions, _skip_allowed(states, blank), input_lengths)
    path = _backtrack(steps, final, input_lengths, target_lengths)
    return states.gather(1, path.clamp(min=0)).masked_fill(path < 0, -1)


def _extended_states(targets: Tensor, target_lengths: Tensor, blank: int) -> Tensor:
    """(N, 2S+1) CTC state labels: blank, y_1, blank, ..., y_S, blank (padding labels -> blank)."""
    n, s = targets.shape
    within = torch.arange(s, device=targets.device).unsqueeze(0) < target_lengths.unsqueeze(1)
    states = torch.full((n, 2 * s + 1), blank, dtype=torch.long, device=targets.device)
    states[:, 1::2] = targets.masked_fill(~within, blank)
    return states


def _skip_allowed(states: Tensor, blank: int) -> Tensor:
    """(N, 2S+1) bool: state s may be entered from s-2 (a label unlike the previous label)."""
    allowed = torch.zeros_like(states, dtype=torch.bool)
    allowed[:, 2:] = (states[:, 2:] != blank) & (states[:, 2:] != states[:, :-2])
    return allowed


def _viterbi(emissions: Tensor, skip_allowed: Tensor, input_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Viterbi forward pass over the CTC states.

    Returns (T, N, 2S+1) int8 back-steps (0 stay, 1 from s-1, 2 from s-2) of the best path into each
    state, and (N, 2S+1) best scores at each utterance's last frame. Ties favour staying, then s-1.
    """
    n, t_max, n_states = emissions.shape
    emissions = emissions.transpose(0, 1).contiguous()
    last = (input_lengths - 1).unsqueeze(1)
    skip_penalty = torch.zeros_like(emissions[0]).masked_fill(~skip_allowed, float("-inf"))
    # score[:, 2:] holds the best score into each state; two -inf columns in front shift it by 1, 2.
    score = torch.full((n, n_states + 2), float("-inf"), dtype=emissions.dtype, device=emissions.device)
    score[:, 2:4] = emissions[0, :, :2]
    final = score[:, 2:].clone()
    steps = torch.zeros(t_max, n, n_states, dtype=torch.int8, device=emissions.device)
    for t in range(1, t_max):
        stay, prev, skip = score[:, 2:], score[:, 1:-1], score[:, :-2] + skip_penalty
        best = torch.maximum(stay, prev)
        torch.gt(prev, stay, out=steps[t])
        steps[t].masked_fill_(skip > best, 2)
        score[:, 2:] = torch.maximum(best, skip) + emissions[t]
        final = torch.where(last == t, score[:, 2:], final)
    return steps, final


def _backtrack(steps: Tensor, final: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """(N, T) best state index per frame from the (T, N, 2S+1) back-steps, -1 past each length."""
    t_max, n, _ = steps.shape
    ends = torch.stack((2 * target_lengths, (2 * target_lengths - 1).clamp(min=0)), dim=1)
    end_scores = final.gather(1, ends)
    state = ends.gather(1, (end_scores[:, 1] > end_scores[:, 0]).long().unsqueeze(1))
    padded = torch.arange(t_max, device=steps.device).unsqueeze(1) >= input_lengths  # (T, N)
    steps = steps.masked_fill(padded.unsqueeze(-1), 0)  # stay put until the last frame is reached
    path = torch.empty(t_max, n, dtype=torch.long, device=steps.device)
    for t in range(t_max - 1, -1, -1):
        path[t] = state.squeeze(1)
        state = state - steps[t].gather(1, state)
    return path.masked_fill(padded, -1).t()
