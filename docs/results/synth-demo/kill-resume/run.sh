#!/usr/bin/env bash
# kill -9 of the demo's CTC training at a random moment of its first 3-min epoch, then the same
# command again: how old was the newest checkpoint, and does the rerun finish the run?
# usage: run.sh DEMO_ROOT SEED
set -eo pipefail
ROOT=$1; SEED=${2:-0}
D=$ROOT/data/synth/demo
E=$ROOT/recipes/synth/exp-dev/kill-$SEED
rm -rf "$E"
CMD=("$ROOT/.venv/bin/imputer-asr" train --config "$ROOT/recipes/synth/conf/ctc.json" --set train.epochs=1
     --exp-dir "$E" --resume --bpe "$D/lang/bpe40.model"
     --train-cuts "$D/fbank/cuts_train_fbank.jsonl.gz" --dev-cuts "$D/fbank/cuts_dev_fbank.jsonl.gz")
"${CMD[@]}" > "$E.log1" 2>&1 &
pid=$!
wait_s=$(python3 -c "import random; print(round(random.Random($SEED).uniform(60, 170), 1))")
sleep "$wait_s"
kill -9 $pid
echo "killed after $wait_s s of wall time"
"$ROOT/.venv/bin/python" - "$E" <<'PY'
import json, sys, pathlib, torch
exp = pathlib.Path(sys.argv[1])
log = [json.loads(l) for l in open(exp / "train_log.jsonl")]
last = max(r["wall_time"] for r in log if r["kind"] == "train")
ckpts = sorted(exp.glob("checkpoint-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
clock = torch.load(ckpts[-1], weights_only=True)["clock"]
print(f"checkpoints left: {[p.name for p in ckpts]}; newest at update {clock['step']}, "
      f"{clock['wall_time']:.1f} s of training; last logged training clock {last:.1f} s: "
      f"the checkpoint is at least {last - clock['wall_time']:.1f} s of training old")
PY
start=$(date +%s)
"${CMD[@]}" > "$E.log2" 2>&1
echo "rerun finished in $(( $(date +%s) - start )) s: $(cat $E/train.done)"
grep "resumed from" "$E.log2" | sed 's/.*INFO //'
