"""Data preparation: LibriSpeech-layout corpus -> lhotse manifests -> cuts with stored fbank.

Every step is idempotent: its outputs are written under temporary names and renamed into place, and a
step whose outputs exist is skipped. Training cuts can be augmented while their features are computed
(speed-perturbed copies, and a random chain of effects per waveform: :mod:`imputer_asr.data.augment`), so
the augmented copies are stored once. Cuts that CTC cannot align after 4x subsampling, or that are too
long, are dropped here with a logged count, so nothing fails later because of them.
"""

from __future__ import annotations

import logging
import tarfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter
from lhotse.cut import Cut
from lhotse.recipes import download_librispeech, prepare_librispeech
from lhotse.recipes.librispeech import LIBRISPEECH
from lhotse.utils import compute_num_frames

from imputer_asr.config import FeatureConfig
from imputer_asr.data.augment import ChannelAugment
from imputer_asr.data.dataset import lazy_subset, load_cuts
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.files import write_cuts_atomic
from imputer_asr.model.conformer import subsampled_lengths

__all__ = [
    "OPENSLR_URL",
    "download_corpus",
    "prepare_manifests",
    "combine_manifests",
    "manifest_texts",
    "ctc_feasible",
    "filter_cuts",
    "fbank_extractor",
    "compute_fbank",
]

log = logging.getLogger(__name__)

OPENSLR_URL = "http://www.openslr.org/resources"
"""Where lhotse fetches LibriSpeech from (``<url>/12/<part>.tar.gz``)."""


def _cuts_path(manifest_dir: Path, part: str) -> Path:
    return Path(manifest_dir) / f"cuts_{part}.jsonl.gz"


def download_corpus(target_dir: Path, parts: Sequence[str], base_url: str = OPENSLR_URL) -> Path:
    """Download and unpack LibriSpeech ``parts`` into ``target_dir/LibriSpeech`` (lhotse's
    ``download_librispeech``: a part with its ``.completed`` sentinel is skipped); returns that directory.

    Raises:
        ValueError: a part LibriSpeech does not have, or the download failed (no network, a proxy
            page instead of the archive, ...); one line naming the URL.
    """
    unknown = [p for p in parts if p not in LIBRISPEECH]
    if unknown:
        raise ValueError(f"not LibriSpeech part(s): {', '.join(unknown)} (known: {', '.join(LIBRISPEECH)})")
    try:
        return download_librispeech(target_dir, dataset_parts=list(parts), base_url=base_url)
    except (OSError, tarfile.TarError) as exc:
        raise ValueError(
            f"cannot download LibriSpeech from {base_url}: {exc}; "
            "without network, set CORPUS_DIR to an existing copy (the directory holding train-clean-100 ...)"
        ) from None


def prepare_manifests(corpus_dir: Path, manifest_dir: Path, parts: Sequence[str]) -> None:
    """Read ``corpus_dir/<part>`` (LibriSpeech layout) into ``manifest_dir/cuts_<part>.jsonl.gz``.

    Raises:
        ValueError: a part is missing or holds no audio.
    """
    corpus_dir, manifest_dir = Path(corpus_dir), Path(manifest_dir)
    missing = [p for p in parts if not (corpus_dir / p).is_dir()]
    if missing:
        raise ValueError(f"{corpus_dir}: missing corpus part(s): {', '.join(missing)}")
    manifest_dir.mkdir(parents=True, exist_ok=True)
    todo = [p for p in parts if not _cuts_path(manifest_dir, p).is_file()]
    if not todo:
        return
    manifests = prepare_librispeech(corpus_dir, dataset_parts=todo, output_dir=manifest_dir)
    for part in todo:
        if part not in manifests or len(manifests[part]["recordings"]) == 0:
            raise ValueError(f"{corpus_dir / part}: no audio files with transcripts found")
        m = manifests[part]
        cuts = CutSet.from_manifests(recordings=m["recordings"], supervisions=m["supervisions"])
        cuts = cuts.trim_to_supervisions(keep_overlapping=False).to_eager()
        write_cuts_atomic(cuts, _cuts_path(manifest_dir, part))
        hours = sum(c.duration for c in cuts) / 3600
        log.info("%s: %d cuts, %.2f h", part, len(cuts), hours)


def combine_manifests(manifest_dir: Path, parts: Sequence[str], name: str) -> Path:
    """Write ``cuts_<name>.jsonl.gz`` holding the cuts of every prepared part in ``parts`` (the three
    training parts of LibriSpeech 960 h become one training set); skipped when it exists."""
    out = _cuts_path(manifest_dir, name)
    if out.is_file():
        return out
    if not parts:
        raise ValueError(f"no parts to combine into {out}")
    paths = [_cuts_path(manifest_dir, p) for p in parts]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{', '.join(missing)}: no such manifest; run the manifests stage first")
    combined = load_cuts(paths[0])
    for path in paths[1:]:
        combined = combined + load_cuts(path)  # lazy: written as it is read
    write_cuts_atomic(combined, out)
    return out


def manifest_texts(manifest_dir: Path, part: str) -> list[str]:
    """Transcripts of one prepared part (to train the tokenizer)."""
    path = _cuts_path(manifest_dir, part)
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest; run the manifests stage first")
    return [s.text for c in load_cuts(path) for s in c.supervisions]


def ctc_feasible(num_encoder_frames: int, token_ids: Sequence[int]) -> bool:
    """CTC needs one frame per token plus one blank between each pair of equal neighbours.

    >>> ctc_feasible(3, [5, 5])
    True
    >>> ctc_feasible(2, [5, 5])
    False
    """
    repeats = sum(a == b for a, b in zip(token_ids, token_ids[1:], strict=False))
    return num_encoder_frames >= len(token_ids) + repeats


