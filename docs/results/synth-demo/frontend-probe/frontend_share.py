"""Probe: the 100-Hz front end's share of a bf16 training step (forward and backward, 6 x 5 s, 2 threads,
the demo's 6-block model), at 32 and 16 subsampling channels.

    .venv/bin/python docs/results/synth-demo/frontend-probe/frontend_share.py
"""
import time, torch
from imputer_asr.config import ModelConfig
from imputer_asr.model.conformer import ImputerModel
torch.set_num_threads(2); torch.manual_seed(0)
for ch in (32, 16):
    cfg = ModelConfig(vocab_size=40, mask_id=40, num_layers=6, dropout=0.0, subsampling_channels=ch)
    m = ImputerModel(cfg)
    N, T = 6, 500   # 30 s of audio
    x = torch.randn(N, T, 80); l = torch.full((N,), T)
    def step(full):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            if full:
                y, _ = m(x, l)
            else:
                y, _ = m.subsampling(x, l)
        y.float().sum().backward()
    for full in (False, True):
        for _ in range(3): step(full)
        t = time.perf_counter()
        for _ in range(10): step(full)
        print(ch, 'full' if full else 'subsampling', '%.1f ms' % ((time.perf_counter() - t) * 100))
