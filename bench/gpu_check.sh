#!/usr/bin/env bash
# The GPU figures docs/benchmarks.md lacks, in one run of under 8 minutes on one GPU:
# analyze throughput and bf16-peak fraction on a Gemma-2-2B-shaped random model, gpt2-124m
# training tokens/s and MFU for `none` and `gate`, and `causalshift eval` on the local tasks,
# printed as `[gpu_check] ...` lines and written as JSON (bench/gpu_check.py has the details).
#
#   bench/gpu_check.sh                      # on CUDA
#   bench/gpu_check.sh --device cpu         # tiny sizes: what the test suite runs
#   bench/gpu_check.sh --out /tmp/gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m bench.gpu_check "$@"
