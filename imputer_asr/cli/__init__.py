"""The ``imputer-asr`` command line: one subcommand per recipe stage.

Each subcommand parses its arguments and calls one library function; errors in the input reach the
user as one line naming the file and the problem (exit status 1), usage errors exit with 2.
``transcribe`` reports each input that fails on its own line and goes on with the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from imputer_asr.cli import lm as lm_cli
from imputer_asr.cli.runtime import add_runtime_options, apply_runtime
from imputer_asr.files import write_cuts_atomic

__all__ = ["main", "build_parser"]

log = logging.getLogger("imputer_asr")


class _UsageError(ValueError):
    """A bad argument found after parsing (e.g. a model file that is not one): exit status 2."""


def _add_synth_corpus(sub) -> None:
    from imputer_asr.data.synth.voices import ENGINES

    p = sub.add_parser("synth-corpus", help="render the offline synthetic corpus (LibriSpeech layout)")
    p.add_argument("--out-dir", type=Path, required=True)
    for part, utts, spk in (("train", 4000, 200), ("dev", 300, 20), ("test", 300, 20)):
        p.add_argument(f"--{part}-utts", type=int, default=utts)
        p.add_argument(f"--{part}-speakers", type=int, default=spk)
    p.add_argument(
        "--heldout-engine",
        choices=ENGINES,
        help="leave this engine out of train/dev/test and render a part dev-ENGINE read by it alone "
        "(--dev-utts sentences, --heldout-speakers speakers), for cross-engine tuning",
    )
    p.add_argument("--heldout-speakers", type=int, default=20)
    p.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        help="the engines of train/dev/test (default: all but --heldout-engine)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.set_defaults(func=_run_synth_corpus)


def _run_synth_corpus(args) -> None:
    from imputer_asr.data.synth import render_corpus
    from imputer_asr.data.synth.voices import ENGINES

    parts = ("train", "dev", "test")
    num_utts = {p: getattr(args, f"{p}_utts") for p in parts}
    num_speakers = {p: getattr(args, f"{p}_speakers") for p in parts}
    engines = None
    if args.engines or args.heldout_engine:
        heard = args.engines or [e for e in ENGINES if e != args.heldout_engine]
        if args.heldout_engine in heard:
            heard_list = " ".join(heard)
            raise _UsageError(f"--engines {heard_list} includes the held-out engine {args.heldout_engine}")
        engines = {p: heard for p in parts}
    if args.heldout_engine:
        heldout = f"dev-{args.heldout_engine}"
        num_utts[heldout], num_speakers[heldout] = args.dev_utts, args.heldout_speakers
        engines[heldout] = [args.heldout_engine]
    render_corpus(args.out_dir, num_utts, num_speakers, seed=args.seed, num_jobs=args.jobs, engines=engines)


def _add_download(sub) -> None:
    p = sub.add_parser("download", help="download and unpack LibriSpeech parts (into TARGET_DIR/LibriSpeech)")
    p.add_argument("--target-dir", type=Path, required=True)
    p.add_argument("--parts", nargs="+", required=True, help="e.g. train-clean-100 dev-clean")
    p.add_argument("--base-url", default=None, help="default: OpenSLR")
    p.set_defaults(func=_run_download)


def _run_download(args) -> None:
    from imputer_asr.data.prepare import OPENSLR_URL, download_corpus

    corpus = download_corpus(args.target_dir, args.parts, args.base_url or OPENSLR_URL)
    log.info("%s: %s", corpus, " ".join(args.parts))


def _add_manifests(sub) -> None:
    p = sub.add_parser("manifests", help="lhotse manifests (cuts) of a LibriSpeech-layout corpus")
    p.add_argument("--corpus-dir", type=Path, required=True)
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--parts", nargs="+", required=True)
    p.set_defaults(func=_run_manifests)


def _run_manifests(args) -> None:
    from imputer_asr.data.prepare import prepare_manifests

    prepare_manifests(args.corpus_dir, args.manifest_dir, args.parts)


def _add_combine_cuts(sub) -> None:
    p = sub.add_parser(
        "combine-cuts", help="one cuts manifest from several parts (e.g. the 960 h training set)"
    )
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--name", required=True, help="writes cuts_<name>.jsonl.gz")
    p.set_defaults(func=_run_combine_cuts)


def _run_combine_cuts(args) -> None:
    from imputer_asr.data.prepare import combine_manifests

    log.info("wrote %s", combine_manifests(args.manifest_dir, args.parts, args.name))


def _add_bpe(sub) -> None:
    p = sub.add_parser("bpe", help="train the sentencepiece BPE tokenizer on training transcripts")
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--part", required=True)
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_run_bpe)


def _run_bpe(args) -> None:
    from imputer_asr.data.prepare import manifest_texts
    from imputer_asr.data.tokenizer import train_tokenizer

    tok = train_tokenizer(manifest_texts(args.manifest_dir, args.part), args.out, args.vocab_size)
    log.info(
        "tokenizer %s: %d classes (blank %d), [MASK] %d",
        args.out,
        tok.vocab_size,
        tok.blank_id,
        tok.mask_id,
    )


def _add_fbank(sub) -> None:
    from imputer_asr.data.augment import EFFECTS

    p = sub.add_parser("fbank", help="compute and store fbank features (optionally augmented)")
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--bpe", type=Path, required=True, help="tokenizer, to filter unalignable cuts")
    p.add_argument("--part", nargs="+", required=True, help="one or more parts, each with these options")
    p.add_argument("--augment", action="store_true", help="add speed-perturbed copies and apply --effects")
    p.add_argument(
        "--speeds",
        type=float,
        nargs="*",
        default=[0.9, 1.1],
        help="speed factors of the copies (none: no copies)",
    )
    p.add_argument(
        "--effects",
        nargs="*",
        choices=EFFECTS,
        default=["noise"],
        help="waveform effects drawn per cut, each at its rate in imputer_asr.data.augment.ChannelAugment",
    )
    p.add_argument(
        "--noise-prob", type=float, default=None, help="the noise effect's rate (default: ChannelAugment's)"
    )
    p.add_argument("--max-duration", type=float, default=30.0, help="drop longer cuts (seconds)")
    p.add_argument("--jobs", type=int, default=2)
    p.set_defaults(func=_run_fbank)


def _run_fbank(args) -> None:
    import torch

    from imputer_asr.config import FeatureConfig
    from imputer_asr.data.augment import ChannelAugment
    from imputer_asr.data.prepare import compute_fbank
    from imputer_asr.data.tokenizer import Tokenizer

    noise_rate = {} if args.noise_prob is None else {"noise_prob": args.noise_prob}
    try:
        effects = ChannelAugment.only(args.effects, **noise_rate)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if args.jobs > 1:
        torch.set_num_threads(1)  # lhotse's worker pool can hang with multi-threaded torch
    tokenizer = Tokenizer.from_file(args.bpe)
    for part in args.part:
        compute_fbank(
            args.manifest_dir,
            part,
            args.out_dir,
            tokenizer,
            FeatureConfig(),
            augment=args.augment,
            speeds=args.speeds,
            effects=effects,
            max_duration=args.max_duration,
            num_jobs=args.jobs,
        )


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a CTC model (the Imputer has its own stage)")
    p.add_argument("--config", type=Path, required=True, help="JSON experiment config")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--train-cuts", type=Path, required=True)
    p.add_argument("--dev-cuts", type=Path, required=True)
    p.add_argument("--bpe", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    p.add_argument("--init-from", type=Path, default=None, help="start from a packaged model's weights")
    p.set_defaults(func=_run_train)


def _apply_runtime(args) -> None:
    """Threads and device of a command (imputer_asr.cli.runtime); a device not at hand is a usage error."""
    try:
        apply_runtime(args)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _load_cuts(path: Path):
    from imputer_asr.data.dataset import load_cuts

    return load_cuts(path)


def _positive_float(text: str) -> float:
    """argparse type: a number above 0 (argparse reports the error with the option's name)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _hours(cuts) -> float:
    return sum(cut.duration for cut in cuts) / 3600.0


def _trainable(cuts, tokenizer, cfg):
    """Drop cuts that CTC cannot align with this tokenizer, or that it cannot spell (the fbank
    stage filtered with the one it was given; another vocabulary may need more frames)."""
    from imputer_asr.data.prepare import filter_cuts

    return filter_cuts(cuts, tokenizer, cfg.features, max_duration=float("inf")).to_eager()


def _resolved_config(args, tokenizer):
    from imputer_asr.config import apply_overrides, load_config

    cfg = apply_overrides(load_config(args.config), args.set)
    model = dataclasses.replace(
        cfg.model,
        vocab_size=tokenizer.vocab_size,
        blank_id=tokenizer.blank_id,
        mask_id=tokenizer.mask_id,
        input_dim=cfg.features.num_mel_bins,
    )
    return dataclasses.replace(cfg, model=model)


def _run_train(args) -> None:
    from imputer_asr.data.tokenizer import Tokenizer
    from imputer_asr.training.loop import fit

    tokenizer = Tokenizer.from_file(args.bpe)
    cfg = _resolved_config(args, tokenizer)
    init = _init_weights(args.init_from, cfg.model) if args.init_from is not None else None
    fit(
        cfg,
        args.exp_dir,
        _trainable(_load_cuts(args.train_cuts), tokenizer, cfg),
        _load_cuts(args.dev_cuts),
        tokenizer,
        init_weights=init,
        resume=args.resume,
    )


def _add_package(sub) -> None:
    p = sub.add_parser("package", help="average the last checkpoints into a self-contained model.pt")
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--bpe", type=Path, required=True)
    p.add_argument("--average-last", type=int, default=None, help="default: from the config")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_run_package)


