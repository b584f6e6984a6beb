"""Probe: onnxruntime static (QDQ, calibrated on 60 dev files) against dynamic int8 quantization of the
linear layers, CTC greedy decoding of the dev split, one run.

    .venv/bin/python docs/results/synth-demo/onnx-int8/static_probe.py MODEL.pt DEV_DIR

Run from the repository root (it imports benchmarks/onnx_speed.py)."""

import logging
import statistics
import sys
import tempfile
import time
from collections import Counter

import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

import imputer_asr.export as E
from imputer_asr.data.audio import find_audio
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.export import export_onnx, load_onnx
from imputer_asr.training.checkpoint import load_packaged

sys.path.insert(0, "benchmarks")
from onnx_speed import _batches  # noqa: E402

work = tempfile.mkdtemp()
torch.set_num_threads(2)
logging.getLogger().setLevel(logging.WARNING)
pk = load_packaged(sys.argv[1])
dev = sorted(find_audio([sys.argv[2]]))
calib, _, _ = _batches(pk, dev[:60], 30)
export_onnx(pk, f"{work}/s-fp32.onnx")
quant_pre_process(f"{work}/s-fp32.onnx", f"{work}/s-prep.onnx", skip_symbolic_shape=True)
proto = onnx.load(f"{work}/s-prep.onnx")
# calibration feeds for the whole graph: both halves' inputs
m = pk.model.eval()
feeds = []
with torch.inference_mode():
    for features, lengths in calib:
        h, hl = m.encode_acoustic(features, lengths)
        feeds.append(
            {
                "features": features.numpy(),
                "feature_lengths": lengths.numpy(),
                "hidden": h.numpy(),
                "hidden_lengths": hl.numpy(),
                "tokens": m.all_mask(h).numpy(),
            }
        )


class R(CalibrationDataReader):
    def __init__(self):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


excl = E._float_layers(proto)  # what the export keeps in float32
quantize_static(
    f"{work}/s-prep.onnx",
    f"{work}/s-int8.onnx",
    R(),
    quant_format=QuantFormat.QDQ,
    op_types_to_quantize=["MatMul"],
    per_channel=True,
    activation_type=QuantType.QUInt8,
    weight_type=QuantType.QInt8,
    nodes_to_exclude=excl,
    calibrate_method=CalibrationMethod.MinMax,
    extra_options={"MatMulConstBOnly": True},
)
sq = onnx.load(f"{work}/s-int8.onnx")
print(Counter(n.op_type for n in sq.graph.node).most_common(8))
paths = {
    "torch": pk.model,
    "dyn": None,
    "static": E._onnx_imputer(sq, pk.config.model, "int8", "s", threads=2),
}
export_onnx(pk, f"{work}/d-int8.onnx", int8=True)
paths["dyn"] = load_onnx(f"{work}/d-int8.onnx", threads=2).model
batches, audio, _ = _batches(pk, dev, 120)
dec = CTCGreedyDecoder(pk.tokenizer.blank_id)


def run(model):
    start = time.perf_counter()
    outs = []
    with torch.inference_mode():
        for features, lengths in batches:
            outs += dec(model, features, lengths).outputs
    return time.perf_counter() - start, outs


res = {k: [] for k in paths}
outs = {}
for model in paths.values():
    run(model)  # warm-up
for _ in range(3):
    for k, model in paths.items():
        seconds, outs[k] = run(model)
        res[k].append(seconds)
base = statistics.median(res["torch"])
for k in paths:
    median = statistics.median(res[k])
    differ = sum(a != b for a, b in zip(outs[k], outs["torch"], strict=True))
    print(k, f"{median:.2f} s", f"x{base / median:.2f}", "differ", differ)
