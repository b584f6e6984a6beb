"""The data commands of ``imputer-asr``: ``synth-corpus``, ``download``, ``manifests``,
``combine-cuts``, ``bpe`` and ``fbank``, the recipe stages that make a corpus into stored features."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputer_asr.cli.common import UsageError, default_of

__all__ = ["add_commands"]

log = logging.getLogger("imputer_asr")

# The synthetic corpus's parts: utterances and speakers (the command's own defaults).
SYNTH_PARTS = {"train": (4000, 200), "dev": (300, 20), "test": (300, 20)}
HELDOUT_SPEAKERS = 20


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the data commands in ``sub``."""
    for add in (_add_synth_corpus, _add_download, _add_manifests, _add_combine_cuts, _add_bpe, _add_fbank):
        add(sub)


def _add_synth_corpus(sub) -> None:
    from imputer_asr.data.synth import render_corpus
    from imputer_asr.data.synth.voices import ENGINES

    p = sub.add_parser("synth-corpus", help="render the offline synthetic corpus (LibriSpeech layout)")
    p.add_argument("--out-dir", type=Path, required=True)
    for part, (utts, speakers) in SYNTH_PARTS.items():
        p.add_argument(f"--{part}-utts", type=int, default=utts, help=f"sentences of the {part} part")
        p.add_argument(f"--{part}-speakers", type=int, default=speakers, help=f"speakers of the {part} part")
    p.add_argument(
        "--heldout-engine",
        choices=ENGINES,
        help="leave this engine out of train/dev/test and render a part dev-ENGINE read by it alone "
        "(--dev-utts sentences, --heldout-speakers speakers), for cross-engine tuning",
    )
    p.add_argument(
        "--heldout-speakers",
        type=int,
        default=HELDOUT_SPEAKERS,
        help="speakers of the held-out engine's part",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        help="the engines of train/dev/test (default: espeak-ng festival flite, less --heldout-engine)",
    )
    p.add_argument(
        "--seed", type=int, default=default_of(render_corpus, "seed"), help="seed of the sentences and voices"
    )
    p.add_argument(
        "--jobs", type=int, default=default_of(render_corpus, "num_jobs"), help="synthesis processes"
    )
    p.set_defaults(func=_run_synth_corpus)


def _run_synth_corpus(args) -> None:
    from imputer_asr.data.synth import render_corpus
    from imputer_asr.data.synth.voices import DEFAULT_ENGINES

    num_utts = {p: getattr(args, f"{p}_utts") for p in SYNTH_PARTS}
    num_speakers = {p: getattr(args, f"{p}_speakers") for p in SYNTH_PARTS}
    engines = None
    if args.engines or args.heldout_engine:
        heard = args.engines or [e for e in DEFAULT_ENGINES if e != args.heldout_engine]
        if args.heldout_engine in heard:
            heard_list = " ".join(heard)
            raise UsageError(f"--engines {heard_list} includes the held-out engine {args.heldout_engine}")
        engines = {p: heard for p in SYNTH_PARTS}
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
    from imputer_asr.data.tokenizer import train_tokenizer

    p = sub.add_parser("bpe", help="train the sentencepiece BPE tokenizer on training transcripts")
    p.add_argument("--manifest-dir", type=Path, required=True)
    p.add_argument("--part", required=True)
    p.add_argument(
        "--vocab-size",
        type=int,
        default=default_of(train_tokenizer, "vocab_size"),
        help="pieces of the BPE model",
    )
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
    from imputer_asr.data.augment import EFFECTS, ChannelAugment
    from imputer_asr.data.prepare import compute_fbank

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
        default=list(default_of(compute_fbank, "speeds")),
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
        "--noise-prob",
        type=float,
        default=None,
        help=f"the noise effect's rate (default: ChannelAugment's, {ChannelAugment.noise_prob})",
    )
    p.add_argument(
        "--max-duration",
        type=float,
        default=default_of(compute_fbank, "max_duration"),
        help="drop longer cuts (seconds)",
    )
    p.add_argument(
        "--jobs", type=int, default=default_of(compute_fbank, "num_jobs"), help="feature extraction processes"
    )
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
        raise UsageError(str(exc)) from None
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
