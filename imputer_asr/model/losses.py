"""Training losses over frame log-probabilities: batch-first CTC and the Imputer loss.

Both take ``log_probs`` of shape (N, T, C), batch first (unlike :func:`F.ctc_loss`),
so that training code calls them the same way.

The Imputer loss (Chan et al., ICML 2020, arXiv:2002.08926) is the CTC dynamic program restricted to
the alignments that agree with the frames the model was shown. The network models every position of
the alignment given the partial one, so the shown frames are scored too::

    loss_n = -log  sum_{a in B^-1(y_n), a_t = o_t for every observed t}  prod_{t} p_t(a_t)
           = -log  sum_{...}  prod_{t masked} p_t(a_t)   -   sum_{t observed} log p_t(o_t)

The second term is what makes the network carry the tokens it is shown to its output (the public
reference implementation's "force emits"). ``score_observed=False`` leaves it out: the shown frames
then contribute a factor of one and no gradient.

The dynamic program runs torch's CTC forward-backward kernels (``aten._ctc_loss``) on a compact copy of each
utterance's log-probabilities: only the blank and the tokens of its own target can appear on a path,
so the other classes are dropped (C falls from the vocabulary to about the target length), and every
observed frame's distribution is replaced by a point mass on its observed token, which contributes a
factor of one to the alignments that agree with it and of zero to the others. The backward scatters
the compact gradient back to the full vocabulary.

Its gradient is the exact derivative of the loss with respect to ``log_probs`` (minus the posterior
occupation of each frame and token), so it needs no ``log_softmax`` in front: torch's CTC backward
instead returns that derivative plus exp(log_probs), which only a preceding log_softmax cancels.
Through a log_softmax the two agree, and with every frame masked the loss equals :func:`F.ctc_loss`.

>>> import torch
>>> log_probs = torch.randn(1, 4, 3).log_softmax(-1)
>>> targets, lengths = torch.tensor([[1, 2]]), torch.tensor([4])
>>> observed = torch.tensor([[1, -1, 2, -1]])
>>> loss = imputer_loss(log_probs, targets, lengths, torch.tensor([2]), observed, reduction="none")
>>> loss.shape
torch.Size([1])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from imputer_asr.model.alignment import check_ctc_inputs, min_alignment_length

__all__ = ["ctc_loss", "imputer_loss"]

_REDUCTIONS = ("none", "mean", "sum")

# A masked frame's log-probabilities are clamped to _IMPOSSIBLE: finite, so that the CTC backward
# never computes (-inf) - (-inf) = NaN there, and so large that a single use of it pushes an
# utterance's loss past _INFEASIBLE_LOSS: such an utterance has no consistent alignment. The classes
# an observed frame rules out get a true -inf, which the CTC kernels skip (about twice as fast as a
# finite value); the NaN gradients they produce are at observed frames, which get zero anyway.
_IMPOSSIBLE = -1.0e30
_INFEASIBLE_LOSS = 1.0e29


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """CTC loss with batch-first log-probabilities; otherwise exactly :func:`F.ctc_loss`.

    Args:
        log_probs: (N, T, C) log-probabilities (log_softmax output).
        targets: (N, S) padded label ids; only the first ``target_lengths[n]`` of row n are read.
        input_lengths: (N,) valid frames per utterance.
        target_lengths: (N,) valid labels per utterance.
        blank: id of the CTC blank.
        reduction: "none" (per-utterance negative log-likelihood), "mean" (each divided by its
            target length, then averaged over the batch) or "sum".
        zero_infinity: replace infinite losses (no alignment fits) and their gradients by 0.

    Returns:
        (N,) for reduction "none", else a scalar.
    """
    _check_inputs(log_probs, targets, input_lengths, target_lengths, blank, reduction)
    targets, input_lengths, target_lengths = _to_device(log_probs, targets, input_lengths, target_lengths)
    return F.ctc_loss(
        log_probs.transpose(0, 1),
        targets,
        input_lengths,
        target_lengths,
        blank=blank,
        reduction=reduction,
        zero_infinity=zero_infinity,
    )


def imputer_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    observed: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
    score_observed: bool = True,
) -> Tensor:
    """Negative log-likelihood of the targets over the alignments that agree with ``observed``.

    Every frame is scored: an alignment's probability is the product of p_t(a_t) over all frames,
    and at an observed frame a_t is the observed token, so the loss is the dynamic program over the
    masked frames plus the cross-entropy of the observed ones. With every frame masked this is
    :func:`ctc_loss`. An utterance with no alignment that collapses to its targets and agrees with
    its observed frames has loss +inf (0 with ``zero_infinity``) and, unlike :func:`F.ctc_loss`, a
    zero (never NaN) gradient.

    Args:
        log_probs: (N, T, C) log-probabilities (log_softmax output). float16 and bfloat16 are
            computed in float32, and the loss is then float32.
        targets: (N, S) padded label ids in [0, C), never ``blank`` within ``target_lengths``.
        input_lengths: (N,) valid frames per utterance, at most T.
        target_lengths: (N,) valid labels per utterance, at most S.
        observed: (N, T) alignment token shown to the model at each frame, -1 where it was masked.
            Frames at or past ``input_lengths[n]`` are ignored (but must still hold -1 or a token).
        blank: id of the CTC blank.
        reduction: "none" (per-utterance negative log-likelihood, not normalised), "mean" (each
            divided by its target length, then averaged over the batch) or "sum", as in F.ctc_loss.
        zero_infinity: replace the loss of utterances without a consistent alignment by 0.
        score_observed: score the observed frames (the paper's objective). False gives them a
            factor of one and exactly zero gradient (the masked frames alone are modelled).

    Returns:
        (N,) for reduction "none", else a scalar.
    """
    _check_inputs(log_probs, targets, input_lengths, target_lengths, blank, reduction)
    _check_observed(observed, log_probs)
    targets, input_lengths, target_lengths = _to_device(log_probs, targets, input_lengths, target_lengths)
    observed = observed.to(log_probs.device)
    if log_probs.dtype in (torch.float16, torch.bfloat16):
        log_probs = log_probs.float()
    infeasible = _too_short(targets, input_lengths, target_lengths)
    nll = _CompactImputerNLL.apply(log_probs, observed, targets, input_lengths, target_lengths, blank)
    infeasible |= nll >= _INFEASIBLE_LOSS
    if score_observed:
        nll = nll + _observed_cross_entropy(log_probs, observed, input_lengths)
    nll = torch.where(infeasible, 0.0 if zero_infinity else float("inf"), nll)
    return _reduce(nll, target_lengths, reduction)


def _observed_cross_entropy(log_probs: Tensor, observed: Tensor, input_lengths: Tensor) -> Tensor:
    """(N,) -sum of log p_t(o_t) over the observed frames within each utterance."""
    frames = torch.arange(log_probs.size(1), device=log_probs.device)
    scored = (observed >= 0) & (frames.unsqueeze(0) < input_lengths.unsqueeze(1))
    picked = log_probs.gather(-1, observed.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -torch.where(scored, picked, 0.0).sum(dim=1)


def _to_device(
    log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Targets and lengths as int64 on log_probs' device (this also keeps CUDA off the cuDNN CTC,
    whose gradient assumes a softmax inside and differs from the native one)."""
    device = log_probs.device
    return (
        targets.to(device, torch.long),
        input_lengths.to(device, torch.long),
        target_lengths.to(device, torch.long),
    )


class _CompactImputerNLL(torch.autograd.Function):
    """Per-utterance negative log-likelihood over the alignments that agree with ``observed``.

    Forward: gather each utterance's blank and target tokens (``_compact_classes``), clamp them to
    _IMPOSSIBLE (so a genuine -inf never reaches the kernel), put a point mass on the observed token
    of every observed frame (-inf elsewhere), and run torch's CTC forward on the result. Backward:
    torch's CTC backward, minus the exp(log_probs) it adds (see the module docstring), zeroed at
    observed frames and for utterances whose loss is infeasible, and scattered back to the full
    vocabulary.
    """

    @staticmethod
    def forward(
        ctx: Any,
        log_probs: Tensor,
        observed: Tensor,
        targets: Tensor,
        input_lengths: Tensor,
        target_lengths: Tensor,
        blank: int,
    ) -> Tensor:
        n, t, c = log_probs.shape
        classes, compact_targets, compact_observed = _compact_classes(
            targets, target_lengths, observed, c, blank
        )
        index = classes.unsqueeze(1).expand(n, t, classes.shape[1])
        compact = log_probs.gather(-1, index).clamp_(min=_IMPOSSIBLE)
        is_observed = observed >= 0
        compact.masked_fill_(is_observed.unsqueeze(-1), -math.inf)
        rows, frames = (compact_observed >= 0).nonzero(as_tuple=True)
        compact[rows, frames, compact_observed[rows, frames]] = 0.0
        compact = compact.transpose(0, 1)
        nll, log_alpha = torch.ops.aten._ctc_loss.Tensor(
            compact, compact_targets, input_lengths, target_lengths, 0, False
        )
        ctx.save_for_backward(
            compact, compact_targets, input_lengths, target_lengths, nll, log_alpha, is_observed, index
        )
        ctx.full_shape = log_probs.shape
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: Tensor) -> tuple[Tensor | None, ...]:
        compact, targets, input_lengths, target_lengths, nll, log_alpha, is_observed, index = (
            ctx.saved_tensors
        )
        # (T, N, C'): (exp(compact) - occupation) * grad_nll inside each utterance, 0 past its end.
        grad = torch.ops.aten._ctc_loss_backward.Tensor(
            grad_nll, compact, targets, input_lengths, target_lengths, nll, log_alpha, 0, False
        )
        frames = torch.arange(compact.shape[0], device=compact.device).unsqueeze(1)
        outside = (frames >= input_lengths.unsqueeze(0)).unsqueeze(-1)
        grad.sub_(compact.exp().mul_(grad_nll.view(1, -1, 1)).masked_fill_(outside, 0.0))
        infeasible = ~torch.isfinite(nll) | (nll >= _INFEASIBLE_LOSS)
        grad.masked_fill_((is_observed.t() | infeasible.unsqueeze(0)).unsqueeze(-1), 0.0)
        full = grad.new_zeros(ctx.full_shape).scatter_(-1, index, grad.transpose(0, 1))
        return full, None, None, None, None, None


