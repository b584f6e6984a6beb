"""Tests for imputer_asr.model.alignment: Viterbi paths against brute force and torchaudio, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchaudio.functional as taf

from imputer_asr.model.alignment import collapse, forced_align, min_alignment_length


def _path_score(log_probs: torch.Tensor, path: list[int]) -> float:
    return sum(log_probs[t, token].item() for t, token in enumerate(path))


def _collapse(path: tuple[int, ...], blank: int) -> list[int]:
    merged = [token for i, token in enumerate(path) if i == 0 or token != path[i - 1]]
    return [token for token in merged if token != blank]


def _best_brute_force_score(log_probs: torch.Tensor, target: list[int], blank: int) -> float:
    table = log_probs.tolist()
    return max(
        sum(table[t][token] for t, token in enumerate(path))
        for path in itertools.product(range(len(table[0])), repeat=len(table))
        if _collapse(path, blank) == target
    )


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("blank", [0, 3])
def test_forced_align_matches_brute_force(blank: int, batched: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    labels = [i for i in range(4) if i != blank]
    checked = 0
    for _ in range(40):
        t = int(torch.randint(1, 7, (1,), generator=generator))
        s = int(torch.randint(0, 4, (1,), generator=generator))
        target = [labels[int(i)] for i in torch.randint(3, (s,), generator=generator)]
        if min_alignment_length(torch.tensor([target + [labels[0]]]), torch.tensor([s])) > t:
            continue
        log_probs = torch.randn(t, 4, generator=generator, dtype=torch.float64).log_softmax(-1)
        padded_target = torch.tensor([target + [labels[0]] * (3 - s)])
        path = forced_align(
            log_probs.unsqueeze(0),
            torch.tensor([t]),
            padded_target,
            torch.tensor([s]),
            blank,
            batched=batched,
        )[0]
        assert collapse(path, blank) == target
        assert _path_score(log_probs, path.tolist()) == pytest.approx(
            _best_brute_force_score(log_probs, target, blank), abs=1e-12
        )
        checked += 1
    assert checked >= 20


def _ragged_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    log_probs = torch.randn(5, 40, 12, generator=generator).log_softmax(-1)
    targets = torch.randint(1, 12, (5, 10), generator=generator)
    targets[0] = torch.tensor([1, 2, 3, 3, 4, 5, 6, 7, 8, 9])  # one repeat: needs 11 frames
    input_lengths = torch.tensor([40, 33, 21, 10, 4])
    target_lengths = torch.tensor([10, 7, 10, 3, 0])
    return log_probs, input_lengths, targets, target_lengths


@pytest.mark.parametrize("batched", [False, True])
def test_forced_align_matches_torchaudio_and_pads_with_minus_one(batched: bool) -> None:
    log_probs, input_lengths, targets, target_lengths = _ragged_batch()
    paths = forced_align(log_probs, input_lengths, targets, target_lengths, batched=batched)
    assert paths.shape == log_probs.shape[:2] and paths.dtype == torch.long
    for n in range(len(paths)):
        t, s = int(input_lengths[n]), int(target_lengths[n])
        assert (paths[n, t:] == -1).all() and (paths[n, :t] >= 0).all()
        assert collapse(paths[n]) == targets[n, :s].tolist()
        if s == 0:  # torchaudio rejects empty targets; the only path is all blank
            assert (paths[n, :t] == 0).all()
            continue
        reference, _ = taf.forced_align(
            log_probs[n : n + 1, :t], targets[n : n + 1, :s].int(), input_lengths[n : n + 1],
            target_lengths[n : n + 1],
        )  # fmt: skip
        score = log_probs[n, torch.arange(t), paths[n, :t]].sum()
        reference_score = log_probs[n, torch.arange(t), reference[0]].sum()
        torch.testing.assert_close(score, reference_score)


@pytest.mark.parametrize("batched", [False, True])
def test_forced_align_is_padding_invariant(batched: bool) -> None:
    log_probs, input_lengths, targets, target_lengths = _ragged_batch()
    together = forced_align(log_probs, input_lengths, targets, target_lengths, batched=batched)
    for n in range(len(together)):
        t, s = int(input_lengths[n]), int(target_lengths[n])
        alone = forced_align(
            log_probs[n : n + 1, :t], input_lengths[n : n + 1], targets[n : n + 1, :s],
            target_lengths[n : n + 1], batched=batched,
        )  # fmt: skip
        assert torch.equal(alone[0], together[n, :t])


@pytest.mark.parametrize("batched", [False, True])
def test_forced_align_on_exactly_enough_frames(batched: bool) -> None:
    log_probs = torch.randn(1, 4, 5).log_softmax(-1)
    targets, lengths = torch.tensor([[2, 2, 3]]), (torch.tensor([4]), torch.tensor([3]))
    path = forced_align(log_probs, lengths[0], targets, lengths[1], batched=batched)
    assert path.tolist() == [[2, 0, 2, 3]]


@pytest.mark.parametrize("batched", [False, True])
def test_forced_align_survives_minus_inf_and_half_precision(batched: bool) -> None:
    log_probs = torch.randn(1, 6, 4).log_softmax(-1).half()
    log_probs[0, :, 2] = -torch.inf  # the target label is impossible everywhere
    targets, lengths = torch.tensor([[2, 1]]), (torch.tensor([6]), torch.tensor([2]))
    path = forced_align(log_probs, lengths[0], targets, lengths[1], batched=batched)
    assert collapse(path[0]) == [2, 1]


def test_forced_align_names_the_utterance_that_is_too_short() -> None:
    log_probs, input_lengths, targets, target_lengths = _ragged_batch()
    input_lengths[3] = 2  # 3 labels in 2 frames
    with pytest.raises(ValueError, match="utterance 3"):
        forced_align(log_probs, input_lengths, targets, target_lengths)
    input_lengths[3] = 10
    input_lengths[0] = 10  # 10 labels with one repeat need 11 frames
    with pytest.raises(ValueError, match="utterance 0 has 10 frames .* at least 11"):
        forced_align(log_probs, input_lengths, targets, target_lengths)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("log_probs", torch.randn(5, 4), "log_probs"),
        ("targets", torch.tensor([[1, 4], [3, 0]]), "targets must lie"),
        ("targets", torch.tensor([[1, 0], [3, 0]]), "differ from blank"),
        ("input_lengths", torch.tensor([6, 4]), "input_lengths"),
        ("target_lengths", torch.tensor([2]), "target_lengths"),
        ("blank", 4, "blank"),
    ],
)
def test_forced_align_rejects_bad_inputs(name: str, value: object, message: str) -> None:
    kwargs: dict[str, object] = {
        "log_probs": torch.randn(2, 5, 4).log_softmax(-1),
        "input_lengths": torch.tensor([5, 4]),
        "targets": torch.tensor([[1, 2], [3, 0]]),
        "target_lengths": torch.tensor([2, 1]),
    }
    kwargs[name] = value
    with pytest.raises(ValueError, match=message):
        forced_align(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("batched", [False, True])
def test_forced_align_of_empty_inputs(batched: bool) -> None:
    empty = forced_align(
        torch.zeros(2, 0, 3), torch.tensor([0, 0]), torch.zeros(2, 0, dtype=torch.long),
        torch.tensor([0, 0]), batched=batched,
    )  # fmt: skip
    assert empty.shape == (2, 0)


def test_min_alignment_length_counts_repeats_within_length_only() -> None:
    targets = torch.tensor([[1, 1, 1, 2], [3, 4, 4, 4], [5, 0, 0, 0]])
    lengths = torch.tensor([4, 2, 1])
    assert min_alignment_length(targets, lengths).tolist() == [6, 2, 1]


def test_collapse() -> None:
    assert collapse(torch.tensor([0, 1, 1, 0, 1, 2, 2, -1, -1])) == [1, 1, 2]
    assert collapse(torch.tensor([3, 3, 1, 3]), blank=3) == [1]
    assert collapse(torch.tensor([-1, -1])) == []
    with pytest.raises(ValueError):
        collapse(torch.zeros(2, 2, dtype=torch.long))
