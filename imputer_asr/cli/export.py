"""The ``export`` command of ``imputer-asr``: a packaged model to one ONNX file for onnxruntime.

The file carries the network, its config and its tokenizer (:mod:`imputer_asr.export`);
``imputer-asr transcribe --model model.onnx`` runs it with onnxruntime. ``--int8`` quantizes the
weights of the linear layers (dynamic quantization): smaller and faster on a CPU, close to but not
equal to the float model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imputer_asr.cli.common import UsageError

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` in ``sub``."""
    p = sub.add_parser("export", help="export a packaged model to ONNX, for transcription with onnxruntime")
    p.add_argument("--model", type=Path, required=True, help="packaged model.pt")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write, e.g. model.onnx")
    p.add_argument("--int8", action="store_true", help="int8 weights (onnxruntime dynamic quantization)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> None:
    from imputer_asr.export import export_onnx
    from imputer_asr.training.checkpoint import load_packaged

    if args.out.resolve() == args.model.resolve():
        raise UsageError(f"--out {args.out} would overwrite --model")
    try:
        packaged = load_packaged(args.model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = export_onnx(packaged, args.out, int8=args.int8)
    print(
        f"{report.path}\t{report.precision}, {report.bytes / 1e6:.1f} MB; largest |log-prob difference| "
        f"from the PyTorch model on a random batch: {report.max_abs_diff:.2e}"
    )
