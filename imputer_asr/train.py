"""Training as plain functions: compute_loss -> train_one_epoch -> fit.

``fit`` trains for ``cfg.train.epochs`` epochs, validates after each (dev loss, greedy WER/CER),
writes ``epoch-<n>.pt`` atomically, and resumes from the last checkpoint of the experiment directory.
The log is JSON Lines (``train_log.jsonl``, read by :mod:`imputer_asr.plots`); its ``wall_time`` is
the training clock in seconds (validation excluded), carried across resumes.
Losses are summed over the batch and divided by the number of target tokens.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from torch import Tensor
from tqdm import tqdm

from imputer_asr.checkpoint import atomic_save, epoch_checkpoints, load_file
from imputer_asr.config import DataConfig, ExperimentConfig, TrainConfig, config_to_dict, save_config
from imputer_asr.dataset import make_loader
from imputer_asr.decode import Hypothesis, decode_cuts
from imputer_asr.losses import ctc_loss
from imputer_asr.model import ImputerModel
from imputer_asr.scoring import score
from imputer_asr.tokenizer import Tokenizer

__all__ = ["Objective", "ctc_objective", "lr_at", "train_one_epoch", "validate", "fit"]

log = logging.getLogger(__name__)

Objective = Callable[[ImputerModel, dict], tuple[Tensor, int]]
"""(model, batch) -> (summed loss over the batch, number of target tokens)."""


def ctc_objective(model: ImputerModel, batch: dict) -> tuple[Tensor, int]:
    """CTC loss of the all-[MASK] network."""
    log_probs, lengths = model(batch["features"], batch["feature_lengths"])
    loss = ctc_loss(
        log_probs,
        batch["targets"],
        lengths,
        batch["target_lengths"],
        blank=model.cfg.blank_id,
        reduction="none",
    )
    loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
    return loss.sum(), int(batch["target_lengths"].sum())


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``peak_lr`` then cosine decay to ``final_lr_fraction * peak_lr``.

    >>> cfg = TrainConfig(peak_lr=1.0, warmup_steps=10, final_lr_fraction=0.0)
    >>> [round(lr_at(s, 110, cfg), 3) for s in (0, 5, 10, 60, 110)]
    [0.1, 0.6, 1.0, 0.5, 0.0]
    """
    if step < cfg.warmup_steps:
        return cfg.peak_lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = cfg.final_lr_fraction
    return cfg.peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class _Clock:
    epoch: int = 0
    step: int = 0
    wall_time: float = 0.0
    audio_seconds: float = 0.0


