"""Data-parallel training: 2 processes (gloo, CPU) take the same updates as 1 process that
accumulates the same 2 batches per update.

Why they are equal: lhotse's samplers give rank r of W the batches r, W + r, 2W + r, ... of the
one shuffle every rank draws, so update s sees batches 2s and 2s + 1 in both runs; the loss of an
update is divided by the tokens of all its batches on all ranks (imputer_asr.training.distributed), so the
summed gradient is the same. Dropout and SpecAugment are off: their random draws differ by rank.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from lhotse import CutSet

from imputer_asr.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.training.checkpoint import load_file
from imputer_asr.training.loop import fit


def _config(model: ModelConfig, accum_grad: int) -> ExperimentConfig:
    data = DataConfig(max_duration=5.0, num_workers=0, spec_augment=False)
    train = TrainConfig(
        epochs=1, steps_per_epoch=2, warmup_steps=1, log_every=1, num_threads=1, accum_grad=accum_grad
    )
    return ExperimentConfig(model=model, data=data, train=train)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, cfg, bpe: Path, cuts: tuple[Path, Path], exp: Path):
    """One torchrun-like process: the environment torchrun would set, then fit()."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    train, dev = (CutSet.from_file(p).to_eager() for p in cuts)
    fit(cfg, exp, train, dev, Tokenizer.from_file(bpe))


def test_two_processes_match_one_with_accumulation(tiny_corpus, small_model_config, tmp_path):
    tok = tiny_corpus.tokenizer
    bpe = tiny_corpus.manifest_dir.parent / "bpe.model"
    paths = (tiny_corpus.fbank_cuts("train"), tiny_corpus.fbank_cuts("dev"))
    train, dev = (CutSet.from_file(p).to_eager() for p in paths)

    model = small_model_config(tok, dropout=0.0)
    start = time.perf_counter()
    single = fit(_config(model, accum_grad=2), tmp_path / "one", train, dev, tok)
    one_seconds = time.perf_counter() - start

    start = time.perf_counter()
    cfg = _config(model, accum_grad=1)
    mp.spawn(_rank_main, args=(2, _free_port(), cfg, bpe, paths, tmp_path / "two"), nprocs=2, join=True)
    two_seconds = time.perf_counter() - start
    print(f"\n1 process, accum_grad=2: {one_seconds:.1f} s; 2 processes (gloo): {two_seconds:.1f} s")

    state = load_file(tmp_path / "two" / "epoch-1.pt")
    assert state["clock"]["step"] == 2
    # The checkpoint holds the bare model's weights (no DDP "module." prefix): any number of
    # processes resumes from it.
    assert set(state["model"]) == set(single.state_dict())
    torch.manual_seed(cfg.train.seed)  # fit() seeds so before building its model
    initial = {n: p.detach() for n, p in ImputerModel(cfg.model).named_parameters()}
    moved, worst = 0.0, 0.0
    for name, value in single.named_parameters():
        value = value.detach()
        moved = max(moved, float((value - initial[name]).abs().max()))
        worst = max(worst, float((value - state["model"][name]).abs().max()))
    print(f"largest parameter change {moved:.2e}, largest 1-vs-2-process difference {worst:.2e}")
    assert moved > 1e-3  # the updates did something
    assert worst < 1e-5
    log_one = (tmp_path / "one" / "train_log.jsonl").read_text()
    assert (tmp_path / "two" / "train_log.jsonl").read_text().count('"train"') == log_one.count('"train"')


def test_bad_parallel_settings_are_refused():
    from imputer_asr.training.distributed import init_parallel

    with pytest.raises(ValueError, match="accum_grad"):
        init_parallel(TrainConfig(accum_grad=0))
    assert init_parallel(TrainConfig()).world_size == 1
    assert torch.device("cpu") == init_parallel(TrainConfig()).device


def test_time_budget_is_refused_under_several_processes(monkeypatch):
    """Ranks would each read their own clock and stop at different updates, leaving DDP waiting;
    the budget is refused before the process group is joined."""
    from imputer_asr.training.distributed import init_parallel

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="minutes_per_epoch needs a single process"):
        init_parallel(TrainConfig(minutes_per_epoch=3.0))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_parallel(TrainConfig(minutes_per_epoch=3.0)).world_size == 1


