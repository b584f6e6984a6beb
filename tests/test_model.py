"""The conformer: shapes, padding invariance, the inject-layer split, errors, gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imputer_asr.config import ModelConfig
from imputer_asr.model.conformer import (
    ImputerModel,
    cepstral_smoother,
    padding_mask,
    subsampled_lengths,
    utterance_means,
)

VOCAB = 9
FEAT = 20
LENGTHS = [40, 23, 9]  # ragged; 9 frames -> 1 encoder frame


def _config(**changes) -> ModelConfig:
    base = ModelConfig(
        vocab_size=VOCAB,
        blank_id=0,
        mask_id=VOCAB,
        input_dim=FEAT,
        subsampling_channels=4,
        d_model=16,
        num_heads=2,
        ff_dim=32,
        num_layers=3,
        conv_kernel=5,
        dropout=0.1,
    )
    return dataclasses.replace(base, **changes)


def _model(seed: int = 0, **changes) -> ImputerModel:
    torch.manual_seed(seed)
    return ImputerModel(_config(**changes))


pytestmark = pytest.mark.usefixtures("one_thread")


def _ragged_batch(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Utterances, and their batch padded with large noise (so a leak through padding shows)."""
    g = torch.Generator().manual_seed(seed)
    utts = [torch.randn(n, FEAT, generator=g) for n in LENGTHS]
    batch = 100.0 * torch.randn(len(utts), max(LENGTHS), FEAT, generator=g)
    for i, u in enumerate(utts):
        batch[i, : len(u)] = u
    return utts, batch, torch.tensor(LENGTHS)


def _random_tokens(n: int, t: int, seed: int) -> torch.Tensor:
    """Alignment tokens in {blank, pieces, [MASK]}."""
    return torch.randint(VOCAB + 1, (n, t), generator=torch.Generator().manual_seed(seed))


def test_subsampled_lengths_match_the_conv_stack() -> None:
    model = _model()
    lengths = torch.arange(7, 41)
    expected = subsampled_lengths(lengths)
    for n, want in zip(lengths.tolist(), expected.tolist(), strict=True):
        y = model.subsampling.conv(torch.randn(1, 1, n, FEAT))
        assert y.shape[2] == want, n
        # Brute force: two unpadded 3-wide stride-2 windows.
        assert want == len(range(0, len(range(0, n - 2, 2)) - 2, 2))
    assert expected.min() == 1
    assert subsampled_lengths(torch.tensor([6])).item() == 0


def test_padding_mask() -> None:
    mask = padding_mask(torch.tensor([3, 1, 0]), 4)
    assert mask.tolist() == [
        [False, False, False, True],
        [False, True, True, True],
        [True, True, True, True],
    ]


@pytest.mark.parametrize("inject_layer", [0, 2])
def test_output_shapes(inject_layer: int) -> None:
    model = _model(inject_layer=inject_layer).eval()
    _, batch, lengths = _ragged_batch()
    log_probs, out_lengths = model(batch, lengths)
    t = subsampled_lengths(torch.tensor(max(LENGTHS))).item()
    assert log_probs.shape == (len(LENGTHS), t, VOCAB)
    assert out_lengths.tolist() == subsampled_lengths(lengths).tolist()
    hidden, hidden_lengths = model.encode_acoustic(batch, lengths)
    assert hidden.shape == (len(LENGTHS), t, 16)
    assert torch.equal(hidden_lengths, out_lengths)
    mask = model.all_mask(hidden)
    assert mask.shape == (len(LENGTHS), t) and mask.dtype == torch.long
    assert (mask == model.cfg.mask_id).all()


@pytest.mark.parametrize("inject_layer", [0, 2])
@pytest.mark.parametrize("with_tokens", [False, True])
def test_padding_invariance(inject_layer: int, with_tokens: bool) -> None:
    model = _model(inject_layer=inject_layer).eval()
    utts, batch, lengths = _ragged_batch()
    t = subsampled_lengths(lengths)
    tokens = _random_tokens(len(utts), int(t.max()), seed=3) if with_tokens else None
    with torch.no_grad():
        batched, batched_lengths = model(batch, lengths, tokens)
        for i, u in enumerate(utts):
            alone_tokens = None if tokens is None else tokens[i : i + 1, : t[i]]
            alone, alone_lengths = model(u[None], torch.tensor([len(u)]), alone_tokens)
            assert alone_lengths.item() == batched_lengths[i].item() == alone.shape[1]
            torch.testing.assert_close(batched[i, : t[i]], alone[0], atol=1e-5, rtol=0)


