"""Data-parallel training: one process per device, started by ``torchrun``.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. With ``WORLD_SIZE`` > 1,
:func:`init_parallel` joins the process group (gloo on CPU, nccl on GPU) and
:class:`ParallelObjective` runs the training objective through DistributedDataParallel, whose
backward pass averages the gradients of the ranks. Without torchrun (``WORLD_SIZE`` unset or 1)
nothing here talks to another process and a batch goes through the objective exactly as before.

Loss normalisation: an update's loss is the sum over every utterance of every rank and every
accumulated batch, divided by the number of target tokens in all of them (summed across ranks
before the forward pass, from the batches' ``target_lengths``). Each rank back-propagates
``loss_sum / (global_tokens / world_size)``; DDP's mean over ranks then gives exactly the gradient
of a single process that saw the whole global batch. Averaging the ranks' per-batch means instead
would weight a short batch as much as a long one, and 2 processes would not match 1.

>>> Parallel().world_size, Parallel().is_main
(1, True)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from imputer_asr.config import TrainConfig
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.model.precision import native_bf16

__all__ = ["Parallel", "init_parallel", "ParallelObjective", "draws_no_random_numbers", "to_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parallel:
    """This process's place in the job; the defaults describe a plain single process on the CPU."""

    world_size: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and progress bars and runs validation."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (e.g. while rank 0 validates or writes a checkpoint)."""
        if self.world_size > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (the values themselves when alone)."""
        if self.world_size == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def close(self) -> None:
        """Leave the process group if :func:`init_parallel` created it."""
        if self.owns_group:
            dist.destroy_process_group()


def _check(cfg: TrainConfig) -> None:
    if cfg.device not in ("cpu", "cuda"):
        raise ValueError(f"train.device must be cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but torch sees no CUDA device (set train.device=cpu)")
    if cfg.accum_grad < 1:
        raise ValueError(f"train.accum_grad must be at least 1, got {cfg.accum_grad}")
    if cfg.minutes_per_epoch < 0:
        raise ValueError(f"train.minutes_per_epoch must be 0 (off) or positive, got {cfg.minutes_per_epoch}")
    if cfg.checkpoint_minutes < 0:
        raise ValueError(
            f"train.checkpoint_minutes must be 0 (off) or positive, got {cfg.checkpoint_minutes}"
        )
    if cfg.max_skipped_updates < 1:
        raise ValueError(f"train.max_skipped_updates must be at least 1, got {cfg.max_skipped_updates}")
    if cfg.keep_checkpoints < 1:
        raise ValueError(f"train.keep_checkpoints must be at least 1, got {cfg.keep_checkpoints}")


def init_parallel(cfg: TrainConfig) -> Parallel:
    """Read torchrun's environment, pick this rank's device and join the process group.

    Raises:
        ValueError: a device setting this machine cannot honour, or a time budget
            (``minutes_per_epoch``) under several processes, which would disagree on when it is spent.
    """
    _check(cfg)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.minutes_per_epoch and world_size > 1:
        raise ValueError(
            "train.minutes_per_epoch needs a single process (ranks would disagree on when the "
            "time is up); under torchrun, set train.steps_per_epoch instead"
        )
    cuda = cfg.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size == 1:
        return Parallel(device=device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Parallel(dist.get_world_size(), dist.get_rank(), device, owns)


class _ObjectiveModule(nn.Module):
    """The objective as a module's forward, so that DistributedDataParallel sees the whole step
    (objectives call ``encode_acoustic`` and ``impute``, not just ``forward``)."""

    def __init__(self, model: ImputerModel, objective: Callable) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict) -> tuple[Tensor, int]:
        return self.objective(self.model, batch)


def _rows(batch: dict, rows: slice) -> dict:
    """The batch's ``rows``: its tensors and per-utterance lists sliced (views: copied, the halves
    of a shared update lost their gain), the rest left out."""
    size = len(batch["feature_lengths"])

    def per_utterance(value) -> bool:
        if isinstance(value, Tensor):
            return value.dim() > 0 and len(value) == size
        return isinstance(value, list) and len(value) == size

    return {key: value[rows] for key, value in batch.items() if per_utterance(value)}


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors on ``device`` (the same dict on the CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def draws_no_random_numbers(objective: Callable) -> Callable:
    """Mark ``objective`` as drawing no random numbers of its own, so that a batch may be shared
    among threads (:class:`ParallelObjective`) without making the run irreproducible: its
    ``draw(batch)``, which an objective that draws gives, has nothing to draw."""
    objective.draw = lambda batch: {}
    return objective


class ParallelObjective:
    """Forward and backward of one batch on this rank, through DDP when there are several ranks.

    The model's parameters are the ones the optimiser updates (DDP wraps, never copies, them).

    ``share_batch``: in one process on the CPU with several torch threads, the batch's rows are
    split into two halves whose forward and backward passes run at the same time, each on half the
    threads, instead of every operation of the whole batch on all of them, which mostly wait for
    each other on a small model's many small operations (RESULTS.md, Speed). The gradient is the
    sum of the same per-utterance terms. Only for an objective whose ``draw(batch)`` gives every
    random number it would draw, per utterance (:func:`~imputer_asr.training.imputer.imputer_objective`;
    they are drawn for the whole batch and shared out with its rows) or none
    (:func:`draws_no_random_numbers`), and a model without dropout: random numbers drawn from two
    threads at once would come in any order, and a seeded run would not repeat. The halves keep the
    batch's padded length, so that they come in few shapes (oneDNN builds kernels for each).
    """

    def __init__(
        self,
        model: ImputerModel,
        objective: Callable,
        parallel: Parallel,
        bf16: bool = False,
        share_batch: bool = False,
    ) -> None:
        self.model = model
        self.objective = objective
        self.parallel = parallel
        self.threads = torch.get_num_threads()
        self.share_batch = (
            share_batch
            and self.threads > 1
            and parallel.world_size == 1
            and parallel.device.type == "cpu"
            and hasattr(objective, "draw")
            and model.cfg.dropout == 0.0
        )
        self._pool: ThreadPoolExecutor | None = None
        self.bf16 = bf16 and native_bf16(parallel.device)
        if bf16 and not self.bf16:
            log.warning(
                "train.bf16: %s emulates bfloat16, slower than float32; training in float32",
                "this CPU (no AVX512-BF16, no AMX)" if parallel.device.type == "cpu" else parallel.device,
            )
        self.ddp: DistributedDataParallel | None = None
        if parallel.world_size > 1:
            cuda = parallel.device.type == "cuda"
            self.ddp = DistributedDataParallel(
                _ObjectiveModule(model, objective), device_ids=[parallel.device] if cuda else None
            )

    def backward(self, batch: dict, divisor: float, sync: bool = True) -> tuple[float, int]:
        """Add the gradient of ``loss_sum / divisor`` to ``.grad``; returns (loss_sum, tokens).

        ``sync`` False (all but the last accumulated batch) skips DDP's gradient all-reduce.
        """
        batch = to_device(batch, self.parallel.device)
        if self.share_batch and len(batch["feature_lengths"]) > 1:
            return self._backward_shared(batch, divisor)
        sync_context = nullcontext() if sync or self.ddp is None else self.ddp.no_sync()
        with sync_context:
            with self._autocast():
                if self.ddp is None:
                    loss_sum, num_tokens = self.objective(self.model, batch)
                else:
                    loss_sum, num_tokens = self.ddp(batch)
            (loss_sum / divisor).backward()
        return float(loss_sum.detach()), num_tokens

    def _autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.parallel.device.type, dtype=torch.bfloat16)

    def _backward_shared(self, batch: dict, divisor: float) -> tuple[float, int]:
        """:meth:`backward` with the batch's rows in two halves, each on half the threads, at once
        (``share_batch``). Two halves' gradients add up to the same bits in either order; more
        groups would not."""
        threads = max(1, self.threads // 2)
        batch = {**batch, **self.objective.draw(batch)}
        # An objective may switch the model to eval mode for a pass of its own (the Imputer's
        # learner roll-in): from two threads the last to switch back may restore the other's eval
        # mode. Without dropout the mode changes nothing the halves compute; it is put back here.
        training = self.model.training

        def half(rows: slice) -> tuple[float, int]:
            torch.set_num_threads(threads)  # this thread's operations; the caller restores the count
            with self._autocast():  # autocast is per thread
                loss_sum, num_tokens = self.objective(self.model, _rows(batch, rows))
            (loss_sum / divisor).backward()
            return float(loss_sum.detach()), num_tokens

        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="train-rows")
        size = len(batch["feature_lengths"])
        halves = (slice(0, (size + 1) // 2), slice((size + 1) // 2, size))
        try:
            parts = [job.result() for job in [self._pool.submit(half, rows) for rows in halves]]
        finally:
            torch.set_num_threads(self.threads)
            self.model.train(training)
        return sum(loss for loss, _ in parts), sum(tokens for _, tokens in parts)
