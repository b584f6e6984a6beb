"""Tests for imputer_asr.decoding: the CTC collapse and greedy search against brute-force references, and
decode_cutset (the one loop over a CutSet) against decoding each utterance alone, for every decoder."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from lhotse import CutSet

from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer
from imputer_asr.decoding.ctc import CTCGreedyDecoder, ctc_greedy_search, decode_cuts, greedy_alignment
from imputer_asr.decoding.decoder import BatchDecoding, Decoder, decode_cutset
from imputer_asr.decoding.imputer import AdaptiveDecoder, KStepDecoder, decode_cuts_imputer
from imputer_asr.decoding.lm_search import (
    LexiconBeamSearch,
    LMDecoder,
    LMWeights,
    compute_emissions,
    decode_emissions,
)
from imputer_asr.lm.ngram import train_ngram, write_lexicon
from imputer_asr.model.alignment import collapse
from imputer_asr.model.conformer import ImputerModel


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
        assert collapse(alignment, blank) == _reference_collapse(alignment, blank)


def test_collapse_hand_cases() -> None:
    assert collapse([], blank=0) == []
    assert collapse([-1, -1], blank=0) == []
    assert collapse([0, 0, 0], blank=0) == []
    assert collapse([3, 3, 3], blank=0) == [3]
    assert collapse([3, 0, 3], blank=0) == [3, 3]  # a blank separates a doubled token
    assert collapse([1, 1, 0, 2, 1, -1, -1], blank=0) == [1, 2, 1]
    assert collapse([0, 1, 1, 2], blank=1) == [0, 2]  # 0 is a token when blank is 1
    assert collapse([2, 2, -1], blank=0) == [2]


def test_collapse_ignores_what_follows_padding_start() -> None:
    """Padding is a suffix: appending more -1 never changes the result."""
    for alignment in _random_alignments(seed=7, count=200, num_classes=3):
        assert collapse(alignment + [-1] * 3, 0) == collapse(alignment, 0)


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


def test_collapse_takes_a_tensor_or_a_list() -> None:
    for alignment in _random_alignments(seed=3, count=100, num_classes=4):
        assert collapse(torch.tensor(alignment, dtype=torch.long), 0) == collapse(alignment, 0)


TEXTS = ["THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS UP", "ON THE MAT", "A CAT"]
LM_WEIGHTS = LMWeights(lm_weight=0.5, word_score=3.0, beam_size=10)  # words enough to differ


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return train_tokenizer(TEXTS * 20, tmp_path_factory.mktemp("bpe") / "bpe.model", vocab_size=30)


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> tuple[Path, Path]:
    """A lexicon of the words of TEXTS and a trigram LM (ARPA) over them."""
    out = tmp_path_factory.mktemp("lm")
    lm = train_ngram([text.split() for text in TEXTS], order=3)
    lm.write_arpa(out / "lm.arpa")
    write_lexicon(lm.vocabulary, tokenizer, out / "lexicon.txt")
    return out / "lexicon.txt", out / "lm.arpa"


@pytest.fixture(scope="module")
def lm_search(tokenizer: Tokenizer, lm_files: tuple[Path, Path]) -> LexiconBeamSearch:
    return LexiconBeamSearch(tokenizer, *lm_files, LM_WEIGHTS)


def _shuffled_cuts(noise_cuts) -> CutSet:
    """Five cuts of 1 to 2 s, listed in an order that is not the loader's (shortest first)."""
    cuts = list(CutSet.from_file(noise_cuts(TEXTS)))
    return CutSet.from_cuts([cuts[i] for i in (3, 0, 4, 2, 1)])


def _model(tokenizer: Tokenizer, tiny_model_config, cuts: CutSet) -> ImputerModel:
    """A random float64 model whose output varies along time and with the alignment it is shown:
    features normalised with the cuts' statistics, a sharp output layer, random token rows."""
    torch.manual_seed(0)
    model = ImputerModel(tiny_model_config(tokenizer)).double()
    features = torch.cat([torch.from_numpy(cut.load_features()) for cut in cuts]).double()
    model.set_feature_stats(features.mean(0), features.std(0))
    with torch.no_grad():
        model.output.weight.mul_(10)
        model.token_embed.weight.normal_()
        model.token_embed.weight[model.cfg.mask_id] = 0
    return model


def _in_float64(decoder: Decoder) -> Decoder:
    """``decoder`` fed float64 features (so that padding cannot move an argmax by rounding)."""

    def decode(model: ImputerModel, features: torch.Tensor, lengths: torch.Tensor) -> BatchDecoding:
        return decoder(model, features.double(), lengths)

    return decode


