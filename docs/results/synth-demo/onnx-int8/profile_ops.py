"""Probe: onnxruntime's kernel time by operator for ONNX exports of the demo CTC model, beside
PyTorch fp32 on the same batch (24 utterances of 6 s, half of them 1.5 s shorter), 2 threads.

    .venv/bin/python profile_ops.py MODEL.pt EXPORT.onnx [EXPORT.onnx ...]
"""

import collections
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.utils import Extractor

from imputer_asr.training.checkpoint import load_packaged

torch.set_num_threads(2)
model = load_packaged(sys.argv[1]).model.eval()
N, T = 24, 600
torch.manual_seed(0)
feats = torch.randn(N, T, 80)
lens = torch.full((N,), T)
lens[N // 2 :] = T - 150


def mean_ms(run, repeats: int = 10) -> float:
    for _ in range(3):  # warm-up
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats * 1000


def pytorch() -> None:
    with torch.inference_mode():
        model(feats, lens)


def session(proto, profile_prefix: str | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("SPIN", "0"))
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


print(f"pytorch fp32 {mean_ms(pytorch):.1f} ms")
for name in sys.argv[2:]:
    extractor = Extractor(onnx.load(name))
    encoder = extractor.extract_model(["features", "feature_lengths"], ["encoded", "encoded_lengths"])
    imputer = extractor.extract_model(["hidden", "hidden_lengths", "tokens"], ["log_probs"])
    for prefix in (None, os.path.basename(name)):
        enc, imp = session(encoder, prefix), session(imputer, prefix)

        def exported(enc=enc, imp=imp) -> None:
            hidden, hidden_lengths = enc.run(
                None, {"features": feats.numpy(), "feature_lengths": lens.numpy()}
            )
            tokens = np.full(hidden.shape[:2], model.cfg.mask_id, dtype=np.int64)
            imp.run(None, {"hidden": hidden, "hidden_lengths": hidden_lengths, "tokens": tokens})

        ms = mean_ms(exported)
        if prefix is None:
            print(f"{name} {ms:.1f} ms")
            continue
        kernels = collections.Counter()
        for trace in (enc.end_profiling(), imp.end_profiling()):
            for event in json.load(open(trace)):
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    kernels[event["args"]["op_name"]] += event["dur"]
        total = sum(kernels.values())
        print(name, "kernel total ms/run", total / 13 / 1000)  # 13 runs: 3 warm-up, 10 timed
        for op, us in kernels.most_common(14):
            print(f"   {op:28s} {100 * us / total:5.1f}%  {us / 13 / 1000:6.2f} ms")
