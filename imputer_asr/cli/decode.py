"""The decoding commands of ``imputer-asr``: ``decode`` (CTC greedy, or the LM beam search with
``--lexicon``), ``decode-imputer`` (K-step or adaptive Imputer decoding), ``score`` (WER/CER) and
``peer-pocketsphinx`` (a peer recognizer for the WER tables).

A decoding writes ``timing-<name>.json``, ``hyps-<name>.jsonl`` and, where the cuts have transcripts,
the report of ``score`` (``wer-<name>.txt``, ``errs-``, ``recogs-``) into ``--out-dir``. ``score``
scores hypotheses written by other means.

``decode-imputer --steps 1 2 4 8`` makes one decoding per K in one process (the model and the cuts
are loaded once); the recipes run a whole sweep that way, where a process per K spent about as much
time starting Python and torch as decoding."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from imputer_asr.cli.common import UsageError, load_cuts, resolve_runtime
from imputer_asr.cli.lm import add_lm_options, decode_imputer_with_lm, decode_with_lm
from imputer_asr.cli.runtime import add_runtime_options

__all__ = ["add_commands"]

log = logging.getLogger("imputer_asr")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the decoding commands in ``sub``."""
    for add in (_add_decode, _add_decode_imputer, _add_score, _add_peer_pocketsphinx):
        add(sub)


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="decode a cuts manifest with a packaged model")
    p.add_argument("--model", type=Path, required=True, help="packaged model.pt, or its ONNX export")
    p.add_argument("--cuts", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True, help="e.g. test-ctc; names the output files")
    add_runtime_options(p, bf16=True)
    add_lm_options(p)
    p.set_defaults(func=_run_decode)


def _run_decode(args) -> None:
    from imputer_asr.decoding.ctc import decode_cuts

    packaged, cuts = _model_and_cuts(args)
    if args.lexicon is not None:
        hyps, seconds, weights = decode_with_lm(args, packaged, cuts)
        _finish_decoding(args, args.name, hyps, seconds, **dataclasses.asdict(weights))
    else:
        hyps, seconds = decode_cuts(packaged.model, packaged.tokenizer, cuts)
        _finish_decoding(args, args.name, hyps, seconds)


def _model_and_cuts(args):
    """What both decode commands start from: the LM options checked, the runtime set, the model (a
    packaged model.pt or its ONNX export) on its device, the cuts."""
    from imputer_asr.export import load_packaged_or_onnx

    if args.arpa is not None and args.lexicon is None:
        raise UsageError("--arpa needs --lexicon (the words the search may write)")
    import torch

    from imputer_asr.model.precision import bf16_inference

    resolve_runtime(args)
    packaged = load_packaged_or_onnx(args.model)
    packaged.model.to(args.device)
    if args.bf16:
        try:
            packaged.model = bf16_inference(packaged.model, torch.device(args.device))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return packaged, load_cuts(args.cuts)


def _finish_decoding(args, name: str, hyps, seconds: float, more: str = "", **extra) -> None:
    """Write ``timing-<name>.json`` then ``hyps-<name>.jsonl`` (atomically: it marks the decoding
    done), log the speed, then score the hypotheses against the cuts' transcripts as ``score`` does.
    The report comes after the hypotheses, so that make finds it newer and does not score again."""
    from imputer_asr.files import write_text_atomic

    audio = sum(h.duration for h in hyps)
    timing = {
        "utterances": len(hyps),
        "audio_seconds": audio,
        "decode_seconds": seconds,
        "rtf": seconds / max(audio, 1e-9),
        "threads": args.threads,
        **extra,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"timing-{name}.json").write_text(json.dumps(timing, indent=2) + "\n")
    out = args.out_dir / f"hyps-{name}.jsonl"
    write_text_atomic(out, "".join(json.dumps(dataclasses.asdict(h)) + "\n" for h in hyps))
    log.info(
        "decoded %d utterances (%.0f s of audio) in %.1f s, RTF %.4f%s",
        len(hyps),
        audio,
        seconds,
        timing["rtf"],
        more,
    )
    if not any(h.ref.strip() for h in hyps):
        log.info("%s: the cuts have no transcripts; not scored", name)
        return
    _write_score(args.out_dir, name, [(h.cut_id, h.ref, h.hyp) for h in hyps])


def _write_score(out_dir: Path, name: str, utterances: list[tuple[str, str, str]]) -> None:
    """``wer-<name>.txt`` and the rest of the report in ``out_dir``; prints the WER line."""
    from imputer_asr.evaluation.scoring import format_summary, score, write_report

    report = score(utterances)
    write_report(report, out_dir, name)
    print(f"{name}: {format_summary(report)}", flush=True)


