#!/bin/bash
# Does another engine in training help on an engine never heard? The demo CTC (conf/ctc.json, 15 min)
# trained on the demo corpus read by ENGINES, scored greedy on dev, test and dev-flite (flite left out).
#
#   run.sh TAG 'ENGINES'      e.g.  run.sh espeak 'espeak-ng'   run.sh espeak-festival 'espeak-ng festival'
set -eo pipefail
ROOT=$(cd "$(dirname "$0")/../../../.." && pwd)
TAG=$1
ENGINES=$2
cd "$ROOT"
D=data/synth/demo-xflite-$TAG
E=recipes/synth/exp-xflite-$TAG/ctc
A=.venv/bin/imputer-asr
# shellcheck disable=SC2086 # ENGINES is a list
$A synth-corpus --out-dir $D/corpus --engines $ENGINES --heldout-engine flite --seed 0 --jobs 2
[ -f $D/manifests/.done ] || { $A manifests --corpus-dir $D/corpus --manifest-dir $D/manifests \
  --parts train dev test dev-flite && touch $D/manifests/.done; }
[ -f $D/lang/bpe40.model ] || $A bpe --manifest-dir $D/manifests --part train --vocab-size 40 --out $D/lang/bpe40.model
$A fbank --manifest-dir $D/manifests --out-dir $D/fbank --bpe $D/lang/bpe40.model --part train --augment \
  --speeds 0.9 1.1 --effects noise --jobs 2
$A fbank --manifest-dir $D/manifests --out-dir $D/fbank --bpe $D/lang/bpe40.model --part dev test dev-flite --jobs 2
$A train --config recipes/synth/conf/ctc.json --exp-dir "$E" --resume --bpe $D/lang/bpe40.model \
  --train-cuts $D/fbank/cuts_train_fbank.jsonl.gz --dev-cuts $D/fbank/cuts_dev_fbank.jsonl.gz
[ -f "$E/model.pt" ] || $A package --exp-dir "$E" --bpe $D/lang/bpe40.model --out "$E/model.pt"
for part in dev test dev-flite; do
  $A decode --model "$E/model.pt" --cuts $D/fbank/cuts_${part}_fbank.jsonl.gz --out-dir "$E" --name $part-greedy
  $A score --hyps "$E/hyps-$part-greedy.jsonl" --out-dir "$E" --name $part-greedy
done
