"""What training the Imputer needs beyond CTC: expert alignments of the training cuts, and its objective.

The expert alignment of a cut is the forced (Viterbi) alignment of its transcript under a trained
CTC model, computed once by :func:`align_cuts` and stored in one lhotse HDF5 file beside the cut
manifest that points to it (:func:`alignment_storage`). The objective
(:func:`imputer_objective`) masks that alignment block-wise (:func:`imputer_asr.training.masking.block_mask`,
k ~ U{1..B} masked frames per block), feeds the shown tokens to the network and scores the
transcript with the Imputer loss: the CTC dynamic program restricted to the alignments that agree
with the shown frames, plus the cross-entropy of the shown frames. With learner roll-in the alignment
of a share of the utterances is instead the forced alignment under the model being trained.

Alignments are at the encoder frame rate (T' = ((T - 1) // 2 - 1) // 2 for T fbank frames), so a
stored alignment is only valid for the features it was computed from.

>>> # objective = imputer_objective(block_size=8, ctc_weight=0.5, learner_fraction=0.0)
>>> # aligned = align_cuts(ctc_model, train_cuts, tokenizer, Path("exp/cuts_train_aligned.jsonl.gz"))
>>> # fit(cfg, exp_dir, aligned, dev_cuts, tokenizer, objective)
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import torch
from lhotse import CutSet, NumpyHdf5Writer, close_cached_file_handles
from lhotse.array import Array, TemporalArray
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler
from lhotse.utils import fastcopy
from torch import Tensor
from torch.utils.data import DataLoader

from imputer_asr.config import ImputerConfig
from imputer_asr.data.dataset import (
    ALIGNMENT_FIELD,
    AsrDataset,
    count_cuts,
    lazy_subset,
    load_cuts,
    with_progress,
)
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.files import write_cuts_atomic
from imputer_asr.model.alignment import forced_align, min_alignment_length
from imputer_asr.model.conformer import ImputerModel, subsampled_lengths
from imputer_asr.model.losses import ctc_loss, imputer_loss
from imputer_asr.training.loop import Objective
from imputer_asr.training.masking import block_mask, mask_draws

__all__ = [
    "imputer_objective",
    "configured_objective",
    "imputer_start",
    "learner_alignment",
    "align_cuts",
    "alignment_storage",
    "sample_hours",
    "check_cut_alignments",
]

log = logging.getLogger(__name__)


def imputer_objective(
    block_size: int = 8,
    ctc_weight: float = 0.0,
    learner_fraction: float = 0.0,
    score_observed: bool = True,
    greedy_fraction: float = 0.0,
    generator: torch.Generator | None = None,
) -> Objective:
    """The Imputer training objective for :func:`imputer_asr.training.loop.fit`.

    For a batch: the alignment is ``batch["alignments"]`` (the expert, from :func:`align_cuts`) or,
    for a random ``learner_fraction`` of the utterances (and all of a batch without alignments,
    such as the dev set's), the forced alignment under the model itself (:func:`learner_alignment`:
    the paper's learner roll-in); it is block-masked, the network reads the shown tokens, and the
    loss is the Imputer loss summed over utterances (utterances without a consistent alignment
    count 0), plus ``ctc_weight`` times the CTC loss of the all-[MASK] network on the same
    acoustic encoding (joint training: the same network stays a CTC model).

    Args:
        block_size: B of the block masking.
        ctc_weight: weight of the auxiliary CTC term; 0 leaves it out (and saves a forward pass).
        learner_fraction: share of utterances, in [0, 1], aligned under the model being trained
            instead of by the stored expert.
        score_observed: score the shown frames too (see :func:`imputer_asr.model.losses.imputer_loss`).
        greedy_fraction: share of utterances, in [0, 1], shown their own greedy alignment (the argmax
            of the all-[MASK] pass, block-masked) and scored with the CTC loss over every alignment:
            the states K-step decoding visits, with its mistakes, and a target that corrects them.
        generator: randomness of the masks and of the roll-in choice (default: torch's global one).

    Returns:
        ``(model, batch) -> (summed loss, number of target tokens)``. Its ``draw(batch)`` gives the
        random numbers a call would draw, per utterance; a batch that carries them (as
        :class:`~imputer_asr.training.distributed.ParallelObjective` adds them before it shares the
        batch's rows among threads) is scored with them.

    Raises (when called):
        ValueError: when a stored alignment's length differs from the model's output length.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    if ctc_weight < 0:
        raise ValueError(f"ctc_weight must be >= 0, got {ctc_weight}")
    if not 0.0 <= learner_fraction <= 1.0:
        raise ValueError(f"learner_fraction must be in [0, 1], got {learner_fraction}")
    if not 0.0 <= greedy_fraction <= 1.0:
        raise ValueError(f"greedy_fraction must be in [0, 1], got {greedy_fraction}")

    def draw(batch: dict) -> dict[str, Tensor]:
        """The objective's random numbers for ``batch``, a row per utterance, all drawn before any
        is used: the batch's rows may then be scored apart (``train.share_batch``) with the choices
        and masks of the whole batch, and a seeded run repeats."""
        features = batch["features"]
        n = features.size(0)
        device = generator.device if generator is not None else features.device
        draws = {}
        if "alignments" in batch:
            draws["draw_learner"] = torch.rand(n, generator=generator, device=device)
        if greedy_fraction > 0:
            draws["draw_greedy"] = torch.rand(n, generator=generator, device=device)
        frames = subsampled_lengths(features.size(1))
        draws["draw_mask_k"], draws["draw_mask_noise"] = mask_draws(n, frames, block_size, generator, device)
        return {key: value.to(features.device) for key, value in draws.items()}

    def objective(model: ImputerModel, batch: dict) -> tuple[Tensor, int]:
        if "draw_mask_k" not in batch:
            batch = {**batch, **draw(batch)}
        features, feature_lengths = batch["features"], batch["feature_lengths"]
        targets, target_lengths = batch["targets"], batch["target_lengths"]
        n = features.size(0)
        if "alignments" in batch:
            learner = batch["draw_learner"] < learner_fraction
        else:
            learner = torch.ones(n, dtype=torch.bool, device=features.device)
        own = None
        if learner.any():
            own = learner_alignment(model, features, feature_lengths, targets, target_lengths)
        hidden, lengths = model.encode_acoustic(features, feature_lengths)
        if learner.all():
            alignment = own
        else:
            alignment = _expert_alignment(batch, lengths, hidden.size(1))
            if own is not None:
                alignment = torch.where(learner.unsqueeze(1), own.to(alignment.device), alignment)
        blank = model.cfg.blank_id
        alignment = alignment.to(hidden.device)
        ctc_log_probs = None
        if ctc_weight > 0 or greedy_fraction > 0:
            ctc_log_probs = model.impute(hidden, lengths, model.all_mask(hidden))
        greedy = torch.zeros(n, dtype=torch.bool, device=hidden.device)
        if greedy_fraction > 0:
            greedy = batch["draw_greedy"].to(hidden.device) < greedy_fraction
            own_greedy = ctc_log_probs.detach().argmax(-1).masked_fill(alignment < 0, -1)
            alignment = torch.where(greedy.unsqueeze(1), own_greedy, alignment)
        drawn = (batch["draw_mask_k"], batch["draw_mask_noise"])
        tokens_in, observed = block_mask(
            alignment, lengths, block_size, mask_id=model.cfg.mask_id, draws=drawn
        )
        # Its own tokens may be wrong: no alignment need agree with them, so none is held to them.
        observed = observed.masked_fill(greedy.unsqueeze(1), -1)
        log_probs = model.impute(hidden, lengths, tokens_in)
        loss = imputer_loss(
            log_probs,
            targets,
            lengths,
            target_lengths,
            observed,
            blank=blank,
            reduction="none",
            zero_infinity=True,
            score_observed=score_observed,
        )
        if ctc_weight > 0:
            ctc = ctc_loss(
                ctc_log_probs,
                targets,
                lengths,
                target_lengths,
                blank=blank,
                reduction="none",
                zero_infinity=True,
            )
            loss = loss + ctc_weight * ctc
        return loss.sum(), int(target_lengths.sum())

    objective.draw = draw
    return objective


def configured_objective(cfg: ImputerConfig) -> Objective:
    """:func:`imputer_objective` as an experiment's ``imputer`` section sets it (what
    ``imputer-asr train-imputer`` trains with)."""
    return imputer_objective(
        cfg.block_size, cfg.ctc_weight, cfg.learner_fraction, cfg.score_observed, cfg.greedy_fraction
    )


def imputer_start(weights: dict[str, Tensor], mask_id: int) -> dict[str, Tensor]:
    """A CTC model's weights as the start of an Imputer that computes exactly the CTC model's
    function whatever alignment it is shown.

    A CTC model has only ever read [MASK]: its other alignment-embedding rows are still their random
    initialisation, and would perturb its output as soon as tokens are shown. They become copies of
    the [MASK] row (as the public reference implementation does), and ``token_embed``, the
    alignment's own path, is zero, so the Imputer starts from the CTC model's output and learns to
    read its input from there.
    """
    weights = dict(weights)
    rows = weights["align_embed.weight"]
    weights["align_embed.weight"] = rows[mask_id].expand_as(rows).clone()
    weights["token_embed.weight"] = torch.zeros_like(weights.get("token_embed.weight", rows))
    return weights


def learner_alignment(
    model: ImputerModel,
    features: Tensor,
    feature_lengths: Tensor,
    targets: Tensor,
    target_lengths: Tensor,
) -> Tensor:
    """Forced alignment of the targets under ``model`` fed an all-[MASK] alignment: (N, T'), -1 padded.

    Runs without gradient and in eval mode (dropout off: the alignment the model would produce at
    test time; the mode is restored afterwards). Utterances too short for their targets get an
    all-blank alignment, whose Imputer loss is then infeasible (counted 0 with zero_infinity).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            log_probs, lengths = model(features, feature_lengths)
    finally:
        model.train(was_training)
    return _align_feasible(log_probs, lengths, targets, target_lengths, model.cfg.blank_id)[0]


def _align_feasible(
    log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor, blank: int
) -> tuple[Tensor, Tensor]:
    """Forced alignment of the utterances that have one; (N, T') with all-blank rows (within the
    length) for the others, and the (N,) bool mask of the aligned ones."""
    targets = targets.to(log_probs.device)
    target_lengths = target_lengths.to(log_probs.device)
    lengths = lengths.to(log_probs.device)
    feasible = lengths >= min_alignment_length(targets, target_lengths)
    past = torch.arange(log_probs.size(1), device=log_probs.device) >= lengths.unsqueeze(1)
    alignment = torch.full(log_probs.shape[:2], blank, dtype=torch.long, device=log_probs.device)
    rows = feasible.nonzero().squeeze(1)
    if rows.numel():
        alignment[rows] = forced_align(
            log_probs[rows], lengths[rows], targets[rows], target_lengths[rows], blank
        )
    return alignment.masked_fill(past, -1), feasible


def _expert_alignment(batch: dict, lengths: Tensor, width: int) -> Tensor:
    """The batch's stored alignments, checked against the model's output lengths, as (N, width)."""
    alignments = batch["alignments"]
    stored = batch.get("alignment_lengths")
    if stored is None:
        stored = (alignments >= 0).sum(dim=1)
    stored = stored.to(lengths.device)
    wrong = (stored != lengths).nonzero().squeeze(1).tolist()
    if wrong:
        cut_ids = batch.get("cut_ids", [str(i) for i in range(len(lengths))])
        details = ", ".join(f"{cut_ids[i]} ({int(stored[i])} vs {int(lengths[i])})" for i in wrong[:5])
        raise ValueError(
            f"stored alignment length differs from the model's output length for {len(wrong)} cut(s): "
            f"{details}; the alignments were computed from other features or another subsampling "
            f"(rerun the align stage)"
        )
    if alignments.size(1) >= width:
        return alignments[:, :width]
    return torch.nn.functional.pad(alignments, (0, width - alignments.size(1)), value=-1)


def check_cut_alignments(cuts: CutSet) -> None:
    """Raise ValueError unless every cut carries an alignment of ``subsampled_lengths(num_frames)``
    frames in array storage, and that storage holds it: the check the train-imputer stage runs before
    training starts.

    One pass over the manifest. An HDF5 storage (what :func:`align_cuts` writes) is opened once and
    each cut's entry looked up, its shape and type, not its data; it is closed again before returning,
    so no DataLoader worker inherits the handle.
    """
    counts = dict.fromkeys(_ALIGNMENT_FAULTS, 0)
    first: dict[str, str] = {}
    with _OpenStorages() as storages:
        for cut in cuts:
            stored = cut.custom.get(ALIGNMENT_FIELD) if cut.custom else None
            if stored is None:
                fault = "missing"
            elif not isinstance(stored, TemporalArray):
                fault = "inline"
            elif stored.shape[0] != subsampled_lengths(cut.num_frames):
                fault = "wrong"
            else:
                fault = None if storages.holds(stored.array) else "unstored"
            if fault is not None:
                counts[fault] += 1
                where = f" in {stored.array.storage_path}" if fault == "unstored" else ""
                first.setdefault(fault, f"{cut.id}{where}")
    for fault, message in _ALIGNMENT_FAULTS.items():
        if counts[fault]:
            raise ValueError(message.format(n=counts[fault], cut=first[fault], field=ALIGNMENT_FIELD))


_ALIGNMENT_FAULTS = {
    "missing": "{n} cut(s) have no '{field}' (e.g. {cut}): run the align stage on these cuts, or set "
    "imputer.learner_fraction=1",
    "inline": "{n} cut(s) carry their alignment inline in the manifest (e.g. {cut}), as the align stage "
    "wrote it before alignments moved to array storage: rerun the align stage",
    "wrong": "{n} cut(s) have an alignment whose length does not match their features (e.g. {cut}): "
    "rerun the align stage on the current features",
    "unstored": "{n} cut(s) have no alignment of the manifest's shape in their storage (e.g. {cut}): "
    "the storage was changed or replaced after the manifest was written; rerun the align stage",
}
"""What :func:`check_cut_alignments` refuses, in the order it reports it."""


class _OpenStorages:
    """The alignment storages a check has opened, by path; the HDF5 files are closed on exit."""

    def __init__(self) -> None:
        self.files: dict[str, h5py.File] = {}

    def __enter__(self) -> _OpenStorages:
        return self

    def __exit__(self, *exc_info) -> None:
        for file in self.files.values():
            file.close()

    def holds(self, array: Array) -> bool:
        """Whether ``array``'s HDF5 storage holds an integer array of its shape under its key.

        Raises:
            ValueError: naming the storage, when it is missing or not an HDF5 file that opens.
        """
        path = array.storage_path
        if path not in self.files:
            self.files[path] = _open_storage(path)
        file = self.files[path]
        try:
            entry = file.get(array.storage_key)
        except (OSError, KeyError, RuntimeError, ValueError):  # a damaged entry: it does not hold it
            return False
        return (
            isinstance(entry, h5py.Dataset)
            and entry.shape == tuple(array.shape)
            and np.issubdtype(entry.dtype, np.integer)
        )


def _open_storage(path: str) -> h5py.File:
    """The HDF5 file ``path`` open for reading."""
    if not Path(path).exists():
        raise ValueError(f"{path}: no such alignment storage (the manifest names it): rerun the align stage")
    try:
        return h5py.File(path, "r")
    except OSError as exc:  # cut short, or not HDF5
        raise ValueError(f"{path}: not a readable alignment storage ({exc}): rerun the align stage") from None


def sample_hours(cuts: CutSet, hours: float, seed: int = 0) -> CutSet:
    """A seeded random subset of ``cuts`` with at least ``hours`` of audio (all of them when they
    hold less), in the input order; lazy when ``cuts`` are.

    The Imputer continues a trained CTC model for a few hundred updates, which read only part of a
    speed-perturbed training set; aligning just the audio it will read saves most of the align
    stage. Cuts are drawn without replacement until the total reaches ``hours``, so the subset
    overshoots by less than one cut. The draw needs the number and durations of all the cuts: one
    pass reads them (ids and durations only), and the subset is read as it is iterated.

    >>> from lhotse.testing.dummies import DummyManifest
    >>> cuts = DummyManifest(CutSet, begin_id=0, end_id=10)  # ten 1-second cuts
    >>> len(sample_hours(cuts, 3.5 / 3600)), len(sample_hours(cuts, 1.0))
    (4, 10)
    """
    if not hours > 0:
        raise ValueError(f"hours must be positive, got {hours}")
    ids, durations = [], []
    for cut in cuts:
        ids.append(cut.id)
        durations.append(cut.duration)
    budget, available = hours * 3600.0, sum(durations)
    if available <= budget:
        log.info("aligning all %d cuts (%.2f h)", len(ids), available / 3600)
        return cuts
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    chosen, total = set(), 0.0
    for index in order:
        if total >= budget:
            break
        chosen.add(ids[index])
        total += durations[index]
    # Logged here, from the one pass that read the durations: counting again would read the manifest again.
    log.info("aligning %d of %d cuts (%.2f of %.2f h)", len(chosen), len(ids), total / 3600, available / 3600)
    if cuts.is_lazy:
        return lazy_subset(cuts, _IdIn(frozenset(chosen)), len(chosen))
    return CutSet([cut for cut in cuts if cut.id in chosen])


class _IdIn:
    """Whether a cut's id is one of ``ids`` (a predicate a lazy CutSet can hold)."""

    def __init__(self, ids: frozenset[str]) -> None:
        self.ids = ids

    def __call__(self, cut: Cut) -> bool:
        return cut.id in self.ids


def alignment_storage(manifest: Path) -> Path:
    """The HDF5 file holding the alignments of the cuts manifest ``manifest`` (:func:`align_cuts`).

    >>> alignment_storage(Path("exp/cuts_train_aligned.jsonl.gz")).as_posix()
    'exp/cuts_train_aligned.alignments.h5'
    """
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.name.removesuffix('.gz').removesuffix('.jsonl')}.alignments.h5")


@torch.inference_mode()
def align_cuts(
    model: ImputerModel, cuts: CutSet, tokenizer: Tokenizer, out: Path, *, max_duration: float = 200.0
) -> CutSet:
    """Expert alignments: the forced alignment of every cut's transcript under a CTC ``model``,
    written to the cuts manifest ``out`` and its array storage; returns the cuts of ``out`` (lazy).

    Each cut of ``out`` carries ``cut.custom["alignment"]``: a lhotse TemporalArray of int32 tokens,
    one per encoder frame (blank 0, pieces 1..C-1; frame shift 4x the features'). All the alignments
    of ``out`` are one HDF5 file, :func:`alignment_storage` (lhotse's numpy_hdf5 storage: lossless,
    one dataset per cut, its key the URL-quoted cut id), not a file per cut: a 960 h x 3 set has some
    850k cuts.

    The manifest and its storage are replaced as a pair: the storage is written under a temporary
    name and flushed to disk, then the old manifest is removed, the new storage renamed into place,
    and the new manifest last. A crash leaves the previous manifest with its storage, or no manifest
    (rerun the stage), never a manifest naming a storage that is half written or another run's.
    Handles to HDF5 files that lhotse keeps open in this process are closed afterwards, so a later
    read opens the new storage, not the one it replaced.

    Cuts that cannot be aligned (fewer encoder frames than their labels need) are dropped, with a
    logged count. The cuts keep the input order. ``cuts`` are read in two passes (the alignment, then
    the manifest), neither holding them all.

    Args:
        model: the CTC model (an Imputer fed all-[MASK]); run in eval mode.
        cuts: cuts with features and supervisions.
        tokenizer: the model's tokenizer (its vocabulary must match the model's).
        out: the cuts manifest to write (``.jsonl.gz``).
        max_duration: seconds of audio per batch.
    """
    if tokenizer.vocab_size != model.cfg.vocab_size or tokenizer.mask_id != model.cfg.mask_id:
        raise ValueError(
            f"tokenizer ({tokenizer.vocab_size} classes) does not match the model "
            f"({model.cfg.vocab_size} classes)"
        )
    out = Path(out)
    storage = alignment_storage(out)
    staging = storage.with_name(f".{storage.stem}.tmp.h5")  # lhotse's writer keeps an .h5 ending only
    staged = out.with_name(f".staged-{out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    total = count_cuts(cuts)
    try:
        stored = _write_alignments(model, cuts, tokenizer, staging, total, max_duration)
        _fsync(staging)
        write_cuts_atomic(_with_alignments(cuts, stored, storage), staged)
        _fsync(staged)
        out.unlink(missing_ok=True)
        staging.replace(storage)
        _fsync(out.parent)  # the storage's rename is on disk before the manifest's
        staged.replace(out)
        _fsync(out.parent)
    finally:
        staging.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)
        close_cached_file_handles()
    if total > len(stored):
        log.warning("dropped %d of %d cuts that cannot be aligned (too short)", total - len(stored), total)
    log.info("aligned %d cuts into %s", len(stored), storage)
    return load_cuts(out)


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_alignments(
    model: ImputerModel, cuts: CutSet, tokenizer: Tokenizer, storage: Path, total: int, max_duration: float
) -> dict[str, tuple[str, int]]:
    """Align the cuts and store each alignment in the HDF5 file ``storage``: cut id -> (storage key,
    frames) of those that have one. The batches are drawn as they are read (a bucketing sampler, not
    shuffled)."""
    model.eval()
    device = next(model.parameters()).device
    bins = list(_ALIGN_BUCKETS)  # fixed: lhotse's estimate of them needs more cuts than buckets
    cuts = cuts.map(_without_alignment)  # realigning: the old alignments are neither needed nor read
    sampler = DynamicBucketingSampler(cuts, max_duration=max_duration, duration_bins=bins, shuffle=False)
    loader = DataLoader(AsrDataset(tokenizer), sampler=sampler, batch_size=None)
    stored: dict[str, tuple[str, int]] = {}
    with NumpyHdf5Writer(storage) as writer:
        for batch in with_progress(loader, total, "align"):
            log_probs, lengths = model(batch["features"].to(device), batch["feature_lengths"].to(device))
            alignment, feasible = _align_feasible(
                log_probs, lengths, batch["targets"], batch["target_lengths"], model.cfg.blank_id
            )
            rows = alignment.cpu().numpy().astype(np.int32)
            for i, cut_id in enumerate(batch["cut_ids"]):
                if feasible[i]:
                    frames = int(lengths[i])
                    stored[cut_id] = (writer.write(_storage_key(cut_id), rows[i, :frames]), frames)
    return stored


def _without_alignment(cut: Cut) -> Cut:
    if not cut.has_custom(ALIGNMENT_FIELD):
        return cut
    return fastcopy(cut, custom={k: v for k, v in cut.custom.items() if k != ALIGNMENT_FIELD})


_ALIGN_BUCKETS = (2.0, 3.0, 4.0, 5.5, 7.5, 10.0, 13.5, 18.0, 24.0)
"""Duration edges (s) of the align stage's batches: within a bucket the longest cut is at most ~1.35x
the shortest (the last one aside), which bounds the padding computed."""


def _storage_key(cut_id: str) -> str:
    """The HDF5 name of a cut's alignment: the id, URL-quoted so that no ``/`` makes it a path of
    groups."""
    return quote(cut_id, safe="")


def _with_alignments(cuts: CutSet, stored: dict[str, tuple[str, int]], storage: Path) -> CutSet:
    """The cuts that have a stored alignment, each pointing to it, made as they are read."""

    def aligned():
        for cut in cuts:
            if cut.id in stored:
                key, frames = stored[cut.id]
                array = Array(NumpyHdf5Writer.name, str(storage), key, [frames])
                alignment = TemporalArray(
                    array, temporal_dim=0, frame_shift=4 * cut.frame_shift, start=cut.start
                )
                yield cut.with_custom(ALIGNMENT_FIELD, alignment)

    return CutSet(aligned())
