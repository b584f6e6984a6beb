"""Forward+backward time of the Imputer loss against torch's CTC loss on a realistic batch.

The Imputer loss is CTC on log-probabilities whose observed frames are replaced by point masses, so
its cost over CTC is a few elementwise passes over the (N, T, C) tensor. This prints the median time
of each and their ratio.

    python benchmarks/loss_speed.py                  # N=32, T=250, C=256, S=60, 2 threads
    python benchmarks/loss_speed.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from imputer_asr.model.alignment import forced_align
from imputer_asr.model.losses import imputer_loss
from imputer_asr.training.masking import block_mask


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--classes", type=int, default=256)
    parser.add_argument("--labels", type=int, default=60)
    parser.add_argument("--block-size", type=int, default=8, help="about 44% of frames observed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def _batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random logits and targets, ragged lengths, and observations from a real forced alignment."""
    generator = torch.Generator().manual_seed(0)
    n, t, c, s = args.batch, args.frames, args.classes, args.labels
    logits = torch.randn(n, t, c, generator=generator)
    targets = torch.randint(1, c, (n, s), generator=generator)
    input_lengths = torch.randint(t * 4 // 5, t + 1, (n,), generator=generator)
    input_lengths[0] = t
    target_lengths = torch.randint(s * 2 // 3, s + 1, (n,), generator=generator)
    alignment = forced_align(logits.log_softmax(-1), input_lengths, targets, target_lengths)
    _, observed = block_mask(alignment, input_lengths, args.block_size, mask_id=c, generator=generator)
    batch = {
        "logits": logits,
        "targets": targets,
        "input_lengths": input_lengths,
        "target_lengths": target_lengths,
        "observed": observed,
    }
    return {name: tensor.to(args.device) for name, tensor in batch.items()}


def _median_seconds(steps: dict[str, Callable[[], None]], repeats: int, device: str) -> dict[str, float]:
    """Median wall time of each step; the steps alternate so that machine load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for name, step in steps.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    batch = _batch(args)
    logits = batch["logits"].requires_grad_()
    lengths = (batch["input_lengths"], batch["target_lengths"])

    def ctc_step() -> None:
        log_probs = logits.log_softmax(-1)
        F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], *lengths).backward()

    def imputer_step() -> None:
        log_probs = logits.log_softmax(-1)
        imputer_loss(log_probs, batch["targets"], *lengths, batch["observed"]).backward()

    valid = torch.arange(args.frames, device=args.device) < lengths[0].unsqueeze(1)
    shown = (batch["observed"][valid] >= 0).float().mean().item()
    median = _median_seconds({"ctc": ctc_step, "imputer": imputer_step}, args.repeats, args.device)
    ctc, imputer = median["ctc"], median["imputer"]
    print(
        f"N={args.batch} T={args.frames} C={args.classes} S={args.labels} device={args.device} "
        f"threads={args.threads} observed={shown:.0%} (forward+backward, incl. log_softmax)"
    )
    print(f"F.ctc_loss    {ctc * 1e3:8.2f} ms (median of {args.repeats})")
    print(f"imputer_loss  {imputer * 1e3:8.2f} ms (median of {args.repeats})")
    print(f"ratio imputer/ctc = {imputer / ctc:.2f}")


if __name__ == "__main__":
    main()
