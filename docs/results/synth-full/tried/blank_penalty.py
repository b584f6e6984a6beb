"""Greedy CTC WER on a part after subtracting a penalty from the blank's log-probability.

Usage: blank_penalty.py MODEL.pt PART [LM_WEIGHTS [PENALTIES]], e.g. ``model.pt dev`` or
``model.pt dev 1.5 0,1`` (comma-separated lists; LM_WEIGHTS adds a lexicon + LM search per penalty).
Ad-hoc: paths are those of the full synth setting in /work/main.
"""

import logging
import sys
from pathlib import Path

import torch
from lhotse import CutSet

from imputer_asr.checkpoint import load_packaged
from imputer_asr.decode import ctc_greedy_search
from imputer_asr.lm_decode import Emissions, compute_emissions, tune
from imputer_asr.scoring import score

FULL = Path("/work/main/data/synth/full")
LANG = FULL / "lang"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    model_pt, part = sys.argv[1], sys.argv[2]
    lm_weights = [float(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else []
    penalties = [float(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else [0, 0.5, 1, 1.5, 2]
    packaged = load_packaged(Path(model_pt))
    tok = packaged.tokenizer
    cuts = CutSet.from_file(FULL / f"fbank/cuts_{part}_fbank.jsonl.gz").to_eager()
    emissions = compute_emissions(packaged.model, tok, cuts)
    for penalty in penalties:
        log_probs = [lp.clone() for lp in emissions.log_probs]
        for lp in log_probs:
            lp[:, tok.blank_id] -= penalty
        hyps = [
            tok.decode(ctc_greedy_search(lp.unsqueeze(0), torch.tensor([len(lp)]), tok.blank_id)[0])
            for lp in log_probs
        ]
        report = score(list(zip(emissions.cut_ids, emissions.refs, hyps, strict=True)))
        print(f"greedy pen {penalty}: WER {100 * report.wer:.2f} CER {100 * report.cer:.2f}", flush=True)
        if lm_weights:
            penalised = Emissions(
                log_probs, emissions.cut_ids, emissions.refs, emissions.durations, emissions.seconds
            )
            _, records = tune(
                penalised,
                tok,
                LANG / "lexicon_bpe40-wordfreq100000.txt",
                LANG / "lm3-wordfreq100000.arpa",
                lm_weights,
                [0.0],
                beam_size_token=8,
                jobs=1,
            )
            for r in records:
                wer, cer = 100 * r["wer"], 100 * r["cer"]
                print(f"LM pen {penalty} lmw {r['lm_weight']}: WER {wer:.2f} CER {cer:.2f}", flush=True)


if __name__ == "__main__":
    main()
