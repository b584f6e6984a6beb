"""Tests for imputer_asr.model.losses: brute force over alignments, equality with torch CTC, gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from imputer_asr.model.losses import ctc_loss, imputer_loss


def _collapse(path: tuple[int, ...], blank: int) -> list[int]:
    merged = [token for i, token in enumerate(path) if i == 0 or token != path[i - 1]]
    return [token for token in merged if token != blank]


def _brute_force_nll(
    log_probs: torch.Tensor, target: list[int], observed: list[int], blank: int, score_observed: bool = True
) -> float:
    """-log of the sum over every consistent alignment of the product of its frame probabilities:
    every frame's with ``score_observed``, the masked frames' only without."""
    t, c = log_probs.shape
    total = 0.0
    for path in itertools.product(range(c), repeat=t):
        if _collapse(path, blank) != target:
            continue
        if any(o >= 0 and o != a for o, a in zip(observed, path, strict=True)):
            continue
        scored = [i for i in range(t) if score_observed or observed[i] < 0]
        total += math.exp(sum(log_probs[i, path[i]].item() for i in scored))
    return -math.log(total) if total > 0 else math.inf


def _random_problem(
    generator: torch.Generator, t: int, c: int, s: int, blank: int
) -> tuple[torch.Tensor, list[int], list[int]]:
    log_probs = torch.randn(t, c, generator=generator, dtype=torch.float64).log_softmax(-1)
    labels = [i for i in range(c) if i != blank]
    target = [labels[int(i)] for i in torch.randint(len(labels), (s,), generator=generator)]
    observed = torch.randint(c, (t,), generator=generator)
    observed[torch.rand(t, generator=generator) < 0.6] = -1
    return log_probs, target, observed.tolist()


@pytest.mark.parametrize("score_observed", [True, False])
@pytest.mark.parametrize("blank", [0, 2])
def test_imputer_loss_matches_brute_force(blank: int, score_observed: bool) -> None:
    generator = torch.Generator().manual_seed(1234)
    n_infinite = n_finite = 0
    for _ in range(60):
        t = int(torch.randint(1, 7, (1,), generator=generator))
        c = int(torch.randint(blank + 2, 5, (1,), generator=generator))
        s = int(torch.randint(0, min(t, 3) + 1, (1,), generator=generator))
        log_probs, target, observed = _random_problem(generator, t, c, s, blank)
        expected = _brute_force_nll(log_probs, target, observed, blank, score_observed)
        got = imputer_loss(
            log_probs.unsqueeze(0),
            torch.tensor([target + [blank + 1 if blank + 1 < c else 1] * (3 - s)]),
            torch.tensor([t]),
            torch.tensor([s]),
            torch.tensor([observed]),
            blank=blank,
            reduction="none",
            score_observed=score_observed,
        )
        if math.isinf(expected):
            n_infinite += 1
            assert torch.isposinf(got).all()
        else:
            n_finite += 1
            torch.testing.assert_close(got, torch.tensor([expected], dtype=torch.float64))
    assert n_infinite >= 5 and n_finite >= 20  # both regimes were exercised


@pytest.mark.parametrize("score_observed", [True, False])
def test_imputer_loss_ragged_batch_matches_brute_force(score_observed: bool) -> None:
    generator = torch.Generator().manual_seed(7)
    problems = [_random_problem(generator, t, 3, s, 0) for t, s in [(5, 2), (3, 1), (6, 3), (2, 0)]]
    n, t_max = len(problems), 6
    log_probs = torch.randn(n, t_max, 3, generator=generator, dtype=torch.float64).log_softmax(-1)
    targets = torch.ones(n, 3, dtype=torch.long)
    observed = torch.randint(-1, 3, (n, t_max), generator=generator)  # garbage past the length
    for i, (lp, target, obs) in enumerate(problems):
        log_probs[i, : lp.shape[0]] = lp
        targets[i, : len(target)] = torch.tensor(target, dtype=torch.long)
        observed[i, : len(obs)] = torch.tensor(obs)
    input_lengths = torch.tensor([lp.shape[0] for lp, _, _ in problems])
    target_lengths = torch.tensor([len(target) for _, target, _ in problems])
    got = imputer_loss(
        log_probs,
        targets,
        input_lengths,
        target_lengths,
        observed,
        reduction="none",
        score_observed=score_observed,
    )
    expected = torch.tensor([_brute_force_nll(*problem, 0, score_observed) for problem in problems])
    torch.testing.assert_close(got, expected.to(torch.float64))


def _ragged_batch(
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    log_probs = torch.randn(4, 30, 6, generator=generator, dtype=dtype).log_softmax(-1)
    targets = torch.randint(1, 6, (4, 8), generator=generator)
    input_lengths = torch.tensor([30, 25, 12, 9])
    target_lengths = torch.tensor([8, 5, 7, 0])
    return log_probs, targets, input_lengths, target_lengths


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_all_masked_equals_ctc(reduction: str) -> None:
    log_probs, targets, input_lengths, target_lengths = _ragged_batch()
    observed = torch.full(log_probs.shape[:2], -1)
    expected = F.ctc_loss(
        log_probs.transpose(0, 1), targets, input_lengths, target_lengths, reduction=reduction
    )
    got = imputer_loss(log_probs, targets, input_lengths, target_lengths, observed, reduction=reduction)
    torch.testing.assert_close(got, expected)
    wrapped = ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction=reduction)
    torch.testing.assert_close(wrapped, expected)


def test_all_masked_gradient_through_log_softmax_equals_ctc() -> None:
    log_probs, targets, input_lengths, target_lengths = _ragged_batch(torch.float64)
    leaf = log_probs.clone().requires_grad_()
    observed = torch.full(log_probs.shape[:2], -1)
    imputer_loss(leaf.log_softmax(-1), targets, input_lengths, target_lengths, observed).backward()
    reference = log_probs.clone().requires_grad_()
    F.ctc_loss(reference.log_softmax(-1).transpose(0, 1), targets, input_lengths, target_lengths).backward()
    torch.testing.assert_close(leaf.grad, reference.grad)


@pytest.mark.parametrize("score_observed", [True, False])
def test_gradient_is_the_exact_derivative_without_log_softmax(score_observed: bool) -> None:
    # Unnormalised scores: torch's CTC gradient would be off by exp(log_probs) here.
    generator = torch.Generator().manual_seed(5)
    scores = -torch.rand(2, 7, 5, generator=generator, dtype=torch.float64) * 3
    scores.requires_grad_()
    targets = torch.tensor([[1, 3, 3], [4, 2, 0]])
    input_lengths, target_lengths = torch.tensor([7, 6]), torch.tensor([3, 2])
    observed = torch.tensor([[-1, 1, -1, -1, 0, -1, 3], [-1, -1, 0, -1, -1, -1, -1]])

    def loss(x: torch.Tensor) -> torch.Tensor:
        return imputer_loss(
            x,
            targets,
            input_lengths,
            target_lengths,
            observed,
            reduction="sum",
            score_observed=score_observed,
        )

    assert torch.autograd.gradcheck(loss, (scores,))


@pytest.mark.parametrize("score_observed", [True, False])
@pytest.mark.parametrize("blank", [0, 7])
def test_large_vocabulary_matches_ctc_on_point_masses(blank: int, score_observed: bool) -> None:
    # The oracle: F.ctc_loss on the full vocabulary with each observed frame's distribution replaced
    # by a point mass (the gradient at observed frames dropped), plus, when they are scored, the
    # cross-entropy of the observed frames. imputer_loss only ever works on each utterance's own
    # tokens, so this checks that narrowing the classes changes nothing.
    generator = torch.Generator().manual_seed(11)
    n, t, c, s = 5, 40, 60, 12
    logits = torch.randn(n, t, c, generator=generator, dtype=torch.float64)
    targets = torch.randint(1, c, (n, s), generator=generator)
    targets[targets == blank] = 1
    targets[:, 3] = targets[:, 2]  # a repeated label
    input_lengths, target_lengths = torch.tensor([40, 38, 30, 25, 40]), torch.tensor([12, 9, 12, 4, 0])
    observed = torch.full((n, t), -1)
    for row in range(n):  # blanks shown between the labels of a proportional alignment
        frames = torch.arange(0, int(input_lengths[row]), 3)
        observed[row, frames] = blank
    observed[0, 1] = int(targets[0, 0])
    leaf = logits.clone().requires_grad_()
    got = imputer_loss(
        leaf.log_softmax(-1),
        targets,
        input_lengths,
        target_lengths,
        observed,
        blank=blank,
        score_observed=score_observed,
    )
    got.backward()

    reference = logits.clone().requires_grad_()
    shown = observed >= 0
    point_mass = torch.full((n, t, c), -1.0e30, dtype=torch.float64)
    point_mass.scatter_(-1, observed.clamp(min=0).unsqueeze(-1), 0.0)
    log_probs = reference.log_softmax(-1)
    restricted = torch.where(shown.unsqueeze(-1), point_mass, log_probs)
    per_utterance = F.ctc_loss(
        restricted.transpose(0, 1), targets, input_lengths, target_lengths, blank=blank, reduction="none"
    )
    if score_observed:
        within = torch.arange(t) < input_lengths.unsqueeze(1)
        picked = log_probs.gather(-1, observed.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        per_utterance = per_utterance - torch.where(shown & within, picked, 0.0).sum(1)
    expected = (per_utterance / target_lengths.clamp(min=1)).mean()
    expected.backward()
    assert torch.isfinite(got)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(leaf.grad, reference.grad)


def test_all_observed_consistent_path_is_its_cross_entropy() -> None:
    log_probs = torch.randn(1, 5, 4).log_softmax(-1)
    observed = torch.tensor([[0, 2, 2, 0, 3]])
    args = (torch.tensor([[2, 3]]), torch.tensor([5]), torch.tensor([2]), observed)
    loss = imputer_loss(log_probs, *args, reduction="sum")
    expected = -log_probs[0, torch.arange(5), observed[0]].sum()
    torch.testing.assert_close(loss, expected)
    assert imputer_loss(log_probs, *args, score_observed=False).item() == 0.0


def _observed_pattern(input_lengths: torch.Tensor, t_max: int) -> torch.Tensor:
    """A consistent observation: blanks shown at a few frames (targets fit in the rest)."""
    observed = torch.full((len(input_lengths), t_max), -1)
    observed[:, 0] = 0
    observed[0, 10:13] = 0
    observed[1, 20] = 0
    return observed


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("score_observed", [True, False])
def test_gradient_is_finite_and_zero_at_padded_frames(score_observed: bool) -> None:
    log_probs, targets, input_lengths, target_lengths = _ragged_batch()
    observed = _observed_pattern(input_lengths, log_probs.shape[1])
    logits = log_probs.clone().requires_grad_()
    args = (targets, input_lengths, target_lengths, observed)
    with torch.autograd.detect_anomaly():  # no NaN anywhere in the backward graph
        loss = imputer_loss(logits.log_softmax(-1), *args, score_observed=score_observed)
        loss.backward()
    assert torch.isfinite(loss)
    grad = logits.grad
    assert torch.isfinite(grad).all()
    shown = (observed >= 0) & (torch.arange(log_probs.shape[1]) < input_lengths.unsqueeze(1))
    if score_observed:  # the cross-entropy's gradient: softmax minus the one-hot of the shown token
        assert (grad[shown].abs().sum(-1) > 0).all()
    else:
        assert (grad[shown] == 0).all()
    padded = torch.arange(log_probs.shape[1]) >= input_lengths.unsqueeze(1)
    assert (grad[padded] == 0).all()
    masked = (observed < 0) & ~padded
    assert (grad[masked].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("score_observed", [True, False])
def test_gradcheck_with_observed_frames(score_observed: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 7, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 2, 2], [3, 1, 0]])
    input_lengths, target_lengths = torch.tensor([7, 5]), torch.tensor([3, 2])
    observed = torch.tensor([[-1, 1, -1, -1, 0, -1, 2], [0, -1, -1, 1, -1, -1, -1]])

    def loss(x: torch.Tensor) -> torch.Tensor:
        return imputer_loss(
            x.log_softmax(-1),
            targets,
            input_lengths,
            target_lengths,
            observed,
            reduction="sum",
            score_observed=score_observed,
        )

    assert torch.isfinite(loss(logits))
    assert torch.autograd.gradcheck(loss, (logits,))


def test_infeasible_is_inf_with_zero_gradient() -> None:
    log_probs, targets, input_lengths, target_lengths = _ragged_batch()
    observed = torch.full(log_probs.shape[:2], -1)
    observed[0, :] = 0  # all blank cannot produce 8 labels
    logits = log_probs.clone().requires_grad_()
    input_lengths = torch.tensor([30, 25, 6, 9])  # utterance 2: 6 frames for 7 labels
    per_utterance = imputer_loss(
        logits.log_softmax(-1), targets, input_lengths, target_lengths, observed, reduction="none"
    )
    assert torch.isposinf(per_utterance[[0, 2]]).all()
    assert torch.isfinite(per_utterance[[1, 3]]).all()
    per_utterance[[1, 3]].sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[[0, 2]] == 0).all()
    zeroed = imputer_loss(
        logits.log_softmax(-1),
        targets,
        input_lengths,
        target_lengths,
        observed,
        reduction="none",
        zero_infinity=True,
    )
    torch.testing.assert_close(zeroed[[0, 2]], torch.zeros(2))
    torch.testing.assert_close(zeroed[[1, 3]], per_utterance[[1, 3]])


def test_random_observations_never_give_nan_gradients() -> None:
    # Mostly infeasible: torch's CTC backward overflows to NaN for several of these utterances.
    generator = torch.Generator().manual_seed(0)
    n, t, c, s = 32, 100, 8, 25
    logits = torch.randn(n, t, c, generator=generator, requires_grad=True)
    observed = torch.randint(0, c, (n, t), generator=generator)
    observed[torch.rand(n, t, generator=generator) < 0.7] = -1
    targets = torch.randint(1, c, (n, s), generator=generator)
    lengths = (torch.full((n,), t), torch.full((n,), s))
    loss = imputer_loss(
        logits.log_softmax(-1), targets, *lengths, observed, reduction="none", zero_infinity=True
    )
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_infeasible_in_mean_gives_inf_and_zero_infinity_gives_finite_gradient() -> None:
    log_probs, targets, input_lengths, target_lengths = _ragged_batch()
    observed = torch.full(log_probs.shape[:2], -1)
    observed[1, 3] = 0
    observed[1, 4] = 3
    observed[1, 5] = 0
    observed[1, 6] = 3  # 3 blank 3: a repeat of 3 that the target (random) cannot match twice
    targets[1, :5] = torch.tensor([1, 2, 3, 4, 5])
    logits = log_probs.clone().requires_grad_()
    args = (targets, input_lengths, target_lengths, observed)
    assert torch.isposinf(imputer_loss(logits.log_softmax(-1), *args))
    loss = imputer_loss(logits.log_softmax(-1), *args, zero_infinity=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[1] == 0).all()


def test_minus_inf_log_probs_at_masked_frames() -> None:
    log_probs = torch.randn(1, 6, 4, dtype=torch.float64).log_softmax(-1)
    log_probs[0, 2, 3] = -math.inf
    observed = torch.tensor([[-1, 1, -1, -1, -1, -1]])
    leaf = log_probs.clone().requires_grad_()
    loss = imputer_loss(leaf, torch.tensor([[1, 2]]), torch.tensor([6]), torch.tensor([2]), observed)
    loss.backward()
    expected = _brute_force_nll(log_probs[0], [1, 2], observed[0].tolist(), 0)
    assert math.isclose(loss.item() * 2, expected, rel_tol=1e-9)  # mean divides by 2 labels
    assert torch.isfinite(leaf.grad).all()


def test_reduced_precision_is_computed_in_float32() -> None:
    log_probs, targets, input_lengths, target_lengths = _ragged_batch()
    observed = _observed_pattern(input_lengths, log_probs.shape[1])
    args = (targets, input_lengths, target_lengths, observed)
    half = imputer_loss(log_probs.to(torch.bfloat16), *args)
    full = imputer_loss(log_probs.to(torch.bfloat16).float(), *args)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full)


def _valid_args() -> dict[str, object]:
    return {
        "log_probs": torch.randn(2, 5, 4).log_softmax(-1),
        "targets": torch.tensor([[1, 2], [3, 0]]),
        "input_lengths": torch.tensor([5, 4]),
        "target_lengths": torch.tensor([2, 1]),
        "observed": torch.full((2, 5), -1),
    }


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("log_probs", torch.randn(5, 4), "log_probs"),
        ("log_probs", torch.zeros(2, 5, 4, dtype=torch.long), "log_probs"),
        ("targets", torch.tensor([1, 2]), "targets"),
        ("targets", torch.tensor([[1.0, 2.0], [3.0, 0.0]]), "targets"),
        ("targets", torch.tensor([[1, 4], [3, 0]]), "targets must lie"),
        ("targets", torch.tensor([[1, 0], [3, 0]]), "differ from blank"),
        ("targets", torch.tensor([[1, -2], [3, 0]]), "targets must lie"),
        ("input_lengths", torch.tensor([6, 4]), "input_lengths"),
        ("input_lengths", torch.tensor([-1, 4]), "input_lengths"),
        ("input_lengths", torch.tensor([5]), "input_lengths"),
        ("input_lengths", torch.tensor([5.0, 4.0]), "input_lengths"),
        ("target_lengths", torch.tensor([3, 1]), "target_lengths"),
        ("observed", torch.full((2, 4), -1), "observed"),
        ("observed", torch.full((2, 5), 4), "observed"),
        ("observed", torch.full((2, 5), -2), "observed"),
        ("observed", torch.full((2, 5), -1.0), "observed"),
        ("blank", 4, "blank"),
        ("blank", -1, "blank"),
        ("reduction", "average", "reduction"),
    ],
)
def test_imputer_loss_rejects_bad_inputs(name: str, value: object, message: str) -> None:
    kwargs = _valid_args()
    kwargs[name] = value
    with pytest.raises(ValueError, match=message):
        imputer_loss(**kwargs)  # type: ignore[arg-type]


def test_padding_beyond_target_length_is_not_checked() -> None:
    kwargs = _valid_args()
    kwargs["targets"] = torch.tensor([[1, 2], [3, -1]])
    assert torch.isfinite(imputer_loss(**kwargs))  # type: ignore[arg-type]


def test_ctc_loss_rejects_bad_inputs() -> None:
    kwargs = _valid_args()
    del kwargs["observed"]
    with pytest.raises(ValueError, match="reduction"):
        ctc_loss(**kwargs, reduction="max")  # type: ignore[arg-type]
    kwargs["log_probs"] = torch.randn(5, 2, 4)  # time-first is caught by the batch size check
    with pytest.raises(ValueError):
        ctc_loss(**kwargs)  # type: ignore[arg-type]
