#!/usr/bin/env bash
# CPU-scale reproduction of the paper's pipeline, end to end, on the embedded corpus.
#
#   make install && recipes/cpu_small.sh            # -> runs/cpu_small/report/report.md
#
# What it does and what each step costs here (2 CPU cores, cpu-small = 6 layers x 256 wide,
# context 256, ~3,000 tokens/s with bf16 autocast + torch.compile):
#   1. prepare  the embedded books corpus -> GPT-2 token shards          ~1-2 min, once
#   2. train    6 runs x STEPS steps x 4,096 tokens (150 steps = 614k tokens)
#               baseline (seeds 1, 2), full cut at layer 2 and at layer 5, gate, gate-hard
#                                                                      ~4-6 min each, ~30 min
#   3. eval     each run on the tiny self-written local tasks in tests/data/tasks (hub
#               benchmarks cannot be fetched offline; see docs/evaluation.md)  ~20 s each
#   4. analyze  the causal shift in the trained runs (64 wiki sequences)  ~1 min
#               and, with PRETRAINED=1 (default), in the embedded Gemma 3 270M ~2-4 min
#   5. report   report.md + report.html from the result files            ~10 s
# Total: about 40 minutes. Re-running the script skips finished steps and resumes an
# interrupted training run. Knobs (environment): OUT, STEPS, PRESET, EARLY, LATE, TASKS,
# SEQ_LEN, PRETRAINED, CS. Smoke test in ~3 min: PRESET=tiny STEPS=10 EARLY=1 LATE=2 SEQ_LEN=64
# PRETRAINED=0.
set -euo pipefail
cd "$(dirname "$0")/.."

CS=${CS:-.venv/bin/causalshift}
OUT=${OUT:-runs/cpu_small}
PRESET=${PRESET:-cpu-small}
STEPS=${STEPS:-150}
PRETRAINED=${PRETRAINED:-1}
TASKS=${TASKS:-cs_mc,cs_qa,cs_ppl}
EARLY=${EARLY:-2}   # cut layers of the two fixed-cut runs (cpu-small has 6 blocks)
LATE=${LATE:-5}
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

# 2. Training. A finished run has summary.json; an interrupted one resumes.
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
train none-s1       --residual none      --seed 1
train none-s2       --residual none      --seed 2
train "fixed-L$EARLY-s1" --residual fixed --cut-layer "$EARLY" --seed 1
train "fixed-L$LATE-s1"  --residual fixed --cut-layer "$LATE" --seed 1
train gate-s1       --residual gate      --seed 1
train gate-hard-s1  --residual gate-hard --seed 1
RUNS=(none-s1 none-s2 "fixed-L$EARLY-s1" "fixed-L$LATE-s1" gate-s1 gate-hard-s1)

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
  for name in none-s1 "fixed-L$EARLY-s1" "fixed-L$LATE-s1" gate-s1 gate-hard-s1; do
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
