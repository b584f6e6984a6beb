"""Tests of the ONNX export and the onnxruntime backend (imputer_asr/export.py, ``imputer-asr export``).

Oracles: the PyTorch network the export came from. The float32 export's log-probabilities match it
on random batches of sizes and lengths the export never saw (its axes are dynamic and its padding is
masked: an utterance decodes alike alone and in a padded batch); its transcripts are the PyTorch
model's, through ``transcribe`` (CTC greedy, Imputer K=2) and through the decoding loop over a
CutSet. The int8 export is measured, not equated: it must quantize the encoder's linear layers and
stay close. Bad files are one error line naming them.
"""

from __future__ import annotations

import itertools
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from imputer_asr.cli import main  # noqa: E402
from imputer_asr.config import ExperimentConfig, FeatureConfig  # noqa: E402
from imputer_asr.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from imputer_asr.decoding.ctc import decode_cuts  # noqa: E402
from imputer_asr.decoding.imputer import decode_cuts_imputer  # noqa: E402
from imputer_asr.export import (  # noqa: E402
    OnnxImputer,
    _row_groups,
    export_onnx,
    load_onnx,
    load_packaged_or_onnx,
)
from imputer_asr.model.conformer import MIN_INPUT_FRAMES, ImputerModel, padding_mask  # noqa: E402
from imputer_asr.training.checkpoint import load_packaged, package_model  # noqa: E402
from imputer_asr.transcription.transcribe import TranscribeOptions, load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ("THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE SUN IS UP")
TOLERANCE = 1e-4  # float32 log-probabilities, onnxruntime against PyTorch
RATE = 16000


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return train_tokenizer(list(TEXTS) * 20, tmp_path_factory.mktemp("bpe") / "bpe.model", vocab_size=30)


def _package(tokenizer: Tokenizer, tiny_model_config, path: Path, **changes) -> Path:
    """A random tiny model (20 mel bins) whose alignment input matters, packaged at ``path``."""
    cfg = tiny_model_config(tokenizer, dropout=0.1, **changes)  # dropout: eval mode must hold
    torch.manual_seed(0)
    model = ImputerModel(cfg)
    torch.nn.init.normal_(model.token_embed.weight, std=0.02)  # zero at start; trained models move it
    model.set_feature_stats(torch.full((cfg.input_dim,), -5.0), torch.full((cfg.input_dim,), 3.0))
    experiment = ExperimentConfig(features=FeatureConfig(num_mel_bins=cfg.input_dim), model=cfg)
    package_model(model.state_dict(), experiment, tokenizer, path, trained_as="imputer")
    return path


@pytest.fixture(scope="module", params=[1, 0], ids=["inject1", "inject0"])
def model_pt(request, tokenizer: Tokenizer, tiny_model_config, tmp_path_factory) -> Path:
    """The packaged tiny model, with the alignment entering after block 1 and before block 0."""
    path = tmp_path_factory.mktemp(f"inject{request.param}") / "model.pt"
    return _package(tokenizer, tiny_model_config, path, inject_layer=request.param)


@pytest.fixture(scope="module")
def model_onnx(model_pt: Path) -> Path:
    out = model_pt.with_name("model.onnx")
    report = export_onnx(load_packaged(model_pt), out)
    assert report.path == out and report.precision == "float32" and report.max_abs_diff < TOLERANCE
    return out


@pytest.fixture(scope="module")
def model_int8(model_pt: Path) -> Path:
    out = model_pt.with_name("model-int8.onnx")
    export_onnx(load_packaged(model_pt), out, int8=True)
    return out


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five recordings of 0.3 to 3.1 s (noise and chirps), so that their batch is padded."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate((1.0, 3.1, 0.3, 2.2, 1.7)):
        t = np.arange(int(seconds * RATE)) / RATE
        samples = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t * (1 + t)) + rng.normal(0, 0.05, len(t))
        paths.append(root / f"clip{i}.flac")
        sf.write(paths[-1], samples.astype(np.float32), RATE, subtype="PCM_16")
    return paths


