"""Eager vs torch.compile'd conformer blocks: seconds per training update on real batches."""
import sys, time, itertools, torch
from pathlib import Path
from lhotse import CutSet
from imputer_asr.config import load_config
from imputer_asr.model import ImputerModel
from imputer_asr.dataset import make_loader
from imputer_asr.tokenizer import Tokenizer
from imputer_asr.train import ctc_objective
torch.set_num_threads(2)
cfg = load_config(Path("/work/main/recipes/synth/conf/ctc-full.json"))
F = Path("/work/main/data/synth/full")
tok = Tokenizer.from_file(F / "lang/bpe40.model") if hasattr(Tokenizer, "from_file") else Tokenizer((F / "lang/bpe40.model").read_bytes())
import dataclasses
mcfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size, mask_id=tok.mask_id, blank_id=tok.blank_id)
cuts = CutSet.from_file(F / "fbank/cuts_train_fbank.jsonl.gz").subset(first=600).to_eager()
dcfg = dataclasses.replace(cfg.data, num_workers=0)
batches = list(itertools.islice(iter(make_loader(cuts, tok, dcfg, train=True)), 24))
print("batches", len(batches), [tuple(b["features"].shape) for b in batches[:4]], flush=True)
def run(model, opt, bs):
    t = time.perf_counter()
    for b in bs:
        loss, n = ctc_objective(model, b)
        opt.zero_grad(); (loss / n).backward(); opt.step()
    return time.perf_counter() - t
torch.manual_seed(0)
model = ImputerModel(mcfg).train(); opt = torch.optim.AdamW(model.parameters(), 1e-4)
run(model, opt, batches[:2])
e = run(model, opt, batches[2:]); print(f"eager: {e/22:.3f} s/update", flush=True)
mode = sys.argv[1] if len(sys.argv) > 1 else "blocks"
for i, blk in enumerate(model.blocks):
    blk.compile(dynamic=True)
t = time.perf_counter(); run(model, opt, batches[:2]); print(f"compile+2: {time.perf_counter()-t:.1f} s", flush=True)
c1 = run(model, opt, batches[2:]); print(f"compiled pass 1: {c1/22:.3f} s/update", flush=True)
c2 = run(model, opt, batches[2:]); print(f"compiled pass 2: {c2/22:.3f} s/update", flush=True)
e2 = run(model, opt, batches[2:]) if False else None
