"""The decoder interface, and running any decoder over a CutSet.

A :class:`Decoder` turns one padded batch of features into one output per utterance: token ids
(:class:`~imputer_asr.decoding.ctc.CTCGreedyDecoder`, the Imputer's
:class:`~imputer_asr.decoding.imputer.KStepDecoder` and
:class:`~imputer_asr.decoding.imputer.AdaptiveDecoder`), words
(:class:`~imputer_asr.decoding.lm_search.LMDecoder`) or log-probabilities (the network half of the LM
search, :func:`~imputer_asr.decoding.lm_search.compute_emissions`). :func:`decode_cutset` is the one
loop that runs a decoder over a CutSet: batches of at most ``max_duration`` seconds of audio, a
progress bar, the model's device, the wall time of the decoder's calls, and the outputs put back in
the manifest's order.

>>> import torch
>>> from imputer_asr.config import ModelConfig
>>> from imputer_asr.decoding.ctc import CTCGreedyDecoder
>>> from imputer_asr.model.conformer import ImputerModel
>>> cfg = ModelConfig(vocab_size=10, mask_id=10, d_model=32, num_heads=2, ff_dim=64, num_layers=2)
>>> model = ImputerModel(cfg).eval()
>>> decoded = CTCGreedyDecoder(blank=0)(model, torch.randn(2, 100, 80), torch.tensor([100, 60]))
>>> len(decoded.outputs), decoded.evaluations
(2, 1)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch
from lhotse import CutSet
from torch import Tensor

from imputer_asr.config import DataConfig
from imputer_asr.data.dataset import make_loader, with_progress
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.model.conformer import ImputerModel

__all__ = [
    "Hypothesis",
    "hypotheses",
    "batch_hypotheses",
    "BatchDecoding",
    "Decoder",
    "CutSetDecoding",
    "decode_cutset",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True)
class Hypothesis:
    """One decoded utterance: its cut id, reference transcript, hypothesis and duration (s)."""

    cut_id: str
    ref: str
    hyp: str
    duration: float


def hypotheses(
    cut_ids: Sequence[str], refs: Sequence[str], durations: Sequence[float], texts: Sequence[str]
) -> list[Hypothesis]:
    """One :class:`Hypothesis` per utterance, from parallel sequences."""
    fields = zip(cut_ids, refs, texts, durations, strict=True)
    return [Hypothesis(cut_id, ref, hyp, duration) for cut_id, ref, hyp, duration in fields]


def batch_hypotheses(batch: dict, ids: Sequence[Sequence[int]], tokenizer: Tokenizer) -> list[Hypothesis]:
    """One Hypothesis per utterance of a batch, from its decoded token ids."""
    texts = [tokenizer.decode(seq) for seq in ids]
    return hypotheses(batch["cut_ids"], batch["texts"], batch["durations"], texts)


@dataclass(frozen=True)
class BatchDecoding(Generic[T_co]):
    """What a decoder makes of one batch of N utterances.

    Attributes:
        outputs: one per utterance, in batch order, on the host (so that the wall time of the call
            covers the device's work).
        evaluations: network evaluations the batch took.
        utterance_evaluations: (N,) evaluations each utterance took; None: ``evaluations`` each.
    """

    outputs: Sequence[T_co]
    evaluations: int = 1
    utterance_evaluations: Sequence[int] | None = None


class Decoder(Protocol[T_co]):
    """Decodes a batch: ``(model, features (N, T, F), feature_lengths (N,)) -> BatchDecoding``.

    The inputs lie on the model's device; the model is in eval mode, under inference mode.
    """

    def __call__(
        self, model: ImputerModel, features: Tensor, feature_lengths: Tensor
    ) -> BatchDecoding[T_co]: ...


@dataclass(frozen=True)
class CutSetDecoding(Generic[T]):
    """A decoder's outputs over a CutSet, in the manifest's order.

    Attributes:
        cut_ids, refs, durations, outputs: one per cut.
        seconds: wall time of moving each batch to the device and decoding it (not of loading it).
        evaluations: network evaluations, summed over batches.
        batches: how many batches.
        utterance_evaluations: evaluations each utterance took, summed over utterances.
    """

    cut_ids: list[str]
    refs: list[str]
    durations: list[float]
    outputs: list[T]
    seconds: float
    evaluations: int
    batches: int
    utterance_evaluations: int

    def hypotheses(self, texts: Sequence[str]) -> list[Hypothesis]:
        """Hypotheses of the cuts, with ``texts`` (one per cut, in this order) as what was said."""
        return hypotheses(self.cut_ids, self.refs, self.durations, texts)


def decode_cutset(
    model: ImputerModel,
    tokenizer: Tokenizer,
    cuts: CutSet,
    decoder: Decoder[T],
    *,
    max_duration: float = 200.0,
    desc: str = "decode",
) -> CutSetDecoding[T]:
    """Run ``decoder`` over every cut (with precomputed features) in batches of at most
    ``max_duration`` seconds of audio, on the model's device, in eval mode (restored afterwards);
    ``desc`` labels the progress bar. Lazy ``cuts`` are read once, into memory: the loader sorts
    them all by duration anyway, and the result keeps the manifest's order."""
    device = next(model.parameters()).device
    cuts = cuts.to_eager()
    position = {cut.id: i for i, cut in enumerate(cuts)}  # manifest order (the loader sorts by duration)
    loader = make_loader(cuts, tokenizer, DataConfig(max_duration=max_duration), train=False)
    cut_ids, refs, durations, outputs = [], [], [], []
    seconds, evaluations, batches, utterance_evaluations = 0.0, 0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in with_progress(loader, len(position), desc):
                n, start = len(batch["cut_ids"]), time.perf_counter()
                features, lengths = batch["features"].to(device), batch["feature_lengths"].to(device)
                decoded = decoder(model, features, lengths)
                seconds += time.perf_counter() - start
                if len(decoded.outputs) != n:
                    raise RuntimeError(f"{decoder!r} gave {len(decoded.outputs)} outputs for a batch of {n}")
                each = decoded.utterance_evaluations
                utterance_evaluations += decoded.evaluations * n if each is None else sum(each)
                evaluations, batches = evaluations + decoded.evaluations, batches + 1
                cut_ids += batch["cut_ids"]
                refs += batch["texts"]
                durations += [float(d) for d in batch["durations"]]
                outputs += decoded.outputs
    finally:
        model.train(was_training)
    order = sorted(range(len(cut_ids)), key=lambda i: position[cut_ids[i]])

    def in_order(column: list) -> list:
        return [column[i] for i in order]

    return CutSetDecoding(
        in_order(cut_ids),
        in_order(refs),
        in_order(durations),
        in_order(outputs),
        seconds,
        evaluations,
        batches,
        utterance_evaluations,
    )
