#!/bin/bash
# The demo's decoding and scoring stages, timed once on the trained models with the code and
# Makefiles of the checkout SRC (the demo's data and exp/ stay where `make demo` left them, in
# the repository this script sits in). Removes every hypothesis, score and timing file first.
#
#   git archive 912e190 | (mkdir -p /tmp/old && tar -x -C /tmp/old)   # a process per K and a score each
#   for r in 1 2; do bash ab.sh old$r /tmp/old; bash ab.sh new$r "$REPO"; done   # in turn
set -e
label=$1; src=$(cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../../../.." && pwd)
exp=$repo/recipes/synth/exp
out=${OUT:-/tmp/decode-sweep}
mkdir -p "$out"
for d in ctc ctc-matched imputer imputer-inject5; do
  rm -f $exp/$d/hyps-* $exp/$d/wer-* $exp/$d/errs-* $exp/$d/recogs-* $exp/$d/timing-*
done
cd "$src/recipes/synth"
start=$(date +%s.%N)
make ROOT="$repo" EXP="$exp" ASR="env PYTHONPATH=$src $repo/.venv/bin/python -m imputer_asr.cli" \
  score-ctc score-ctc-lm score-imputer score-imputer-lm score-imputer-inject score-imputer-lm-inject score-ctc-matched \
  > "$out/ab-$label.log" 2>&1
end=$(date +%s.%N)
procs=$(grep -c "imputer_asr.cli" "$out/ab-$label.log")
echo "$label $(echo "$end - $start" | bc) s, $procs processes"
for d in ctc ctc-matched imputer imputer-inject5; do
  mkdir -p "$out/ab-$label/$d"; cp $exp/$d/wer-*.txt $exp/$d/timing-*.json "$out/ab-$label/$d/"
done
