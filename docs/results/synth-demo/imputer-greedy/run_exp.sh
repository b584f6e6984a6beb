#!/usr/bin/env bash
# Dev experiment on a finished `make demo` tree: the recipe's Imputer stage (conf/imputer.json: 2 x 2 min
# from the demo's CTC model on the aligned subset) with overrides, run by this checkout's code; then the
# probe and dev decoding at K = 1 and 8.
# usage: run_exp.sh DEMO_ROOT NAME [--set key=value ...]
set -eo pipefail
ROOT=$1; NAME=$2; shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
ASR=$(cd "$HERE/../../../.." && pwd)/.venv/bin/imputer-asr
D=$ROOT/data/synth/demo
R=$ROOT/recipes/synth
E=$R/exp-dev/$NAME
mkdir -p "$E"
$ASR train-imputer --config $R/conf/imputer.json "$@" --exp-dir $E --resume --bpe $D/lang/bpe40.model \
  --init-from $R/exp/ctc/model.pt --train-cuts $D/fbank/cuts_train_aligned.jsonl.gz \
  --dev-cuts $D/fbank/cuts_dev_fbank.jsonl.gz 2>&1 | tr '\r' '\n' | grep "INFO imputer_asr.train: epoch"
"$HERE/../dev_probe_decode.sh" "$ASR" "$D" "$E" "$NAME"