class _JsonLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


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
) -> None:
    """One pass over ``loader``; ``every_step`` runs after each update, off the training clock."""
    model.train()
    window_loss, window_tokens = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {clock.epoch}", unit="batch", dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    steps_done = 0
    for batch in bar:
        if cfg.steps_per_epoch and steps_done >= cfg.steps_per_epoch:
            break
        steps_done += 1
        lr = lr_at(clock.step, total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum, num_tokens = objective(model, batch)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / max(num_tokens, 1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        clock.step += 1
        clock.audio_seconds += sum(batch["durations"])
        window_loss += float(loss_sum.detach())
        window_tokens += num_tokens
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


Decoder = Callable[[ImputerModel, Tokenizer, CutSet], list[Hypothesis]]
"""(model, tokenizer, cuts) -> hypotheses, used for the dev WER during training."""


def ctc_greedy_decoder(model: ImputerModel, tokenizer: Tokenizer, cuts: CutSet) -> list[Hypothesis]:
    return decode_cuts(model, tokenizer, cuts)[0]


@torch.inference_mode()
def validate(
    model: ImputerModel,
    tokenizer: Tokenizer,
    cuts: CutSet,
    objective: Objective,
    decoder: Decoder = ctc_greedy_decoder,
) -> dict[str, float]:
    """Dev loss per token and the decoder's WER/CER (fractions)."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in make_loader(cuts, tokenizer, DataConfig(max_duration=200.0), train=False):
        loss_sum, num_tokens = objective(model, batch)
        total, tokens = total + float(loss_sum), tokens + num_tokens
    hyps = decoder(model, tokenizer, cuts)
    report = score([(h.cut_id, h.ref, h.hyp) for h in hyps])
    return {"loss": total / max(tokens, 1), "wer": report.wer, "cer": report.cer}


def feature_stats(cuts: CutSet, max_cuts: int = 500) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation per feature dimension over (up to) ``max_cuts`` cuts spread evenly
    through ``cuts``."""
    total, total_sq, frames = None, None, 0
    stride = max(1, len(cuts) // max_cuts)
    for i, cut in enumerate(cuts):
        if i % stride:
            continue
        feats = torch.from_numpy(cut.load_features()).double()
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


def _count_batches(cuts: CutSet, cfg: ExperimentConfig) -> int:
    """Updates per epoch for the learning-rate schedule: the audio over ``max_duration``.

    The sampler fills batches up to ``max_duration``, so this is a slight underestimate; the
    schedule holds its final value for the few extra steps. (A dry pass of the sampler gives the
    exact count but took minutes on 12k cuts.) ``steps_per_epoch`` caps it.
    """
    seconds = sum(cut.duration for cut in cuts)
    estimate = max(1, math.ceil(seconds / cfg.data.max_duration))
    return min(estimate, cfg.train.steps_per_epoch) if cfg.train.steps_per_epoch else estimate


def _restore(exp_dir: Path, model, optimizer, resume: bool) -> _Clock:
    checkpoints = epoch_checkpoints(exp_dir)
    if not checkpoints:
        return _Clock()
    if not resume:
        raise ValueError(
            f"{exp_dir} already holds checkpoints; pass --resume or choose another experiment directory"
        )
    state = load_file(checkpoints[-1])
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resumed from %s", checkpoints[-1])
    return _Clock(**state["clock"])


def fit(
    cfg: ExperimentConfig,
    exp_dir: Path,
    train_cuts: CutSet,
    dev_cuts: CutSet,
    tokenizer: Tokenizer,
    objective: Objective = ctc_objective,
    init_weights: dict[str, Tensor] | None = None,
    resume: bool = True,
    decoder: Decoder = ctc_greedy_decoder,
    trained_as: str = "ctc",
) -> ImputerModel:
    """Train, validate and checkpoint every epoch; returns the trained model.

    ``trained_as`` ("ctc" or "imputer") is stored in every checkpoint and, by the package stage, in
    the packaged model, where it chooses the default decoder of ``imputer-asr transcribe``.
    """
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, exp_dir / "config.json")
    torch.set_num_threads(cfg.train.num_threads)
    _seed_everything(cfg.train.seed)
    model = ImputerModel(cfg.model)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    else:
        model.set_feature_stats(*feature_stats(train_cuts))
    log.info("model: %.2fM parameters", model.num_parameters() / 1e6)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.peak_lr, weight_decay=cfg.train.weight_decay
    )
    clock = _restore(exp_dir, model, optimizer, resume)
    total_steps = _count_batches(train_cuts, cfg) * cfg.train.epochs
    json_log = _JsonLog(exp_dir / "train_log.jsonl")
    done = exp_dir / "train.done"
    if clock.epoch >= cfg.train.epochs:
        log.info("%s: %d epochs already trained", exp_dir, clock.epoch)
    last_valid: dict = {}
    while clock.epoch < cfg.train.epochs:
        clock.epoch += 1
        _seed_everything(cfg.train.seed + clock.epoch)
        sort_first = cfg.train.sort_first_epoch and clock.epoch == 1 and init_weights is None
        data_cfg = cfg.data
        if clock.epoch < cfg.data.spec_augment_from_epoch:
            data_cfg = replace(data_cfg, spec_augment=False)
        loader = make_loader(
            train_cuts,
            tokenizer,
            data_cfg,
            train=True,
            sort_by_duration=sort_first,
            seed=cfg.train.seed + clock.epoch,
        )

        def validate_now() -> dict[str, float]:
            if last_valid.get("step") == clock.step:  # valid_every just ran at the epoch's last step
                return last_valid["metrics"]
            metrics = validate(model, tokenizer, dev_cuts, objective, decoder)
            record = {"kind": "valid", "epoch": clock.epoch, "step": clock.step}
            json_log.write({**record, "wall_time": round(clock.wall_time, 2), **metrics})
            last_valid.update(step=clock.step, metrics=metrics)
            return metrics

        def every_step() -> None:
            if cfg.train.valid_every and clock.step % cfg.train.valid_every == 0:
                metrics = validate_now()
                log.info("step %d: dev WER %.2f%%", clock.step, 100 * metrics["wer"])

        train_one_epoch(
            model, optimizer, loader, objective, clock, total_steps, cfg.train, json_log, every_step
        )
        metrics = validate_now()
        log.info(
            "epoch %d: dev loss %.3f, WER %.2f%%, CER %.2f%%, %.1f min of training, %.0f s audio/s",
            clock.epoch,
            metrics["loss"],
            100 * metrics["wer"],
            100 * metrics["cer"],
            clock.wall_time / 60,
            clock.audio_seconds / max(clock.wall_time, 1e-9),
        )
        atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "config": config_to_dict(cfg),
                "clock": vars(clock).copy(),
                "metrics": metrics,
                "trained_as": trained_as,
            },
            exp_dir / f"epoch-{clock.epoch}.pt",
        )
        done.unlink(missing_ok=True)
    if not done.exists():
        done.write_text(json.dumps({"epochs": clock.epoch, "wall_time": clock.wall_time}) + "\n")
    return model
