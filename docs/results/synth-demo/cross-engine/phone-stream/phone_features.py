"""Probe: pocketsphinx's phone recognition as the model's only input.

Writes, for every part of a corpus's fbank manifests, a manifest of the same cuts whose "features"
are pocketsphinx's allphone decoding (its default US English acoustic model, trained on people, and
its phone bigram) as a one-hot per 10-ms frame: 40 phones (CMU's 39 and silence) in the first 40 of
80 dimensions, the rest zero, so that the recipe's 80-input model trains on it unchanged. The
question: does a recogniser trained on human speech hand the model something that carries over to
an engine it never heard, where fbank does not?

    .venv/bin/python phone_features.py SRC_FBANK_DIR OUT_DIR [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pocketsphinx
from lhotse import CutSet, load_manifest_lazy
from lhotse.features.io import NumpyHdf5Writer

PHONES = (
    "SIL AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH"
).split()
DIM = 80
_decoder = None


def _make_decoder() -> pocketsphinx.Decoder:
    model = Path(pocketsphinx.__file__).parent / "model" / "en-us"
    config = pocketsphinx.Config(
        hmm=str(model / "en-us"),
        allphone=str(model / "en-us-phone.lm.bin"),
        lm=None,
        loglevel="FATAL",
        beam=1e-20,
        pbeam=1e-20,
        lw=2.0,
    )
    return pocketsphinx.Decoder(config)


def _labels(item: tuple[str, np.ndarray, int]) -> tuple[str, np.ndarray]:
    """(cut id, 16-kHz float samples, frames) -> phone index per 10-ms frame (silence where none)."""
    global _decoder
    if _decoder is None:
        _decoder = _make_decoder()
    cut_id, samples, frames = item
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    _decoder.start_utt()
    _decoder.process_raw(pcm.tobytes(), full_utt=True)
    _decoder.end_utt()
    labels = np.zeros(frames, dtype=np.int8)
    for seg in _decoder.seg():
        phone = seg.word if seg.word in PHONES else "SIL"  # fillers (+NSN+ ...) are not speech
        labels[max(seg.start_frame, 0) : min(seg.end_frame + 1, frames)] = PHONES.index(phone)
    return cut_id, labels


def _items(cuts: CutSet):
    for cut in cuts:
        yield cut.id, cut.load_audio()[0], cut.features.num_frames


def convert(src: Path, out: Path, part: str, jobs: int) -> None:
    cuts = load_manifest_lazy(src / f"cuts_{part}_fbank.jsonl.gz").to_eager()
    start, seconds = time.time(), sum(c.duration for c in cuts)
    by_id = {}
    with Pool(jobs) as pool:
        for cut_id, labels in pool.imap_unordered(_labels, _items(cuts), chunksize=8):
            by_id[cut_id] = labels
    written = []
    with NumpyHdf5Writer(out / f"phones_{part}") as writer:
        for cut in cuts:
            onehot = np.zeros((len(by_id[cut.id]), DIM), dtype=np.float32)
            onehot[np.arange(len(onehot)), by_id[cut.id]] = 1.0
            key = writer.write(cut.id, onehot)
            features = replace(
                cut.features,
                storage_type=writer.name,
                storage_path=str(writer.storage_path),
                storage_key=key,
                num_features=DIM,
                type="pocketsphinx-phones",
            )
            written.append(replace(cut, features=features))
    CutSet.from_cuts(written).to_file(out / f"cuts_{part}_fbank.jsonl.gz")
    took = time.time() - start
    rtf = took / seconds
    print(f"{part}: {len(cuts)} cuts, {seconds / 3600:.2f} h, {took:.0f} s (RTF {rtf:.3f} on {jobs} jobs)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--parts", nargs="+", default=["dev-festival", "dev", "test", "train"])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    args.out = args.out.resolve()  # the manifests name their feature files: from anywhere
    args.out.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        convert(args.src, args.out, part, args.jobs)
    (args.out / ".done").touch()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
