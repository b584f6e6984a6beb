"""Training as plain functions: compute_loss -> train_one_epoch -> fit.

``fit`` trains for ``cfg.train.epochs`` epochs, validates after each (dev loss, greedy WER/CER),
writes ``epoch-<n>.pt`` atomically, and resumes from the last checkpoint of the experiment directory.
The log is JSON Lines (``train_log.jsonl``, read by :mod:`imputer_asr.evaluation.plots`); its ``wall_time`` is
the training clock in seconds (validation excluded), carried across resumes.
Losses are summed over the batch and divided by the number of target tokens (of every accumulated
batch on every rank when ``accum_grad`` > 1 or under torchrun: :mod:`imputer_asr.training.distributed`).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from torch import Tensor
from tqdm import tqdm

from imputer_asr.config import DataConfig, ExperimentConfig, TrainConfig, config_to_dict, save_config
from imputer_asr.data.dataset import count_cuts, make_loader
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.decoding.ctc import Hypothesis, batch_hypotheses, ctc_greedy_search
from imputer_asr.evaluation.scoring import score
from imputer_asr.files import torch_save_atomic
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.model.losses import ctc_loss
from imputer_asr.training.checkpoint import epoch_checkpoints, load_file, step_checkpoints
from imputer_asr.training.distributed import (
    Parallel,
    ParallelObjective,
    draws_no_random_numbers,
    init_parallel,
    to_device,
)

__all__ = ["Objective", "ctc_objective", "lr_at", "train_one_epoch", "validate", "fit"]

log = logging.getLogger(__name__)

Objective = Callable[[ImputerModel, dict], tuple[Tensor, int]]
"""(model, batch) -> (summed loss over the batch, number of target tokens)."""


@draws_no_random_numbers
def ctc_objective(model: ImputerModel, batch: dict) -> tuple[Tensor, int]:
    """CTC loss of the all-[MASK] network, mixed with intermediate CTC when the model's
    ``interctc_layer`` is set (see :class:`~imputer_asr.config.ModelConfig`)."""
    hidden, lengths = model.encode_acoustic(batch["features"], batch["feature_lengths"])
    log_probs, intermediate = model.impute_with_intermediate(hidden, lengths, model.all_mask(hidden))
    loss = _ctc_loss_sum(log_probs, lengths, batch, model.cfg.blank_id)
    if intermediate is not None:
        weight = model.cfg.interctc_weight
        loss = (1 - weight) * loss + weight * _ctc_loss_sum(intermediate, lengths, batch, model.cfg.blank_id)
    return loss, int(batch["target_lengths"].sum())


def _ctc_loss_sum(log_probs: Tensor, lengths: Tensor, batch: dict, blank: int) -> Tensor:
    """Summed CTC loss of a batch; an utterance no path can explain contributes 0, not inf."""
    targets, target_lengths = batch["targets"], batch["target_lengths"]
    loss = ctc_loss(log_probs, targets, lengths, target_lengths, blank=blank, reduction="none")
    return torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)).sum()


def lr_at(step: int, total_steps: int, cfg: TrainConfig, budget_spent: float | None = None) -> float:
    """Linear warm-up to ``peak_lr`` then cosine decay to ``final_lr_fraction * peak_lr``.

    The decay runs over the updates after the warm-up, up to ``total_steps``; under a time budget
    (``cfg.minutes_per_epoch``; ``budget_spent`` is the fraction of ``epochs x minutes_per_epoch``
    already used) it runs over the budget instead, and ``total_steps`` is not used.

    >>> cfg = TrainConfig(peak_lr=1.0, warmup_steps=10, final_lr_fraction=0.0)
    >>> [round(lr_at(s, 110, cfg), 3) for s in (0, 5, 10, 60, 110)]
    [0.1, 0.6, 1.0, 0.5, 0.0]
    >>> [round(lr_at(50, 0, cfg, budget_spent=f), 3) for f in (0.0, 0.5, 1.0)]
    [1.0, 0.5, 0.0]
    """
    if step < cfg.warmup_steps:
        return cfg.peak_lr * (step + 1) / cfg.warmup_steps
    if budget_spent is not None:
        progress = min(1.0, budget_spent)
    else:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = cfg.final_lr_fraction
    return cfg.peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class _Clock:
    """Where training stands. ``epoch_steps`` > 0: ``epoch`` is in progress and that many of its
    updates are done (a mid-epoch checkpoint) by ``world_size`` processes; 0: ``epoch`` epochs are
    complete. An epoch on a budget that outlasts its data makes further passes over it:
    ``epoch_pass`` of them are complete and ``pass_steps`` updates of the current one are done.
    ``skipped``: updates skipped for a non-finite gradient; ``unreadable``: training cuts left out
    because their features could not be read."""

    epoch: int = 0
    step: int = 0
    wall_time: float = 0.0
    audio_seconds: float = 0.0
    epoch_steps: int = 0
    world_size: int = 1
    skipped: int = 0
    unreadable: int = 0
    epoch_pass: int = 0
    pass_steps: int = 0

    @classmethod
    def from_state(cls, fields: dict) -> _Clock:
        """The clock a checkpoint saved; one saved before passes were counted was in its epoch's first."""
        return cls(**{"pass_steps": fields.get("epoch_steps", 0), **fields})


