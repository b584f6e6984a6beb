"""ONNX export of a packaged model, and the onnxruntime backend that runs the export on the CPU.

:func:`export_onnx` writes one self-contained ``.onnx`` file. Its graph holds the network's two
halves side by side, as :class:`~imputer_asr.model.conformer.ImputerModel` splits them:

    features (N, T, F), feature_lengths (N,)        -> encoded (N, T', d), encoded_lengths (N,)
    hidden (N, T', d), hidden_lengths (N,), tokens (N, T')  -> log_probs (N, T', C)

the acoustic encoder (CMVN, subsampling, the blocks below ``inject_layer``) and the imputation
(alignment input, the blocks above, the output layer). Batch and time are dynamic axes. What
transcription needs besides travels in the file's metadata (``metadata_props``): the experiment
config (JSON), the sentencepiece model (base64), the packaging info (JSON, e.g. ``trained_as``) and
the precision (``float32`` or ``int8``). ``int8`` is onnxruntime's dynamic quantization of the
weights of the linear layers inside the encoder (:func:`_quantize_int8`): activations are quantized
per tensor at run time, so int8 outputs are close to, not equal to, the float ones.

:func:`load_onnx` splits the graph into its two halves again (one onnxruntime session each), joins
them into a third session, the whole network fed an all-[MASK] alignment (a CTC model in one
call), and returns a :class:`~imputer_asr.training.checkpoint.PackagedModel` whose ``.model`` is an
:class:`OnnxImputer`: the methods that decoding calls on an ``ImputerModel`` (``forward``,
``encode_acoustic``, ``impute``, ``all_mask``), so CTC greedy search and K-step Imputer decoding
(:mod:`imputer_asr.decoding`) run unchanged, the K-step loop in torch calling the imputation
session K times. :func:`load_packaged_or_onnx` takes either kind of file, told apart by content.

The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): the
``torch.export``-based exporter stops at the input checks of ``encode_acoustic``, which branch on
the values of ``feature_lengths``. Each block's attention is traced as onnxruntime's fused
``com.microsoft`` operators (RotaryEmbedding, MultiHeadAttention; :class:`_FusedAttention`), so the
file runs on onnxruntime, which is the backend here, and not on runtimes without those operators.

>>> from imputer_asr.export import export_onnx, load_packaged_or_onnx  # doctest: +SKIP
>>> export_onnx(load_packaged_or_onnx("exp/ctc/model.pt"), "model.onnx", int8=True)  # doctest: +SKIP
>>> from imputer_asr import load_model  # doctest: +SKIP
>>> load_model("model.onnx").transcribe("talk.flac")[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import tempfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imputer_asr.config import ExperimentConfig, ModelConfig, config_from_dict, config_to_dict
from imputer_asr.data.tokenizer import Tokenizer
from imputer_asr.files import write_bytes_atomic
from imputer_asr.model.conformer import (
    ImputerModel,
    _apply_rotary,
    check_features,
    padding_mask,
    subsampled_lengths,
)
from imputer_asr.training.checkpoint import PackagedModel, load_packaged

__all__ = [
    "ONNX_FORMAT",
    "PRECISIONS",
    "ExportReport",
    "export_onnx",
    "OnnxImputer",
    "load_onnx",
    "load_packaged_or_onnx",
]

ONNX_FORMAT = "imputer_asr.onnx/1"
"""The ``imputer_asr.format`` metadata of an export; a file without it is not read."""
PRECISIONS = ("float32", "int8")
OPSET = 17
INSTALL_HINT = "install onnx and onnxruntime: pip install 'imputer-asr[onnx]'"

_ENCODER_INPUTS = ["features", "feature_lengths"]
_ENCODER_OUTPUTS = ["encoded", "encoded_lengths"]
_IMPUTER_INPUTS = ["hidden", "hidden_lengths", "tokens"]
_IMPUTER_OUTPUTS = ["log_probs"]


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote: the file, its size, its precision, and the largest absolute
    difference between its log-probabilities and PyTorch's on a random batch (valid frames only)."""

    path: Path
    bytes: int
    precision: str
    max_abs_diff: float


