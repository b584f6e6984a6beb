"""Probe: the 100-Hz front end's share of a bf16 training step (forward and backward, 6 x 5 s, 2 threads,
the demo's 6-block model), at 32 and 16 subsampling channels.

    .venv/bin/python docs/results/synth-demo/frontend-probe/frontend_share.py
"""

import time

import torch

from imputer_asr.config import ModelConfig
from imputer_asr.model.conformer import ImputerModel


def step_ms(model: ImputerModel, features: torch.Tensor, lengths: torch.Tensor, whole: bool) -> float:
    """Mean ms of a bf16 forward and backward, of the whole model or of its subsampling alone."""

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, _ = model(features, lengths) if whole else model.subsampling(features, lengths)
        y.float().sum().backward()

    for _ in range(3):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(10):
        step()
    return (time.perf_counter() - start) * 100


torch.set_num_threads(2)
torch.manual_seed(0)
for channels in (32, 16):
    cfg = ModelConfig(vocab_size=40, mask_id=40, num_layers=6, dropout=0.0, subsampling_channels=channels)
    model = ImputerModel(cfg)
    n, t = 6, 500  # 30 s of audio
    features, lengths = torch.randn(n, t, 80), torch.full((n,), t)
    for whole in (False, True):
        print(
            channels, "full" if whole else "subsampling", f"{step_ms(model, features, lengths, whole):.1f} ms"
        )
