"""Audio to transcribe: any file soundfile reads, or an array; any sample rate and channel count.

A recording is never loaded whole. :func:`open_audio` reads only the header (or wraps an array),
:func:`plan_windows` cuts the recording into overlapping windows, and :meth:`AudioSource.read`
reads one window (a seek and a read), down-mixes it to mono and resamples it to the model's rate,
so an hour of audio takes the memory of one window. Problems with an input raise
:class:`AudioError`, a ValueError whose message names the input and the cause in one line.

>>> import numpy as np
>>> source = open_audio(np.zeros((2, 44100), dtype=np.float32), sample_rate=44100, name="<silence>")
>>> source.duration, source.read(0, 4410, 16000).shape
(1.0, (1600,))
>>> plan_windows(100, 10, window_seconds=4, overlap_seconds=1)
[(0, 40), (30, 70), (60, 100)]
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional

__all__ = [
    "AUDIO_SUFFIXES",
    "AudioError",
    "AudioSource",
    "find_audio",
    "open_audio",
    "plan_windows",
    "resampled_length",
]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
_LENGTH_SLACK_SECONDS = 1.0
"""How much shorter than its header announces a file may end: an mp3 header may only estimate it."""


class AudioError(ValueError):
    """An input that cannot be transcribed; ``str(error)`` is ``"<source>: <cause>"``."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(f"{source}: {cause}")
        self.source = source
        self.cause = cause


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()


def find_audio(paths: Iterable[str | os.PathLike]) -> list[str]:
    """The inputs as given, each directory replaced by the audio files under it (recursively, sorted).

    A directory holding no audio, and a path that does not exist, are kept as they are: opening them
    reports the problem, so that it is listed with the other inputs' results.
    """
    found: list[str] = []
    for given in paths:
        path = Path(given)
        files = sorted(str(f) for f in path.rglob("*") if _is_audio(f)) if path.is_dir() else []
        found.extend(files or [os.fspath(given)])
    return found


class AudioSource(abc.ABC):
    """One recording: its name, native rate and length; :meth:`read` returns spans at any rate."""

    def __init__(self, name: str, sample_rate: int, num_samples: int) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self.num_samples = num_samples

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    def read(self, start: int, stop: int, sample_rate: int) -> np.ndarray:
        """Samples [start, stop) (at the native rate), down-mixed to mono and resampled: float32 (n,).

        Raises:
            AudioError: the span cannot be decoded, or it holds NaN or infinite values.
        """
        channels = self._read_channels(start, stop)
        finite = np.isfinite(channels).all(axis=0)
        if not finite.all():
            first = (start + int(np.argmin(finite))) / self.sample_rate
            raise AudioError(self.name, f"NaN or infinite sample values (the first at {first:.3f} s)")
        mono = torch.from_numpy(channels.mean(axis=0, dtype=np.float32))
        if self.sample_rate != sample_rate:
            mono = torchaudio.functional.resample(mono, self.sample_rate, sample_rate)
        return mono.numpy()

    @abc.abstractmethod
    def _read_channels(self, start: int, stop: int) -> np.ndarray:
        """(channels, stop - start) float32 at the native rate."""


class _FileSource(AudioSource):
    def __init__(self, name: str, path: Path, sample_rate: int, num_samples: int) -> None:
        super().__init__(name, sample_rate, num_samples)
        self.path = path

    def _read_channels(self, start: int, stop: int) -> np.ndarray:
        try:
            with sf.SoundFile(self.path) as f:
                f.seek(start)
                data = f.read(stop - start, dtype="float32", always_2d=True)
        except sf.LibsndfileError as exc:
            at = start / self.sample_rate
            raise AudioError(
                self.name,
                f"cannot decode the audio after {at:.2f} s ({exc.error_string.rstrip('.')}); "
                "the file is truncated or corrupt",
            ) from None
        except OSError as exc:
            raise AudioError(self.name, f"cannot read the file ({exc.strerror or exc})") from None
        missing = (stop - start - len(data)) / self.sample_rate
        if missing > 0 and (stop < self.num_samples or missing > _LENGTH_SLACK_SECONDS):
            end = (start + len(data)) / self.sample_rate
            raise AudioError(
                self.name,
                f"the audio ends at {end:.2f} s but the header announces {self.duration:.2f} s; "
                "the file is truncated",
            )
        return data.T


class _ArraySource(AudioSource):
    def __init__(self, name: str, channels: np.ndarray, sample_rate: int) -> None:
        super().__init__(name, sample_rate, channels.shape[1])
        self.channels = channels

    def _read_channels(self, start: int, stop: int) -> np.ndarray:
        return self.channels[:, start:stop]