def test_bf16_falls_back_to_float32_where_the_cpu_emulates_it(monkeypatch, caplog):
    """On a CPU without AVX512-BF16 and AMX bfloat16 autocast is emulated (slower than float32):
    train.bf16 then trains in float32 and says so; with either, it autocasts."""
    from imputer_asr.config import ModelConfig
    from imputer_asr.model.conformer import ImputerModel
    from imputer_asr.training.distributed import Parallel, ParallelObjective

    cfg = ModelConfig(vocab_size=5, mask_id=5, d_model=16, num_heads=2, ff_dim=32, num_layers=1)
    model = ImputerModel(cfg)
    seen: list[bool] = []

    def objective(model, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return model.output.weight.sum(), 1

    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        caplog.clear()
        runner = ParallelObjective(model, objective, Parallel(), bf16=True)
        runner.backward({}, divisor=1.0)
        assert seen[-1] is expected
        assert ("training in float32" in caplog.text) is not expected
    ParallelObjective(model, objective, Parallel(), bf16=False).backward({}, divisor=1.0)
    assert seen[-1] is False


# --- one process, a batch shared among threads -----------------------------------------------------


def _shared_setup(dropout: float = 0.0):
    """A small model, a random batch of 5 utterances and the CTC objective, counted per thread."""
    import threading

    from imputer_asr.training.distributed import draws_no_random_numbers
    from imputer_asr.training.loop import ctc_objective

    cfg = ModelConfig(
        vocab_size=7, mask_id=7, d_model=16, num_heads=2, ff_dim=32, num_layers=2, dropout=dropout
    )
    torch.manual_seed(0)
    model = ImputerModel(cfg).train()
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([96, 80, 64, 64, 40])
    batch = {
        "features": torch.randn(5, 96, cfg.input_dim, generator=g),
        "feature_lengths": lengths,
        "targets": torch.randint(1, 7, (5, 6), generator=g),
        "target_lengths": torch.tensor([6, 5, 4, 3, 2]),
        "durations": [0.96, 0.8, 0.64, 0.64, 0.4],
        "unreadable": [],
    }
    calls: list[tuple[str, int, bool]] = []

    @draws_no_random_numbers
    def objective(model, part):
        calls.append(
            (threading.current_thread().name, len(part["feature_lengths"]), torch.is_autocast_enabled("cpu"))
        )
        return ctc_objective(model, part)

    return model, batch, objective, calls


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def test_a_batch_shared_among_threads_gives_the_whole_batchs_gradient(monkeypatch):
    from imputer_asr.training.distributed import Parallel, ParallelObjective

    model, batch, objective, calls = _shared_setup()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # what the runner reads at construction
    shared = ParallelObjective(model, objective, Parallel(), share_batch=True)
    whole = ParallelObjective(model, objective, Parallel(), share_batch=False)
    monkeypatch.undo()
    assert shared.share_batch and not whole.share_batch
    threads = torch.get_num_threads()
    loss, tokens = shared.backward(batch, divisor=7.0)
    assert torch.get_num_threads() == threads  # restored after the groups
    assert sorted(size for _, size, _ in calls) == [2, 3] and all(
        n.startswith("train-rows") for n, _, _ in calls
    )
    by_groups = _grads(model)
    again = shared.backward(batch, divisor=7.0)
    assert again == (loss, tokens)
    assert all(torch.equal(a, b) for a, b in zip(by_groups, _grads(model), strict=True))  # the same bits
    calls.clear()
    whole_loss, whole_tokens = whole.backward(batch, divisor=7.0)
    assert len(calls) == 1 and whole_tokens == tokens == 20
    assert abs(whole_loss - loss) < 1e-3 * abs(whole_loss)
    for a, b in zip(by_groups, _grads(model), strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_the_imputer_objective_shares_a_batch_with_the_whole_batchs_draws(monkeypatch):
    """The demo's Imputer objective (learner roll-in, own greedy alignments, CTC term) draws its
    random numbers for the whole batch before the rows are shared: the shared gradient is the
    whole batch's, a seeded run repeats it bit for bit, and the roll-in's switch to eval mode does
    not outlive the update."""
    from imputer_asr.training.distributed import Parallel, ParallelObjective
    from imputer_asr.training.imputer import imputer_objective, learner_alignment

    model, batch, _, _ = _shared_setup()
    alignments = learner_alignment(
        model, batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"]
    )
    batch = {**batch, "alignments": alignments}
    objective = imputer_objective(block_size=4, ctc_weight=0.5, learner_fraction=0.5, greedy_fraction=0.5)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    shared = ParallelObjective(model, objective, Parallel(), share_batch=True)
    whole = ParallelObjective(model, objective, Parallel(), share_batch=False)
    monkeypatch.undo()
    assert shared.share_batch

    def run(runner, seed):
        torch.manual_seed(seed)
        loss, tokens = runner.backward(batch, divisor=7.0)
        return loss, tokens, _grads(model)

    loss, tokens, by_halves = run(shared, 4)
    assert model.training
    again = run(shared, 4)
    assert again[:2] == (loss, tokens)
    assert all(torch.equal(a, b) for a, b in zip(by_halves, again[2], strict=True))
    whole_loss, whole_tokens, by_batch = run(whole, 4)
    assert whole_tokens == tokens and abs(whole_loss - loss) < 1e-3 * abs(whole_loss)
    for a, b in zip(by_halves, by_batch, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    other_loss, _, _ = run(whole, 5)  # the draws matter: other masks, another loss
    assert abs(other_loss - whole_loss) > 1e-3 * abs(whole_loss)


def test_each_group_autocasts_where_the_runner_does(monkeypatch):
    from imputer_asr.training.distributed import Parallel, ParallelObjective

    model, batch, objective, calls = _shared_setup()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    runner = ParallelObjective(model, objective, Parallel(), bf16=True, share_batch=True)
    monkeypatch.undo()
    runner.backward(batch, divisor=1.0)
    assert len(calls) == 2 and all(autocast for _, _, autocast in calls)


def test_a_batch_is_not_shared_where_a_run_would_not_repeat(monkeypatch):
    from imputer_asr.training.distributed import Parallel, ParallelObjective
    from imputer_asr.training.loop import ctc_objective

    model, _, objective, _ = _shared_setup()
    dropout_model, _, _, _ = _shared_setup(dropout=0.1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert ParallelObjective(model, ctc_objective, Parallel(), share_batch=True).share_batch
    assert not ParallelObjective(
        model, lambda m, b: ctc_objective(m, b), Parallel(), share_batch=True
    ).share_batch
    assert not ParallelObjective(dropout_model, objective, Parallel(), share_batch=True).share_batch
    monkeypatch.setattr("imputer_asr.training.distributed.DistributedDataParallel", lambda *a, **k: None)
    assert not ParallelObjective(model, objective, Parallel(world_size=2), share_batch=True).share_batch
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not ParallelObjective(model, objective, Parallel(), share_batch=True).share_batch
