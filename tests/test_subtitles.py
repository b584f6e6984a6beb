"""Subtitles: timestamps and the grouping of words into cues (the files are
parsed back in test_transcribe.py)."""

from __future__ import annotations

from imputer_asr.transcription.subtitles import format_timestamp, subtitle_cues
from imputer_asr.transcription.words import Word


def test_format_timestamp() -> None:
    assert format_timestamp(3723.4567, ",") == "01:02:03,457"
    assert format_timestamp(0.0, ".") == "00:00:00.000"
    assert format_timestamp(59.9996, ",") == "00:01:00,000"


def test_subtitle_cues_respect_words_seconds_and_pauses() -> None:
    words = [Word(f"W{i}", 0.3 * i, 0.3 * i + 0.2) for i in range(30)]  # 30 words, 9 s, no pause
    words += [Word("LATE", 20.0, 20.5)]
    cues = subtitle_cues(words, max_seconds=7.0, max_words=12, max_pause=1.0)
    assert [len(c.text.split()) for c in cues] == [12, 12, 6, 1]
    assert " ".join(c.text for c in cues) == " ".join(w.word for w in words)
    assert all(c.end - c.start <= 7.0 for c in cues)
    slow = [Word(f"S{i}", 1.0 * i, 1.0 * i + 0.5) for i in range(10)]
    assert [c.text for c in subtitle_cues(slow)][:2] == ["S0 S1 S2 S3 S4 S5 S6", "S7 S8 S9"]
