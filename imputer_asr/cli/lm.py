"""The language-model commands of ``imputer-asr``: ``lm`` (train an n-gram model and spell its
lexicon), ``tune-lm`` (choose the LM weight and word score on dev, for CTC or for the K-th step of
the Imputer), and the ``--lexicon`` options of ``decode``, ``decode-imputer`` and ``transcribe``
with the LM decoding they ask for."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from imputer_asr.cli.common import default_of, load_cuts, resolve_runtime
from imputer_asr.cli.runtime import add_runtime_options

__all__ = [
    "add_commands",
    "add_lm_options",
    "decode_imputer_with_lm",
    "decode_with_lm",
    "lm_weights_from_args",
]

log = logging.getLogger("imputer_asr")

# The grid tune-lm searches by default (the command's own).
TUNE_LM_WEIGHTS = (0.5, 1.0, 1.5, 2.0)
TUNE_WORD_SCORES = (-1.0, 0.0, 1.0)
PRIOR_SIZE = 100_000
BEAM_TOKENS_HELP = "pieces the search tries at each frame, the likeliest first (default: all)"


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``lm`` and ``tune-lm`` in ``sub``."""
    for add in (_add_lm, _add_tune_lm):
        add(sub)


def _add_lm(sub) -> None:
    from imputer_asr.lm.ngram import DEFAULT_PRIOR_UNIFORM_SHARE, train_ngram

    p = sub.add_parser("lm", help="train a word n-gram LM (ARPA) on transcripts and spell its lexicon in BPE")
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--part", default="train", help="the transcripts to learn from (never dev or test)")
    p.add_argument("--text", type=Path, nargs="*", default=[], help="more text files, a sentence a line")
    p.add_argument("--order", type=int, default=default_of(train_ngram, "order"), help="n of the n-gram LM")
    p.add_argument(
        "--prior",
        help="unigram prior that adds words the transcripts lack: 'wordfreq' (English word frequencies "
        "of the wordfreq package) or a file of 'word<TAB>count' lines",
    )
    p.add_argument(
        "--prior-size", type=int, default=PRIOR_SIZE, help="keep the prior's N most frequent words"
    )
    p.add_argument(
        "--prior-uniform-share",
        type=float,
        default=DEFAULT_PRIOR_UNIFORM_SHARE,
        help="share of a uniform distribution mixed into the prior, higher to trust the prior less",
    )
    p.add_argument("--eval-part", help="a held-out part (dev) to report the perplexity and OOV rate on")
    p.add_argument("--bpe", type=Path, required=True, help="the acoustic model's tokenizer")
    p.add_argument("--arpa", type=Path, required=True, help="output language model")
    p.add_argument("--lexicon", type=Path, required=True, help="output lexicon: word, then its pieces")
    p.set_defaults(func=_run_lm)


def _run_lm(args) -> None:
    from imputer_asr.data.prepare import manifest_texts
    from imputer_asr.data.tokenizer import Tokenizer
    from imputer_asr.lm.ngram import load_word_prior, train_ngram, write_lexicon

    tokenizer = Tokenizer.from_file(args.bpe)
    sentences = [text.split() for text in manifest_texts(args.manifest_dir, args.part)]
    for path in args.text:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read text file {path}: {exc}") from None
        sentences += [line.upper().split() for line in lines if line.strip()]
    prior = load_word_prior(args.prior, args.prior_size) if args.prior else None
    lm = train_ngram(sentences, order=args.order, prior=prior, prior_uniform_share=args.prior_uniform_share)
    words = write_lexicon(lm.vocabulary, tokenizer, args.lexicon)
    lm.write_arpa(args.arpa)  # last: the recipe's make target
    sizes = ", ".join(f"{len(grams)} {k + 1}-grams" for k, grams in enumerate(lm.probs))
    log.info("%s: %d sentences, %s; %s: %d words", args.arpa, len(sentences), sizes, args.lexicon, words)
    if args.eval_part:
        held_out = [text.split() for text in manifest_texts(args.manifest_dir, args.eval_part)]
        perplexity, oov = lm.perplexity(held_out)
        log.info(
            "%s: perplexity %.1f, %.2f %% of its words out of vocabulary",
            args.eval_part,
            perplexity,
            100 * oov,
        )


