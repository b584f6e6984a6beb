"""Probe: onnxruntime static (QDQ, calibrated on 60 dev files) against dynamic int8 quantization of the
linear layers, CTC greedy decoding of the dev split, one run.

    .venv/bin/python docs/results/synth-demo/onnx-int8/static_probe.py MODEL.pt DEV_DIR

Run from the repository root. Writes its exports under /tmp/work/onnx."""
import os, sys, time, logging, numpy as np, torch, onnx, statistics
sys.path.insert(0, 'benchmarks')
from onnx_speed import _batches
from onnx.utils import Extractor
from onnxruntime.quantization import quantize_static, QuantType, QuantFormat, CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.shape_inference import quant_pre_process
from imputer_asr.data.audio import find_audio
from imputer_asr.export import export_onnx, load_onnx
import imputer_asr.export as E
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.training.checkpoint import load_packaged
os.makedirs('/tmp/work/onnx', exist_ok=True); torch.set_num_threads(2); logging.getLogger().setLevel(logging.WARNING)
pk = load_packaged(sys.argv[1])
dev = sorted(find_audio([sys.argv[2]]))
calib, _ = _batches(pk, dev[:60], 30)
export_onnx(pk, '/tmp/work/onnx/s-fp32.onnx')
quant_pre_process('/tmp/work/onnx/s-fp32.onnx', '/tmp/work/onnx/s-prep.onnx', skip_symbolic_shape=True)
proto = onnx.load('/tmp/work/onnx/s-prep.onnx')
# calibration feeds for the whole graph: both halves' inputs
m = pk.model.eval()
feeds = []
with torch.inference_mode():
    for f, l in calib:
        h, hl = m.encode_acoustic(f, l)
        feeds.append({'features': f.numpy(), 'feature_lengths': l.numpy(), 'hidden': h.numpy(), 'hidden_lengths': hl.numpy(), 'tokens': m.all_mask(h).numpy()})
class R(CalibrationDataReader):
    def __init__(self): self.it = iter(feeds)
    def get_next(self): return next(self.it, None)
excl = [n.name for n in proto.graph.node if n.op_type == 'MatMul' and n.name.startswith(('/subsampling/out/', '/output/'))]
quantize_static('/tmp/work/onnx/s-prep.onnx', '/tmp/work/onnx/s-int8.onnx', R(), quant_format=QuantFormat.QDQ,
    op_types_to_quantize=['MatMul'], per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    nodes_to_exclude=excl, calibrate_method=CalibrationMethod.MinMax, extra_options={'MatMulConstBOnly': True})
sq = onnx.load('/tmp/work/onnx/s-int8.onnx')
from collections import Counter
print(Counter(n.op_type for n in sq.graph.node).most_common(8))
paths = {'torch': pk.model, 'dyn': None, 'static': E._onnx_imputer(sq, pk.config.model, 'int8', 's', threads=2)}
export_onnx(pk, '/tmp/work/onnx/d-int8.onnx', int8=True)
paths['dyn'] = load_onnx('/tmp/work/onnx/d-int8.onnx', threads=2).model
batches, audio = _batches(pk, dev, 120)
dec = CTCGreedyDecoder(pk.tokenizer.blank_id)
def run(model):
    t = time.perf_counter(); outs = []
    with torch.inference_mode():
        for f, l in batches: outs += dec(model, f, l).outputs
    return time.perf_counter() - t, outs
res = {k: [] for k in paths}; outs = {}
for k, p in paths.items(): run(p)
for _ in range(3):
    for k, p in paths.items():
        s, o = run(p); res[k].append(s); outs[k] = o
for k in paths:
    print(k, '%.2f s' % statistics.median(res[k]), 'x%.2f' % (statistics.median(res['torch']) / statistics.median(res[k])), 'differ', sum(a != b for a, b in zip(outs[k], outs['torch'])))