def _add_decode_imputer(sub) -> None:
    p = sub.add_parser(
        "decode-imputer",
        help="K-step (or adaptive) Imputer decoding of a cuts manifest; with --lexicon, the K-th step's "
        "log-probs go to the LM beam search",
    )
    p.add_argument("--model", type=Path, required=True, help="packaged model.pt, or its ONNX export")
    p.add_argument("--cuts", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument(
        "--name",
        required=True,
        help="e.g. test-k8; names the output files (with several --steps, NAME-k<K> names each K's)",
    )
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="K, or several: one decoding each (with --adaptive, the one cap); default: B",
    )
    p.add_argument(
        "--adaptive",
        type=float,
        default=None,
        metavar="THRESHOLD",
        help="fix every frame more probable than THRESHOLD, stop when all are fixed",
    )
    p.add_argument("--block-size", type=int, default=None, help="B; default: the model's imputer config")
    add_runtime_options(p, bf16=True)
    add_lm_options(p)
    p.set_defaults(func=_run_decode_imputer)


def _run_decode_imputer(args) -> None:
    from imputer_asr.decoding.imputer import decode_cuts_imputer

    sweep = args.steps or []
    if len(sweep) != len(set(sweep)):
        raise UsageError(f"--steps {' '.join(map(str, sweep))}: a K given twice would write its files twice")
    if len(sweep) > 1 and (args.adaptive is not None or args.lexicon is not None):
        raise UsageError("--adaptive and --lexicon take one --steps value (the cap; the step the LM reads)")
    if args.lexicon is not None and args.adaptive is not None:
        raise UsageError("--adaptive cannot be combined with --lexicon (the LM search reads step K of K)")
    packaged, cuts = _model_and_cuts(args)
    block_size = args.block_size or packaged.config.imputer.block_size
    if args.lexicon is not None:
        steps = sweep[0] if sweep else block_size
        hyps, seconds, record = decode_imputer_with_lm(args, packaged, cuts, steps, block_size)
        _finish_imputer_decoding(args, args.name, hyps, seconds, record)
        return
    for steps in sweep:  # every K checked before the first is decoded and written
        if not 1 <= steps <= block_size:
            raise UsageError(f"--steps {steps}: K must lie in [1, B = {block_size}]")
    cuts = cuts.to_eager()  # read once for every K
    for steps in sweep or [block_size]:
        run = decode_cuts_imputer(
            packaged.model,
            packaged.tokenizer,
            cuts,
            steps=steps,
            block_size=block_size,
            threshold=args.adaptive,
        )
        record = {
            "block_size": block_size,
            "steps": steps,
            "adaptive_threshold": args.adaptive,
            "evaluations": run.evaluations,
            "batches": run.batches,
            "evaluations_per_batch": run.evaluations / max(run.batches, 1),
            "evaluations_per_utterance": run.utterance_evaluations / max(len(run.hyps), 1),
        }
        name = f"{args.name}-k{steps}" if len(sweep) > 1 else args.name
        _finish_imputer_decoding(args, name, run.hyps, run.seconds, record)


def _finish_imputer_decoding(args, name: str, hyps, seconds: float, record: dict) -> None:
    more = f", {record['evaluations']} evaluations in {record['batches']} batches"
    _finish_decoding(args, name, hyps, seconds, more, **record)


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="WER/CER of decoded hypotheses, per-utterance error listing")
    p.add_argument("--hyps", type=Path, required=True, help="hyps-<name>.jsonl from decode")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.set_defaults(func=_run_score)


def _run_score(args) -> None:
    if not args.hyps.is_file():
        raise ValueError(f"{args.hyps}: no such file; run the decode stage first")
    rows = [json.loads(line) for line in args.hyps.read_text().splitlines() if line.strip()]
    _write_score(args.out_dir, args.name, [(r["cut_id"], r["ref"], r["hyp"]) for r in rows])


def _add_peer_pocketsphinx(sub) -> None:
    p = sub.add_parser(
        "peer-pocketsphinx",
        help="decode a cuts manifest with pocketsphinx's default US English model, a peer for the WER tables",
    )
    p.add_argument("--cuts", type=Path, required=True, help="cuts manifest whose cuts have their audio")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True, help="e.g. test-pocketsphinx; names the output files")
    p.set_defaults(func=_run_peer_pocketsphinx, threads=1)  # pocketsphinx decodes on one thread


def _run_peer_pocketsphinx(args) -> None:
    from importlib.metadata import version

    from imputer_asr.evaluation.peer import decode_pocketsphinx

    cuts = load_cuts(args.cuts)
    try:
        hyps, seconds = decode_pocketsphinx(cuts)
    except ValueError as exc:
        raise ValueError(f"{args.cuts}: {exc}") from None
    _finish_decoding(args, args.name, hyps, seconds, recognizer=f"pocketsphinx {version('pocketsphinx')}")
