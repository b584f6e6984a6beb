#!/bin/bash
# One lever of the cross-engine protocol: the demo CTC (conf/ctc.json, 15 min) trained on espeak-ng
# and flite only, scored on dev, test and dev-festival (an engine it never heard), greedy and with
# the recipe's word LM (weights tuned on dev). Needs the corpus, manifests, lang and dev/test
# features of `make -C recipes/synth fbank HELDOUT=festival` (data/synth/demo-xfestival). The effects-*
# runs in RESULTS.md used the corpus of commit 21629ac, whose draw gave flite 5 of 240 speakers;
# warp-noise today's (v2).
#
#   run.sh NAME 'EFFECTS' [--set section.field=value ...]
#   run.sh effects-all 'warp eq reverb noise telephone codec gain'
#   X=data/synth/demo-xfestival-no-shared run.sh no-shared-warp-noise 'warp noise'   # another corpus
set -eo pipefail
ROOT=$(cd "$(dirname "$0")/../../../.." && pwd)
NAME=$1
EFFECTS=$2
shift 2
cd "$ROOT"
X=${X:-data/synth/demo-xfestival}
F=$X/fbank-$NAME
E=recipes/synth/exp-xfestival-$NAME/ctc
A=.venv/bin/imputer-asr
BPE=$X/lang/bpe40.model
LEX=$X/lang/lexicon_bpe40-wordfreq100000.txt
ARPA=$X/lang/lm3-wordfreq100000.arpa
# shellcheck disable=SC2086 # EFFECTS is a list
$A fbank --manifest-dir $X/manifests --out-dir "$F" --bpe $BPE --part train --augment --speeds 0.9 1.1 \
  --effects $EFFECTS --jobs 2
$A train --config recipes/synth/conf/ctc.json "$@" --exp-dir "$E" --resume --bpe $BPE \
  --train-cuts "$F/cuts_train_fbank.jsonl.gz" --dev-cuts $X/fbank/cuts_dev_fbank.jsonl.gz
[ -f "$E/model.pt" ] || $A package --exp-dir "$E" --bpe $BPE --out "$E/model.pt"
for part in dev test dev-festival; do
  $A decode --model "$E/model.pt" --cuts $X/fbank/cuts_${part}_fbank.jsonl.gz --out-dir "$E" --name $part-greedy
  $A score --hyps "$E/hyps-$part-greedy.jsonl" --out-dir "$E" --name $part-greedy
done
[ -f "$E/lm-weights.json" ] || $A tune-lm --model "$E/model.pt" --cuts $X/fbank/cuts_dev_fbank.jsonl.gz \
  --lexicon $LEX --arpa $ARPA --lm-weight 1.5 2 2.5 --word-score 0 --beam-size-token 8 --out "$E/lm-weights.json"
for part in test dev-festival; do
  $A decode --model "$E/model.pt" --cuts $X/fbank/cuts_${part}_fbank.jsonl.gz --out-dir "$E" --name $part-lm \
    --lexicon $LEX --arpa $ARPA --lm-weights "$E/lm-weights.json" --beam-size-token 8
  $A score --hyps "$E/hyps-$part-lm.jsonl" --out-dir "$E" --name $part-lm
done
