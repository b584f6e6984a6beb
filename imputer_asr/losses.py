"""Training losses over frame log-probabilities: batch-first CTC and the Imputer loss.

Both take ``log_probs`` of shape (N, T, C), batch first (unlike :func:`F.ctc_loss`),
so that training code calls them the same way.

The Imputer loss (Chan et al., ICML 2020, arXiv:2002.08926) is the CTC dynamic program restricted to
the alignments that agree with the frames the model was shown::

    loss_n = -log  sum_{a in B^-1(y_n), a_t = o_t for every observed t}  prod_{t masked} p_t(a_t)

It is computed with torch's CTC forward-backward after replacing every observed frame's distribution
by a point mass on its observed token: that frame then contributes a factor of one to the alignments
that agree with it and of zero to the others, and it receives no gradient.

As with :func:`F.ctc_loss`, ``log_probs`` must come from ``log_softmax``: torch's CTC backward
returns the gradient with respect to the logits' log-softmax (it adds exp(log_probs), which the
log_softmax backward cancels), so the gradient is exact only through that log_softmax.

>>> import torch
>>> log_probs = torch.randn(1, 4, 3).log_softmax(-1)
>>> targets, lengths = torch.tensor([[1, 2]]), torch.tensor([4])
>>> observed = torch.tensor([[1, -1, 2, -1]])
>>> loss = imputer_loss(log_probs, targets, lengths, torch.tensor([2]), observed, reduction="none")
>>> loss.shape
torch.Size([1])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from imputer_asr.alignment import check_ctc_inputs, min_alignment_length

__all__ = ["ctc_loss", "imputer_loss"]

_REDUCTIONS = ("none", "mean", "sum")

# Log-probability that stands for "impossible" in the dynamic program. It is finite so that the CTC
# backward never computes (-inf) - (-inf) = NaN, and so large that a single use of it pushes an
# utterance's loss past _INFEASIBLE_LOSS: such an utterance has no consistent alignment.
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
) -> Tensor:
    """Negative log-likelihood of the targets over the alignments that agree with ``observed``.

    Observed frames contribute no factor to an alignment's probability and receive exactly zero
    gradient; with every frame masked this is :func:`ctc_loss`. An utterance with no alignment that
    collapses to its targets and agrees with its observed frames has loss +inf (0 with
    ``zero_infinity``) and, unlike :func:`F.ctc_loss`, a zero (never NaN) gradient.

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

    Returns:
        (N,) for reduction "none", else a scalar.
    """
    _check_inputs(log_probs, targets, input_lengths, target_lengths, blank, reduction)
    _check_observed(observed, log_probs)
    targets, input_lengths, target_lengths = _to_device(log_probs, targets, input_lengths, target_lengths)
    observed = observed.to(log_probs.device)
    if log_probs.dtype in (torch.float16, torch.bfloat16):
        log_probs = log_probs.float()
    restricted = _RestrictToObserved.apply(log_probs, observed)
    nll = F.ctc_loss(
        restricted.transpose(0, 1),
        targets,
        input_lengths,
        target_lengths,
        blank=blank,
        reduction="none",
        zero_infinity=True,  # only too-short utterances give inf here; their NaN gradient is zeroed
    )
    infeasible = (nll >= _INFEASIBLE_LOSS) | _too_short(targets, input_lengths, target_lengths)
    if restricted.requires_grad and bool(infeasible.any()):
        # The CTC backward of an infeasible utterance can overflow (inf * 0 = NaN) even though the
        # loss below does not depend on it; its gradient is zero by definition.
        restricted.register_hook(_zero_rows_hook(infeasible))
    nll = torch.where(infeasible, 0.0 if zero_infinity else float("inf"), nll)
    return _reduce(nll, target_lengths, reduction)


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


class _RestrictToObserved(torch.autograd.Function):
    """Replace each observed frame's log-distribution by a point mass on its observed token.

    Forward: ``log_probs`` clamped to _IMPOSSIBLE (so genuine -inf never reaches the CTC), then at
    each observed frame 0 for the observed token and _IMPOSSIBLE for the others. Backward: the
    incoming gradient with observed frames zeroed. Written as one Function so that it costs a single
    pass over (N, T, C) each way.
    """

    @staticmethod
    def forward(ctx: Any, log_probs: Tensor, observed: Tensor) -> Tensor:
        is_observed = (observed >= 0).unsqueeze(-1)
        keep = (~is_observed).to(log_probs.dtype)  # (N, T, 1); a product is faster than masked_fill
        restricted = log_probs.clamp(min=_IMPOSSIBLE).mul_(keep).add_((1.0 - keep) * _IMPOSSIBLE)
        index = observed.clamp(min=0).unsqueeze(-1)
        restricted.scatter_(-1, index, torch.where(is_observed, 0.0, restricted.gather(-1, index)))
        ctx.save_for_backward(keep)
        return restricted

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep, None


def _zero_rows_hook(rows: Tensor) -> Callable[[Tensor | None], Tensor | None]:
    """Gradient hook that zeroes the gradient of the utterances where ``rows`` (N,) is true."""

    def hook(grad: Tensor | None) -> Tensor | None:
        return None if grad is None else grad.masked_fill(rows[:, None, None], 0.0)

    return hook


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
