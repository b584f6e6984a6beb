"""Real-time factor of ``imputer-asr transcribe``: processing seconds per second of audio.

Loads a packaged model once and transcribes every audio file under the given paths with CTC greedy
search and with K-step Imputer decoding, end to end (reading, resampling, fbank, network, words).
Each decoder first transcribes one file as a warm-up; then the median of ``--repeats`` timed passes
over all the files gives its RTF (lower is faster; 0.1 means ten times faster than real time). A
CTC model can be timed with the Imputer decoder too: the cost does not depend on the weights.

    python benchmarks/transcribe_speed.py --model recipes/synth/exp/imputer/model.pt \\
        data/synth/demo/corpus/test
    python benchmarks/transcribe_speed.py --model MODEL.pt DIR --steps 4 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from imputer_asr.data.audio import find_audio
from imputer_asr.transcription.transcribe import TranscribeOptions, Transcriber, load_model


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="packaged model.pt")
    parser.add_argument("audio", nargs="+", help="audio files or directories (searched recursively)")
    parser.add_argument("--steps", type=int, default=8, help="K of the Imputer decoder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-seconds", type=float, default=TranscribeOptions.batch_seconds)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def _timed_pass(asr: Transcriber, files: list[str], decoder: str, steps: int | None) -> tuple[float, float]:
    """(wall seconds, seconds of audio transcribed) of one pass over ``files``."""
    if asr.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    transcripts = asr.transcribe(files, decoder=decoder, steps=steps)
    if asr.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    failed = [t.error for t in transcripts if t.error]
    if failed:
        raise SystemExit(f"{len(failed)} file(s) failed, e.g. {failed[0]}")
    return seconds, sum(t.duration for t in transcripts)


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(args.threads)
    asr = load_model(args.model, args.device, TranscribeOptions(batch_seconds=args.batch_seconds))
    files = find_audio(args.audio)
    print(
        f"{args.model}: {len(files)} files, device {args.device}, {args.threads} threads, "
        f"batches of {args.batch_seconds:.0f} s, median of {args.repeats} passes"
    )
    print(f"{'decoder':<14} {'audio s':>9} {'wall s':>8} {'RTF':>8}")
    for decoder, steps in (("ctc", None), ("imputer", args.steps)):
        asr.transcribe(files[:1], decoder=decoder, steps=steps)  # warm-up
        passes = [_timed_pass(asr, files, decoder, steps) for _ in range(args.repeats)]
        wall = statistics.median(seconds for seconds, _ in passes)
        audio = passes[0][1]
        name = decoder if steps is None else f"{decoder} K={steps}"
        print(f"{name:<14} {audio:9.1f} {wall:8.2f} {wall / audio:8.4f}")


if __name__ == "__main__":
    main()
