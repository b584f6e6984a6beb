"""Tests for imputer_asr.data.audio: finding audio files and planning windows (reading is tested with
real speech in test_transcribe.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imputer_asr.data.audio import find_audio, plan_windows
from imputer_asr.transcription.transcribe import TranscribeOptions


def test_find_audio_lists_directories_recursively_and_keeps_other_paths(tmp_path: Path) -> None:
    for name in ["b/z.WAV", "b/a.flac", "a/deep/x.mp3", "a/y.ogg", "a/notes.txt", "c.flac"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    given = [str(tmp_path / "c.flac"), str(tmp_path), str(tmp_path / "missing.wav"), str(tmp_path / "empty")]
    assert find_audio(given) == [
        str(tmp_path / "c.flac"),
        str(tmp_path / "a/deep/x.mp3"),
        str(tmp_path / "a/y.ogg"),
        str(tmp_path / "b/a.flac"),
        str(tmp_path / "b/z.WAV"),
        str(tmp_path / "c.flac"),
        str(tmp_path / "missing.wav"),
        str(tmp_path / "empty"),
    ]


@pytest.mark.parametrize(("window", "overlap"), [(4.0, 1.0), (4.0, 2.0), (3.0, 0.0), (30.0, 5.0)])
def test_plan_windows_cover_the_recording_with_full_overlapping_windows(
    window: float, overlap: float
) -> None:
    rate = 10
    for num_samples in range(1, 400, 7):
        spans = plan_windows(num_samples, rate, window, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == num_samples
        if len(spans) == 1:
            assert num_samples <= window * rate
            continue
        assert all(stop - start == round(window * rate) for start, stop in spans)
        for (a, b), (c, d) in zip(spans, spans[1:], strict=False):
            assert a < c and b < d and b - c >= round(overlap * rate)


def test_plan_windows_rejects_an_overlap_as_long_as_the_window() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(100, 10, 4.0, 4.0)
    with pytest.raises(ValueError):
        TranscribeOptions(window_seconds=4.0, overlap_seconds=5.0)
