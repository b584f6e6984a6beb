"""Tests for imputer_asr.decoding.ctc: CTC collapse and greedy search against brute-force references."""

from __future__ import annotations

import itertools

import pytest
import torch

from imputer_asr.decoding.ctc import collapse_alignment, ctc_greedy_search, greedy_alignment


def _reference_collapse(alignment: list[int], blank: int) -> list[int]:
    """Drop the -1 padding, merge runs (itertools.groupby), drop blanks."""
    unpadded = [a for a in alignment if a >= 0]
    return [token for token, _ in itertools.groupby(unpadded) if token != blank]


def _random_alignments(seed: int, count: int, num_classes: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        length = int(torch.randint(0, 12, (1,), generator=g))
        pad = int(torch.randint(0, 4, (1,), generator=g))
        # Few classes so that repeats and blank-separated repeats are common.
        out.append(torch.randint(num_classes, (length,), generator=g).tolist() + [-1] * pad)
    return out


@pytest.mark.parametrize("blank", [0, 2])
def test_collapse_matches_groupby_reference(blank: int) -> None:
    for alignment in _random_alignments(seed=blank, count=500, num_classes=4):
        assert collapse_alignment(alignment, blank) == _reference_collapse(alignment, blank)


def test_collapse_hand_cases() -> None:
    assert collapse_alignment([], blank=0) == []
    assert collapse_alignment([-1, -1], blank=0) == []
    assert collapse_alignment([0, 0, 0], blank=0) == []
    assert collapse_alignment([3, 3, 3], blank=0) == [3]
    assert collapse_alignment([3, 0, 3], blank=0) == [3, 3]  # a blank separates a doubled token
    assert collapse_alignment([1, 1, 0, 2, 1, -1, -1], blank=0) == [1, 2, 1]
    assert collapse_alignment([0, 1, 1, 2], blank=1) == [0, 2]  # 0 is a token when blank is 1
    assert collapse_alignment([2, 2, -1], blank=0) == [2]


def test_collapse_ignores_what_follows_padding_start() -> None:
    """Padding is a suffix: appending more -1 never changes the result."""
    for alignment in _random_alignments(seed=7, count=200, num_classes=3):
        assert collapse_alignment(alignment + [-1] * 3, 0) == collapse_alignment(alignment, 0)


def _random_log_probs(seed: int, n: int, t: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(n, t, c, generator=g).log_softmax(-1)
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    lengths[0] = t
    return log_probs, lengths


def test_greedy_alignment_is_per_frame_argmax_with_padding() -> None:
    log_probs, lengths = _random_log_probs(seed=0, n=6, t=9, c=5)
    got = greedy_alignment(log_probs, lengths)
    assert got.shape == (6, 9) and got.dtype == torch.long
    for i in range(6):
        for j in range(9):
            row = log_probs[i, j].tolist()
            want = max(range(5), key=row.__getitem__) if j < lengths[i] else -1
            assert got[i, j].item() == want


def test_greedy_path_is_the_most_probable_path() -> None:
    """Brute force over every path of a tiny problem: the greedy path has the highest score."""
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        t, c = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(2, 5, (1,), generator=g))
        log_probs = torch.randn(t, c, generator=g, dtype=torch.float64).log_softmax(-1)
        best = max(
            itertools.product(range(c), repeat=t),
            key=lambda path: sum(log_probs[i, a].item() for i, a in enumerate(path)),
        )
        assert greedy_alignment(log_probs[None], torch.tensor([t]))[0].tolist() == list(best)


@pytest.mark.parametrize("blank", [0, 3])
def test_ctc_greedy_search_matches_reference(blank: int) -> None:
    log_probs, lengths = _random_log_probs(seed=2 + blank, n=16, t=12, c=4)
    got = ctc_greedy_search(log_probs, lengths, blank)
    assert len(got) == 16
    for i in range(16):
        path = log_probs[i, : lengths[i]].argmax(-1).tolist()
        assert got[i] == _reference_collapse(path, blank)


def test_ctc_greedy_search_ignores_padded_frames() -> None:
    """Whatever the log-probs past each length hold, the result is that of the unpadded input."""
    log_probs, lengths = _random_log_probs(seed=5, n=8, t=10, c=5)
    garbage = log_probs.clone()
    mask = torch.arange(10)[None, :] >= lengths[:, None]
    garbage[mask] = torch.randn(int(mask.sum()), 5).log_softmax(-1)
    alone = [
        ctc_greedy_search(log_probs[i : i + 1, : lengths[i]], lengths[i : i + 1], 0)[0] for i in range(8)
    ]
    assert ctc_greedy_search(garbage, lengths, 0) == alone


def test_zero_length_gives_empty_hypothesis() -> None:
    log_probs, _ = _random_log_probs(seed=3, n=2, t=4, c=3)
    assert ctc_greedy_search(log_probs, torch.tensor([0, 0]), 0) == [[], []]


def test_greedy_alignment_checks_shapes() -> None:
    with pytest.raises(ValueError):
        greedy_alignment(torch.randn(4, 3), torch.tensor([4]))
    with pytest.raises(ValueError):
        greedy_alignment(torch.randn(2, 4, 3), torch.tensor([4]))
    with pytest.raises(ValueError):
        greedy_alignment(torch.randn(2, 4, 3), torch.tensor([[4, 4]]))


def test_with_progress_passes_batches_through_and_counts_cuts():
    import io

    from imputer_asr.data.dataset import with_progress

    out = io.StringIO()
    batches = [{"cut_ids": ["a", "b"]}, {"cut_ids": ["c"]}]
    assert list(with_progress(iter(batches), 3, "decode", disable=False, file=out, leave=True)) == batches
    assert "decode" in out.getvalue() and "3/3" in out.getvalue()
    quiet = io.StringIO()
    assert list(with_progress(iter(batches), 3, "decode", file=quiet)) == batches
    assert quiet.getvalue() == ""  # not a terminal: no bar