def test_utterance_cmn_ignores_a_fixed_spectral_colour_and_the_padding() -> None:
    utts, batch, lengths = _ragged_batch(seed=2)
    means = utterance_means(batch, lengths)
    for i, u in enumerate(utts):
        torch.testing.assert_close(means[i, 0], u.mean(0))
    colour = 3.0 * torch.randn(len(utts), 1, FEAT, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        on = _model(utterance_cmn=True).eval()
        torch.testing.assert_close(on(batch + colour, lengths)[0], on(batch, lengths)[0], atol=1e-4, rtol=0)
        batched = on(batch, lengths)[0]
        t = subsampled_lengths(lengths)
        for i, u in enumerate(utts):
            torch.testing.assert_close(
                batched[i, : t[i]], on(u[None], torch.tensor([len(u)]))[0][0], atol=1e-5, rtol=0
            )
        off = _model(utterance_cmn=False).eval()
        assert (off(batch + colour, lengths)[0] - off(batch, lengths)[0]).abs().max() > 0.1


def _cosines(dim: int, ks: range) -> np.ndarray:
    """(dim, len(ks)) cosine basis of the DCT-II, unnormalised: column k is cos(pi k (n + 1/2) / dim)."""
    n = np.arange(dim) + 0.5
    return np.stack([np.cos(np.pi * k * n / dim) for k in ks], axis=1)


@pytest.mark.parametrize("keep", [1, 7, FEAT])
def test_cepstral_smoother_is_the_least_squares_fit_of_the_first_cosines(keep: int) -> None:
    frames = np.random.default_rng(keep).normal(size=(6, FEAT))
    basis = _cosines(FEAT, range(keep))
    want = (basis @ np.linalg.lstsq(basis, frames.T, rcond=None)[0]).T
    got = torch.from_numpy(frames).float() @ cepstral_smoother(FEAT, keep)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)


