"""Tests for imputer_asr.config: JSON round trip, ``section.field=value`` overrides, clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from imputer_asr.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)


def _non_default_config() -> ExperimentConfig:
    """A config where every section differs from its defaults (so a lost field would show)."""
    return ExperimentConfig(
        model=ModelConfig(vocab_size=57, mask_id=57, d_model=32, num_layers=3, dropout=0.25),
        data=DataConfig(max_duration=90.0, spec_augment=False),  # integral, to test the float type
        train=TrainConfig(epochs=7, peak_lr=3e-4, sort_first_epoch=False),
    )


def test_dict_round_trip_is_identity() -> None:
    cfg = _non_default_config()
    values = config_to_dict(cfg)
    assert set(values) == {"features", "model", "data", "train", "imputer"}
    assert values["model"]["vocab_size"] == 57
    assert config_from_dict(values) == cfg


def test_json_file_round_trip(tmp_path: Path) -> None:
    cfg = _non_default_config()
    path = tmp_path / "config.json"
    save_config(cfg, path)
    assert json.loads(path.read_text()) == config_to_dict(cfg)
    loaded = load_config(path)
    assert loaded == cfg
    # Types survive JSON: floats stay floats even when integral, bools stay bools.
    assert isinstance(loaded.data.max_duration, float)
    assert loaded.data.spec_augment is False


def test_missing_sections_and_fields_take_defaults(tmp_path: Path) -> None:
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"train": {"epochs": 3}}))
    cfg = load_config(path)
    assert cfg == ExperimentConfig(train=TrainConfig(epochs=3))
    assert config_from_dict({}) == ExperimentConfig()


def test_overrides_parse_each_type() -> None:
    cfg = apply_overrides(
        ExperimentConfig(),
        [
            "train.epochs=30",
            "train.peak_lr=1e-4",
            "model.dropout=0",
            "data.spec_augment=false",
            " train.sort_first_epoch = no ",
            "data.max_duration=90",
        ],
    )
    assert cfg.train.epochs == 30 and type(cfg.train.epochs) is int
    assert cfg.train.peak_lr == 1e-4 and type(cfg.train.peak_lr) is float
    assert cfg.model.dropout == 0.0 and type(cfg.model.dropout) is float
    assert cfg.data.max_duration == 90.0 and type(cfg.data.max_duration) is float
    assert cfg.data.spec_augment is False
    assert cfg.train.sort_first_epoch is False
    # Everything not overridden is untouched.
    untouched = dataclasses.replace(
        cfg,
        train=TrainConfig(),
        model=ModelConfig(),
        data=DataConfig(),
    )
    assert untouched == ExperimentConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("1", True), ("yes", True)]
    + [("false", False), ("FALSE", False), ("0", False), ("no", False)],
)
def test_bool_override_spellings(text: str, expected: bool) -> None:
    start = ExperimentConfig(data=DataConfig(spec_augment=not expected))
    cfg = apply_overrides(start, [f"data.spec_augment={text}"])
    assert cfg.data.spec_augment is expected


def test_later_override_wins_and_input_is_not_mutated() -> None:
    start = ExperimentConfig()
    cfg = apply_overrides(start, ["train.epochs=3", "train.epochs=5"])
    assert cfg.train.epochs == 5
    assert start == ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epochs", "section.field=value"),  # no '='
        ("epochs=3", "section.field=value"),  # no section
        ("optim.epochs=3", "section.field=value"),  # unknown section
        ("train.epoch=3", "no field 'epoch'"),
        ("train.epochs=3.5", "expects int"),
        ("train.epochs=three", "expects int"),
        ("train.peak_lr=fast", "expects float"),
        ("data.spec_augment=maybe", "expects true/false"),
        ("data.spec_augment=2", "expects true/false"),
    ],
)
def test_bad_override_raises_clear_value_error(override: str, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        apply_overrides(ExperimentConfig(), [override])
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"optim": {}}, "unknown config section(s): optim"),
        ({"model": {"d_modle": 3}}, "unknown field(s) in config section 'model': d_modle"),
    ],
)
def test_unknown_section_or_field(values: dict, needle: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        config_from_dict(values)
    assert needle in str(info.value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(path) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize(
    "content",
    ['{"train": {"epochs": 3,}}', "", "not json", '{"model": 3}', "[1, 2]"],
    ids=["trailing-comma", "empty", "not-json", "section-not-object", "top-level-list"],
)
def test_bad_json_file_names_the_file(content: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.json"
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00\x01 not text")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(path) in str(info.value)