def _decoder(name: str, tokenizer: Tokenizer, lm_search: LexiconBeamSearch) -> Decoder:
    decoders = {
        "ctc": lambda: CTCGreedyDecoder(tokenizer.blank_id),
        "k1": lambda: KStepDecoder(steps=1, block_size=4),
        "k4": lambda: KStepDecoder(steps=4, block_size=4),
        "adaptive": lambda: AdaptiveDecoder(threshold=0.5, block_size=4),
        "lm": lambda: LMDecoder(lm_search),
        "lm-k2": lambda: LMDecoder(lm_search, steps=2, block_size=4),
    }
    return decoders[name]()


@pytest.mark.parametrize("name", ["ctc", "k1", "k4", "adaptive", "lm", "lm-k2"])
def test_decode_cutset_gives_each_utterance_what_it_gets_alone(
    name: str, tokenizer: Tokenizer, lm_search: LexiconBeamSearch, tiny_model_config, noise_cuts
) -> None:
    """Batched and padded (two batch sizes) or decoded alone, every utterance gets the same output
    and takes the same evaluations; outputs come in the manifest's order."""
    cuts = _shuffled_cuts(noise_cuts)
    model = _model(tokenizer, tiny_model_config, cuts)
    decoder = _in_float64(_decoder(name, tokenizer, lm_search))
    alone = [decode_cutset(model, tokenizer, CutSet.from_cuts([cut]), decoder) for cut in cuts]
    assert [run.batches for run in alone] == [1] * len(cuts)
    for max_duration in (3.5, 200.0):
        run = decode_cutset(model, tokenizer, cuts, decoder, max_duration=max_duration)
        assert run.cut_ids == list(cuts.ids) and run.refs == [cut.supervisions[0].text for cut in cuts]
        assert run.durations == [cut.duration for cut in cuts]
        assert run.outputs == [a.outputs[0] for a in alone]
        assert run.utterance_evaluations == sum(a.utterance_evaluations for a in alone)
        assert run.batches == (1 if max_duration == 200.0 else 3)
    assert len({str(a.outputs[0]) for a in alone}) > 1  # the oracle is not vacuous
    model.train()
    decode_cutset(model, tokenizer, CutSet.from_cuts(list(cuts)[:1]), decoder)
    assert model.training  # its mode is restored


