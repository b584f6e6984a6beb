"""Waveform augmentation for training features: effects that break a synthesiser's own cues.

A model trained on a few speech synthesisers learns their voices, their exact spectra and their
clean digital channel; :class:`ChannelAugment` draws, per waveform, a random chain of effects
that a recording made elsewhere would differ by:

==========  =============================================================================
warp        vocal-tract length and pitch: every frequency scaled by a factor in
            ``warp_range`` at constant duration (sox's ``pitch``, as VTLP warps the spectrum)
eq          1-3 peaking filters of +-``eq_db`` dB at random centres, a microphone's colour
reverb      a room: one of 256 impulse responses of lhotse's fast RIR generator (T60 <= 0.8 s),
            aligned on its direct path so that the words keep their times
noise       white, pink or brown noise at an SNR in [min_snr, max_snr] dB
telephone   300 Hz high-pass, 8 kHz mu-law and back (lhotse's ``Narrowband``)
codec       an mp3 or Ogg Vorbis round trip at a random compression level (lhotse)
gain        a level change in +-``gain_db`` dB, clipped to [-1, 1] as a recorder would
==========  =============================================================================

Effects apply in that order (source, room, noise, channel, level), each with its own
probability. The draw is seeded from ``seed`` and the waveform itself, so recomputing the
features gives the same result; the object is picklable, for lhotse's worker pools.
"""

from __future__ import annotations

import functools
import math
import subprocess
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from lhotse.augmentation import Compress, FastRandomRIRGenerator, Narrowband

__all__ = ["EFFECTS", "ChannelAugment", "NoiseAugment", "coloured_noise"]

EFFECTS = ("warp", "eq", "reverb", "noise", "telephone", "codec", "gain")
_CODECS = ("mp3", "vorbis")  # opus costs 5x their time here
_NUM_ROOMS = 256


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectral density 1/f**exponent (0 white, 1 pink, 2 brown), unit std."""
    size = 1 << max(n - 1, 1).bit_length()  # a power of two: FFTs of odd lengths are slow
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.maximum(np.fft.rfftfreq(size), 1.0 / size)
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), size)[:n]
    return (noise / (np.std(noise) + 1e-12)).astype(np.float32)


def _add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = coloured_noise(samples.shape[-1], rng.choice([0.0, 1.0, 2.0]), rng)
    signal_power = float(np.mean(samples**2)) + 1e-12
    scale = np.sqrt(signal_power / (10 ** (snr_db / 10)) / (np.mean(noise**2) + 1e-12))
    return (samples + scale * noise).astype(samples.dtype)


def _seeded_rng(seed: int, samples: np.ndarray) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(samples).tobytes())])


@dataclass(frozen=True)
class NoiseAugment:
    """Add white, pink or brown noise at an SNR drawn uniformly in [min_snr, max_snr] dB.

    Applied to a fraction ``prob`` of the waveforms; seeded like :class:`ChannelAugment`.
    """

    prob: float = 0.5
    min_snr: float = 5.0
    max_snr: float = 30.0
    seed: int = 0

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        rng = _seeded_rng(self.seed, samples)
        if rng.random() >= self.prob:
            return samples
        return _add_noise(samples, rng.uniform(self.min_snr, self.max_snr), rng)


def _warp(samples: np.ndarray, sampling_rate: int, factor: float) -> np.ndarray:
    """Scale every frequency by ``factor`` at constant duration (sox ``pitch``, WSOLA + resampling)."""
    cents = f"{1200 * math.log2(factor):.1f}"
    raw = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-r", str(sampling_rate)]
    command = ["sox", *raw, "-", *raw, "-", "pitch", cents]
    mono = np.ascontiguousarray(samples[0], dtype="<f4")
    result = subprocess.run(command, input=mono.tobytes(), capture_output=True, check=True, timeout=60)
    warped = np.frombuffer(result.stdout, dtype="<f4")
    out = np.zeros_like(mono)
    out[: min(len(warped), len(out))] = warped[: len(out)]
    return out[None].astype(samples.dtype)


def _equalise(samples: np.ndarray, sampling_rate: int, max_db: float, rng: np.random.Generator) -> np.ndarray:
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    for _ in range(rng.integers(1, 4)):
        centre = math.exp(rng.uniform(math.log(100.0), math.log(0.4 * sampling_rate)))
        wave = AF.equalizer_biquad(
            wave, sampling_rate, centre, rng.uniform(-max_db, max_db), rng.uniform(0.5, 2.0)
        )
    return wave.numpy().astype(samples.dtype)


@functools.lru_cache(maxsize=2)
def _room_responses(sampling_rate: int) -> tuple[np.ndarray, ...]:
    """``_NUM_ROOMS`` fixed random room impulse responses, made once per process (~20 ms each)."""
    rng = np.random.default_rng(sampling_rate)
    # The generator also draws from torch's global stream, and its scatter of reflections
    # (duplicate indices) is only deterministic on one thread.
    threads = torch.get_num_threads()
    responses = []
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # lhotse's generator on NumPy 2
        torch.set_num_threads(1)
        try:
            for _ in range(_NUM_ROOMS):
                room, source, rest = (int(s) for s in rng.integers(0, 2**31, size=3))
                torch.manual_seed(rest)
                generator = FastRandomRIRGenerator(sr=sampling_rate, room_seed=room, source_seed=source)
                responses.append(generator(nsource=1)[0])
        finally:
            torch.set_num_threads(threads)
    return tuple(responses)


def _reverberate(samples: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with a room response, aligned on its direct path, at the input's power."""
    delay = int(np.argmax(np.abs(rir)))
    length = samples.shape[-1]
    size = 1 << (length + len(rir) - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(samples, size) * np.fft.rfft(rir, size), size)[..., delay : delay + length]
    power_ratio = (np.mean(samples**2) + 1e-12) / (np.mean(wet**2) + 1e-12)
    return (wet * np.sqrt(power_ratio)).astype(samples.dtype)


