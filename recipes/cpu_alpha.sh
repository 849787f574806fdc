#!/usr/bin/env bash
# A CPU study of where and how much to cut: every layer of cpu-small x alpha in {0, 0.5},
# seeds 1 and 2, the baseline and the learnable gate per seed; paired intervals over seeds.
#
#   make install && recipes/cpu_alpha.sh          # -> docs/results/cpu_alpha/report.md
#
# What it costs: 28 training runs (per seed: the baseline, 6 layers x 2 alphas, the gate) of
# 120 steps x 8 x 128 = 123k tokens each (cpu-small's 6 x 256 model on 128-token windows,
# eager, bf16 autocast where the CPU has it), then a report from the result files (~10 s).
# Measured on 2 cores shared with four other jobs: 4.2 to 11 minutes per run (566 down to
# 218 training tokens/s), so 2 to 5 hours for the 28; on 2 otherwise idle cores expect the
# lower end (about 2 hours). LAYERS=2,4,6 halves the cuts (16 runs). Re-running skips
# finished runs (summary.json) and resumes interrupted ones, so the study can be stopped and
# continued, and runs made earlier with the same options (one `--alpha` at a time) are reused.
# Knobs (environment): OUT, REPORT, LAYERS, ALPHAS, SEEDS, MODES, STEPS, CS.
set -euo pipefail
cd "$(dirname "$0")/.."

CS=${CS:-.venv/bin/causalshift}
OUT=${OUT:-runs/cpu_alpha}
REPORT=${REPORT:-docs/results/cpu_alpha}
LAYERS=${LAYERS:-all}
ALPHAS=${ALPHAS:-0,0.5}
SEEDS=${SEEDS:-1,2}
MODES=${MODES:-gate}
STEPS=${STEPS:-120}
# Every run's training options (the same as the study's first runs, so those are reused):
# 8 x 128-token windows per step, eager (compiling costs more than it saves in 120 steps),
# a 12-step warmup, validation on 10 batches every 40 steps.
TRAIN_ARGS="--block-size 128 --batch-size 8 --no-compile --warmup-steps 12 --eval-interval 40 --eval-iters 10 --no-progress"

if [ ! -x "$CS" ]; then
  echo "cpu_alpha.sh: $CS not found: run 'make install' first" >&2
  exit 2
fi
log() { printf '\n== %s  [%s]\n' "$*" "$(date +%H:%M:%S)"; }

log "sweep: layers $LAYERS x alpha $ALPHAS x seeds $SEEDS, baseline and $MODES per seed"
"$CS" sweep --preset cpu-small --out "$OUT" --layers "$LAYERS" --alpha "$ALPHAS" \
  --seeds "$SEEDS" --modes "$MODES" --max-steps "$STEPS" --train-args "$TRAIN_ARGS"

log "report -> $REPORT"
"$CS" report "$OUT" --out "$REPORT"
echo "open $REPORT/report.md: the heatmap (val_loss_heatmap.png) and the best cut against the gate"
