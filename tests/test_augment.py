"""Waveform effects: each one measured against what it claims to do, and the chain's draw."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from imputer_asr.data.augment import EFFECTS, ChannelAugment

pytestmark = pytest.mark.usefixtures("one_thread")

SR = 16000


def _sine(freq: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(SR * seconds)) / SR)).astype(np.float32)[None]


def _peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave[0] * np.hanning(wave.shape[-1])))
    return float(np.fft.rfftfreq(wave.shape[-1], 1 / SR)[np.argmax(spectrum)])


def _power(wave: np.ndarray) -> float:
    return float(np.mean(wave.astype(np.float64) ** 2))


def _always(effect: str, **overrides) -> ChannelAugment:
    return ChannelAugment.only([effect], **{f"{effect}_prob": 1.0, **overrides})


@pytest.mark.parametrize("seed", range(6))
def test_noise_is_mixed_at_the_drawn_snr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    speech = (0.1 * np.sin(np.arange(16000) * 0.05) + 0.01 * rng.standard_normal(16000)).astype(np.float32)
    noisy = _always("noise", min_snr=12.0, max_snr=12.0, seed=seed)(speech, SR)
    measured = 10 * np.log10(_power(speech) / _power(noisy - speech))
    assert measured == pytest.approx(12.0, abs=0.01)


def test_each_effect_applies_to_its_fraction_of_waveforms_deterministically() -> None:
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal((1, 4000)).astype(np.float32) * 0.1 for _ in range(400)]
    chain = ChannelAugment()
    draws = [chain.draw(w) for w in waves]
    for effect in EFFECTS:
        rate = getattr(chain, f"{effect}_prob")
        count = sum(effect in d for d in draws)
        sd = np.sqrt(400 * rate * (1 - rate))
        assert abs(count - 400 * rate) <= 4 * sd + 1, (effect, count)
    noise_only = ChannelAugment.only(["noise"], noise_prob=0.25)
    first = [noise_only(w, SR) for w in waves[:100]]
    assert all(np.array_equal(a, noise_only(w, SR)) for a, w in zip(first, waves, strict=False))
    assert 10 <= sum(not np.array_equal(w, a) for w, a in zip(waves, first, strict=False)) <= 40


def test_no_effect_leaves_audio_untouched() -> None:
    wave = np.random.default_rng(1).standard_normal((1, 4000)).astype(np.float32)
    assert np.array_equal(ChannelAugment.only([])(wave, SR), wave)
    assert np.array_equal(ChannelAugment.only(["noise"], noise_prob=0.0)(wave, SR), wave)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_warp_scales_frequencies_at_constant_duration(factor: float) -> None:
    wave = _sine(1000.0)
    warped = _always("warp", warp_range=(factor, factor))(wave, SR)
    assert warped.shape == wave.shape
    assert _peak_hz(warped) == pytest.approx(1000.0 * factor, rel=0.02)


def test_reverb_adds_a_tail_keeps_the_power_and_the_timing() -> None:
    wave = np.zeros((1, SR), dtype=np.float32)
    wave[0, 4000:4800] = _sine(700.0, seconds=0.05)[0]
    tails, onsets = [], []
    for seed in range(8):
        wet = _always("reverb", seed=seed)(wave, SR)
        assert wet.shape == wave.shape
        assert _power(wet) == pytest.approx(_power(wave), rel=0.05)
        tails.append(_power(wet[:, 5600:]) / _power(wet))
        onsets.append(int(np.argmax(np.abs(wet[0]) > 0.1 * np.abs(wet).max())))
    assert min(tails) > 1e-6  # the dry burst has nothing after sample 4800
    assert all(abs(onset - 4000) < 160 for onset in onsets)  # 10 ms: aligned on the direct path


def test_telephone_keeps_the_voice_band_only() -> None:
    phone = _always("telephone")
    assert _power(phone(_sine(1000.0), SR)) > 0.5 * _power(_sine(1000.0))
    assert _power(phone(_sine(6000.0), SR)) < 0.01 * _power(_sine(6000.0))
    assert _power(phone(_sine(100.0), SR)) < 0.3 * _power(_sine(100.0))


def test_codec_round_trip_is_lossy_but_faithful() -> None:
    rng = np.random.default_rng(2)
    wave = (_sine(440.0) + _sine(1300.0, amplitude=0.1) + 0.01 * rng.standard_normal((1, SR))).astype(
        np.float32
    )
    for seed in range(4):
        decoded = _always("codec", seed=seed)(wave, SR)
        assert decoded.shape == wave.shape
        assert not np.array_equal(decoded, wave)
        # codecs may delay the signal by their priming: compare at the best lag
        lags = range(0, 2000)
        best = max(
            np.corrcoef(wave[0, : SR - 2000], decoded[0, lag : lag + SR - 2000])[0, 1] for lag in lags[::1]
        )
        assert best > 0.95


def test_gain_is_a_level_change_within_its_range_and_clipped() -> None:
    wave = _sine(500.0, amplitude=0.05)
    for seed in range(10):
        out = _always("gain", gain_db=10.0, seed=seed)(wave, SR)
        ratio_db = 10 * np.log10(_power(out) / _power(wave))
        assert -10.01 <= ratio_db <= 10.01
        np.testing.assert_allclose(out, wave * 10 ** (ratio_db / 20), rtol=1e-4, atol=1e-7)
    loud = _always("gain", gain_db=40.0, seed=3)(_sine(500.0, amplitude=0.9), SR)
    assert np.abs(loud).max() <= 1.0


def test_eq_changes_the_spectrum_within_its_gain_bounds() -> None:
    noise = np.random.default_rng(4).standard_normal((1, SR)).astype(np.float32) * 0.05
    bands = np.array_split(np.arange(SR // 2 + 1), 16)
    before = np.abs(np.fft.rfft(noise[0])) ** 2
    for seed in range(6):
        out = _always("eq", eq_db=12.0, seed=seed)(noise, SR)
        after = np.abs(np.fft.rfft(out[0])) ** 2
        change_db = np.array([10 * np.log10(after[b].sum() / before[b].sum()) for b in bands])
        assert np.abs(change_db).max() > 1.0  # audibly coloured
        assert np.abs(change_db).max() < 3 * 12.0 + 1.0  # at most three filters of 12 dB


def test_the_chain_is_picklable_and_keeps_shape_and_dtype() -> None:
    chain = ChannelAugment(seed=7)
    copy = pickle.loads(pickle.dumps(chain))
    rng = np.random.default_rng(5)
    for _ in range(20):
        wave = (0.1 * rng.standard_normal((1, 8000))).astype(np.float32)
        out = copy(wave, SR)
        assert out.shape == wave.shape and out.dtype == wave.dtype
        assert np.array_equal(out, chain(wave, SR))
    one_dim = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    assert chain(one_dim, SR).shape == one_dim.shape


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown effect.*echo"):
        ChannelAugment.only(["echo"])
    with pytest.raises(ValueError, match="reverb_prob must be in"):
        ChannelAugment(reverb_prob=1.5)
