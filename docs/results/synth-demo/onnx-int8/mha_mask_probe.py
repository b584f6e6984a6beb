"""Probe: onnxruntime's MultiHeadAttention alone, with a key padding mask (its unfused kernel)
against none (its flash attention), for the demo's shapes: 24 utterances of 125 frames, 4 heads of
36, 2 threads; and with query/key heads of 37, the mask folded into one more dimension. Mean ms of
50 runs.

    .venv/bin/python mha_mask_probe.py
"""

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

N, T, D, HEADS = 24, 125, 144, 4
rng = np.random.default_rng(0)


def session(mask: bool, qk_dim: int) -> ort.InferenceSession:
    dims = (("q", qk_dim), ("k", qk_dim), ("v", D))
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [N, T, d]) for name, d in dims]
    names = ["q", "k", "v"]
    if mask:
        inputs.append(helper.make_tensor_value_info("keep", TensorProto.INT32, [N, T]))
        names += ["", "keep"]
    node = helper.make_node("MultiHeadAttention", names, ["y"], domain="com.microsoft", num_heads=HEADS)
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, T, D])
    graph = helper.make_graph([node], "attention", inputs, [output])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = helper.make_model(graph, opset_imports=opsets)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def mean_ms(mask: bool, qk_dim: int) -> float:
    feeds = {
        name: rng.standard_normal((N, T, d), dtype=np.float32)
        for name, d in (("q", qk_dim), ("k", qk_dim), ("v", D))
    }
    if mask:
        feeds["keep"] = np.ones((N, T), np.int32)
        feeds["keep"][N // 2 :, 100:] = 0
    run = session(mask, qk_dim).run
    for _ in range(5):
        run(None, feeds)
    start = time.perf_counter()
    for _ in range(50):
        run(None, feeds)
    return (time.perf_counter() - start) / 50 * 1000


for _ in range(2):
    print(f"key padding mask, heads of 36:  {mean_ms(True, D):.2f} ms")
    print(f"no mask, heads of 36:           {mean_ms(False, D):.2f} ms")
    print(f"no mask, query/key heads of 37: {mean_ms(False, D + HEADS):.2f} ms")
