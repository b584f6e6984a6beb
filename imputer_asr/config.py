"""Configuration: frozen dataclasses, one per concern, and their JSON round trip.

An experiment is described by an :class:`ExperimentConfig` (features, model, data, training). Recipes keep
one JSON file per setting, holding only what differs from the dataclass defaults or from the file named by
its ``"base"`` key; command-line ``--set section.field=value`` pairs override single fields.
The resolved config is written next to every experiment and stored inside every checkpoint, so decoding
rebuilds the model from the checkpoint alone.

>>> cfg = ExperimentConfig()
>>> cfg = apply_overrides(cfg, ["train.epochs=3", "model.num_layers=4"])
>>> (cfg.train.epochs, cfg.model.num_layers)
(3, 4)
>>> config_from_dict(config_to_dict(cfg)) == cfg
True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FeatureConfig",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "ImputerConfig",
    "ExperimentConfig",
    "config_to_dict",
    "config_from_dict",
    "load_config",
    "save_config",
    "apply_overrides",
]


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel filterbank front end (lhotse ``Fbank``)."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_shift: float = 0.01


@dataclass(frozen=True)
class ModelConfig:
    """Conformer encoder with an alignment-token input and a CTC-style output layer.

    ``vocab_size`` counts the output classes (blank included); the alignment embedding has one more
    entry, ``mask_id``. Both special ids come from the tokenizer and are stored here explicitly.

    ``interctc_layer`` k > 0 adds intermediate CTC (Lee & Watanabe, ICASSP 2021) to CTC training: the
    output of block k is read out through the same output layer, and the loss becomes
    ``(1 - interctc_weight) * CTC(final) + interctc_weight * CTC(block k)``. It adds no parameters
    and changes nothing at decoding time.

    ``token_scale`` multiplies the alignment tokens' learned contribution (zero for [MASK] and at
    initialisation) before it is added to the acoustic frames;
    see :class:`imputer_asr.model.conformer.ImputerModel`.

    ``utterance_cmn`` subtracts each utterance's mean feature vector before the global
    normalisation: a log-mel offset is a voice's or a channel's fixed spectral colour, not speech.

    ``cepstral_lifter`` k > 0 keeps only the first k cepstral coefficients (orthonormal DCT-II) of
    each frame's log-mel spectrum and maps them back to log-mel: the spectral envelope (formants)
    stays, the ripple of the individual harmonics (how a synthesizer or a voice makes its pitch) goes.
    0 keeps the spectrum as it is.
    """

    vocab_size: int = 0
    blank_id: int = 0
    mask_id: int = 0
    input_dim: int = 80
    subsampling_channels: int = 32
    d_model: int = 144
    num_heads: int = 4
    ff_dim: int = 576
    num_layers: int = 8
    conv_kernel: int = 15
    dropout: float = 0.1
    inject_layer: int = 0
    interctc_layer: int = 0
    interctc_weight: float = 0.3
    token_scale: float = 100.0
    utterance_cmn: bool = False
    cepstral_lifter: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Batching and augmentation of precomputed features.

    ``spec_augment_from_epoch`` > 1 trains the first epochs without SpecAugment: masking slows the
    escape from CTC's all-blank plateau, and a short CPU run cannot afford that.
    """

    max_duration: float = 60.0
    num_buckets: int = 10
    num_workers: int = 1
    spec_augment: bool = True
    spec_augment_from_epoch: int = 1
    num_frame_masks: int = 4
    frames_mask_size: int = 40
    num_feature_masks: int = 2
    features_mask_size: int = 15
    time_warp_factor: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW, linear warm-up then cosine decay, gradient clipping.

    ``steps_per_epoch`` > 0 ends an epoch after that many updates (ESPnet's ``num_iters_per_epoch``):
    checkpoints, validation and the schedule then follow a fixed budget of updates whatever the
    corpus size; each epoch draws a fresh shuffle. ``valid_every`` > 0 adds a dev evaluation every
    that many updates (for the curve of WER against training time).

    ``minutes_per_epoch`` > 0 is the same for the training clock (validation is off the clock):
    epoch n ends once n x ``minutes_per_epoch`` minutes of training are spent (or its
    ``steps_per_epoch`` are made), and the cosine decays over ``epochs x minutes_per_epoch``
    minutes rather than a number of updates. A run then takes the same time on a slow machine and
    a fast one, and the fast one makes more updates; the count is in the log and ``train.done``.
    One process only: ranks would disagree on when the time is up.

    An epoch on either budget whose data runs out first goes on with another pass over it, a shuffle
    of its own: a fast machine trains for the budget, not until the data ends. Without a budget an
    epoch is one pass.

    Mid-epoch checkpoints: every ``checkpoint_minutes`` of training clock ``checkpoint-<step>.pt``
    holds what an exact resume needs (weights, optimizer, clock, the position in the epoch); the
    newest ``keep_checkpoints`` are kept, and those an epoch checkpoint supersedes are removed.
    0 turns them off. A killed run then loses at most that much training.

    An update whose gradient norm is not finite is skipped (logged with its cut ids); after
    ``max_skipped_updates`` skipped in a row the run stops, naming them.

    ``bf16`` runs the forward pass under bfloat16 autocast, on CPU as on GPU: the matrix products
    and convolutions in bfloat16; the residual stream, attention, the output distribution, the
    losses, the weights and the optimizer in float32. A device without bfloat16 in hardware (a CPU
    with neither AVX512-BF16 nor AMX) trains in float32 instead, with a warning: there the
    emulation is slower than float32 (benchmarks/train_speed.py measures both).

    ``share_batch`` splits each batch's rows in two halves whose forward and backward passes run at
    once, each on half the ``num_threads`` threads, where that keeps a run reproducible (one process
    on the CPU, an objective that draws its random numbers before it computes, as the CTC and
    Imputer objectives do, no dropout; see :class:`~imputer_asr.training.distributed.ParallelObjective`).

    Scale-out: ``device`` "cuda" trains on GPU ``LOCAL_RANK`` (set by torchrun), and ``accum_grad``
    sums the gradients of that many batches into one update. ``steps_per_epoch`` and ``warmup_steps``
    count updates.
    """

    epochs: int = 10
    peak_lr: float = 2e-3
    final_lr_fraction: float = 0.05
    warmup_steps: int = 300
    weight_decay: float = 1e-3
    grad_clip: float = 5.0
    seed: int = 0
    num_threads: int = 2
    log_every: int = 20
    valid_every: int = 0
    steps_per_epoch: int = 0
    average_last: int = 3
    sort_first_epoch: bool = True
    device: str = "cpu"
    bf16: bool = False
    share_batch: bool = True
    accum_grad: int = 1
    minutes_per_epoch: float = 0.0
    checkpoint_minutes: float = 1.0
    keep_checkpoints: int = 2
    max_skipped_updates: int = 10


@dataclass(frozen=True)
class ImputerConfig:
    """Imputer training: block masking, alignment source, the objective and the joint CTC term.

    ``learner_fraction`` is the share of utterances whose alignment is the forced alignment under
    the model being trained (learner roll-in) instead of the stored expert's; 1 needs no expert.
    ``score_observed`` scores the shown frames too (the paper's objective); ``ctc_weight`` > 0 adds
    the CTC loss of the all-[MASK] network on every batch (joint training). ``greedy_fraction`` is
    the share of utterances shown the model's own greedy alignment instead (block-masked, as K-step
    decoding shows it, mistakes included) and scored with the CTC loss over every alignment, since
    wrong shown tokens leave none consistent: the network learns to correct what it is shown.
    """

    block_size: int = 8
    ctc_weight: float = 0.0
    learner_fraction: float = 0.0
    score_observed: bool = True
    greedy_fraction: float = 0.0


@dataclass(frozen=True)
class ExperimentConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    imputer: ImputerConfig = field(default_factory=ImputerConfig)


_SECTIONS: dict[str, type] = {
    "features": FeatureConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "imputer": ImputerConfig,
}


def config_to_dict(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Plain nested dict (JSON-serialisable, and storable with ``torch.save`` weights-only)."""
    return dataclasses.asdict(cfg)


def _check_sections(values: Any) -> None:
    """ValueError unless ``values`` maps known sections to objects of their known fields."""
    if not isinstance(values, dict):
        raise ValueError(f"a config is a JSON object of sections, got {type(values).__name__}")
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s): {', '.join(unknown)}")
    for section, fields in values.items():
        if not isinstance(fields, dict):
            raise ValueError(f"config section '{section}' is not an object: {fields!r}")
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(_SECTIONS[section])})
        if unknown:
            raise ValueError(f"unknown field(s) in config section '{section}': {', '.join(unknown)}")


