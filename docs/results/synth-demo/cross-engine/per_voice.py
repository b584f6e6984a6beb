"""WER per voice of a hyps file, from the corpus's speakers.tsv (speaker id = first field of cut id)."""
import csv, json, sys
from collections import defaultdict
import jiwer
hyps, speakers = sys.argv[1], sys.argv[2]
by_engine = len(sys.argv) > 3
voice = {r["speaker_id"]: (r["engine"] if by_engine else f"{r['engine']}/{r['voice']}") for r in csv.DictReader(open(speakers), delimiter="\t")}
refs, outs = defaultdict(list), defaultdict(list)
for line in open(hyps):
    r = json.loads(line); v = voice[r["cut_id"].split("-")[0]]
    refs[v].append(r["ref"]); outs[v].append(r["hyp"] or "")
for v in sorted(refs):
    m = jiwer.process_words(refs[v], outs[v])
    n = sum(len(x.split()) for x in refs[v])
    print(f"{v:40s} {len(refs[v]):4d} utts {n:5d} words  WER {100*m.wer:6.2f}")