def _compact_classes(
    targets: Tensor, target_lengths: Tensor, observed: Tensor, num_classes: int, blank: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Each utterance's classes that a path may use, blank first: (N, C') class ids, where C' is one
    plus the most distinct tokens in a target (shorter rows are filled with unused classes); the
    targets (N, S) as column indices into them; and ``observed`` (N, T) as a column index, or -1 where
    it is masked or shows a token its target does not have (no path agrees with such a frame).
    """
    n, s = targets.shape
    positions = torch.arange(s, device=targets.device)
    valid = positions.unsqueeze(0) < target_lengths.unsqueeze(1)
    present = torch.zeros(n, num_classes, dtype=torch.bool, device=targets.device)
    present.scatter_(1, torch.where(valid, targets, blank), True)
    present[:, blank] = True
    # Sort key: blank 0, the target's tokens 1, the rest 2; a stable sort keeps ids in order.
    key = 2 - present.to(torch.int8)
    key[:, blank] = 0
    order = torch.sort(key, dim=1, stable=True).indices
    width = int(present.sum(1).max())
    column = torch.empty_like(order).scatter_(
        1, order, torch.arange(num_classes, device=targets.device).expand(n, -1)
    )
    compact_targets = torch.where(valid, column.gather(1, targets.clamp(0, num_classes - 1)), 0)
    shown = observed.clamp(min=0)
    usable = (observed >= 0) & present.gather(1, shown)
    compact_observed = torch.where(usable, column.gather(1, shown), -1)
    return order[:, :width], compact_targets, compact_observed


def _too_short(targets: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
    """(N,) bool: fewer frames than labels plus one separating blank per repeated adjacent label."""
    return input_lengths < min_alignment_length(targets, target_lengths)


def _reduce(nll: Tensor, target_lengths: Tensor, reduction: str) -> Tensor:
    """Apply F.ctc_loss's reduction to per-utterance negative log-likelihoods."""
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return (nll / target_lengths.clamp(min=1).to(nll.dtype)).mean()


def _check_inputs(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    reduction: str,
) -> None:
    """Raise ValueError unless the CTC inputs and the reduction are valid."""
    check_ctc_inputs(log_probs, targets, input_lengths, target_lengths, blank)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_observed(observed: Tensor, log_probs: Tensor) -> None:
    """Raise ValueError unless observed is (N, T) with values in {-1} or [0, C)."""
    n, t, c = log_probs.shape
    if observed.shape != (n, t) or observed.is_floating_point() or observed.dtype == torch.bool:
        got = f"shape {tuple(observed.shape)} dtype {observed.dtype}"
        raise ValueError(f"observed must be an integer ({n}, {t}) tensor, got {got}")
    if observed.numel() and (observed.min() < -1 or observed.max() >= c):
        raise ValueError(f"observed must hold -1 (masked) or a token in [0, {c})")
