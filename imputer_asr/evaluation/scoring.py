"""Word and character error rates, per-utterance alignments and the report files of a decode.

The scorer normalises every text the same way (upper case, runs of whitespace collapsed to a
single space, leading and trailing whitespace removed), aligns reference and hypothesis with
jiwer's Levenshtein alignment and counts substitutions, deletions and insertions.

Conventions:

- Corpus rates are total errors over total reference tokens (sum of counts), never the mean of
  per-utterance rates.
- CER follows ``jiwer.cer``: it is computed over the characters of the normalised text
  *including* the single spaces between words, so ``"A B"`` has 3 reference characters.
- When the reference has no tokens the rate is ``errors / max(ref_words, 1)``: 0.0 for an
  empty hypothesis and the number of inserted tokens otherwise (this equals jiwer's value for
  empty references and keeps every rate finite, so it can be written as JSON).

Differences are marked as in icefall's ``errs-*.txt``: a substitution is ``(REF->HYP)``, a
deletion ``(REF->*)`` and an insertion ``(*->HYP)``.

>>> report = score([("u1", "the cat sat", "THE BAT  SAT down")])
>>> format_summary(report)
'%WER 66.67 [ 2 / 3, 1 ins, 0 del, 1 sub ] %CER 54.55 [ 6 / 11, 5 ins, 0 del, 1 sub ]'
>>> report.utterances[0].marked
'THE (CAT->BAT) SAT (*->DOWN)'
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer

from imputer_asr.files import write_text_atomic

__all__ = [
    "ErrorStats",
    "UtteranceResult",
    "ScoreReport",
    "normalize_text",
    "align_tokens",
    "score_utterance",
    "score",
    "format_summary",
    "write_report",
]

_GAP = "*"

# One aligned position: (reference token, hypothesis token); None marks the missing side.
AlignedPair = tuple[str | None, str | None]


@dataclass(frozen=True)
class ErrorStats:
    """Edit counts of a hypothesis against a reference.

    ``ref_words`` is the number of reference tokens: words for WER, characters for CER.
    """

    ref_words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        """Substitutions + deletions + insertions."""
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference token, ``errors / max(ref_words, 1)`` (see module docstring)."""
        return self.errors / max(self.ref_words, 1)

    def __add__(self, other: ErrorStats) -> ErrorStats:
        return ErrorStats(
            ref_words=self.ref_words + other.ref_words,
            substitutions=self.substitutions + other.substitutions,
            deletions=self.deletions + other.deletions,
            insertions=self.insertions + other.insertions,
        )


_ZERO = ErrorStats(ref_words=0, substitutions=0, deletions=0, insertions=0)


@dataclass(frozen=True)
class UtteranceResult:
    """Scoring of one utterance; ``ref`` and ``hyp`` are the normalised texts."""

    utt_id: str
    ref: str
    hyp: str
    word_stats: ErrorStats
    char_stats: ErrorStats
    alignment: tuple[AlignedPair, ...]
    marked: str


@dataclass(frozen=True)
class ScoreReport:
    """Corpus totals and the per-utterance results, in the order they were given."""

    words: ErrorStats
    chars: ErrorStats
    utterances: tuple[UtteranceResult, ...]

    @property
    def wer(self) -> float:
        """Corpus word error rate as a fraction."""
        return self.words.rate

    @property
    def cer(self) -> float:
        """Corpus character error rate as a fraction (spaces count as characters)."""
        return self.chars.rate


def normalize_text(text: str) -> str:
    """Upper-case ``text`` and collapse all whitespace runs to single spaces.

    >>> normalize_text("  the\\tCat \\n sat ")
    'THE CAT SAT'
    """
    return " ".join(text.upper().split())


