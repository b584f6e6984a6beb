#!/usr/bin/env bash
# Probe: the demo CTC recipe trained on pocketsphinx's phone recognition instead of fbank
# (phone_features.py), on the no-shared-speakers corpus (festival held out, no flite voice of
# festival's speakers; ../no-shared-speakers/run.sh renders it). Run from the repository root.
set -euo pipefail
DATA=$PWD/data/synth/demo-xfestival-no-shared
HERE=docs/results/synth-demo/cross-engine/phone-stream
[ -f "$DATA/phones/.done" ] || .venv/bin/python $HERE/phone_features.py "$DATA/fbank" "$DATA/phones" --jobs 2
make -C recipes/synth HELDOUT=festival DATA="$DATA" FBANK="$DATA/phones" EXP=exp-xfestival-no-shared-phones \
  score-ctc score-ctc-lm
