"""The command line's conventions: --version, -v on either side of the command, defaults in every
option's help, user commands listed apart from the recipe stages."""

from __future__ import annotations

import re

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