class _BothHalves(nn.Module):
    """The traced module: the acoustic encoder and the imputation over separate inputs."""

    def __init__(self, model: ImputerModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        features: Tensor,
        feature_lengths: Tensor,
        hidden: Tensor,
        hidden_lengths: Tensor,
        tokens: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        encoded, encoded_lengths = self.model.encode_acoustic(features, feature_lengths)
        return encoded, encoded_lengths, self.model.impute(hidden, hidden_lengths, tokens)


def _example_batch(cfg: ModelConfig, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two utterances of different lengths: random features (2, 200, F) and lengths (2,)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 200, cfg.input_dim, generator=generator), torch.tensor([200, 131])


def _trace_to_onnx(model: ImputerModel, path: Path) -> None:
    """The float32 graph of both halves, with dynamic batch and time axes, at ``path``; the
    attention of every block is onnxruntime's fused operators (:class:`_FusedAttention`)."""
    features, feature_lengths = _example_batch(model.cfg)
    with torch.no_grad():
        hidden, hidden_lengths = model.encode_acoustic(features, feature_lengths)
    tokens = model.all_mask(hidden)
    # The halves have axes of their own: adaptive decoding imputes a subset of the batch it encoded.
    dynamic_axes = {
        "features": {0: "batch", 1: "frames"},
        "feature_lengths": {0: "batch"},
        "encoded": {0: "batch", 1: "encoder_frames"},
        "encoded_lengths": {0: "batch"},
        "hidden": {0: "imputer_batch", 1: "imputer_frames"},
        "hidden_lengths": {0: "imputer_batch"},
        "tokens": {0: "imputer_batch", 1: "imputer_frames"},
        "log_probs": {0: "imputer_batch", 1: "imputer_frames"},
    }
    with warnings.catch_warnings():
        # The tracer warns about the input checks it records as constants and the exporter about
        # being the older of torch's two; both are expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            # eval: the exporter restores the mode of the module it is given
            _BothHalves(_with_fused_attention(model)).eval(),
            (features, feature_lengths, hidden, hidden_lengths, tokens),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            custom_opsets={"com.microsoft": 1},
            input_names=_ENCODER_INPUTS + _IMPUTER_INPUTS,
            output_names=_ENCODER_OUTPUTS + _IMPUTER_OUTPUTS,
            dynamic_axes=dynamic_axes,
        )


class _RotaryEmbedding(torch.autograd.Function):
    """The rotary position embedding of (N, T', d) queries or keys of ``num_heads`` heads, exported as
    onnxruntime's ``com.microsoft.RotaryEmbedding``: interleaved pairs, as the model rotates them,
    positions counted from 0, ``cos`` and ``sin`` the model's (T', d / num_heads / 2) tables."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, cos: Tensor, sin: Tensor, num_heads: int) -> Tensor:
        n, t, d = x.shape
        heads = x.view(n, t, num_heads, -1).transpose(1, 2)
        return _apply_rotary(heads, cos, sin).transpose(1, 2).reshape(n, t, d)

    @staticmethod
    def symbolic(g: Any, x: Any, cos: Any, sin: Any, num_heads: int) -> Any:
        start = g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64))
        rotary = "com.microsoft::RotaryEmbedding"
        out = g.op(rotary, x, start, cos, sin, interleaved_i=1, num_heads_i=num_heads)
        out.setType(x.type())
        return out


class _MultiHeadAttention(torch.autograd.Function):
    """Scaled dot-product attention of (N, T', d) queries, keys and values in ``num_heads`` heads over
    the keys where ``keep`` (N, T') int32 is 1, exported as onnxruntime's
    ``com.microsoft.MultiHeadAttention`` (its default scale, 1 / sqrt(head size), is the model's)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, keep: Tensor, num_heads: int) -> Tensor:
        n, t, d = q.shape

        def heads(x: Tensor) -> Tensor:
            return x.view(n, t, num_heads, -1).transpose(1, 2)

        attend = keep.bool()[:, None, None, :]
        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=attend)
        return y.transpose(1, 2).reshape(n, t, d)

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, keep: Any, num_heads: int) -> Any:
        no_bias = g.op("prim::Constant")  # an absent optional input (the bias is in q, k, v already)
        no_bias.setType(torch._C.OptionalType.ofTensor())
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, no_bias, keep, num_heads_i=num_heads)
        out.setType(q.type())
        return out