def add_lm_options(p: argparse.ArgumentParser) -> None:
    """Options of a decoding command: with --lexicon, decode by lexicon-constrained beam search
    (the weights' defaults are :class:`imputer_asr.decoding.lm_search.LMWeights`')."""
    from imputer_asr.decoding.lm_search import LMWeights

    g = p.add_argument_group("language model (lexicon-constrained beam search instead of greedy)")
    g.add_argument("--lexicon", type=Path, help="from `imputer-asr lm`")
    g.add_argument("--arpa", type=Path, help="n-gram LM from `imputer-asr lm`; without it, lexicon only")
    g.add_argument("--lm-weights", type=Path, help="JSON from `imputer-asr tune-lm` (lm_weight, word_score)")
    without = "overrides --lm-weights (without either: {})"
    g.add_argument("--lm-weight", type=float, default=None, help=without.format(LMWeights.lm_weight))
    g.add_argument("--word-score", type=float, default=None, help=without.format(LMWeights.word_score))
    _add_beam_options(g)


def _add_beam_options(g) -> None:
    """--beam-size (beam 10 / 50 / 200 / 500 gave 32.4 / 26.0 / 24.4 / 24.1 % dev WER on the full
    synth setting) and --beam-size-token, with LMWeights' defaults."""
    from imputer_asr.decoding.lm_search import LMWeights

    g.add_argument(
        "--beam-size", type=int, default=LMWeights.beam_size, help="hypotheses the search keeps per frame"
    )
    g.add_argument("--beam-size-token", type=int, default=LMWeights.beam_size_token, help=BEAM_TOKENS_HELP)


