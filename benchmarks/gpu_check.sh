#!/usr/bin/env bash
# GPU check of the LibriSpeech 100h config: a few hundred bf16 training steps on synthesized
# batches; prints seconds of audio per second and peak GPU memory. Needs a CUDA GPU.
#
#   benchmarks/gpu_check.sh                 # 300 steps of recipes/librispeech/conf/ctc-100h.json
#   benchmarks/gpu_check.sh 500 recipes/librispeech/conf/ctc-960h.json
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
config=${2:-recipes/librispeech/conf/ctc-100h.json}
python=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
PYTHONPATH=. "$python" benchmarks/gpu_check.py --config "$config" --steps "$steps"