def test_cepstral_lifter_removes_harmonic_ripple_and_keeps_the_envelope() -> None:
    utts, batch, lengths = _ragged_batch(seed=3)
    keep = 6
    envelope = torch.from_numpy(_cosines(FEAT, range(keep)) @ np.arange(1.0, keep + 1)).float()
    ripple = 2.0 * torch.from_numpy(_cosines(FEAT, range(keep, FEAT)).sum(1)).float()  # fine structure only
    on = _model(cepstral_lifter=keep).eval()
    shaped = on.shape_features(envelope.expand(2, 5, FEAT) + ripple, torch.tensor([5, 5]))
    torch.testing.assert_close(shaped, envelope.expand(2, 5, FEAT), atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(on(batch + ripple, lengths)[0], on(batch, lengths)[0], atol=1e-4, rtol=0)
        off = _model(cepstral_lifter=0).eval()
        assert (off(batch + ripple, lengths)[0] - off(batch, lengths)[0]).abs().max() > 0.1
    assert "lifter" not in on.state_dict()  # rebuilt from the config: older checkpoints load
    with pytest.raises(ValueError, match="cepstral_lifter"):
        _model(cepstral_lifter=FEAT + 1)


def test_padding_invariance_of_acoustic_states() -> None:
    model = _model(inject_layer=2).eval()
    utts, batch, lengths = _ragged_batch(seed=1)
    t = subsampled_lengths(lengths)
    with torch.no_grad():
        hidden, _ = model.encode_acoustic(batch, lengths)
        for i, u in enumerate(utts):
            alone, _ = model.encode_acoustic(u[None], torch.tensor([len(u)]))
            torch.testing.assert_close(hidden[i, : t[i]], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("inject_layer", [0, 2])
def test_forward_is_encode_then_impute(inject_layer: int) -> None:
    model = _model(inject_layer=inject_layer).eval()
    _, batch, lengths = _ragged_batch()
    with torch.no_grad():
        log_probs, out_lengths = model(batch, lengths)
        hidden, hidden_lengths = model.encode_acoustic(batch, lengths)
        assert torch.equal(out_lengths, hidden_lengths)
        assert torch.equal(log_probs, model.impute(hidden, hidden_lengths, model.all_mask(hidden)))
        tokens = _random_tokens(*hidden.shape[:2], seed=5)
        assert torch.equal(model(batch, lengths, tokens)[0], model.impute(hidden, out_lengths, tokens))


@pytest.mark.parametrize("inject_layer", [0, 2])
def test_impute_over_chosen_frames_is_the_whole_output_there_and_nothing_elsewhere(inject_layer: int) -> None:
    model = _model(inject_layer=inject_layer).double().eval()
    _, batch, lengths = _ragged_batch()
    with torch.no_grad():
        hidden, hidden_lengths = model.encode_acoustic(batch.double(), lengths)
        tokens = _random_tokens(*hidden.shape[:2], seed=3)
        whole = model.impute(hidden, hidden_lengths, tokens)
        g = torch.Generator().manual_seed(4)
        for frames in (
            torch.rand(tokens.shape, generator=g) < 0.4,  # padded frames among them too
            torch.zeros_like(tokens, dtype=torch.bool),
            torch.ones_like(tokens, dtype=torch.bool),
        ):
            some = model.impute(hidden, hidden_lengths, tokens, frames)
            assert some.shape == whole.shape and some.dtype == torch.float32
            assert torch.allclose(some[frames], whole[frames].float(), atol=1e-5)
            assert bool((some[~frames] == float("-inf")).all())
        with pytest.raises(ValueError, match="frames must be"):
            model.impute(hidden, hidden_lengths, tokens, frames[:, :-1])


def test_impute_step_reuses_unchanged_frames_and_gives_imputes_output() -> None:
    model = _model(inject_layer=2).double().eval()  # one block above inject_layer
    _, batch, lengths = _ragged_batch()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        hidden, hidden_lengths = model.encode_acoustic(batch.double(), lengths)
        tokens = model.all_mask(hidden)
        valid = ~padding_mask(hidden_lengths, hidden.size(1))
        cache = None
        for _ in range(4):  # alignments that differ from the last at a few frames, as K-step decoding's
            frames = valid & (tokens == model.cfg.mask_id)
            got, cache = model.impute_step(hidden, hidden_lengths, tokens, frames, cache)
            fresh, _ = model.impute_step(hidden, hidden_lengths, tokens, frames)
            expected = model.impute(hidden, hidden_lengths, tokens, frames)
            assert torch.equal(got == float("-inf"), expected == float("-inf"))
            assert torch.allclose(got[frames], expected[frames], atol=1e-6)
            assert torch.allclose(fresh[frames], expected[frames], atol=1e-6)
            fix = frames & (torch.rand(tokens.shape, generator=g) < 0.3)
            tokens = torch.where(fix, torch.randint(VOCAB, tokens.shape, generator=g), tokens)
    with pytest.raises(ValueError, match="one block above inject_layer"):
        _model(inject_layer=1).impute_step(hidden.float(), hidden_lengths, tokens, frames)


@pytest.mark.parametrize("inject_layer", [0, 1])
def test_intermediate_read_out_is_the_lower_blocks_through_the_same_layer(inject_layer: int) -> None:
    model = _model(inject_layer=inject_layer, interctc_layer=2).eval()
    plain = ImputerModel(dataclasses.replace(model.cfg, interctc_layer=0)).eval()
    plain.load_state_dict(model.state_dict())  # intermediate CTC adds no parameters
    _, batch, lengths = _ragged_batch()
    with torch.no_grad():
        hidden, out_lengths = model.encode_acoustic(batch, lengths)
        tokens = model.all_mask(hidden)
        final, intermediate = model.impute_with_intermediate(hidden, out_lengths, tokens)
        assert torch.equal(final, plain.impute(hidden, out_lengths, tokens))
        # Oracle: run the first two blocks by hand (a model whose top is cut after block 2).
        cut = ImputerModel(dataclasses.replace(model.cfg, num_layers=2, interctc_layer=0)).eval()
        cut.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("blocks.2.")})
        torch.testing.assert_close(intermediate, cut.impute(hidden, out_lengths, tokens))
        assert plain.impute_with_intermediate(hidden, out_lengths, tokens)[1] is None