def _run_package(args) -> None:
    from imputer_asr.config import config_from_dict
    from imputer_asr.data.tokenizer import Tokenizer
    from imputer_asr.training.checkpoint import (
        average_checkpoints,
        epoch_checkpoints,
        load_file,
        package_model,
    )

    checkpoints = epoch_checkpoints(args.exp_dir)
    if not checkpoints:
        raise ValueError(f"{args.exp_dir}: no epoch-<n>.pt checkpoints; run the training stage first")
    newest = load_file(checkpoints[-1])
    cfg = config_from_dict(newest["config"])
    last = args.average_last or cfg.train.average_last
    used = checkpoints[-last:]
    package_model(
        average_checkpoints(used),
        cfg,
        Tokenizer.from_file(args.bpe),
        args.out,
        averaged=[p.name for p in used],
        trained_as=newest.get("trained_as", "ctc"),
    )
    log.info("wrote %s (average of %s)", args.out, ", ".join(p.name for p in used))


def _add_decode(sub) -> None:
    p = sub.add_parser("decode", help="decode a cuts manifest with a packaged model")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--cuts", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True, help="e.g. test-ctc; names the output files")
    add_runtime_options(p)
    lm_cli.add_lm_options(p)
    p.set_defaults(func=_run_decode)


def _run_decode(args) -> None:
    from imputer_asr.decoding.ctc import decode_cuts
    from imputer_asr.training.checkpoint import load_packaged

    if args.arpa is not None and args.lexicon is None:
        raise _UsageError("--arpa needs --lexicon (the words the search may write)")
    _apply_runtime(args)
    packaged = load_packaged(args.model)
    packaged.model.to(args.device)
    cuts = _load_cuts(args.cuts)
    if args.lexicon is not None:
        hyps, seconds, weights = lm_cli.decode_with_lm(args, packaged, cuts)
        timing = _write_decoding(args, hyps, seconds, **dataclasses.asdict(weights))
    else:
        hyps, seconds = decode_cuts(packaged.model, packaged.tokenizer, cuts)
        timing = _write_decoding(args, hyps, seconds)
    log.info(
        "decoded %d utterances (%.0f s of audio) in %.1f s, RTF %.4f",
        len(hyps),
        timing["audio_seconds"],
        seconds,
        timing["rtf"],
    )


