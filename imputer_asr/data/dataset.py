"""Batches of precomputed features: lhotse samplers in, padded tensors out.

Manifests are read lazily (:func:`load_cuts`): a pass over the cuts reads the file line by line, so
the training sampler holds its buffer of cuts, not the whole set.

A batch is a dict:
    features (N, T, F) float (T: the longest cut, rounded up to a multiple of :data:`PAD_FRAMES`),
    feature_lengths (N,) long, targets (N, S) long (padded with blank),
    target_lengths (N,) long, texts list[str], cut_ids list[str], durations list[float],
    and, when every cut carries an alignment (Imputer training, ``cut.custom["alignment"]``: a lhotse
    TemporalArray that the align stage wrote to the HDF5 file beside the manifest), alignments (N, T')
    long padded with -1 and alignment_lengths (N,) long.

lhotse keeps the HDF5 files it reads open, one handle per path and process. A DataLoader worker
drops the handles it inherits from the process that forked it (:func:`make_loader`) and opens its own.

>>> # loader = make_loader(load_cuts(path), tokenizer, DataConfig(), train=True)
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet, close_cached_file_handles
from lhotse.array import TemporalArray
from lhotse.cut import Cut
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
    "count_cuts",
    "lazy_subset",
    "with_progress",
    "make_sampler",
    "make_loader",
    "pad_sequences",
    "alignment_file",
    "ALIGNMENT_FIELD",
]

ALIGNMENT_FIELD = "alignment"


def load_cuts(path: Path) -> CutSet:
    """The cuts of a lhotse manifest (``.jsonl`` or ``.jsonl.gz``), read lazily: each pass over them
    reads the file again, line by line, and ``len`` counts its lines.

    Raises:
        ValueError: naming the file when it is missing; and, from the pass that meets it, naming the
            file and the line when it is truncated or holds a line that is not a cut.

    >>> # cuts = load_cuts(Path("data/fbank/cuts_train_fbank.jsonl.gz")); cuts.is_lazy -> True
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such cuts manifest; run the stage that writes it first")
    return CutSet(_CutManifest(path))


class _CutManifest:
    """The cuts of one manifest file, deserialised as they are iterated (what a lazy CutSet reads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._len: int | None = None

    def __iter__(self) -> Iterator[Cut]:
        for number, line in self._lines():
            try:
                yield deserialize_cut(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                what = (
                    "not JSON"
                    if isinstance(exc, json.JSONDecodeError)
                    else f"not a cut ({type(exc).__name__}: {exc})"
                )
                raise ValueError(
                    f"{self.path}, line {number}: {what}; rerun the stage that wrote it"
                ) from None

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(1 for _ in self._lines())
        return self._len

    def _lines(self) -> Iterator[tuple[int, str]]:
        """(line number, line) of each non-blank line."""
        number = 0
        opener = gzip.open if self.path.suffix == ".gz" else open
        try:
            with opener(self.path, "rt", encoding="utf-8") as lines:
                for line in lines:
                    number += 1
                    if line.strip():
                        yield number, line
        except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip raises these for a cut-short file
            raise ValueError(
                f"{self.path}: cannot be read after line {number} ({exc}); rerun the stage that wrote it"
            ) from None


class _SizedFilter:
    """The cuts of ``source`` that ``keep`` accepts, chosen as they are iterated, and their number.

    lhotse's lazy filter cannot say how many cuts it keeps; the progress bars and the feature
    statistics ask, and the code that builds one of these has counted them while choosing them.
    """

    def __init__(self, source: Iterable[Cut], keep: Callable[[Cut], bool], length: int) -> None:
        self.source, self.keep, self.length = source, keep, length

    def __iter__(self) -> Iterator[Cut]:
        return filter(self.keep, self.source)

    def __len__(self) -> int:
        return self.length


def lazy_subset(cuts: CutSet, keep: Callable[[Cut], bool], length: int) -> CutSet:
    """The ``length`` cuts of ``cuts`` that ``keep`` accepts, in their order, as a lazy CutSet with a
    length (``keep`` is called on each pass; it must accept exactly ``length`` of them).

    >>> from lhotse.testing.dummies import DummyManifest
    >>> cuts = DummyManifest(CutSet, begin_id=0, end_id=10)
    >>> even = lazy_subset(cuts, lambda cut: int(cut.id[-4:]) % 2 == 0, 5)
    >>> even.is_lazy, len(even), len(list(even))
    (True, 5, 5)
    """
    return CutSet(_SizedFilter(cuts, keep, length))


def count_cuts(cuts: CutSet) -> int:
    """``len(cuts)``, or the number of cuts a pass over them yields when they cannot tell (a lazy
    lhotse filter)."""
    try:
        return len(cuts)
    except TypeError:
        return sum(1 for _ in cuts)


def pad_sequences(seqs: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad integer sequences: -> (N, max_len) long, lengths (N,) long."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64))
    return out, lengths


PAD_FRAMES = 32
"""Batches are padded in time to a multiple of this many frames. oneDNN builds its bfloat16 kernels
for each new tensor shape; a demo epoch of 600 batches held 328 distinct (utterances, frames)
shapes and 52 once rounded up to 32 frames, for 3.4 % more padded frames; 400 bf16 updates then
ran at 193 s of audio per second instead of 143."""


class AsrDataset(Dataset):
    """Map a CutSet (one sampler batch) to padded tensors; SpecAugment when ``spec_augment``.

    A cut whose features or alignment cannot be read (a missing or corrupt storage file) raises a
    ValueError that names the cut and the file, or, with ``skip_unreadable`` (training), is left out of
    the batch and named in its ``"unreadable"`` list; a batch of such cuts only has ``cut_ids`` [] and
    that list. An alignment stored inline in the manifest (by an older align stage) always raises.
    """

    def __init__(
        self, tokenizer: Tokenizer, spec_augment: SpecAugment | None = None, skip_unreadable: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.spec_augment = spec_augment
        self.skip_unreadable = skip_unreadable

    def __getitem__(self, cuts: CutSet) -> dict:
        cuts = cuts.sort_by_duration(ascending=False)
        aligned = all(c.has_custom(ALIGNMENT_FIELD) for c in cuts)
        alignments: dict[str, np.ndarray] = {}
        unreadable: list[str] = []
        if aligned:
            alignments, unreadable = self._read_alignments(cuts)
            cuts = CutSet([c for c in cuts if c.id in alignments])
        try:
            features, feature_lengths = collate_features(cuts) if cuts else (None, None)
        except Exception:  # storage backends raise many types; find the cuts at fault (or raise again)
            cuts, more = self._readable(cuts)
            unreadable += more
            features, feature_lengths = collate_features(cuts) if cuts else (None, None)
        if not cuts:
            return {"cut_ids": [], "unreadable": unreadable}
        features = torch.nn.functional.pad(features, (0, 0, 0, -features.size(1) % PAD_FRAMES))
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
        if aligned:
            batch["alignments"], batch["alignment_lengths"] = pad_sequences(
                [alignments[c.id] for c in cuts], -1
            )
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
                unreadable.append(f"{cut.id} ({where}: {_first_line(exc)})")
        self._refuse_unless_skipping(unreadable, "features", "fbank")
        return CutSet.from_cuts(good), unreadable

    def _read_alignments(self, cuts: CutSet) -> tuple[dict[str, np.ndarray], list[str]]:
        """cut id -> stored alignment of the cuts whose alignment loads; a message for each other."""
        alignments, unreadable = {}, []
        for cut in cuts:
            try:
                alignments[cut.id] = _load_alignment(cut)
            except _UnreadableAlignment as exc:
                unreadable.append(f"{cut.id} ({exc})")
        self._refuse_unless_skipping(unreadable, "alignments", "align")
        return alignments, unreadable

    def _refuse_unless_skipping(self, unreadable: list[str], what: str, stage: str) -> None:
        """Outside training, unreadable cuts are an error naming (the first three of) them."""
        if unreadable and not self.skip_unreadable:
            raise ValueError(
                f"{len(unreadable)} cut(s) with unreadable {what}: {'; '.join(unreadable[:3])}; "
                f"rerun the {stage} stage"
            )


class _UnreadableAlignment(Exception):
    """An alignment's storage file is missing or does not hold what the manifest says."""


