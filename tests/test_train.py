"""fit(): checkpoints every epoch, resumes exactly where it stopped, refuses to overwrite."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from lhotse import CutSet

from imputer_asr.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from imputer_asr.data.dataset import make_loader
from imputer_asr.decoding.ctc import decode_cuts
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.training import loop as train_module
from imputer_asr.training.checkpoint import epoch_checkpoints, load_file
from imputer_asr.training.distributed import ParallelObjective
from imputer_asr.training.loop import _Clock, _JsonLog, ctc_objective, fit, train_one_epoch, validate


def _config(model: ModelConfig, epochs: int) -> ExperimentConfig:
    data = DataConfig(max_duration=15.0, num_workers=0)
    train = TrainConfig(epochs=epochs, warmup_steps=2, log_every=1, num_threads=2)
    return ExperimentConfig(model=model, data=data, train=train)


@pytest.fixture(scope="module")
def model_cfg(tiny_corpus, small_model_config) -> ModelConfig:
    return small_model_config(tiny_corpus.tokenizer)


@pytest.fixture(scope="module")
def cuts(tiny_corpus):
    train = CutSet.from_file(tiny_corpus.fbank_cuts("train")).to_eager()
    dev = CutSet.from_file(tiny_corpus.fbank_cuts("dev")).to_eager()
    return train, dev


def test_resume_continues_exactly(tiny_corpus, model_cfg, cuts, tmp_path):
    tok = tiny_corpus.tokenizer
    train, dev = cuts
    fit(_config(model_cfg, 2), tmp_path / "straight", train, dev, tok)

    fit(_config(model_cfg, 1), tmp_path / "resumed", train, dev, tok)
    # A second run asked for 2 epochs picks up after epoch 1. The schedule length differs between
    # the two calls (1 vs 2 epochs), so compare against a straight run of the same total length
    # only through the final epoch's data order and the checkpoint bookkeeping.
    resumed = fit(_config(model_cfg, 2), tmp_path / "resumed", train, dev, tok, resume=True)

    names = [p.name for p in epoch_checkpoints(tmp_path / "resumed")]
    assert names == ["epoch-1.pt", "epoch-2.pt"]
    state = load_file(tmp_path / "resumed" / "epoch-2.pt")
    assert state["clock"]["epoch"] == 2
    assert state["clock"]["step"] == load_file(tmp_path / "straight" / "epoch-2.pt")["clock"]["step"]
    records = [json.loads(line) for line in (tmp_path / "resumed" / "train_log.jsonl").open()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["epoch"] for r in valid] == [1, 2]
    assert valid[1]["wall_time"] >= valid[0]["wall_time"]  # the clock carries across the resume
    assert (tmp_path / "resumed" / "train.done").exists()
    # The resumed call trained epoch 2 (its weights moved from epoch 1's) and returned what it saved.
    epoch1 = load_file(tmp_path / "resumed" / "epoch-1.pt")["model"]
    final = {k: v.cpu() for k, v in resumed.state_dict().items()}
    assert any(not torch.equal(final[k], epoch1[k]) for k in final)
    assert all(torch.equal(final[k], state["model"][k]) for k in final)


@pytest.mark.parametrize("dropout", [0.1, 0.0], ids=["whole-batches", "batches-shared-by-2-threads"])
def test_resume_is_bitwise_identical_when_nothing_changes(
    tiny_corpus, model_cfg, cuts, tmp_path, monkeypatch, dropout
):
    """Stopping after epoch 1 and resuming gives the same weights as never stopping; without
    dropout each batch is shared among the 2 threads (train.share_batch), with it not."""
    shared = []
    backward_shared = ParallelObjective._backward_shared

    def counted(self, *args):
        shared.append(len(args[0]["feature_lengths"]))
        return backward_shared(self, *args)

    monkeypatch.setattr(ParallelObjective, "_backward_shared", counted)
    tok = tiny_corpus.tokenizer
    train, dev = cuts
    cfg = _config(replace(model_cfg, dropout=dropout), 2)
    straight = fit(cfg, tmp_path / "a", train, dev, tok)
    fit(cfg, tmp_path / "b", train, dev, tok)
    (tmp_path / "b" / "epoch-2.pt").unlink()  # as if killed during epoch 2
    (tmp_path / "b" / "train.done").unlink()
    resumed = fit(cfg, tmp_path / "b", train, dev, tok, resume=True)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert bool(shared) == (dropout == 0.0)


def test_refuses_to_overwrite_without_resume(tiny_corpus, model_cfg, cuts, tmp_path):
    tok = tiny_corpus.tokenizer
    train, dev = cuts
    fit(_config(model_cfg, 1), tmp_path / "exp", train, dev, tok)
    with pytest.raises(ValueError, match="--resume"):
        fit(_config(model_cfg, 2), tmp_path / "exp", train, dev, tok, resume=False)


def test_ctc_validation_in_one_pass_equals_loss_then_decoding(tiny_corpus, model_cfg, cuts):
    """validate() without a decoder takes the CTC loss and greedy search from one forward pass; it must
    report what the loss pass plus a separate greedy decoding of dev report."""
    torch.manual_seed(3)
    tok = tiny_corpus.tokenizer
    model = ImputerModel(model_cfg)
    model.output.bias.data[tok.blank_id] = -2.0  # a random model that emits tokens, so WER < 100 %
    _, dev = cuts
    one_pass = validate(model, tok, dev, ctc_objective)
    two_passes = validate(model, tok, dev, ctc_objective, lambda m, t, c: decode_cuts(m, t, c)[0])
    assert one_pass == pytest.approx(two_passes, rel=1e-6)
    assert 0 < one_pass["cer"] and one_pass["loss"] > 0


def test_time_budget_ends_each_epoch_at_its_share_of_the_clock(
    tiny_corpus, model_cfg, cuts, monkeypatch, tmp_path
):
    """On a fake clock where every update takes exactly 1 s, 2 epochs of 5 s each end after 5 updates
    although the data holds 40, and the cosine follows the clock: the update that starts with half
    the 10-s budget spent runs at the midpoint of peak and floor."""
    ticks = itertools.count()
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    tok = tiny_corpus.tokenizer
    train, _ = cuts
    batch = next(iter(make_loader(train, tok, DataConfig(max_duration=15.0, num_workers=0), train=True)))
    cfg = TrainConfig(epochs=2, warmup_steps=0, log_every=1, minutes_per_epoch=5 / 60, final_lr_fraction=0.1)
    model = ImputerModel(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr)
    clock, log_path = _Clock(), tmp_path / "log.jsonl"
    for epoch in (1, 2):
        clock.epoch = epoch
        train_one_epoch(
            model, optimizer, [batch] * 40, ctc_objective, clock, 10**6, cfg, _JsonLog(log_path), lambda: None
        )
        assert (clock.step, clock.wall_time) == (5 * epoch, 5.0 * epoch)
    lrs = [json.loads(line)["lr"] for line in log_path.open()]
    floor = cfg.final_lr_fraction * cfg.peak_lr
    assert lrs[0] == pytest.approx(cfg.peak_lr)
    assert lrs[5] == pytest.approx((cfg.peak_lr + floor) / 2)
    assert lrs[9] == pytest.approx(floor + (cfg.peak_lr - floor) * 0.5 * (1 + math.cos(math.pi * 0.9)))


@pytest.mark.parametrize("budget", ["minutes", "steps"])
def test_an_epoch_whose_data_runs_out_goes_on_over_fresh_passes(
    tiny_corpus, model_cfg, cuts, monkeypatch, tmp_path, budget
):
    """On a fake clock of 1 s per update, an epoch of 7 s (or 7 updates) over data of 3 batches makes
    7 updates: the given pass, then passes 1 and 2 from ``next_pass``, the last cut short. Without
    ``next_pass`` it ends with its data; a further pass that gives nothing ends it too."""
    ticks = itertools.count()
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    tok = tiny_corpus.tokenizer
    train, _ = cuts
    batch = next(iter(make_loader(train, tok, DataConfig(max_duration=15.0, num_workers=0), train=True)))
    budgets = {"minutes": {"minutes_per_epoch": 7 / 60}, "steps": {"steps_per_epoch": 7}}
    cfg = TrainConfig(epochs=1, warmup_steps=0, log_every=1, **budgets[budget])
    model = ImputerModel(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr)
    asked: list[int] = []

    def next_pass(n: int) -> list[dict]:
        asked.append(n)
        return [batch] * 3

    def run(**kwargs) -> _Clock:
        clock = _Clock(epoch=1)
        args = (model, optimizer, [batch] * 3, ctc_objective, clock, 100, cfg, _JsonLog(tmp_path / "log"))
        train_one_epoch(*args, lambda: None, **kwargs)
        return clock

    clock = run(next_pass=next_pass)
    assert asked == [1, 2]
    assert (clock.step, clock.epoch_steps, clock.epoch_pass, clock.pass_steps) == (7, 7, 2, 1)
    assert run().step == 3
    asked.clear()
    assert run(next_pass=lambda n: asked.append(n) or []).step == 3 and asked == [1]
    # Without a budget an epoch is one pass, next_pass or not.
    cfg = TrainConfig(epochs=1, warmup_steps=0, log_every=1)
    assert run(next_pass=next_pass).step == 3


def test_a_further_pass_draws_its_own_shuffle(tiny_corpus, model_cfg, cuts):
    train, _ = cuts
    cfg = _config(model_cfg, 1)
    one = SimpleNamespace(world_size=1, rank=0)

    def batches(data_pass: int) -> list[list[str]]:
        loader = train_module._epoch_loader(
            cfg, train, tiny_corpus.tokenizer, 1, False, one, data_pass=data_pass
        )
        return [sorted(batch["cut_ids"]) for batch in loader]  # a batch's cuts come sorted by duration

    first, second = batches(0), batches(1)
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == sorted(train.ids)
    assert first != second
    assert batches(1) == second  # seeded: a resumed run draws it again


def test_negative_time_budget_is_refused(tiny_corpus, model_cfg, cuts, tmp_path):
    train, dev = cuts
    cfg = _config(model_cfg, 1)
    cfg = replace(cfg, train=replace(cfg.train, minutes_per_epoch=-1.0))
    with pytest.raises(ValueError, match="minutes_per_epoch must be 0"):
        fit(cfg, tmp_path / "exp", train, dev, tiny_corpus.tokenizer)
