"""Training throughput against the machine's matrix-multiply speed, measured in one run.

Seconds of audio trained per second of wall time say little across machines (they differ by 1.5x
from one session to the next); divided by the fp32 matmul GFLOPS measured in the same run they say
how much of the machine a training step uses. This times full updates (forward, CTC loss,
backward, gradient clipping, AdamW) of a config's model on batches of random features held in
memory, so data loading is not in the figure, in float32, under the bfloat16 autocast of
``train.bf16``, and in bf16 with each batch's rows shared among the threads (``train.share_batch``),
the three alternating so that machine load hits them alike.

A recipe's length-bucketed batches come in about 50 shapes, and oneDNN builds kernels for each. The
second figure cycles bf16 updates through ``--shapes`` distinct batch shapes, once with oneDNN's
default kernel cache and once with the one the command line keeps (``keep_cpu_kernels``), each in
a process of its own (the cache's size is read once per process).

``--objective imputer`` times the Imputer objective of the config's ``imputer`` section instead
(the demo's: learner roll-in, the model's own greedy alignments, the CTC term), the stored
alignments being forced alignments under the fresh model.

    python benchmarks/train_speed.py                                    # the demo CTC config
    python benchmarks/train_speed.py --config recipes/synth/conf/ctc-full.json --threads 2
    python benchmarks/train_speed.py --config recipes/synth/conf/imputer.json --objective imputer --shapes 0
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from imputer_asr.cli.runtime import ONEDNN_CACHE_CAPACITY
from imputer_asr.config import ExperimentConfig, load_config
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.training.distributed import Parallel, ParallelObjective
from imputer_asr.training.imputer import configured_objective, learner_alignment
from imputer_asr.training.loop import Objective, ctc_objective

FRAMES_PER_SECOND = 100
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "synth" / "conf" / "ctc.json"


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="experiment config (JSON)")
    parser.add_argument("--vocab-size", type=int, default=40, help="pieces of the tokenizer")
    parser.add_argument(
        "--utterance-seconds", type=float, nargs=2, default=(2.5, 7.0), metavar=("MIN", "MAX")
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed updates per mode")
    parser.add_argument("--matmul-size", type=int, default=1536)
    parser.add_argument(
        "--shapes", type=int, default=64, help="distinct batch shapes of the cache figure (0: none)"
    )
    parser.add_argument(
        "--objective", choices=("ctc", "imputer"), default="ctc", help="the objective of the updates"
    )
    parser.add_argument("--cycle-shapes", action="store_true", help=argparse.SUPPRESS)  # a child process
    return parser.parse_args()


def matmul_gflops(dtype: torch.dtype, size: int, seconds: float = 1.0) -> float:
    """GFLOPS of a square matmul of ``size`` in ``dtype``: the best of repeated passes of about
    ``seconds`` each."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            a @ b
            count += 1
        best = max(best, 2 * size**3 * count / elapsed / 1e9)
    return best


