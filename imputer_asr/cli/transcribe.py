"""The ``transcribe`` command of ``imputer-asr``: audio files to transcripts, as whisper does it.

A file ``<input name>.<format>`` per input goes to ``--output-dir`` (the working directory by
default) for each ``--output-format`` (txt, json, tsv, srt, vtt, or all of them), and stdout lists
the files written; ``--output-dir -`` prints the transcripts instead. An input that fails is
reported on its own stderr line and the others are transcribed (exit status 1 when any failed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imputer_asr.cli.common import UsageError, resolve_runtime
from imputer_asr.cli.lm import add_lm_options, lm_weights_from_args
from imputer_asr.cli.runtime import add_runtime_options

__all__ = ["TRANSCRIPT_FORMATS", "add_commands"]

TRANSCRIPT_FORMATS = ("txt", "json", "tsv", "srt", "vtt")
_STREAMABLE = ("txt", "json", "tsv")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``transcribe`` in ``sub``."""
    from imputer_asr.transcription.transcribe import DECODERS, TranscribeOptions

    p = sub.add_parser(
        "transcribe", help="transcribe audio files (wav, flac, ogg, mp3) with a packaged model"
    )
    p.add_argument("audio", nargs="+", help="audio files, or directories searched recursively")
    p.add_argument("--model", type=Path, required=True, help="packaged model.pt, or its ONNX export")
    p.add_argument(
        "--decoder",
        choices=DECODERS,
        default=None,
        help="default: lm when --lexicon is given, else imputer for a model trained as an Imputer, else ctc",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="K of the imputer decoder; default: its block size"
    )
    p.add_argument(
        "--output-format",
        "--format",
        dest="format",
        choices=(*TRANSCRIPT_FORMATS, "all"),
        default="txt",
        help="txt: the text; json: text, duration and timed words; tsv: a 'start<TAB>end<TAB>word' row "
        "per word (ms); srt, vtt: subtitles; all: every one",
    )
    p.add_argument(
        "--output-dir",
        default=".",
        help="a file <input name>.<format> per input goes here; '-': print to stdout instead (txt: "
        "'AUDIO<TAB>TEXT' lines, json: JSON Lines, tsv: 'AUDIO<TAB>start<TAB>end<TAB>word' rows)",
    )
    p.add_argument(
        "--window-seconds",
        type=float,
        default=TranscribeOptions.window_seconds,
        help="long recordings are decoded in windows this long",
    )
    p.add_argument(
        "--overlap-seconds",
        type=float,
        default=TranscribeOptions.overlap_seconds,
        help="overlap of consecutive windows",
    )
    add_runtime_options(p, bf16=True)
    add_lm_options(p)
    p.set_defaults(func=_run_transcribe)


def _run_transcribe(args) -> int:
    """Exit status 0 when every input was transcribed, 1 when some failed (each on a stderr line)."""
    from imputer_asr.data.audio import find_audio
    from imputer_asr.transcription.transcribe import TranscribeOptions, load_model

    if args.output_dir == "-" and args.format not in _STREAMABLE:
        raise UsageError(
            f"--output-format {args.format} writes files: give --output-dir a directory, not '-'"
        )
    resolve_runtime(args)
    try:
        options = TranscribeOptions(window_seconds=args.window_seconds, overlap_seconds=args.overlap_seconds)
        lm_weights = lm_weights_from_args(args) if args.lexicon is not None else None
        transcriber = load_model(
            args.model,
            device=args.device,
            options=options,
            lexicon=args.lexicon,
            arpa=args.arpa,
            lm_weights=lm_weights,
            bf16=args.bf16,
        )
        transcripts = transcriber.iter_transcripts(
            find_audio(args.audio), decoder=args.decoder, steps=args.steps, progress=None
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    written: dict[Path, str] = {}
    failed = 0
    for transcript in transcripts:
        error = _write_transcript(transcript, args, written) or transcript.error
        if error:
            print(f"imputer-asr transcribe: error: {error}", file=sys.stderr, flush=True)
            failed += 1
    return 1 if failed else 0


def _transcript_text(transcript, fmt: str, stream: bool) -> str:
    """One transcript in ``fmt``: a file's content, or (``stream``) the lines printed for it."""
    from imputer_asr.transcription.subtitles import format_srt, format_vtt, subtitle_cues

    if fmt == "json":
        return json.dumps(transcript.to_dict()) + "\n"
    if fmt == "txt":
        return f"{transcript.audio}\t{transcript.text}\n" if stream else transcript.text + "\n"
    if fmt == "tsv":
        rows = [(round(w.start * 1000), round(w.end * 1000), w.word) for w in transcript.words]
        if stream:
            return "".join(f"{transcript.audio}\t{a}\t{b}\t{w}\n" for a, b, w in rows)
        return "start\tend\tword\n" + "".join(f"{a}\t{b}\t{w}\n" for a, b, w in rows)
    cues = subtitle_cues(transcript.words)
    return format_srt(cues) if fmt == "srt" else format_vtt(cues)


def _write_transcript(transcript, args, written: dict[Path, str]) -> str | None:
    """Print or write one transcript in each chosen format; returns an error, if any.

    Files are written whole (atomically) and only for inputs that were transcribed. ``written`` maps
    the files written so far to their inputs: two inputs with the same name would write the same
    file, and the second is refused rather than overwrite the first.
    """
    from imputer_asr.files import write_text_atomic

    formats = TRANSCRIPT_FORMATS if args.format == "all" else (args.format,)
    if args.output_dir == "-":
        if args.format == "json" or not transcript.error:  # a JSON record carries its error
            print(_transcript_text(transcript, args.format, stream=True), end="", flush=True)
        return None
    if transcript.error:
        return None
    out_dir = Path(args.output_dir)
    outs = [out_dir / f"{Path(transcript.audio).stem}.{fmt}" for fmt in formats]
    for out in outs:
        if out in written:
            return f"{transcript.audio}: its transcript would overwrite {out}, written for {written[out]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt, out in zip(formats, outs, strict=True):
        write_text_atomic(out, _transcript_text(transcript, fmt, stream=False))
        written[out] = transcript.audio
        print(f"{transcript.audio}\t{out}", flush=True)
    return None