class _JsonLog:
    """JSON Lines appender; with no path (ranks other than 0) it writes nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _update(
    runner: ParallelObjective, optimizer: torch.optim.Optimizer, group: list[dict], cfg: TrainConfig
) -> tuple[float, int, float, bool]:
    """One optimiser update from ``group`` (this rank's accumulated batches) and the other ranks' groups.

    Returns this rank's summed loss and tokens, the seconds of audio of every rank, and whether the
    update was made: a gradient norm that is not finite (every rank sees the same, reduced one)
    leaves the weights and the optimizer untouched. The loss is normalised by the tokens of every
    rank and batch (see :mod:`imputer_asr.training.distributed`).
    """
    tokens, audio = runner.parallel.sum(
        [sum(int(b["target_lengths"].sum()) for b in group), sum(sum(b["durations"]) for b in group)]
    )
    optimizer.zero_grad(set_to_none=True)
    divisor = max(tokens, 1) / runner.parallel.world_size
    loss_sum, num_tokens = 0.0, 0
    for i, batch in enumerate(group):
        loss, n = runner.backward(batch, divisor, sync=i == len(group) - 1)
        loss_sum, num_tokens = loss_sum + loss, num_tokens + n
    norm = torch.nn.utils.clip_grad_norm_(runner.model.parameters(), cfg.grad_clip, foreach=True)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return loss_sum, num_tokens, audio, False
    optimizer.step()
    return loss_sum, num_tokens, audio, True


def _readable_batches(batches: Iterator[dict], clock: _Clock, json_log: _JsonLog) -> Iterator[dict]:
    """``batches`` without the cuts whose features could not be read (each one logged and counted
    in ``clock.unreadable``), and without batches left empty."""
    for batch in batches:
        for message in batch["unreadable"]:
            clock.unreadable += 1
            log.warning("training cut left out, its features cannot be read: %s", message)
            json_log.write({"kind": "unreadable", "epoch": clock.epoch, "step": clock.step, "cut": message})
        if batch["cut_ids"]:
            yield batch


def train_one_epoch(
    model: ImputerModel,
    optimizer: torch.optim.Optimizer,
    loader,
    objective: Objective,
    clock: _Clock,
    total_steps: int,
    cfg: TrainConfig,
    json_log: _JsonLog,
    every_step: Callable[[], None] | None = None,
    runner: ParallelObjective | None = None,
    next_pass: Callable[[int], Iterable[dict]] | None = None,
) -> None:
    """One epoch from ``loader``, an update every ``cfg.accum_grad`` batches; ``every_step`` runs
    after each update, off the training clock. ``runner`` (several processes) defaults to this
    process alone. The logged loss is this rank's.

    Under ``cfg.minutes_per_epoch`` the epoch stops once the clock reaches ``clock.epoch x
    minutes_per_epoch``; under ``cfg.steps_per_epoch``, once ``clock.epoch_steps`` (the epoch's
    updates, counted here) reaches it. If ``loader`` runs out first, ``next_pass(n)`` gives the n-th
    further pass over the data, so that a fast machine trains for the budget and not for less;
    without it, or without a budget, the epoch ends with its data.
    """
    runner = runner or ParallelObjective(model, objective, Parallel())
    model.train()
    window_loss, window_tokens = 0.0, 0
    bar = batches = None

    def open_pass(data: Iterable[dict]) -> None:
        nonlocal bar, batches
        if clock.epoch_pass:
            # The iterator draws a base seed from torch's generator when it is made. Pass 0's is
            # made before any update seeds the generator; a later pass's, after a seed of its own
            # (its first update's), as it is made when a resumed run restarts inside it.
            _seed_update(cfg.seed, clock.step - clock.pass_steps, runner.parallel.rank)
        bar = tqdm(
            iter(data),
            desc=f"epoch {clock.epoch}" + (f", pass {clock.epoch_pass + 1}" if clock.epoch_pass else ""),
            unit="batch",
            dynamic_ncols=True,
            leave=False,
            disable=not runner.parallel.is_main,
        )
        batches = _readable_batches(iter(bar), clock, json_log)

    open_pass(loader)
    skipped_in_a_row: list[list[str]] = []
    start = time.perf_counter()
    per_epoch = cfg.minutes_per_epoch * 60.0
    budget = per_epoch * cfg.epochs
    epoch_end = per_epoch * clock.epoch if per_epoch else math.inf
    on_budget = next_pass is not None and bool(per_epoch or cfg.steps_per_epoch)
    while clock.wall_time < epoch_end and not (
        cfg.steps_per_epoch and clock.epoch_steps >= cfg.steps_per_epoch
    ):
        # Every random draw of an update (SpecAugment, masking, dropout) comes from its own seed, so
        # a run resumed at any update draws what the uninterrupted run drew, on every rank.
        _seed_update(cfg.seed, clock.step, runner.parallel.rank)
        group = list(itertools.islice(batches, cfg.accum_grad))
        if not group and on_budget and clock.pass_steps:  # a pass that gave nothing would loop forever
            bar.close()
            clock.epoch_pass, clock.pass_steps = clock.epoch_pass + 1, 0
            log.info(
                "epoch %d: the data ran out after %d updates with budget left; pass %d over it",
                clock.epoch,
                clock.epoch_steps,
                clock.epoch_pass + 1,
            )
            open_pass(next_pass(clock.epoch_pass))
            _seed_update(cfg.seed, clock.step, runner.parallel.rank)
            group = list(itertools.islice(batches, cfg.accum_grad))
        if not group:
            break
        clock.epoch_steps += 1
        clock.pass_steps += 1
        lr = lr_at(clock.step, total_steps, cfg, clock.wall_time / budget if budget else None)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        loss_sum, num_tokens, audio, made = _update(runner, optimizer, group, cfg)
        clock.step += 1
        clock.audio_seconds += audio
        if made:
            skipped_in_a_row.clear()
            window_loss += loss_sum
            window_tokens += num_tokens
        else:
            cut_ids = [c for batch in group for c in batch["cut_ids"]]
            clock.skipped += 1
            skipped_in_a_row.append(cut_ids)
            log.warning("update %d skipped: gradient not finite; its cuts: %s", clock.step, " ".join(cut_ids))
            json_log.write({"kind": "skipped", "epoch": clock.epoch, "step": clock.step, "cut_ids": cut_ids})
            if len(skipped_in_a_row) >= cfg.max_skipped_updates:
                bar.close()
                named = "; ".join(" ".join(ids) for ids in skipped_in_a_row)
                raise RuntimeError(
                    f"{len(skipped_in_a_row)} updates in a row had a non-finite gradient "
                    f"(train.max_skipped_updates = {cfg.max_skipped_updates}); stopped at update "
                    f"{clock.step}. Their cuts: {named}"
                )
        now = time.perf_counter()
        clock.wall_time += now - start
        start = now
        if clock.step % cfg.log_every == 0:
            loss = window_loss / max(window_tokens, 1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
            json_log.write(
                {
                    "kind": "train",
                    "epoch": clock.epoch,
                    "step": clock.step,
                    "wall_time": round(clock.wall_time, 2),
                    "loss": loss,
                    "lr": lr,
                    "audio_seconds": round(clock.audio_seconds, 1),
                }
            )
            window_loss, window_tokens = 0.0, 0
        if every_step is not None:
            every_step()
            model.train()
            start = time.perf_counter()
    bar.close()


CutSetDecoder = Callable[[ImputerModel, Tokenizer, CutSet], list[Hypothesis]]
"""(model, tokenizer, cuts) -> hypotheses, used for the dev WER during training."""


@torch.inference_mode()
def validate(
    model: ImputerModel,
    tokenizer: Tokenizer,
    cuts: CutSet,
    objective: Objective,
    decoder: CutSetDecoder | None = None,
) -> dict[str, float]:
    """Dev loss per token and the decoder's WER/CER (fractions).

    Without ``decoder`` the model is scored as a CTC model: the CTC loss and greedy search come from
    one forward pass over dev (``objective`` is not used).
    """
    model.eval()
    total, tokens = 0.0, 0
    hyps: list[Hypothesis] = []
    device = next(model.parameters()).device
    for batch in make_loader(cuts, tokenizer, DataConfig(max_duration=200.0), train=False):
        batch = to_device(batch, device)
        if decoder is None:
            log_probs, lengths = model(batch["features"], batch["feature_lengths"])
            loss_sum = _ctc_loss_sum(log_probs, lengths, batch, model.cfg.blank_id)
            num_tokens = int(batch["target_lengths"].sum())
            ids = ctc_greedy_search(log_probs, lengths, tokenizer.blank_id)
            hyps += batch_hypotheses(batch, ids, tokenizer)
        else:
            loss_sum, num_tokens = objective(model, batch)
        total, tokens = total + float(loss_sum), tokens + num_tokens
    if decoder is not None:
        hyps = decoder(model, tokenizer, cuts)
    report = score([(h.cut_id, h.ref, h.hyp) for h in hyps])
    return {"loss": total / max(tokens, 1), "wer": report.wer, "cer": report.cer}


def feature_stats(
    cuts: CutSet, max_cuts: int = 500, shape: Callable[[Tensor, Tensor], Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation per feature dimension over (up to) ``max_cuts`` cuts spread evenly
    through ``cuts``; with ``shape`` (a model's ``shape_features``), of what it makes of each cut's
    features. Lazy cuts are read as they are iterated (and counted first when they cannot say how
    many they are)."""
    total, total_sq, frames = None, None, 0
    stride = max(1, count_cuts(cuts) // max_cuts)
    for i, cut in enumerate(cuts):
        if i % stride:
            continue
        try:
            feats = torch.from_numpy(cut.load_features()).double()
        except Exception:  # unreadable features: the training loader names the cut and leaves it out
            continue
        if shape is not None:
            feats = shape(feats[None].float(), torch.tensor([feats.size(0)]))[0].double()
        total = feats.sum(0) if total is None else total + feats.sum(0)
        total_sq = (feats**2).sum(0) if total_sq is None else total_sq + (feats**2).sum(0)
        frames += feats.size(0)
    if not frames:
        raise ValueError("no training features to compute normalisation statistics from")
    mean = total / frames
    std = (total_sq / frames - mean**2).clamp_min(0).sqrt()
    return mean.float(), std.float()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_update(seed: int, step: int, rank: int) -> None:
    """Seed the generators for update ``step`` of ``rank``; rank 0 draws what one process draws."""
    words = [seed, step] if rank == 0 else [seed, step, rank]
    _seed_everything(int(np.random.SeedSequence(words).generate_state(1)[0]))


def _count_batches(cuts: CutSet, cfg: ExperimentConfig, world_size: int = 1) -> int:
    """Updates per epoch for the learning-rate schedule: the audio over the audio of one update
    (``max_duration`` per batch, ``accum_grad`` batches on each of ``world_size`` ranks).

    The sampler fills batches up to ``max_duration``, so this is a slight underestimate; the
    schedule holds its final value for the few extra steps. (A dry pass of the sampler gives the
    exact count but took minutes on 12k cuts.) ``steps_per_epoch`` replaces it: an epoch makes that
    many updates, in further passes over the data if one is not enough.
    """
    if cfg.train.steps_per_epoch:
        return cfg.train.steps_per_epoch
    seconds = sum(cut.duration for cut in cuts)
    per_update = cfg.data.max_duration * cfg.train.accum_grad * world_size
    return max(1, math.ceil(seconds / per_update))


def _resume_candidates(exp_dir: Path) -> list[Path]:
    """Checkpoints to resume from, newest first: the mid-epoch ones after the last epoch checkpoint,
    then the epoch checkpoints. A mid-epoch file at or before the last epoch's update is stale (a
    kill between writing the epoch checkpoint and removing it)."""
    epochs, steps = epoch_checkpoints(exp_dir), step_checkpoints(exp_dir)
    if epochs and steps:
        try:
            last_step = load_file(epochs[-1])["clock"]["step"]
        except (ValueError, KeyError):
            last_step = -1  # reported when the loop below reaches it
        steps = step_checkpoints(exp_dir, after=last_step)
    return steps[::-1] + epochs[::-1]


def _restore(exp_dir: Path, model, optimizer, resume: bool) -> _Clock:
    """Load the newest checkpoint that loads; a truncated or corrupt one is reported and skipped."""
    candidates = _resume_candidates(exp_dir)
    if not candidates:
        return _Clock()
    if not resume:
        raise ValueError(
            f"{exp_dir} already holds checkpoints; pass --resume or choose another experiment directory"
        )
    for path in candidates:
        try:
            state = load_file(path)
            clock = _Clock.from_state(state["clock"])
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.warning("%s cannot be resumed from (%s); trying the previous checkpoint", path, exc)
            continue
        log.info("resumed from %s (epoch %d, update %d)", path, clock.epoch, clock.step)
        return clock
    names = ", ".join(p.name for p in candidates)
    raise ValueError(f"{exp_dir}: no checkpoint can be resumed from ({names}); remove them to start over")


def _build_model(
    cfg: ExperimentConfig, train_cuts: CutSet, init_weights: dict[str, Tensor] | None, device: torch.device
) -> ImputerModel:
    torch.set_num_threads(cfg.train.num_threads)
    _seed_everything(cfg.train.seed)
    model = ImputerModel(cfg.model)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    else:
        model.set_feature_stats(*feature_stats(train_cuts, shape=model.shape_features))
    log.info("model: %.2fM parameters", model.num_parameters() / 1e6)
    return model.to(device)


# A further pass's shuffle seed sits this far from its epoch's, clear of every other epoch's
_PASS_SEED_STRIDE = 1_000_003


def _epoch_loader(
    cfg: ExperimentConfig,
    train_cuts: CutSet,
    tokenizer: Tokenizer,
    epoch: int,
    sort: bool,
    parallel: Parallel,
    skip_batches: int = 0,
    data_pass: int = 0,
):
    """This rank's share of a pass over the data in an epoch: every rank draws the same shuffle
    (seeded by the epoch and ``data_pass``, the epoch's passes before it) and takes every
    ``world_size``-th batch of it; ``skip_batches``, those a resumed pass trained on."""
    data_cfg = cfg.data
    if epoch < cfg.data.spec_augment_from_epoch:
        data_cfg = replace(data_cfg, spec_augment=False)
    return make_loader(
        train_cuts,
        tokenizer,
        data_cfg,
        train=True,
        sort_by_duration=sort and epoch == 1 and data_pass == 0,
        seed=cfg.train.seed + epoch + _PASS_SEED_STRIDE * data_pass,
        world_size=parallel.world_size,
        rank=parallel.rank,
        skip_batches=skip_batches,
    )


def _batches_done(clock: _Clock, cfg: ExperimentConfig, parallel: Parallel) -> int:
    """This rank's batches of the pass in progress that are already trained on. The ranks share
    each pass's one sequence of batches, so after a change in the number of processes the same
    number of batches overall is done, shared anew."""
    done = clock.pass_steps * cfg.train.accum_grad * clock.world_size
    if clock.epoch_steps and clock.world_size != parallel.world_size:
        log.warning(
            "epoch %d was trained by %d processes, resumed by %d: its remaining batches are shared anew",
            clock.epoch,
            clock.world_size,
            parallel.world_size,
        )
    return math.ceil(done / parallel.world_size)


def _save_epoch(
    exp_dir: Path,
    model: ImputerModel,
    optimizer,
    cfg: ExperimentConfig,
    clock: _Clock,
    metrics,
    trained_as: str,
) -> None:
    """``epoch-<n>.pt`` with the bare model's weights, so any number of processes can resume from
    it (``metrics`` None: ``checkpoint-<step>.pt``, mid-epoch, the oldest beyond
    ``keep_checkpoints`` removed). An epoch checkpoint supersedes the mid-epoch ones."""
    mid_epoch = metrics is None
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not value.isfinite().all()
    ]
    if bad:  # cannot happen while non-finite updates are skipped; never let a checkpoint hold one
        raise RuntimeError(
            f"not saving a checkpoint at update {clock.step}: non-finite weights in {', '.join(bad)}"
        )
    torch_save_atomic(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": config_to_dict(cfg),
            "clock": vars(clock).copy(),
            "metrics": metrics,
            "trained_as": trained_as,
        },
        exp_dir / (f"checkpoint-{clock.step}.pt" if mid_epoch else f"epoch-{clock.epoch}.pt"),
    )
    stale = step_checkpoints(exp_dir)
    if mid_epoch:
        stale = stale[: -cfg.train.keep_checkpoints]
    for path in stale:
        path.unlink(missing_ok=True)


