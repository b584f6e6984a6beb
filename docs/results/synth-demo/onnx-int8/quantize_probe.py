"""Probe: which layers int8 should keep in float32. Dev WER and CTC greedy network time of the
PyTorch model, its float32 export and int8 exports with more MatMuls left in float32, in one run.

    .venv/bin/python docs/results/synth-demo/onnx-int8/quantize_probe.py MODEL.pt CORPUS_PART_DIR

Run from the repository root (it imports benchmarks/onnx_speed.py)."""

import logging
import statistics
import sys
import tempfile
import time

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

import imputer_asr.export as E
from imputer_asr.data.audio import find_audio
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.export import export_onnx, load_onnx
from imputer_asr.training.checkpoint import load_packaged

sys.path.insert(0, "benchmarks")
from onnx_speed import _batches, _references, _wer  # noqa: E402

torch.set_num_threads(2)
model_pt, part_dir = sys.argv[1], sys.argv[2]
files = sorted(find_audio([part_dir]))
refs = _references(files)
pk = load_packaged(model_pt)
batches, audio, order = _batches(pk, files, 120)
dec = CTCGreedyDecoder(pk.tokenizer.blank_id)


def run(model):
    outs = []
    t = time.perf_counter()
    with torch.inference_mode():
        for features, lengths in batches:
            outs += dec(model, features, lengths).outputs
    return time.perf_counter() - t, outs


work = tempfile.mkdtemp()
fp32 = f"{work}/fp32.onnx"
export_onnx(pk, fp32)
prepared = f"{work}/prep.onnx"
logging.getLogger().setLevel(logging.WARNING)
quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
mm = [n.name for n in onnx.load(prepared).graph.node if n.op_type == "MatMul"]
variants = {
    "V0 base": ["/subsampling/out/", "/output/"],
    "V1 +attn": ["/subsampling/out/", "/output/", "/attn/"],
    "V2 +ff.4": ["/subsampling/out/", "/output/", "net.4"],
    "V3 +conv": ["/subsampling/out/", "/output/", "/conv/"],
    "V4 +block0": ["/subsampling/out/", "/output/", "/blocks.0/"],
    "V5 +lastblock": ["/subsampling/out/", "/output/", f"/blocks.{pk.config.model.num_layers - 1}/"],
    "V6 +ff.1": ["/subsampling/out/", "/output/", "net.1/"],
}
paths = {"torch": pk, "fp32": load_onnx(fp32, threads=2)}
for name, pats in variants.items():
    out = f"{work}/{name.split()[0]}.onnx"
    excl = [m for m in mm if any(p in m for p in pats)]
    quantize_dynamic(
        prepared,
        out,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excl,
        extra_options={"MatMulConstBOnly": True},
    )
    proto = onnx.load(out)
    paths[name] = E.PackagedModel(
        E._onnx_imputer(proto, pk.config.model, "int8", out, threads=2), pk.tokenizer, pk.config, pk.info
    )
times = {k: [] for k in paths}
texts = {}
for p in paths.values():
    run(p.model)
for _ in range(3):
    for k, p in paths.items():
        s, outs = run(p.model)
        times[k].append(s)
        texts[k] = outs
R = [refs[files[i]] for i in order]  # in the batches' order
base = statistics.median(times["torch"])
for k in paths:
    hyp = [pk.tokenizer.decode(o) for o in texts[k]]
    med = statistics.median(times[k])
    diff = sum(a != b for a, b in zip(texts[k], texts["torch"], strict=True))
    print(f"{k:16s} {med:6.2f} s  x{base / med:4.2f}  WER {_wer(R, hyp):6.2f}  differ {diff}", flush=True)