def _random_batch(seed: int, n: int, frames: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, frames, dim) features; lengths drawn in [MIN_INPUT_FRAMES, frames], the first one full."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(MIN_INPUT_FRAMES, frames + 1, (n,), generator=g)
    lengths[0] = frames
    return torch.randn(n, frames, dim, generator=g) * 3 - 5, lengths


# --- the network -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "frames"), [(1, MIN_INPUT_FRAMES), (1, 57), (3, 413), (6, 100)])
def test_float32_export_matches_pytorch_at_every_batch_size_and_length(
    model_pt: Path, model_onnx: Path, n: int, frames: int
) -> None:
    torch_model, exported = load_packaged(model_pt).model, load_onnx(model_onnx).model
    features, lengths = _random_batch(n * frames, n, frames, torch_model.cfg.input_dim)
    with torch.inference_mode():
        hidden, hidden_lengths = torch_model.encode_acoustic(features, lengths)
        got_hidden, got_lengths = exported.encode_acoustic(features, lengths)
        assert torch.equal(got_lengths, hidden_lengths) and got_hidden.shape == hidden.shape
        valid = ~padding_mask(hidden_lengths, hidden.size(1))
        assert (got_hidden - hidden)[valid].abs().max() < TOLERANCE
        g = torch.Generator().manual_seed(n)
        tokens = torch.randint(0, torch_model.cfg.mask_id + 1, hidden.shape[:2], generator=g)
        for alignment in (tokens, torch_model.all_mask(hidden)):
            reference = torch_model.impute(hidden, hidden_lengths, alignment)
            assert (exported.impute(hidden, hidden_lengths, alignment) - reference)[
                valid
            ].abs().max() < TOLERANCE
        chosen = valid & (tokens % 2 == 0)  # the frames a decoding step reads: the rest are -inf
        reference = torch_model.impute(hidden, hidden_lengths, tokens, chosen)
        got = exported.impute(hidden, hidden_lengths, tokens, chosen)
        for out in (got, reference):
            assert bool((out[~chosen] == float("-inf")).all())
        if chosen.any():
            assert (got - reference)[chosen].abs().max() < TOLERANCE
        log_probs, out_lengths = exported(features, lengths)  # forward: all [MASK], as a CTC model
        assert torch.equal(out_lengths, hidden_lengths)
        assert (log_probs - torch_model(features, lengths)[0])[valid].abs().max() < TOLERANCE
        log_probs, _ = exported(features, lengths, tokens)  # forward given an alignment: the halves
        assert (log_probs - torch_model(features, lengths, tokens)[0])[valid].abs().max() < TOLERANCE


def test_an_utterance_gives_the_same_output_alone_and_in_a_padded_batch(model_onnx: Path) -> None:
    exported = load_onnx(model_onnx).model
    features, lengths = _random_batch(7, 4, 300, exported.cfg.input_dim)
    with torch.inference_mode():
        batch, frames = exported(features, lengths)
        for i in range(4):
            alone, _ = exported(features[i : i + 1, : lengths[i]], lengths[i : i + 1])
            assert (batch[i, : frames[i]] - alone[0]).abs().max() < TOLERANCE


def test_the_export_has_dynamic_batch_and_time_axes_and_carries_what_transcription_needs(
    model_pt: Path, model_onnx: Path, tokenizer: Tokenizer
) -> None:
    proto = onnx.load(str(model_onnx))
    # Every block attends through onnxruntime's fused operators, and nothing else attends: no
    # softmax of the exporter's, no NaN guard after one (the parity tests above hold them to PyTorch).
    ops = [node.op_type for node in proto.graph.node]
    blocks = load_packaged(model_pt).config.model.num_layers
    assert ops.count("MultiHeadAttention") == blocks and ops.count("RotaryEmbedding") == 2 * blocks
    assert "Softmax" not in ops and "IsNaN" not in ops
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param, value.name  # batch
        if value.name in ("features", "hidden", "tokens"):
            assert dims[1].dim_param, value.name  # time
    original, loaded = load_packaged(model_pt), load_packaged_or_onnx(model_onnx)
    assert isinstance(loaded.model, OnnxImputer) and isinstance(
        load_packaged_or_onnx(model_pt).model, ImputerModel
    )
    assert loaded.config == original.config and loaded.model.cfg == original.config.model
    assert loaded.tokenizer.model_proto == tokenizer.model_proto
    assert loaded.info == {"trained_as": "imputer", "precision": "float32"}