def fit(
    cfg: ExperimentConfig,
    exp_dir: Path,
    train_cuts: CutSet,
    dev_cuts: CutSet,
    tokenizer: Tokenizer,
    objective: Objective = ctc_objective,
    init_weights: dict[str, Tensor] | None = None,
    resume: bool = True,
    decoder: CutSetDecoder | None = None,
    trained_as: str = "ctc",
) -> ImputerModel:
    """Train, validate and checkpoint every epoch; returns the trained model.

    ``trained_as`` ("ctc" or "imputer") is stored in every checkpoint and, by the package stage, in
    the packaged model, where it chooses the default decoder of ``imputer-asr transcribe``.
    Under torchrun every rank calls this; rank 0 alone validates and writes the experiment
    directory while the others wait (see :mod:`imputer_asr.training.distributed`).
    """
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    parallel = init_parallel(cfg.train)
    lock = None
    try:
        if parallel.is_main:
            lock = _lock_exp_dir(exp_dir)
            save_config(cfg, exp_dir / "config.json")
        else:
            logging.getLogger("imputer_asr").setLevel(logging.WARNING)
        model = _build_model(cfg, train_cuts, init_weights, parallel.device)
        # fused: one kernel for the whole update; the CPU's foreach path still loops over the
        # parameters op by op (7.3 -> 1.9 ms per update of the demo model, 4 % of a step).
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.train.peak_lr, weight_decay=cfg.train.weight_decay, fused=True
        )
        clock = _restore(exp_dir, model, optimizer, resume)
        runner = ParallelObjective(
            model, objective, parallel, bf16=cfg.train.bf16, share_batch=cfg.train.share_batch
        )
        _train_epochs(
            cfg,
            exp_dir,
            train_cuts,
            dev_cuts,
            tokenizer,
            runner,
            optimizer,
            clock,
            decoder,
            trained_as,
            sort=cfg.train.sort_first_epoch and init_weights is None,
        )
    finally:
        if lock is not None:
            lock.close()  # releases the lock
        parallel.close()
    return model


