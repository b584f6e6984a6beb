"""Tests for imputer_asr.training.loop.lr_at: linear warm-up then cosine decay to a floor."""

from __future__ import annotations

import pytest

from imputer_asr.config import TrainConfig
from imputer_asr.training.loop import lr_at

CFG = TrainConfig(peak_lr=2.0, warmup_steps=4, final_lr_fraction=0.25)


@pytest.mark.parametrize(
    ("step", "total", "expected"),
    [
        # Warm-up: peak * (step + 1) / warmup.
        (0, 14, 0.5),
        (1, 14, 1.0),
        (2, 14, 1.5),
        (3, 14, 2.0),
        # Cosine over the 10 steps after warm-up: peak * (f + (1 - f) * (1 + cos(pi p)) / 2).
        (4, 14, 2.0),  # p = 0
        (9, 14, 2.0 * (0.25 + 0.75 * 0.5)),  # p = 1/2 -> 1.25
        (14, 14, 0.5),  # p = 1 -> the floor
        (20, 14, 0.5),  # past the end: stays at the floor
        (6, 10, 2.0 * (0.25 + 0.75 * 0.75)),  # p = 1/3, cos = 1/2 -> 1.625
        (8, 10, 2.0 * (0.25 + 0.75 * 0.25)),  # p = 2/3, cos = -1/2 -> 0.875
    ],
)
def test_hand_computed_values(step: int, total: int, expected: float) -> None:
    assert lr_at(step, total, CFG) == pytest.approx(expected, abs=1e-12)


def test_warmup_increases_then_decay_is_monotone() -> None:
    total = 200
    lrs = [lr_at(s, total, CFG) for s in range(total + 20)]
    warm = lrs[: CFG.warmup_steps]
    after = lrs[CFG.warmup_steps - 1 :]
    assert all(a < b for a, b in zip(warm[:-1], warm[1:], strict=True))
    assert all(a >= b for a, b in zip(after[:-1], after[1:], strict=True))
    assert max(lrs) == pytest.approx(CFG.peak_lr)
    assert min(lrs) == pytest.approx(CFG.final_lr_fraction * CFG.peak_lr)
    assert all(CFG.final_lr_fraction * CFG.peak_lr - 1e-12 <= lr <= CFG.peak_lr for lr in lrs)


def test_cosine_is_point_symmetric() -> None:
    """lr(warmup + s) + lr(total - s) = peak * (1 + floor) for every s in the decay."""
    total = 54
    for s in range(total - CFG.warmup_steps + 1):
        pair = lr_at(CFG.warmup_steps + s, total, CFG) + lr_at(total - s, total, CFG)
        assert pair == pytest.approx(CFG.peak_lr * (1 + CFG.final_lr_fraction), abs=1e-12)


def test_no_warmup_and_zero_floor() -> None:
    cfg = TrainConfig(peak_lr=1.0, warmup_steps=0, final_lr_fraction=0.0)
    assert lr_at(0, 100, cfg) == 1.0
    assert lr_at(50, 100, cfg) == pytest.approx(0.5)
    assert lr_at(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)
