"""Adaptive decoding (threshold 0.9, at most 8 steps, the recipe's) with and without the top block's
reuse of its frame-by-frame work (``ImputerModel.impute_step``), against CTC greedy search of the
same model, taking turns in one process.

    .venv/bin/python docs/results/synth-demo/kstep-frames/adaptive_probe.py MODEL.pt CUTS_WITH_FEATURES
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
can_reuse = imputer_decoding._one_top_block
adaptive = imputer_decoding.AdaptiveDecoder(0.9, max_steps=8)
variants = {  # decoder, _one_top_block
    "CTC greedy": (CTCGreedyDecoder(packaged.tokenizer.blank_id), can_reuse),
    "adaptive, no reuse": (adaptive, lambda model: False),
    "adaptive, reuse": (adaptive, can_reuse),
}


def run(name: str):
    decoder, imputer_decoding._one_top_block = variants[name]
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
for name in variants:
    median = statistics.median(seconds[name])
    print(f"{name:<20} median of 5 {median:5.2f} s  x{median / base:.2f} CTC greedy")
print("same transcripts with and without reuse:", outputs["adaptive, reuse"] == outputs["adaptive, no reuse"])
