"""Tests for imputer_asr.training.masking: exact masked counts per block, the k distribution, padding."""

from __future__ import annotations

import math

import pytest
import torch

from imputer_asr.training.masking import block_mask, mask_draws

MASK = 99


def _alignment(n: int, t: int) -> torch.Tensor:
    return torch.arange(n * t).view(n, t) % 7  # tokens 0..6, never the mask id


def _masked_counts(observed: torch.Tensor, length: int, block_size: int) -> list[int]:
    masked = (observed[:length] == -1).tolist()
    return [sum(masked[i : i + block_size]) for i in range(0, length, block_size)]


def test_every_block_masks_k_positions_and_a_partial_block_proportionally() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([40, 37, 29, 3, 1])
    alignment = _alignment(5, 40)
    for _ in range(50):
        _, observed = block_mask(alignment, lengths, 8, mask_id=MASK, generator=generator)
        for n, length in enumerate(lengths.tolist()):
            counts = _masked_counts(observed[n], length, 8)
            if length >= 8:
                k = counts[0]
                assert 1 <= k <= 8
                assert counts[: length // 8] == [k] * (length // 8)
                if length % 8:
                    assert counts[-1] == math.ceil(k * (length % 8) / 8)
            else:
                assert 1 <= counts[0] <= length  # ceil(k * L / B) for k in 1..B


def test_k_is_uniform_over_one_to_block_size() -> None:
    generator = torch.Generator().manual_seed(1)
    alignment = _alignment(4000, 8)
    _, observed = block_mask(alignment, torch.full((4000,), 8), 8, mask_id=MASK, generator=generator)
    k = (observed == -1).sum(dim=1)
    frequencies = torch.bincount(k, minlength=9)[1:] / 4000
    assert (k >= 1).all() and (k <= 8).all()
    assert (frequencies - 1 / 8).abs().max() < 0.03
    per_position = (observed == -1).float().mean(dim=0)  # E[k] / B = 4.5 / 8 at every position
    assert (per_position - 4.5 / 8).abs().max() < 0.03


def test_shown_frames_carry_the_alignment_and_masked_frames_the_mask_id() -> None:
    generator = torch.Generator().manual_seed(2)
    alignment = _alignment(3, 20)
    alignment[1, 12:] = -1  # forced_align pads with -1
    lengths = torch.tensor([20, 12, 0])
    tokens_in, observed = block_mask(alignment, lengths, 4, mask_id=MASK, generator=generator)
    assert tokens_in.dtype == observed.dtype == torch.long
    shown = observed >= 0
    assert torch.equal(tokens_in[shown], alignment[shown])
    assert torch.equal(observed[shown], alignment[shown])
    assert (tokens_in[~shown] == MASK).all()
    padded = torch.arange(20) >= lengths.unsqueeze(1)
    assert (observed[padded] == -1).all() and (tokens_in[padded] == MASK).all()


def test_block_size_one_masks_everything() -> None:
    tokens_in, observed = block_mask(_alignment(3, 10), torch.tensor([10, 5, 0]), 1, mask_id=MASK)
    assert (observed == -1).all() and (tokens_in == MASK).all()


def test_k_equal_to_block_size_masks_everything() -> None:
    # With B = 2 about half the utterances draw k = 2: those must be masked everywhere.
    generator = torch.Generator().manual_seed(3)
    alignment = _alignment(200, 15)
    lengths = torch.full((200,), 15)
    _, observed = block_mask(alignment, lengths, 2, mask_id=MASK, generator=generator)
    first_block = (observed[:, :2] == -1).sum(dim=1)
    full_k = first_block == 2
    assert 60 < int(full_k.sum()) < 140
    assert (observed[full_k] == -1).all()
    assert ((observed[~full_k] == -1).sum(dim=1) == 8).all()  # 7 full blocks + ceil(1 * 1 / 2)


def test_seeded_generator_is_deterministic() -> None:
    alignment, lengths = _alignment(6, 33), torch.tensor([33, 30, 17, 8, 2, 0])
    first = block_mask(alignment, lengths, mask_id=MASK, generator=torch.Generator().manual_seed(5))
    again = block_mask(alignment, lengths, mask_id=MASK, generator=torch.Generator().manual_seed(5))
    other = block_mask(alignment, lengths, mask_id=MASK, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_rows_masked_apart_with_the_batchs_draws_get_the_batchs_masks() -> None:
    """What a shared batch relies on: the numbers drawn for the whole batch, split with its rows,
    mask each row as the whole batch's own draw does."""
    alignment, lengths = _alignment(5, 33), torch.tensor([33, 30, 17, 8, 2])
    whole = block_mask(alignment, lengths, 4, mask_id=MASK, generator=torch.Generator().manual_seed(3))
    k, noise = mask_draws(5, 33, 4, torch.Generator().manual_seed(3))
    for rows in (slice(0, 3), slice(3, 5)):
        part = block_mask(alignment[rows], lengths[rows], 4, mask_id=MASK, draws=(k[rows], noise[rows]))
        assert torch.equal(part[0], whole[0][rows]) and torch.equal(part[1], whole[1][rows])
    with pytest.raises(ValueError, match="draws must be shaped"):
        block_mask(alignment, lengths, 4, mask_id=MASK, draws=(k, noise[:, :32]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alignment": torch.zeros(4, dtype=torch.long)}, "alignment"),
        ({"alignment": torch.zeros(2, 4)}, "alignment"),
        ({"alignment": torch.full((2, 4), -1)}, "tokens >= 0"),
        ({"lengths": torch.tensor([5, 4])}, "lengths"),
        ({"lengths": torch.tensor([4])}, "lengths"),
        ({"block_size": 0}, "block_size"),
        ({"mask_id": -1}, "mask_id"),
    ],
)
def test_block_mask_rejects_bad_inputs(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "alignment": torch.zeros(2, 4, dtype=torch.long),
        "lengths": torch.tensor([4, 3]),
        "block_size": 2,
        "mask_id": MASK,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        block_mask(**arguments)  # type: ignore[arg-type]