# --- transcripts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("decoder", "steps"), [("ctc", None), ("imputer", 2)])
def test_transcripts_and_word_times_are_pytorchs(
    model_pt: Path, model_onnx: Path, audio: list[Path], decoder: str, steps: int | None
) -> None:
    options = TranscribeOptions(batch_seconds=20.0)  # every clip in one padded batch
    expected = load_model(model_pt, options=options).transcribe(audio, decoder=decoder, steps=steps)
    got = load_model(model_onnx, options=options).transcribe(audio, decoder=decoder, steps=steps)
    assert sum(len(t.words) for t in expected) >= 5  # the random model writes something
    assert [t.to_dict() for t in got] == [t.to_dict() for t in expected]


def test_decoding_a_cutset_gives_pytorchs_hypotheses(
    model_pt: Path, model_onnx: Path, noise_cuts, tokenizer: Tokenizer
) -> None:
    """The one loop over a CutSet (``decode``, ``decode-imputer``), adaptive decoding included: it
    re-runs the imputation on the unfinished rows of a batch only."""
    from lhotse import CutSet

    cuts = CutSet.from_file(noise_cuts(list(TEXTS) * 2, growth=0.4))
    torch_model, exported = load_packaged(model_pt).model, load_onnx(model_onnx).model
    hyps = [decode_cuts(m, tokenizer, cuts)[0] for m in (torch_model, exported)]
    assert [h.hyp for h in hyps[1]] == [h.hyp for h in hyps[0]] and any(h.hyp for h in hyps[0])
    for threshold in (None, 0.2):
        runs = [
            decode_cuts_imputer(m, tokenizer, cuts, steps=4, threshold=threshold)
            for m in (torch_model, exported)
        ]
        assert [h.hyp for h in runs[1].hyps] == [h.hyp for h in runs[0].hyps]
        assert runs[1].utterance_evaluations == runs[0].utterance_evaluations


def test_int8_quantizes_the_linear_layers_and_stays_close(
    model_pt: Path, model_int8: Path, audio: list[Path]
) -> None:
    graph = onnx.load(str(model_int8)).graph
    weights = {tensor.name for tensor in graph.initializer}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {node.op_type for node in graph.node}
    float_matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    # Float are attention's (two activations) and the first and last linear layers, kept on purpose.
    kept = sorted(node.name for node in float_matmuls if weights & set(node.input))
    assert kept == ["/output/MatMul", "/subsampling/out/MatMul"]
    packaged = load_packaged_or_onnx(model_int8)
    # Each block's eight linear layers (two per FFN, attention's in and out, the convolution
    # module's two pointwise ones) hold int8 weights.
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) == 8 * packaged.config.model.num_layers
    assert packaged.model.precision == "int8" and packaged.info["precision"] == "int8"
    torch_model = load_packaged(model_pt).model
    features, lengths = _random_batch(3, 3, 250, torch_model.cfg.input_dim)
    with torch.inference_mode():
        reference, frames = torch_model(features, lengths)
        got, _ = packaged.model(features, lengths)
    valid = ~padding_mask(frames, reference.size(1))
    # A measured figure, not an equality: about 0.01 nats for this tiny random model.
    assert 0 < (got - reference)[valid].abs().max() < 0.5
    transcripts = load_model(model_int8).transcribe(audio, decoder="imputer", steps=2)
    assert all(t.error is None for t in transcripts) and any(t.words for t in transcripts)


# --- the command line and bad files ----------------------------------------------------------------


