"""K = 8 and adaptive decoding of a test split against CTC greedy search of the same model, taking
turns in one process. K = 8 three ways:

- every frame: each step runs the top blocks over every frame (the decoder before 8bf1c01);
- masked frames: the top block's frame-by-frame tail (second FFN, LayerNorm, output layer) only at
  the frames still masked (``ImputerModel.impute(..., frames)``);
- reuse: with one block above ``inject_layer``, also its first FFN and attention projections only
  at the frames whose token changed since the last step (``ImputerModel.impute_step``), today's;

and adaptive decoding (threshold 0.9, at most 8 steps: the recipe's) with and without the reuse.

    .venv/bin/python docs/results/synth-demo/kstep-frames/kstep_probe.py MODEL.pt CUTS_WITH_FEATURES
"""

import logging
import statistics
import sys

import torch

import imputer_asr.decoding.imputer as imputer_decoding
from imputer_asr.data.dataset import load_cuts
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.decoding.decoder import decode_cutset
from imputer_asr.training.checkpoint import load_packaged

torch.set_num_threads(2)
logging.disable(logging.WARNING)
packaged = load_packaged(sys.argv[1])
model = packaged.model.eval()
cuts = load_cuts(sys.argv[2]).to_eager()
masked_only = imputer_decoding._evaluate
can_reuse = imputer_decoding._one_top_block


def every_frame(model, hidden, lengths, tokens, masked, cache, *, skip_done_rows, reuse):
    return model.impute(hidden, lengths, tokens), None


k8 = imputer_decoding.KStepDecoder(8)
variants = {  # decoder, _evaluate, _one_top_block
    "CTC greedy": (CTCGreedyDecoder(packaged.tokenizer.blank_id), masked_only, can_reuse),
    "K=8 every frame": (k8, every_frame, lambda model: False),
    "K=8 masked frames": (k8, masked_only, lambda model: False),
    "K=8 reuse": (k8, masked_only, can_reuse),
    "adaptive no reuse": (
        imputer_decoding.AdaptiveDecoder(0.9, max_steps=8),
        masked_only,
        lambda model: False,
    ),
    "adaptive reuse": (imputer_decoding.AdaptiveDecoder(0.9, max_steps=8), masked_only, can_reuse),
}


def run(name: str):
    decoder, imputer_decoding._evaluate, imputer_decoding._one_top_block = variants[name]
    return decode_cutset(model, packaged.tokenizer, cuts, decoder, desc=name)


seconds, outputs = {name: [] for name in variants}, {}
for name in variants:
    run(name)  # warm-up: oneDNN builds its kernels for each shape
for _ in range(5):
    for name in variants:
        result = run(name)
        seconds[name].append(result.seconds)
        outputs[name] = result.outputs
base = statistics.median(seconds["CTC greedy"])
same_as = {
    "K=8 masked frames": "K=8 every frame",
    "K=8 reuse": "K=8 every frame",
    "adaptive reuse": "adaptive no reuse",
}
for name in variants:
    median = statistics.median(seconds[name])
    other = same_as.get(name)
    same = f"  same transcripts as {other}: {outputs[name] == outputs[other]}" if other else ""
    print(f"{name:<18} median of 5 {median:5.2f} s  x{median / base:.2f} CTC greedy{same}")
