"""Eager vs torch.compile'd conformer blocks: seconds per training update on real batches.

Ad-hoc: conf/ctc-full.json's network, the first 24 training batches of the full synth setting in
/work/main, 2 threads, AdamW steps (no clipping, no schedule).
"""

import dataclasses
import itertools
import time
from pathlib import Path

import torch
from lhotse import CutSet

from imputer_asr.config import load_config
from imputer_asr.dataset import make_loader
from imputer_asr.model import ImputerModel
from imputer_asr.tokenizer import Tokenizer
from imputer_asr.train import ctc_objective

FULL = Path("/work/main/data/synth/full")


def run(model, optimizer, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        loss, num_tokens = ctc_objective(model, batch)
        optimizer.zero_grad()
        (loss / num_tokens).backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(2)
    cfg = load_config(Path("/work/main/recipes/synth/conf/ctc-full.json"))
    tok = Tokenizer.from_file(FULL / "lang/bpe40.model")
    model_cfg = dataclasses.replace(
        cfg.model, vocab_size=tok.vocab_size, mask_id=tok.mask_id, blank_id=tok.blank_id
    )
    cuts = CutSet.from_file(FULL / "fbank/cuts_train_fbank.jsonl.gz").subset(first=600).to_eager()
    data_cfg = dataclasses.replace(cfg.data, num_workers=0)
    batches = list(itertools.islice(iter(make_loader(cuts, tok, data_cfg, train=True)), 24))
    print("batches", len(batches), [tuple(b["features"].shape) for b in batches[:4]], flush=True)
    torch.manual_seed(0)
    model = ImputerModel(model_cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    run(model, optimizer, batches[:2])
    timed = len(batches) - 2
    print(f"eager: {run(model, optimizer, batches[2:]) / timed:.3f} s/update", flush=True)
    for block in model.blocks:
        block.compile(dynamic=True)
    print(f"compile+2: {run(model, optimizer, batches[:2]):.1f} s", flush=True)
    print(f"compiled pass 1: {run(model, optimizer, batches[2:]) / timed:.3f} s/update", flush=True)
    print(f"compiled pass 2: {run(model, optimizer, batches[2:]) / timed:.3f} s/update", flush=True)


if __name__ == "__main__":
    main()