def _lock_exp_dir(exp_dir: Path):
    """Hold ``exp_dir/train.lock`` for this process: a second training process on the same directory
    would interleave checkpoints and logs. The operating system releases the lock when the process
    ends, killed or not, so a crash never leaves a stale one."""
    path = exp_dir / "train.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ValueError(
            f"{exp_dir} is being trained by another process (pid {holder}, holding {path}); "
            "wait for it to finish or choose another --exp-dir"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _train_epochs(
    cfg: ExperimentConfig,
    exp_dir: Path,
    train_cuts: CutSet,
    dev_cuts: CutSet,
    tokenizer: Tokenizer,
    runner: ParallelObjective,
    optimizer: torch.optim.Optimizer,
    clock: _Clock,
    decoder: CutSetDecoder | None,
    trained_as: str,
    sort: bool,
) -> None:
    """The epochs still to train, each followed by validation and a checkpoint (rank 0)."""
    model, objective, parallel = runner.model, runner.objective, runner.parallel
    total_steps = _count_batches(train_cuts, cfg, parallel.world_size) * cfg.train.epochs
    json_log = _JsonLog(exp_dir / "train_log.jsonl" if parallel.is_main else None)
    done = exp_dir / "train.done"
    if clock.epoch >= cfg.train.epochs:
        log.info("%s: %d epochs already trained", exp_dir, clock.epoch)
    last_valid: dict = {}

    def validate_now() -> dict[str, float]:
        if last_valid.get("step") == clock.step:  # valid_every just ran at the epoch's last step
            return last_valid["metrics"]
        metrics = validate(model, tokenizer, dev_cuts, objective, decoder)
        record = {"kind": "valid", "epoch": clock.epoch, "step": clock.step}
        json_log.write({**record, "wall_time": round(clock.wall_time, 2), **metrics})
        last_valid.update(step=clock.step, metrics=metrics)
        return metrics

    saved_at = [clock.wall_time]  # training clock of the last checkpoint

    def every_step() -> None:
        if cfg.train.valid_every and clock.step % cfg.train.valid_every == 0:
            if parallel.is_main:
                metrics = validate_now()
                log.info("step %d: dev WER %.2f%%", clock.step, 100 * metrics["wer"])
            parallel.barrier()
        # Rank 0's clock decides, so that every rank saves (and later resumes) at the same update.
        due = (
            cfg.train.checkpoint_minutes > 0
            and clock.wall_time - saved_at[0] >= 60 * cfg.train.checkpoint_minutes
        )
        if parallel.sum([float(due and parallel.is_main)])[0] > 0:
            if parallel.is_main:
                _save_epoch(exp_dir, model, optimizer, cfg, clock, None, trained_as)
            saved_at[0] = clock.wall_time
            parallel.barrier()

    while clock.epoch < cfg.train.epochs or clock.epoch_steps:
        if not clock.epoch_steps:  # else finish the epoch a mid-epoch checkpoint was taken in
            clock.epoch += 1
        loader = _epoch_loader(
            cfg,
            train_cuts,
            tokenizer,
            clock.epoch,
            sort,
            parallel,
            skip_batches=_batches_done(clock, cfg, parallel),
            data_pass=clock.epoch_pass,
        )
        clock.world_size = parallel.world_size

        def next_pass(data_pass: int):
            return _epoch_loader(cfg, train_cuts, tokenizer, clock.epoch, sort, parallel, data_pass=data_pass)

        train_one_epoch(
            model,
            optimizer,
            loader,
            objective,
            clock,
            total_steps,
            cfg.train,
            json_log,
            every_step,
            runner,
            next_pass,
        )
        clock.epoch_steps = clock.epoch_pass = clock.pass_steps = 0
        saved_at[0] = clock.wall_time
        if parallel.is_main:
            metrics = validate_now()
            log.info(
                "epoch %d: dev loss %.3f, WER %.2f%%, CER %.2f%%, %d updates in %.1f min of training, "
                "%.0f s audio/s",
                clock.epoch,
                metrics["loss"],
                100 * metrics["wer"],
                100 * metrics["cer"],
                clock.step,
                clock.wall_time / 60,
                clock.audio_seconds / max(clock.wall_time, 1e-9),
            )
            _save_epoch(exp_dir, model, optimizer, cfg, clock, metrics, trained_as)
            done.unlink(missing_ok=True)
        parallel.barrier()
    if parallel.is_main and not done.exists():
        done.write_text(
            json.dumps(
                {
                    "epochs": clock.epoch,
                    "steps": clock.step,
                    "wall_time": clock.wall_time,
                    "skipped": clock.skipped,
                    "unreadable": clock.unreadable,
                }
            )
            + "\n"
        )
