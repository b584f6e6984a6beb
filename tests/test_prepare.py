"""Feature preparation with augmentation: speed-perturbed copies, noise at a given SNR, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lhotse import CutSet

from imputer_asr.config import FeatureConfig
from imputer_asr.prepare import NoiseAugment, compute_fbank

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("exponent_seed", range(6))
def test_noise_is_mixed_at_the_drawn_snr(exponent_seed: int) -> None:
    rng = np.random.default_rng(exponent_seed)
    speech = (0.1 * np.sin(np.arange(16000) * 0.05) + 0.01 * rng.standard_normal(16000)).astype(np.float32)
    snr_db = 12.0
    noisy = NoiseAugment(prob=1.0, min_snr=snr_db, max_snr=snr_db, seed=exponent_seed)(speech, 16000)
    noise = noisy - speech
    measured = 10 * np.log10(np.mean(speech**2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.01)


def test_noise_is_deterministic_and_applied_to_the_given_fraction() -> None:
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(4000).astype(np.float32) for _ in range(400)]
    augment = NoiseAugment(prob=0.25)
    first = [augment(w, 16000) for w in waves]
    second = [augment(w, 16000) for w in waves]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    changed = sum(not np.array_equal(w, a) for w, a in zip(waves, first, strict=True))
    assert 70 <= changed <= 130  # 100 expected; binomial sd ~8.7


def test_noise_prob_zero_leaves_audio_untouched() -> None:
    wave = np.random.default_rng(1).standard_normal(4000).astype(np.float32)
    assert np.array_equal(NoiseAugment(prob=0.0)(wave, 16000), wave)


def _augmented_dev_fbank(tiny_corpus, out_dir: Path, speeds, noise: NoiseAugment | None = None) -> Path:
    return compute_fbank(
        tiny_corpus.manifest_dir,
        "dev",
        out_dir,
        tiny_corpus.tokenizer,
        FeatureConfig(),
        augment=True,
        speeds=speeds,
        noise=noise,
        num_jobs=1,
    )


@pytest.mark.parametrize("speeds", [(), (0.9,), (0.9, 1.1)])
def test_augmented_fbank_adds_one_copy_per_speed(tiny_corpus, tmp_path: Path, speeds: tuple[float, ...]):
    out = _augmented_dev_fbank(tiny_corpus, tmp_path, speeds, NoiseAugment(prob=0.5))
    plain = {c.id: c for c in CutSet.from_file(tiny_corpus.fbank_cuts("dev"))}
    cuts = {c.id: c for c in CutSet.from_file(out)}
    assert len(cuts) == len(plain) * (1 + len(speeds))
    for cut_id, cut in plain.items():
        assert cuts[cut_id].duration == pytest.approx(cut.duration)
        for speed in speeds:
            copy = cuts[f"{cut_id}_sp{speed}"]
            assert copy.duration == pytest.approx(cut.duration / speed, abs=0.02)
            assert copy.load_features().shape[0] == pytest.approx(cut.num_frames / speed, abs=2)
            assert copy.supervisions[0].text == cut.supervisions[0].text


@pytest.mark.parametrize("speeds", [(1.0,), (0.0,), (3.0,)])
def test_bad_speed_factors_are_refused(tiny_corpus, tmp_path: Path, speeds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="speed factors"):
        _augmented_dev_fbank(tiny_corpus, tmp_path, speeds)
    assert not list(tmp_path.iterdir())
