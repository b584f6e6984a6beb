"""Probe: the demo Imputer objective's bf16 update on 2 threads (recipes/synth/conf/imputer.json:
learner roll-in, own greedy alignments, the CTC term), whole batches against each batch's two
halves at once on one thread each (train.share_batch). Each mode runs blocks of updates over the
four 30-s batches of benchmarks/train_speed.py (stored alignments: forced alignments under the
fresh model), the modes in turn, BLOCKS blocks each; s of audio per s, median and range.

    ONEDNN_PRIMITIVE_CACHE_CAPACITY=16384 .venv/bin/python \
        docs/results/synth-demo/share-batch/imputer_probe.py [BLOCKS]

Run from the repository root (it imports benchmarks/train_speed.py)."""

import statistics
import sys
import time
from pathlib import Path

import torch

from imputer_asr.config import load_config

sys.path.insert(0, "benchmarks")
import train_speed  # noqa: E402

blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 5
torch.set_num_threads(2)
cfg = load_config(Path("recipes/synth/conf/imputer.json"))
generator = torch.Generator().manual_seed(0)
batches = [train_speed._batch(cfg.data.max_duration, (2.5, 7.0), 40, generator) for _ in range(4)]
audio = sum(float(b["feature_lengths"].sum()) for b in batches) / 100
model, update = train_speed._trainer(cfg, 40, train_speed._objective(cfg, "imputer"))
batches = train_speed._with_alignments(model, batches)
rates = {False: [], True: []}
for shared in (False, True):  # warm-up: kernels for every shape
    for batch in batches:
        update(batch, True, shared)
for _ in range(blocks):
    for shared in (False, True):
        start = time.perf_counter()
        for batch in batches * 2:
            update(batch, True, shared)
        rates[shared].append(2 * audio / (time.perf_counter() - start))
for shared, name in ((False, "whole batches"), (True, "halves at once")):
    r = rates[shared]
    print(f"{name:15s} {statistics.median(r):6.1f} s of audio/s (blocks {min(r):.1f}-{max(r):.1f})")
print(f"shared / whole: {statistics.median(rates[True]) / statistics.median(rates[False]):.2f}x")