def _write_decoding(args, hyps, seconds: float, **extra) -> dict:
    """Write ``timing-<name>.json`` then ``hyps-<name>.jsonl`` (last and atomically: it is the make
    target of a decode stage); returns the timing record."""
    from imputer_asr.files import write_text_atomic

    audio = sum(h.duration for h in hyps)
    timing = {
        "utterances": len(hyps),
        "audio_seconds": audio,
        "decode_seconds": seconds,
        "rtf": seconds / max(audio, 1e-9),
        "threads": args.threads,
        **extra,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"timing-{args.name}.json").write_text(json.dumps(timing, indent=2) + "\n")
    out = args.out_dir / f"hyps-{args.name}.jsonl"
    write_text_atomic(out, "".join(json.dumps(dataclasses.asdict(h)) + "\n" for h in hyps))
    return timing


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="WER/CER of decoded hypotheses, per-utterance error listing")
    p.add_argument("--hyps", type=Path, required=True, help="hyps-<name>.jsonl from decode")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.set_defaults(func=_run_score)


def _run_score(args) -> None:
    from imputer_asr.evaluation.scoring import format_summary, score, write_report

    if not args.hyps.is_file():
        raise ValueError(f"{args.hyps}: no such file; run the decode stage first")
    rows = [json.loads(line) for line in args.hyps.read_text().splitlines() if line.strip()]
    report = score([(r["cut_id"], r["ref"], r["hyp"]) for r in rows])
    write_report(report, args.out_dir, args.name)
    print(f"{args.name}: {format_summary(report)}")


