#!/usr/bin/env bash
# Dev experiment on a finished `make demo` tree: the Imputer trained jointly from scratch (no CTC
# start, no stored alignments: learner roll-in, the forced alignment under the model being trained,
# plus the CTC loss of the all-[MASK] input each batch) for the training clock that the demo's CTC
# baseline and its matched continuation get together (15 + 4 = 19 min), then probe and decode dev
# at K = 1 and 8.
# usage: run_exp.sh DEMO_ROOT NAME [--set key=value ...]
set -eo pipefail
ROOT=$1; NAME=$2; shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
ASR=$ROOT/.venv/bin/imputer-asr
D=$ROOT/data/synth/demo
R=$ROOT/recipes/synth
E=$R/exp-dev/$NAME
mkdir -p "$E"
start=$(date +%s)
$ASR train-imputer --config $HERE/joint.json "$@" --exp-dir $E --resume --bpe $D/lang/bpe40.model \
  --train-cuts $D/fbank/cuts_train_fbank.jsonl.gz --dev-cuts $D/fbank/cuts_dev_fbank.jsonl.gz 2>&1 \
  | tr '\r' '\n' | grep -v "batch/s\|s/batch\|it/s\|^\s*$" | grep -i "epoch\|error\|done" | tail -8
echo "train wall: $(( $(date +%s) - start )) s"
"$HERE/../dev_probe_decode.sh" "$ASR" "$D" "$E" "$NAME"
