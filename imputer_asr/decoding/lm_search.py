"""CTC beam search constrained to a lexicon, scored with a word n-gram language model.

Greedy CTC decoding spells each word from the sound alone, so most errors of a small model are
misspellings ("BILIVE") and merged or split words. This search only ever writes words of the lexicon
(each spelled with the model's BPE pieces, :func:`imputer_asr.lm.ngram.write_lexicon`) and adds
``lm_weight`` times the n-gram log-probability of each word plus ``word_score`` per word. It is
flashlight's lexicon decoder (through :func:`torchaudio.models.decoder.ctc_decoder`, which needs the
``flashlight-text`` package) with a KenLM model read from an ARPA file (:mod:`imputer_asr.lm.ngram`).
``lm_weight`` and ``word_score`` are chosen on dev by :func:`tune`.

The search reads the log-probabilities of the all-[MASK] (CTC) network or, with ``steps`` K > 1 in
:func:`compute_emissions`, those of the K-th evaluation of the Imputer's K-step block decoding
(:func:`imputer_asr.decoding.imputer.imputer_emissions`): the search then takes the place of the
last step's argmax. :func:`compute_emissions` runs the network over a CutSet once, and
:func:`decode_emissions` and :func:`tune` search its output (in several processes); :class:`LMDecoder`
is the network and the search of each batch together, a :class:`~imputer_asr.decoding.decoder.Decoder`.

The tokenizer has no silence piece, so ``<unk>``, which the model never emits (it is never a
target), stands in for flashlight's silence token; word boundaries come from the ``▁`` that starts
each word's first piece.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from torch import Tensor

from imputer_asr.data.tokenizer import BLANK_PIECE, UNK_PIECE, Tokenizer
from imputer_asr.decoding.decoder import BatchDecoding, Hypothesis, decode_cutset, hypotheses
from imputer_asr.decoding.imputer import imputer_emissions
from imputer_asr.evaluation.scoring import score
from imputer_asr.lm.ngram import UNK
from imputer_asr.model.conformer import ImputerModel

__all__ = [
    "LMWeights",
    "LexiconBeamSearch",
    "LMDecoder",
    "Emissions",
    "compute_emissions",
    "decode_emissions",
    "tune",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMWeights:
    """How the search weighs the language model: score = acoustic + lm_weight * LM + word_score * words."""

    lm_weight: float = 0.5
    word_score: float = 0.0
    beam_size: int = 200
    beam_threshold: float = 25.0
    beam_size_token: int | None = None  # pieces tried per frame, the likeliest first; None: all


class LexiconBeamSearch:
    """Lexicon-constrained CTC beam search over (N, T, C) log-probabilities; returns word strings."""

    def __init__(self, tokenizer: Tokenizer, lexicon: Path, lm: Path | None, weights: LMWeights) -> None:
        try:
            from torchaudio.models.decoder import ctc_decoder
        except (ImportError, RuntimeError) as exc:  # torchaudio raises RuntimeError without flashlight
            raise RuntimeError(
                f"LM decoding needs flashlight-text (pip install flashlight-text): {exc}"
            ) from None
        for name, path in (("lexicon", lexicon), ("language model", lm)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path} does not exist")
        tokens = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
        options = {
            "lexicon": str(lexicon),
            "tokens": tokens,
            "lm": None if lm is None else str(lm),
            "beam_size": weights.beam_size,
            "beam_threshold": weights.beam_threshold,
            "beam_size_token": weights.beam_size_token,
            "lm_weight": weights.lm_weight,
            "word_score": weights.word_score,
            "blank_token": BLANK_PIECE,
            "sil_token": UNK_PIECE,
            "unk_word": UNK,
        }
        with _quiet_stderr() as printed:  # KenLM draws a progress bar on stderr while it reads
            try:
                self._decoder = ctc_decoder(**options)
            except (RuntimeError, ValueError, KeyError, IndexError) as exc:
                problem = f"{exc} {printed()}".strip()
                raise ValueError(f"cannot build the LM decoder from {lexicon} and {lm}: {problem}") from None
        self.weights = weights
        self._blank, self._silence = tokenizer.blank_id, tokenizer.unk_id

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[str]:
        """The best word sequence of each utterance of (N, T, C) ``log_probs``."""
        return [
            " ".join(word for word in best.words if word) if best else ""
            for best in self._best(log_probs, lengths)
        ]

    def alignments(self, log_probs: Tensor, lengths: Tensor) -> list[list[int]]:
        """The best hypothesis of each utterance as a frame-level path: each emitted piece at the
        first frame the search put it on, blank elsewhere, -1 past the utterance's length. It
        collapses to the hypothesis' pieces (the search puts a blank between repeated pieces)."""
        paths = []
        for best, length in zip(self._best(log_probs, lengths), lengths.tolist(), strict=True):
            path = [self._blank] * length + [-1] * (log_probs.shape[1] - length)
            if best is not None:
                # Step 0 is the search's start state and step length + 1 its end: frame = step - 1.
                for token, step in zip(best.tokens.tolist(), best.timesteps.tolist(), strict=True):
                    if token != self._silence and 0 < step <= length:
                        path[step - 1] = token
            paths.append(path)
        return paths

    def _best(self, log_probs: Tensor, lengths: Tensor) -> list:
        emissions = log_probs.detach().float().cpu().contiguous()
        results = self._decoder(emissions, lengths.detach().cpu().to(torch.int32))
        return [best[0] if best else None for best in results]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[Callable[[], str]]:
    """Send file descriptor 2 (where C++ libraries print) to a temporary file for the duration;
    yields a function that returns what was printed so far."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 2)

        def printed() -> str:
            sink.flush()
            sink.seek(0)
            return sink.read()

        try:
            yield printed
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@dataclass
class Emissions:
    """The acoustic model's output for a set of cuts, computed once and searched many times."""

    log_probs: list[Tensor]  # (T_i, C) per utterance
    cut_ids: list[str]
    refs: list[str]
    durations: list[float]
    seconds: float  # wall time of the forward passes
    steps: int = 1  # network evaluations per batch: 1 for CTC, K for the Imputer's K-th step
    batches: int = 0


