"""Probe: SmoothQuant's equalisation before the int8 export. Each LayerNorm that feeds a linear
layer has its output channels divided by s and the layer's input columns multiplied by s (the
float network is unchanged), s = a^alpha / w^(1 - alpha), a the channel's largest |activation| over
the first 100 files of CALIB_DIR, w its largest |weight|. Dev: CTC greedy transcripts against
PyTorch fp32, WER, mean |log-prob difference| on valid frames.

    .venv/bin/python smooth_probe.py MODEL.pt CALIB_DIR DEV_DIR ALPHA [ALPHA ...]

Run from the repository root (it imports benchmarks/onnx_speed.py)."""

import copy
import statistics
import sys
import tempfile

import torch

from imputer_asr.data.audio import find_audio
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.export import export_onnx, load_onnx
from imputer_asr.model.conformer import padding_mask
from imputer_asr.training.checkpoint import PackagedModel, load_packaged

sys.path.insert(0, "benchmarks")
from onnx_speed import _batches, _references, _wer  # noqa: E402

torch.set_num_threads(2)
pk = load_packaged(sys.argv[1])
model = pk.model.eval()
dev_files = sorted(find_audio([sys.argv[3]]))
calib, _, _ = _batches(pk, sorted(find_audio([sys.argv[2]]))[:100], 120)
dev, _, dev_order = _batches(pk, dev_files, 120)


def pairs(m):
    for b in m.blocks:
        yield b.ff1.net[0], b.ff1.net[1]
        yield b.attn.norm, b.attn.qkv
        yield b.conv.norm, b.conv.pointwise_in
        yield b.ff2.net[0], b.ff2.net[1]


amax: dict[int, torch.Tensor] = {}
valid: list[torch.Tensor] = []


def record(norm, _inputs, out) -> None:
    a = out[valid[0]].abs().amax(0)
    amax[id(norm)] = torch.maximum(amax.get(id(norm), a), a)


hooks = [norm.register_forward_hook(record) for norm, _ in pairs(model)]
with torch.inference_mode():
    for features, lengths in calib:
        hidden, frames = model.encode_acoustic(features, lengths)
        valid[:] = [~padding_mask(frames, hidden.size(1))]
        model(features, lengths)
for hook in hooks:
    hook.remove()


def smoothed(alpha: float):
    m = copy.deepcopy(model)
    for (norm, linear), (original, _) in zip(pairs(m), pairs(model), strict=True):
        a = amax[id(original)].clamp_min(1e-5)
        w = linear.weight.detach().abs().amax(0).clamp_min(1e-5)
        s = a.pow(alpha) / w.pow(1 - alpha)
        with torch.no_grad():
            norm.weight.div_(s)
            norm.bias.div_(s)
            linear.weight.mul_(s)
    return m


decoder = CTCGreedyDecoder(pk.tokenizer.blank_id)


def run(m):
    outputs, log_probs = [], []
    with torch.inference_mode():
        for features, lengths in dev:
            log_probs.append(m(features, lengths))
            outputs += decoder(m, features, lengths).outputs
    return outputs, log_probs


refs = _references(dev_files)
references = [refs[dev_files[i]] for i in dev_order]  # in the batches' order
reference_outputs, reference_log_probs = run(model)
wer = _wer(references, [pk.tokenizer.decode(o) for o in reference_outputs])
print(f"torch fp32        WER {wer:6.2f}", flush=True)
work = tempfile.mkdtemp()
for alpha in [None] + [float(a) for a in sys.argv[4:]]:
    path = f"{work}/alpha-{alpha}.onnx"
    network = model if alpha is None else smoothed(alpha)
    export_onnx(PackagedModel(network, pk.tokenizer, pk.config, pk.info), path, int8=True)
    outputs, log_probs = run(load_onnx(path, threads=2).model)
    gap = [
        (got - ref)[~padding_mask(n, got.size(1))].abs().mean().item()
        for (got, n), (ref, _) in zip(log_probs, reference_log_probs, strict=True)
    ]
    differ = sum(a != b for a, b in zip(outputs, reference_outputs, strict=True))
    wer = _wer(references, [pk.tokenizer.decode(o) for o in outputs])
    print(
        f"int8 alpha={alpha}  WER {wer:6.2f}  differ {differ}/{len(outputs)}  "
        f"mean|dlogp| {statistics.mean(gap):.4f}",
        flush=True,
    )
