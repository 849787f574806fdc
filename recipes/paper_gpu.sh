#!/usr/bin/env bash
# The paper end to end on one 8-GPU node: GPT-2 124M on 10B FineWeb tokens, baseline vs
# fixed residual cuts vs the learned gate, zero-shot benchmarks, the causal shift, report.
#
#   make install            # with your CUDA torch already in .venv (see README)
#   recipes/paper_gpu.sh    # -> runs/paper/report/report.md
#
# Costs (estimates for 8x A100/H100 80GB; GPT-2 124M in bf16 + torch.compile moves about
# 1.5M tokens/s on 8x A100 and 2.5-3M on 8x H100, nanoGPT-class code):
#   1. prepare  FineWeb sample-10BT: ~28 GB parquet download + GPT-2 BPE over 10B tokens
#               (~20 GB of uint16 shards)                                    ~1-2 h, CPU
#   2. train    one run = 10B tokens = 19,073 steps of 524,288 tokens       ~1-2 h / run
#               baseline + a full cut at each layer in CUT_LAYERS (12 by default: the
#               paper's figure 4) + gate + gate-hard = 15 runs             ~15-30 h total
#               (CUT_LAYERS="4 8 11" keeps figure 4's shape for a fifth of the cost)
#   3. eval     the 8 zero-shot tasks per run, data parallel over the GPUs  ~5-10 min / run
#   4. analyze  the trained runs + the paper's pretrained models on 1,000 Wikitext
#               sequences (Mistral-7B bf16 fits one 80 GB GPU)             ~10-20 min
#   5. report   from the result files                                      seconds
# Needs the network (FineWeb, lm-eval datasets and the pretrained models from the Hugging
# Face hub; Gemma and Llama are gated: `huggingface-cli login` first).
# Re-running skips finished steps and resumes an interrupted run (--resume).
set -euo pipefail
cd "$(dirname "$0")/.."

CS=${CS:-.venv/bin/causalshift}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/paper}
NGPU=${NGPU:-8}
DATA_SPEC=${DATA_SPEC:-hf:HuggingFaceFW/fineweb:sample-10BT:train}  # or a local .parquet
CUT_LAYERS=${CUT_LAYERS:-1 2 3 4 5 6 7 8 9 10 11 12}
SEEDS=${SEEDS:-1}
TASKS=${TASKS:-hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada_openai,sciq,openbookqa}
PRETRAINED=${PRETRAINED:-google/gemma-2-2b meta-llama/Llama-3.2-3B mistralai/Mistral-7B-v0.3}
EXTRA_TRAIN_ARGS=${EXTRA_TRAIN_ARGS:-}   # e.g. "--max-steps 2000" for a quick pass
PRESET=${PRESET:-gpt2-124m}
EVAL_ARGS=${EVAL_ARGS:-}   # e.g. "--limit 200" or "--include-path tests/data/tasks"

if [ ! -x "$CS" ]; then
  echo "paper_gpu.sh: $CS not found: run 'make install' first" >&2
  exit 2
fi
mkdir -p "$OUT"
log() { printf '\n== %s  [%s]\n' "$*" "$(date +%H:%M:%S)"; }
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU")

# 1. FineWeb -> GPT-2 token shards (train + a held-out validation split).
if [ ! -f "$OUT/fineweb10B/meta.json" ]; then
  log "prepare $DATA_SPEC"
  "$CS" prepare --data "$DATA_SPEC" --out "$OUT/fineweb10B" --force
fi

# 2. Training, one run at a time on all GPUs (DDP through torchrun).
train() {
  local name=$1; shift
  local dir="$OUT/$name"
  if [ -f "$dir/summary.json" ]; then
    log "train $name: done already"
  elif [ -f "$dir/train_state.pt" ]; then
    log "train $name: resuming"
    "${TORCHRUN[@]}" -m causalshift train --out "$dir" --resume
  else
    log "train $name"
    # shellcheck disable=SC2086
    "${TORCHRUN[@]}" -m causalshift train --preset "$PRESET" --data "$OUT/fineweb10B" \
      --out "$dir" "$@" $EXTRA_TRAIN_ARGS
  fi
}
RUNS=()
for seed in $SEEDS; do
  train "none-s$seed" --residual none --seed "$seed";            RUNS+=("none-s$seed")
  train "gate-s$seed" --residual gate --seed "$seed";            RUNS+=("gate-s$seed")
  train "gate-hard-s$seed" --residual gate-hard --seed "$seed";  RUNS+=("gate-hard-s$seed")
  for k in $CUT_LAYERS; do
    train "fixed-L$k-s$seed" --residual fixed --cut-layer "$k" --seed "$seed"
    RUNS+=("fixed-L$k-s$seed")
  done
done

# 3. Zero-shot benchmarks (documents split over the GPUs; rank 0 writes eval.json).
for name in "${RUNS[@]}"; do
  if [ ! -f "$OUT/$name/eval.json" ]; then
    log "eval $name"
    # shellcheck disable=SC2086
    "${TORCHRUN[@]}" -m causalshift eval "$OUT/$name" --tasks "$TASKS" \
      --batch-size 64 --dtype bfloat16 $EVAL_ARGS
  fi
done

# 4. The causal shift: the pretrained models of the paper, and our trained runs.
if [ -n "$PRETRAINED" ] && [ ! -f "$OUT/analyze_pretrained/results.json" ]; then
  log "analyze pretrained: $PRETRAINED"
  models=(); for m in $PRETRAINED; do models+=(--model "$m"); done
  "$CS" analyze "${models[@]}" --data wikitext --num-seqs 1000 --seq-len 512 \
    --dtype bfloat16 --out "$OUT/analyze_pretrained"
fi
if [ ! -f "$OUT/analyze_runs/results.json" ]; then
  log "analyze the trained runs"
  models=(); for name in "${RUNS[@]}"; do models+=(--model "$OUT/$name"); done
  "$CS" analyze "${models[@]}" --data wikitext --num-seqs 1000 --seq-len 512 \
    --out "$OUT/analyze_runs"
fi

# 5. The report, from the result files only.
log "report"
"$CS" report "$OUT" --out "$OUT/report"
echo "open $OUT/report/report.html (or report.md)"
