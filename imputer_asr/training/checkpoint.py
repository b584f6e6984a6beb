"""Checkpoints and the packaged model.

Training writes ``epoch-<n>.pt`` after every epoch (atomically: a temporary file renamed into place),
holding weights, optimiser state, the resolved config and the training clock. ``model.pt`` is the
packaged model: weights (the average of the last checkpoints), the config and the tokenizer's
sentencepiece model in one file. Everything loads with ``torch.load(weights_only=True)``: a model file
cannot run code.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from imputer_asr.config import ExperimentConfig, config_from_dict, config_to_dict
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.files import torch_save_atomic
from imputer_asr.model.conformer import ImputerModel

__all__ = [
    "load_file",
    "epoch_checkpoints",
    "step_checkpoints",
    "average_checkpoints",
    "package_model",
    "PackagedModel",
    "load_packaged",
]

PACKAGE_FORMAT = "imputer_asr.model.conformer/1"
_EPOCH = re.compile(r"epoch-(\d+)\.pt$")
_STEP = re.compile(r"^checkpoint-(\d+)\.pt$")


def load_file(path: Path) -> dict[str, Any]:
    """Weights-only load with a clear ValueError naming the file when it is missing or not ours."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about some foreign pickles before refusing them
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for corrupt or foreign files
        raise ValueError(
            f"{path}: not an imputer_asr model file (it does not load as a weights-only PyTorch file)"
        ) from None
    if not isinstance(obj, dict) or "config" not in obj or "model" not in obj:
        raise ValueError(f"{path}: not an imputer_asr checkpoint or model")
    return obj


def epoch_checkpoints(exp_dir: Path) -> list[Path]:
    """``epoch-<n>.pt`` files of an experiment, by epoch."""
    found = [(int(m.group(1)), p) for p in Path(exp_dir).glob("epoch-*.pt") if (m := _EPOCH.search(p.name))]
    return [p for _, p in sorted(found)]


def step_checkpoints(exp_dir: Path, after: int = -1) -> list[Path]:
    """Mid-epoch ``checkpoint-<step>.pt`` files of an experiment taken after update ``after``, by update."""
    found = [
        (int(m.group(1)), p) for p in Path(exp_dir).glob("checkpoint-*.pt") if (m := _STEP.search(p.name))
    ]
    return [p for step, p in sorted(found) if step > after]


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of ``paths`` (integer buffers from the last one)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    states = [load_file(p)["model"] for p in paths]
    avg = {}
    for name, value in states[-1].items():
        if value.is_floating_point():
            avg[name] = sum(s[name].double() for s in states).div(len(states)).to(value.dtype)
        else:
            avg[name] = value
    return avg


def package_model(
    weights: dict[str, torch.Tensor], cfg: ExperimentConfig, tokenizer: Tokenizer, out: Path, **info
) -> None:
    """Write the self-contained ``model.pt`` (weights + config + tokenizer + free-form info)."""
    torch_save_atomic(
        {
            "format": PACKAGE_FORMAT,
            "model": weights,
            "config": config_to_dict(cfg),
            "tokenizer": torch.frombuffer(bytearray(tokenizer.model_proto), dtype=torch.uint8),
            "info": info,
        },
        out,
    )


class PackagedModel:
    """A model rebuilt from ``model.pt``: ``.model`` (eval mode), ``.tokenizer``, ``.config``."""

    def __init__(self, model: ImputerModel, tokenizer: Tokenizer, config: ExperimentConfig, info: dict):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.info = info


def load_packaged(path: Path) -> PackagedModel:
    """Load a ``model.pt`` written by :func:`package_model`."""
    obj = load_file(path)
    if obj.get("format") != PACKAGE_FORMAT:
        raise ValueError(f"{path}: not a packaged imputer_asr model (a training checkpoint?)")
    try:
        cfg = config_from_dict(obj["config"])
        tokenizer = Tokenizer(bytes(obj["tokenizer"].numpy().tobytes()))
        model = ImputerModel(cfg.model)
        weights = dict(obj["model"])
        # Models packaged before the token path existed: a zero token_embed is exactly their function.
        weights.setdefault("token_embed.weight", model.token_embed.weight.detach().clone())
        model.load_state_dict(weights)
    except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: inconsistent model file ({exc})") from None
    info = obj.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"{path}: inconsistent model file (info is not a dict)")
    return PackagedModel(model.eval(), tokenizer, cfg, info)
