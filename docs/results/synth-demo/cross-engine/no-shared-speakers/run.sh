#!/usr/bin/env bash
# Probe: is festival read through the speakers flite shares with it? The HELDOUT=festival corpus with
# flite's kal, kal16 and slt taken out of the draw (flite keeps its third of the speakers, in awb and
# rms): the same dev-festival audio as the other v2 rows. Run from the repository root.
set -euo pipefail
DATA=$PWD/data/synth/demo-xfestival-no-shared
.venv/bin/python - "$DATA/corpus" <<'PY'
import sys

from imputer_asr.cli import main
from imputer_asr.data.synth import voices

shared = {"kal", "kal16", "slt"}  # flite voices recorded by festival's kal and slt speakers
every = voices.list_timbres
voices.list_timbres = lambda: tuple(t for t in every() if not (t.engine == "flite" and t.voice in shared))
sys.exit(main(["synth-corpus", "--out-dir", sys.argv[1], "--seed", "0", "--jobs", "2",
      "--train-utts", "4000", "--train-speakers", "200", "--dev-utts", "300", "--dev-speakers", "20",
      "--test-utts", "300", "--test-speakers", "20", "--heldout-engine", "festival"]))
PY
make -C recipes/synth HELDOUT=festival DATA="$DATA" EXP=exp-xfestival-no-shared score-ctc score-ctc-lm
