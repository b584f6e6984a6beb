"""A peer recogniser for the WER tables: pocketsphinx's default US English model over a cuts manifest.

pocketsphinx (PyPI ``pocketsphinx`` 5.x) ships its acoustic model, CMUdict and an n-gram LM inside
the package. Each cut is decoded on its own, as one utterance (``full_utt``: its cepstral mean is
estimated over the whole utterance), from a front end reset to its initial state: its noise
estimate would otherwise carry over, and a cut's hypothesis would depend on the cuts decoded
before it. The hypotheses are :class:`~imputer_asr.decoding.ctc.Hypothesis` records, the ones
``imputer-asr decode`` writes, with the words in the references' convention:

>>> normalize_pocketsphinx("<s> the(2) [NOISE] x-ray's <sil> a.m. </s>")
"THE X RAY'S A M"
"""

from __future__ import annotations

import re
import time

import numpy as np
from lhotse import CutSet
from lhotse.audio.utils import AudioLoadingError
from lhotse.cut import Cut
from pocketsphinx import Decoder
from tqdm import tqdm

from imputer_asr.decoding.ctc import Hypothesis

__all__ = ["SAMPLING_RATE", "normalize_pocketsphinx", "cut_pcm16", "recognize_pcm16", "decode_pocketsphinx"]

SAMPLING_RATE = 16000  # the default acoustic model's rate
_FILLER_RE = re.compile(r"<[^>]*>|\[[^\]]*\]|\+\+[^+]*\+\+")  # <s> </s> <sil>, [NOISE] [SPEECH], ++UH++
_ALTERNATIVE_RE = re.compile(r"\(\d+\)$")  # read(2): CMUdict's second pronunciation of READ
_NOT_LETTERS_RE = re.compile(r"[^A-Z']+")


def normalize_pocketsphinx(text: str) -> str:
    """pocketsphinx's words as the references write them: upper case, letters and apostrophes.

    Fillers and silences are dropped, as are the ``(n)`` marks of alternative pronunciations.
    Hyphens and dots split a dictionary word (``x-ray`` -> ``X RAY``, ``a.m.`` -> ``A M``), the way
    the synthetic corpus's transcripts split hyphenated words; apostrophes stay inside words only.
    """
    words: list[str] = []
    for token in text.split():
        if _FILLER_RE.fullmatch(token):
            continue
        for piece in _NOT_LETTERS_RE.split(_ALTERNATIVE_RE.sub("", token).upper()):
            if piece.strip("'"):
                words.append(piece.strip("'"))
    return " ".join(words)


def cut_pcm16(cut: Cut) -> bytes:
    """The cut's audio as 16-bit little-endian mono PCM at 16 kHz (resampled by lhotse if needed).

    Raises:
        ValueError: naming the cut, when it has no recording, more than one channel, or audio that
            cannot be read.
    """
    if not cut.has_recording:
        raise ValueError(f"cut {cut.id} has no recording: pocketsphinx needs the audio, not features")
    if cut.sampling_rate != SAMPLING_RATE:
        cut = cut.resample(SAMPLING_RATE)
    try:
        samples = cut.load_audio()
    except AudioLoadingError as exc:  # its message holds a line per audio backend tried
        raise ValueError(f"cut {cut.id}: {str(exc).splitlines()[0]}") from None
    if samples.ndim != 2 or samples.shape[0] != 1:
        raise ValueError(f"cut {cut.id}: pocketsphinx reads one channel, the cut has {samples.shape[0]}")
    # lhotse reads 16-bit audio as int / 32768: scaling back by 32768 gives the file's samples exactly.
    return np.clip(np.rint(samples[0] * 32768), -32768, 32767).astype("<i2").tobytes()


def recognize_pcm16(decoder: Decoder, pcm: bytes) -> str:
    """pocketsphinx's best hypothesis for one utterance of 16-bit little-endian PCM at 16 kHz, as it
    writes it (lower case; may hold fillers and ``(n)`` marks); "" when it finds no words. The same
    as a new decoder's, whatever ``decoder`` decoded before."""
    decoder.reinit_feat()  # the front end's noise estimate and cepstral mean, as in a new decoder
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    best = decoder.hyp()
    return best.hypstr if best is not None else ""


def decode_pocketsphinx(cuts: CutSet) -> tuple[list[Hypothesis], float]:
    """Decode every cut with pocketsphinx's default model; returns the hypotheses and the decoding
    wall time (s): pocketsphinx's own front end and search, not the reading and resampling of audio.

    Raises:
        ValueError: naming the cut, when its audio cannot be given to pocketsphinx (:func:`cut_pcm16`).
    """
    decoder = Decoder(samprate=SAMPLING_RATE, loglevel="FATAL")
    hyps: list[Hypothesis] = []
    elapsed = 0.0
    for cut in tqdm(cuts, total=len(cuts), desc="pocketsphinx", unit="utt", disable=None, leave=False):
        pcm = cut_pcm16(cut)
        start = time.perf_counter()
        words = recognize_pcm16(decoder, pcm)
        elapsed += time.perf_counter() - start
        ref = " ".join(s.text for s in cut.supervisions)
        hyps.append(Hypothesis(cut.id, ref, normalize_pocketsphinx(words), cut.duration))
    return hyps, elapsed
