"""CTC greedy search over per-frame log-probabilities, as a function and as a :class:`Decoder`.

>>> import torch
>>> lp = torch.log(torch.tensor([[[.1, .9, 0], [.1, .9, 0], [.9, .1, 0], [.1, .0, .9], [.1, .9, 0]]]))
>>> greedy_alignment(lp, torch.tensor([5])).tolist()
[[1, 1, 0, 2, 1]]
>>> ctc_greedy_search(lp, torch.tensor([5]), blank=0)
[[1, 2, 1]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lhotse import CutSet
from torch import Tensor

from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.decoding.decoder import BatchDecoding, Hypothesis, batch_hypotheses, decode_cutset
from imputer_asr.model.alignment import collapse
from imputer_asr.model.conformer import ImputerModel

__all__ = [
    "greedy_alignment",
    "ctc_greedy_search",
    "CTCGreedyDecoder",
    "decode_cuts",
    # Defined in imputer_asr.decoding.decoder; importable from here as before the split.
    "batch_hypotheses",
    "Hypothesis",
]


def greedy_alignment(log_probs: Tensor, lengths: Tensor) -> Tensor:
    """Per-frame argmax (N, T) long, -1 past each length."""
    if log_probs.dim() != 3 or lengths.shape != log_probs.shape[:1]:
        raise ValueError(f"expected (N, T, C) and (N,), got {log_probs.shape}, {lengths.shape}")
    best = log_probs.argmax(dim=-1)
    past = torch.arange(best.size(1), device=best.device)[None, :] >= lengths[:, None]
    return best.masked_fill(past, -1)


def ctc_greedy_search(log_probs: Tensor, lengths: Tensor, blank: int) -> list[list[int]]:
    """Token ids of the greedy CTC path of each utterance."""
    return [collapse(a, blank) for a in greedy_alignment(log_probs, lengths).tolist()]


@dataclass(frozen=True)
class CTCGreedyDecoder:
    """CTC greedy search over the all-[MASK] (CTC) network: one evaluation; token ids per utterance."""

    blank: int

    def __call__(
        self, model: ImputerModel, features: Tensor, feature_lengths: Tensor
    ) -> BatchDecoding[list[int]]:
        log_probs, lengths = model(features, feature_lengths)
        return BatchDecoding(ctc_greedy_search(log_probs, lengths, self.blank))


def decode_cuts(
    model: ImputerModel,
    tokenizer: Tokenizer,
    cuts: CutSet,
    max_duration: float = 200.0,
) -> tuple[list[Hypothesis], float]:
    """CTC greedy decoding of every cut (:func:`decode_cutset`); returns hypotheses in the
    manifest's order and the decoding wall time (s)."""
    run = decode_cutset(
        model, tokenizer, cuts, CTCGreedyDecoder(tokenizer.blank_id), max_duration=max_duration
    )
    return run.hypotheses([tokenizer.decode(ids) for ids in run.outputs]), run.seconds
