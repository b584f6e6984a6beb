"""What the command modules share: the usage error (exit status 2), the runtime options resolved
as a usage error, reading a cuts manifest, a positive-number argparse type, and a function's
default read where it is stated (so that a flag does not restate it).

>>> def decode(cuts, max_duration: float = 200.0): ...
>>> default_of(decode, "max_duration")
200.0
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imputer_asr.cli.runtime import apply_runtime

__all__ = ["UsageError", "default_of", "load_cuts", "positive_float", "resolve_runtime"]


class UsageError(ValueError):
    """A bad argument found after parsing (e.g. a model file that is not one): exit status 2."""


def default_of(function: Callable[..., Any], parameter: str) -> Any:
    """The default value of ``function``'s ``parameter``, read from its signature: a flag that sets
    a library argument takes its default from there, so the number is stated once.

    Raises:
        ValueError: ``function`` has no such parameter, or it has no default.
    """
    try:
        default = inspect.signature(function).parameters[parameter].default
    except KeyError:
        raise ValueError(f"{function.__qualname__} has no parameter {parameter!r}") from None
    if default is inspect.Parameter.empty:
        raise ValueError(f"{function.__qualname__}'s {parameter!r} has no default")
    return default


def resolve_runtime(args: argparse.Namespace) -> None:
    """Threads and device of a command (:mod:`imputer_asr.cli.runtime`); a device not at hand is a
    usage error."""
    try:
        apply_runtime(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def load_cuts(path: Path):
    """The cuts manifest at ``path`` (ValueError naming it when it is missing or unreadable)."""
    from imputer_asr.data.dataset import load_cuts as load

    return load(path)


def positive_float(text: str) -> float:
    """argparse type: a number above 0 (argparse reports the error with the option's name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
