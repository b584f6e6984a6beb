"""Decoding: CTC greedy search over per-frame log-probabilities, and decoding a whole CutSet.

>>> import torch
>>> lp = torch.log(torch.tensor([[[.1, .9, 0], [.1, .9, 0], [.9, .1, 0], [.1, .0, .9], [.1, .9, 0]]]))
>>> greedy_alignment(lp, torch.tensor([5])).tolist()
[[1, 1, 0, 2, 1]]
>>> collapse_alignment([1, 1, 0, 2, 1, -1], blank=0)
[1, 2, 1]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from lhotse import CutSet
from torch import Tensor

from imputer_asr.config import DataConfig
from imputer_asr.data.dataset import make_loader, with_progress
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.model.conformer import ImputerModel

__all__ = [
    "greedy_alignment",
    "collapse_alignment",
    "ctc_greedy_search",
    "decode_cuts",
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


def collapse_alignment(alignment: Sequence[int], blank: int) -> list[int]:
    """Merge repeated tokens, then drop blanks and padding (-1): the CTC collapse."""
    out: list[int] = []
    prev = None
    for token in alignment:
        if token != prev and token != blank and token >= 0:
            out.append(int(token))
        prev = token
    return out


def ctc_greedy_search(log_probs: Tensor, lengths: Tensor, blank: int) -> list[list[int]]:
    """Token ids of the greedy CTC path of each utterance."""
    return [collapse_alignment(a, blank) for a in greedy_alignment(log_probs, lengths).tolist()]


@dataclass(frozen=True)
class Hypothesis:
    cut_id: str
    ref: str
    hyp: str
    duration: float


@torch.inference_mode()
def decode_cuts(
    model: ImputerModel,
    tokenizer: Tokenizer,
    cuts: CutSet,
    max_duration: float = 200.0,
) -> tuple[list[Hypothesis], float]:
    """CTC greedy decoding of every cut; returns hypotheses and the decoding wall time (s)."""
    model.eval()
    loader = make_loader(cuts, tokenizer, DataConfig(max_duration=max_duration), train=False)
    hyps: list[Hypothesis] = []
    elapsed = 0.0
    device = next(model.parameters()).device
    for batch in with_progress(loader, len(cuts), "decode"):
        start = time.perf_counter()
        log_probs, lengths = model(batch["features"].to(device), batch["feature_lengths"].to(device))
        ids = ctc_greedy_search(log_probs, lengths, tokenizer.blank_id)
        elapsed += time.perf_counter() - start
        hyps += batch_hypotheses(batch, ids, tokenizer)
    return hyps, elapsed


def batch_hypotheses(batch: dict, ids: Sequence[Sequence[int]], tokenizer: Tokenizer) -> list[Hypothesis]:
    """One Hypothesis per utterance of a batch, from its decoded token ids."""
    fields = zip(batch["cut_ids"], batch["texts"], batch["durations"], ids, strict=True)
    return [Hypothesis(cut_id, ref, tokenizer.decode(seq), dur) for cut_id, ref, dur, seq in fields]
