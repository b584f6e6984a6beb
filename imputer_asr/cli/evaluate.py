"""The evaluation commands of ``imputer-asr``: ``plot`` (training curves), ``compare`` and
``results`` (tables of several systems), ``show-imputation`` (one utterance imputed step by step)
and ``probe`` (does the Imputer read the alignment it is shown?)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from imputer_asr.cli.common import UsageError, default_of, load_cuts, resolve_runtime
from imputer_asr.cli.runtime import add_runtime_options

__all__ = ["add_commands"]

log = logging.getLogger("imputer_asr")

PROBE_MAX_CUTS = 200


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the evaluation commands in ``sub``."""
    for add in (_add_plot, _add_compare, _add_results, _add_show_imputation, _add_probe):
        add(sub)


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="PNG of training curves from train_log.jsonl")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="", help="title of the figure")
    p.set_defaults(func=_run_plot)


def _run_plot(args) -> None:
    from imputer_asr.evaluation.plots import plot_training_curves

    plot_training_curves(args.log, args.out, title=args.title)


def _parse_exp(value: str) -> tuple[str, Path]:
    """argparse type of ``--exp NAME=DIR``: a system's name and its experiment directory."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {value!r}")
    return name, Path(path)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="table and plot of WER and decoding cost of several experiments")
    p.add_argument(
        "--exp",
        type=_parse_exp,
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a system and its experiment dir (repeat); a dir that does not exist is skipped with a note",
    )
    p.add_argument("--part", default="test", help="the part whose wer-<part>-*.json files are compared")
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> None:
    from imputer_asr.evaluation.report import collect_results, plot_wer_vs_steps, write_markdown_report

    exp_dirs: dict[str, Path] = {}
    for name, path in args.exp:
        if name in exp_dirs:
            raise ValueError(f"system {name!r} given twice")
        if path.is_dir():
            exp_dirs[name] = path
        else:
            print(f"imputer-asr compare: note: skipping {name}: {path} does not exist", file=sys.stderr)
    if not exp_dirs:
        raise ValueError("no experiment directory to compare")
    rows = collect_results(exp_dirs, args.part)
    text = write_markdown_report(rows, args.out_md, title=f"{args.part}: WER and decoding cost")
    plot_wer_vs_steps(rows, args.out_png, title=f"{args.part}: " + " vs ".join(exp_dirs))
    print(text, end="")
    log.info("wrote %s and %s", args.out_md, args.out_png)


def _add_results(sub) -> None:
    from imputer_asr.evaluation.report import fill_results_section

    p = sub.add_parser("results", help="WER table of several systems on several parts, written into a README")
    p.add_argument("--exp", type=_parse_exp, action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--readme", type=Path, required=True, help="holds <!-- SECTION:begin/end --> lines")
    p.add_argument(
        "--section",
        default=default_of(fill_results_section, "section"),
        help="the marked section of the README to fill",
    )
    p.set_defaults(func=_run_results)


def _run_results(args) -> None:
    from imputer_asr.evaluation.report import collect_results, fill_results_section, format_wer_by_part

    rows_by_part = {}
    for part in args.parts:
        decoded = {name: path for name, path in args.exp if any(path.glob(f"wer-{part}-*.json"))}
        rows_by_part[part] = collect_results(decoded, part) if decoded else []
    table = format_wer_by_part(rows_by_part)
    fill_results_section(args.readme, table, args.section)
    print(table)


def _add_show_imputation(sub) -> None:
    from imputer_asr.evaluation.report import show_imputation

    p = sub.add_parser("show-imputation", help="PNG of one utterance's alignment imputed step by step")
    p.add_argument("--model", type=Path, required=True, help="packaged Imputer model.pt")
    p.add_argument("--cuts", type=Path, required=True, help="cuts manifest with features")
    p.add_argument("--cut-id", default=None, help="default: the first cut of the manifest")
    p.add_argument("--steps", type=int, default=None, help="K; default: the model's block size B")
    p.add_argument(
        "--max-frames",
        type=int,
        default=default_of(show_imputation, "max_frames"),
        help="draw at most this many encoder frames",
    )
    p.add_argument("--out", type=Path, required=True)
    add_runtime_options(p, device=False)
    p.set_defaults(func=_run_show_imputation)


def _run_show_imputation(args) -> None:
    from imputer_asr.evaluation.report import show_imputation

    resolve_runtime(args)
    result = show_imputation(
        args.model, args.cuts, args.cut_id, args.steps, args.out, max_frames=args.max_frames
    )
    log.info("wrote %s (%d encoder frames, %d steps)", args.out, int(result.lengths[0]), result.evaluations)


def _add_probe(sub) -> None:
    from imputer_asr.evaluation.probe import probe_cuts

    p = sub.add_parser(
        "probe", help="input-use probe: does the Imputer read the partial alignment it is shown?"
    )
    p.add_argument("--model", type=Path, required=True, help="packaged Imputer model.pt (required)")
    p.add_argument("--cuts", type=Path, required=True, help="cuts manifest with features (required)")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=list(default_of(probe_cuts, "fractions")),
        help="shown fractions p, each in (0, 1)",
    )
    p.add_argument(
        "--max-cuts", type=int, default=PROBE_MAX_CUTS, help="probe the first N cuts of the manifest"
    )
    p.add_argument("--block-size", type=int, default=None, help="B (default: the model's imputer config)")
    p.add_argument(
        "--seed",
        type=int,
        default=default_of(probe_cuts, "seed"),
        help="seed of the shown frames and random tokens",
    )
    p.add_argument(
        "--max-duration",
        type=float,
        default=default_of(probe_cuts, "max_duration"),
        help="seconds of audio per batch",
    )
    add_runtime_options(p)
    p.add_argument(
        "--out", type=Path, default=None, help="also write the report as JSON here (default: print only)"
    )
    p.set_defaults(func=_run_probe)


def _run_probe(args) -> None:
    from imputer_asr.evaluation.probe import check_probe_arguments, format_probe, probe_cuts
    from imputer_asr.files import write_text_atomic
    from imputer_asr.training.checkpoint import load_packaged

    if args.max_cuts < 1:
        raise UsageError(f"--max-cuts must be at least 1, got {args.max_cuts}")
    resolve_runtime(args)
    packaged = load_packaged(args.model)
    block_size = packaged.config.imputer.block_size if args.block_size is None else args.block_size
    try:
        check_probe_arguments(args.fractions, block_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cuts = load_cuts(args.cuts).subset(first=args.max_cuts)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    packaged.model.to(args.device)
    report = probe_cuts(
        packaged.model,
        packaged.tokenizer,
        cuts,
        fractions=args.fractions,
        block_size=block_size,
        seed=args.seed,
        max_duration=args.max_duration,
    )
    print(format_probe(report), end="")
    if args.out is not None:
        record = {"model": str(args.model), "cuts": str(args.cuts), "seed": args.seed, **report.to_dict()}
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
        log.info("wrote %s", args.out)