def open_audio(
    audio: str | os.PathLike | np.ndarray | torch.Tensor, sample_rate: int = 16000, name: str | None = None
) -> AudioSource:
    """A file path (its header is read, not its audio) or an array of samples.

    Args:
        audio: a path to a file soundfile reads (wav, flac, ogg, mp3, ...), or samples as a numpy
            array or torch tensor, (samples,) or (channels, samples), float in [-1, 1] or signed
            integers (scaled like soundfile does).
        sample_rate: the rate of an array (a file's header gives its own).
        name: how errors and results name the input; default: the path, or ``<array>``.

    Raises:
        AudioError: the file is missing, empty, not audio, or holds no samples; the array is not
            one- or two-dimensional, holds no samples, or has an unsupported type.
    """
    if isinstance(audio, np.ndarray | torch.Tensor):
        name = "<array>" if name is None else name
        return _ArraySource(name, _array_channels(audio, name), _check_rate(sample_rate))
    path = Path(audio)
    name = os.fspath(audio) if name is None else name
    return _FileSource(name, path, *_file_header(path, name))


def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return sample_rate


def _file_header(path: Path, name: str) -> tuple[int, int]:
    """(sample rate, samples) from the header of an audio file."""
    if not path.exists():
        raise AudioError(name, "no such file")
    if path.is_dir():
        if any(_is_audio(f) for f in path.rglob("*")):
            raise AudioError(name, "a directory, not an audio file (find_audio lists the files under it)")
        suffixes = ", ".join(s.lstrip(".") for s in AUDIO_SUFFIXES)
        raise AudioError(name, f"a directory with no audio files ({suffixes}) under it")
    try:
        if path.stat().st_size == 0:
            raise AudioError(name, "an empty file (0 bytes)")
        info = sf.info(str(path))
    except sf.LibsndfileError as exc:
        reason = exc.error_string.rstrip(".")
        raise AudioError(name, f"not an audio file that soundfile can read ({reason})") from None
    except OSError as exc:
        raise AudioError(name, f"cannot read the file ({exc.strerror or exc})") from None
    if info.frames <= 0:
        raise AudioError(name, "no audio samples")
    return info.samplerate, info.frames


def _array_channels(audio: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """(channels, samples) float32 from a 1-D or 2-D array of float or signed integer samples."""
    array = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[0] > array.shape[1]):
        raise AudioError(
            name, f"samples must be (samples,) or (channels, samples), got shape {tuple(array.shape)}"
        )
    if np.issubdtype(array.dtype, np.signedinteger):
        array = array.astype(np.float32) / float(2 ** (8 * array.dtype.itemsize - 1))
    elif not np.issubdtype(array.dtype, np.floating):
        raise AudioError(name, f"samples must be float or signed integers, got {array.dtype}")
    channels = np.atleast_2d(array).astype(np.float32, copy=False)
    if channels.shape[1] == 0:
        raise AudioError(name, "no audio samples")
    return channels


def plan_windows(
    num_samples: int, sample_rate: int, window_seconds: float, overlap_seconds: float
) -> list[tuple[int, int]]:
    """Sample spans [start, stop) of overlapping windows that cover a recording.

    Windows are ``window_seconds`` long and start every ``window_seconds - overlap_seconds``; the last
    one is moved back to end with the recording, so that every window but a lone one is full length
    and neighbours overlap by at least ``overlap_seconds``.

    >>> plan_windows(105, 10, window_seconds=4, overlap_seconds=1)
    [(0, 40), (30, 70), (60, 100), (65, 105)]
    >>> plan_windows(30, 10, window_seconds=4, overlap_seconds=1)
    [(0, 30)]
    """
    window = round(window_seconds * sample_rate)
    hop = window - round(overlap_seconds * sample_rate)
    if window <= 0 or overlap_seconds < 0 or hop <= 0:
        raise ValueError(
            f"need 0 <= overlap < window, got window {window_seconds} s and overlap {overlap_seconds} s"
        )
    if num_samples <= window:
        return [(0, num_samples)]
    starts = list(range(0, num_samples - window, hop)) + [num_samples - window]
    return [(start, start + window) for start in starts]


def resampled_length(num_samples: int, from_rate: int, to_rate: int) -> int:
    """Samples that :func:`torchaudio.functional.resample` returns for ``num_samples``.

    >>> resampled_length(44101, 44100, 16000)
    16001
    """
    return math.ceil(num_samples * to_rate / from_rate)
