#!/usr/bin/env bash
# usage: run_exp.sh NAME KIND(imputer|ctc) CONFIG [--set ...]
set -eo pipefail
cd /work/main/recipes/synth
NAME=$1; KIND=$2; CONF=$3; shift 3
ASR=/work/main/.venv/bin/imputer-asr
D=/work/main/data/synth/demo
E=exp-dev/$NAME
mkdir -p exp-dev
start=$(date +%s)
if [ "$KIND" = imputer ]; then
  $ASR train-imputer --config $CONF "$@" --exp-dir $E --resume --bpe $D/lang/bpe40.model --init-from exp/ctc/model.pt \
    --train-cuts $D/fbank/cuts_train_aligned.jsonl.gz --dev-cuts $D/fbank/cuts_dev_fbank.jsonl.gz 2>&1 | grep -v "batch/s\|s/batch" | tail -5
else
  $ASR train --config $CONF "$@" --exp-dir $E --resume --bpe $D/lang/bpe40.model --init-from exp/ctc/model.pt \
    --train-cuts $D/fbank/cuts_train_aligned.jsonl.gz --dev-cuts $D/fbank/cuts_dev_fbank.jsonl.gz 2>&1 | grep -v "batch/s\|s/batch" | tail -5
fi
echo "train wall: $(( $(date +%s) - start )) s"
$ASR package --exp-dir $E --bpe $D/lang/bpe40.model --out $E/model.pt 2>&1 | tail -1
if [ "$KIND" = imputer ]; then
  $ASR probe --model $E/model.pt --cuts $D/fbank/cuts_dev_fbank.jsonl.gz --max-cuts 150 --out $E/probe-dev.json > $E/probe-dev.md 2>/dev/null
  grep -iE "0.875|ratio|disagree" $E/probe-dev.md | head -12
  for k in 1 8; do
    $ASR decode-imputer --model $E/model.pt --cuts $D/fbank/cuts_dev_fbank.jsonl.gz --out-dir $E --name dev-k$k --steps $k 2>&1 | tail -1
    $ASR score --hyps $E/hyps-dev-k$k.jsonl --out-dir $E --name dev-k$k 2>&1 | tail -1
    echo "K=$k: $(cat $E/wer-dev-k$k.txt)"
  done
else
  $ASR decode --model $E/model.pt --cuts $D/fbank/cuts_dev_fbank.jsonl.gz --out-dir $E --name dev-greedy 2>&1 | tail -1
  $ASR score --hyps $E/hyps-dev-greedy.jsonl --out-dir $E --name dev-greedy 2>&1 | tail -1
  echo "greedy: $(cat $E/wer-dev-greedy.txt)"
fi
