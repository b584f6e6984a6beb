"""Render a synthetic read-speech corpus in the LibriSpeech directory layout.

``render_corpus(out_dir, {"train": 4000, "dev": 300, "test": 300}, {"train": 40, "dev": 8,
"test": 8})`` writes::

    out_dir/train/<speaker>/<chapter>/<speaker>-<chapter>-<index:04d>.flac   16 kHz mono 16-bit
    out_dir/train/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt          "<utt-id> TEXT"
    out_dir/speakers.tsv, out_dir/README, out_dir/.plan.json, out_dir/.completed

so that ``lhotse.recipes.prepare_librispeech(out_dir, dataset_parts=["train", "dev", "test"])``
reads it unchanged (custom part names work when they are listed; only
``dataset_parts="auto"`` looks for LibriSpeech's own names).

Resuming: each FLAC is written under a temporary name and renamed, so a file that exists is
complete and is not rendered again; ``trans.txt`` files are written after their audio and
``.completed`` (the JSON of the arguments) last. When ``.completed`` holds the same arguments
the call returns at once. ``.plan.json`` guards a half-written corpus against a rerun with
other arguments.

Jobs are threads: each utterance runs the engine and sox as subprocesses, so ``num_jobs``
threads keep ``num_jobs`` synthesis processes busy without pickling anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import soundfile as sf
from tqdm.auto import tqdm

from imputer_asr.files import write_text_atomic

from .plan import Utterance, plan_corpus
from .voices import Speaker, require_tools

__all__ = ["SAMPLE_RATE", "render_corpus", "synthesize"]

SAMPLE_RATE = 16000
PLAN_VERSION = 3
_ATTEMPTS = 2
_MAX_FAILED_SHARE = 0.05
_TIMEOUT_S = 120

log = logging.getLogger(__name__)


def synthesize(speaker: Speaker, spoken: str, flac_path: Path) -> None:
    """Speak ``spoken`` with ``speaker`` into a 16 kHz mono 16-bit FLAC, atomically.

    Raises ``subprocess.CalledProcessError``, ``subprocess.TimeoutExpired`` or RuntimeError
    (no audio) on failure; ``flac_path`` then does not exist.
    """
    partial = flac_path.with_name(flac_path.name + ".partial")
    try:
        with tempfile.TemporaryDirectory(prefix="imputer-synth-") as tmp:
            wav = Path(tmp) / "speech.wav"
            convert = ["sox", "-R", str(wav), "-t", "flac", "-b", "16", "-c", "1", str(partial)]
            convert += speaker.sox_effects() + ["rate", str(SAMPLE_RATE)]
            steps = ((speaker.command(spoken, wav), speaker.stdin(spoken)), (convert, None))
            for command, stdin in steps:
                subprocess.run(command, input=stdin, check=True, capture_output=True, timeout=_TIMEOUT_S)
        if sf.info(str(partial)).frames == 0:
            raise RuntimeError(f"{speaker.engine} produced no audio for {spoken!r}")
        os.replace(partial, flac_path)
    finally:
        partial.unlink(missing_ok=True)


def _render_one(utt: Utterance, corpus_dir: Path) -> str | None:
    """Render one utterance with retries; the last error message, or None on success."""
    flac = utt.flac_path(corpus_dir)
    error = None
    for _ in range(_ATTEMPTS):
        try:
            synthesize(utt.speaker, utt.prompt.spoken, flac)
            return None
        except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
            stderr = getattr(exc, "stderr", None) or b""
            error = f"{exc} {stderr.decode(errors='replace').strip()}".strip()
    log.warning("skipping %s (%s): %s", utt.utt_id, utt.speaker, error)
    return error


def _render_missing(plan: list[Utterance], corpus_dir: Path, num_jobs: int) -> dict[str, str]:
    """Render every planned FLAC that does not exist yet; failed utterance ids -> error."""
    todo = [utt for utt in plan if not utt.flac_path(corpus_dir).exists()]
    for chapter_dir in {utt.chapter_dir(corpus_dir) for utt in todo}:
        chapter_dir.mkdir(parents=True, exist_ok=True)
    failed = {}
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="Synthesising", unit="utt")
    with bar, ThreadPoolExecutor(max_workers=num_jobs) as pool:
        futures = {pool.submit(_render_one, utt, corpus_dir): utt for utt in todo}
        for future in as_completed(futures):
            error = future.result()
            if error is not None:
                failed[futures[future].utt_id] = error
            bar.update()
    return failed


def _write_transcripts(plan: list[Utterance], corpus_dir: Path) -> None:
    """One ``trans.txt`` per chapter, listing the utterances whose audio exists."""
    chapters: dict[Path, list[Utterance]] = defaultdict(list)
    for utt in plan:
        chapters[utt.trans_path(corpus_dir)].append(utt)
    for trans_path, utts in chapters.items():
        lines = [f"{u.utt_id} {u.prompt.text}\n" for u in utts if u.flac_path(corpus_dir).exists()]
        write_text_atomic(trans_path, "".join(lines))


def _write_speakers(plan: list[Utterance], corpus_dir: Path) -> None:
    rows = ["speaker_id\tpart\tengine\tvoice\tvariant\trate\tpitch\n"]
    seen = set()
    for utt in plan:
        s = utt.speaker
        if s.speaker_id not in seen:
            seen.add(s.speaker_id)
            variant = s.variant or "-"
            fields = (s.speaker_id, utt.part, s.engine, s.voice, variant, s.rate, s.pitch)
            rows.append("\t".join(map(str, fields)) + "\n")
    write_text_atomic(corpus_dir / "speakers.tsv", "".join(rows))


def _part_stats(plan: list[Utterance], corpus_dir: Path) -> dict[str, dict[str, float]]:
    """Hours, utterances and speakers per part, counting the audio that exists."""
    stats: dict[str, dict[str, float]] = {}
    speakers: dict[str, set[int]] = defaultdict(set)
    for utt in plan:
        part = stats.setdefault(utt.part, {"hours": 0.0, "utterances": 0, "speakers": 0})
        flac = utt.flac_path(corpus_dir)
        if flac.exists():
            part["hours"] += sf.info(str(flac)).duration / 3600
            part["utterances"] += 1
            speakers[utt.part].add(utt.speaker.speaker_id)
    for part, ids in speakers.items():
        stats[part]["speakers"] = len(ids)
    return stats


def _describe(stats: Mapping[str, Mapping[str, float]]) -> Iterable[str]:
    for part, s in stats.items():
        yield f"{part}: {s['hours']:.3f} h, {s['utterances']:.0f} utterances, {s['speakers']:.0f} speakers"


def _plan_fingerprint(plan: list[Utterance]) -> str:
    digest = hashlib.sha256()
    for utt in plan:
        digest.update(f"{utt.part}|{utt.utt_id}|{utt.prompt.spoken}|{utt.speaker}\n".encode())
    return digest.hexdigest()


def _claim_out_dir(out_dir: Path, args: dict, plan: list[Utterance]) -> None:
    """Write ``.plan.json``; refuse a directory that holds a corpus of another plan."""
    record = json.dumps({**args, "fingerprint": _plan_fingerprint(plan)}, indent=1, sort_keys=True)
    plan_path = out_dir / ".plan.json"
    if plan_path.exists() and plan_path.read_text() != record:
        raise ValueError(
            f"{out_dir} holds a partial corpus rendered with other arguments or voices "
            f"(see {plan_path}); delete it or choose another out_dir"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan_path, record)


def render_corpus(
    out_dir: Path,
    num_utts: dict[str, int],
    num_speakers: dict[str, int],
    seed: int = 0,
    num_jobs: int = 2,
    engines: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Render the corpus planned by :func:`~imputer_asr.data.synth.plan.plan_corpus` into ``out_dir``.

    Keys of ``num_utts`` and ``num_speakers`` are the part names. Parts have disjoint
    speakers and sentences; the same arguments give the same files. ``engines`` maps a part to
    the engines that read it (default: all; see :func:`~imputer_asr.data.synth.plan.plan_corpus`).
    An utterance whose synthesis fails twice is left out with a warning; more than 5% failures
    raise RuntimeError. A missing engine or sox raises RuntimeError before any work.

    >>> render_corpus(Path("corpus"), {"train": 40, "test": 10}, {"train": 4, "test": 2})  # doctest: +SKIP
    >>> sorted(p.name for p in Path("corpus").iterdir())  # doctest: +SKIP
    ['.completed', '.plan.json', 'README', 'speakers.tsv', 'test', 'train']
    """
    out_dir = Path(out_dir)
    if num_jobs < 1:
        raise ValueError(f"num_jobs must be >= 1, got {num_jobs}")
    args = {
        "version": PLAN_VERSION,
        "num_utts": dict(sorted(num_utts.items())),
        "num_speakers": dict(sorted(num_speakers.items())),
        "seed": seed,
        "engines": {part: sorted(e) for part, e in sorted((engines or {}).items())},
    }
    sentinel = out_dir / ".completed"
    if sentinel.exists() and json.loads(sentinel.read_text()) == args:
        log.info("%s is complete, nothing to do", out_dir)
        return
    require_tools()
    plan = plan_corpus(num_utts, num_speakers, seed, engines=engines)
    _claim_out_dir(out_dir, args, plan)
    sentinel.unlink(missing_ok=True)
    failed = _render_missing(plan, out_dir, num_jobs)
    if len(failed) > _MAX_FAILED_SHARE * len(plan):
        first = next(iter(failed.items()))
        raise RuntimeError(f"synthesis failed for {len(failed)} of {len(plan)} utterances: {first}")
    _write_transcripts(plan, out_dir)
    _write_speakers(plan, out_dir)
    stats = _part_stats(plan, out_dir)
    readme = (
        "Synthetic English read speech: espeak-ng, flite and festival voices reading Debian fortunes "
        "(engines per part in speakers.tsv), "
        f"in the LibriSpeech layout (imputer_asr.data.synth.render_corpus, seed {seed}). "
        + "; ".join(_describe(stats))
        + ".\n"
    )
    write_text_atomic(out_dir / "README", readme)
    for line in _describe(stats):
        log.info("%s %s", out_dir, line)
    if failed:
        log.warning("%d utterances were skipped after synthesis errors", len(failed))
    write_text_atomic(sentinel, json.dumps(args, indent=1, sort_keys=True))