def _telephone(samples: np.ndarray, sampling_rate: int) -> np.ndarray:
    wave = AF.highpass_biquad(
        torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), sampling_rate, 300.0
    )
    return Narrowband("mulaw", sampling_rate, restore_orig_sr=True)(wave.numpy(), sampling_rate)


def _fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Trim or zero-pad to ``length`` samples: codecs add priming and padding samples."""
    if samples.shape[-1] >= length:
        return samples[..., :length]
    return np.pad(samples, [(0, 0), (0, length - samples.shape[-1])])


@dataclass(frozen=True)
class ChannelAugment:
    """A random chain of the module's effects per waveform; each ``*_prob`` is one effect's rate."""

    warp_prob: float = 0.5
    warp_range: tuple[float, float] = (0.88, 1.12)
    eq_prob: float = 0.4
    eq_db: float = 12.0
    reverb_prob: float = 0.3
    noise_prob: float = 0.5
    min_snr: float = 5.0
    max_snr: float = 30.0
    telephone_prob: float = 0.1
    codec_prob: float = 0.2
    gain_prob: float = 0.5
    gain_db: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        for effect in EFFECTS:
            prob = getattr(self, f"{effect}_prob")
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{effect}_prob must be in [0, 1], got {prob}")

    @classmethod
    def only(cls, effects: list[str] | tuple[str, ...], **overrides) -> ChannelAugment:
        """The default chain with every effect not in ``effects`` switched off."""
        unknown = sorted(set(effects) - set(EFFECTS))
        if unknown:
            raise ValueError(f"unknown effect(s) {', '.join(unknown)}; expected some of {', '.join(EFFECTS)}")
        off = {f"{effect}_prob": 0.0 for effect in EFFECTS if effect not in effects}
        return cls(**{**off, **overrides})

    def _choose(self, rng: np.random.Generator) -> list[str]:
        return [effect for effect in EFFECTS if rng.random() < getattr(self, f"{effect}_prob")]

    def draw(self, samples: np.ndarray) -> list[str]:
        """The effects this waveform gets."""
        return self._choose(_seeded_rng(self.seed, samples))

    def __call__(self, samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        rng = _seeded_rng(self.seed, samples)
        chosen = self._choose(rng)
        if not chosen:
            return samples
        squeeze = samples.ndim == 1
        wave = np.atleast_2d(samples).astype(np.float32)
        length = wave.shape[-1]
        for effect in chosen:
            if effect == "warp":
                wave = _warp(wave, sampling_rate, rng.uniform(*self.warp_range))
            elif effect == "eq":
                wave = _equalise(wave, sampling_rate, self.eq_db, rng)
            elif effect == "reverb":
                rooms = _room_responses(sampling_rate)
                wave = _reverberate(wave, rooms[rng.integers(len(rooms))])
            elif effect == "noise":
                wave = _add_noise(wave, rng.uniform(self.min_snr, self.max_snr), rng)
            elif effect == "telephone":
                wave = _telephone(wave, sampling_rate)
            elif effect == "codec":
                codec = str(rng.choice(_CODECS))
                wave = Compress(codec, compression_level=float(rng.uniform(0.3, 0.9)))(wave, sampling_rate)
            elif effect == "gain":
                wave = np.clip(wave * 10 ** (rng.uniform(-self.gain_db, self.gain_db) / 20), -1.0, 1.0)
            wave = _fit_length(np.atleast_2d(wave).astype(np.float32), length)
        out = wave.astype(samples.dtype)
        return out[0] if squeeze else out
