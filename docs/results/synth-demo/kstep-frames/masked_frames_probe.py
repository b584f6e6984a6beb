"""K=8 decoding of the test split with the network's frame-by-frame tail over the masked frames only
(today's decoder) against every frame (the model asked for all frames), alternating in one process."""
import logging, statistics, sys, torch
import imputer_asr.decoding.imputer as I
from imputer_asr.data.dataset import load_cuts
from imputer_asr.decoding.ctc import CTCGreedyDecoder
from imputer_asr.decoding.decoder import decode_cutset
from imputer_asr.training.checkpoint import load_packaged
torch.set_num_threads(2); logging.disable(logging.WARNING)
model_pt, cuts_path = sys.argv[1], sys.argv[2]
pk = load_packaged(model_pt); m = pk.model.eval()
cuts = load_cuts(cuts_path).to_eager()
chosen = I._evaluate
def every_frame(model, hidden, lengths, tokens, masked, skip_done_rows):  # the decoder before 8bf1c01
    return model.impute(hidden, lengths, tokens)
variants = {'ctc greedy': (chosen, CTCGreedyDecoder(pk.tokenizer.blank_id)), 'K=8 all frames': (every_frame, I.KStepDecoder(8)), 'K=8 masked frames': (chosen, I.KStepDecoder(8))}
times, outs = {k: [] for k in variants}, {}
for k, (ev, dec) in variants.items():
    I._evaluate = ev; decode_cutset(m, pk.tokenizer, cuts, dec, desc='w')
for _ in range(5):
    for k, (ev, dec) in variants.items():
        I._evaluate = ev; run = decode_cutset(m, pk.tokenizer, cuts, dec, desc=k)
        times[k].append(run.seconds); outs[k] = run.outputs
base = statistics.median(times['ctc greedy'])
for k in variants:
    med = statistics.median(times[k])
    print(f'{k:<20} median of 5 {med:.2f} s  x{med / base:.2f} CTC greedy')
print('same transcripts, all frames against masked frames:', outs['K=8 all frames'] == outs['K=8 masked frames'])
