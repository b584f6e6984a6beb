"""The whole network in one file: a conformer encoder that also reads a partial CTC alignment.

Shapes follow one contract: ``forward(x: (N, T, D), lengths: (N,)) -> (y, lengths)``.

    fbank (N, T, 80) --ConvSubsampling x4--> (N, T', d)   T' = ((T - 1) // 2 - 1) // 2
      + alignment embedding of tokens (N, T') in {blank, pieces..., [MASK]}   (added after block k)
      --> conformer blocks --> Linear --> log_softmax (N, T', vocab_size)

A CTC model is this network fed an all-[MASK] alignment. ``inject_layer`` k > 0 adds the alignment
after block k, so :meth:`ImputerModel.encode_acoustic` (subsampling and the bottom k blocks) runs once
per utterance and :meth:`ImputerModel.impute` (the top blocks) once per decoding step.

Relative position information comes from rotary embeddings (RoFormer) on queries and keys: attention
scores then depend only on the offset between frames, as with the Transformer-XL encoding of the
conformer paper, but the attention runs through ``scaled_dot_product_attention``. Dropout masks are
shared along time. The convolution module normalises with LayerNorm rather than BatchNorm so that an
utterance's output does not depend on the rest of its batch. Padding is masked everywhere: padded keys
are excluded from attention and padded frames are zeroed before the depthwise convolution.

>>> from imputer_asr.config import ModelConfig
>>> cfg = ModelConfig(vocab_size=10, mask_id=10, d_model=32, num_heads=2, ff_dim=64, num_layers=2)
>>> model = ImputerModel(cfg).eval()
>>> log_probs, lengths = model(torch.randn(2, 100, 80), torch.tensor([100, 60]))
>>> tuple(log_probs.shape), lengths.tolist()
((2, 24, 10), [24, 14])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imputer_asr.config import ModelConfig

__all__ = [
    "ImputerModel",
    "StepCache",
    "subsampled_lengths",
    "padding_mask",
    "utterance_means",
    "SUBSAMPLING",
    "MIN_INPUT_FRAMES",
    "check_features",
]

SUBSAMPLING = 4
"""Input frames per encoder frame (two stride-2 convolutions): 10 ms fbank -> 40 ms encoder frames."""
MIN_INPUT_FRAMES = 7
"""The fewest input frames that give one encoder frame."""


def subsampled_lengths(lengths: Tensor | int) -> Tensor | int:
    """Number of encoder frames for ``lengths`` fbank frames (two unpadded stride-2 3x3 convs); a
    tensor of lengths or one length."""
    return ((lengths - 1) // 2 - 1) // 2


def utterance_means(features: Tensor, lengths: Tensor) -> Tensor:
    """(N, 1, F) mean feature vector of each utterance over its ``lengths`` frames (padding excluded)."""
    valid = ~padding_mask(lengths, features.size(1))
    return (features * valid[..., None]).sum(1, keepdim=True) / lengths[:, None, None].to(features.dtype)


def cepstral_smoother(dim: int, keep: int) -> Tensor:
    """(dim, dim) projection of log-mel frames (rows) onto their first ``keep`` cepstral coefficients:
    ``frames @ P`` is the orthonormal DCT-II of each frame, truncated to ``keep`` terms and inverted."""
    n = torch.arange(dim, dtype=torch.float64)
    k = torch.arange(keep, dtype=torch.float64)[:, None]
    dct = torch.cos(math.pi * k * (n + 0.5) / dim) * math.sqrt(2.0 / dim)  # (keep, dim), orthonormal rows
    dct[0] /= math.sqrt(2.0)
    return (dct.T @ dct).float()


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(N, max_len) bool, True at padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class _ConvSubsampling(nn.Module):
    def __init__(self, input_dim: int, channels: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2),
            nn.ReLU(),
        )
        freq = ((input_dim - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq, d_model)
        self.dropout = _TimeSharedDropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        y = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        n, c, t, f = y.shape
        y = self.out(y.transpose(1, 2).reshape(n, t, c * f))
        return self.dropout(y), subsampled_lengths(lengths)


class _TimeSharedDropout(nn.Module):
    """Dropout whose mask is shared along time: (N, 1, D) instead of (N, T, D).

    Drawing random numbers dominates a CPU training step with per-element masks (a third of the
    step time measured here); sharing the mask along the time axis, as icefall's zipformer does,
    makes it nearly free.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.size(0), 1, x.size(-1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


def _rotary_tables(length: int, dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()  # (T, dim/2)


def _apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2)


class _RotarySelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model {d_model} must split into {num_heads} heads of even size")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, attend: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
        return self.attend_projected(self.project(x), attend, rotary)

    def project(self, x: Tensor) -> Tensor:
        """Queries, keys and values (..., 3d), frame by frame."""
        return self.qkv(self.norm(x))

    def attend_projected(self, qkv: Tensor, attend: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
        """Attention over projected frames (N, T', 3d) -> (N, T', d)."""
        n, t, d = qkv.size(0), qkv.size(1), qkv.size(2) // 3
        q, k, v = qkv.view(n, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = _apply_rotary(q, *rotary), _apply_rotary(k, *rotary)
        if qkv.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # Attention stays in float32 under CPU autocast: flash attention's backward is 6x
            # slower in bfloat16 than in float32 on CPU (torch 2.14; torch.profiler over demo updates).
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attend)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class _ConvModule(nn.Module):
    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.depthwise_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = _TimeSharedDropout(dropout)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        y = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        y = y.masked_fill(pad[..., None], 0.0)
        # The depthwise convolution as a 2-D one over (N, d, T, 1), a view of (N, T, d) that is
        # already channels-last: oneDNN's grouped 1-D convolution is 2.4x slower forward and
        # backward on CPU and needs two transposed copies. Same weights, same numbers.
        conv = self.depthwise
        y = F.conv2d(
            y.transpose(1, 2).unsqueeze(-1),
            conv.weight.unsqueeze(-1),
            conv.bias,
            padding=(conv.padding[0], 0),
            groups=conv.groups,
        )
        y = y.squeeze(-1).transpose(1, 2)
        y = F.silu(self.depthwise_norm(y))
        return self.dropout(self.pointwise_out(y))


class _FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ff_dim),
            nn.SiLU(),
            _TimeSharedDropout(dropout),
            nn.Linear(ff_dim, d_model),
            _TimeSharedDropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _ConformerBlock(nn.Module):
    """Macaron FFN/2, self-attention, convolution, FFN/2, LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ff1 = _FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
        self.attn = _RotarySelfAttention(cfg.d_model, cfg.num_heads)
        self.conv = _ConvModule(cfg.d_model, cfg.conv_kernel, cfg.dropout)
        self.ff2 = _FeedForward(cfg.d_model, cfg.ff_dim, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.dropout = _TimeSharedDropout(cfg.dropout)

    def forward(self, x: Tensor, pad: Tensor, attend: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
        return self.finish(self.mix(x, pad, attend, rotary))

    def mix(self, x: Tensor, pad: Tensor, attend: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
        """The block up to the second FFN: where frames read each other (attention, convolution)."""
        x = x + 0.5 * self.ff1(x)
        x = x + self.dropout(self.attn(x, attend, rotary))
        return x + self.conv(x, pad)

    def head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """What :meth:`mix` computes frame by frame before frames meet: the first FFN's output
        (..., d) and the attention's projections of it (..., 3d), over any set of frames."""
        x = x + 0.5 * self.ff1(x)
        return x, self.attn.project(x)

    def mix_projected(
        self, x: Tensor, qkv: Tensor, pad: Tensor, attend: Tensor, rotary: tuple[Tensor, Tensor]
    ) -> Tensor:
        """:meth:`mix` from :meth:`head`'s output (N, T', d), (N, T', 3d)."""
        x = x + self.dropout(self.attn.attend_projected(qkv, attend, rotary))
        return x + self.conv(x, pad)

    def finish(self, x: Tensor) -> Tensor:
        """The rest of the block, frame by frame: (..., d) -> (..., d) over any set of frames."""
        return self.norm(x + 0.5 * self.ff2(x))


@dataclass(frozen=True)
class StepCache:
    """What :meth:`ImputerModel.impute_step` computed frame by frame for one alignment (N, T'): the
    top block's first-FFN output (N, T', d) and its attention projections (N, T', 3d)."""

    tokens: Tensor
    ff1: Tensor
    qkv: Tensor

    def rows(self, rows: Tensor, width: int) -> StepCache:
        """The cache of utterances ``rows``, their first ``width`` frames."""
        return StepCache(self.tokens[rows, :width], self.ff1[rows, :width], self.qkv[rows, :width])

    def with_rows(self, rows: Tensor, part: StepCache) -> StepCache:
        """A copy with utterances ``rows`` replaced by ``part`` (from :meth:`rows`)."""
        width = part.tokens.size(1)
        whole = [t.clone() for t in (self.tokens, self.ff1, self.qkv)]
        for full, new in zip(whole, (part.tokens, part.ff1, part.qkv), strict=True):
            full[rows, :width] = new
        return StepCache(*whole)


def _check_frames(frames: Tensor, tokens: Tensor) -> None:
    if frames.shape != tokens.shape:
        raise ValueError(f"frames must be {tuple(tokens.shape)}, got {tuple(frames.shape)}")


def check_features(features: Tensor, feature_lengths: Tensor, input_dim: int) -> None:
    """Raise ValueError unless ``features`` is (N, T, input_dim) and every length is in
    [MIN_INPUT_FRAMES, T]: what the encoder needs, whichever backend runs it."""
    if features.dim() != 3 or features.size(-1) != input_dim:
        raise ValueError(f"features must be (N, T, {input_dim}), got {tuple(features.shape)}")
    if feature_lengths.shape != features.shape[:1]:
        raise ValueError(f"lengths must be ({features.size(0)},), got {tuple(feature_lengths.shape)}")
    if (feature_lengths < MIN_INPUT_FRAMES).any() or (feature_lengths > features.size(1)).any():
        raise ValueError(
            f"lengths must be in [{MIN_INPUT_FRAMES}, {features.size(1)}], got {feature_lengths.tolist()}"
        )


class ImputerModel(nn.Module):
    """Conformer encoder over fbank plus a partial alignment; outputs per-frame log-probabilities.

    Args:
        cfg: model configuration; ``vocab_size``, ``blank_id`` and ``mask_id`` come from the tokenizer.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 2 or not 0 <= cfg.blank_id < cfg.vocab_size:
            raise ValueError(f"bad vocabulary: size {cfg.vocab_size}, blank {cfg.blank_id}")
        if cfg.mask_id != cfg.vocab_size:
            raise ValueError(f"mask_id must be vocab_size ({cfg.vocab_size}), got {cfg.mask_id}")
        if not 0 <= cfg.inject_layer < cfg.num_layers:
            raise ValueError(f"inject_layer must be in [0, {cfg.num_layers}), got {cfg.inject_layer}")
        if cfg.interctc_layer and not cfg.inject_layer < cfg.interctc_layer < cfg.num_layers:
            raise ValueError(
                f"interctc_layer must be 0 or in ({cfg.inject_layer}, {cfg.num_layers}) (above inject_layer, "
                f"below the last block), got {cfg.interctc_layer}"
            )
        if not 0.0 <= cfg.interctc_weight < 1.0:
            raise ValueError(f"interctc_weight must be in [0, 1), got {cfg.interctc_weight}")
        if not 0 <= cfg.cepstral_lifter <= cfg.input_dim:
            raise ValueError(f"cepstral_lifter must be in [0, {cfg.input_dim}], got {cfg.cepstral_lifter}")
        self.cfg = cfg
        # Global feature normalisation (CMVN), set from training data by ``set_feature_stats``;
        # buffers, so they travel inside every checkpoint and packaged model.
        self.register_buffer("feature_mean", torch.zeros(cfg.input_dim))
        self.register_buffer("feature_std", torch.ones(cfg.input_dim))
        # Rebuilt from the config, not stored: checkpoints from before the option still load
        if cfg.cepstral_lifter:
            self.register_buffer(
                "lifter", cepstral_smoother(cfg.input_dim, cfg.cepstral_lifter), persistent=False
            )
        self.subsampling = _ConvSubsampling(cfg.input_dim, cfg.subsampling_channels, cfg.d_model, cfg.dropout)
        self.align_embed = nn.Embedding(cfg.vocab_size + 1, cfg.d_model)
        nn.init.normal_(self.align_embed.weight, std=1.0 / math.sqrt(cfg.d_model))
        self.blocks = nn.ModuleList(_ConformerBlock(cfg) for _ in range(cfg.num_layers))
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size)
        # The alignment's own contribution (built last, so that the other parameters draw the same
        # initial values from a seed as a model without it): zero at [MASK] (padding_idx keeps that
        # row at zero) and zero at the start, so that a CTC model behaves exactly as before whatever
        # it is shown, and multiplied by ``token_scale`` so that Adam's steps move it at the scale
        # of the acoustic frames (norm 35-50), not of an embedding row (norm about 1.5). On the
        # synth demo, 450 Imputer updates from a CTC model took the token offsets to 5 % of the
        # acoustic norm at scale 10 (the output barely moved: KL 0.007 nats) and to 36 % at scale
        # 100 (KL 0.10).
        self.token_embed = nn.Embedding(cfg.vocab_size + 1, cfg.d_model, padding_idx=cfg.mask_id)
        nn.init.zeros_(self.token_embed.weight)

    def _run_blocks(
        self, x: Tensor, lengths: Tensor, blocks: nn.ModuleList, *, finish_last: bool = True
    ) -> Tensor:
        """``blocks`` over x (N, T', d); without ``finish_last`` the last one stops after its
        :meth:`~_ConformerBlock.mix`."""
        pad, attend, rotary = self._frame_context(lengths, x.size(1), x.device)
        for i, block in enumerate(blocks):
            whole = finish_last or i < len(blocks) - 1
            x = block(x, pad, attend, rotary) if whole else block.mix(x, pad, attend, rotary)
        return x

    def _frame_context(
        self, lengths: Tensor, frames: int, device: torch.device
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """What every block is given besides its input: the padding (N, T'), the keys each query
        attends to (N, 1, 1, T') and the rotary tables."""
        pad = padding_mask(lengths, frames)
        rotary = _rotary_tables(frames, self.cfg.d_model // self.cfg.num_heads, device)
        return pad, ~pad[:, None, None, :], rotary

    def encode_acoustic(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Subsampling and the blocks below ``inject_layer``: (N, T, F) -> (N, T', d), lengths."""
        check_features(features, feature_lengths, self.cfg.input_dim)
        features = (self.shape_features(features, feature_lengths) - self.feature_mean) / self.feature_std
        x, lengths = self.subsampling(features, feature_lengths)
        bottom = self.blocks[: self.cfg.inject_layer]
        return self._run_blocks(x, lengths, bottom) if len(bottom) else x, lengths

    def shape_features(self, features: Tensor, feature_lengths: Tensor) -> Tensor:
        """What the model makes of raw fbank (N, T, F) before the global normalisation, whose
        statistics are taken of this output: ``utterance_cmn``, then ``cepstral_lifter``."""
        if self.cfg.utterance_cmn:
            features = features - utterance_means(features, feature_lengths)
        if self.cfg.cepstral_lifter:
            features = features @ self.lifter
        return features

    def alignment_input(self, tokens: Tensor) -> Tensor:
        """The vectors (N, T', d) that alignment tokens (N, T') add to the acoustic states."""
        return self.align_embed(tokens) + self.cfg.token_scale * self.token_embed(tokens)

    def impute(self, hidden: Tensor, lengths: Tensor, tokens: Tensor, frames: Tensor | None = None) -> Tensor:
        """Top blocks over acoustic states plus alignment tokens -> log-probs (N, T', C).

        With ``frames`` (N, T') bool, the log-probs of those frames only; the others are -inf. The
        last block's second FFN, its LayerNorm and the output layer work frame by frame, so they
        run on those frames alone: K-step decoding reads only the frames still masked, and skipping
        the rest made K = 8 decoding of the demo's ``inject_layer`` 5 model 6 % faster.
        """
        x = hidden + self.alignment_input(tokens)
        top = self.blocks[self.cfg.inject_layer :]
        if frames is None:
            return self._log_softmax(self._run_blocks(x, lengths, top))
        _check_frames(frames, tokens)
        return self._finish_at(top[-1], self._run_blocks(x, lengths, top, finish_last=False), frames)

    def impute_step(
        self, hidden: Tensor, lengths: Tensor, tokens: Tensor, frames: Tensor, cache: StepCache | None = None
    ) -> tuple[Tensor, StepCache]:
        """:meth:`impute` over ``frames``, for a decoder that shows the network one alignment after
        another, each differing from the last at a few frames: with a single block above
        ``inject_layer``, all of that block before its attention (the first FFN, the attention's
        projections) is frame by frame and depends on the frame's own token, so given the previous
        step's ``cache`` only the frames whose token changed are computed again. K = 8 decoding of
        the demo's ``inject_layer`` 5 model went from 1.82x to 1.61x CTC greedy with it.

        Returns:
            The log-probs (N, T', C), -inf outside ``frames``, and the cache for the next step.

        Raises:
            ValueError: more than one block above ``inject_layer``, or ``frames`` not (N, T').
        """
        top = self.blocks[self.cfg.inject_layer :]
        if len(top) != 1:
            raise ValueError(f"impute_step needs one block above inject_layer, the model has {len(top)}")
        _check_frames(frames, tokens)
        block = top[0]
        if cache is None or cache.tokens.shape != tokens.shape:
            x, qkv = block.head(hidden + self.alignment_input(tokens))
        else:
            x, qkv = cache.ff1.clone(), cache.qkv.clone()
            changed = tokens != cache.tokens
            if bool(changed.any()):
                x[changed], qkv[changed] = block.head(hidden[changed] + self.alignment_input(tokens[changed]))
        pad, attend, rotary = self._frame_context(lengths, tokens.size(1), hidden.device)
        y = block.mix_projected(x, qkv, pad, attend, rotary)
        return self._finish_at(block, y, frames), StepCache(tokens, x, qkv)

    def _finish_at(self, block: _ConformerBlock, x: Tensor, frames: Tensor) -> Tensor:
        """The last block's frame-by-frame rest and the output over ``frames`` of its mixed x (N, T', d):
        log-probs (N, T', C), -inf at the other frames."""
        out = x.new_full((*frames.shape, self.cfg.vocab_size), float("-inf"), dtype=torch.float32)
        out[frames] = self._log_softmax(block.finish(x[frames]))
        return out

    def _log_softmax(self, x: Tensor) -> Tensor:
        # float32 whatever autocast made of the output layer: the losses' sums over frames and the
        # decoders' confidence ranking need more than bfloat16's 8 bits of mantissa
        return self.output(x).float().log_softmax(dim=-1)

    def impute_with_intermediate(
        self, hidden: Tensor, lengths: Tensor, tokens: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`impute`, and the log-probs of block ``interctc_layer``'s output read out through
        the same output layer (None when ``interctc_layer`` is 0)."""
        if not self.cfg.interctc_layer:
            return self.impute(hidden, lengths, tokens), None
        split = self.cfg.interctc_layer - self.cfg.inject_layer
        top = self.blocks[self.cfg.inject_layer :]
        x = self._run_blocks(hidden + self.alignment_input(tokens), lengths, top[:split])
        intermediate = self._log_softmax(x)
        x = self._run_blocks(x, lengths, top[split:])
        return self._log_softmax(x), intermediate

    def all_mask(self, hidden: Tensor) -> Tensor:
        """The all-[MASK] alignment for ``hidden`` (N, T', d)."""
        return hidden.new_full(hidden.shape[:2], self.cfg.mask_id, dtype=torch.long)

    def forward(
        self, features: Tensor, feature_lengths: Tensor, tokens: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(N, T, F), (N,), optional alignment tokens (N, T') -> log-probs (N, T', C), lengths (N,).

        Without ``tokens`` the alignment is all [MASK]: the network is a CTC model.
        """
        hidden, lengths = self.encode_acoustic(features, feature_lengths)
        if tokens is None:
            tokens = self.all_mask(hidden)
        elif tokens.shape != hidden.shape[:2]:
            raise ValueError(f"tokens must be {tuple(hidden.shape[:2])}, got {tuple(tokens.shape)}")
        return self.impute(hidden, lengths, tokens), lengths

    @torch.no_grad()
    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Per-dimension mean and standard deviation of the training features (CMVN)."""
        if mean.shape != (self.cfg.input_dim,) or std.shape != (self.cfg.input_dim,):
            raise ValueError(f"feature stats must be ({self.cfg.input_dim},)")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-3))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
