"""Faults injected into training: kill -9 at an update, inside a checkpoint write, from outside at a
random moment; a truncated newest checkpoint. The oracle is an uninterrupted run: the resumed run's
final weights must equal its weights exactly."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lhotse import CutSet

from imputer_asr.config import DataConfig, ExperimentConfig, TrainConfig, save_config
from imputer_asr.training.checkpoint import epoch_checkpoints, load_file, step_checkpoints
from imputer_asr.training.loop import fit

pytestmark = pytest.mark.faults

# Checkpoint after every update, so a kill at any update has a checkpoint before it.
EVERY_UPDATE = 1e-9

# Runs fit() in a fresh process and kills it with SIGKILL at the chosen point:
#   update N: right after the N-th update this process makes, before its checkpoint;
#   save N: half-way through writing the N-th checkpoint file.
_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from lhotse import CutSet
    from imputer_asr.training import loop as train
    from imputer_asr.config import load_config
    from imputer_asr.data.tokenizer import Tokenizer

    config, exp_dir, train_cuts, dev_cuts, bpe, where, n = sys.argv[1:]
    n, calls = int(n), [0]

    def kill_on_nth_call():
        calls[0] += 1
        return calls[0] == n

    if where == "update":
        real_update = train._update

        def _update(*args):
            out = real_update(*args)
            if kill_on_nth_call():
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        train._update = _update
    else:
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if kill_on_nth_call():
                f.write(b"half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    cuts = [CutSet.from_file(p).to_eager() for p in (train_cuts, dev_cuts)]
    train.fit(load_config(config), Path(exp_dir), *cuts, Tokenizer.from_file(Path(bpe)), resume=True)
    """
)


def _config(model_cfg, **train_fields) -> ExperimentConfig:
    train = TrainConfig(epochs=2, warmup_steps=2, log_every=1, num_threads=2, checkpoint_minutes=EVERY_UPDATE)
    return ExperimentConfig(
        model=model_cfg,
        data=DataConfig(max_duration=15.0, num_workers=0),
        train=replace(train, **train_fields),
    )


@pytest.fixture(scope="module")
def model_cfg(tiny_corpus, small_model_config):
    return small_model_config(tiny_corpus.tokenizer)


@pytest.fixture(scope="module")
def cuts(tiny_corpus):
    return tuple(CutSet.from_file(tiny_corpus.fbank_cuts(p)).to_eager() for p in ("train", "dev"))


@pytest.fixture(scope="module")
def straight(tiny_corpus, model_cfg, cuts, tmp_path_factory):
    """The uninterrupted run: its final weights and number of updates."""
    exp = tmp_path_factory.mktemp("straight")
    model = fit(_config(model_cfg), exp, *cuts, tiny_corpus.tokenizer)
    steps = json.loads((exp / "train.done").read_text())["steps"]
    return {k: v.clone() for k, v in model.state_dict().items()}, steps


