"""Tests for imputer_asr.lm.ngram (Kneser-Ney n-grams, ARPA, lexicon) and imputer_asr.decoding.lm_search (the
lexicon-constrained beam search): hand-computed probabilities, KenLM reading our ARPA files, and
searches whose right answer is known from how their frames were built."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from imputer_asr.cli import main
from imputer_asr.data.tokenizer import train_tokenizer
from imputer_asr.decoding.lm_search import Emissions, LexiconBeamSearch, LMWeights, decode_emissions, tune
from imputer_asr.lm.ngram import BOS, EOS, UNK, load_word_prior, train_ngram, write_lexicon

TEXTS = [
    "THE CAT SAT ON THE MAT",
    "THE CAT SAT DOWN",
    "A CAT SAT ON A HAT",
    "ON THE MAT SAT A DOG",
    "THE DOG RAN TO THE PARK",
    "A RAT SAT ON THE MAT",
] * 5


def test_bigram_probabilities_match_hand_computation() -> None:
    # Sentences: <s> A B </s>, <s> A C </s>, <s> B </s>.
    # Unigram continuation counts A 1, B 2, C 1, </s> 2 (total 6, 4 types): D1 = 2 / (2 + 2*2) = 1/3,
    # p(w) = (count - D1) / 6 + (D1 * 4 / 6) / 5, five words counting <unk>.
    # Bigrams (raw counts): two seen twice, four once: D2 = 4 / (4 + 2*2) = 1/2.
    lm = train_ngram([["A", "B"], ["A", "C"], ["B"]], order=2)
    uniform_share = (1 / 3 * 4 / 6) / 5
    p_b = (2 - 1 / 3) / 6 + uniform_share
    assert math.isclose(10 ** lm.log10_prob("B", ()), p_b)
    assert math.isclose(10 ** lm.log10_prob(UNK, ()), uniform_share)
    # Context A: seen twice with 2 types, weight 1/2 * 2 / 2 = 1/2.
    assert math.isclose(10 ** lm.log10_prob("B", ["A"]), (1 - 0.5) / 2 + 0.5 * p_b)
    assert math.isclose(10 ** lm.log10_prob(EOS, ["A"]), 0.5 * (2 - 1 / 3) / 6 + 0.5 * uniform_share)
    # Context <s>: 3 times, 2 types, weight 1/2 * 2 / 3.
    p_a = (1 - 1 / 3) / 6 + uniform_share
    assert math.isclose(10 ** lm.log10_prob("A", [BOS]), (2 - 0.5) / 3 + 1 / 3 * p_a)
    assert math.isclose(10 ** lm.log10_prob("NEVER-SEEN", ["A"]), 0.5 * uniform_share)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_is_a_distribution(order: int) -> None:
    lm = train_ngram([text.split() for text in TEXTS[:6]], order=order)
    words = [w for w in lm.vocabulary if w != BOS]
    contexts = [(), (BOS,), ("THE",), ("THE", "CAT"), (BOS, "A"), ("ZEBRA", "THE"), ("MAT", "SAT", "A")]
    for context in contexts:
        total = sum(10 ** lm.log10_prob(w, context) for w in words)
        assert math.isclose(total, 1.0, rel_tol=1e-9), context


def test_prior_shares_the_unseen_mass_by_frequency() -> None:
    # The corpus of the hand-computed test above, with a prior over B and two words it never saw.
    # Kneser-Ney sets aside D1 * 4 / 6 = 2/9 of the unigram mass; with uniform share 0.2 it goes
    # 0.8 * prior + 0.2 / 7 to each of the seven words (A B C </s> <unk> DOG CAT).
    prior = {"B": 2.0, "DOG": 6.0, "CAT": 2.0}
    lm = train_ngram([["A", "B"], ["A", "C"], ["B"]], order=2, prior=prior, prior_uniform_share=0.2)
    assert set(lm.vocabulary) == {BOS, "A", "B", "C", EOS, UNK, "DOG", "CAT"}
    leftover = 2 / 9

    def base(f):
        return 0.8 * f / 10 + 0.2 / 7

    assert math.isclose(10 ** lm.log10_prob("DOG", ()), leftover * base(6))
    assert math.isclose(10 ** lm.log10_prob("CAT", ()), leftover * base(2))
    assert math.isclose(10 ** lm.log10_prob("B", ()), (2 - 1 / 3) / 6 + leftover * base(2))
    assert math.isclose(10 ** lm.log10_prob("C", ()), (1 - 1 / 3) / 6 + leftover * base(0))
    assert math.isclose(10 ** lm.log10_prob(UNK, ()), leftover * base(0))
    # A word of the prior backs off from a seen context like any other: weight(A) = 1/2.
    assert math.isclose(10 ** lm.log10_prob("DOG", ["A"]), 0.5 * leftover * base(6))
    with pytest.raises(ValueError, match="prior_uniform_share"):
        train_ngram([["A"]], prior=prior, prior_uniform_share=0.0)


@pytest.mark.parametrize("order", [1, 3])
def test_a_prior_keeps_every_context_a_distribution(order: int) -> None:
    prior = {"THE": 50.0, "ZEBRA": 3.0, "GIRAFFE": 1.0, "CAT": 7.0, "<s>": 9.0, "NEVER": 0.0}
    lm = train_ngram([text.split() for text in TEXTS[:6]], order=order, prior=prior)
    assert "ZEBRA" in lm.vocabulary and "NEVER" not in lm.vocabulary
    words = [w for w in lm.vocabulary if w != BOS]
    for context in [(), (BOS,), ("THE",), ("THE", "CAT"), ("ZEBRA", "THE")]:
        total = sum(10 ** lm.log10_prob(w, context) for w in words)
        assert math.isclose(total, 1.0, rel_tol=1e-9), context


def test_load_word_prior_from_a_counts_file(tmp_path: Path, capsys) -> None:
    counts = tmp_path / "counts.tsv"
    counts.write_text("the\t100\ncat\t5\nCat\t5\nr2d2\t50\ndon't\t7\n'tis\t9\nzebra\t1\n")
    assert load_word_prior(str(counts), 3) == {"THE": 100.0, "CAT": 10.0, "DON'T": 7.0}
    counts.write_text("the\t100\ncat five\n")
    with pytest.raises(ValueError, match=r"counts.tsv:2: expected"):
        load_word_prior(str(counts), 3)
    with pytest.raises(ValueError, match="cannot read word counts"):
        load_word_prior(str(tmp_path / "absent.tsv"), 3)
    counts.write_text("42\t1\n")
    with pytest.raises(ValueError, match="no words"):
        load_word_prior(str(counts), 3)


def test_load_word_prior_from_wordfreq() -> None:
    pytest.importorskip("wordfreq")
    prior = load_word_prior("wordfreq", 1000)
    assert len(prior) == 1000
    assert next(iter(prior)) == "THE"
    assert "DON'T" in prior and all(w == w.upper() for w in prior)


def test_kenlm_reads_our_arpa_and_agrees(tmp_path: Path) -> None:
    kenlm_module = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    dictionary = pytest.importorskip("flashlight.lib.text.dictionary")
    lm = train_ngram([text.split() for text in TEXTS[:6]], order=3)
    lm.write_arpa(tmp_path / "lm.arpa")
    words = lm.vocabulary
    word_dict = dictionary.create_word_dict({w: [[w]] for w in words})
    kenlm = kenlm_module.KenLM(str(tmp_path / "lm.arpa"), word_dict)
    for sentence in (["THE", "CAT", "SAT", "ON", "A", "HAT"], ["DOG", "THE", "RAN"], ["PARK"]):
        state, context = kenlm.start(False), [BOS]
        for word in [*sentence, EOS]:
            state, theirs = kenlm.score(state, word_dict.get_index(word))
            assert math.isclose(theirs, lm.log10_prob(word, context), abs_tol=1e-5), (context, word)
            context.append(word)


def test_arpa_file_layout(tmp_path: Path) -> None:
    lm = train_ngram([["A", "B"], ["A", "C"], ["B"]], order=2)
    lm.write_arpa(tmp_path / "lm.arpa")
    lines = (tmp_path / "lm.arpa").read_text().splitlines()
    assert lines[1:4] == ["\\data\\", "ngram 1=6", "ngram 2=6"]
    assert lines[-1] == "\\end\\"
    assert "-99.000000\t<s>\t-0.477121" in lines  # p(<s>) = 0, backoff log10(1/3)
    assert not list(tmp_path.glob(".lm.arpa.*"))  # no temporary file left behind


def test_perplexity_by_hand() -> None:
    lm = train_ngram([["A", "B"], ["A", "C"], ["B"]], order=2)
    # "A ZZZ": p(A|<s>) p(<unk>|A) p(</s>|<unk>), the last backing off from an unseen context.
    probs = [lm.log10_prob("A", [BOS]), lm.log10_prob(UNK, ["A"]), lm.log10_prob(EOS, ["ZZZ"])]
    perplexity, oov = lm.perplexity([["A", "ZZZ"]])
    assert math.isclose(perplexity, 10 ** (-sum(probs) / 3))
    assert oov == 0.5
    assert math.isclose(10 ** lm.log10_prob(EOS, ["ZZZ"]), 10 ** lm.log10_prob(EOS, ()))
    with pytest.raises(ValueError, match="no sentences"):
        lm.perplexity([])


def test_train_ngram_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="order"):
        train_ngram([["A"]], order=0)
    with pytest.raises(ValueError, match="no sentences"):
        train_ngram([], order=2)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(TEXTS, tmp_path_factory.mktemp("bpe") / "bpe.model", vocab_size=34)


def test_lexicon_spells_each_word_with_the_tokenizer(tokenizer, tmp_path: Path) -> None:
    count = write_lexicon(["CAT", "MAT", BOS, EOS, UNK, "ZQX"], tokenizer, tmp_path / "lexicon.txt")
    lines = (tmp_path / "lexicon.txt").read_text().splitlines()
    spelled = {line.split()[0]: line.split()[1:] for line in lines}
    assert set(spelled) == {"CAT", "MAT"} and count == 2  # Z, Q and X are not pieces: <unk>
    for word, pieces in spelled.items():
        ids = [next(i for i in range(tokenizer.vocab_size) if tokenizer.id_to_piece(i) == p) for p in pieces]
        assert tokenizer.decode(ids) == word


def _frames(tokenizer, pieces: list[list[tuple[int, float]]]) -> torch.Tensor:
    """(T, C) log-probs: for each entry a frame with the given (id, prob) choices, then a blank
    frame; whatever probability is left goes to the blank."""
    rows = []
    for choices in pieces:
        row = torch.full((tokenizer.vocab_size,), 1e-4)
        for idx, prob in choices:
            row[idx] = prob
        row[tokenizer.blank_id] += max(0.0, 1 - float(row.sum()))
        rows.append(row / row.sum())
        blank = torch.full((tokenizer.vocab_size,), 1e-4)
        blank[tokenizer.blank_id] = 1.0
        rows.append(blank / blank.sum())
    return torch.stack(rows).log()


def _spelling(tokenizer, text: str) -> list[list[tuple[int, float]]]:
    return [[(idx, 0.9)] for idx in tokenizer.encode(text)]


def _resources(tokenizer, tmp_path: Path) -> tuple[Path, Path]:
    lm = train_ngram([text.split() for text in TEXTS], order=3)
    lm.write_arpa(tmp_path / "lm.arpa")
    write_lexicon(lm.vocabulary, tokenizer, tmp_path / "lexicon.txt")
    return tmp_path / "lexicon.txt", tmp_path / "lm.arpa"


def _ambiguous_pair(tokenizer) -> tuple[list[int], list[int], int]:
    """SAT and MAT spelled with the same number of pieces that differ in exactly one place."""
    sat, mat = tokenizer.encode("SAT"), tokenizer.encode("MAT")
    differ = [i for i, (a, b) in enumerate(zip(sat, mat, strict=True)) if a != b]
    assert len(sat) == len(mat) and len(differ) == 1, (sat, mat)
    return sat, mat, differ[0]


def test_lexicon_turns_a_misspelling_into_a_word(tokenizer, tmp_path: Path) -> None:
    lexicon, _ = _resources(tokenizer, tmp_path)
    search = LexiconBeamSearch(tokenizer, lexicon, None, LMWeights(lm_weight=0.0))
    # "THE" then "DOG" whose last piece is heard as a piece that spells no word (greedy: a non-word).
    dog = _spelling(tokenizer, "DOG")
    words = set(lexicon.read_text().split())
    wrong = next(
        i
        for i in range(2, tokenizer.vocab_size)
        if tokenizer.decode([*tokenizer.encode("DOG")[:-1], i]) not in words
        and not tokenizer.id_to_piece(i).startswith("▁")
    )
    dog[-1] = [(wrong, 0.5), (dog[-1][0][0], 0.4)]
    log_probs = _frames(tokenizer, _spelling(tokenizer, "THE") + dog)
    greedy = tokenizer.decode([*tokenizer.encode("THE"), *tokenizer.encode("DOG")[:-1], wrong])
    assert greedy != "THE DOG"
    lengths = torch.tensor([log_probs.shape[0]])
    assert search(log_probs.unsqueeze(0), lengths) == ["THE DOG"]
    # "G" is the second likeliest piece at its frame: trying 2 pieces per frame still finds it, 1 cannot.
    for tried, found in ((2, True), (1, False)):
        weights = LMWeights(lm_weight=0.0, beam_size_token=tried)
        narrow = LexiconBeamSearch(tokenizer, lexicon, None, weights)
        assert (narrow(log_probs.unsqueeze(0), lengths) == ["THE DOG"]) is found


def test_language_model_decides_between_words_the_frames_cannot(tokenizer, tmp_path: Path) -> None:
    lexicon, arpa = _resources(tokenizer, tmp_path)
    sat, mat, place = _ambiguous_pair(tokenizer)
    # "THE CAT ?AT" and "ON THE ?AT": the frames lean (0.46 to 0.44) towards the word the LM finds unlikely.
    cases = [("THE CAT", mat, sat, "THE CAT SAT"), ("ON THE", sat, mat, "ON THE MAT")]
    for prefix, leaning, likely, expected in cases:
        word = [[(idx, 0.9)] for idx in leaning]
        word[place] = [(leaning[place], 0.46), (likely[place], 0.44)]
        log_probs = _frames(tokenizer, _spelling(tokenizer, prefix) + word).unsqueeze(0)
        lengths = torch.tensor([log_probs.shape[1]])
        acoustic_only = LexiconBeamSearch(tokenizer, lexicon, arpa, LMWeights(lm_weight=0.0))
        with_lm = LexiconBeamSearch(tokenizer, lexicon, arpa, LMWeights(lm_weight=2.0))
        assert acoustic_only(log_probs, lengths) == [f"{prefix} {tokenizer.decode(leaning)}"]
        assert with_lm(log_probs, lengths) == [expected]


def test_tune_picks_the_weight_with_the_lowest_wer(tokenizer, tmp_path: Path) -> None:
    lexicon, arpa = _resources(tokenizer, tmp_path)
    sat, mat, place = _ambiguous_pair(tokenizer)
    word = [[(idx, 0.9)] for idx in mat]
    word[place] = [(mat[place], 0.46), (sat[place], 0.44)]
    log_probs = _frames(tokenizer, _spelling(tokenizer, "THE CAT") + word)
    emissions = Emissions([log_probs], ["u1"], ["THE CAT SAT"], [1.0], 0.0)
    best, grid = tune(emissions, tokenizer, lexicon, arpa, [0.0, 2.0], [0.0])
    assert best.lm_weight == 2.0
    assert [r["wer"] for r in grid] == [pytest.approx(1 / 3), 0.0]
    hyps, _ = decode_emissions(emissions, tokenizer, lexicon, arpa, best)
    assert hyps[0].hyp == "THE CAT SAT" and hyps[0].ref == "THE CAT SAT"
    parallel_best, parallel_grid = tune(emissions, tokenizer, lexicon, arpa, [0.0, 2.0], [0.0], jobs=2)
    assert parallel_best == best and parallel_grid == grid


def test_parallel_search_keeps_utterance_order(tokenizer, tmp_path: Path) -> None:
    lexicon, arpa = _resources(tokenizer, tmp_path)
    texts = ["THE CAT SAT", "ON THE MAT", "THE DOG RAN", "A RAT SAT", "THE MAT"]
    log_probs = [_frames(tokenizer, _spelling(tokenizer, text)) for text in texts]
    emissions = Emissions(log_probs, [f"u{i}" for i in range(5)], texts, [1.0] * 5, 0.0)
    weights = LMWeights(lm_weight=0.5)
    serial, _ = decode_emissions(emissions, tokenizer, lexicon, arpa, weights)
    parallel, _ = decode_emissions(emissions, tokenizer, lexicon, arpa, weights, jobs=2)
    assert [h.hyp for h in serial] == texts
    assert parallel == serial


def test_missing_files_are_named(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lexicon .*missing.txt does not exist"):
        LexiconBeamSearch(tokenizer, tmp_path / "missing.txt", None, LMWeights())
    lexicon, _ = _resources(tokenizer, tmp_path)
    with pytest.raises(ValueError, match="language model .*nope.arpa does not exist"):
        LexiconBeamSearch(tokenizer, lexicon, tmp_path / "nope.arpa", LMWeights())
    (tmp_path / "bad.arpa").write_text("not an arpa file\n")
    with pytest.raises(ValueError, match="cannot build the LM decoder"):
        LexiconBeamSearch(tokenizer, lexicon, tmp_path / "bad.arpa", LMWeights())
    # In worker processes too: their error reaches the caller as the same ValueError.
    log_probs = _frames(tokenizer, _spelling(tokenizer, "THE CAT"))
    emissions = Emissions([log_probs] * 2, ["u1", "u2"], ["THE CAT"] * 2, [1.0] * 2, 0.0)
    with pytest.raises(ValueError, match="language model .*nope.arpa does not exist"):
        decode_emissions(emissions, tokenizer, lexicon, tmp_path / "nope.arpa", LMWeights(), jobs=2)
    with pytest.raises(ValueError, match="cannot build the LM decoder"):
        tune(emissions, tokenizer, lexicon, tmp_path / "bad.arpa", [0.5, 1.0], [0.0], jobs=2)


def test_lm_command_writes_arpa_and_lexicon(tokenizer, tmp_path: Path, capsys, caplog) -> None:
    caplog.set_level("INFO")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with gzip.open(manifests / "cuts_train.jsonl.gz", "wt") as f:
        for i, text in enumerate(TEXTS[:6]):
            cut = {
                "id": f"c{i}",
                "start": 0.0,
                "duration": 1.0,
                "channel": 0,
                "supervisions": [
                    {
                        "id": f"s{i}",
                        "recording_id": f"r{i}",
                        "start": 0.0,
                        "duration": 1.0,
                        "channel": 0,
                        "text": text,
                    }
                ],
                "recording": {
                    "id": f"r{i}",
                    "sources": [{"type": "file", "channels": [0], "source": "x.flac"}],
                    "sampling_rate": 16000,
                    "num_samples": 16000,
                    "duration": 1.0,
                    "channel_ids": [0],
                },
                "type": "MonoCut",
            }
            f.write(json.dumps(cut) + "\n")
    (tmp_path / "extra.txt").write_text("the zebra sat\n\n")
    tokenizer_path = tmp_path / "bpe.model"
    tokenizer_path.write_bytes(tokenizer.model_proto)
    args = ["lm", "--manifest-dir", str(manifests), "--bpe", str(tokenizer_path), "--order", "2"]
    args += ["--eval-part", "train"]
    out = ["--arpa", str(tmp_path / "lm.arpa"), "--lexicon", str(tmp_path / "lexicon.txt")]
    assert main([*args, *out, "--text", str(tmp_path / "extra.txt")]) == 0
    assert "train: perplexity" in caplog.text
    arpa = (tmp_path / "lm.arpa").read_text()
    assert "\tZEBRA\t" in arpa or "\tZEBRA\n" in arpa  # the extra text, upper-cased
    assert "CAT" in (tmp_path / "lexicon.txt").read_text().split()
    assert main([*args, *out, "--text", str(tmp_path / "absent.txt")]) == 1
    assert "cannot read text file" in capsys.readouterr().err
    (tmp_path / "counts.tsv").write_text("toad\t3\nthe\t9\n")
    assert main([*args, *out, "--prior", str(tmp_path / "counts.tsv"), "--prior-size", "1"]) == 0
    assert "TOAD" not in (tmp_path / "lexicon.txt").read_text().split()
    assert main([*args, *out, "--prior", str(tmp_path / "counts.tsv")]) == 0
    assert "TOAD" in (tmp_path / "lexicon.txt").read_text().split()
    (tmp_path / "plain").write_text("")  # what a plain open gives, whatever the umask
    assert (tmp_path / "lm.arpa").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_decode_refuses_arpa_without_lexicon(tmp_path: Path, capsys) -> None:
    args = ["decode", "--model", str(tmp_path / "m.pt"), "--cuts", str(tmp_path / "c.jsonl.gz")]
    args += ["--out-dir", str(tmp_path), "--name", "x", "--arpa", str(tmp_path / "lm.arpa")]
    assert main(args) == 2  # refused before the (missing) model is read
    assert "--arpa needs --lexicon" in capsys.readouterr().err


def test_imputer_emissions_of_one_step_are_the_ctc_output(
    tokenizer, tiny_model_config, noise_cuts, tmp_path: Path
) -> None:
    from lhotse import CutSet

    from imputer_asr.config import DataConfig
    from imputer_asr.data.dataset import make_loader
    from imputer_asr.decoding.lm_search import compute_emissions
    from imputer_asr.model.conformer import ImputerModel

    torch.manual_seed(0)
    model = ImputerModel(tiny_model_config(tokenizer)).eval()
    cuts = CutSet.from_file(noise_cuts(["THE CAT SAT", "ON THE MAT", "A DOG"]))
    emissions = compute_emissions(model, tokenizer, cuts)
    expected = {}
    for batch in make_loader(cuts, tokenizer, DataConfig(max_duration=200.0), train=False):
        with torch.inference_mode():
            log_probs, lengths = model(batch["features"], batch["feature_lengths"])
        for i, (cut_id, length) in enumerate(zip(batch["cut_ids"], lengths.tolist(), strict=True)):
            expected[cut_id] = log_probs[i, :length]
    assert sorted(emissions.cut_ids) == sorted(expected) and emissions.steps == 1
    for cut_id, got in zip(emissions.cut_ids, emissions.log_probs, strict=True):
        assert torch.equal(got, expected[cut_id])
    imputer = compute_emissions(model, tokenizer, cuts, steps=3, block_size=4)
    assert imputer.steps == 3 and imputer.batches == emissions.batches == 1
    assert [lp.shape for lp in imputer.log_probs] == [lp.shape for lp in emissions.log_probs]
    with pytest.raises(ValueError, match="steps"):
        compute_emissions(model, tokenizer, cuts, steps=5, block_size=4)


def test_imputer_tune_and_decode_with_lm_commands(
    tokenizer, tiny_model_config, noise_cuts, tmp_path: Path, caplog
) -> None:
    """tune-lm --steps K on dev, then decode-imputer --steps K with the tuned weights."""
    from imputer_asr.config import ExperimentConfig, ImputerConfig
    from imputer_asr.model.conformer import ImputerModel
    from imputer_asr.training.checkpoint import package_model

    model_cfg = tiny_model_config(tokenizer)
    torch.manual_seed(0)
    model_pt = tmp_path / "model.pt"
    cfg = ExperimentConfig(model=model_cfg, imputer=ImputerConfig(block_size=4))
    package_model(ImputerModel(model_cfg).state_dict(), cfg, tokenizer, model_pt, trained_as="imputer")
    texts = ["THE CAT SAT", "ON THE MAT", "A DOG"]
    cuts = str(noise_cuts(texts))
    lexicon, arpa = (str(p) for p in _resources(tokenizer, tmp_path))
    lm = ["--lexicon", lexicon, "--arpa", arpa, "--beam-size", "10", "--threads", "1"]
    tuned = tmp_path / "lm_weights.json"
    grid = ["--lm-weight", "0", "1", "--word-score", "0"]
    tune = ["tune-lm", "--model", str(model_pt), "--cuts", cuts, *lm, *grid, "--steps", "2"]
    assert main([*tune, "--out", str(tuned)]) == 0
    record = json.loads(tuned.read_text())
    assert record["steps"] == 2 and record["block_size"] == 4 and len(record["grid"]) == 2
    decode = ["decode-imputer", "--model", str(model_pt), "--cuts", cuts, "--out-dir", str(tmp_path)]
    assert main([*decode, "--name", "k2-lm", "--steps", "2", *lm, "--lm-weights", str(tuned)]) == 0
    hyps = [json.loads(line) for line in (tmp_path / "hyps-k2-lm.jsonl").read_text().splitlines()]
    assert sorted(h["ref"] for h in hyps) == sorted(texts)
    words = set(Path(lexicon).read_text().split())
    assert all(set(h["hyp"].split()) <= words for h in hyps)  # lexicon words only
    timing = json.loads((tmp_path / "timing-k2-lm.json").read_text())
    assert (timing["steps"], timing["block_size"], timing["utterances"]) == (2, 4, 3)
    assert timing["evaluations"] == 2 * timing["batches"] and timing["evaluations_per_batch"] == 2
    assert timing["lm_weight"] == record["best"]["lm_weight"] and timing["beam_size"] == 10
    assert timing["lm_weights_file"] == str(tuned)
    assert "was tuned on step" not in caplog.text
    # decode (CTC) with the same weights: it runs, and warns that they were tuned on step 2.
    ctc = ["decode", "--model", str(model_pt), "--cuts", cuts, "--out-dir", str(tmp_path), "--name", "ctc-lm"]
    assert main([*ctc, *lm, "--lm-weights", str(tuned)]) == 0
    assert len((tmp_path / "hyps-ctc-lm.jsonl").read_text().splitlines()) == 3
    assert "was tuned on step 2, decoding reads step 1" in caplog.text
    assert main([*decode, "--name", "x", "--adaptive", "0.9", *lm]) == 2  # refused: LM reads step K
    assert main([*decode, "--name", "x", "--arpa", arpa]) == 2  # refused: no lexicon
