#!/usr/bin/env bash
# The recipe's matched CTC as it now is (the whole training set, not the 4-h aligned subset), on a
# finished `make demo` tree: 2 x 2 min of CTC from the demo's CTC model, then dev and test greedy.
# usage: run.sh DEMO_ROOT
set -eo pipefail
ROOT=$1
ASR=$ROOT/.venv/bin/imputer-asr
D=$ROOT/data/synth/demo
R=$ROOT/recipes/synth
E=$R/exp-dev/ctc-matched-full
$ASR train --config $R/conf/imputer.json --exp-dir $E --resume --bpe $D/lang/bpe40.model \
  --init-from $R/exp/ctc/model.pt --train-cuts $D/fbank/cuts_train_fbank.jsonl.gz \
  --dev-cuts $D/fbank/cuts_dev_fbank.jsonl.gz 2>&1 | tr '\r' '\n' | grep "INFO imputer_asr.train: epoch"
$ASR package --exp-dir $E --bpe $D/lang/bpe40.model --out $E/model.pt 2>&1 | tail -1
for part in dev test; do
  $ASR decode --model $E/model.pt --cuts $D/fbank/cuts_${part}_fbank.jsonl.gz --out-dir $E --name $part-greedy > /dev/null 2>&1
  $ASR score --hyps $E/hyps-$part-greedy.jsonl --out-dir $E --name $part-greedy > /dev/null 2>&1
  echo "$part: $(cat $E/wer-$part-greedy.txt)"
done
