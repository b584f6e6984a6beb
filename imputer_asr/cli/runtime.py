"""Where a command's network runs: the ``--device`` and ``--threads`` options, stated once for every
command that runs a model.

``--device auto`` (the default) takes the GPU when torch sees one, else the CPU; ``--threads``
defaults to torch's own thread count (the machine's cores).

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_runtime_options(parser)
>>> args = apply_runtime(parser.parse_args(["--device", "cpu", "--threads", "1"]))
>>> (args.device, args.threads)
('cpu', 1)
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_runtime_options", "apply_runtime", "keep_cpu_kernels", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")
# oneDNN keeps the CPU kernels it builds for each tensor shape in a cache of 1,024 by default. A
# training run on length-bucketed batches meets about 50 batch shapes, each needing dozens of kernels
# (forward and backward of every layer): the default cache evicts them in turn and updates rebuild
# their kernels. bf16 updates cycling through 64 shapes: 118.5 s of audio/s with the default cache,
# 212.3 with this one (benchmarks/train_speed.py, 2 cores of a Xeon).
ONEDNN_CACHE_CAPACITY = 16384


def keep_cpu_kernels() -> None:
    """Let oneDNN cache the kernels of every batch shape a run meets. Takes effect only before the
    process's first oneDNN operation; an ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` already set wins."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE_CAPACITY))


def add_runtime_options(parser: argparse.ArgumentParser, device: bool = True, bf16: bool = False) -> None:
    """Add ``--threads`` (and ``--device`` unless ``device`` is False; ``--bf16`` when ``bf16``, for the
    commands that decode with a model) to a command's parser."""
    if device:
        parser.add_argument(
            "--device", choices=DEVICES, default="auto", help="auto: cuda when torch sees a GPU, else cpu"
        )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads of torch (default: torch's own, the cores)"
    )
    if bf16:
        parser.add_argument(
            "--bf16",
            action="store_true",
            help="run the network under bfloat16 autocast (where the device has it in hardware: a GPU, "
            "a CPU with AVX512-BF16 or AMX; else float32, with a warning)",
        )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` or ``cpu``; ``cuda`` without a GPU raises ValueError."""
    import torch

    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU here (use --device cpu or auto)")
    return device


def apply_runtime(args: argparse.Namespace) -> argparse.Namespace:
    """Set torch's thread count and resolve the device in ``args`` (in place, and returned)."""
    import torch

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    if args.threads is None:
        args.threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if hasattr(args, "device"):
        args.device = resolve_device(args.device)
    return args
