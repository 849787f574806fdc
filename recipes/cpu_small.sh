#!/usr/bin/env bash
# CPU-scale reproduction of the paper's pipeline, end to end, on the embedded corpus.
#
#   make install && recipes/cpu_small.sh            # -> runs/cpu_small/report/report.md
#
# What it does and what each step costs here (2 CPU cores, cpu-small = 6 layers x 256 wide,
# context 256, ~3,000 tokens/s with bf16 autocast + torch.compile):
#   1. prepare  the embedded books corpus -> GPT-2 token shards          ~10 s, once
#   2. train    10 runs x STEPS steps x 4,096 tokens (120 steps = 492k tokens, ~3-4 min each):
#               the sweep (baseline and a full cut at layers 2, 4, 6; seeds 1 and 2), then
#               the learnable gate and gate-hard (seed 1)                     ~35-40 min
#   3. eval     6 runs on the tiny self-written local tasks in tests/data/tasks (hub
#               benchmarks cannot be fetched offline; see docs/evaluation.md)  ~20 s each
#   4. analyze  the causal shift in the trained runs (64 wiki sequences)  ~1-2 min
#               and, with PRETRAINED=1 (default), in the embedded Gemma 3 270M ~3-4 min
#   5. report   report.md + report.html from the result files            ~10 s
# Total: about 50 minutes. Re-running the script skips finished steps and resumes an
# interrupted training run. Knobs (environment): OUT, STEPS, PRESET, LAYERS, SEEDS, TASKS,
# SEQ_LEN, PRETRAINED, CS. Smoke test in ~3 min: PRESET=tiny STEPS=10 LAYERS=1,2 SEQ_LEN=32
# PRETRAINED=0.
set -euo pipefail
cd "$(dirname "$0")/.."

CS=${CS:-.venv/bin/causalshift}
OUT=${OUT:-runs/cpu_small}
PRESET=${PRESET:-cpu-small}
STEPS=${STEPS:-120}
PRETRAINED=${PRETRAINED:-1}
TASKS=${TASKS:-cs_mc,cs_qa,cs_ppl}
LAYERS=${LAYERS:-2,4,6}  # cut layers of the sweep (cpu-small has 6 blocks)
SEEDS=${SEEDS:-1,2}
SEQ_LEN=${SEQ_LEN:-128}  # analyze: tokens per sequence (at most the runs' context)

if [ ! -x "$CS" ]; then
  echo "cpu_small.sh: $CS not found: run 'make install' first" >&2
  exit 2
fi
mkdir -p "$OUT"
log() { printf '\n== %s  [%s]\n' "$*" "$(date +%H:%M:%S)"; }

# 1. Data: tokenized once, shared by every run.
if [ ! -f "$OUT/data/meta.json" ]; then
  log "prepare: books corpus -> $OUT/data"
  "$CS" prepare --data books --out "$OUT/data" --val-tokens 262144 --force
fi

# 2. Training. The sweep (paper figure 4): the baseline and a full cut at each of LAYERS,
# for each of SEEDS; then the learnable gate and its hard variant. Finished runs
# (summary.json) are skipped and interrupted ones resumed.
log "sweep: baseline + cuts at $LAYERS, seeds $SEEDS"
"$CS" sweep --preset "$PRESET" --data "$OUT/data" --layers "$LAYERS" --seeds "$SEEDS" \
  --max-steps "$STEPS" --out "$OUT/sweep"
train() {
  local name=$1; shift
  local dir="$OUT/$name"
  if [ -f "$dir/summary.json" ]; then
    log "train $name: done already"
  elif [ -f "$dir/train_state.pt" ]; then
    log "train $name: resuming"
    "$CS" train --out "$dir" --resume --max-steps "$STEPS"
  else
    log "train $name"
    "$CS" train --preset "$PRESET" --data "$OUT/data" --max-steps "$STEPS" --out "$dir" "$@"
  fi
}
train gate-s1       --residual gate      --seed 1
train gate-hard-s1  --residual gate-hard --seed 1
FIRST_SEED=${SEEDS%%,*}
RUNS=("sweep/none-s$FIRST_SEED")
for layer in ${LAYERS//,/ }; do RUNS+=("sweep/fixed-L$layer-a0-s$FIRST_SEED"); done
RUNS+=(gate-s1 gate-hard-s1)

# 3. Zero-shot evaluation through lm-evaluation-harness: eval.json lands in each run dir.
for name in "${RUNS[@]}"; do
  if [ ! -f "$OUT/$name/eval.json" ]; then
    log "eval $name on $TASKS"
    "$CS" eval "$OUT/$name" --include-path tests/data/tasks --tasks "$TASKS" --batch-size 16
  fi
done

# 4. The causal shift in the trained models (and in a pretrained one).
if [ ! -f "$OUT/analyze_runs/results.json" ]; then
  log "analyze the trained runs"
  models=()
  for name in "${RUNS[@]}"; do
    models+=(--model "$OUT/$name")
  done
  "$CS" analyze "${models[@]}" --num-seqs 64 --seq-len "$SEQ_LEN" --out "$OUT/analyze_runs"
fi
if [ "$PRETRAINED" = 1 ] && [ ! -f "$OUT/analyze_pretrained/results.json" ]; then
  log "analyze the embedded Gemma 3 270M"
  "$CS" analyze --model gemma-3-270m --num-seqs 32 --seq-len 128 --out "$OUT/analyze_pretrained"
fi

# 5. The report, from the result files only.
log "report"
"$CS" report "$OUT" --out "$OUT/report"
echo "open $OUT/report/report.html (or report.md)"
