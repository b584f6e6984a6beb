"""Probe: int8 with a scale per frame in onnxruntime. Every MatMul that export._quantize_int8
quantizes becomes: the input divided by its frame's max |value| / 127, QuantizeLinear (zero point
128), MatMulInteger with the int8 weights (a symmetric scale per output channel), the int32 result
cast and multiplied by the frame's and the channel's scales. onnxruntime's own dynamic int8
(DynamicQuantizeMatMul) takes one scale for the whole batch's tensor. Dev: CTC greedy through the
whole-network session, transcripts differing from PyTorch fp32, WER, network seconds (median of
REPEATS passes, the paths in turn).

    .venv/bin/python docs/results/synth-demo/onnx-int8/rowquant_onnx_probe.py MODEL.pt DEV_DIR [REPEATS]

Run from the repository root (it imports benchmarks/onnx_speed.py)."""

import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from imputer_asr.data.audio import find_audio
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.export import export_onnx, load_onnx
from imputer_asr.training.checkpoint import load_packaged

sys.path.insert(0, "benchmarks")
from onnx_speed import _batches, _network_seconds, _references, _wer  # noqa: E402

KEPT_FLOAT = ("/subsampling/out/", "/output/")


def per_frame_int8(proto, asymmetric: bool = False) -> int:
    """Rewrite ``proto``'s weight MatMuls in place; returns how many. ``asymmetric``: each frame's
    range [min(x, 0), max(x, 0)] in 255 steps with a zero point of its own (DynamicQuantizeLinear's
    rule per frame), the zero point's share taken off after the product through the weights'
    column sums; else [-max |x|, max |x|]."""
    graph = proto.graph
    weights = {init.name: init for init in graph.initializer}
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(128, np.uint8), "rq_zero128"),
            numpy_helper.from_array(np.array(1.0, np.float32), "rq_one"),
            numpy_helper.from_array(np.array(1 / 127, np.float32), "rq_inv127"),
            numpy_helper.from_array(np.array(1e-8, np.float32), "rq_tiny"),
            numpy_helper.from_array(np.array(0, np.uint8), "rq_zero0"),
            numpy_helper.from_array(np.array(0.0, np.float32), "rq_zerof"),
            numpy_helper.from_array(np.array(1 / 255, np.float32), "rq_inv255"),
        ]
    )
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights or node.name.startswith(KEPT_FLOAT):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)  # (K, C)
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127
        p, x = f"rq{count}_", node.input[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.clip(np.round(w / w_scale), -127, 127).astype(np.int8), p + "wq"),
                numpy_helper.from_array(w_scale.astype(np.float32), p + "wscale"),
            ]
        )
        if asymmetric:
            wq = np.clip(np.round(w / w_scale), -127, 127)
            graph.initializer.append(numpy_helper.from_array(wq.sum(axis=0).astype(np.float32), p + "colsum"))
            nodes += [
                helper.make_node("ReduceMax", [x], [p + "hi0"], axes=[-1], keepdims=1),
                helper.make_node("ReduceMin", [x], [p + "lo0"], axes=[-1], keepdims=1),
                helper.make_node("Max", [p + "hi0", "rq_zerof"], [p + "hi"]),
                helper.make_node("Min", [p + "lo0", "rq_zerof"], [p + "lo"]),
                helper.make_node("Sub", [p + "hi", p + "lo"], [p + "range"]),
                helper.make_node("Mul", [p + "range", "rq_inv255"], [p + "s0"]),
                helper.make_node("Max", [p + "s0", "rq_tiny"], [p + "scale"]),
                helper.make_node("Div", [p + "lo", p + "scale"], [p + "nz"]),
                helper.make_node("Round", [p + "nz"], [p + "nzr"]),
                helper.make_node("Neg", [p + "nzr"], [p + "zp"]),
                helper.make_node("Div", [x, p + "scale"], [p + "y0"]),
                helper.make_node("Add", [p + "y0", p + "zp"], [p + "y"]),
                helper.make_node("QuantizeLinear", [p + "y", "rq_one", "rq_zero0"], [p + "q"]),
                helper.make_node("MatMulInteger", [p + "q", p + "wq"], [p + "z"]),
                helper.make_node("Cast", [p + "z"], [p + "f0"], to=onnx.TensorProto.FLOAT),
                helper.make_node("Mul", [p + "zp", p + "colsum"], [p + "shift"]),
                helper.make_node("Sub", [p + "f0", p + "shift"], [p + "f"]),
                helper.make_node("Mul", [p + "f", p + "scale"], [p + "o"]),
                helper.make_node("Mul", [p + "o", p + "wscale"], [node.output[0]]),
            ]
            count += 1
            continue
        nodes += [
            helper.make_node("Abs", [x], [p + "abs"]),
            helper.make_node("ReduceMax", [p + "abs"], [p + "amax"], axes=[-1], keepdims=1),
            helper.make_node("Mul", [p + "amax", "rq_inv127"], [p + "s0"]),
            helper.make_node("Max", [p + "s0", "rq_tiny"], [p + "scale"]),
            helper.make_node("Div", [x, p + "scale"], [p + "y"]),
            helper.make_node("QuantizeLinear", [p + "y", "rq_one", "rq_zero128"], [p + "q"]),
            helper.make_node("MatMulInteger", [p + "q", p + "wq", "rq_zero128"], [p + "z"]),
            helper.make_node("Cast", [p + "z"], [p + "f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [p + "f", p + "scale"], [p + "o"]),
            helper.make_node("Mul", [p + "o", p + "wscale"], [node.output[0]]),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def main() -> None:
    torch.set_num_threads(2)
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    pk = load_packaged(sys.argv[1])
    dev_files = sorted(find_audio([sys.argv[2]]))
    dev, _, order = _batches(pk, dev_files, 120)
    refs = _references(dev_files)
    references = [refs[dev_files[i]] for i in order]
    work = Path(tempfile.mkdtemp())
    export_onnx(pk, work / "fp32.onnx")
    export_onnx(pk, work / "int8.onnx", int8=True)
    proto = onnx.load(str(work / "fp32.onnx"))
    print(f"per-frame int8: {per_frame_int8(proto)} MatMuls rewritten")
    onnx.save(proto, str(work / "rows.onnx"))
    proto = onnx.load(str(work / "fp32.onnx"))
    per_frame_int8(proto, asymmetric=True)
    onnx.save(proto, str(work / "rows-asym.onnx"))
    paths = {
        "pytorch fp32": pk.model.eval(),
        "onnxruntime int8 (per tensor)": load_onnx(work / "int8.onnx", threads=2).model,
        "onnxruntime int8 (per frame)": load_onnx(work / "rows.onnx", threads=2).model,
        "onnxruntime int8 (per frame, asym)": load_onnx(work / "rows-asym.onnx", threads=2).model,
    }
    decoder = CTCGreedyDecoder(pk.tokenizer.blank_id)
    outputs = {}
    for name, model in paths.items():
        with torch.inference_mode():
            outputs[name] = [o for f, n in dev for o in decoder(model, f, n).outputs]
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, model in paths.items():
            times[name].append(_network_seconds(model, decoder, dev))
    base = statistics.median(times["pytorch fp32"])
    for name in paths:
        t = statistics.median(times[name])
        differ = sum(a != b for a, b in zip(outputs[name], outputs["pytorch fp32"], strict=True))
        wer = _wer(references, [pk.tokenizer.decode(o) for o in outputs[name]])
        print(f"{name:36s} {t:6.2f} s ({base / t:.2f}x)  WER {wer:6.2f}  differ {differ}/{len(dev_files)}")


if __name__ == "__main__":
    main()
