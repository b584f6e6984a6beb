"""Probe: onnxruntime's kernel time by operator for ONNX exports of the demo CTC model, beside
PyTorch fp32 on the same batch (24 utterances of 6 s, half of them 1.5 s shorter), 2 threads.

    .venv/bin/python profile_ops.py MODEL.pt EXPORT.onnx [EXPORT.onnx ...]
"""
import json, sys, time, collections, glob, os
import numpy as np, torch, onnx, onnxruntime as ort
from onnx.utils import Extractor
from imputer_asr.training.checkpoint import load_packaged
torch.set_num_threads(2)
pk = load_packaged(sys.argv[1]); model = pk.model.eval()
N, T = 24, 600
torch.manual_seed(0)
feats = torch.randn(N, T, 80); lens = torch.full((N,), T)
lens[N//2:] = T - 150
def pt():
    with torch.inference_mode():
        return model(feats, lens)
for _ in range(3): pt()
t = time.perf_counter(); 
for _ in range(10): pt()
print('pytorch fp32 %.1f ms' % ((time.perf_counter()-t)/10*1000))
for name in sys.argv[2:]:
    proto = onnx.load(name)
    ex = Extractor(proto)
    enc = ex.extract_model(['features','feature_lengths'], ['encoded','encoded_lengths'])
    imp = ex.extract_model(['hidden','hidden_lengths','tokens'], ['log_probs'])
    def sess(p, prof):
        o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
        o.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get('SPIN','0'))
        if prof: o.enable_profiling = True; o.profile_file_prefix = os.path.basename(name)
        return ort.InferenceSession(p.SerializeToString(), o, providers=['CPUExecutionProvider'])
    for prof in (False, True):
        se, si = sess(enc, prof), sess(imp, prof)
        def run():
            h, hl = se.run(None, {'features': feats.numpy(), 'feature_lengths': lens.numpy()})
            tok = np.full(h.shape[:2], model.cfg.mask_id, dtype=np.int64)
            return si.run(None, {'hidden': h, 'hidden_lengths': hl, 'tokens': tok})
        for _ in range(3): run()
        t = time.perf_counter()
        for _ in range(10): run()
        dt = (time.perf_counter()-t)/10*1000
        if not prof:
            print(f'{name} {dt:.1f} ms'); continue
        files = [se.end_profiling(), si.end_profiling()]
        agg = collections.Counter()
        for f in files:
            for ev in json.load(open(f)):
                if ev.get('cat') == 'Node' and ev['name'].endswith('_kernel_time'):
                    agg[ev['args']['op_name']] += ev['dur']
        tot = sum(agg.values())
        print(name, 'kernel total ms/run', tot/13/1000)
        for k, v in agg.most_common(14): print(f'   {k:28s} {100*v/tot:5.1f}%  {v/13/1000:6.2f} ms')
