"""The training commands of ``imputer-asr``: ``train`` (CTC), ``package`` (average the last
checkpoints into a self-contained model), ``align`` (the expert alignments) and ``train-imputer``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from imputer_asr.cli.common import default_of, load_cuts, positive_float, resolve_runtime
from imputer_asr.cli.runtime import add_runtime_options

__all__ = ["add_commands"]

log = logging.getLogger("imputer_asr")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the training commands in ``sub``."""
    for add in (_add_train, _add_package, _add_align, _add_train_imputer):
        add(sub)


def _add_experiment_options(p, train_cuts: str) -> None:
    """The options of both trainings: what to train (config, overrides), where, on what."""
    p.add_argument("--config", type=Path, required=True, help="JSON experiment config")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (repeat)",
    )
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--train-cuts", type=Path, required=True, help=train_cuts)
    p.add_argument("--dev-cuts", type=Path, required=True)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a CTC model (the Imputer has its own stage)")
    _add_experiment_options(p, train_cuts="cuts with features")
    p.add_argument("--bpe", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    p.add_argument("--init-from", type=Path, default=None, help="start from a packaged model's weights")
    p.set_defaults(func=_run_train)


def _run_train(args) -> None:
    from imputer_asr.data.tokenizer import Tokenizer
    from imputer_asr.training.loop import fit

    tokenizer = Tokenizer.from_file(args.bpe)
    cfg = _resolved_config(args, tokenizer)
    init = _init_weights(args.init_from, cfg.model) if args.init_from is not None else None
    fit(
        cfg,
        args.exp_dir,
        _trainable(load_cuts(args.train_cuts), tokenizer, cfg),
        load_cuts(args.dev_cuts),
        tokenizer,
        init_weights=init,
        resume=args.resume,
    )


def _trainable(cuts, tokenizer, cfg):
    """Drop cuts that CTC cannot align with this tokenizer, or that it cannot spell (the fbank
    stage filtered with the one it was given; another vocabulary may need more frames)."""
    from imputer_asr.data.prepare import filter_cuts

    return filter_cuts(cuts, tokenizer, cfg.features, max_duration=float("inf"))


def _resolved_config(args, tokenizer):
    """The experiment config of ``--config`` and ``--set``, with the tokenizer's ids and the
    features' dimension in its model section."""
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


def _add_package(sub) -> None:
    p = sub.add_parser("package", help="average the last checkpoints into a self-contained model.pt")
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--bpe", type=Path, required=True)
    p.add_argument("--average-last", type=int, default=None, help="default: the config's train.average_last")
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


def _add_align(sub) -> None:
    from imputer_asr.training.imputer import align_cuts, sample_hours

    p = sub.add_parser("align", help="expert alignments: forced alignment of the cuts under a CTC model")
    p.add_argument("--model", type=Path, required=True, help="packaged CTC model.pt")
    p.add_argument("--cuts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="cuts manifest with alignments (.jsonl.gz)")
    p.add_argument(
        "--max-duration",
        type=float,
        default=default_of(align_cuts, "max_duration"),
        help="seconds of audio per batch",
    )
    p.add_argument(
        "--max-hours",
        type=positive_float,
        default=None,
        help="align a seeded random subset with this much audio (default: every cut)",
    )
    p.add_argument(
        "--seed", type=int, default=default_of(sample_hours, "seed"), help="seed of the --max-hours subset"
    )
    add_runtime_options(p)
    p.set_defaults(func=_run_align)


def _run_align(args) -> None:
    from imputer_asr.training.checkpoint import load_packaged
    from imputer_asr.training.imputer import align_cuts, alignment_storage, sample_hours

    resolve_runtime(args)
    packaged = load_packaged(args.model)
    packaged.model.to(args.device)
    cuts = load_cuts(args.cuts)
    if args.max_hours is not None:
        cuts = sample_hours(cuts, args.max_hours, seed=args.seed)
    align_cuts(packaged.model, cuts, packaged.tokenizer, args.out, max_duration=args.max_duration)
    log.info("wrote %s, its alignments in %s", args.out, alignment_storage(args.out))


def _add_train_imputer(sub) -> None:
    p = sub.add_parser("train-imputer", help="train the Imputer (imputer section of the config)")
    _add_experiment_options(p, train_cuts="cuts with alignments (align stage)")
    p.add_argument("--bpe", type=Path, required=True)
    p.add_argument("--init-from", type=Path, default=None, help="packaged CTC model.pt to start from")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    p.set_defaults(func=_run_train_imputer)


def _trained_as(path: Path) -> str:
    from imputer_asr.training.checkpoint import load_packaged

    return load_packaged(path).info.get("trained_as", "ctc")


def _run_train_imputer(args) -> None:
    from imputer_asr.data.tokenizer import Tokenizer
    from imputer_asr.decoding.imputer import decode_cuts_imputer
    from imputer_asr.training.imputer import check_cut_alignments, configured_objective, imputer_start
    from imputer_asr.training.loop import fit

    tokenizer = Tokenizer.from_file(args.bpe)
    cfg = _resolved_config(args, tokenizer)
    train_cuts = _trainable(load_cuts(args.train_cuts), tokenizer, cfg)
    if cfg.imputer.learner_fraction < 1:
        check_cut_alignments(train_cuts)
    init = None
    if args.init_from is not None:
        init = _init_weights(args.init_from, cfg.model)
        if _trained_as(args.init_from) == "ctc":
            init = imputer_start(init, cfg.model.mask_id)
    objective = configured_objective(cfg.imputer)
    block = cfg.imputer.block_size

    def decoder(model, tok, cuts):  # dev WER of K = B block decoding, as reported
        return decode_cuts_imputer(model, tok, cuts, steps=block, block_size=block).hyps

    fit(
        cfg,
        args.exp_dir,
        train_cuts,
        load_cuts(args.dev_cuts),
        tokenizer,
        objective=objective,
        init_weights=init,
        resume=args.resume,
        decoder=decoder,
        trained_as="imputer",
    )
