"""bfloat16 where the hardware has it: the check, and inference under autocast.

:func:`native_bf16` says whether a device multiplies bfloat16 matrices in hardware (a GPU that
supports it, a CPU with AVX512-BF16 or AMX); elsewhere autocast emulates bfloat16, slower than
float32. Training reads it for ``train.bf16``; decoding for ``--bf16``, through
:func:`bf16_inference`, which wraps a model so that the methods decoding calls
(``forward``, ``encode_acoustic``, ``impute``) run under bfloat16 autocast. The model keeps its
float32 weights; attention and the output distribution stay float32
(:mod:`imputer_asr.model.conformer`).

>>> from imputer_asr.config import ModelConfig
>>> from imputer_asr.model.conformer import ImputerModel
>>> cfg = ModelConfig(vocab_size=10, mask_id=10, d_model=32, num_heads=2, ff_dim=64, num_layers=2)
>>> fast = Bf16Inference(ImputerModel(cfg).eval())
>>> log_probs, lengths = fast(torch.randn(2, 100, 80), torch.tensor([100, 60]))
>>> log_probs.dtype, lengths.tolist()
(torch.float32, [24, 14])
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from imputer_asr.model.conformer import ImputerModel, StepCache

__all__ = ["native_bf16", "Bf16Inference", "bf16_inference"]

log = logging.getLogger(__name__)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a GPU that supports it, or a CPU
    with AVX512-BF16 or AMX. Elsewhere bfloat16 autocast is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


class Bf16Inference(nn.Module):
    """An :class:`ImputerModel` whose decoding entry points run under bfloat16 autocast on the
    device of its weights. Its ``cfg`` and parameters are the model's, so every decoder takes it."""

    def __init__(self, model: ImputerModel) -> None:
        super().__init__()
        self.model = model
        self.cfg = model.cfg

    def _autocast(self) -> torch.autocast:
        device = next(self.model.parameters()).device
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def encode_acoustic(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        with self._autocast():
            return self.model.encode_acoustic(features, feature_lengths)

    def impute(self, hidden: Tensor, lengths: Tensor, tokens: Tensor, frames: Tensor | None = None) -> Tensor:
        with self._autocast():
            return self.model.impute(hidden, lengths, tokens, frames)

    def impute_step(
        self, hidden: Tensor, lengths: Tensor, tokens: Tensor, frames: Tensor, cache: StepCache | None = None
    ) -> tuple[Tensor, StepCache]:
        with self._autocast():
            return self.model.impute_step(hidden, lengths, tokens, frames, cache)

    # What only composes the two halves is ImputerModel's own code, as for the ONNX model
    # (imputer_asr.export.OnnxImputer): the wrapper cannot drift from the network it wraps.
    all_mask = ImputerModel.all_mask
    forward = ImputerModel.forward


def bf16_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in :class:`Bf16Inference` when ``device`` has bfloat16 in hardware; else
    ``model`` itself, with a warning (emulated bfloat16 would be slower than float32).

    Raises:
        ValueError: ``model`` is not a PyTorch :class:`ImputerModel` (an ONNX export runs in the
            precision it was exported in).
    """
    if not isinstance(model, ImputerModel):
        raise ValueError("--bf16 applies to a PyTorch model.pt; an ONNX export runs in its own precision")
    if not native_bf16(device):
        log.warning("--bf16: %s has no bfloat16 in hardware (emulated, slower); decoding in float32", device)
        return model
    return Bf16Inference(model)