def align_tokens(ref: Sequence[str], hyp: Sequence[str]) -> tuple[AlignedPair, ...]:
    """Minimum edit distance alignment of two token sequences.

    Returns one pair per aligned position: ``(r, h)`` for a match or substitution,
    ``(r, None)`` for a deletion and ``(None, h)`` for an insertion. When several alignments
    have the minimum cost, jiwer (rapidfuzz) picks one; the total error count is the same.

    >>> align_tokens(["A", "B", "C"], ["A", "X", "C", "D"])
    (('A', 'A'), ('B', 'X'), ('C', 'C'), (None, 'D'))
    """
    if not ref or not hyp:  # older jiwer versions refuse empty references
        return tuple((r, None) for r in ref) + tuple((None, h) for h in hyp)
    # Each token becomes one "word" of a pre-split sentence, so any token (even " ") works.
    ref_ids, hyp_ids = _token_ids(ref, hyp)
    out = jiwer.process_words(" ".join(map(str, ref_ids)), " ".join(map(str, hyp_ids)))
    pairs: list[AlignedPair] = []
    for chunk in out.alignments[0]:
        r = list(ref[chunk.ref_start_idx : chunk.ref_end_idx])
        h = list(hyp[chunk.hyp_start_idx : chunk.hyp_end_idx])
        common = min(len(r), len(h))
        pairs.extend(zip(r[:common], h[:common], strict=True))
        pairs.extend((x, None) for x in r[common:])
        pairs.extend((None, y) for y in h[common:])
    return tuple(pairs)


def _token_ids(ref: Sequence[str], hyp: Sequence[str]) -> tuple[list[int], list[int]]:
    """Map tokens to integers so jiwer's whitespace splitting cannot alter them."""
    vocab: dict[str, int] = {}
    ref_ids = [vocab.setdefault(t, len(vocab)) for t in ref]
    hyp_ids = [vocab.setdefault(t, len(vocab)) for t in hyp]
    return ref_ids, hyp_ids


def _stats_from_alignment(alignment: Sequence[AlignedPair]) -> ErrorStats:
    """Count edits in an alignment produced by :func:`align_tokens`."""
    subs = sum(1 for r, h in alignment if r is not None and h is not None and r != h)
    dels = sum(1 for r, h in alignment if h is None)
    ins = sum(1 for r, h in alignment if r is None)
    ref_len = sum(1 for r, _ in alignment if r is not None)
    return ErrorStats(ref_words=ref_len, substitutions=subs, deletions=dels, insertions=ins)


def _mark_alignment(alignment: Sequence[AlignedPair]) -> str:
    """Render an alignment icefall style: ``A (B->C) (D->*) (*->E)``."""
    parts = []
    for r, h in alignment:
        if r == h:
            parts.append(str(r))
        else:
            parts.append(f"({_GAP if r is None else r}->{_GAP if h is None else h})")
    return " ".join(parts)


def score_utterance(utt_id: str, ref: str, hyp: str) -> UtteranceResult:
    """Normalise, align and count errors for one utterance."""
    ref_n, hyp_n = normalize_text(ref), normalize_text(hyp)
    alignment = align_tokens(ref_n.split(), hyp_n.split())
    char_alignment = align_tokens(list(ref_n), list(hyp_n))
    return UtteranceResult(
        utt_id=utt_id,
        ref=ref_n,
        hyp=hyp_n,
        word_stats=_stats_from_alignment(alignment),
        char_stats=_stats_from_alignment(char_alignment),
        alignment=alignment,
        marked=_mark_alignment(alignment),
    )


def score(utterances: Sequence[tuple[str, str, str]]) -> ScoreReport:
    """Score ``(utt_id, ref, hyp)`` triples; corpus stats are sums of per-utterance counts.

    Raises ValueError when an utterance id occurs twice.
    """
    seen: set[str] = set()
    for utt_id, _, _ in utterances:
        if utt_id in seen:
            raise ValueError(f"duplicate utterance id {utt_id!r}")
        seen.add(utt_id)
    results = tuple(score_utterance(u, r, h) for u, r, h in utterances)
    words = sum((res.word_stats for res in results), _ZERO)
    chars = sum((res.char_stats for res in results), _ZERO)
    return ScoreReport(words=words, chars=chars, utterances=results)


def _format_stats(label: str, stats: ErrorStats) -> str:
    return (
        f"%{label} {100 * stats.rate:.2f} [ {stats.errors} / {stats.ref_words}, "
        f"{stats.insertions} ins, {stats.deletions} del, {stats.substitutions} sub ]"
    )


def format_summary(report: ScoreReport) -> str:
    """One line: ``%WER 12.34 [ 123 / 997, 10 ins, 20 del, 93 sub ] %CER 5.67 [ ... ]``."""
    return f"{_format_stats('WER', report.words)} {_format_stats('CER', report.chars)}"