def _killed_run(tiny_corpus, cfg, exp: Path, where: str, n: int) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    config, script = exp.parent / f"{exp.name}.json", exp.parent / "killer.py"
    save_config(cfg, config)
    script.write_text(_KILLER)
    paths = [tiny_corpus.fbank_cuts("train"), tiny_corpus.fbank_cuts("dev")]
    bpe = tiny_corpus.fbank_dir.parent / "bpe.model"
    args = [sys.executable, str(script), str(config), str(exp), *map(str, paths), str(bpe), where, str(n)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def _assert_same_weights(model, want: dict) -> None:
    got = model.state_dict()
    assert set(got) == set(want)
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def _kill_points(steps: int) -> list[tuple[str, int]]:
    """Two random updates and a random checkpoint write (seeded: a failure reproduces)."""
    rng = random.Random(steps)
    return [
        ("update", rng.randint(1, steps - 1)),
        ("update", rng.randint(1, steps - 1)),
        ("save", rng.randint(2, steps)),
    ]


@pytest.mark.parametrize("point", range(3))
def test_kill_at_a_random_point_then_resume_equals_the_uninterrupted_run(
    tiny_corpus, model_cfg, cuts, straight, tmp_path, point, fault_tally
):
    want, steps = straight
    assert steps >= 4  # two epochs of several updates: kills land mid-epoch and at epoch ends
    where, n = _kill_points(steps)[point]
    exp = tmp_path / "exp"
    _killed_run(tiny_corpus, _config(model_cfg), exp, where, n)
    assert not (exp / "train.done").exists()
    left = step_checkpoints(exp) + epoch_checkpoints(exp)
    if n > 1:
        assert left  # something to resume from
    model = fit(_config(model_cfg), exp, *cuts, tiny_corpus.tokenizer, resume=True)
    _assert_same_weights(model, want)
    assert step_checkpoints(exp) == []  # the last epoch checkpoint superseded them
    assert [p.name for p in epoch_checkpoints(exp)] == ["epoch-1.pt", "epoch-2.pt"]
    assert not list(exp.glob(".*.tmp"))
    fault_tally(injected=1, resumed=1, checked=len(epoch_checkpoints(exp)))


def test_a_truncated_newest_checkpoint_is_reported_and_the_previous_one_used(
    tiny_corpus, model_cfg, cuts, straight, tmp_path, caplog, fault_tally
):
    want, steps = straight
    exp = tmp_path / "exp"
    _killed_run(tiny_corpus, _config(model_cfg, keep_checkpoints=3), exp, "update", steps - 1)
    newest = (step_checkpoints(exp) or epoch_checkpoints(exp))[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # as a filesystem without atomic rename might leave it
    with caplog.at_level("WARNING", logger="imputer_asr.training.loop"):
        model = fit(_config(model_cfg), exp, *cuts, tiny_corpus.tokenizer, resume=True)
    assert f"{newest} cannot be resumed from" in caplog.text
    _assert_same_weights(model, want)
    fault_tally(injected=2, resumed=1, checked=1)


def test_no_loadable_checkpoint_is_a_clear_error(tiny_corpus, model_cfg, cuts, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "checkpoint-3.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"no checkpoint can be resumed from \(checkpoint-3.pt\)"):
        fit(_config(model_cfg), exp, *cuts, tiny_corpus.tokenizer, resume=True)


def test_mid_epoch_checkpoints_follow_the_clock_and_keep_the_newest(
    tiny_corpus, model_cfg, cuts, straight, tmp_path, monkeypatch
):
    """On a fake clock of 1 s per update, checkpoint_minutes 3/60 writes one every 3 updates; the
    newest 2 are kept until the epoch's checkpoint supersedes them."""
    from imputer_asr.training import loop as train_module

    ticks = iter(range(10**6))
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    seen: list[list[str]] = []
    real_save = train_module._save_epoch

    def save(exp_dir, *args):
        real_save(exp_dir, *args)
        seen.append([p.name for p in step_checkpoints(exp_dir)])

    monkeypatch.setattr(train_module, "_save_epoch", save)
    fit(
        _config(model_cfg, checkpoint_minutes=3 / 60, epochs=1),
        tmp_path / "exp",
        *cuts,
        tiny_corpus.tokenizer,
    )
    mid = [names for names in seen[:-1]]
    assert mid, "no mid-epoch checkpoint was written"
    steps = [[int(n.split("-")[1].split(".")[0]) for n in names] for names in mid]
    assert steps[0] == [3] and all(s[-1] % 3 == 0 for s in steps)
    assert all(len(s) <= 2 for s in steps) and seen[-1] == []
    state = load_file(tmp_path / "exp" / "epoch-1.pt")
    assert state["clock"]["epoch_steps"] == 0


def test_bad_checkpoint_settings_are_refused(tiny_corpus, model_cfg, cuts, tmp_path):
    for fields, match in (
        ({"checkpoint_minutes": -1.0}, "checkpoint_minutes"),
        ({"keep_checkpoints": 0}, "keep"),
    ):
        with pytest.raises(ValueError, match=match):
            fit(_config(model_cfg, **fields), tmp_path / "exp", *cuts, tiny_corpus.tokenizer)


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_from_outside_at_a_random_moment_then_the_same_command_finishes(
    tiny_corpus, model_cfg, cuts, straight, tmp_path, seed, fault_tally
):
    """The user's case: `imputer-asr train ... --resume` killed with SIGKILL at a random moment of its
    run; the same command run again finishes the training, with the uninterrupted run's weights."""
    want, _ = straight
    exp = tmp_path / "exp"
    config = tmp_path / "config.json"
    save_config(_config(model_cfg), config)
    bpe = tiny_corpus.fbank_dir.parent / "bpe.model"
    command = [
        sys.executable,
        "-m",
        "imputer_asr.cli",
        "train",
        "--config",
        str(config),
        "--exp-dir",
        str(exp),
    ]
    command += ["--resume", "--bpe", str(bpe), "--train-cuts", str(tiny_corpus.fbank_cuts("train"))]
    command += ["--dev-cuts", str(tiny_corpus.fbank_cuts("dev"))]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Wait until training is under way (a checkpoint exists), then a random moment more.
    deadline = time.monotonic() + 240
    while not step_checkpoints(exp) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = load_file(epoch_checkpoints(exp)[-1])["model"]
    for name, value in want.items():
        assert torch.equal(final[name], value), name
    fault_tally(injected=1, resumed=1, checked=1)


def _nan_on(calls: set[int], objective=None):
    """ctc_objective whose loss is NaN on the given calls (1-based), as a bad batch would make it."""
    from imputer_asr.training.loop import ctc_objective

    count = [0]

    def objective_(model, batch):
        count[0] += 1
        loss, tokens = ctc_objective(model, batch)
        return (loss * float("nan") if count[0] in calls else loss), tokens

    return objective_


def _batches(tiny_corpus, cuts, n: int) -> list[dict]:
    from imputer_asr.data.dataset import make_loader

    loader = make_loader(
        cuts[0], tiny_corpus.tokenizer, DataConfig(max_duration=8.0, num_workers=0), train=True
    )
    return list(itertools.islice(loader, n))


def test_a_non_finite_update_is_skipped_as_if_its_batch_were_absent(
    tiny_corpus, model_cfg, cuts, tmp_path, fault_tally
):
    """Constant lr and no dropout: training on b1, b2 (NaN loss), b3 gives exactly the weights of
    training on b1, b3; the skip is logged with b2's cut ids."""
    from imputer_asr.model.conformer import ImputerModel
    from imputer_asr.training.loop import _Clock, _JsonLog, ctc_objective, train_one_epoch

    cfg = TrainConfig(warmup_steps=0, final_lr_fraction=1.0, log_every=1)
    b1, b2, b3 = _batches(tiny_corpus, cuts, 3)
    runs = {}
    for name, batches, objective in (
        ("skip", [b1, b2, b3], _nan_on({2})),
        ("absent", [b1, b3], ctc_objective),
    ):
        torch.manual_seed(0)
        model = ImputerModel(replace(model_cfg, dropout=0.0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr)
        clock = _Clock(epoch=1)
        log_path = tmp_path / f"{name}.jsonl"
        train_one_epoch(model, optimizer, batches, objective, clock, 100, cfg, _JsonLog(log_path))
        runs[name] = (model, clock, [json.loads(line) for line in log_path.open()])
    (skip, skip_clock, skip_log), (absent, _, _) = runs["skip"], runs["absent"]
    _assert_same_weights(skip, absent.state_dict())
    assert skip_clock.skipped == 1 and skip_clock.step == 3
    assert [r for r in skip_log if r["kind"] == "skipped"] == [
        {"kind": "skipped", "epoch": 1, "step": 2, "cut_ids": b2["cut_ids"]}
    ]
    fault_tally(injected=1, checked=1)


def test_too_many_non_finite_updates_in_a_row_stop_the_run_and_name_the_cuts(
    tiny_corpus, model_cfg, cuts, tmp_path, fault_tally
):
    exp = tmp_path / "exp"
    cfg = _config(model_cfg, max_skipped_updates=3, checkpoint_minutes=0.0)
    with pytest.raises(RuntimeError, match="3 updates in a row had a non-finite gradient") as caught:
        fit(cfg, exp, *cuts, tiny_corpus.tokenizer, objective=_nan_on(set(range(1, 100))))
    names = set(str(caught.value).split("Their cuts: ")[1].replace(";", " ").split())
    assert names and names <= {c.id for c in cuts[0]}
    assert not epoch_checkpoints(exp) and not step_checkpoints(exp)  # nothing non-finite was saved
    fault_tally(injected=3, checked=1)


def test_a_second_training_process_on_the_same_exp_dir_is_refused(
    tiny_corpus, model_cfg, cuts, tmp_path, fault_tally
):
    from imputer_asr.training.loop import _lock_exp_dir

    exp = tmp_path / "exp"
    exp.mkdir()
    holder = _lock_exp_dir(exp)  # another training of this directory, still running
    try:
        with pytest.raises(ValueError, match=rf"being trained by another process \(pid {os.getpid()}"):
            fit(_config(model_cfg, epochs=1), exp, *cuts, tiny_corpus.tokenizer)
        assert not epoch_checkpoints(exp)
    finally:
        holder.close()
    fit(_config(model_cfg, epochs=1), exp, *cuts, tiny_corpus.tokenizer)  # free again
    assert [p.name for p in epoch_checkpoints(exp)] == ["epoch-1.pt"]
    fault_tally(injected=1, checked=1)


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")]
)
def test_a_full_disk_or_read_only_directory_names_the_checkpoint_and_keeps_the_previous_one(
    tiny_corpus, model_cfg, cuts, tmp_path, monkeypatch, code, reason, fault_tally
):
    """The write fails after part of the file is out (a full disk) or at once (read-only; simulated,
    since root may write to a directory without write permission)."""
    from imputer_asr.files import torch_save_atomic

    exp = tmp_path / "exp"
    fit(_config(model_cfg, epochs=1, checkpoint_minutes=0.0), exp, *cuts, tiny_corpus.tokenizer)
    before = (exp / "epoch-1.pt").read_bytes()
    real_save = torch.save

    def failing(obj, f, *args, **kwargs):
        if code == errno.ENOSPC:
            real_save(obj, f, *args, **kwargs)
        raise OSError(code, reason)

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError, match=rf"epoch-1.pt: cannot write it \({reason}\); the previous one"):
        torch_save_atomic({"model": {}, "config": {}}, exp / "epoch-1.pt")
    assert (exp / "epoch-1.pt").read_bytes() == before
    with pytest.raises(OSError, match=rf"checkpoint-\d+.pt: cannot write it \({reason}\)$"):
        fit(_config(model_cfg, epochs=2), exp, *cuts, tiny_corpus.tokenizer, resume=True)
    assert (exp / "epoch-1.pt").read_bytes() == before and not list(exp.glob(".*.tmp"))
    fault_tally(injected=2, checked=1)


def _rank_killed_at(rank: int, port: int, cfg_path: str, exp: str, paths, bpe: str, kill_at: int) -> None:
    """One of 2 gloo processes (the environment torchrun sets), training with --resume; rank 0
    SIGKILLs itself right after its ``kill_at``-th update (0: never)."""
    from imputer_asr.config import load_config
    from imputer_asr.data.tokenizer import Tokenizer
    from imputer_asr.training import loop as train

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    if rank == 0 and kill_at:
        real_update, calls = train._update, [0]

        def update(*args):
            out = real_update(*args)
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        train._update = update
    cuts = [CutSet.from_file(p).to_eager() for p in paths]
    train.fit(load_config(Path(cfg_path)), Path(exp), *cuts, Tokenizer.from_file(Path(bpe)), resume=True)


def _two_processes(cfg_path: Path, exp: Path, tiny_corpus, kill_at: int = 0) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = [str(tiny_corpus.fbank_cuts("train")), str(tiny_corpus.fbank_cuts("dev"))]
    bpe = str(tiny_corpus.fbank_dir.parent / "bpe.model")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_killed_at, args=(r, port, str(cfg_path), str(exp), paths, bpe, kill_at))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    procs[0].join(timeout=300)
    if kill_at:  # rank 1 waits for rank 0 in a collective that never comes
        assert procs[0].exitcode == -signal.SIGKILL
        procs[1].kill()
    procs[1].join(timeout=300)
    if not kill_at:
        assert [p.exitcode for p in procs] == [0, 0]


def test_two_processes_killed_at_a_random_update_resume_to_the_uninterrupted_weights(
    tiny_corpus, model_cfg, tmp_path, fault_tally
):
    """Under torchrun every rank resumes at the same batch: 2 gloo processes killed at a random update
    (dropout and SpecAugment on: each rank's draws are seeded by update and rank) finish with the
    weights of 2 processes that were never interrupted."""
    cfg_path = tmp_path / "config.json"
    save_config(_config(model_cfg), cfg_path)
    _two_processes(cfg_path, tmp_path / "straight", tiny_corpus)
    want = load_file(tmp_path / "straight" / "epoch-2.pt")["model"]
    steps = load_file(tmp_path / "straight" / "epoch-2.pt")["clock"]["step"]
    assert steps >= 3
    kill_at = random.Random(steps).randint(1, steps - 1)
    exp = tmp_path / "killed"
    _two_processes(cfg_path, exp, tiny_corpus, kill_at=kill_at)
    assert not (exp / "train.done").exists()
    _two_processes(cfg_path, exp, tiny_corpus)
    got = load_file(exp / "epoch-2.pt")["model"]
    for name, value in want.items():
        assert torch.equal(got[name], value), f"{name} differs after a kill at update {kill_at}"
    fault_tally(injected=1, resumed=1, checked=1)


def test_a_kill_in_a_further_pass_over_the_data_resumes_to_the_uninterrupted_weights(
    tiny_corpus, model_cfg, cuts, tmp_path, caplog, fault_tally
):
    """An epoch of more updates than its data holds goes on over a second pass and a third, each its
    own shuffle. Killed right after the first pass's last checkpoint, and at a random update of a
    later pass, a run resumes where it stopped and ends with the uninterrupted run's weights."""
    tok = tiny_corpus.tokenizer
    fit(_config(model_cfg, epochs=1), tmp_path / "one-pass", *cuts, tok)
    per_pass = json.loads((tmp_path / "one-pass" / "train.done").read_text())["steps"]
    assert per_pass >= 3
    cfg = _config(model_cfg, epochs=1, steps_per_epoch=2 * per_pass + 1)
    with caplog.at_level("INFO", logger="imputer_asr.training.loop"):
        straight = fit(cfg, tmp_path / "straight", *cuts, tok)
    assert caplog.text.count("the data ran out") == 2
    want = {k: v.clone() for k, v in straight.state_dict().items()}
    # Killed at update n, a run resumes from the checkpoint after update n - 1.
    for n in (per_pass + 1, random.Random(per_pass).randint(per_pass + 2, 2 * per_pass)):
        exp = tmp_path / f"killed-{n}"
        _killed_run(tiny_corpus, cfg, exp, "update", n)
        clock = load_file(step_checkpoints(exp)[-1])["clock"]
        if n == per_pass + 1:  # at the end of the first pass: the resumed run starts the second
            assert (clock["epoch_pass"], clock["pass_steps"]) == (0, per_pass)
        else:
            assert clock["epoch_pass"] >= 1 and 0 < clock["pass_steps"] < clock["epoch_steps"]
        _assert_same_weights(fit(cfg, exp, *cuts, tok, resume=True), want)
        fault_tally(injected=1, resumed=1, checked=1)