def test_cutset_wrappers_are_the_one_loop(
    tokenizer: Tokenizer,
    lm_files: tuple[Path, Path],
    lm_search: LexiconBeamSearch,
    tiny_model_config,
    noise_cuts,
) -> None:
    """decode_cuts, decode_cuts_imputer and compute_emissions + decode_emissions: decode_cutset's
    outputs with its decoders, as text, and its counts."""
    cuts = _shuffled_cuts(noise_cuts)
    model = _model(tokenizer, tiny_model_config, cuts).float()
    hyps, seconds = decode_cuts(model, tokenizer, cuts, max_duration=3.5)
    run = decode_cutset(model, tokenizer, cuts, CTCGreedyDecoder(tokenizer.blank_id), max_duration=3.5)
    assert [(h.cut_id, h.ref, h.hyp) for h in hyps] == list(
        zip(run.cut_ids, run.refs, map(tokenizer.decode, run.outputs), strict=True)
    )
    assert seconds > 0
    imputer = decode_cuts_imputer(model, tokenizer, cuts, steps=3, block_size=4, max_duration=3.5)
    run = decode_cutset(model, tokenizer, cuts, KStepDecoder(3, 4), max_duration=3.5)
    assert [h.hyp for h in imputer.hyps] == [tokenizer.decode(ids) for ids in run.outputs]
    assert (imputer.batches, imputer.evaluations, imputer.utterance_evaluations) == (3, 9, 15)
    emissions = compute_emissions(model, tokenizer, cuts, max_duration=3.5, steps=2, block_size=4)
    assert emissions.cut_ids == list(cuts.ids) and (emissions.steps, emissions.batches) == (2, 3)
    searched, _ = decode_emissions(emissions, tokenizer, *lm_files, LM_WEIGHTS)
    run = decode_cutset(model, tokenizer, cuts, LMDecoder(lm_search, steps=2, block_size=4))
    assert [h.hyp for h in searched] == run.outputs
    with pytest.raises(ValueError, match="steps"):
        decode_cuts_imputer(model, tokenizer, cuts, steps=5, block_size=4, threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        AdaptiveDecoder(threshold=1.5)


# --- the decoding commands: a sweep over K in one process, and the score each decoding writes -------


def _packaged_model(tokenizer: Tokenizer, tiny_model_config, cuts: CutSet, path: Path) -> Path:
    """``_model`` in float32, packaged with B = 4 (what ``decode-imputer`` loads)."""
    from imputer_asr.config import ExperimentConfig, FeatureConfig, ImputerConfig
    from imputer_asr.training.checkpoint import package_model

    model = _model(tokenizer, tiny_model_config, cuts).float()
    experiment = ExperimentConfig(
        features=FeatureConfig(num_mel_bins=model.cfg.input_dim),
        model=model.cfg,
        imputer=ImputerConfig(block_size=4),
    )
    package_model(model.state_dict(), experiment, tokenizer, path, trained_as="imputer")
    return path


def _decodings(out: Path, name: str) -> tuple[list[tuple[str, str]], dict]:
    """(cut id, hypothesis) of ``hyps-<name>.jsonl`` and the timing record."""
    import json

    rows = [json.loads(line) for line in (out / f"hyps-{name}.jsonl").read_text().splitlines()]
    return [(r["cut_id"], r["hyp"]) for r in rows], json.loads((out / f"timing-{name}.json").read_text())


def test_a_sweep_over_k_writes_what_each_k_decoded_alone_writes(
    tokenizer: Tokenizer, tiny_model_config, noise_cuts, tmp_path: Path, capsys
) -> None:
    """``decode-imputer --steps 1 2 4``: each K's hypotheses, timing counts and score are those of
    ``--steps K`` run on its own; the score is ``score``'s, and newer than the hypotheses (make's
    order)."""
    from imputer_asr.cli import main

    cuts_path = noise_cuts(TEXTS)
    model_pt = _packaged_model(tokenizer, tiny_model_config, CutSet.from_file(cuts_path), tmp_path / "m.pt")
    common = ["--model", str(model_pt), "--cuts", str(cuts_path), "--threads", "1"]
    sweep, alone = tmp_path / "sweep", tmp_path / "alone"
    assert (
        main(["decode-imputer", *common, "--out-dir", str(sweep), "--name", "test", "--steps", "1", "2", "4"])
        == 0
    )
    printed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == ["test-k1", "test-k2", "test-k4"]
    texts = set()
    for k in (1, 2, 4):
        name = f"test-k{k}"
        assert (
            main(["decode-imputer", *common, "--out-dir", str(alone), "--name", name, "--steps", str(k)]) == 0
        )
        (got, timing), (expected, timing_alone) = _decodings(sweep, name), _decodings(alone, name)
        assert got == expected and [c for c, _ in got] == list(CutSet.from_file(cuts_path).ids)
        counts = ("steps", "block_size", "evaluations", "batches", "utterances")
        assert {c: timing[c] for c in counts} == {c: timing_alone[c] for c in counts}
        assert timing["steps"] == k and timing["block_size"] == 4
        for kind in ("wer", "errs", "recogs"):
            assert (sweep / f"{kind}-{name}.txt").read_text() == (alone / f"{kind}-{name}.txt").read_text()
        hyps = sweep / f"hyps-{name}.jsonl"
        assert (sweep / f"wer-{name}.txt").stat().st_mtime_ns >= hyps.stat().st_mtime_ns
        assert (
            main(["score", "--hyps", str(hyps), "--out-dir", str(tmp_path / "rescored"), "--name", name]) == 0
        )
        assert (tmp_path / "rescored" / f"wer-{name}.txt").read_text() == (
            sweep / f"wer-{name}.txt"
        ).read_text()
        texts.add(str(got))
    assert len(texts) > 1  # the Ks decode differently: a K's files cannot pass for another's
    # A K above B is refused before anything is decoded: no half-written sweep.
    late = tmp_path / "late"
    assert main(["decode-imputer", *common, "--out-dir", str(late), "--name", "t", "--steps", "1", "5"]) == 2
    assert "--steps 5: K must lie in [1, B = 4]" in capsys.readouterr().err
    assert not late.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "2", "2"], "a K given twice"),
        (["--steps", "1", "2", "--adaptive", "0.9"], "take one --steps value"),
        (["--steps", "1", "2", "--lexicon", "lex.txt"], "take one --steps value"),
    ],
)
def test_a_sweep_refuses_what_it_cannot_name_or_cap(extra, message, tmp_path: Path, capsys) -> None:
    from imputer_asr.cli import main

    out = tmp_path / "out"
    args = ["decode-imputer", "--model", "m.pt", "--cuts", "c.jsonl.gz", "--out-dir", str(out), "--name", "t"]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cuts_without_transcripts_are_decoded_not_scored(
    tokenizer: Tokenizer, tiny_model_config, noise_cuts, tmp_path: Path, caplog
) -> None:
    import logging

    from lhotse.utils import fastcopy

    from imputer_asr.cli import main

    labelled = CutSet.from_file(noise_cuts(TEXTS))
    unlabelled = tmp_path / "unlabelled.jsonl.gz"
    CutSet.from_cuts(fastcopy(cut, supervisions=[]) for cut in labelled).to_file(unlabelled)
    model_pt = _packaged_model(tokenizer, tiny_model_config, labelled, tmp_path / "m.pt")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert (
            main(
                [
                    "decode",
                    "--model",
                    str(model_pt),
                    "--cuts",
                    str(unlabelled),
                    "--out-dir",
                    str(out),
                    "--name",
                    "u",
                ]
            )
            == 0
        )
    assert "u: the cuts have no transcripts; not scored" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["hyps-u.jsonl", "timing-u.json"]
    hyps, _ = _decodings(out, "u")
    assert [c for c, _ in hyps] == list(labelled.ids)
