"""Probe: onnxruntime's blockwise 8-bit weights (MatMulNBits, accuracy level 4: activations
quantized to int8 per block of the inner dimension) against the export's dynamic int8 (one
activation scale per tensor). CTC greedy over a corpus part, PyTorch fp32 and the exports taking
turns (median of 3), and the transcripts that differ from PyTorch's. Needs ``pip install onnx_ir``.

    .venv/bin/python nbits_probe.py MODEL.pt PART_DIR BLOCK [BLOCK ...]

Run from the repository root (it imports benchmarks/onnx_speed.py)."""

import logging
import statistics
import sys
import tempfile
import time

import onnx
import torch
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

import imputer_asr.export as E
from imputer_asr.data.audio import find_audio
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.training.checkpoint import load_packaged

sys.path.insert(0, "benchmarks")
from onnx_speed import _batches  # noqa: E402

logging.getLogger().setLevel(logging.WARNING)
torch.set_num_threads(2)
pk = load_packaged(sys.argv[1])
work = tempfile.mkdtemp()
exports = {"fp32": f"{work}/fp32.onnx", "dynamic int8": f"{work}/int8.onnx"}
E.export_onnx(pk, exports["fp32"])
E.export_onnx(pk, exports["dynamic int8"], int8=True)
float_layers = E._float_layers(onnx.load(exports["fp32"]))
for block in (int(b) for b in sys.argv[3:]):
    quantizer = MatMulNBitsQuantizer(
        onnx.load(exports["fp32"]),
        bits=8,
        block_size=block,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=float_layers,
    )
    quantizer.process()
    exports[f"nbits8 block {block}"] = f"{work}/nbits8-{block}.onnx"
    onnx.save(quantizer.model.model, exports[f"nbits8 block {block}"])
models = {"torch fp32": pk.model.eval()}
for name, path in exports.items():
    models[name] = E._onnx_imputer(onnx.load(path), pk.config.model, "int8", path, threads=2)
decoder = CTCGreedyDecoder(pk.tokenizer.blank_id)
batches, _, _ = _batches(pk, sorted(find_audio([sys.argv[2]])), 120)


def run(model):
    outputs, start = [], time.perf_counter()
    with torch.inference_mode():
        for features, lengths in batches:
            outputs += decoder(model, features, lengths).outputs
    return time.perf_counter() - start, outputs


for model in models.values():
    run(model)
times: dict[str, list[float]] = {name: [] for name in models}
outputs = {}
for _ in range(3):
    for name, model in models.items():
        seconds, outputs[name] = run(model)
        times[name].append(seconds)
base = statistics.median(times["torch fp32"])
for name in models:
    median = statistics.median(times[name])
    differ = sum(a != b for a, b in zip(outputs[name], outputs["torch fp32"], strict=True))
    print(f"{name:20s} {median:.3f} s  x{base / median:.2f}  differ {differ}/{len(outputs[name])}")
