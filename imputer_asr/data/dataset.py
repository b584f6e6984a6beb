"""Batches of precomputed features: lhotse samplers in, padded tensors out.

A batch is a dict:
    features (N, T, F) float, feature_lengths (N,) long, targets (N, S) long (padded with blank),
    target_lengths (N,) long, texts list[str], cut_ids list[str], durations list[float],
    and, when every cut carries an alignment (Imputer training, ``cut.custom["alignment"]``: a list of
    ints written by the align stage, or a lhotse array), alignments (N, T') long padded with -1 and
    alignment_lengths (N,) long.

>>> # loader = make_loader(cuts, tokenizer, DataConfig(), train=True)
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut.set import deserialize_cut
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler, SpecAugment
from lhotse.dataset.collation import collate_features
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imputer_asr.config import DataConfig
from imputer_asr.data.tokenizer import Tokenizer

__all__ = [
    "AsrDataset",
    "load_cuts",
    "with_progress",
    "make_sampler",
    "make_loader",
    "pad_sequences",
    "ALIGNMENT_FIELD",
]

ALIGNMENT_FIELD = "alignment"


def load_cuts(path: Path) -> CutSet:
    """The cuts of a lhotse manifest (``.jsonl`` or ``.jsonl.gz``), read eagerly.

    Raises:
        ValueError: naming the file (and the line) when it is missing, truncated, or holds a line that
            is not a cut.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such cuts manifest; run the stage that writes it first")
    cuts, number = [], 0
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                number += 1  # kept for the error messages below
                if line.strip():
                    cuts.append(deserialize_cut(json.loads(line)))
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip raises these for a cut-short file
        raise ValueError(
            f"{path}: cannot be read after line {number} ({exc}); rerun the stage that wrote it"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        what = (
            "not JSON"
            if isinstance(exc, json.JSONDecodeError)
            else f"not a cut ({type(exc).__name__}: {exc})"
        )
        raise ValueError(f"{path}, line {number}: {what}; rerun the stage that wrote it") from None
    return CutSet.from_cuts(cuts)


def pad_sequences(seqs: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad integer sequences: -> (N, max_len) long, lengths (N,) long."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out, lengths


class AsrDataset(Dataset):
    """Map a CutSet (one sampler batch) to padded tensors; SpecAugment when ``spec_augment``.

    A cut whose features cannot be read (a missing or corrupt storage file) raises a ValueError that
    names the cut and the file, or, with ``skip_unreadable`` (training), is left out of the batch and
    named in its ``"unreadable"`` list; a batch of such cuts only has ``cut_ids`` [] and that list.
    """

    def __init__(
        self, tokenizer: Tokenizer, spec_augment: SpecAugment | None = None, skip_unreadable: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.spec_augment = spec_augment
        self.skip_unreadable = skip_unreadable

    def __getitem__(self, cuts: CutSet) -> dict:
        cuts = cuts.sort_by_duration(ascending=False)
        unreadable: list[str] = []
        try:
            features, feature_lengths = collate_features(cuts)
        except Exception:  # storage backends raise many types; find the cuts at fault (or raise again)
            cuts, unreadable = self._readable(cuts)
            if not cuts:
                return {"cut_ids": [], "unreadable": unreadable}
            features, feature_lengths = collate_features(cuts)
        if self.spec_augment is not None:
            features = self.spec_augment(features)
        texts = [" ".join(s.text for s in c.supervisions) for c in cuts]
        targets, target_lengths = pad_sequences(self.tokenizer.encode_batch(texts), self.tokenizer.blank_id)
        batch = {
            "features": features,
            "feature_lengths": feature_lengths,
            "targets": targets,
            "target_lengths": target_lengths,
            "texts": texts,
            "cut_ids": [c.id for c in cuts],
            "durations": [c.duration for c in cuts],
            "unreadable": unreadable,
        }
        if all(c.has_custom(ALIGNMENT_FIELD) for c in cuts):
            aligns = [_load_alignment(c) for c in cuts]
            batch["alignments"], batch["alignment_lengths"] = pad_sequences(aligns, -1)
        return batch

    def _readable(self, cuts: CutSet) -> tuple[CutSet, list[str]]:
        """The cuts whose features load, and a message for each of the others."""
        good, unreadable = [], []
        for cut in cuts:
            try:
                cut.load_features()
                good.append(cut)
            except Exception as exc:  # storage backends raise many types for a missing or corrupt file
                where = f"{cut.features.storage_path}" if cut.has_features else "no features"
                reason = str(exc).splitlines()[0] if str(exc) else ""  # lhotse appends the whole cut
                unreadable.append(f"{cut.id} ({where}: {type(exc).__name__}: {reason})")
        if unreadable and not self.skip_unreadable:
            raise ValueError(
                f"{len(unreadable)} cut(s) with unreadable features: {'; '.join(unreadable[:3])}; "
                "rerun the fbank stage"
            )
        return CutSet.from_cuts(good), unreadable


def _load_alignment(cut) -> list[int]:
    """A cut's stored alignment: a list of ints in the manifest (what ``align`` writes), or a
    lhotse Array/TemporalArray manifest."""
    value = cut.custom[ALIGNMENT_FIELD]
    if isinstance(value, (list, tuple)):
        return list(value)
    return np.asarray(cut.load_custom(ALIGNMENT_FIELD)).astype(np.int64).tolist()


def make_sampler(
    cuts: CutSet,
    cfg: DataConfig,
    *,
    train: bool,
    sort_by_duration: bool = False,
    seed: int = 0,
    world_size: int | None = None,
    rank: int | None = None,
):
    """DynamicBucketingSampler for training; a plain sampler over duration-sorted cuts otherwise.

    ``sort_by_duration`` (for the first training epoch) feeds the shortest utterances first, which
    shortens the all-blank plateau of CTC training (SortaGrad, Deep Speech 2).
    """
    if train and not sort_by_duration:
        return DynamicBucketingSampler(
            cuts,
            max_duration=cfg.max_duration,
            num_buckets=cfg.num_buckets,
            shuffle=True,
            drop_last=False,
            seed=seed,
            world_size=world_size,
            rank=rank,
        )
    return SimpleCutSampler(
        cuts.sort_by_duration(ascending=True),
        max_duration=cfg.max_duration,
        shuffle=False,
        world_size=world_size,
        rank=rank,
    )


class _SkipFirst:
    """A sampler without its first ``n`` batches. The samplers' order is a function of their seed,
    so these are the batches an interrupted pass already yielded."""

    def __init__(self, sampler, n: int) -> None:
        self.sampler, self.n = sampler, n

    def __iter__(self):
        batches = iter(self.sampler)
        for _ in itertools.islice(batches, self.n):
            pass
        return batches


def make_loader(
    cuts: CutSet,
    tokenizer: Tokenizer,
    cfg: DataConfig,
    *,
    train: bool,
    sort_by_duration: bool = False,
    seed: int = 0,
    world_size: int | None = None,
    rank: int | None = None,
    skip_batches: int = 0,
) -> DataLoader:
    """A DataLoader yielding the batches described in the module docstring, after the sampler's
    first ``skip_batches`` (drawn, not loaded: a resumed epoch goes on where it stopped)."""
    spec = None
    if train and cfg.spec_augment:
        spec = SpecAugment(
            time_warp_factor=cfg.time_warp_factor or None,
            num_feature_masks=cfg.num_feature_masks,
            features_mask_size=cfg.features_mask_size,
            num_frame_masks=cfg.num_frame_masks,
            frames_mask_size=cfg.frames_mask_size,
        )
    sampler = make_sampler(
        cuts,
        cfg,
        train=train,
        sort_by_duration=sort_by_duration,
        seed=seed,
        world_size=world_size,
        rank=rank,
    )
    workers = cfg.num_workers if train else 0
    return DataLoader(
        AsrDataset(tokenizer, spec, skip_unreadable=train),
        sampler=_SkipFirst(sampler, skip_batches) if skip_batches else sampler,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
    )


def with_progress(
    batches: Iterable[dict],
    total_cuts: int,
    desc: str,
    disable: bool | None = None,
    file=None,
    leave: bool = False,
) -> Iterator[dict]:
    """``batches`` unchanged, with a progress bar of the cuts done on stderr (``file``): the loops of
    decode, align and tune-lm take minutes on a large set. ``disable`` None: shown only on a terminal,
    so logs and pipes stay clean; ``leave``: keep the finished bar."""
    with tqdm(total=total_cuts, desc=desc, unit="utt", disable=disable, leave=leave, file=file) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch["cut_ids"]))
