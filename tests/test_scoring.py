"""Tests for imputer_asr.evaluation.scoring against hand-computed alignments and counts."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import jiwer
import pytest

from imputer_asr.evaluation.scoring import (
    ErrorStats,
    align_tokens,
    format_summary,
    normalize_text,
    score,
    write_report,
)


def _stats(ref: int, s: int, d: int, i: int) -> ErrorStats:
    return ErrorStats(ref_words=ref, substitutions=s, deletions=d, insertions=i)


def _edit_distance(a: list[str], b: list[str]) -> int:
    """Textbook dynamic programme, the oracle for the alignment cost."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_substitution_and_insertion() -> None:
    report = score([("u1", "THE CAT SAT", "THE BAT SAT DOWN")])
    assert report.words == _stats(3, 1, 0, 1)
    assert report.wer == pytest.approx(2 / 3)
    res = report.utterances[0]
    assert res.marked == "THE (CAT->BAT) SAT (*->DOWN)"
    assert res.alignment == (("THE", "THE"), ("CAT", "BAT"), ("SAT", "SAT"), (None, "DOWN"))


def test_empty_hypothesis_is_all_deletions() -> None:
    report = score([("u1", "A B C", "")])
    assert report.words == _stats(3, 0, 3, 0)
    assert report.wer == 1.0
    assert report.utterances[0].marked == "(A->*) (B->*) (C->*)"
    # "A B C" has 5 characters including the two spaces.
    assert report.chars == _stats(5, 0, 5, 0)


def test_empty_reference_rate_is_insertion_count() -> None:
    report = score([("u1", "", "HELLO THERE")])
    assert report.words == _stats(0, 0, 0, 2)
    assert report.wer == 2.0
    assert report.utterances[0].marked == "(*->HELLO) (*->THERE)"
    assert score([("u1", "  ", "")]).wer == 0.0


def test_identical_texts_have_no_errors() -> None:
    report = score([("u1", "SHE SELLS SEA SHELLS", "SHE SELLS SEA SHELLS")])
    assert report.words == _stats(4, 0, 0, 0)
    assert report.chars.errors == 0
    assert report.utterances[0].marked == "SHE SELLS SEA SHELLS"


def test_case_and_whitespace_are_normalised() -> None:
    assert normalize_text("  the\tcat \n\n sat  ") == "THE CAT SAT"
    report = score([("u1", "The  cat\tsat", " THE CAT SAT\n")])
    assert report.words.errors == 0
    assert report.chars.errors == 0
    assert report.utterances[0].ref == "THE CAT SAT"
    assert report.utterances[0].hyp == "THE CAT SAT"


def test_marked_string_all_edit_kinds() -> None:
    res = score([("u1", "THE CAT SAT ON THE MAT", "THE CAT SAT ON A MAT TODAY")]).utterances[0]
    assert res.word_stats == _stats(6, 1, 0, 1)
    assert res.marked == "THE CAT SAT ON (THE->A) MAT (*->TODAY)"
    res = score([("u2", "THE CAT SAT ON THE MAT", "THE CAT ON THE MAT")]).utterances[0]
    assert res.word_stats == _stats(6, 0, 1, 0)
    assert res.marked == "THE CAT (SAT->*) ON THE MAT"


def test_corpus_total_is_sum_of_counts_not_mean_of_rates() -> None:
    report = score(
        [
            ("a", "ONE", "TWO"),  # 1 error / 1 word
            ("b", "A B C D E F G H I", "A B C D E F G H I"),  # 0 errors / 9 words
        ]
    )
    assert report.words == _stats(10, 1, 0, 0)
    assert report.wer == pytest.approx(0.1)  # mean of rates would be 0.5


def test_cer_hand_case() -> None:
    # "THE CAT" -> "THE BAT": one substituted character among 7 (space included).
    report = score([("u1", "the cat", "the bat")])
    assert report.chars == _stats(7, 1, 0, 0)
    assert report.cer == pytest.approx(1 / 7)
    # "AB CD" -> "ABCD": the space is deleted; 5 characters.
    assert score([("u1", "AB CD", "ABCD")]).chars == _stats(5, 0, 1, 0)


def test_rates_agree_with_jiwer_on_random_corpus() -> None:
    rng = random.Random(0)
    vocab = ["A", "B", "C", "DE", "FGH"]
    utts = []
    for k in range(40):
        ref = " ".join(rng.choices(vocab, k=rng.randint(1, 6)))
        hyp = " ".join(rng.choices(vocab, k=rng.randint(0, 6)))
        utts.append((f"u{k}", ref, hyp))
    report = score(utts)
    refs, hyps = [r for _, r, _ in utts], [h for _, _, h in utts]
    assert report.wer == pytest.approx(jiwer.wer(refs, hyps))
    assert report.cer == pytest.approx(jiwer.cer(refs, hyps))


