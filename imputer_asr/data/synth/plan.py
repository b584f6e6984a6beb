"""The plan of a synthetic corpus: which speaker reads which sentence, under which file name.

The plan is a pure function of the arguments, the fortune files and the installed voices, and
is computed before any audio is rendered, so that a rerun renders the same files.

- Part names are sorted (``dev``, ``test``, ``train``) and each takes the next disjoint slice of
  the seeded shuffle of all sentences, and the next disjoint group of speakers. Speakers are
  drawn with distinct timbres (see :func:`~imputer_asr.data.synth.voices.sample_speakers`), so no
  voice is heard in two parts unless more speakers are asked for than there are timbres.
- ``engines`` may give parts their own engines, e.g. ``{"dev-festival": ["festival"]}`` beside
  ``{"train": ["espeak-ng", "flite"], ...}`` for a dev split read by an engine that training
  never heard. Parts with the same engines draw their speakers together; different engine sets
  must not overlap, so a held-out engine's voices stay out of every other part. Groups are
  planned in order of their first part, each taking the sentences after the previous group's,
  so adding a held-out part leaves the others' plan unchanged.
- Speaker ids are ``100, 101, ...`` in part order; a part's utterances are dealt to its speakers
  as evenly as possible (counts differ by at most one).
- A speaker reads one chapter per ``CHAPTER_SIZE`` utterances or fewer; chapter ids are
  ``speaker_id * 100 + 1, + 2, ...`` and utterance ids are ``<speaker>-<chapter>-<index:04d>``,
  exactly as in LibriSpeech.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .text import FORTUNE_DIR, Prompt, load_prompts
from .voices import Speaker, sample_speakers

__all__ = ["CHAPTER_SIZE", "FIRST_SPEAKER_ID", "Utterance", "plan_corpus", "cached_prompts"]

CHAPTER_SIZE = 60
FIRST_SPEAKER_ID = 100


@dataclass(frozen=True)
class Utterance:
    """One planned recording: ``speaker`` reads ``prompt`` as utterance ``index`` of a chapter."""

    part: str
    speaker: Speaker
    chapter_id: int
    index: int
    prompt: Prompt

    @property
    def utt_id(self) -> str:
        return f"{self.speaker.speaker_id}-{self.chapter_id}-{self.index:04d}"

    def chapter_dir(self, corpus_dir: Path) -> Path:
        return corpus_dir / self.part / str(self.speaker.speaker_id) / str(self.chapter_id)

    def flac_path(self, corpus_dir: Path) -> Path:
        return self.chapter_dir(corpus_dir) / f"{self.utt_id}.flac"

    def trans_path(self, corpus_dir: Path) -> Path:
        prefix = f"{self.speaker.speaker_id}-{self.chapter_id}"
        return self.chapter_dir(corpus_dir) / f"{prefix}.trans.txt"


@functools.lru_cache(maxsize=2)
def cached_prompts(fortune_dir: Path = FORTUNE_DIR) -> tuple[Prompt, ...]:
    """:func:`~imputer_asr.data.synth.text.load_prompts`, read once per process."""
    return tuple(load_prompts(fortune_dir))


def _check_sizes(num_utts: Mapping[str, int], num_speakers: Mapping[str, int]) -> None:
    if not num_utts:
        raise ValueError("num_utts names no part")
    if set(num_utts) != set(num_speakers):
        raise ValueError(
            f"num_utts and num_speakers name different parts: {sorted(num_utts)} vs {sorted(num_speakers)}"
        )
    for part in num_utts:
        if not part or part.startswith(".") or "/" in part or part != part.strip():
            raise ValueError(f"part name {part!r} is not a plain directory name")
        if num_speakers[part] < 1:
            raise ValueError(f"part {part!r} needs at least one speaker")
        if num_utts[part] < num_speakers[part]:
            raise ValueError(
                f"part {part!r} has {num_utts[part]} utterances for {num_speakers[part]} "
                "speakers; every speaker needs at least one"
            )


def _deal(count: int, ways: int) -> list[int]:
    """Split ``count`` into ``ways`` sizes that differ by at most one, larger first."""
    return [count // ways + (i < count % ways) for i in range(ways)]


def _speaker_utterances(part: str, speaker: Speaker, prompts: Sequence[Prompt]) -> list[Utterance]:
    utterances = []
    start = 0
    for chapter, size in enumerate(_deal(len(prompts), math.ceil(len(prompts) / CHAPTER_SIZE))):
        chapter_id = speaker.speaker_id * 100 + chapter + 1
        for index, prompt in enumerate(prompts[start : start + size]):
            utterances.append(Utterance(part, speaker, chapter_id, index, prompt))
        start += size
    return utterances


def _engine_groups(
    parts: Sequence[str], engines: Mapping[str, Sequence[str]] | None
) -> list[tuple[tuple[str, ...] | None, list[str]]]:
    """Parts grouped by their engine set (None: every engine), groups in order of first part."""
    engines = engines or {}
    unknown = sorted(set(engines) - set(parts))
    if unknown:
        raise ValueError(f"engines names part(s) {', '.join(unknown)} that num_utts does not")
    groups: dict[tuple[str, ...] | None, list[str]] = {}
    for part in parts:
        key = tuple(sorted(engines[part])) if part in engines else None
        groups.setdefault(key, []).append(part)
    if len(groups) > 1:
        if None in groups:
            raise ValueError("when some parts name their engines, every part must")
        seen: set[str] = set()
        for key in groups:
            if seen & set(key):
                raise ValueError(
                    f"parts with different engine sets share {', '.join(sorted(seen & set(key)))}"
                )
            seen |= set(key)
    return list(groups.items())


def plan_corpus(
    num_utts: Mapping[str, int],
    num_speakers: Mapping[str, int],
    seed: int = 0,
    prompts: Sequence[Prompt] | None = None,
    engines: Mapping[str, Sequence[str]] | None = None,
) -> list[Utterance]:
    """Every utterance of the corpus, part by part (parts in name order within an engine group).

    ``prompts`` defaults to every usable fortune sentence (:func:`cached_prompts`); ``engines``
    maps a part to the engines that read it (default: every engine for every part).

    >>> plan = plan_corpus({"train": 5, "test": 2}, {"train": 2, "test": 1})  # doctest: +SKIP
    >>> [u.utt_id for u in plan if u.part == "test"]  # doctest: +SKIP
    ['100-10001-0000', '100-10001-0001']
    """
    _check_sizes(num_utts, num_speakers)
    prompts = cached_prompts() if prompts is None else prompts
    total_utts = sum(num_utts.values())
    if total_utts > len(prompts):
        raise ValueError(f"{total_utts} utterances asked for, only {len(prompts)} sentences exist")
    rng = random.Random(seed)
    order = list(range(len(prompts)))
    rng.shuffle(order)
    plan: list[Utterance] = []
    next_prompt = 0
    next_id = FIRST_SPEAKER_ID
    for group, (group_engines, parts) in enumerate(_engine_groups(sorted(num_utts), engines)):
        # The first group draws exactly as a corpus without engine groups did.
        group_seed = seed if group == 0 else seed * 1000 + group
        speakers = sample_speakers(sum(num_speakers[p] for p in parts), group_seed, engines=group_engines)
        (rng if group == 0 else random.Random(group_seed)).shuffle(
            speakers
        )  # spread the engines over the parts
        speakers = [dataclasses.replace(s, speaker_id=next_id + i) for i, s in enumerate(speakers)]
        next_id += len(speakers)
        next_speaker = 0
        for part in parts:
            part_speakers = speakers[next_speaker : next_speaker + num_speakers[part]]
            next_speaker += num_speakers[part]
            for speaker, count in zip(part_speakers, _deal(num_utts[part], len(part_speakers)), strict=True):
                chosen = [prompts[i] for i in order[next_prompt : next_prompt + count]]
                next_prompt += count
                plan += _speaker_utterances(part, speaker, chosen)
    return plan
