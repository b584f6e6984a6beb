"""Tests for imputer_asr.transcription.words: timed words from an alignment, and stitching overlapping windows
(against a simulated decoder that sees whole words inside a window and junk at its edges)."""

from __future__ import annotations

import numpy as np
import pytest

from imputer_asr.data.audio import plan_windows
from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer
from imputer_asr.transcription.words import Word, alignment_words, seam, stitch


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = ["THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS UP"] * 20
    return train_tokenizer(texts, tmp_path_factory.mktemp("bpe") / "bpe.model", vocab_size=30)


def test_alignment_words_start_at_the_first_piece_and_end_after_the_last(tokenizer: Tokenizer) -> None:
    frame, offset = 0.04, 3.0
    alignment: list[int] = [0, 0]
    expected = []
    for n, word in enumerate("THE CAT SAT ON THE MAT".split()):
        first = None
        for piece in tokenizer.encode(word):
            alignment += [0] * (n % 2)  # blanks between some pieces, none between others
            first = len(alignment) if first is None else first
            alignment += [piece] * (1 + n % 3)  # a piece may be emitted by several frames
        expected.append((word, offset + first * frame, offset + len(alignment) * frame))
        alignment += [0] * 3
    words = alignment_words(alignment + [-1, -1], tokenizer, frame, offset)
    assert [(w.word, pytest.approx(w.start), pytest.approx(w.end)) for w in words] == expected


def test_alignment_words_split_a_repeated_piece_at_a_blank(tokenizer: Tokenizer) -> None:
    (the,) = tokenizer.encode("THE")
    words = alignment_words([the, the, 0, the, -1], tokenizer, 1.0)
    assert words == [Word("THE", 0.0, 2.0), Word("THE", 3.0, 4.0)]


def _window_view(truth: list[Word], start: float, end: float, rng: np.random.Generator) -> list[Word]:
    """What a decoder might make of one window: the words inside it with their times moved by up to
    a frame, and a junk word for each word cut by an edge of the window."""
    seen = []
    for word in truth:
        if word.start >= start and word.end <= end:
            jitter = rng.uniform(-0.04, 0.04, size=2)
            seen.append(Word(word.word, word.start + jitter[0], word.end + jitter[1]))
        elif word.end > start and word.start < end:
            seen.append(Word("JUNK", max(word.start, start), min(word.end, end)))
    return seen


@pytest.mark.parametrize(("window", "overlap"), [(4.0, 1.0), (5.0, 2.0), (3.0, 1.5), (10.0, 2.5)])
@pytest.mark.parametrize("seed", range(5))
def test_stitch_keeps_every_word_exactly_once(window: float, overlap: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth, t = [], rng.uniform(0.0, 0.5)
    while t < 40.0:
        length = rng.uniform(0.1, 0.6)
        truth.append(Word(f"W{len(truth)}", t, t + length))
        t += length + rng.uniform(0.1, 0.8)
    rate = 100
    spans = [(a / rate, b / rate) for a, b in plan_windows(round(t * rate), rate, window, overlap)]
    assert len(spans) > 3
    views = [_window_view(truth, start, end, rng) for start, end in spans]
    stitched = stitch(views, spans)
    assert [w.word for w in stitched] == [w.word for w in truth]
    assert all(abs(s.start - w.start) <= 0.04 + 1e-9 for s, w in zip(stitched, truth, strict=True))


def test_seam_goes_to_the_free_time_nearest_the_middle_of_the_overlap() -> None:
    left = [Word("A", 1.0, 2.6), Word("B", 2.8, 3.9)]
    right = [Word("A", 1.0, 2.7), Word("B", 2.9, 4.0)]
    assert seam(left, right, lo=2.0, hi=4.0) == 2.8  # 2.7 and 2.8 are free; 2.8 is nearer 3.0
    assert seam([Word("A", 0.0, 5.0)], [], lo=2.0, hi=4.0) == 3.0  # no free time: the middle
    assert seam([], [], lo=2.0, hi=4.0) == 3.0