def _batch(max_duration: float, seconds: tuple[float, float], vocab: int, generator: torch.Generator) -> dict:
    """Utterances of random length in ``seconds`` up to ``max_duration`` s in all, about 12 pieces
    per second, padded as the loader pads them."""
    lengths: list[int] = []
    while True:
        frames = int(torch.empty(1).uniform_(*seconds, generator=generator) * FRAMES_PER_SECOND)
        if (sum(lengths) + frames) / FRAMES_PER_SECOND > max_duration and lengths:
            break
        lengths.append(frames)
    lengths.sort(reverse=True)
    n, t = len(lengths), lengths[0]
    target_lengths = torch.tensor([frames * 12 // FRAMES_PER_SECOND for frames in lengths])
    return {
        "features": torch.randn(n, t, 80, generator=generator),
        "feature_lengths": torch.tensor(lengths),
        "targets": torch.randint(1, vocab, (n, int(target_lengths.max())), generator=generator),
        "target_lengths": target_lengths,
    }


def _shaped_batches(count: int, max_duration: float, vocab: int, generator: torch.Generator) -> list[dict]:
    """``count`` batches of distinct shapes: lengths 2.2-9.6 s in the loader's 32-frame steps, as
    many utterances as fill ``max_duration`` and fewer in each later round of lengths."""
    batches = []
    for i in range(count):
        frames = 224 + 32 * (i % 24)
        n = max(1, int(max_duration * FRAMES_PER_SECOND) // frames - i // 24)
        target_lengths = torch.full((n,), frames * 12 // FRAMES_PER_SECOND)
        batches.append(
            {
                "features": torch.randn(n, frames, 80, generator=generator),
                "feature_lengths": torch.full((n,), frames),
                "targets": torch.randint(1, vocab, (n, int(target_lengths[0])), generator=generator),
                "target_lengths": target_lengths,
            }
        )
    return batches


def _objective(cfg: ExperimentConfig, name: str) -> Objective:
    return ctc_objective if name == "ctc" else configured_objective(cfg.imputer)


def _with_alignments(model: ImputerModel, batches: list[dict]) -> list[dict]:
    """The batches with stored alignments for the Imputer objective: forced alignments under ``model``."""
    return [
        {
            **b,
            "alignments": learner_alignment(
                model, b["features"], b["feature_lengths"], b["targets"], b["target_lengths"]
            ),
        }
        for b in batches
    ]


def _trainer(
    cfg: ExperimentConfig, vocab: int, objective: Objective = ctc_objective
) -> tuple[ImputerModel, Callable[[dict, bool, bool], None]]:
    """A fresh model and its ``update(batch, bf16, shared)``: forward, loss and backward of
    ``objective`` as training runs them (``ParallelObjective``; ``shared``: the batch's rows shared
    among the threads, ``train.share_batch``), clipping, AdamW."""
    model_cfg = dataclasses.replace(cfg.model, vocab_size=vocab, mask_id=vocab)
    torch.manual_seed(cfg.train.seed)
    model = ImputerModel(model_cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    runners = {
        (bf16, shared): ParallelObjective(model, objective, Parallel(), bf16=bf16, share_batch=shared)
        for bf16 in (False, True)
        for shared in (False, True)
    }

    def update(batch: dict, bf16: bool, shared: bool = False) -> None:
        optimizer.zero_grad(set_to_none=True)
        runners[bf16, shared].backward(batch, divisor=float(batch["target_lengths"].sum()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip, foreach=True)
        optimizer.step()

    return model, update


def _cycle_shapes(args: argparse.Namespace) -> None:
    """Child process: bf16 updates through ``args.shapes`` shapes, a pass to build the kernels, then
    the median of two timed passes; prints s of audio/s."""
    cfg = load_config(args.config)
    batches = _shaped_batches(
        args.shapes, cfg.data.max_duration, args.vocab_size, torch.Generator().manual_seed(0)
    )
    _, update = _trainer(cfg, args.vocab_size)
    audio = sum(float(b["feature_lengths"].sum()) for b in batches) / FRAMES_PER_SECOND
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for batch in batches:
            update(batch, True)
        rates.append(audio / (time.perf_counter() - start))
    print(statistics.median(rates[1:]))


def _cache_rate(args: argparse.Namespace, capacity: int | None) -> float:
    """:func:`_cycle_shapes` in a child process, oneDNN's kernel cache at ``capacity`` (None: default)."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if capacity is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(capacity)
    command = [sys.executable, __file__, "--cycle-shapes", "--config", str(args.config)]
    command += [
        "--threads",
        str(args.threads),
        "--shapes",
        str(args.shapes),
        "--vocab-size",
        str(args.vocab_size),
    ]
    return float(
        subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.split()[-1]
    )


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    if args.cycle_shapes:
        _cycle_shapes(args)
        return
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(ONEDNN_CACHE_CAPACITY)  # as the command line runs
    cfg = load_config(args.config)
    generator = torch.Generator().manual_seed(0)
    batches = [
        _batch(cfg.data.max_duration, args.utterance_seconds, args.vocab_size, generator) for _ in range(4)
    ]
    audio = [float(b["feature_lengths"].sum()) / FRAMES_PER_SECOND for b in batches]

    fp32_gflops = matmul_gflops(torch.float32, args.matmul_size)
    bf16_gflops = matmul_gflops(torch.bfloat16, args.matmul_size)
    model, update = _trainer(cfg, args.vocab_size, _objective(cfg, args.objective))
    if args.objective == "imputer":
        batches = _with_alignments(model, batches)

    modes = {"fp32": (False, False), "bf16": (True, False), "bf16, batch shared": (True, True)}
    rates: dict[str, list[float]] = {name: [] for name in modes}
    for mode in modes.values():
        for batch in batches:  # warm-up: oneDNN builds its kernels for each shape
            update(batch, *mode)
    for i in range(args.repeats):
        batch = batches[i % len(batches)]
        for name, mode in modes.items():
            start = time.perf_counter()
            update(batch, *mode)
            rates[name].append(audio[i % len(batches)] / (time.perf_counter() - start))

    print(
        f"{args.config.name}, {args.objective} objective: {model.num_parameters() / 1e6:.2f} M parameters, "
        f"batches of {cfg.data.max_duration:.0f} s, {args.threads} threads, "
        f"median of {args.repeats} updates per mode"
    )
    print(f"matmul {args.matmul_size}^2: fp32 {fp32_gflops:7.1f} GFLOPS, bf16 {bf16_gflops:7.1f} GFLOPS")
    fp32_rate = statistics.median(rates["fp32"])
    for name in modes:
        rate = statistics.median(rates[name])
        print(
            f"train {name + ':':19s} {rate:6.1f} s of audio/s   / fp32 GFLOPS = {rate / fp32_gflops:.2f}   "
            f"(x{rate / fp32_rate:.2f} fp32)"
        )
    if args.shapes < 1:
        return
    default, kept = _cache_rate(args, None), _cache_rate(args, ONEDNN_CACHE_CAPACITY)
    print(
        f"train bf16 over {args.shapes} batch shapes: oneDNN's default kernel cache {default:6.1f} s of "
        f"audio/s, {ONEDNN_CACHE_CAPACITY} kernels {kept:6.1f} (x{kept / default:.2f})"
    )


if __name__ == "__main__":
    main()