def lm_weights_from_args(args):
    """The LMWeights that ``decode``'s options ask for."""
    from imputer_asr.decoding.lm_search import LMWeights

    values = {}
    if args.lm_weights is not None:
        try:
            chosen = json.loads(Path(args.lm_weights).read_text())["best"]
            values = {"lm_weight": float(chosen["lm_weight"]), "word_score": float(chosen["word_score"])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{args.lm_weights}: not a tune-lm result ({exc})") from None
    if args.lm_weight is not None:
        values["lm_weight"] = args.lm_weight
    if args.word_score is not None:
        values["word_score"] = args.word_score
    return LMWeights(beam_size=args.beam_size, beam_size_token=args.beam_size_token, **values)


def decode_with_lm(args, packaged, cuts):
    """Hypotheses and wall time (forward passes plus search) of the LM decoding of ``cuts`` over
    the CTC output, and the weights used."""
    hyps, seconds, weights, _ = _search_with_lm(args, packaged, cuts, steps=1, block_size=1)
    return hyps, seconds, weights


def decode_imputer_with_lm(args, packaged, cuts, steps: int, block_size: int):
    """Hypotheses and wall time of the LM decoding of ``cuts`` over the log-probs of the K-th
    (``steps``) evaluation of the Imputer, and the record of it for the timing file: K, B, network
    evaluations, and the LM weights."""
    hyps, seconds, weights, emissions = _search_with_lm(args, packaged, cuts, steps, block_size)
    record = {
        "block_size": block_size,
        "steps": steps,
        "adaptive_threshold": None,
        "evaluations": steps * emissions.batches,
        "batches": emissions.batches,
        "evaluations_per_batch": steps,
        "lm_weights_file": None if args.lm_weights is None else str(args.lm_weights),
        **dataclasses.asdict(weights),
    }
    return hyps, seconds, record


def _search_with_lm(args, packaged, cuts, steps: int, block_size: int):
    from imputer_asr.decoding.lm_search import LexiconBeamSearch, compute_emissions, decode_emissions

    weights = lm_weights_from_args(args)
    LexiconBeamSearch(packaged.tokenizer, args.lexicon, args.arpa, weights)  # bad files: fail early
    if args.lm_weights is not None and (tuned := _tuned_steps(args.lm_weights)) != steps:
        log.warning("%s was tuned on step %d, decoding reads step %d", args.lm_weights, tuned, steps)
    emissions = compute_emissions(
        packaged.model, packaged.tokenizer, cuts, steps=steps, block_size=block_size
    )
    hyps, search_seconds = decode_emissions(
        emissions, packaged.tokenizer, args.lexicon, args.arpa, weights, jobs=args.threads
    )
    log.info(
        "LM decoding of step %d: lm_weight %.2f, word_score %.2f, beam %d; forward %.1f s, search %.1f s",
        steps,
        weights.lm_weight,
        weights.word_score,
        weights.beam_size,
        emissions.seconds,
        search_seconds,
    )
    return hyps, emissions.seconds + search_seconds, weights, emissions


def _tuned_steps(path: Path) -> int:
    """The K whose log-probs a tune-lm result was tuned on (files without it: 1, CTC)."""
    return int(json.loads(Path(path).read_text()).get("steps", 1))


def _add_tune_lm(sub) -> None:
    from imputer_asr.decoding.lm_search import compute_emissions

    p = sub.add_parser("tune-lm", help="choose the LM weight and word score by WER on a dev set")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--cuts", type=Path, required=True, help="dev cuts (never test)")
    p.add_argument("--lexicon", type=Path, required=True)
    p.add_argument("--arpa", type=Path, required=True)
    p.add_argument(
        "--lm-weight", type=float, nargs="+", default=list(TUNE_LM_WEIGHTS), help="the LM weights to try"
    )
    p.add_argument(
        "--word-score", type=float, nargs="+", default=list(TUNE_WORD_SCORES), help="the word scores to try"
    )
    _add_beam_options(p)
    p.add_argument(
        "--steps",
        type=int,
        default=default_of(compute_emissions, "steps"),
        help="K: tune on the K-th evaluation of K-step Imputer decoding (1: the CTC output)",
    )
    p.add_argument("--block-size", type=int, default=None, help="B; default: the model's imputer config")
    p.add_argument("--out", type=Path, required=True, help="JSON: the best weights and every grid point")
    add_runtime_options(p, device=False)
    p.set_defaults(func=_run_tune_lm)


def _run_tune_lm(args) -> None:
    from imputer_asr.decoding.lm_search import compute_emissions, tune
    from imputer_asr.files import write_text_atomic
    from imputer_asr.training.checkpoint import load_packaged

    resolve_runtime(args)
    packaged = load_packaged(args.model)
    block_size = args.block_size or packaged.config.imputer.block_size
    emissions = compute_emissions(
        packaged.model, packaged.tokenizer, load_cuts(args.cuts), steps=args.steps, block_size=block_size
    )
    best, grid = tune(
        emissions,
        packaged.tokenizer,
        args.lexicon,
        args.arpa,
        args.lm_weight,
        args.word_score,
        beam_size=args.beam_size,
        jobs=args.threads,
        beam_size_token=args.beam_size_token,
    )
    record = {
        "best": {"lm_weight": best.lm_weight, "word_score": best.word_score},
        "cuts": str(args.cuts),
        "steps": args.steps,
        "block_size": block_size,
        "grid": grid,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    chosen = next(r for r in grid if (r["lm_weight"], r["word_score"]) == (best.lm_weight, best.word_score))
    log.info(
        "%s: step %d: lm_weight %.2f, word_score %.2f (dev WER %.2f%%)",
        args.out,
        args.steps,
        best.lm_weight,
        best.word_score,
        100 * chosen["wer"],
    )
