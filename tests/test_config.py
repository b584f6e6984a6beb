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
    assert loaded.data.spec_augment is False


def test_integral_json_numbers_become_floats_of_float_fields(tmp_path: Path) -> None:
    # A person writes 90 for 90.0 seconds and 0 for no dropout; json reads both as int, and an int
    # would survive into the saved config (90 == 90.0, so only the type can show the bug).
    path = tmp_path / "typed.json"
    path.write_text('{"data": {"max_duration": 90, "num_buckets": 12}, "model": {"dropout": 0}}')
    cfg = load_config(path)
    assert type(cfg.data.max_duration) is float and cfg.data.max_duration == 90.0
    assert type(cfg.model.dropout) is float and cfg.model.dropout == 0.0
    assert type(cfg.data.num_buckets) is int  # int fields keep their ints
    saved = tmp_path / "saved.json"
    save_config(cfg, saved)
    assert '"max_duration": 90.0' in saved.read_text()
    # Bools are ints to Python; a bool field keeps its bool.
    assert type(config_from_dict({"data": {"spec_augment": False}}).data.spec_augment) is bool


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


def _write(path: Path, values: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return path


def test_base_fields_are_overridden_one_by_one(tmp_path: Path) -> None:
    _write(
        tmp_path / "base.json",
        {"model": {"d_model": 32, "num_layers": 3}, "train": {"epochs": 5, "peak_lr": 1e-4}},
    )
    child = _write(
        tmp_path / "child.json",
        {"base": "base.json", "model": {"num_layers": 4}, "data": {"num_workers": 0}},
    )
    assert load_config(child) == ExperimentConfig(
        model=ModelConfig(d_model=32, num_layers=4),  # d_model from the base, num_layers from the child
        data=DataConfig(num_workers=0),  # a section the base lacks
        train=TrainConfig(epochs=5, peak_lr=1e-4),  # a section the child lacks
    )


def test_nested_bases_resolve_relative_to_each_file(tmp_path: Path, monkeypatch) -> None:
    # root <- mid <- leaf, each a directory apart: a base's path is relative to the file naming it.
    _write(tmp_path / "common" / "root.json", {"train": {"epochs": 1, "seed": 7}, "model": {"dropout": 0.3}})
    _write(tmp_path / "common" / "mid.json", {"base": "root.json", "train": {"epochs": 2, "num_threads": 3}})
    leaf = _write(tmp_path / "exp" / "leaf.json", {"base": "../common/mid.json", "model": {"dropout": 0.2}})
    monkeypatch.chdir(tmp_path / "exp")
    cfg = load_config(Path("leaf.json"))
    assert cfg == ExperimentConfig(
        model=ModelConfig(dropout=0.2),  # leaf over root
        train=TrainConfig(epochs=2, seed=7, num_threads=3),  # mid over root; root's seed kept
    )
    assert load_config(leaf) == cfg


@pytest.mark.parametrize(
    "files",
    [
        {"a.json": "a.json"},
        {"a.json": "b.json", "b.json": "a.json"},
        {"a.json": "b.json", "b.json": "./c.json", "c.json": "b.json"},
    ],
    ids=["self", "two", "three"],
)
def test_base_cycle_names_the_files(files: dict[str, str], tmp_path: Path) -> None:
    for name, base in files.items():
        _write(tmp_path / name, {"base": base, "train": {"epochs": 2}})
    with pytest.raises(ValueError, match="config base cycle") as info:
        load_config(tmp_path / "a.json")
    for name in files:
        assert name in str(info.value)


def test_missing_base_names_both_files(tmp_path: Path) -> None:
    child = _write(tmp_path / "child.json", {"base": "nowhere/base.json"})
    with pytest.raises(ValueError) as info:
        load_config(child)
    message = str(info.value)
    assert f"cannot read config {tmp_path / 'nowhere' / 'base.json'} (the base of {child})" in message


def test_error_in_a_base_names_the_base(tmp_path: Path) -> None:
    base = _write(tmp_path / "base.json", {"model": {"d_modle": 3}})
    child = _write(tmp_path / "child.json", {"base": "base.json", "model": {"d_model": 32}})
    with pytest.raises(ValueError) as info:
        load_config(child)
    assert str(info.value) == f"{base}: unknown field(s) in config section 'model': d_modle"


@pytest.mark.parametrize("base", [3, None, ["a.json"]], ids=["number", "null", "list"])
def test_base_must_name_a_file(base: object, tmp_path: Path) -> None:
    path = _write(tmp_path / "child.json", {"base": base})
    if base is None:  # "base": null is no base
        assert load_config(path) == ExperimentConfig()
        return
    with pytest.raises(ValueError, match="'base' names a file") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_base_is_a_file_key_not_a_config_section() -> None:
    # A resolved config (checkpoint, experiment config.json) never holds a base.
    with pytest.raises(ValueError, match="unknown config section"):
        config_from_dict({"base": "ctc.json"})


RECIPE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/conf/*.json"))


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recipe_configs_load(path: Path) -> None:
    cfg = load_config(path)
    # Special ids and sizes come from the tokenizer at training time, never from a recipe.
    assert (cfg.model.vocab_size, cfg.model.mask_id) == (0, 0)


@pytest.mark.parametrize(
    ("imputer", "ctc"),
    [
        ("synth/conf/imputer.json", "synth/conf/ctc.json"),
        ("synth/conf/imputer-full.json", "synth/conf/ctc-full.json"),
        ("librispeech/conf/imputer-100h.json", "librispeech/conf/ctc-100h.json"),
        ("librispeech/conf/imputer-960h.json", "librispeech/conf/ctc-960h.json"),
    ],
)
def test_recipe_imputer_has_the_model_of_its_ctc(imputer: str, ctc: str) -> None:
    # train-imputer starts from the CTC model's weights: the encoders must match.
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    assert load_config(recipes / imputer).model == load_config(recipes / ctc).model