def test_export_command_writes_an_export_that_transcribe_runs(
    model_pt: Path,
    audio: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "sub" / "model.onnx"
    with caplog.at_level(logging.INFO):
        assert main(["export", "--model", str(model_pt), "--out", str(out), "--int8"]) == 0
    assert [r.getMessage() for r in caplog.records if r.name == "root"] == []  # the quantizer's chatter
    stdout, err = capsys.readouterr()
    assert stdout.startswith(f"{out}\tint8, ") and "difference" in stdout and err == ""
    assert load_onnx(out).model.precision == "int8"
    results = {}
    for model in (model_pt, out):
        args = ["transcribe", "--model", str(model), "--threads", "1", "--output-dir", "-"]
        assert main([*args, "--decoder", "ctc", *map(str, audio)]) == 0
        results[model] = capsys.readouterr()
    assert results[out].err == "" and len(results[out].out.splitlines()) == len(audio)
    assert [line.split("\t")[0] for line in results[out].out.splitlines()] == list(map(str, audio))


def _not_our_onnx(path: Path) -> None:
    """A valid ONNX model (y = x + 1) without imputer_asr metadata."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "g", [x], [y], [one])
    onnx.save(helper.make_model(graph), str(path))


BAD_FILES = {
    "missing": "no such model file",
    "random-bytes": "neither a packaged model.pt nor an ONNX file",
    "truncated-export": "neither a packaged model.pt nor an ONNX file",
    "foreign-onnx": "not an ONNX model written by `imputer-asr export`",
    "metadata-without-graph": "inconsistent ONNX export",
}


def _bad_file(case: str, path: Path, model_onnx: Path) -> None:
    if case == "random-bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "truncated-export":
        path.write_bytes(model_onnx.read_bytes()[: model_onnx.stat().st_size // 2])
    elif case == "foreign-onnx":
        _not_our_onnx(path)
    elif case == "metadata-without-graph":  # our metadata on someone else's graph
        _not_our_onnx(path)
        proto = onnx.load(str(path))
        ours = {p.key: p.value for p in onnx.load(str(model_onnx)).metadata_props}
        onnx.helper.set_model_props(proto, ours)
        onnx.save(proto, str(path))
    elif case != "missing":
        raise AssertionError(case)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_model_file_is_one_error_line_naming_it(
    case: str, model_onnx: Path, audio: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "model.onnx"
    _bad_file(case, bad, model_onnx)
    status = main(["transcribe", "--model", str(bad), "--threads", "1", "--output-dir", "-", str(audio[0])])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"imputer-asr transcribe: error: {bad}: ") and BAD_FILES[case] in err


@pytest.mark.parametrize("case", ["missing", "onnx-as-model.pt", "same-file"])
def test_export_refuses_what_is_not_a_packaged_model(
    case: str, model_onnx: Path, model_pt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = {"missing": tmp_path / "model.pt", "onnx-as-model.pt": model_onnx, "same-file": model_pt}[case]
    out = model_pt if case == "same-file" else tmp_path / "out.onnx"
    before = model_pt.read_bytes() if case == "same-file" else None
    assert main(["export", "--model", str(model), "--out", str(out)]) == 2
    stdout, err = capsys.readouterr()
    assert stdout == "" and len(err.splitlines()) == 1 and str(model) in err and "Traceback" not in err
    assert not (tmp_path / "out.onnx").exists() and (before is None or model_pt.read_bytes() == before)


def test_without_onnxruntime_the_error_says_what_to_install(
    model_pt: Path, model_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'imputer-asr\[onnx\]'"):
        export_onnx(load_packaged(model_pt), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match=rf"{model_onnx}: .*pip install 'imputer-asr\[onnx\]'"):
        load_onnx(model_onnx)
    assert not (tmp_path / "x.onnx").exists()


def test_sessions_use_the_threads_asked_for(model_onnx: Path) -> None:
    exported = load_onnx(model_onnx, threads=1).model
    for runner in (exported._encoder, exported._imputer, exported._network):
        assert runner.whole.get_session_options().intra_op_num_threads == 1 and runner.one is None
    exported = load_onnx(model_onnx, threads=3).model
    for runner in (exported._encoder, exported._imputer, exported._network):
        assert runner.whole.get_session_options().intra_op_num_threads == 3
        assert runner.one.get_session_options().intra_op_num_threads == 1


def _spins(session) -> bool:
    return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_only_the_whole_network_spins_and_omp_wait_policy_passive_stops_it(
    model_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    exported = load_onnx(model_onnx, threads=2).model
    assert _spins(exported._network.whole)
    assert not any(_spins(r.whole) for r in (exported._encoder, exported._imputer))
    assert not any(_spins(r.one) for r in (exported._encoder, exported._imputer, exported._network))
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert not _spins(load_onnx(model_onnx, threads=2).model._network.whole)


# --- a batch shared among threads ------------------------------------------------------------------


def _best_contiguous_cost(ordered: list[int], parts: int) -> int:
    """The fewest padded frames of the largest group over every split of ``ordered`` (longest
    first) into at most ``parts`` contiguous groups: the brute-force oracle."""
    best = len(ordered) * ordered[0]
    for cuts in itertools.chain.from_iterable(
        itertools.combinations(range(1, len(ordered)), k) for k in range(1, parts)
    ):
        bounds = [0, *cuts, len(ordered)]
        best = min(best, max((b - a) * ordered[a] for a, b in zip(bounds, bounds[1:], strict=False)))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_row_groups_cover_the_batch_with_the_smallest_largest_group(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 50, size=int(rng.integers(1, 9)))
    parts = int(rng.integers(1, 4))
    groups = _row_groups(lengths, parts)
    assert len(groups) <= parts
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    got = max(len(g) * int(lengths[g].max()) for g in groups)
    assert got == _best_contiguous_cost(sorted(lengths.tolist(), reverse=True), parts)


def _count_calls(runner, counts: dict[str, int]) -> None:
    for name in ("whole", "one"):
        session = getattr(runner, name)
        run = session.run

        def counted(*args, name=name, run=run):
            counts[name] += 1
            return run(*args)

        session.run = counted


def test_a_batch_shared_among_threads_gives_pytorchs_output(model_pt: Path, model_onnx: Path) -> None:
    torch_model, exported = load_packaged(model_pt).model, load_onnx(model_onnx, threads=2).model
    counts = {"whole": 0, "one": 0}
    for runner in (exported._encoder, exported._imputer, exported._network):
        _count_calls(runner, counts)
    features, lengths = _random_batch(11, 6, 240, torch_model.cfg.input_dim)
    lengths[1:] = torch.tensor([40, 230, 60, 120, 35])  # unsorted: the groups are not the rows' order
    with torch.inference_mode():
        hidden, hidden_lengths = torch_model.encode_acoustic(features, lengths)
        valid = ~padding_mask(hidden_lengths, hidden.size(1))
        tokens = torch.randint(0, torch_model.cfg.mask_id + 1, hidden.shape[:2], generator=torch.Generator())
        got_hidden, got_lengths = exported.encode_acoustic(features, lengths)
        assert got_hidden.shape == hidden.shape and torch.equal(got_lengths, hidden_lengths)
        assert (got_hidden - hidden)[valid].abs().max() < TOLERANCE
        got = exported.impute(hidden, hidden_lengths, tokens)
        assert got.shape == (*hidden.shape[:2], torch_model.cfg.vocab_size)
        assert (got - torch_model.impute(hidden, hidden_lengths, tokens))[valid].abs().max() < TOLERANCE
        log_probs, out_lengths = exported(features, lengths)
        assert log_probs.shape == got.shape and torch.equal(out_lengths, hidden_lengths)
        assert (log_probs - torch_model(features, lengths)[0])[valid].abs().max() < TOLERANCE
        assert counts == {"whole": 0, "one": 6}  # three calls, each two groups at once
        exported(features[:1], lengths[:1])  # one row: the whole batch on both threads
        assert counts == {"whole": 1, "one": 6}