def _add_peer_pocketsphinx(sub) -> None:
    p = sub.add_parser(
        "peer-pocketsphinx",
        help="decode a cuts manifest with pocketsphinx's default US English model, a peer for the WER tables",
    )
    p.add_argument("--cuts", type=Path, required=True, help="cuts manifest whose cuts have their audio")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True, help="e.g. test-pocketsphinx; names the output files")
    p.set_defaults(func=_run_peer_pocketsphinx, threads=1)  # pocketsphinx decodes on one thread


def _run_peer_pocketsphinx(args) -> None:
    from importlib.metadata import version

    from imputer_asr.evaluation.peer import decode_pocketsphinx

    cuts = _load_cuts(args.cuts)
    try:
        hyps, seconds = decode_pocketsphinx(cuts)
    except ValueError as exc:
        raise ValueError(f"{args.cuts}: {exc}") from None
    timing = _write_decoding(args, hyps, seconds, recognizer=f"pocketsphinx {version('pocketsphinx')}")
    log.info(
        "decoded %d utterances (%.0f s of audio) in %.1f s, RTF %.4f",
        len(hyps),
        timing["audio_seconds"],
        seconds,
        timing["rtf"],
    )


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="PNG of training curves from train_log.jsonl")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="")
    p.set_defaults(func=_run_plot)


def _run_plot(args) -> None:
    from imputer_asr.evaluation.plots import plot_training_curves

    plot_training_curves(args.log, args.out, title=args.title)


