"""Training throughput of a recipe config on one GPU: seconds of audio per second, peak memory.

Batches are synthesized (random 80-dim features of 2-20 s utterances filled up to the config's
``max_duration``, random BPE targets at 3.5 tokens per second), so the check needs no corpus: it
measures the model, the loss, bf16 autocast and the optimiser exactly as ``fit`` runs them.

    python benchmarks/gpu_check.py --config recipes/librispeech/conf/ctc-100h.json --steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from pathlib import Path

import torch

from imputer_asr.config import load_config
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.training.distributed import ParallelObjective, init_parallel
from imputer_asr.training.loop import ctc_objective

TOKENS_PER_SECOND = 3.5
FRAMES_PER_SECOND = 100


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--vocab", type=int, default=500)
    return parser.parse_args()


def synthetic_batch(max_duration: float, vocab: int, rng: random.Random) -> dict:
    """Utterances of 2-20 s until ``max_duration`` seconds, features ~ N(0, 1), random targets."""
    durations: list[float] = []
    while sum(durations) < max_duration - 20:
        durations.append(rng.uniform(2.0, 20.0))
    frames = [int(d * FRAMES_PER_SECOND) for d in durations]
    tokens = [max(1, int(d * TOKENS_PER_SECOND)) for d in durations]
    targets = torch.zeros(len(durations), max(tokens), dtype=torch.long)
    for i, n in enumerate(tokens):
        targets[i, :n] = torch.randint(1, vocab, (n,))
    return {
        "features": torch.randn(len(durations), max(frames), 80),
        "feature_lengths": torch.tensor(frames),
        "targets": targets,
        "target_lengths": torch.tensor(tokens),
        "durations": durations,
    }


def main() -> None:
    args = _parse_args()
    cfg = load_config(args.config)
    model_cfg = dataclasses.replace(cfg.model, vocab_size=args.vocab, mask_id=args.vocab)
    parallel = init_parallel(cfg.train)
    model = ImputerModel(model_cfg).to(parallel.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.peak_lr / 10)
    runner = ParallelObjective(model, ctc_objective, parallel, bf16=cfg.train.bf16)
    rng = random.Random(0)
    print(f"{args.config}: {model.num_parameters() / 1e6:.1f}M parameters, bf16 {cfg.train.bf16}")
    audio, start = 0.0, 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            audio, start = 0.0, time.perf_counter()
        batch = synthetic_batch(cfg.data.max_duration, args.vocab, rng)
        optimizer.zero_grad(set_to_none=True)
        runner.backward(batch, float(batch["target_lengths"].sum()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        audio += sum(batch["durations"])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"{args.steps} steps in {seconds:.1f} s: {audio / seconds:.0f} s of audio per second, "
        f"{seconds / args.steps:.3f} s per step, peak GPU memory "
        f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


if __name__ == "__main__":
    main()
