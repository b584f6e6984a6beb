import sys, torch, logging
from pathlib import Path
from lhotse import CutSet
from imputer_asr.checkpoint import load_packaged
from imputer_asr.lm_decode import compute_emissions, tune, Emissions
from imputer_asr.decode import ctc_greedy_search
from imputer_asr.scoring import score
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
torch.set_num_threads(1)
model_pt, part = sys.argv[1], sys.argv[2]
lmw = [float(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else []
pens = [float(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else [0, 0.5, 1, 1.5, 2]
p = load_packaged(Path(model_pt))
tok = p.tokenizer
F = Path("/work/main/data/synth/full"); L = F / "lang"
cuts = CutSet.from_file(F / f"fbank/cuts_{part}_fbank.jsonl.gz").to_eager()
em = compute_emissions(p.model, tok, cuts)
for pen in pens:
    lps = [lp.clone() for lp in em.log_probs]
    for lp in lps: lp[:, tok.blank_id] -= pen
    hyps = [tok.decode(ctc_greedy_search(lp.unsqueeze(0), torch.tensor([len(lp)]), tok.blank_id)[0]) for lp in lps]
    r = score(list(zip(em.cut_ids, em.refs, hyps)))
    print(f"greedy pen {pen}: WER {100*r.wer:.2f} CER {100*r.cer:.2f}", flush=True)
    if lmw:
        e2 = Emissions(lps, em.cut_ids, em.refs, em.durations, em.seconds)
        best, recs = tune(e2, tok, L / "lexicon_bpe40-wordfreq100000.txt", L / "lm3-wordfreq100000.arpa", lmw, [0.0], beam_size_token=8, jobs=1)
        for r in recs: print(f"LM pen {pen} lmw {r['lm_weight']}: WER {100*r['wer']:.2f} CER {100*r['cer']:.2f}", flush=True)