def _add_align(sub) -> None:
    p = sub.add_parser("align", help="expert alignments: forced alignment of the cuts under a CTC model")
    p.add_argument("--model", type=Path, required=True, help="packaged CTC model.pt")
    p.add_argument("--cuts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="cuts manifest with alignments (.jsonl.gz)")
    p.add_argument("--max-duration", type=float, default=200.0, help="seconds of audio per batch")
    p.add_argument(
        "--max-hours",
        type=_positive_float,
        default=None,
        help="align a seeded random subset with this much audio (default: every cut)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-hours subset")
    add_runtime_options(p)
    p.set_defaults(func=_run_align)


def _run_align(args) -> None:
    from imputer_asr.training.checkpoint import load_packaged
    from imputer_asr.training.imputer import align_cuts, sample_hours

    _apply_runtime(args)
    packaged = load_packaged(args.model)
    packaged.model.to(args.device)
    cuts = _load_cuts(args.cuts)
    if args.max_hours is not None:
        subset = sample_hours(cuts, args.max_hours, seed=args.seed)
        log.info(
            "aligning %d of %d cuts (%.2f of %.2f h)",
            len(subset),
            len(cuts),
            _hours(subset),
            _hours(cuts),
        )
        cuts = subset
    cuts = align_cuts(packaged.model, cuts, packaged.tokenizer, max_duration=args.max_duration)
    write_cuts_atomic(cuts, args.out)
    log.info("wrote %s", args.out)


def _add_train_imputer(sub) -> None:
    p = sub.add_parser("train-imputer", help="train the Imputer (imputer section of the config)")
    p.add_argument("--config", type=Path, required=True, help="JSON experiment config")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--train-cuts", type=Path, required=True, help="cuts with alignments (align stage)")
    p.add_argument("--dev-cuts", type=Path, required=True)
    p.add_argument("--bpe", type=Path, required=True)
    p.add_argument("--init-from", type=Path, default=None, help="packaged CTC model.pt to start from")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    p.set_defaults(func=_run_train_imputer)


def _init_weights(path: Path, model_cfg):
    """Weights of a packaged model whose model config matches ``model_cfg``.

    ``dropout``, ``inject_layer`` and ``token_scale`` may differ: none changes the parameters'
    shapes. Starting an Imputer with ``inject_layer`` k > 0 from a CTC model (k = 0) moves where the
    [MASK] embedding is added, so it starts near, not at, the CTC model's function; Imputer
    training adapts it.
    """
    from imputer_asr.training.checkpoint import load_packaged

    packaged = load_packaged(path)
    theirs = dataclasses.replace(
        packaged.config.model,
        dropout=model_cfg.dropout,
        inject_layer=model_cfg.inject_layer,
        token_scale=model_cfg.token_scale,
    )
    if theirs != model_cfg:
        differ = [
            f"{f.name} {getattr(theirs, f.name)} vs {getattr(model_cfg, f.name)}"
            for f in dataclasses.fields(model_cfg)
            if getattr(theirs, f.name) != getattr(model_cfg, f.name)
        ]
        raise ValueError(f"{path}: model config differs from this experiment's: {', '.join(differ)}")
    return packaged.model.state_dict()


def _trained_as(path: Path) -> str:
    from imputer_asr.training.checkpoint import load_packaged

    return load_packaged(path).info.get("trained_as", "ctc")


def _run_train_imputer(args) -> None:
    from imputer_asr.data.tokenizer import Tokenizer
    from imputer_asr.decoding.imputer import decode_cuts_imputer
    from imputer_asr.training.imputer import check_cut_alignments, imputer_objective, imputer_start
    from imputer_asr.training.loop import fit

    tokenizer = Tokenizer.from_file(args.bpe)
    cfg = _resolved_config(args, tokenizer)
    train_cuts = _trainable(_load_cuts(args.train_cuts), tokenizer, cfg)
    if cfg.imputer.learner_fraction < 1:
        check_cut_alignments(train_cuts)
    init = None
    if args.init_from is not None:
        init = _init_weights(args.init_from, cfg.model)
        if _trained_as(args.init_from) == "ctc":
            init = imputer_start(init, cfg.model.mask_id)
    imp = cfg.imputer
    objective = imputer_objective(
        imp.block_size, imp.ctc_weight, imp.learner_fraction, imp.score_observed, imp.greedy_fraction
    )
    block = cfg.imputer.block_size

    def decoder(model, tok, cuts):  # dev WER of K = B block decoding, as reported
        return decode_cuts_imputer(model, tok, cuts, steps=block, block_size=block).hyps

    fit(
        cfg,
        args.exp_dir,
        train_cuts,
        _load_cuts(args.dev_cuts),
        tokenizer,
        objective=objective,
        init_weights=init,
        resume=args.resume,
        decoder=decoder,
        trained_as="imputer",
    )


def _add_decode_imputer(sub) -> None:
    p = sub.add_parser(
        "decode-imputer",
        help="K-step (or adaptive) Imputer decoding of a cuts manifest; with --lexicon, the K-th step's "
        "log-probs go to the LM beam search",
    )
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--cuts", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True, help="e.g. test-k8; names the output files")
    p.add_argument("--steps", type=int, default=None, help="K (the cap with --adaptive); default: B")
    p.add_argument(
        "--adaptive",
        type=float,
        default=None,
        metavar="THRESHOLD",
        help="fix every frame more probable than THRESHOLD, stop when all are fixed",
    )
    p.add_argument("--block-size", type=int, default=None, help="B; default: the model's imputer config")
    add_runtime_options(p)
    lm_cli.add_lm_options(p)
    p.set_defaults(func=_run_decode_imputer)


def _run_decode_imputer(args) -> None:
    from imputer_asr.decoding.imputer import decode_cuts_imputer
    from imputer_asr.training.checkpoint import load_packaged

    if args.arpa is not None and args.lexicon is None:
        raise _UsageError("--arpa needs --lexicon (the words the search may write)")
    if args.lexicon is not None and args.adaptive is not None:
        raise _UsageError("--adaptive cannot be combined with --lexicon (the LM search reads step K of K)")
    _apply_runtime(args)
    packaged = load_packaged(args.model)
    packaged.model.to(args.device)
    block_size = args.block_size or packaged.config.imputer.block_size
    steps = args.steps or block_size
    cuts = _load_cuts(args.cuts)
    if args.lexicon is not None:
        hyps, seconds, record = lm_cli.decode_imputer_with_lm(args, packaged, cuts, steps, block_size)
    else:
        run = decode_cuts_imputer(
            packaged.model,
            packaged.tokenizer,
            cuts,
            steps=steps,
            block_size=block_size,
            threshold=args.adaptive,
        )
        hyps, seconds = run.hyps, run.seconds
        record = {
            "block_size": block_size,
            "steps": steps,
            "adaptive_threshold": args.adaptive,
            "evaluations": run.evaluations,
            "batches": run.batches,
            "evaluations_per_batch": run.evaluations / max(run.batches, 1),
            "evaluations_per_utterance": run.utterance_evaluations / max(len(run.hyps), 1),
        }
    timing = _write_decoding(args, hyps, seconds, **record)
    log.info(
        "decoded %d utterances (%.0f s of audio) in %.1f s, RTF %.4f, %d evaluations in %d batches",
        len(hyps),
        timing["audio_seconds"],
        seconds,
        timing["rtf"],
        timing["evaluations"],
        timing["batches"],
    )


def _parse_exp(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {value!r}")
    return name, Path(path)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="table and plot of WER and decoding cost of several experiments")
    p.add_argument(
        "--exp",
        type=_parse_exp,
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a system and its experiment dir (repeat); a dir that does not exist is skipped with a note",
    )
    p.add_argument("--part", default="test")
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> None:
    from imputer_asr.evaluation.report import collect_results, plot_wer_vs_steps, write_markdown_report

    exp_dirs: dict[str, Path] = {}
    for name, path in args.exp:
        if name in exp_dirs:
            raise ValueError(f"system {name!r} given twice")
        if path.is_dir():
            exp_dirs[name] = path
        else:
            print(f"imputer-asr compare: note: skipping {name}: {path} does not exist", file=sys.stderr)
    if not exp_dirs:
        raise ValueError("no experiment directory to compare")
    rows = collect_results(exp_dirs, args.part)
    text = write_markdown_report(rows, args.out_md, title=f"{args.part}: WER and decoding cost")
    plot_wer_vs_steps(rows, args.out_png, title=f"{args.part}: " + " vs ".join(exp_dirs))
    print(text, end="")
    log.info("wrote %s and %s", args.out_md, args.out_png)


def _add_results(sub) -> None:
    p = sub.add_parser("results", help="WER table of several systems on several parts, written into a README")
    p.add_argument("--exp", type=_parse_exp, action="append", required=True, metavar="NAME=DIR")
    p.add_argument("--parts", nargs="+", required=True)
    p.add_argument("--readme", type=Path, required=True, help="holds <!-- SECTION:begin/end --> lines")
    p.add_argument("--section", default="results", help="the marked section of the README to fill")
    p.set_defaults(func=_run_results)


def _run_results(args) -> None:
    from imputer_asr.evaluation.report import collect_results, fill_results_section, format_wer_by_part

    rows_by_part = {}
    for part in args.parts:
        decoded = {name: path for name, path in args.exp if any(path.glob(f"wer-{part}-*.json"))}
        rows_by_part[part] = collect_results(decoded, part) if decoded else []
    table = format_wer_by_part(rows_by_part)
    fill_results_section(args.readme, table, args.section)
    print(table)


def _add_show_imputation(sub) -> None:
    p = sub.add_parser("show-imputation", help="PNG of one utterance's alignment imputed step by step")
    p.add_argument("--model", type=Path, required=True, help="packaged Imputer model.pt")
    p.add_argument("--cuts", type=Path, required=True, help="cuts manifest with features")
    p.add_argument("--cut-id", default=None, help="default: the first cut of the manifest")
    p.add_argument("--steps", type=int, default=None, help="K; default: the model's block size B")
    p.add_argument("--max-frames", type=int, default=120, help="draw at most this many encoder frames")
    p.add_argument("--out", type=Path, required=True)
    add_runtime_options(p, device=False)
    p.set_defaults(func=_run_show_imputation)


def _run_show_imputation(args) -> None:
    from imputer_asr.evaluation.report import show_imputation

    _apply_runtime(args)
    result = show_imputation(
        args.model, args.cuts, args.cut_id, args.steps, args.out, max_frames=args.max_frames
    )
    log.info("wrote %s (%d encoder frames, %d steps)", args.out, int(result.lengths[0]), result.evaluations)


def _add_probe(sub) -> None:
    p = sub.add_parser(
        "probe", help="input-use probe: does the Imputer read the partial alignment it is shown?"
    )
    p.add_argument("--model", type=Path, required=True, help="packaged Imputer model.pt (required)")
    p.add_argument("--cuts", type=Path, required=True, help="cuts manifest with features (required)")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.75, 0.875],
        help="shown fractions p, each in (0, 1) (default: %(default)s)",
    )
    p.add_argument(
        "--max-cuts",
        type=int,
        default=200,
        help="probe the first N cuts of the manifest (default: %(default)s)",
    )
    p.add_argument("--block-size", type=int, default=None, help="B (default: the model's imputer config)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the shown frames and random tokens (default: %(default)s)",
    )
    p.add_argument(
        "--max-duration", type=float, default=200.0, help="seconds of audio per batch (default: %(default)s)"
    )
    add_runtime_options(p)
    p.add_argument(
        "--out", type=Path, default=None, help="also write the report as JSON here (default: print only)"
    )
    p.set_defaults(func=_run_probe)