def _section_from_dict(cls: type, values: dict[str, Any]) -> Any:
    # JSON writes 30.0 as 30 when a person types it so: a float field takes it as the float it means.
    floats = {f.name for f in dataclasses.fields(cls) if f.type in (float, "float")}
    return cls(**{k: float(v) if k in floats and type(v) is int else v for k, v in values.items()})


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Inverse of :func:`config_to_dict`; missing sections and fields take their defaults."""
    _check_sections(values)
    parts = {name: _section_from_dict(cls, values.get(name, {})) for name, cls in _SECTIONS.items()}
    return ExperimentConfig(**parts)


def _read_config_file(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The sections of one config file and of its bases, merged; ``chain``: the files that led here."""
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        base_of = f" (the base of {chain[-1]})" if chain else ""
        raise ValueError(f"cannot read config {path}{base_of}: {exc}") from None
    base = values.pop("base", None) if isinstance(values, dict) else None
    try:
        _check_sections(values)
        if base is not None and not isinstance(base, str):
            raise ValueError(f"'base' names a file, got {base!r}")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if base is None:
        return values
    base_path = path.parent / base
    resolved = base_path.resolve()
    if resolved in (p.resolve() for p in (*chain, path)):
        cycle = " -> ".join(str(p) for p in (*chain, path, base_path))
        raise ValueError(f"config base cycle: {cycle}")
    merged = _read_config_file(base_path, (*chain, path))
    for section, fields in values.items():
        merged[section] = {**merged.get(section, {}), **fields}
    return merged


def load_config(path: Path) -> ExperimentConfig:
    """Read a JSON config file; a clear ValueError names the file when it is not valid.

    A top-level ``"base": "other.json"`` (relative to this file) is read first, its own base before
    it, and this file's fields override the base's one by one, so a config holds only what differs.
    """
    values = _read_config_file(Path(path), ())
    try:
        return config_from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    Path(path).write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")


def _parse_value(text: str, current: Any, name: str) -> Any:
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"{name} expects true/false, got '{text}'")
    try:
        return type(current)(text)
    except ValueError:
        raise ValueError(f"{name} expects {type(current).__name__}, got '{text}'") from None


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``section.field=value`` overrides, e.g. ``train.epochs=30``."""
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in _SECTIONS:
            raise ValueError(f"override '{item}' is not of the form section.field=value")
        part = getattr(cfg, section)
        if name not in {f.name for f in dataclasses.fields(part)}:
            raise ValueError(f"override '{item}': section '{section}' has no field '{name}'")
        value = _parse_value(text.strip(), getattr(part, name), key)
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(part, **{name: value})})
    return cfg