@dataclass(frozen=True)
class _EmissionsDecoder:
    """The log-probs (T_i, C) of each utterance at the K-th evaluation of K-step decoding."""

    steps: int
    block_size: int

    def __call__(
        self, model: ImputerModel, features: Tensor, feature_lengths: Tensor
    ) -> BatchDecoding[Tensor]:
        log_probs, lengths = imputer_emissions(model, features, feature_lengths, self.steps, self.block_size)
        log_probs = log_probs.float().cpu()
        per_utterance = [log_probs[i, :length].contiguous() for i, length in enumerate(lengths.tolist())]
        return BatchDecoding(per_utterance, evaluations=self.steps)


def compute_emissions(
    model: ImputerModel,
    tokenizer: Tokenizer,
    cuts: CutSet,
    max_duration: float = 200.0,
    *,
    steps: int = 1,
    block_size: int = 8,
) -> Emissions:
    """Run the network over every cut (:func:`~imputer_asr.decoding.decoder.decode_cutset`, in the
    manifest's order): the log-probs of the K-th evaluation of K-step Imputer decoding
    (:func:`imputer_asr.decoding.imputer.imputer_emissions`, K = ``steps`` in [1, ``block_size``]);
    K = 1, the default, is the CTC model (all-[MASK] input)."""
    if not 1 <= steps <= block_size:
        raise ValueError(f"steps must lie in [1, block_size={block_size}], got {steps}")
    decoder = _EmissionsDecoder(steps, block_size)
    run = decode_cutset(model, tokenizer, cuts, decoder, max_duration=max_duration, desc="network")
    return Emissions(run.outputs, run.cut_ids, run.refs, run.durations, run.seconds, steps, run.batches)


@dataclass(frozen=True)
class LMDecoder:
    """The search as a :class:`~imputer_asr.decoding.decoder.Decoder`: each batch's log-probs of the
    K-th evaluation (K = ``steps``; 1: the CTC network) searched at once, in this process; words per
    utterance. :func:`compute_emissions` then :func:`decode_emissions` give the same words, and can
    search in several processes or, with :func:`tune`, under many weights."""

    search: LexiconBeamSearch
    steps: int = 1
    block_size: int = 8

    def __call__(self, model: ImputerModel, features: Tensor, feature_lengths: Tensor) -> BatchDecoding[str]:
        log_probs, lengths = imputer_emissions(model, features, feature_lengths, self.steps, self.block_size)
        return BatchDecoding(self.search(log_probs, lengths), evaluations=self.steps)


class _Searcher:
    """Everything a search needs besides its weights; runs searches over chosen utterances."""

    def __init__(self, tokenizer: Tokenizer, lexicon: Path, lm: Path | None, log_probs: list[Tensor]):
        self.tokenizer, self.lexicon, self.lm, self.log_probs = tokenizer, lexicon, lm, log_probs

    def run(self, weights: LMWeights, indices: Sequence[int]) -> list[str]:
        search = LexiconBeamSearch(self.tokenizer, self.lexicon, self.lm, weights)
        return [
            search(self.log_probs[i].unsqueeze(0), torch.tensor([len(self.log_probs[i])]))[0] for i in indices
        ]