def _first_line(exc: Exception) -> str:
    """``Type: message`` of ``exc``, its first line only: lhotse appends the whole cut to its messages."""
    reason = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {reason}"


def _load_alignment(cut: Cut) -> np.ndarray:
    """A cut's alignment: the whole array the align stage stored.

    Read with the array's own ``load``, not the cut's ``load_custom``, which would cut out the frames
    of the cut's start and duration at the array's frame shift; the alignment has one frame per encoder
    frame, which that arithmetic need not reproduce.

    Raises:
        ValueError: the manifest holds the alignment inline (a list, as older align stages wrote it).
        _UnreadableAlignment: naming the storage file, when it is missing or holds another array.
    """
    value = cut.custom[ALIGNMENT_FIELD]
    if not isinstance(value, TemporalArray):
        raise ValueError(
            f"cut {cut.id}: its '{ALIGNMENT_FIELD}' is a {type(value).__name__} in the manifest, not an "
            "array in storage (a manifest from an older align stage); rerun the align stage"
        )
    where = alignment_file(value)
    try:
        alignment = value.load()
    except Exception as exc:  # storage backends raise many types for a missing or corrupt file
        raise _UnreadableAlignment(f"{where}: {_first_line(exc)}") from None
    if alignment.shape != tuple(value.shape) or not np.issubdtype(alignment.dtype, np.integer):
        raise _UnreadableAlignment(
            f"{where}: holds a {alignment.dtype} array of shape {alignment.shape}, the manifest says "
            f"{tuple(value.shape)} integers"
        )
    return alignment


def alignment_file(alignment: TemporalArray) -> str:
    """Where an alignment is stored: its file and key (``aligned.alignments.h5, key CUT``)."""
    return f"{alignment.array.storage_path}, key {alignment.array.storage_key}"


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

    The bucketing sampler reads lazy ``cuts`` as it goes, holding a buffer of them. The sorted one
    holds them all: a global order by duration needs every duration before the first batch and then
    the cuts in that order, which a (gzipped) manifest read line by line cannot give. That is the
    dev and test sets (a few thousand cuts), and the training set for the sorted first epoch only.
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
        worker_init_fn=_own_file_handles if workers else None,
    )


def _own_file_handles(worker_id: int) -> None:
    """In a new DataLoader worker: drop the HDF5 handles lhotse cached in the process that forked it
    (the alignment storage, when that process read alignments), so that the worker opens its own.

    A forked copy of an open HDF5 file shares the parent's open file and carries a copy of the
    library's state for it; h5py advises opening a file in each reader process, as forking an open one
    "may cause issues" (its Parallel HDF5 notes). Closing the copy leaves the parent's handle, and the
    shared lock HDF5 holds on the file for it, as they were.
    """
    close_cached_file_handles()


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
