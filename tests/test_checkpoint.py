"""Tests for imputer_asr.training.checkpoint: atomic saves, epoch ordering, averaging, the packaged model."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from imputer_asr.config import ExperimentConfig, ModelConfig, TrainConfig, config_to_dict
from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer
from imputer_asr.files import torch_save_atomic
from imputer_asr.model.conformer import ImputerModel
from imputer_asr.training import checkpoint
from imputer_asr.training.checkpoint import (
    average_checkpoints,
    epoch_checkpoints,
    load_file,
    load_packaged,
    package_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = ["THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS UP"] * 20
    return train_tokenizer(texts, tmp_path_factory.mktemp("bpe") / "bpe.model", vocab_size=40)


@pytest.fixture(scope="module")
def experiment(tokenizer: Tokenizer, tiny_model_config) -> ExperimentConfig:
    return ExperimentConfig(model=tiny_model_config(tokenizer), train=TrainConfig(epochs=2))


# --- torch_save_atomic ---------------------------------------------------------------------------------


def test_torch_save_atomic_writes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "epoch-1.pt"
    obj = {"w": torch.arange(5.0), "n": 3}
    torch_save_atomic(obj, path)
    assert os.listdir(path.parent) == ["epoch-1.pt"]
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], obj["w"]) and loaded["n"] == 3


def test_torch_save_atomic_replaces_by_rename(tmp_path: Path) -> None:
    """The old file is never rewritten in place: a reader holding it open still sees it whole."""
    path = tmp_path / "epoch-1.pt"
    torch_save_atomic({"w": torch.zeros(1000)}, path)
    old_bytes = path.read_bytes()
    old_inode = path.stat().st_ino
    with open(path, "rb") as reader:
        torch_save_atomic({"w": torch.ones(1000)}, path)
        assert reader.read() == old_bytes
    assert path.stat().st_ino != old_inode
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(1000))
    assert os.listdir(tmp_path) == ["epoch-1.pt"]


def test_crash_during_save_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "epoch-2.pt"
    torch_save_atomic({"model": {"w": torch.zeros(3)}, "config": {}}, tmp_path / "epoch-1.pt")
    torch_save_atomic({"model": {"w": torch.full((3,), 2.0)}, "config": {}}, path)
    old_bytes = path.read_bytes()
    real_save = torch.save

    def crash_half_way(obj, f, *args, **kwargs) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        torch_save_atomic({"model": {"w": torch.full((3,), 9.0)}, "config": {}}, path)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert path.read_bytes() == old_bytes
    assert torch.equal(load_file(path)["model"]["w"], torch.full((3,), 2.0))
    # A half-written temporary file is never mistaken for a checkpoint.
    assert epoch_checkpoints(tmp_path) == [tmp_path / "epoch-1.pt", path]
    # The next save succeeds and cleans up.
    torch_save_atomic({"model": {"w": torch.full((3,), 9.0)}, "config": {}}, path)
    assert torch.equal(load_file(path)["model"]["w"], torch.full((3,), 9.0))
    assert sorted(os.listdir(tmp_path)) == ["epoch-1.pt", "epoch-2.pt"]


# --- epoch_checkpoints / average_checkpoints -------------------------------------------------------


def test_epoch_checkpoints_numeric_order(tmp_path: Path) -> None:
    for name in ["epoch-10.pt", "epoch-2.pt", "epoch-1.pt", "epoch-3.pt", "epoch-21.pt"]:
        (tmp_path / name).write_bytes(b"")
    for name in [".epoch-4.pt.tmp", "epoch-x.pt", "model.pt", "epoch-5.pt.bak", "epoch-.pt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in epoch_checkpoints(tmp_path)] == [
        "epoch-1.pt",
        "epoch-2.pt",
        "epoch-3.pt",
        "epoch-10.pt",
        "epoch-21.pt",
    ]
    assert epoch_checkpoints(tmp_path / "empty") == []


def _save_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch_save_atomic({"model": state, "config": {}, "optimizer": {}}, path)
    return path


def test_average_checkpoints_is_the_mean(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    states = [
        {
            "w": torch.randn(4, 3, generator=g),
            "h": torch.randn(5, generator=g).half(),
            "exact": torch.tensor([0.0, 3.0, -6.0]) * (k + 1),
            "steps": torch.tensor([10 * (k + 1)]),
        }
        for k in range(3)
    ]
    paths = [_save_state(tmp_path / f"epoch-{k + 1}.pt", s) for k, s in enumerate(states)]
    avg = average_checkpoints(paths)
    assert set(avg) == {"w", "h", "exact", "steps"}
    expected_w = (states[0]["w"] + states[1]["w"] + states[2]["w"]) / 3
    torch.testing.assert_close(avg["w"], expected_w, atol=1e-6, rtol=0)
    expected_h = ((states[0]["h"].double() + states[1]["h"] + states[2]["h"]) / 3).half()
    assert avg["h"].dtype == torch.float16 and torch.equal(avg["h"], expected_h)
    assert torch.equal(avg["exact"], torch.tensor([0.0, 6.0, -12.0]))  # (1 + 2 + 3) / 3 = 2
    assert torch.equal(avg["steps"], torch.tensor([30]))  # integer buffers: the last one
    # Averaging one checkpoint is the identity.
    single = average_checkpoints(paths[1:2])
    assert all(torch.equal(single[k], states[1][k]) for k in states[1])


def test_average_checkpoints_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no checkpoints"):
        average_checkpoints([])
    missing = tmp_path / "epoch-9.pt"
    with pytest.raises(ValueError, match=str(missing)):
        average_checkpoints([missing])


# --- package_model / load_packaged ------------------------------------------------------------------


def _packaged_file(tmp_path: Path, tokenizer: Tokenizer, cfg: ExperimentConfig) -> tuple[Path, ImputerModel]:
    torch.manual_seed(0)
    model = ImputerModel(cfg.model).eval()
    out = tmp_path / "model.pt"
    package_model(model.state_dict(), cfg, tokenizer, out, averaged=["epoch-1.pt", "epoch-2.pt"])
    return out, model


def test_package_round_trip(tmp_path: Path, tokenizer: Tokenizer, experiment: ExperimentConfig) -> None:
    out, model = _packaged_file(tmp_path, tokenizer, experiment)
    raw = torch.load(out, map_location="cpu", weights_only=True)
    assert raw["format"] == checkpoint.PACKAGE_FORMAT
    assert raw["config"] == config_to_dict(experiment)

    packaged = load_packaged(out)
    assert not packaged.model.training
    assert packaged.config == experiment
    assert packaged.info == {"averaged": ["epoch-1.pt", "epoch-2.pt"]}
    assert packaged.tokenizer.model_proto == tokenizer.model_proto
    assert packaged.tokenizer.encode("THE CAT RAN") == tokenizer.encode("THE CAT RAN")

    features = torch.randn(2, 33, 20, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([33, 20])
    tokens = torch.randint(tokenizer.mask_id + 1, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for t in (None, tokens):
            want, want_lengths = model(features, lengths, t)
            got, got_lengths = packaged.model(features, lengths, t)
            assert torch.equal(got, want) and torch.equal(got_lengths, want_lengths)


class _RunsCodeWhenUnpickled:
    """Unpickling this creates ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_case(case: str, path: Path, tmp_path: Path, tokenizer: Tokenizer, cfg: ExperimentConfig) -> None:
    state = ImputerModel(cfg.model).state_dict()
    if case == "zero-byte":
        path.write_bytes(b"")
    elif case == "random-bytes":
        path.write_bytes(torch.randint(256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif case == "text":
        path.write_text("not a model\n")
    elif case == "truncated":
        package_model(state, cfg, tokenizer, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif case == "tensor":
        torch.save(torch.zeros(3), path)
    elif case == "training-checkpoint":
        torch_save_atomic({"model": state, "optimizer": {}, "config": config_to_dict(cfg)}, path)
    elif case == "wrong-weights":
        small = ImputerModel(ModelConfig(**{**config_to_dict(cfg)["model"], "d_model": 8}))
        package_model(small.state_dict(), cfg, tokenizer, path)
    elif case == "bad-tokenizer":
        package_model(state, cfg, tokenizer, path)
        obj = torch.load(path, weights_only=True)
        obj["tokenizer"] = torch.zeros(10, dtype=torch.uint8)
        torch.save(obj, path)
    elif case == "torch-pickle-runs-code":
        torch.save({"model": _RunsCodeWhenUnpickled(tmp_path / "pwned"), "config": {}}, path)
    elif case == "plain-pickle-runs-code":
        payload = {"model": _RunsCodeWhenUnpickled(tmp_path / "pwned"), "config": {}}
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "zero-byte",
        "random-bytes",
        "text",
        "truncated",
        "tensor",
        "training-checkpoint",
        "wrong-weights",
        "bad-tokenizer",
        "torch-pickle-runs-code",
        "plain-pickle-runs-code",
    ],
)
def test_load_packaged_rejects_with_the_path(
    case: str, tmp_path: Path, tokenizer: Tokenizer, experiment: ExperimentConfig
) -> None:
    path = tmp_path / "model.pt"
    if case == "directory":
        path.mkdir()
    elif case != "missing":
        _write_case(case, path, tmp_path, tokenizer, experiment)
    with pytest.raises(ValueError) as info:
        load_packaged(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_code_running_pickle_is_real(tmp_path: Path) -> None:
    """Control for the test above: an unrestricted unpickle of that file does create the marker."""
    data = pickle.dumps(_RunsCodeWhenUnpickled(tmp_path / "pwned"))
    pickle.loads(data).close()
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tokenizer", "not a tensor"),
        ("config", {"model": 3}),
        ("info", [1, 2, 3]),
        ("model", torch.zeros(3)),
    ],
)
def test_load_packaged_malformed_field(
    key: str, value: object, tmp_path: Path, tokenizer: Tokenizer, experiment: ExperimentConfig
) -> None:
    path, _ = _packaged_file(tmp_path, tokenizer, experiment)
    obj = torch.load(path, weights_only=True)
    obj[key] = value
    torch.save(obj, path)
    with pytest.raises(ValueError) as info:
        load_packaged(path)
    assert str(path) in str(info.value)
