"""WER of a hypotheses file per voice (or per engine), scored as `imputer-asr score` scores it.

    per_voice.py HYPS.jsonl SPEAKERS.tsv [engine]

A cut's speaker is the first field of its id; SPEAKERS.tsv is the corpus's speakers.tsv.
"""

import csv
import json
import sys
from collections import defaultdict

from imputer_asr.evaluation.scoring import score


def main(hyps: str, speakers: str, by_engine: bool) -> None:
    with open(speakers) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    group = {r["speaker_id"]: r["engine"] if by_engine else f"{r['engine']}/{r['voice']}" for r in rows}
    triples = defaultdict(list)
    with open(hyps) as f:
        for line in f:
            r = json.loads(line)
            triples[group[r["cut_id"].split("-")[0]]].append((r["cut_id"], r["ref"], r["hyp"] or ""))
    for name, utts in sorted(triples.items()):
        report = score(utts)
        words = report.words.ref_words
        print(f"{name:40s} {len(utts):4d} utts {words:5d} words  WER {100 * report.wer:6.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], by_engine=len(sys.argv) > 3)
