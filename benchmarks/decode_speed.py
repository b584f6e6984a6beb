"""K-step Imputer decoding against CTC greedy search, timed in one run on the same features.

Times what the recipes' decode stages time (``decode_cutset``: the network and the search over
precomputed features, batched by duration, not the reading of the features) for CTC greedy search
and K-step decoding of each given model, the decoders taking turns within each repetition so that
machine load hits them alike, and prints the median of each and their ratio. With an
``inject_layer`` model K-step decoding runs the acoustic encoder once per batch and only the blocks
above it per step; the ratio says what that buys.

    python benchmarks/decode_speed.py --cuts data/synth/demo/fbank/cuts_test_fbank.jsonl.gz \\
        recipes/synth/exp/imputer/model.pt recipes/synth/exp/imputer-inject5/model.pt
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import torch

from imputer_asr.data.dataset import load_cuts
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.decoding.decoder import decode_cutset
from imputer_asr.decoding.imputer import KStepDecoder
from imputer_asr.model.precision import Bf16Inference
from imputer_asr.training.checkpoint import load_packaged


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="packaged model.pt files")
    parser.add_argument("--cuts", type=Path, required=True, help="manifest with precomputed features")
    parser.add_argument("--steps", type=int, default=8, help="K")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="each model also under bfloat16 autocast")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # the eager-manifest notices of the sampler, once per pass
    cuts = load_cuts(args.cuts).to_eager()
    audio = sum(c.duration for c in cuts)
    print(f"{args.cuts}: {len(cuts)} cuts, {audio:.0f} s of audio, {args.threads} threads")
    print(f"decoding seconds (network and search), median of {args.repeats} passes")
    print(f"{'model':<48} {'inject':>6} {'dtype':>6} {'CTC s':>7} {f'K={args.steps} s':>7} {'ratio':>6}")
    for path in args.models:
        packaged = load_packaged(path)
        models = {"fp32": packaged.model}
        if args.bf16:
            models["bf16"] = Bf16Inference(packaged.model)
        for dtype, model in models.items():
            _time(path, dtype, model, packaged.tokenizer, cuts, args)


def _time(path: Path, dtype: str, model, tokenizer, cuts, args: argparse.Namespace) -> None:
    """Time CTC greedy search and K-step decoding of one model, taking turns; print its row."""
    decoders = {"ctc": CTCGreedyDecoder(tokenizer.blank_id), "k": KStepDecoder(args.steps)}
    seconds: dict[str, list[float]] = {name: [] for name in decoders}
    for decoder in decoders.values():  # warm-up: oneDNN builds its kernels for each shape
        decode_cutset(model, tokenizer, cuts, decoder, desc="warm-up")
    for _ in range(args.repeats):
        for name, decoder in decoders.items():
            seconds[name].append(decode_cutset(model, tokenizer, cuts, decoder, desc=name).seconds)
    ctc, k_step = statistics.median(seconds["ctc"]), statistics.median(seconds["k"])
    label = str(path) if len(str(path)) <= 48 else "..." + str(path)[-45:]
    inject = model.cfg.inject_layer
    print(f"{label:<48} {inject:>6} {dtype:>6} {ctc:7.2f} {k_step:7.2f} {k_step / ctc:6.2f}", flush=True)


if __name__ == "__main__":
    main()