def _run_probe(args) -> None:
    from imputer_asr.evaluation.probe import check_probe_arguments, format_probe, probe_cuts
    from imputer_asr.files import write_text_atomic
    from imputer_asr.training.checkpoint import load_packaged

    if args.max_cuts < 1:
        raise _UsageError(f"--max-cuts must be at least 1, got {args.max_cuts}")
    _apply_runtime(args)
    packaged = load_packaged(args.model)
    block_size = packaged.config.imputer.block_size if args.block_size is None else args.block_size
    try:
        check_probe_arguments(args.fractions, block_size)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    cuts = _load_cuts(args.cuts).subset(first=args.max_cuts)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    packaged.model.to(args.device)
    report = probe_cuts(
        packaged.model,
        packaged.tokenizer,
        cuts,
        fractions=args.fractions,
        block_size=block_size,
        seed=args.seed,
        max_duration=args.max_duration,
    )
    print(format_probe(report), end="")
    if args.out is not None:
        record = {"model": str(args.model), "cuts": str(args.cuts), "seed": args.seed, **report.to_dict()}
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
        log.info("wrote %s", args.out)


def _add_transcribe(sub) -> None:
    p = sub.add_parser(
        "transcribe", help="transcribe audio files (wav, flac, ogg, mp3) with a packaged model"
    )
    p.add_argument("audio", nargs="+", help="audio files, or directories searched recursively")
    p.add_argument("--model", type=Path, required=True, help="packaged model.pt")
    p.add_argument(
        "--decoder",
        choices=("imputer", "ctc", "lm"),
        default=None,
        help="default: lm when --lexicon is given, else imputer for a model trained as an Imputer, else ctc",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="K of the imputer decoder; default: its block size"
    )
    p.add_argument(
        "--output-format",
        "--format",
        dest="format",
        choices=(*TRANSCRIPT_FORMATS, "all"),
        default="txt",
        help="txt: the text; json: text, duration and timed words; tsv: a 'start<TAB>end<TAB>word' row "
        "per word (ms); srt, vtt: subtitles; all: every one",
    )
    p.add_argument(
        "--output-dir",
        default=".",
        help="a file <input name>.<format> per input goes here; '-': print to stdout instead (txt: "
        "'AUDIO<TAB>TEXT' lines, json: JSON Lines, tsv: 'AUDIO<TAB>start<TAB>end<TAB>word' rows)",
    )
    p.add_argument(
        "--window-seconds", type=float, default=30.0, help="long recordings are decoded in windows this long"
    )
    p.add_argument("--overlap-seconds", type=float, default=5.0, help="overlap of consecutive windows")
    add_runtime_options(p)
    lm_cli.add_lm_options(p)
    p.set_defaults(func=_run_transcribe)


