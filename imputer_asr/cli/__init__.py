"""The ``imputer-asr`` command line: one subcommand per recipe stage.

Each subcommand parses its arguments and calls one library function; errors in the input reach the
user as one line naming the file and the problem (exit status 1), usage errors exit with 2.
``transcribe`` reports each input that fails on its own line and goes on with the others.

This module holds only :func:`build_parser` and :func:`main`; the commands live in a module per
group, each registering its own (``add_commands``) and holding their run functions:
:mod:`~imputer_asr.cli.data`, :mod:`~imputer_asr.cli.train`, :mod:`~imputer_asr.cli.decode`,
:mod:`~imputer_asr.cli.lm`, :mod:`~imputer_asr.cli.evaluate`, :mod:`~imputer_asr.cli.transcribe` and
:mod:`~imputer_asr.cli.export` (:mod:`~imputer_asr.cli.common` and :mod:`~imputer_asr.cli.runtime`
hold what they share). None of them imports this module.
"""

from __future__ import annotations

import argparse
import logging
import sys

from imputer_asr.cli import data, decode, evaluate, export, lm, train, transcribe
from imputer_asr.cli.common import UsageError
from imputer_asr.cli.runtime import keep_cpu_kernels

__all__ = ["USER_COMMANDS", "build_parser", "main"]

# What a user runs, listed apart in --help from the stages the recipes chain.
USER_COMMANDS = (
    "transcribe",
    "export",
    "decode",
    "decode-imputer",
    "score",
    "peer-pocketsphinx",
    "probe",
    "package",
    "train",
    "train-imputer",
)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # `is`: a default of 0 is stated, False (a switch's) is not; nor is an empty list or text.
        unstated = any(action.default is value for value in (None, argparse.SUPPRESS, False))
        unstated = unstated or action.default in ("", [])
        if "%(default)" in text or unstated or action.required:
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``-v`` is accepted before or after the command."""
    from imputer_asr import __version__

    parser = argparse.ArgumentParser(
        prog="imputer-asr",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (also after the command)")
    parser.add_argument("--version", action="version", version=f"imputer-asr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of those below")
    for group in (data, train, decode, lm, evaluate, transcribe, export):
        group.add_commands(sub)
    # The commands are listed in two groups in the epilog instead of argparse's one flat list.
    helps = {action.dest: action.help for action in sub._choices_actions}
    sub._choices_actions.clear()
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
        # SUPPRESS: without -v here, the value given before the command (or its default) stands.
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )

    def listing(names) -> str:
        return "\n".join(f"  {name:<18}{helps.get(name) or ''}" for name in names)

    stages = [name for name in sub.choices if name not in USER_COMMANDS]
    parser.epilog = (
        f"commands:\n{listing(USER_COMMANDS)}\n\nrecipe stages (the recipes' Makefiles chain them):\n"
        f"{listing(stages)}\n\n`imputer-asr COMMAND --help` for a command's options."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (0, 1 runtime error, 2 usage error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    keep_cpu_kernels()
    try:
        return args.func(args) or 0
    except UsageError as exc:
        print(f"imputer-asr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"imputer-asr {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"imputer-asr {args.command}: interrupted", file=sys.stderr)
        return 130