class _Trainable:
    """The test of :func:`filter_cuts`, as an object a lazy CutSet can call on each pass."""

    def __init__(self, tokenizer: Tokenizer, features: FeatureConfig, max_duration: float) -> None:
        self.tokenizer, self.features, self.max_duration = tokenizer, features, max_duration

    def drop_reason(self, cut: Cut) -> str | None:
        """None for a cut to keep, else why not: "long", "unspellable" or "short"."""
        if cut.duration > self.max_duration:
            return "long"
        ids = self.tokenizer.encode(_transcript(cut))
        if self.tokenizer.unk_id in ids:
            return "unspellable"
        frames = compute_num_frames(cut.duration, self.features.frame_shift, self.features.sample_rate)
        encoder_frames = subsampled_lengths(frames)
        if not ids or not ctc_feasible(encoder_frames, ids):
            return "short"
        return None

    def __call__(self, cut: Cut) -> bool:
        return self.drop_reason(cut) is None


def _transcript(cut: Cut) -> str:
    return " ".join(s.text for s in cut.supervisions)


def filter_cuts(cuts: CutSet, tokenizer: Tokenizer, features: FeatureConfig, max_duration: float) -> CutSet:
    """Keep cuts of at most ``max_duration`` seconds that CTC can align after 4x subsampling, and
    whose transcript the tokenizer can spell (a character it lacks would become ``<unk>``: the
    first such cut is named in the log).

    Eager cuts are filtered now. Lazy ones are counted now, in one pass that holds none of them (for
    the log and the length), and come back as a lazy CutSet that filters them again as it is read.
    """
    trainable = _Trainable(tokenizer, features, max_duration)
    kept: list[Cut] = []
    total, num_kept, dropped, unspellable = 0, 0, Counter(), None
    for cut in cuts:
        total += 1
        reason = trainable.drop_reason(cut)
        if reason is None:
            num_kept += 1
            if not cuts.is_lazy:
                kept.append(cut)
            continue
        dropped[reason] += 1
        if reason == "unspellable" and unspellable is None:
            unspellable = (cut.id, _transcript(cut))
    if dropped:
        log.info(
            "filtered %d of %d cuts: %d longer than %.0f s, %d too short for their transcript, "
            "%d with characters outside the tokenizer",
            dropped.total(),
            total,
            dropped["long"],
            max_duration,
            dropped["short"],
            dropped["unspellable"],
        )
    if unspellable is not None:
        cut_id, text = unspellable
        odd = sorted({ch for ch in text if tokenizer.unk_id in tokenizer.encode(ch)})
        log.warning("e.g. cut %s: %r not in the tokenizer (transcript %r)", cut_id, "".join(odd), text)
    if cuts.is_lazy:
        return lazy_subset(cuts, trainable, num_kept)
    return CutSet(kept)


def fbank_extractor(features: FeatureConfig) -> Fbank:
    """The log-mel front end: training features and transcription both come from this one."""
    return Fbank(
        FbankConfig(
            sampling_rate=features.sample_rate,
            frame_shift=features.frame_shift,
            num_mel_bins=features.num_mel_bins,
        )
    )


def _single_threaded() -> None:
    """Worker initialiser: one torch thread per process, or 2 workers on 2 cores oversubscribe."""
    torch.set_num_threads(1)


def compute_fbank(
    manifest_dir: Path,
    part: str,
    output_dir: Path,
    tokenizer: Tokenizer,
    features: FeatureConfig,
    *,
    augment: bool = False,
    speeds: Sequence[float] = (0.9, 1.1),
    effects: ChannelAugment | None = None,
    max_duration: float = 30.0,
    num_jobs: int = 2,
) -> Path:
    """Compute and store 80-dim fbank for one part; returns the path of its cuts with features.

    With ``augment``, speed-perturbed copies (``speeds``; empty for none) are added and every
    waveform, original or copy, goes through ``effects`` (:mod:`~imputer_asr.data.augment`) before its
    features are computed.
    """
    output_dir = Path(output_dir)
    out = output_dir / f"cuts_{part}_fbank.jsonl.gz"
    if out.is_file():
        log.info("%s exists, skipping", out)
        return out
    path = _cuts_path(manifest_dir, part)
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest; run the manifests stage first")
    bad_speeds = [s for s in speeds if not 0.5 <= s <= 2.0 or s == 1.0]
    if bad_speeds:
        raise ValueError(f"speed factors must be in [0.5, 2] and not 1, got {bad_speeds}")
    # Eager: the speed-perturbed copies are made from these cuts, and the feature extraction splits
    # them among its worker processes. Manifests without features are small.
    cuts = CutSet.from_file(path).to_eager()
    if augment:
        cuts = cuts + CutSet.from_cuts(c for s in speeds for c in cuts.perturb_speed(s))
    cuts = filter_cuts(cuts, tokenizer, features, max_duration).to_eager()
    extractor = fbank_extractor(features)
    output_dir.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(num_jobs, initializer=_single_threaded) as executor:
        cuts = cuts.compute_and_store_features(
            extractor=extractor,
            storage_path=output_dir / f"feats_{part}",
            num_jobs=num_jobs,
            augment_fn=effects if augment else None,
            storage_type=LilcomChunkyWriter,
            executor=executor,
        )
    write_cuts_atomic(cuts, out)
    hours = sum(c.duration for c in cuts) / 3600
    log.info("%s: features for %d cuts (%.2f h) in %s", part, len(cuts), hours, out)
    return out
