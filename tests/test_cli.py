"""The command line's conventions: --version, -v on either side of the command, defaults in every
option's help, user commands listed apart from the recipe stages; its layout (a module per command
group, no import circle); and each default stated once, where the library states it."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import logging
import os
import re
from pathlib import Path

import pytest

from imputer_asr import __version__
from imputer_asr.cli import USER_COMMANDS, build_parser


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"imputer-asr {__version__}"


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["score", "--hyps", "h", "--out-dir", "o", "--name", "n"], False),
        (["-v", "score", "--hyps", "h", "--out-dir", "o", "--name", "n"], True),
        (["score", "--hyps", "h", "--out-dir", "o", "--name", "n", "-v"], True),
        (["score", "--verbose", "--hyps", "h", "--out-dir", "o", "--name", "n"], True),
    ],
)
def test_verbose_before_or_after_the_command(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def test_help_lists_user_commands_apart_from_the_stages_each_once():
    parser = build_parser()
    text = parser.format_help()
    users, stages = text.split("commands:\n")[1].split("recipe stages")
    listed = lambda block: re.findall(r"^  (\S+)\s", block, flags=re.M)  # noqa: E731
    assert listed(users) == list(USER_COMMANDS)
    commands = parser._subparsers._group_actions[0].choices
    assert sorted(listed(users) + listed(stages)) == sorted(commands)
    assert "transcribe audio files" in users and "render the offline synthetic corpus" in stages


def test_every_option_help_shows_its_default():
    parser = build_parser()
    probe = parser._subparsers._group_actions[0].choices["probe"].format_help()
    flat = " ".join(probe.split())
    assert "--max-cuts MAX_CUTS probe the first N cuts of the manifest (default: 200)" in flat
    assert "--threads THREADS CPU threads of torch (default: torch's own, the cores)" in flat
    assert "--device {auto,cpu,cuda} auto: cuda when torch sees a GPU, else cpu (default: auto)" in flat
    transcribe = " ".join(parser._subparsers._group_actions[0].choices["transcribe"].format_help().split())
    assert (
        "--window-seconds WINDOW_SECONDS long recordings are decoded in windows this long (default: 30.0)"
        in transcribe
    )
    assert "(default: None)" not in transcribe and "(default: False)" not in transcribe


RUNTIME_COMMANDS = ("decode", "decode-imputer", "align", "probe", "transcribe", "tune-lm", "show-imputation")


@pytest.mark.parametrize("command", RUNTIME_COMMANDS)
def test_every_command_that_runs_a_model_takes_the_runtime_options_with_one_default(command):
    choices = build_parser()._subparsers._group_actions[0].choices
    options = {a.dest: a for a in choices[command]._actions}
    assert options["threads"].default is None  # torch's own count, resolved by apply_runtime
    if "device" in options:
        assert options["device"].default == "auto" and options["device"].choices == ("auto", "cpu", "cuda")


def test_device_auto_resolves_to_what_torch_sees_and_cuda_without_a_gpu_is_a_usage_error(monkeypatch, capsys):
    import torch

    from imputer_asr.cli import main
    from imputer_asr.cli.runtime import resolve_device

    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert resolve_device("auto") == "cpu"
        assert (
            main(
                [
                    "decode",
                    "--model",
                    "m.pt",
                    "--cuts",
                    "c",
                    "--out-dir",
                    "o",
                    "--name",
                    "n",
                    "--device",
                    "cuda",
                ]
            )
            == 2
        )
        assert "torch sees no CUDA GPU" in capsys.readouterr().err
        assert main(["probe", "--model", "m.pt", "--cuts", "c", "--threads", "0"]) == 2
        assert "--threads must be at least 1, got 0" in capsys.readouterr().err
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert resolve_device("auto") == "cuda" and resolve_device("cpu") == "cpu"
    finally:
        torch.set_num_threads(threads)


def test_synth_corpus_refuses_to_hear_the_heldout_engine_and_fbank_an_unknown_effect(tmp_path, capsys):
    from imputer_asr.cli import main

    out = tmp_path / "corpus"
    engines = ["--engines", "flite", "festival", "--heldout-engine", "festival"]
    assert main(["synth-corpus", "--out-dir", str(out), *engines]) == 2
    assert "includes the held-out engine festival" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["fbank", "--manifest-dir", "m", "--out-dir", "o", "--bpe", "b", "--part", "d", "--effects=x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'x'" in capsys.readouterr().err


# --- the layout: a module per command group, no import circle ---------------------------------------

CLI_DIR = Path(__file__).resolve().parents[1] / "imputer_asr" / "cli"
PACKAGE_DIR = CLI_DIR.parent


def _imports(path: Path) -> set[str]:
    """Every ``imputer_asr`` module a file imports, at module level or in a function; ``from
    imputer_asr.cli import lm`` counts as importing both the package and ``imputer_asr.cli.lm``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                submodule = PACKAGE_DIR.parent / (node.module.replace(".", "/") + f"/{alias.name}.py")
                if submodule.is_file():
                    found.add(f"{node.module}.{alias.name}")
    return {name for name in found if name.split(".")[0] == "imputer_asr"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_cli_is_a_module_per_group_and_no_command_module_imports_the_package_or_a_circle():
    modules = {_module_name(path): path for path in sorted(CLI_DIR.glob("*.py"))}
    graph = {name: _imports(path) - {name} for name, path in modules.items()}  # __init__ names its own
    assert set(graph) >= {f"imputer_asr.cli.{name}" for name in ("data", "train", "decode", "lm", "evaluate")}
    assert "imputer_asr.cli.transcribe" in graph and "imputer_asr.cli.common" in graph
    # Only the entry point (python -m) imports the package; the command modules import each other's
    # names only, never the package that collects them.
    importers = sorted(name for name, imported in graph.items() if "imputer_asr.cli" in imported)
    assert importers == ["imputer_asr.cli.__main__"]
    # A depth-first walk finds no circle among the cli modules.
    state: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert state.get(name) != "open", f"import circle: {' -> '.join((*path, name))}"
        if state.get(name) == "done":
            return
        state[name] = "open"
        for imported in sorted(graph.get(name, set()) & set(graph)):
            visit(imported, (*path, name))
        state[name] = "done"

    for name in graph:
        visit(name, ())
    # The library never imports its command line.
    library = [path for path in PACKAGE_DIR.rglob("*.py") if CLI_DIR not in path.parents]
    assert [p for p in library if any(m.startswith("imputer_asr.cli") for m in _imports(p))] == []


def test_every_command_module_registers_its_own_commands():
    from imputer_asr.cli import data, decode, evaluate, export, lm, train, transcribe

    groups = {
        data: {"synth-corpus", "download", "manifests", "combine-cuts", "bpe", "fbank"},
        train: {"train", "package", "align", "train-imputer"},
        decode: {"decode", "decode-imputer", "score", "peer-pocketsphinx"},
        lm: {"lm", "tune-lm"},
        evaluate: {"plot", "compare", "results", "show-imputation", "probe"},
        transcribe: {"transcribe"},
        export: {"export"},
    }
    for module, commands in groups.items():
        sub = argparse.ArgumentParser().add_subparsers()
        module.add_commands(sub)
        assert set(sub.choices) == commands, module.__name__
        for name, parser in sub.choices.items():  # and holds the function each one runs
            assert parser.get_default("func").__module__ == module.__name__, name
    assert set().union(*groups.values()) == set(_commands(build_parser()))


# --- each default stated once -----------------------------------------------------------------------


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return parser._subparsers._group_actions[0].choices


def _function_owner(module: str, function: str, parameter: str):
    """(read, patch) of a function parameter's default (patched through ``__signature__``)."""

    def owner():
        return getattr(importlib.import_module(module), function)

    def read():
        return inspect.signature(owner()).parameters[parameter].default

    def patch(monkeypatch, value):
        signature = inspect.signature(owner())
        parameters = [
            p.replace(default=value) if p.name == parameter else p for p in signature.parameters.values()
        ]
        monkeypatch.setattr(owner(), "__signature__", signature.replace(parameters=parameters), raising=False)

    return read, patch


def _attribute_owner(module: str, name: str, attribute: str | None = None):
    """(read, patch) of a dataclass field's default (a class attribute) or a module constant."""

    def holder():
        found = importlib.import_module(module)
        return found if attribute is None else getattr(found, name)

    key = name if attribute is None else attribute
    return (lambda: getattr(holder(), key)), (
        lambda monkeypatch, value: monkeypatch.setattr(holder(), key, value)
    )


# command, option, where its default is stated, a value it never has (to see the option follow it)
OWNED_DEFAULTS = [
    ("synth-corpus", "--seed", _function_owner("imputer_asr.data.synth", "render_corpus", "seed"), 17),
    ("synth-corpus", "--jobs", _function_owner("imputer_asr.data.synth", "render_corpus", "num_jobs"), 7),
    (
        "bpe",
        "--vocab-size",
        _function_owner("imputer_asr.data.tokenizer", "train_tokenizer", "vocab_size"),
        99,
    ),
    ("fbank", "--speeds", _function_owner("imputer_asr.data.prepare", "compute_fbank", "speeds"), (0.8, 1.2)),
    (
        "fbank",
        "--max-duration",
        _function_owner("imputer_asr.data.prepare", "compute_fbank", "max_duration"),
        12.5,
    ),
    ("fbank", "--jobs", _function_owner("imputer_asr.data.prepare", "compute_fbank", "num_jobs"), 7),
    (
        "align",
        "--max-duration",
        _function_owner("imputer_asr.training.imputer", "align_cuts", "max_duration"),
        12.5,
    ),
    ("align", "--seed", _function_owner("imputer_asr.training.imputer", "sample_hours", "seed"), 17),
    ("lm", "--order", _function_owner("imputer_asr.lm.ngram", "train_ngram", "order"), 5),
    (
        "lm",
        "--prior-uniform-share",
        _attribute_owner("imputer_asr.lm.ngram", "DEFAULT_PRIOR_UNIFORM_SHARE"),
        0.25,
    ),
    (
        "tune-lm",
        "--steps",
        _function_owner("imputer_asr.decoding.lm_search", "compute_emissions", "steps"),
        3,
    ),
    (
        "results",
        "--section",
        _function_owner("imputer_asr.evaluation.report", "fill_results_section", "section"),
        "x",
    ),
    (
        "show-imputation",
        "--max-frames",
        _function_owner("imputer_asr.evaluation.report", "show_imputation", "max_frames"),
        77,
    ),
    (
        "probe",
        "--fractions",
        _function_owner("imputer_asr.evaluation.probe", "probe_cuts", "fractions"),
        (0.3,),
    ),
    ("probe", "--seed", _function_owner("imputer_asr.evaluation.probe", "probe_cuts", "seed"), 17),
    (
        "probe",
        "--max-duration",
        _function_owner("imputer_asr.evaluation.probe", "probe_cuts", "max_duration"),
        12.5,
    ),
    *(
        (
            command,
            "--beam-size",
            _attribute_owner("imputer_asr.decoding.lm_search", "LMWeights", "beam_size"),
            9,
        )
        for command in ("decode", "decode-imputer", "tune-lm", "transcribe")
    ),
    *(
        (
            command,
            "--beam-size-token",
            _attribute_owner("imputer_asr.decoding.lm_search", "LMWeights", "beam_size_token"),
            9,
        )
        for command in ("decode", "tune-lm")
    ),
    *(
        (
            "transcribe",
            f"--{field}-seconds",
            _attribute_owner("imputer_asr.transcription.transcribe", "TranscribeOptions", f"{field}_seconds"),
            12.5,
        )
        for field in ("window", "overlap")
    ),
]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def _flat_help(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())


@pytest.mark.parametrize(
    ("command", "flag", "owner", "other"), OWNED_DEFAULTS, ids=[f"{c} {f}" for c, f, *_ in OWNED_DEFAULTS]
)
def test_an_option_reads_its_default_from_where_it_is_stated(command, flag, owner, other, monkeypatch):
    read, patch = owner
    as_parsed = list if isinstance(read(), tuple) else (lambda value: value)
    assert _option(_commands(build_parser())[command], flag).default == as_parsed(read())
    # Change the default where it is stated: the option follows, and its help shows the new value.
    patch(monkeypatch, other)
    parser = _commands(build_parser())[command]
    assert _option(parser, flag).default == as_parsed(other)
    assert f"(default: {as_parsed(other)})" in _flat_help(parser)


def test_defaults_that_are_not_options_are_shown_from_their_owners_too(monkeypatch):
    from imputer_asr.data.augment import ChannelAugment
    from imputer_asr.decoding.lm_search import LMWeights

    monkeypatch.setattr(LMWeights, "lm_weight", 0.125)
    monkeypatch.setattr(LMWeights, "word_score", -0.25)
    monkeypatch.setattr(ChannelAugment, "noise_prob", 0.375)
    commands = _commands(build_parser())
    for command in ("decode", "decode-imputer", "transcribe"):
        text = _flat_help(commands[command])
        assert "--lm-weight LM_WEIGHT overrides --lm-weights (without either: 0.125)" in text
        assert "--word-score WORD_SCORE overrides --lm-weights (without either: -0.25)" in text
    assert "the noise effect's rate (default: ChannelAugment's, 0.375)" in _flat_help(commands["fbank"])


def test_every_option_with_a_default_shows_it_in_its_help():
    """Every optional flag with a value of its own (not a switch, not None, not empty) shows it."""
    missing = []
    for name, parser in _commands(build_parser()).items():
        text = _flat_help(parser)
        for action in parser._actions:
            default = action.default
            if not action.option_strings or action.required or isinstance(action, argparse._StoreTrueAction):
                continue
            if default is None or default is argparse.SUPPRESS or default in ("", []):
                continue
            if f"(default: {default})" not in text and f"default: {default}" not in text:
                missing.append(f"{name} {action.option_strings[0]}={default!r}")
    assert missing == []
    # A default of 0 is a value like any other (and False, a switch's, is not shown).
    assert "--seed SEED seed of the sentences and voices (default: 0)" in _flat_help(
        _commands(build_parser())["synth-corpus"]
    )


def test_verbose_given_after_the_command_turns_on_debug_logging(tmp_path, monkeypatch, capsys):
    """main() configures logging: INFO, or DEBUG with -v on either side of the command."""
    from imputer_asr.cli import main

    score = ["score", "--hyps", str(tmp_path / "none.jsonl"), "--out-dir", str(tmp_path), "--name", "n"]
    level = logging.root.level
    monkeypatch.setattr(logging.root, "handlers", [])  # basicConfig acts on a root without handlers
    try:
        for argv, want in (
            (score, logging.INFO),
            ([*score, "-v"], logging.DEBUG),
            (["-v", *score], logging.DEBUG),
        ):
            logging.root.handlers.clear()
            assert main(argv) == 1  # the missing file: one error line, exit status 1
            assert logging.root.level == want, argv
            assert "none.jsonl: no such file" in capsys.readouterr().err
    finally:
        logging.root.handlers.clear()
        logging.root.setLevel(level)


def test_every_command_keeps_the_kernels_of_many_batch_shapes_unless_the_user_set_the_cache(
    tmp_path, monkeypatch
):
    """main() sizes oneDNN's kernel cache before a command runs (a default cache rebuilt kernels at
    every update of a bucketed training run); a capacity in the environment is the user's and stays."""
    from imputer_asr.cli import main
    from imputer_asr.cli.runtime import ONEDNN_CACHE_CAPACITY

    score = ["score", "--hyps", str(tmp_path / "none.jsonl"), "--out-dir", str(tmp_path), "--name", "n"]
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert main(score) == 1
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_CACHE_CAPACITY) != "1024"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "77")
    assert main(score) == 1
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "77"
