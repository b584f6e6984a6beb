"""Input-use probe: exact oracles on a model that cannot read its input, a trained one that does.

Oracles: a model whose alignment input is the same vector for every token (the CTC start of
:func:`imputer_start`) computes the same function whatever it is shown, so every input scores
exactly as ``none``: NLL ratio 1, KL 0, no K = 1 / K = B disagreement, token offsets 0. A tiny model
trained with the Imputer loss on a task whose alignment can be read off its neighbours but not off
the acoustics must read its input: an expert NLL ratio at p = 0.875 far below 0.5. Shown frames are
counted per block; masked-frame counts, norms and frame counts are recomputed by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imputer_asr.cli import build_parser, main
from imputer_asr.config import ExperimentConfig, ImputerConfig, ModelConfig
from imputer_asr.data.dataset import pad_sequences
from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer
from imputer_asr.evaluation.probe import (
    CONDITIONS,
    DEFAULT_FRACTIONS,
    ProbeReport,
    check_probe_arguments,
    format_probe,
    probe_batches,
    shown_frames,
    shown_per_block,
)
from imputer_asr.model.alignment import collapse
from imputer_asr.model.conformer import ImputerModel, subsampled_lengths
from imputer_asr.model.losses import imputer_loss
from imputer_asr.training.imputer import imputer_start
from imputer_asr.training.masking import block_mask

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 7


def _model(seed: int = 0, vocab: int = VOCAB, **changes) -> ImputerModel:
    torch.manual_seed(seed)
    tiny = dict(input_dim=20, subsampling_channels=4, d_model=16, num_heads=2, ff_dim=32, num_layers=2)
    tiny.update(conv_kernel=3, inject_layer=1, dropout=0.0)
    return ImputerModel(ModelConfig(vocab_size=vocab, mask_id=vocab, **{**tiny, **changes})).eval()


def _blind_model() -> ImputerModel:
    """An Imputer started from a CTC model: every token's alignment input is [MASK]'s."""
    model = _model(seed=3)
    model.load_state_dict(imputer_start(model.state_dict(), model.cfg.mask_id))
    return model


def _reading_model() -> ImputerModel:
    """A random Imputer whose output depends on the tokens it is shown."""
    model = _model(seed=4)
    with torch.no_grad():
        model.token_embed.weight[: model.cfg.mask_id].normal_(std=0.3)
    return model


def _random_batch(seed: int = 0, infeasible: bool = False) -> dict:
    """Three utterances of 32, 24 and 16 encoder frames (whole blocks of 8) with random targets;
    with ``infeasible`` a fourth of 8 frames whose 10 labels no alignment fits."""
    g = torch.Generator().manual_seed(seed)
    lengths = [131, 99, 67] + ([35] if infeasible else [])
    targets = torch.randint(1, VOCAB, (len(lengths), 10), generator=g)
    return {
        "features": torch.randn(len(lengths), 131, 20, generator=g),
        "feature_lengths": torch.tensor(lengths),
        "targets": targets,
        "target_lengths": torch.tensor([5, 4, 3] + ([10] if infeasible else [])),
    }


@pytest.mark.parametrize(("fraction", "block_size"), [(0.25, 8), (0.5, 8), (0.875, 8), (0.3, 5), (0.6, 4)])
def test_shown_frames_show_round_p_b_per_full_block(fraction, block_size):
    lengths, width = torch.tensor([40, 37, 5, 0]), 40
    shown = shown_frames(lengths, width, fraction, block_size, generator=torch.Generator().manual_seed(0))
    assert shown.shape == (4, width) and shown.dtype == torch.bool
    per_block = shown_per_block(fraction, block_size)
    for row, length in zip(shown, lengths.tolist(), strict=True):
        assert not row[length:].any()
        for start in range(0, length, block_size):
            block = row[start : min(start + block_size, length)]
            want = per_block if len(block) == block_size else math.floor(fraction * len(block) + 0.5)
            assert int(block.sum()) == want
    again = shown_frames(lengths, width, fraction, block_size, generator=torch.Generator().manual_seed(0))
    other = shown_frames(lengths, width, fraction, block_size, generator=torch.Generator().manual_seed(1))
    assert torch.equal(shown, again) and not torch.equal(shown, other)
    full = shown[0].view(-1, block_size)  # the 40 // B full blocks of row 0
    assert len({tuple(block.tolist()) for block in full}) > 1  # positions are drawn, not fixed


def test_shown_per_block_rounds_half_up():
    assert [shown_per_block(p, 8) for p in DEFAULT_FRACTIONS] == [2, 4, 6, 7]
    assert shown_per_block(0.3, 5) == 2 and shown_per_block(0.1, 5) == 1 and shown_per_block(0.05, 8) == 0


@pytest.mark.parametrize(
    ("fractions", "block_size", "match"),
    [
        ([0.0], 8, r"\(0, 1\)"),
        ([1.0], 8, r"\(0, 1\)"),
        ([-0.5], 8, r"\(0, 1\)"),
        ([0.5, 1.5], 8, r"\(0, 1\)"),
        ([0.97], 8, "shows all 8"),
        ([0.5], 1, "shows all 1"),
        ([0.5, 0.5], 8, "distinct"),
        ([], 8, "empty"),
        ([0.5], 0, "block_size"),
        ([0.5], 2.0, "block_size"),
    ],
)
def test_bad_arguments_raise_value_error(fractions, block_size, match):
    with pytest.raises(ValueError, match=match):
        check_probe_arguments(fractions, block_size)
    with pytest.raises(ValueError, match=match):
        probe_batches(_blind_model(), [_random_batch()], fractions=fractions, block_size=block_size)


def test_bad_tensors_raise_value_error():
    with pytest.raises(ValueError, match="lengths"):
        shown_frames(torch.tensor([9]), 8, 0.5, 4)
    with pytest.raises(ValueError, match="lengths"):
        shown_frames(torch.tensor([[4]]), 8, 0.5, 4)
    batch = _random_batch()
    del batch["targets"]
    with pytest.raises(ValueError, match="lacks targets"):
        probe_batches(_blind_model(), [batch])
    lone = {key: value[3:] for key, value in _random_batch(infeasible=True).items()}
    with pytest.raises(ValueError, match="1 skipped"):
        probe_batches(_blind_model(), [lone])


def test_a_model_that_cannot_read_its_input_scores_exactly_as_none():
    model = _blind_model().train()
    batches = [_random_batch(0, infeasible=True), _random_batch(1)]
    report = probe_batches(model, batches, block_size=8, seed=0)
    assert model.training  # mode restored
    assert (report.utterances, report.skipped, report.valid_frames) == (6, 1, 2 * (32 + 24 + 16))
    assert [r.fraction for r in report.fractions] == list(DEFAULT_FRACTIONS)
    for result in report.fractions:
        assert list(result.conditions) == list(CONDITIONS)
        none = result.conditions["none"]
        for cond in result.conditions.values():
            assert cond.nll_ratio == 1.0 and cond.kl == 0.0  # exactly: the same function
            assert cond.accuracy == none.accuracy and cond.nll == none.nll
            assert cond.completion_ratio == 1.0 and cond.completion_nll == none.completion_nll
        # Completing a partial alignment is easier the more of it is shown, even for a blind model
        # (fewer frames left free), and never harder than the frame NLL of the expert's one path.
        # Where the shown frames leave only that path the two are equal, up to float32 rounding of
        # two different sums (the dynamic program against a sum of log-probs).
        assert 0.0 < none.completion_nll <= none.nll * (1 + 1e-6)
        assert result.expert_nll_ratio == 1.0
    assert report.token_norm == 0.0 and report.norm_ratio == 0.0 and report.expert_norm_ratio == 0.0
    assert report.frame_disagreement == 0.0 and report.utterance_disagreement == 0.0


def test_counts_and_norms_match_a_direct_computation():
    model = _reading_model()
    batch = _random_batch(2)
    report = probe_batches(model, [batch], fractions=(0.25, 0.5, 0.875), block_size=8, seed=5)
    blocks = (32 + 24 + 16) // 8
    assert [r.masked_frames for r in report.fractions] == [6 * blocks, 4 * blocks, 1 * blocks]
    assert [r.shown for r in report.fractions] == [2, 4, 7]
    with torch.no_grad():
        hidden, lengths = model.encode_acoustic(batch["features"], batch["feature_lengths"])
        tokens = torch.arange(VOCAB).unsqueeze(0)
        offsets = model.alignment_input(tokens) - model.alignment_input(torch.full((1, 1), VOCAB))
    valid = torch.arange(hidden.size(1)) < lengths.unsqueeze(1)
    assert report.valid_frames == int(subsampled_lengths(batch["feature_lengths"]).sum()) == 72
    assert report.hidden_norm == pytest.approx(float(hidden[valid].norm(dim=-1).mean()), rel=1e-5)
    assert report.token_norm == pytest.approx(float(offsets.norm(dim=-1).mean()), rel=1e-5)
    assert report.norm_ratio == pytest.approx(report.token_norm / report.hidden_norm)
    for result in report.fractions:
        conds = result.conditions
        assert conds["none"].kl == 0.0 and conds["none"].nll_ratio == 1.0
        assert all(c.kl > 0 for name, c in conds.items() if name != "none")  # it reads its input
        assert all(0.0 <= c.accuracy <= 1.0 and c.nll > 0 for c in conds.values())
        assert conds["expert"].nll_ratio == pytest.approx(conds["expert"].nll / conds["none"].nll)
    assert 0.0 <= report.frame_disagreement <= 1.0 and 0.0 <= report.utterance_disagreement <= 1.0


_FRAMES = 32  # encoder frames of an utterance of the reading task


def _reading_task(g: torch.Generator, n: int) -> dict:
    """Utterances whose alignment alternates runs (2 to 4 frames) of blank and of a token, the tokens
    alternating 1, 2, 1, ... or 2, 1, 2, ...: the acoustics tell blank from token but not 1 from 2,
    which any other shown token tells."""
    rows = []
    for _ in range(n):
        row, token, blank = [], int(torch.randint(1, 3, (1,), generator=g)), True
        while len(row) < _FRAMES:
            run = int(torch.randint(2, 5, (1,), generator=g))
            row += [0 if blank else token] * run
            token = token if blank else 3 - token
            blank = not blank
        rows.append(row[:_FRAMES])
    alignment = torch.tensor(rows)
    features = torch.randn(n, 4 * _FRAMES + 3, 20, generator=g)  # 4 * 32 + 3 fbank frames -> 32
    is_token = (alignment > 0).long().repeat_interleave(4, dim=1)
    features[:, : 4 * _FRAMES, :2] += 2.0 * F.one_hot(is_token, 2)
    targets, target_lengths = pad_sequences([collapse(a, 0) for a in rows], 0)
    feature_lengths = torch.full((n,), 4 * _FRAMES + 3)
    return dict(
        features=features,
        feature_lengths=feature_lengths,
        targets=targets,
        target_lengths=target_lengths,
        alignment=alignment,
    )


def _train_reading_model(steps: int, seed: int = 0) -> ImputerModel:
    """The Imputer loss (shown frames scored) on block-masked alignments of the reading task, plus
    the frame cross-entropy against the alignment of the all-[MASK] output (it keeps the model's own
    forced alignment, the probe's expert, that of the task) and of the imputed output (at a run's
    edge a blank and the token both fit the transcript; it settles them as the acoustics do: without
    it some seeds learn blank there and score an expert NLL ratio of about 0.4 instead of 0.05)."""
    model = _model(seed=seed, vocab=3).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g, masks = torch.Generator().manual_seed(seed + 2), torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        batch = _reading_task(g, 8)
        hidden, lengths = model.encode_acoustic(batch["features"], batch["feature_lengths"])
        tokens_in, observed = block_mask(batch["alignment"], lengths, 8, mask_id=3, generator=masks)
        log_probs = model.impute(hidden, lengths, tokens_in)
        args = (batch["targets"], lengths, batch["target_lengths"], observed)
        loss = imputer_loss(log_probs, *args, reduction="sum", score_observed=True)
        ctc_input = model.impute(hidden, lengths, model.all_mask(hidden))
        for frames in (ctc_input, log_probs):
            loss = loss + F.nll_loss(frames.transpose(1, 2), batch["alignment"], reduction="sum")
        optimizer.zero_grad()
        (loss / batch["target_lengths"].sum()).backward()
        optimizer.step()
    return model.eval()


def test_a_model_trained_to_read_its_input_passes():
    model = _train_reading_model(steps=200)
    g = torch.Generator().manual_seed(99)
    report = probe_batches(model, [_reading_task(g, 16), _reading_task(g, 16)], block_size=8)
    top = report.at(0.875)
    assert top.expert_nll_ratio < 0.25, format_probe(report)  # 0.03 to 0.05 over seeds 0 to 5
    assert top.conditions["expert"].accuracy > top.conditions["none"].accuracy, format_probe(report)
    assert top.conditions["expert"].kl > 0.1, format_probe(report)
    assert report.at(0.75).expert_nll_ratio < 1.0, format_probe(report)
    assert top.conditions["expert"].completion_ratio < 0.5, format_probe(report)


def test_report_renders_as_json_and_markdown():
    report = probe_batches(_blind_model(), [_random_batch(0, infeasible=True)], block_size=8)
    record = json.loads(json.dumps(report.to_dict()))
    assert record["block_size"] == 8 and record["skipped"] == 1 and record["utterances"] == 3
    assert [f["fraction"] for f in record["fractions"]] == list(DEFAULT_FRACTIONS)
    assert record["fractions"][-1]["expert_nll_ratio"] == 1.0
    assert set(record["fractions"][0]["conditions"]) == set(CONDITIONS)
    text = format_probe(report)
    rows = [line for line in text.splitlines() if line.startswith("| 0")]
    assert len(rows) == len(DEFAULT_FRACTIONS) * len(CONDITIONS)
    assert "Expert NLL ratio at p = 0.875: 1.00 (criterion <= 0.50: not met" in text
    empty = ProbeReport(8, (), 0, 0, 0, 0.0, 0.0, 0.0, float("nan"), float("nan"))
    assert empty.to_dict()["norm_ratio"] is None and empty.to_dict()["frame_disagreement"] is None
    with pytest.raises(KeyError, match="0.5"):
        empty.at(0.5)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    texts = ["THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS UP"] * 20
    return train_tokenizer(texts, tmp_path_factory.mktemp("bpe") / "bpe.model", vocab_size=30)


def test_cli_probe(tmp_path: Path, tokenizer: Tokenizer, noise_cuts, capsys):
    from imputer_asr.training.checkpoint import package_model

    cfg = _reading_model().cfg
    model_cfg = ModelConfig(
        **{**vars(cfg), "vocab_size": tokenizer.vocab_size, "mask_id": tokenizer.mask_id, "blank_id": 0}
    )
    model_pt = tmp_path / "model.pt"
    experiment = ExperimentConfig(model=model_cfg, imputer=ImputerConfig(block_size=4))
    package_model(ImputerModel(model_cfg).state_dict(), experiment, tokenizer, model_pt)
    too_long = "THE CAT SAT ON THE MAT A DOG RAN IN THE PARK THE SUN IS UP THE CAT SAT ON THE MAT"
    cuts = noise_cuts([too_long, "THE CAT SAT", "A DOG RAN"], growth=0.5)  # 1 s: 24 encoder frames
    out = tmp_path / "report" / "probe.json"
    common = ["probe", "--model", str(model_pt), "--cuts", str(cuts)]
    assert main([*common, "--fractions", "0.5", "0.75", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "block size B = 4" in printed and "| 0.75 | 3/4 |" in printed
    record = json.loads(out.read_text())
    assert record["block_size"] == 4 and record["seed"] == 0 and record["model"] == str(model_pt)
    assert (record["utterances"], record["skipped"]) == (2, 1)
    assert [f["fraction"] for f in record["fractions"]] == [0.5, 0.75]
    assert main([*common, "--max-cuts", "2", "--block-size", "8", "--seed", "3"]) == 0
    assert "probed: 1, skipped (no feasible alignment): 1," in capsys.readouterr().out  # the first 2 cuts
    missing = tmp_path / "missing.pt"
    assert main(["probe", "--model", str(missing), "--cuts", str(cuts)]) == 1
    assert f"{missing}: no such model file" in capsys.readouterr().err
    assert main(["probe", "--model", str(model_pt), "--cuts", str(tmp_path / "none.jsonl.gz")]) == 2
    assert "fraction 0.875 shows all 4 frames" in capsys.readouterr().err  # the default p with B = 4
    absent = ["probe", "--model", str(model_pt), "--cuts", str(tmp_path / "none.jsonl.gz")]
    assert main([*absent, "--block-size", "8"]) == 1
    assert "none.jsonl.gz: no such cuts manifest" in capsys.readouterr().err
    assert main([*common, "--fractions", "1.5"]) == 2
    assert "(0, 1)" in capsys.readouterr().err
    assert main([*common, "--max-cuts", "0"]) == 2


def test_cli_probe_defaults_are_the_library_defaults_and_shown_in_help(capsys):
    parser = build_parser()
    args = parser.parse_args(["probe", "--model", "m.pt", "--cuts", "c.jsonl.gz"])
    assert tuple(args.fractions) == DEFAULT_FRACTIONS
    assert (args.max_cuts, args.block_size, args.seed, args.threads, args.out) == (200, None, 0, None, None)
    assert args.device == "auto"  # threads None: torch's own count (imputer_asr.cli.runtime)
    with pytest.raises(SystemExit):
        parser.parse_args(["probe", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for shown in ("[0.25, 0.5, 0.75, 0.875]", "(default: 200)", "the model's imputer config", "(default: 0)"):
        assert shown in help_text
