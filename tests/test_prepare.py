"""Feature preparation with augmentation: speed-perturbed copies and waveform effects, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
from lhotse import CutSet

from imputer_asr.config import FeatureConfig
from imputer_asr.data.augment import ChannelAugment
from imputer_asr.data.prepare import compute_fbank

pytestmark = pytest.mark.usefixtures("one_thread")


def _augmented_dev_fbank(tiny_corpus, out_dir: Path, speeds, effects: ChannelAugment | None = None) -> Path:
    return compute_fbank(
        tiny_corpus.manifest_dir,
        "dev",
        out_dir,
        tiny_corpus.tokenizer,
        FeatureConfig(),
        augment=True,
        speeds=speeds,
        effects=effects,
        num_jobs=1,
    )


@pytest.mark.parametrize("speeds", [(), (0.9,), (0.9, 1.1)])
def test_augmented_fbank_adds_one_copy_per_speed(tiny_corpus, tmp_path: Path, speeds: tuple[float, ...]):
    out = _augmented_dev_fbank(tiny_corpus, tmp_path, speeds, ChannelAugment.only(["noise"]))
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
