"""Timed words from a CTC alignment, and the words of overlapping windows stitched into one list.

A piece is emitted by a run of frames carrying it; a word is a piece that starts with ``▁``
(sentencepiece's word boundary) together with the pieces that follow it without one. A word starts
at the first frame of its first piece and ends after the last frame of its last piece.

Overlapping windows of a long recording see the words of their overlap twice. :func:`stitch`
cuts each overlap at a seam, a time inside no word of either window, and keeps every word from the
one window on the side of the seam where its midpoint lies: each word is kept exactly once.

>>> words = [[Word("A", 0.5, 1.0), Word("B", 3.1, 3.5)], [Word("B", 3.1, 3.6), Word("C", 5.0, 5.5)]]
>>> [w.word for w in stitch(words, [(0.0, 4.0), (3.0, 7.0)])]
['A', 'B', 'C']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imputer_asr.data.tokenizer import Tokenizer

__all__ = ["Word", "WORD_START", "alignment_words", "seam", "stitch"]

WORD_START = "▁"


@dataclass(frozen=True)
class Word:
    """A word and its time in the recording, in seconds."""

    word: str
    start: float
    end: float

    @property
    def midpoint(self) -> float:
        return (self.start + self.end) / 2


def _emissions(alignment: Sequence[int], blank: int) -> list[tuple[int, int, int]]:
    """(token, first frame, last frame) of every run of equal non-blank frames; -1 ends the alignment."""
    runs: list[tuple[int, int, int]] = []
    prev = blank
    for frame, token in enumerate(alignment):
        if token < 0:
            break
        if token != blank and token == prev:
            runs[-1] = (token, runs[-1][1], frame)
        elif token != blank:
            runs.append((token, frame, frame))
        prev = token
    return runs


def alignment_words(
    alignment: Sequence[int], tokenizer: Tokenizer, frame_seconds: float, offset: float = 0.0
) -> list[Word]:
    """The words of one alignment (encoder frames ``frame_seconds`` apart, frame 0 at ``offset``)."""
    groups: list[list[tuple[int, int, int]]] = []
    for emission in _emissions(alignment, tokenizer.blank_id):
        if not groups or tokenizer.id_to_piece(emission[0]).startswith(WORD_START):
            groups.append([])
        groups[-1].append(emission)
    words = []
    for group in groups:
        text = tokenizer.decode([token for token, _, _ in group]).strip()
        if text:  # a lone word-boundary piece decodes to nothing
            start = offset + group[0][1] * frame_seconds
            words.append(Word(text, start, offset + (group[-1][2] + 1) * frame_seconds))
    return words


def seam(left: Sequence[Word], right: Sequence[Word], lo: float, hi: float) -> float:
    """Where to cut between two windows overlapping on [lo, hi] (seconds).

    The time in [lo, hi] inside no word of either window that is nearest the middle of the overlap
    (the most context on both sides); the middle itself when every such time is inside a word.

    >>> seam([Word("A", 2.0, 3.2)], [Word("A", 2.1, 3.1), Word("B", 3.3, 4.0)], lo=2.0, hi=4.0)
    3.2
    """
    middle = (lo + hi) / 2
    inside = [w for w in (*left, *right) if w.end > lo and w.start < hi]
    candidates = {lo, hi, middle} | {t for w in inside for t in (w.start, w.end) if lo <= t <= hi}
    free = [t for t in candidates if not any(w.start < t < w.end for w in inside)]
    return min(free, key=lambda t: (abs(t - middle), t)) if free else middle


def stitch(window_words: Sequence[Sequence[Word]], spans: Sequence[tuple[float, float]]) -> list[Word]:
    """One list of words from the words of consecutive overlapping windows.

    Args:
        window_words: each window's words, timed in the recording.
        spans: each window's (start, end) in seconds, in order; neighbours overlap.

    Returns:
        The words whose midpoint lies between the seams around their window, in time order.
    """
    if len(window_words) != len(spans):
        raise ValueError(f"{len(window_words)} windows of words but {len(spans)} spans")
    cuts = [
        seam(window_words[k], window_words[k + 1], spans[k + 1][0], spans[k][1])
        for k in range(len(spans) - 1)
    ]
    bounds = [float("-inf"), *cuts, float("inf")]
    return [
        word
        for k, words in enumerate(window_words)
        for word in words
        if bounds[k] <= word.midpoint < bounds[k + 1]
    ]
