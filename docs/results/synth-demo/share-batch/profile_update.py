"""Probe: where a demo CTC update's time goes, bf16 on whole batches on 2 threads (the profiler does
not follow the shared halves onto their pool threads), over 8 updates of the four 30-s batches of
benchmarks/train_speed.py after a warm-up; self CPU time per operator kind.

    ONEDNN_PRIMITIVE_CACHE_CAPACITY=16384 .venv/bin/python \
        docs/results/synth-demo/share-batch/profile_update.py

Run from the repository root (it imports benchmarks/train_speed.py)."""

import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from imputer_asr.config import load_config

sys.path.insert(0, "benchmarks")
import train_speed  # noqa: E402

KINDS = {
    "matrix products": ("mm", "addmm", "bmm", "matmul", "linear"),
    "dtype casts and copies": ("to", "_to_copy", "copy_", "clone", "contiguous"),
    "attention": ("_scaled_dot_product", "scaled_dot_product"),
    "convolutions": ("convolution", "conv", "mkldnn_convolution"),
    "normalisation": ("layer_norm", "native_layer_norm"),
    "CTC loss": ("ctc_loss",),
    "optimizer": ("_fused_adamw", "adamw"),
}


def kind(name: str) -> str:
    bare = name.split("::")[-1].lstrip("_")
    for label, prefixes in KINDS.items():
        if any(bare.startswith(p.lstrip("_")) for p in prefixes):
            return label
    return "other (elementwise, indexing, autograd bookkeeping)"


torch.set_num_threads(2)
cfg = load_config(train_speed.DEMO_CONFIG)
generator = torch.Generator().manual_seed(0)
batches = [train_speed._batch(cfg.data.max_duration, (2.5, 7.0), 40, generator) for _ in range(4)]
_, update = train_speed._trainer(cfg, 40)
for batch in batches * 2:
    update(batch, True, False)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for batch in batches * 2:
        update(batch, True, False)
totals: dict[str, float] = defaultdict(float)
for event in prof.key_averages():
    totals[kind(event.key)] += event.self_cpu_time_total
whole = sum(totals.values())
for label, micros in sorted(totals.items(), key=lambda item: -item[1]):
    print(f"{label:52s} {100 * micros / whole:5.1f} %")