def test_alignment_cost_is_minimal_edit_distance() -> None:
    alphabet = ["A", "B"]
    for n, m in itertools.product(range(4), range(4)):
        for ref in itertools.product(alphabet, repeat=n):
            for hyp in itertools.product(alphabet, repeat=m):
                pairs = align_tokens(list(ref), list(hyp))
                assert [r for r, _ in pairs if r is not None] == list(ref)
                assert [h for _, h in pairs if h is not None] == list(hyp)
                cost = sum(r != h for r, h in pairs)
                assert cost == _edit_distance(list(ref), list(hyp))


def test_tokens_with_jiwer_special_characters_survive() -> None:
    assert align_tokens([" ", "x y"], [" ", "z"]) == ((" ", " "), ("x y", "z"))


def test_duplicate_ids_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        score([("u1", "A", "A"), ("u1", "B", "B")])


def test_empty_corpus() -> None:
    report = score([])
    assert report.words == _stats(0, 0, 0, 0)
    assert report.wer == 0.0
    assert format_summary(report) == (
        "%WER 0.00 [ 0 / 0, 0 ins, 0 del, 0 sub ] %CER 0.00 [ 0 / 0, 0 ins, 0 del, 0 sub ]"
    )


def _corpus() -> list[tuple[str, str, str]]:
    return [
        ("utt-b", "THE CAT SAT", "THE BAT SAT DOWN"),  # 1 sub, 1 ins
        ("utt-a", "A B C", ""),  # 3 del
        ("utt-c", "HELLO WORLD", "hello world"),  # correct
        ("utt-d", "THE CAT", "THE BAT"),  # 1 sub
    ]


def test_format_summary_exact() -> None:
    # Words: 10 ref, 2 sub, 3 del, 1 ins -> 6 / 10.
    # Chars: 11 + 5 + 11 + 7 = 34 ref; utt-b 1 sub 5 ins, utt-a 5 del, utt-d 1 sub -> 12 / 34.
    assert format_summary(score(_corpus())) == (
        "%WER 60.00 [ 6 / 10, 1 ins, 3 del, 2 sub ] %CER 35.29 [ 12 / 34, 5 ins, 5 del, 2 sub ]"
    )


def test_write_report_files(tmp_path: Path) -> None:
    report = score(_corpus())
    out = tmp_path / "exp" / "decode"
    write_report(report, out, "dev-clean")
    assert sorted(p.name for p in out.iterdir()) == [
        "errs-dev-clean.txt",
        "recogs-dev-clean.txt",
        "wer-dev-clean.json",
        "wer-dev-clean.txt",
    ]
    summary = "%WER 60.00 [ 6 / 10, 1 ins, 3 del, 2 sub ] %CER 35.29 [ 12 / 34, 5 ins, 5 del, 2 sub ]"
    assert (out / "wer-dev-clean.txt").read_text() == summary + "\n"

    stats = json.loads((out / "wer-dev-clean.json").read_text())
    assert stats["wer"] == pytest.approx(0.6)
    assert stats["cer"] == pytest.approx(12 / 34)
    assert stats["words"] == {
        "ref": 10,
        "errors": 6,
        "substitutions": 2,
        "deletions": 3,
        "insertions": 1,
    }
    assert stats["num_utterances"] == 4
    assert stats["num_utterances_with_errors"] == 3

    recogs = (out / "recogs-dev-clean.txt").read_text().splitlines()
    assert recogs[:2] == ["utt-a:\tref=A B C", "utt-a:\thyp="]
    assert "utt-c:\thyp=HELLO WORLD" in recogs
    assert len(recogs) == 8


def test_errs_file_order_and_pairs(tmp_path: Path) -> None:
    write_report(score(_corpus()), tmp_path, "test")
    lines = (tmp_path / "errs-test.txt").read_text().splitlines()
    assert lines[0] == "%WER 60.00 [ 6 / 10, 1 ins, 3 del, 2 sub ]"
    assert lines[1] == "%CER 35.29 [ 12 / 34, 5 ins, 5 del, 2 sub ]"
    utt_lines = [line for line in lines if line.startswith("utt-")]
    assert utt_lines == [
        "utt-a (3):\t(A->*) (B->*) (C->*)",
        "utt-b (2):\tTHE (CAT->BAT) SAT (*->DOWN)",
        "utt-d (1):\tTHE (CAT->BAT)",
    ]
    subs_at = next(i for i, line in enumerate(lines) if line.startswith("SUBSTITUTIONS"))
    assert lines[subs_at + 1] == "     2  CAT -> BAT"
    dels_at = next(i for i, line in enumerate(lines) if line.startswith("DELETIONS"))
    assert lines[dels_at + 1 : dels_at + 4] == ["     1  A", "     1  B", "     1  C"]
    ins_at = next(i for i, line in enumerate(lines) if line.startswith("INSERTIONS"))
    assert lines[ins_at + 1 :] == ["     1  DOWN"]


def test_write_report_overwrites_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_report(score(_corpus()), tmp_path, "x")
    write_report(score([("u", "A", "A")]), tmp_path, "x")
    assert (tmp_path / "wer-x.txt").read_text().startswith("%WER 0.00 [ 0 / 1,")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_report_rejects_path_like_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_report(score([]), tmp_path, "../oops")