def _run_transcribe(args) -> int:
    """Exit status 0 when every input was transcribed, 1 when some failed (each on a stderr line)."""
    from imputer_asr.data.audio import find_audio
    from imputer_asr.transcription.transcribe import TranscribeOptions, load_model

    if args.output_dir == "-" and args.format not in _STREAMABLE:
        raise _UsageError(
            f"--output-format {args.format} writes files: give --output-dir a directory, not '-'"
        )
    _apply_runtime(args)
    try:
        options = TranscribeOptions(window_seconds=args.window_seconds, overlap_seconds=args.overlap_seconds)
        lm_weights = lm_cli.lm_weights_from_args(args) if args.lexicon is not None else None
        transcriber = load_model(
            args.model,
            device=args.device,
            options=options,
            lexicon=args.lexicon,
            arpa=args.arpa,
            lm_weights=lm_weights,
        )
        transcripts = transcriber.iter_transcripts(
            find_audio(args.audio), decoder=args.decoder, steps=args.steps
        )
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    written: dict[Path, str] = {}
    failed = 0
    for transcript in transcripts:
        error = _write_transcript(transcript, args, written) or transcript.error
        if error:
            print(f"imputer-asr transcribe: error: {error}", file=sys.stderr, flush=True)
            failed += 1
    return 1 if failed else 0


