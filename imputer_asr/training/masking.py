"""Block masking of CTC alignments: the partial alignments the Imputer is trained to complete.

Each alignment is cut into blocks of B frames. Per utterance a count k is drawn uniformly from
{1, ..., B}; in every full block k random positions are masked and the others show the alignment's
token. A final partial block of L < B frames masks ceil(k * L / B) positions. This mimics the
states that B-step block decoding visits (it fixes one position per block per step); k = B masks
every frame, which makes the Imputer loss plain CTC.

>>> import torch
>>> alignment = torch.tensor([[0, 3, 3, 0, 5, 5, 0, -1]])
>>> tokens_in, observed = block_mask(alignment, torch.tensor([7]), block_size=4, mask_id=9)
>>> bool(((observed == -1) == (tokens_in == 9)).all())
True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_mask", "mask_draws"]


def block_mask(
    alignment: Tensor,
    lengths: Tensor,
    block_size: int = 8,
    *,
    mask_id: int,
    generator: torch.Generator | None = None,
    draws: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask k random positions in every block of ``block_size`` frames, k ~ U{1..B} per utterance.

    Args:
        alignment: (N, T) integer CTC alignment, tokens >= 0 within ``lengths`` (padding arbitrary,
            e.g. the -1 of :func:`imputer_asr.model.alignment.forced_align`).
        lengths: (N,) valid frames per utterance, in [0, T].
        block_size: B, frames per block.
        mask_id: token id of [MASK] (owned by the tokenizer), written at masked and padded frames of
            ``tokens_in``.
        generator: source of randomness; a seeded one makes the masks reproducible. Draws happen on
            its device and are moved to the alignment's.
        draws: the random numbers, drawn beforehand by :func:`mask_draws` (``generator`` is then
            not used): the masks of a batch's rows stay the same when the rows are masked apart.

    Returns:
        ``tokens_in`` (N, T) int64: the alignment's token where shown, ``mask_id`` where masked or
        past ``lengths``; the model's input. ``observed`` (N, T) int64: the alignment's token where
        shown, -1 where masked or past ``lengths``; the Imputer loss's ``observed``.
    """
    _check_inputs(alignment, lengths, block_size, mask_id)
    n, t = alignment.shape
    lengths = lengths.to(alignment.device, torch.long)
    if draws is None:
        draws = mask_draws(n, t, block_size, generator, alignment.device)
    k, noise = draws
    if k.shape != (n,) or noise.shape != (n, t):
        raise ValueError(
            f"draws must be shaped ({n},) and ({n}, {t}) like the alignment, "
            f"got {tuple(k.shape)} and {tuple(noise.shape)}"
        )
    masked = _masked_positions(k.to(alignment.device), noise.to(alignment.device), lengths, block_size)
    shown = ~masked & (torch.arange(t, device=alignment.device) < lengths.unsqueeze(1))
    alignment = alignment.long()
    tokens_in = torch.where(shown, alignment, mask_id)
    observed = torch.where(shown, alignment, -1)
    return tokens_in, observed


def mask_draws(
    n: int, t: int, block_size: int, generator: torch.Generator | None = None, device=None
) -> tuple[Tensor, Tensor]:
    """The random numbers of :func:`block_mask` for ``n`` alignments of ``t`` frames: each row's
    count k ~ U{1..B} and one uniform number per frame, whose order within a block picks the masked
    positions. Drawn on ``generator``'s device (else ``device``)."""
    where = generator.device if generator is not None else device
    k = torch.randint(1, block_size + 1, (n,), generator=generator, device=where)
    noise = torch.rand(n, t, generator=generator, device=where)
    return k, noise


def _masked_positions(k: Tensor, noise: Tensor, lengths: Tensor, block_size: int) -> Tensor:
    """(N, T) bool: in each block, the positions holding the m smallest noise values.

    m is k in a full block, ceil(k * L / B) in a last block of L < B frames, 0 past the end.
    """
    n, t = noise.shape
    n_blocks = -(-t // block_size)
    pad = n_blocks * block_size - t
    frames = torch.arange(n_blocks * block_size, device=noise.device).view(n_blocks, block_size)
    valid = frames.unsqueeze(0) < lengths.view(n, 1, 1)  # (N, blocks, B)
    noise = torch.nn.functional.pad(noise, (0, pad), value=2.0).view(n, n_blocks, block_size)
    noise = noise.masked_fill(~valid, 2.0)  # invalid frames rank after every valid one
    rank = noise.argsort(dim=-1).argsort(dim=-1)
    block_len = valid.sum(dim=-1)  # (N, blocks): B, then L, then 0
    per_block = torch.div(k.unsqueeze(1) * block_len + block_size - 1, block_size, rounding_mode="floor")
    masked = (rank < per_block.unsqueeze(-1)) & valid
    return masked.view(n, -1)[:, :t]


def _check_inputs(alignment: Tensor, lengths: Tensor, block_size: int, mask_id: int) -> None:
    """Raise ValueError unless the arguments of :func:`block_mask` are consistent."""
    if alignment.dim() != 2 or alignment.is_floating_point() or alignment.dtype == torch.bool:
        raise ValueError(
            f"alignment must be an integer (N, T) tensor, got shape {tuple(alignment.shape)} "
            f"dtype {alignment.dtype}"
        )
    n, t = alignment.shape
    if lengths.shape != (n,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer ({n},) tensor, got {tuple(lengths.shape)}")
    if n and (lengths.min() < 0 or lengths.max() > t):
        raise ValueError(f"lengths must lie in [0, {t}], got {lengths.tolist()}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    if mask_id < 0:
        raise ValueError(f"mask_id must be a token id (>= 0), got {mask_id}")
    valid = torch.arange(t, device=alignment.device) < lengths.to(alignment.device).unsqueeze(1)
    if (alignment[valid] < 0).any():
        raise ValueError("alignment must hold tokens >= 0 within lengths")