_WORKER: dict[str, _Searcher] = {}


def _start_worker(proto: bytes, lexicon: Path, lm: Path | None, arrays: list[np.ndarray]) -> None:
    torch.set_num_threads(1)
    log_probs = [torch.from_numpy(a) for a in arrays]
    _WORKER["searcher"] = _Searcher(Tokenizer(proto), lexicon, lm, log_probs)


def _work(task: tuple[LMWeights, list[int]]) -> list[str]:
    return _WORKER["searcher"].run(*task)


def _search(
    emissions: Emissions,
    tokenizer: Tokenizer,
    lexicon: Path,
    lm: Path | None,
    grid: Sequence[LMWeights],
    jobs: int,
) -> tuple[list[list[str]], float]:
    """The texts of every utterance under each weights of ``grid``, and the wall time of it all.

    The search is single-threaded C++, so ``jobs`` > 1 runs it in that many processes (spawned, so
    that no OpenMP state is inherited): the grid points are shared out, or with a single point the
    utterances are.
    """
    everything = list(range(len(emissions.log_probs)))
    start = time.perf_counter()
    if jobs <= 1 or not everything:
        searcher = _Searcher(tokenizer, lexicon, lm, emissions.log_probs)
        return [searcher.run(weights, everything) for weights in grid], time.perf_counter() - start
    if len(grid) > 1:
        tasks = [(weights, everything) for weights in grid]
    else:
        tasks = [(grid[0], everything[j::jobs]) for j in range(jobs)]
    arrays = [lp.numpy() for lp in emissions.log_probs]
    context = multiprocessing.get_context("spawn")
    init = (tokenizer.model_proto, lexicon, lm, arrays)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=init) as pool:
        results = list(pool.map(_work, tasks))
    seconds = time.perf_counter() - start
    if len(grid) > 1:
        return results, seconds
    texts = [""] * len(everything)
    for (_, indices), part in zip(tasks, results, strict=True):
        for i, text in zip(indices, part, strict=True):
            texts[i] = text
    return [texts], seconds


def _hypotheses(emissions: Emissions, texts: list[str]) -> list[Hypothesis]:
    return hypotheses(emissions.cut_ids, emissions.refs, emissions.durations, texts)


def decode_emissions(
    emissions: Emissions,
    tokenizer: Tokenizer,
    lexicon: Path,
    lm: Path | None,
    weights: LMWeights,
    jobs: int = 1,
) -> tuple[list[Hypothesis], float]:
    """Hypotheses of the search over every utterance, and the search's wall time in seconds."""
    (texts,), seconds = _search(emissions, tokenizer, lexicon, lm, [weights], jobs)
    return _hypotheses(emissions, texts), seconds


def tune(
    emissions: Emissions,
    tokenizer: Tokenizer,
    lexicon: Path,
    lm: Path,
    lm_weights: Sequence[float],
    word_scores: Sequence[float],
    beam_size: int = 200,
    jobs: int = 1,
    beam_size_token: int | None = None,
) -> tuple[LMWeights, list[dict]]:
    """Grid search of (lm_weight, word_score) by WER, then CER, on ``emissions`` (a dev set);
    returns the best weights and one record per grid point."""
    grid = [
        LMWeights(lm_weight=w, word_score=s, beam_size=beam_size, beam_size_token=beam_size_token)
        for w, s in itertools.product(lm_weights, word_scores)
    ]
    if not grid:
        raise ValueError("the grid of LM weights and word scores is empty")
    all_texts, seconds = _search(emissions, tokenizer, lexicon, lm, grid, jobs)
    records = []
    for weights, texts in zip(grid, all_texts, strict=True):
        report = score([(h.cut_id, h.ref, h.hyp) for h in _hypotheses(emissions, texts)])
        records.append(
            {
                "lm_weight": weights.lm_weight,
                "word_score": weights.word_score,
                "wer": report.wer,
                "cer": report.cer,
            }
        )
        log.info(
            "lm_weight %.2f word_score %+.1f: WER %.2f%% CER %.2f%%",
            weights.lm_weight,
            weights.word_score,
            100 * report.wer,
            100 * report.cer,
        )
    log.info("searched %d grid points in %.1f s", len(grid), seconds)
    best = min(range(len(grid)), key=lambda i: (records[i]["wer"], records[i]["cer"]))
    return grid[best], records
