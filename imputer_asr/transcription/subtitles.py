"""Subtitles from timed words: cues of a few seconds, written as SubRip (.srt) or WebVTT (.vtt).

Words are grouped into cues of at most ``max_seconds`` and ``max_words``; a pause longer than
``max_pause`` also starts a new cue, so a cue does not stay on screen across a silence.

>>> from imputer_asr.transcription.words import Word
>>> cues = subtitle_cues([Word("HELLO", 0.5, 0.9), Word("WORLD", 1.0, 1.4), Word("AGAIN", 4.0, 4.3)])
>>> print(format_srt(cues), end="")
1
00:00:00,500 --> 00:00:01,400
HELLO WORLD
<BLANKLINE>
2
00:00:04,000 --> 00:00:04,300
AGAIN
>>> format_vtt(cues).splitlines()[:3]
['WEBVTT', '', '00:00:00.500 --> 00:00:01.400']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imputer_asr.transcription.words import Word

__all__ = ["Cue", "subtitle_cues", "format_timestamp", "format_srt", "format_vtt"]


@dataclass(frozen=True)
class Cue:
    """Text shown from ``start`` to ``end`` (seconds)."""

    start: float
    end: float
    text: str


def subtitle_cues(
    words: Sequence[Word], max_seconds: float = 7.0, max_words: int = 12, max_pause: float = 1.0
) -> list[Cue]:
    """Consecutive words grouped into cues (``words`` in time order)."""
    groups: list[list[Word]] = []
    for word in words:
        current = groups[-1] if groups else None
        if (
            current is None
            or len(current) >= max_words
            or word.end - current[0].start > max_seconds
            or word.start - current[-1].end > max_pause
        ):
            groups.append([word])
        else:
            current.append(word)
    return [Cue(g[0].start, g[-1].end, " ".join(w.word for w in g)) for g in groups]


def format_timestamp(seconds: float, decimal_marker: str) -> str:
    """``HH:MM:SS<marker>mmm``, e.g. ``00:01:02,345`` for SubRip and ``00:01:02.345`` for WebVTT."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _cue_time(cue: Cue, marker: str) -> str:
    return f"{format_timestamp(cue.start, marker)} --> {format_timestamp(cue.end, marker)}"


def format_srt(cues: Sequence[Cue]) -> str:
    """SubRip: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, separated by blank lines."""
    return "\n".join(f"{i}\n{_cue_time(cue, ',')}\n{cue.text}\n" for i, cue in enumerate(cues, start=1))


def format_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues with ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    return "WEBVTT\n\n" + "\n".join(f"{_cue_time(cue, '.')}\n{cue.text}\n" for cue in cues)