class _FusedAttention(nn.Module):
    """A block's self-attention, with its weights, as the traced graph should hold it: onnxruntime's
    fused rotary embedding and multi-head attention in place of the ~40 transposes, slices, products
    and softmaxes that the exporter makes of the rotary attention (and a NaN guard after each
    softmax, two more passes over every attention matrix). They were half of the int8 graph's
    time: the demo's int8 CTC network went from 1.2x to 1.5x PyTorch fp32 (RESULTS.md, Speed)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: Tensor, attend: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
        n, t, d = x.shape
        heads = self.attn.num_heads
        q, k, v = self.attn.project(x).split(d, dim=-1)
        q, k = _RotaryEmbedding.apply(q, *rotary, heads), _RotaryEmbedding.apply(k, *rotary, heads)
        keep = attend.reshape(n, t).to(torch.int32)
        return self.attn.out(_MultiHeadAttention.apply(q, k, v, keep, heads))


def _with_fused_attention(model: ImputerModel) -> ImputerModel:
    """A copy of ``model`` whose blocks attend through :class:`_FusedAttention`, for tracing."""
    fused = copy.deepcopy(model)
    for block in fused.blocks:
        block.attn = _FusedAttention(block.attn)
    return fused


def _quantize_int8(source: Path, out: Path) -> None:
    """onnxruntime's dynamic quantization of the linear layers' weights (int8, a scale per output
    channel), after its pre-processing (shape inference and the hardware-independent graph
    optimisations; its symbolic shape inference gives up on the dynamic time axes and is skipped).

    The first linear layer (after the convolutions) and the output layer stay float32. On the demo's
    CTC model and 50 test utterances, against float32: mean |log-prob difference| 0.049 and greedy
    transcripts differing in 17 (per-tensor scales, everything quantized: 0.058 and 21).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(f"prepared-{out.name}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs a line per tensor at INFO on the root logger
    try:
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        quantize_dynamic(
            prepared,
            out,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_float_layers(onnx.load(str(prepared))),
            # Attention's MatMuls multiply two activations; quantizing them costs accuracy for little.
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.setLevel(level)


def _float_layers(proto: Any) -> list[str]:
    """The MatMul nodes of ``subsampling.out`` and ``output``, named after their modules' scopes."""
    kept = [
        node.name
        for node in proto.graph.node
        if node.op_type == "MatMul" and node.name.startswith(("/subsampling/out/", "/output/"))
    ]
    if len(kept) != 2:  # another exporter's names: the quantization would silently differ
        raise RuntimeError(f"expected the MatMuls of subsampling.out and output, found {kept}")
    return kept


def _metadata(packaged: PackagedModel, precision: str) -> dict[str, str]:
    return {
        "imputer_asr.format": ONNX_FORMAT,
        "imputer_asr.config": json.dumps(config_to_dict(packaged.config)),
        "imputer_asr.tokenizer": base64.b64encode(packaged.tokenizer.model_proto).decode("ascii"),
        "imputer_asr.info": json.dumps(packaged.info, default=str),
        "imputer_asr.precision": precision,
    }


def export_onnx(packaged: PackagedModel, out: str | os.PathLike, *, int8: bool = False) -> ExportReport:
    """Write ``packaged`` (from :func:`~imputer_asr.training.checkpoint.load_packaged`) as one ONNX
    file at ``out`` (atomically), float32 or with int8 weights; then load it back and compare its
    log-probabilities with PyTorch's on a random batch.

    Raises:
        ValueError: onnx or onnxruntime is not installed.
    """
    onnx = _import_onnx()
    out = Path(out)
    precision = "int8" if int8 else "float32"
    model = packaged.model.eval()
    with tempfile.TemporaryDirectory(prefix="imputer-asr-export-") as tmp:
        graph = Path(tmp) / "float32.onnx"
        _trace_to_onnx(model, graph)
        if int8:
            _quantize_int8(graph, Path(tmp) / "int8.onnx")
            graph = Path(tmp) / "int8.onnx"
        proto = onnx.load(str(graph))
    onnx.helper.set_model_props(proto, _metadata(packaged, precision))
    proto.producer_name = "imputer_asr"
    data = proto.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, data)
    exported = _onnx_imputer(proto, packaged.config.model, precision, str(out))
    return ExportReport(out, len(data), precision, _max_abs_diff(model, exported))


@torch.inference_mode()
def _max_abs_diff(model: ImputerModel, exported: OnnxImputer) -> float:
    """Largest |log-prob difference| of the two networks over the valid frames of a random batch:
    the whole network (all [MASK]), and the two halves all-[MASK] and with random alignment tokens."""
    features, lengths = _example_batch(model.cfg, seed=1)
    hidden, frames = model.encode_acoustic(features, lengths)
    tokens = torch.randint(
        0, model.cfg.mask_id + 1, hidden.shape[:2], generator=torch.Generator().manual_seed(1)
    )
    valid = ~padding_mask(frames, hidden.size(1))
    pairs = [(exported(features, lengths)[0], model.impute(hidden, frames, model.all_mask(hidden)))]
    for alignment in (model.all_mask(hidden), tokens):
        reference = model.impute(hidden, frames, alignment)
        pairs.append((exported.impute(*exported.encode_acoustic(features, lengths), alignment), reference))
    return max(float((got - reference)[valid].abs().max()) for got, reference in pairs)


class OnnxImputer(nn.Module):
    """An exported network run by onnxruntime on the CPU, with the methods decoding calls on an
    :class:`~imputer_asr.model.conformer.ImputerModel`.

    Inputs may lie on any device; the outputs come back there. Made by :func:`load_onnx`.

    Args:
        encoder: the onnxruntime sessions of the acoustic encoder (:class:`_BatchSession`).
        imputer: those of the imputation.
        network: those of the two in one, fed an all-[MASK] alignment: ``forward`` without
            tokens, what CTC decoding calls, is one call of it.
        cfg: the model configuration the network was built with.
        precision: ``float32`` or ``int8``.
    """

    def __init__(self, encoder: Any, imputer: Any, network: Any, cfg: ModelConfig, precision: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.precision = precision
        self._encoder = encoder
        self._imputer = imputer
        self._network = network
        # The decoding loops take a model's device from its first parameter; this one holds none of
        # the weights (they live in the sessions) and only says where the inputs are expected.
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def encode_acoustic(self, features: Tensor, feature_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(N, T, F), (N,) -> acoustic states (N, T', d), encoder lengths (N,)."""
        encoded, lengths = self._encoder.run(_ENCODER_OUTPUTS, self._feature_feeds(features, feature_lengths))
        return _tensor(encoded, features.device), _tensor(lengths, features.device)

    def impute(self, hidden: Tensor, lengths: Tensor, tokens: Tensor, frames: Tensor | None = None) -> Tensor:
        """Acoustic states (N, T', d), lengths (N,), alignment tokens (N, T') -> log-probs (N, T', C);
        given ``frames`` (N, T') bool, -inf at the other frames, as ``ImputerModel.impute`` (the
        graph computes every frame)."""
        feeds = {
            "hidden": _array(hidden, np.float32),
            "hidden_lengths": _array(lengths, np.int64),
            "tokens": _array(tokens, np.int64),
        }
        (log_probs,) = self._imputer.run(_IMPUTER_OUTPUTS, feeds)
        out = _tensor(log_probs, hidden.device)
        return out if frames is None else out.masked_fill(~frames[..., None].to(out.device), float("-inf"))

    def forward(
        self, features: Tensor, feature_lengths: Tensor, tokens: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """As ``ImputerModel.forward``: without ``tokens`` one call of the whole network."""
        if tokens is not None:
            return ImputerModel.forward(self, features, feature_lengths, tokens)
        feeds = self._feature_feeds(features, feature_lengths)
        log_probs, lengths = self._network.run(_IMPUTER_OUTPUTS + _ENCODER_OUTPUTS[1:], feeds)
        return _tensor(log_probs, features.device), _tensor(lengths, features.device)

    def _feature_feeds(self, features: Tensor, feature_lengths: Tensor) -> dict[str, np.ndarray]:
        """The inputs of the encoder and of the whole network, checked as ``ImputerModel`` checks them."""
        check_features(features, feature_lengths, self.cfg.input_dim)
        return {
            "features": _array(features, np.float32),
            "feature_lengths": _array(feature_lengths, np.int64),
        }

    # What only composes the two halves is ImputerModel's own code, so the two cannot drift apart.
    all_mask = ImputerModel.all_mask


def _array(tensor: Tensor, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)


def _tensor(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(array).to(device)


def _import_onnx() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked here, used where the sessions are made)
    except ImportError:
        raise ValueError(f"the ONNX backend needs onnx and onnxruntime; {INSTALL_HINT}") from None
    return onnx


def _session(proto: Any, threads: int, *, spin: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings would be lines on a command's stderr
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


# What a thread of a session of 2 adds: 2 threads ran the demo's int8 network 1.58x as fast as 1
# (0.79 each), its many small operators each waiting for both threads.
THREAD_EFFICIENCY = 0.79


def _row_groups(lengths: np.ndarray, parts: int) -> list[np.ndarray]:
    """The rows of a batch in at most ``parts`` groups, longest rows first, each group contiguous in
    that order, so that the largest group's padded frames (rows x its longest row) are fewest."""
    order = np.argsort(-lengths, kind="stable")
    ordered = lengths[order]

    def groups(capacity: int) -> list[int] | None:  # group starts, or None if more than parts
        starts, start = [0], 0
        for i in range(1, len(ordered)):
            if (i - start + 1) * ordered[start] > capacity:
                starts.append(start := i)
        return starts if len(starts) <= parts else None

    low, high = int(ordered[0]), int(ordered[0]) * len(ordered)  # one row alone .. all in one
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if groups(middle) else (middle + 1, high)
    starts = groups(low) + [len(ordered)]
    return [order[a:b] for a, b in zip(starts, starts[1:], strict=False)]


class _BatchSession:
    """One graph run by onnxruntime over a batch whose rows the threads share.

    A session of several threads splits every operator among them, and with many small operators
    they mostly wait for each other. Where the batch's rows split into ``threads`` groups (by
    length, each group cut to its own longest row) that are each small enough to beat the whole
    batch on all the threads, each group runs on a thread of its own through a one-thread session,
    at the same time; otherwise the batch runs whole on a session of ``threads`` threads. Outputs
    come back in the batch's order and padded length (zero at padded frames).

    Args:
        proto: the graph; inputs and outputs of more than one axis have time as their second.
        threads: the threads for a batch.
        spin: whether the whole-batch session's idle threads spin (see :func:`_onnx_imputer`).
        lengths: the name of the input that holds the rows' lengths along the time axis.
        out_frames: the outputs' time axis for an input time axis of that many frames.
    """

    def __init__(self, proto: Any, threads: int, *, spin: bool, lengths: str, out_frames: Any) -> None:
        self.threads = threads
        self.whole = _session(proto, threads, spin=spin)
        self.one = _session(proto, 1, spin=False) if threads > 1 else None
        self._lengths = lengths
        self._out_frames = out_frames
        self._pool = None

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        lengths = feeds[self._lengths]
        time = next(value.shape[1] for value in feeds.values() if value.ndim > 1)
        groups = _row_groups(lengths, self.threads) if self.one is not None and len(lengths) > 1 else []
        largest = max((len(g) * int(lengths[g].max()) for g in groups), default=0)
        if len(groups) < 2 or largest * self.threads * THREAD_EFFICIENCY >= len(lengths) * time:
            return self.whole.run(outputs, feeds)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnxruntime-rows")
        jobs = [self._pool.submit(self.one.run, outputs, self._cut(feeds, g)) for g in groups]
        parts = [job.result() for job in jobs]
        rows = np.concatenate(groups)
        restore = np.empty_like(rows)
        restore[rows] = np.arange(len(rows))
        return [
            self._join([part[i] for part in parts], self._out_frames(time))[restore]
            for i in range(len(outputs))
        ]

    def _cut(self, feeds: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        frames = int(feeds[self._lengths][rows].max())
        return {
            name: np.ascontiguousarray(value[rows, :frames] if value.ndim > 1 else value[rows])
            for name, value in feeds.items()
        }

    @staticmethod
    def _join(parts: list[np.ndarray], frames: int) -> np.ndarray:
        if parts[0].ndim == 1:
            return np.concatenate(parts)
        padded = [np.pad(p, [(0, 0), (0, frames - p.shape[1])] + [(0, 0)] * (p.ndim - 2)) for p in parts]
        return np.concatenate(padded)


def _whole_network(proto: Any, mask_id: int) -> Any:
    """The export's graph as one network, features and their lengths -> log-probs and lengths: the
    imputation reads the encoder's output and an all-[MASK] alignment, as ``ImputerModel.forward``
    without tokens (a CTC model)."""
    import onnx
    from onnx import helper

    whole = copy.deepcopy(proto)
    graph = whole.graph
    kept = [value for value in graph.input if value.name not in _IMPUTER_INPUTS]
    del graph.input[:]
    graph.input.extend(kept)
    mask = helper.make_tensor("mask_id", onnx.TensorProto.INT64, [1], [mask_id])
    graph.node.extend(
        [
            helper.make_node("Identity", ["encoded"], ["hidden"]),
            helper.make_node("Identity", ["encoded_lengths"], ["hidden_lengths"]),
            helper.make_node("Shape", ["encoded"], ["alignment_shape"], end=2),
            helper.make_node("ConstantOfShape", ["alignment_shape"], ["tokens"], value=mask),
        ]
    )
    return whole


def _onnx_imputer(
    proto: Any, cfg: ModelConfig, precision: str, name: str, threads: int | None = None
) -> OnnxImputer:
    """The two halves of an export's graph as onnxruntime sessions of ``threads`` threads (default:
    torch's thread count, which ``--threads`` sets)."""
    from onnx.utils import Extractor

    threads = threads or torch.get_num_threads()
    graph_names = {value.name for value in proto.graph.input} | {value.name for value in proto.graph.output}
    missing = sorted(
        set(_ENCODER_INPUTS + _IMPUTER_INPUTS + _ENCODER_OUTPUTS + _IMPUTER_OUTPUTS) - graph_names
    )
    if missing:
        raise ValueError(f"{name}: inconsistent ONNX export (the graph has no {', '.join(missing)})")
    extractor = Extractor(proto)
    encoder = extractor.extract_model(_ENCODER_INPUTS, _ENCODER_OUTPUTS)
    imputer = extractor.extract_model(_IMPUTER_INPUTS, _IMPUTER_OUTPUTS)
    network = Extractor(_whole_network(proto, cfg.mask_id)).extract_model(
        _ENCODER_INPUTS, _IMPUTER_OUTPUTS + _ENCODER_OUTPUTS[1:]
    )
    # The halves' idle threads sleep instead of spinning: K-step decoding runs torch between their
    # calls, and a spinning pool takes the cores from it and from other processes. On 2 cores busy
    # with a training, K=4 decoding of 4 utterances by the demo's 6-block model took a median 1.5 s
    # instead of 6.6 s (float32; int8 0.5 s instead of 5.0 s). The whole network is one call per
    # batch with nothing between, and its threads spin as PyTorch's OpenMP threads do, unless
    # OMP_WAIT_POLICY=PASSIVE asks both not to: on idle cores the demo's int8 CTC network ran 1.2x
    # as fast spinning, beside two busy processes 1.6x as slow (RESULTS.md, Speed).
    spin = os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
    acoustic = {"lengths": "feature_lengths", "out_frames": subsampled_lengths}
    return OnnxImputer(
        _BatchSession(encoder, threads, spin=False, **acoustic),
        _BatchSession(imputer, threads, spin=False, lengths="hidden_lengths", out_frames=lambda t: t),
        _BatchSession(network, threads, spin=spin, **acoustic),
        cfg,
        precision,
    )


def load_onnx(path: str | os.PathLike, threads: int | None = None) -> PackagedModel:
    """An export of :func:`export_onnx` as a :class:`PackagedModel` whose ``.model`` is an
    :class:`OnnxImputer` (onnxruntime sessions of ``threads`` threads; default torch's count).

    Raises:
        ValueError: the file is missing, not an ONNX file, or not one written by :func:`export_onnx`
            (each naming it); onnx or onnxruntime is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such model file")
    try:
        onnx = _import_onnx()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        proto = onnx.load(str(path))
    except Exception:  # protobuf's DecodeError and onnx's own, for a truncated or foreign file
        raise ValueError(
            f"{path}: not an imputer_asr model file (neither a packaged model.pt nor an ONNX file)"
        ) from None
    meta = {prop.key: prop.value for prop in proto.metadata_props}
    if meta.get("imputer_asr.format") != ONNX_FORMAT:
        raise ValueError(
            f"{path}: not an ONNX model written by `imputer-asr export` (no imputer_asr metadata)"
        )
    try:
        config: ExperimentConfig = config_from_dict(json.loads(meta["imputer_asr.config"]))
        tokenizer = Tokenizer(base64.b64decode(meta["imputer_asr.tokenizer"]))
        info = json.loads(meta["imputer_asr.info"])
        precision = meta["imputer_asr.precision"]
        if precision not in PRECISIONS or not isinstance(info, dict):
            raise ValueError(f"precision {precision!r}, info {type(info).__name__}")
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path}: inconsistent ONNX export ({exc})") from None
    model = _onnx_imputer(proto, config.model, precision, str(path), threads)
    return PackagedModel(model, tokenizer, config, {**info, "precision": precision})


def load_packaged_or_onnx(path: str | os.PathLike) -> PackagedModel:
    """A packaged ``model.pt`` (:func:`~imputer_asr.training.checkpoint.load_packaged`) or an ONNX
    export (:func:`load_onnx`), told apart by content: a PyTorch file is a zip archive.

    Raises:
        ValueError: the file is missing, or is neither kind (naming it).
    """
    path = Path(path)
    if not path.is_file() or zipfile.is_zipfile(path):
        return load_packaged(path)
    return load_onnx(path)
