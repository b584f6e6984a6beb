"""Probe: the demo CTC model's bf16 update on 2 threads, whole batches against each batch's two
halves at once on one thread each (train.share_batch), and two variants of the halves that were
not kept: copied instead of sliced, and their gradients summed outside autograd. Each mode runs
blocks of updates (the four 30-s batches of benchmarks/train_speed.py), three blocks per mode in
turn; s of audio per s, median.

    ONEDNN_PRIMITIVE_CACHE_CAPACITY=16384 .venv/bin/python docs/results/synth-demo/share-batch/share_probe.py

Run from the repository root (it imports benchmarks/train_speed.py)."""

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from imputer_asr.config import load_config
from imputer_asr.training import distributed
from imputer_asr.training.distributed import Parallel, ParallelObjective
from imputer_asr.training.loop import ctc_objective

sys.path.insert(0, "benchmarks")
import train_speed  # noqa: E402

torch.set_num_threads(2)
cfg = load_config(train_speed.DEMO_CONFIG)
generator = torch.Generator().manual_seed(0)
batches = [train_speed._batch(cfg.data.max_duration, (2.5, 7.0), 40, generator) for _ in range(4)]
audio = sum(float(b["feature_lengths"].sum()) for b in batches) / 100
model, _ = train_speed._trainer(cfg, 40)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
params = list(model.parameters())
pool = ThreadPoolExecutor(2)
runners = {
    shared: ParallelObjective(model, ctc_objective, Parallel(), bf16=True, share_batch=shared)
    for shared in (False, True)
}
sliced_rows = distributed._rows


def copied_rows(batch, rows):
    index = torch.arange(rows.start, rows.stop)
    return {key: batch[key][index] for key in sliced_rows(batch, rows)}


def through_runner(shared: bool, rows=sliced_rows):
    def update(batch):
        distributed._rows = rows
        optimizer.zero_grad(set_to_none=True)
        runners[shared].backward(batch, float(batch["target_lengths"].sum()))
        torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        optimizer.step()
        distributed._rows = sliced_rows

    return update


def summed_outside_autograd(batch):
    optimizer.zero_grad(set_to_none=True)
    tokens = float(batch["target_lengths"].sum())
    size = len(batch["feature_lengths"])

    def half(rows):
        torch.set_num_threads(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = ctc_objective(model, sliced_rows(batch, rows))
        return torch.autograd.grad(loss / tokens, params, allow_unused=True)

    halves = (slice(0, (size + 1) // 2), slice((size + 1) // 2, size))
    parts = [job.result() for job in [pool.submit(half, rows) for rows in halves]]
    torch.set_num_threads(2)
    for i, param in enumerate(params):
        for grads in parts:
            if grads[i] is not None:
                param.grad = grads[i] if param.grad is None else param.grad + grads[i]
    torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
    optimizer.step()


modes = {
    "whole batches, 2 threads": through_runner(False),
    "halves at once (share_batch)": through_runner(True),
    "halves copied": through_runner(True, copied_rows),
    "halves, summed outside autograd": summed_outside_autograd,
}
for update in modes.values():
    for batch in batches:
        update(batch)
rates: dict[str, list[float]] = {name: [] for name in modes}
for _ in range(3):
    for name, update in modes.items():
        update(batches[0])  # leave the previous mode's threads behind
        start = time.perf_counter()
        for batch in batches:
            update(batch)
        rates[name].append(audio / (time.perf_counter() - start))
for name, values in rates.items():
    print(f"{name:34s} {statistics.median(values):6.1f} s of audio/s")