def _count_error_pairs(report: ScoreReport) -> tuple[Counter, Counter, Counter]:
    """Counters of substituted (ref, hyp) pairs, deleted ref words and inserted hyp words."""
    subs: Counter = Counter()
    dels: Counter = Counter()
    ins: Counter = Counter()
    for res in report.utterances:
        for r, h in res.alignment:
            if r is None:
                ins[h] += 1
            elif h is None:
                dels[r] += 1
            elif r != h:
                subs[(r, h)] += 1
    return subs, dels, ins


def _most_common(counter: Counter, top_n: int) -> list[tuple[object, int]]:
    """Most frequent items, ties broken by the item so the output is deterministic."""
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]


def _format_errs(report: ScoreReport, top_n: int) -> str:
    """Text of ``errs-*.txt``: summary, utterances with errors, most frequent edits."""
    with_errors = [u for u in report.utterances if u.word_stats.errors > 0]
    with_errors.sort(key=lambda u: (-u.word_stats.errors, u.utt_id))
    lines = [
        _format_stats("WER", report.words),
        _format_stats("CER", report.chars),
        f"utterances: {len(report.utterances)}, with word errors: {len(with_errors)}",
        "",
        "PER-UTTERANCE ERRORS (most errors first): id (errors): ref with (REF->HYP) marks",
    ]
    lines += [f"{u.utt_id} ({u.word_stats.errors}):\t{u.marked}" for u in with_errors]
    subs, dels, ins = _count_error_pairs(report)
    lines += ["", f"SUBSTITUTIONS (top {top_n}): count REF -> HYP"]
    lines += [f"{n:6d}  {r} -> {h}" for (r, h), n in _most_common(subs, top_n)]
    lines += ["", f"DELETIONS (top {top_n}): count REF"]
    lines += [f"{n:6d}  {r}" for r, n in _most_common(dels, top_n)]
    lines += ["", f"INSERTIONS (top {top_n}): count HYP"]
    lines += [f"{n:6d}  {h}" for h, n in _most_common(ins, top_n)]
    return "\n".join(lines) + "\n"


def _format_recogs(report: ScoreReport) -> str:
    """Text of ``recogs-*.txt``: ``id:\\tref=...`` and ``id:\\thyp=...`` sorted by id."""
    lines = []
    for u in sorted(report.utterances, key=lambda u: u.utt_id):
        lines += [f"{u.utt_id}:\tref={u.ref}", f"{u.utt_id}:\thyp={u.hyp}"]
    return "\n".join(lines) + ("\n" if lines else "")


def _report_json(report: ScoreReport) -> str:
    """Text of ``wer-*.json``; ``wer`` and ``cer`` are fractions, not percentages."""

    def counts(stats: ErrorStats) -> dict[str, int]:
        return {
            "ref": stats.ref_words,
            "errors": stats.errors,
            "substitutions": stats.substitutions,
            "deletions": stats.deletions,
            "insertions": stats.insertions,
        }

    payload = {
        "wer": report.wer,
        "cer": report.cer,
        "words": counts(report.words),
        "chars": counts(report.chars),
        "num_utterances": len(report.utterances),
        "num_utterances_with_errors": sum(u.word_stats.errors > 0 for u in report.utterances),
    }
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def write_report(report: ScoreReport, out_dir: Path, name: str, top_n: int = 30) -> None:
    """Write ``recogs-{name}.txt``, ``errs-{name}.txt``, ``wer-{name}.txt``, ``wer-{name}.json``.

    ``wer-{name}.txt`` holds exactly ``format_summary(report)`` and a newline. Each file is
    replaced atomically, so a reader never sees a half-written report.
    """
    if not name or "/" in name or name != name.strip():
        raise ValueError(f"report name must be a plain non-empty file stem, got {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"recogs-{name}.txt", _format_recogs(report))
    write_text_atomic(out_dir / f"errs-{name}.txt", _format_errs(report, top_n))
    write_text_atomic(out_dir / f"wer-{name}.txt", format_summary(report) + "\n")
    write_text_atomic(out_dir / f"wer-{name}.json", _report_json(report))
