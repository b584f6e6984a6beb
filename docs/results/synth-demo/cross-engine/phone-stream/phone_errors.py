"""Phone error rate of the phone stream (phone_features.py) per engine: pocketsphinx's allphone
output, silences dropped and repeats merged, against CMUdict's first pronunciation of each word
(utterances with a word outside the dictionary are skipped).

    .venv/bin/python phone_errors.py PHONES_DIR SPEAKERS_TSV PART [PART ...]
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import pocketsphinx
from lhotse import load_manifest_lazy

sys.path.insert(0, str(Path(__file__).parent))
from phone_features import PHONES  # noqa: E402


def _dictionary() -> dict[str, list[str]]:
    words: dict[str, list[str]] = {}
    path = Path(pocketsphinx.__file__).parent / "model" / "en-us" / "cmudict-en-us.dict"
    for line in path.read_text().splitlines():
        word, *phones = line.split()
        if "(" not in word:
            words[word.upper()] = phones
    return words


def _distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def main() -> None:
    phones_dir, speakers, parts = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    with speakers.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    engine = {row["speaker_id"]: row["engine"] for row in rows}
    lexicon = _dictionary()
    errors: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for part in parts:
        for cut in load_manifest_lazy(phones_dir / f"cuts_{part}_fbank.jsonl.gz"):
            if "_sp" in cut.id:
                continue
            words = re.findall(r"[A-Z']+", cut.supervisions[0].text.upper())
            if not all(w in lexicon for w in words):
                continue
            reference = [p for w in words for p in lexicon[w]]
            labels = cut.load_features().argmax(axis=1)
            said = [PHONES[i] for k, i in enumerate(labels) if (k == 0 or labels[k - 1] != i) and i != 0]
            key = (part, engine[cut.supervisions[0].speaker])
            errors[key][0] += _distance(said, reference)
            errors[key][1] += len(reference)
            errors[key][2] += 1
    print(f"{'part':<14} {'engine':<10} {'utts':>5} {'PER %':>6}")
    for (part, eng), (err, total, utts) in sorted(errors.items()):
        print(f"{part:<14} {eng:<10} {utts:5d} {100 * err / total:6.1f}")


if __name__ == "__main__":
    main()