def test_injected_tokens_only_reach_the_top_blocks() -> None:
    model = _model(inject_layer=2).eval()
    _, batch, lengths = _ragged_batch()
    with torch.no_grad():
        hidden_a, lengths_a = model.encode_acoustic(batch, lengths)
        tokens_a = _random_tokens(*hidden_a.shape[:2], seed=1)
        tokens_b = (tokens_a + 1) % (VOCAB + 1)
        hidden_b, _ = model.encode_acoustic(batch, lengths)
        assert torch.equal(hidden_a, hidden_b)
        out_a = model.impute(hidden_a, lengths_a, tokens_a)
        out_b = model.impute(hidden_a, lengths_a, tokens_b)
        valid = ~padding_mask(lengths_a, hidden_a.size(1))
        assert (out_a - out_b)[valid].abs().amax(dim=-1).min() > 1e-4
        # The bottom blocks are really run: states differ from inject_layer=0 with equal weights.
        shallow = ImputerModel(dataclasses.replace(model.cfg, inject_layer=0)).eval()
        shallow.load_state_dict(model.state_dict())
        assert not torch.allclose(shallow.encode_acoustic(batch, lengths)[0], hidden_a)


@pytest.mark.parametrize("inject_layer", [0, 1])
def test_log_probs_normalised(inject_layer: int) -> None:
    model = _model(inject_layer=inject_layer).eval()
    _, batch, lengths = _ragged_batch()
    with torch.no_grad():
        log_probs, _ = model(batch, lengths, _random_tokens(3, 9, seed=2))
    assert (log_probs <= 0).all()
    torch.testing.assert_close(
        log_probs.double().exp().sum(-1), torch.ones(log_probs.shape[:2], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"mask_id": VOCAB + 1}, "mask_id"),
        ({"mask_id": 0}, "mask_id"),
        ({"inject_layer": 3}, "inject_layer"),
        ({"inject_layer": -1}, "inject_layer"),
        ({"num_heads": 3}, "heads"),
        ({"d_model": 18, "num_heads": 2}, "heads"),  # heads of odd size cannot be rotated
        ({"vocab_size": 1, "mask_id": 1}, "vocabulary"),
        ({"blank_id": VOCAB}, "vocabulary"),
        ({"interctc_layer": 3}, "interctc_layer"),
        ({"interctc_layer": 1, "inject_layer": 1}, "interctc_layer"),
        ({"interctc_layer": 1, "interctc_weight": 1.0}, "interctc_weight"),
    ],
)
def test_bad_config_raises(changes: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ImputerModel(_config(**changes))


def test_bad_inputs_raise() -> None:
    model = _model().eval()
    features = torch.randn(2, 30, FEAT)
    lengths = torch.tensor([30, 20])
    with pytest.raises(ValueError, match="features"):
        model(torch.randn(2, 30, FEAT + 1), lengths)
    with pytest.raises(ValueError, match="features"):
        model(torch.randn(30, FEAT), lengths)
    with pytest.raises(ValueError, match=r"lengths must be in \[7, 30\]"):
        model(features, torch.tensor([30, 6]))
    with pytest.raises(ValueError, match="tokens"):
        model(features, lengths, torch.zeros(2, 7, dtype=torch.long))  # T' is 6, not 7
    with pytest.raises(ValueError, match="tokens"):
        model(features, lengths, torch.zeros(2, 6, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        model(features, lengths, torch.zeros(1, 6, dtype=torch.long))
    assert model(features, lengths, torch.zeros(2, 6, dtype=torch.long))[0].shape == (2, 6, VOCAB)


def test_too_short_batch_raises_value_error() -> None:
    model = _model().eval()
    with pytest.raises(ValueError):
        model(torch.randn(1, 6, FEAT), torch.tensor([6]))


def test_dropout_active_in_train_mode_only() -> None:
    model = _model(dropout=0.3)
    _, batch, lengths = _ragged_batch()
    tokens = _random_tokens(3, 9, seed=4)
    model.train()
    first, _ = model(batch, lengths, tokens)
    second, _ = model(batch, lengths, tokens)
    assert not torch.allclose(first, second)
    model.eval()
    with torch.no_grad():
        first, _ = model(batch, lengths, tokens)
        second, _ = model(batch, lengths, tokens)
    assert torch.equal(first, second)


@pytest.mark.parametrize("inject_layer", [0, 2])
@pytest.mark.parametrize("with_tokens", [False, True])
def test_gradients_reach_every_parameter(inject_layer: int, with_tokens: bool) -> None:
    model = _model(inject_layer=inject_layer, dropout=0.0).train()
    _, batch, lengths = _ragged_batch()
    t = subsampled_lengths(lengths)
    tokens = None
    if with_tokens:
        # Valid frames use ids 0..4; padded frames use ids 5..9 ([MASK] included).
        tokens = _random_tokens(3, int(t.max()), seed=6) % 5
        tokens = tokens.masked_fill(padding_mask(t, int(t.max())), 7)
        tokens[0, -1] = VOCAB  # one [MASK] on a valid frame of the longest utterance
    log_probs, out_lengths = model(batch, lengths, tokens)
    targets = torch.tensor([[1, 2, 3], [4, 4, 0], [5, 0, 0]])
    loss = F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, torch.tensor([3, 2, 1]), blank=0)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name not in ("align_embed.weight", "token_embed.weight"):
            assert p.grad.abs().sum() > 0, name
    used = set(tokens[~padding_mask(t, int(t.max()))].tolist()) if with_tokens else {VOCAB}
    for row in range(VOCAB + 1):
        # Exactly the ids on valid frames get a gradient: padded frames reach no valid output;
        # the token path's [MASK] row stays zero.
        assert (model.align_embed.weight.grad[row].abs().sum() > 0) == (row in used), row
        token_grad = model.token_embed.weight.grad[row].abs().sum()
        assert (token_grad > 0) == (row in used and row != VOCAB), row


def test_depthwise_convolution_is_the_conv1d_of_its_weights() -> None:
    """The convolution module runs its depthwise Conv1d as a 2-D convolution over a channels-last
    view (faster on CPU); the oracle is the Conv1d module applied the textbook way."""
    model = _model(dropout=0.0).eval()
    conv = model.blocks[0].conv
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 11, 16, generator=g)
    pad = padding_mask(torch.tensor([11, 7, 2]), 11)
    y = F.glu(conv.pointwise_in(conv.norm(x)), dim=-1).masked_fill(pad[..., None], 0.0)
    y = conv.depthwise(y.transpose(1, 2)).transpose(1, 2)
    expected = conv.pointwise_out(F.silu(conv.depthwise_norm(y)))
    torch.testing.assert_close(conv(x, pad), expected)


def test_bf16_autocast_keeps_attention_and_the_output_in_float32(monkeypatch) -> None:
    """Under CPU bfloat16 autocast the matrix products run in bfloat16, but attention (slow in
    bfloat16 on CPU) and the log-probabilities (summed by the losses) stay float32, and the
    output stays close to the float32 network's."""
    model = _model(dropout=0.0).eval()
    _, batch, lengths = _ragged_batch()
    seen: list[torch.dtype] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.extend((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        reference, _ = model(batch, lengths)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden, _ = model.encode_acoustic(batch, lengths)
            log_probs, _ = model(batch, lengths)
    assert hidden.dtype == torch.bfloat16  # autocast did reach the matrix products
    assert seen and set(seen) == {torch.float32}
    assert log_probs.dtype == torch.float32
    valid = ~padding_mask(subsampled_lengths(lengths), log_probs.size(1))
    gap = (log_probs.exp() - reference.exp()).abs()[valid].max()
    assert 0 < gap < 0.05
