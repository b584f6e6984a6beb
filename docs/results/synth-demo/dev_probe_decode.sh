#!/usr/bin/env bash
# The dev measurements of an Imputer experiment: package it, run the input-use probe, decode and score
# dev at K = 1 and 8. usage: dev_probe_decode.sh IMPUTER_ASR DEMO_DATA EXP_DIR NAME
set -eo pipefail
ASR=$1; D=$2; E=$3; NAME=$4
$ASR package --exp-dir $E --bpe $D/lang/bpe40.model --out $E/model.pt 2>&1 | tail -1
$ASR probe --model $E/model.pt --cuts $D/fbank/cuts_dev_fbank.jsonl.gz --out $E/probe-dev.json > $E/probe-dev.md 2>/dev/null
for k in 1 8; do
  $ASR decode-imputer --model $E/model.pt --cuts $D/fbank/cuts_dev_fbank.jsonl.gz --out-dir $E --name dev-k$k --steps $k > /dev/null 2>&1
  $ASR score --hyps $E/hyps-dev-k$k.jsonl --out-dir $E --name dev-k$k > /dev/null 2>&1
  echo "$NAME K=$k: $(cat $E/wer-dev-k$k.txt)"
done