TRANSCRIPT_FORMATS = ("txt", "json", "tsv", "srt", "vtt")
_STREAMABLE = ("txt", "json", "tsv")


def _transcript_text(transcript, fmt: str, stream: bool) -> str:
    """One transcript in ``fmt``: a file's content, or (``stream``) the lines printed for it."""
    from imputer_asr.transcription.subtitles import format_srt, format_vtt, subtitle_cues

    if fmt == "json":
        return json.dumps(transcript.to_dict()) + "\n"
    if fmt == "txt":
        return f"{transcript.audio}\t{transcript.text}\n" if stream else transcript.text + "\n"
    if fmt == "tsv":
        rows = [(round(w.start * 1000), round(w.end * 1000), w.word) for w in transcript.words]
        if stream:
            return "".join(f"{transcript.audio}\t{a}\t{b}\t{w}\n" for a, b, w in rows)
        return "start\tend\tword\n" + "".join(f"{a}\t{b}\t{w}\n" for a, b, w in rows)
    cues = subtitle_cues(transcript.words)
    return format_srt(cues) if fmt == "srt" else format_vtt(cues)


def _write_transcript(transcript, args, written: dict[Path, str]) -> str | None:
    """Print or write one transcript in each chosen format; returns an error, if any.

    Files are written whole (atomically) and only for inputs that were transcribed. ``written`` maps
    the files written so far to their inputs: two inputs with the same name would write the same
    file, and the second is refused rather than overwrite the first.
    """
    from imputer_asr.files import write_text_atomic

    formats = TRANSCRIPT_FORMATS if args.format == "all" else (args.format,)
    if args.output_dir == "-":
        if args.format == "json" or not transcript.error:  # a JSON record carries its error
            print(_transcript_text(transcript, args.format, stream=True), end="", flush=True)
        return None
    if transcript.error:
        return None
    out_dir = Path(args.output_dir)
    outs = [out_dir / f"{Path(transcript.audio).stem}.{fmt}" for fmt in formats]
    for out in outs:
        if out in written:
            return f"{transcript.audio}: its transcript would overwrite {out}, written for {written[out]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt, out in zip(formats, outs, strict=True):
        write_text_atomic(out, _transcript_text(transcript, fmt, stream=False))
        written[out] = transcript.audio
        print(f"{transcript.audio}\t{out}", flush=True)
    return None


# What a user runs, listed apart in --help from the stages the recipes chain.
USER_COMMANDS = (
    "transcribe",
    "decode",
    "decode-imputer",
    "score",
    "peer-pocketsphinx",
    "probe",
    "package",
    "train",
    "train-imputer",
)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none or already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, argparse.SUPPRESS, False) or action.required:
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def build_parser() -> argparse.ArgumentParser:
    from imputer_asr import __version__

    parser = argparse.ArgumentParser(
        prog="imputer-asr",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (also after the command)")
    parser.add_argument("--version", action="version", version=f"imputer-asr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of those below")
    for add in (
        _add_synth_corpus,
        _add_download,
        _add_manifests,
        _add_combine_cuts,
        _add_bpe,
        _add_fbank,
        _add_train,
        _add_package,
        _add_decode,
        lm_cli.add_lm,
        lm_cli.add_tune_lm,
        _add_score,
        _add_peer_pocketsphinx,
        _add_plot,
        _add_align,
        _add_train_imputer,
        _add_decode_imputer,
        _add_compare,
        _add_results,
        _add_show_imputation,
        _add_probe,
        _add_transcribe,
    ):
        add(sub)
    # The commands are listed in two groups in the epilog instead of argparse's one flat list.
    helps = {action.dest: action.help for action in sub._choices_actions}
    sub._choices_actions.clear()
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
        # SUPPRESS: without -v here, the value given before the command (or its default) stands.
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )

    def listing(names) -> str:
        return "\n".join(f"  {name:<18}{helps.get(name) or ''}" for name in names)

    stages = [name for name in sub.choices if name not in USER_COMMANDS]
    parser.epilog = (
        f"commands:\n{listing(USER_COMMANDS)}\n\nrecipe stages (the recipes' Makefiles chain them):\n"
        f"{listing(stages)}\n\n`imputer-asr COMMAND --help` for a command's options."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args) or 0
    except _UsageError as exc:
        print(f"imputer-asr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"imputer-asr {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"imputer-asr {args.command}: interrupted", file=sys.stderr)
        return 130
