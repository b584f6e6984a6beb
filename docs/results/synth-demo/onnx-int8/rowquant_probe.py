"""Probe: how fine must int8 activation scales be for int8 to read like float32? PyTorch simulates
onnxruntime's dynamic int8 (export._quantize_int8) on every linear layer that the export quantizes
(all but subsampling.out and output): weights int8 with a symmetric scale per output channel, the
input uint8 with a scale and zero point (DynamicQuantizeLinear's rule) taken over

    tensor:  the whole batch's tensor, as onnxruntime does (its per-tensor scale)
    utt:     each utterance's frames
    frame:   each frame (a scale per row of the matrix product)

Dev: CTC greedy transcripts differing from float32's, WER, mean |log-prob difference| on valid
frames. The same 120-s batches as smooth_probe.py, so "tensor" can be checked against
onnxruntime's own int8 (smooth-dev.txt: 95/300 differ, 0.0609).

    .venv/bin/python docs/results/synth-demo/onnx-int8/rowquant_probe.py MODEL.pt DEV_DIR

Run from the repository root (it imports benchmarks/onnx_speed.py)."""

import statistics
import sys

import torch
from torch import nn

from imputer_asr.data.audio import find_audio
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.model.conformer import padding_mask
from imputer_asr.training.checkpoint import load_packaged

sys.path.insert(0, "benchmarks")
from onnx_speed import _batches, _references, _wer  # noqa: E402

torch.set_num_threads(2)
pk = load_packaged(sys.argv[1])
model = pk.model.eval()
dev_files = sorted(find_audio([sys.argv[2]]))
dev, _, dev_order = _batches(pk, dev_files, 120)
decoder = CTCGreedyDecoder(pk.tokenizer.blank_id)
KEPT_FLOAT = ("subsampling.out", "output")


def fake_uint8(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """x through DynamicQuantizeLinear's uint8 rule, the range taken over ``dims``."""
    low = x.amin(dim=dims, keepdim=True).clamp_max(0)
    high = x.amax(dim=dims, keepdim=True).clamp_min(0)
    scale = ((high - low) / 255).clamp_min(1e-12)
    zero = (-low / scale).round().clamp(0, 255)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero).mul(scale)


def fake_int8_rows(w: torch.Tensor) -> torch.Tensor:
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
    return (w / scale).round().clamp(-127, 127).mul(scale)


class FakeInt8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, granularity: str) -> None:
        super().__init__()
        self.weight = fake_int8_rows(linear.weight.detach())
        self.bias = linear.bias
        self.granularity = granularity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = {"tensor": tuple(range(x.dim())), "utt": tuple(range(1, x.dim())), "frame": (-1,)}
        return nn.functional.linear(fake_uint8(x, dims[self.granularity]), self.weight, self.bias)


def quantized(granularity: str) -> nn.Module:
    import copy

    m = copy.deepcopy(model)
    for name, module in list(m.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not full.startswith(KEPT_FLOAT):
                setattr(module, child_name, FakeInt8Linear(child, granularity))
    return m


def run(m):
    outputs, log_probs = [], []
    with torch.inference_mode():
        for features, lengths in dev:
            log_probs.append(m(features, lengths))
            outputs += decoder(m, features, lengths).outputs
    return outputs, log_probs


refs = _references(dev_files)
references = [refs[dev_files[i]] for i in dev_order]
reference_outputs, reference_log_probs = run(model)
print(f"torch fp32      WER {_wer(references, [pk.tokenizer.decode(o) for o in reference_outputs]):6.2f}")
for granularity in ("tensor", "utt", "frame"):
    outputs, log_probs = run(quantized(granularity))
    gap = [
        (got - ref)[~padding_mask(n, got.size(1))].abs().mean().item()
        for (got, n), (ref, _) in zip(log_probs, reference_log_probs, strict=True)
    ]
    differ = sum(a != b for a, b in zip(outputs, reference_outputs, strict=True))
    wer = _wer(references, [pk.tokenizer.decode(o) for o in outputs])
    print(
        f"int8 {granularity:6s}    WER {wer:6.2f}  differ {differ}/{len(outputs)}  "
        f"mean|dlogp| {statistics.mean(gap):.4f}",
        flush=True,
    )
