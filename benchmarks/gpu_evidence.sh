#!/usr/bin/env bash
# The evidence of issue 14 in one command on one GPU (H100 / H200), inside 10 minutes:
#   1. the paper's full MRPC protocol on all-MiniLM-L6-v2 with benchmarks/structures.py: 20 epochs of
#      search (second order, finite differences) and 20 of re-training, seeds 0-4, budgets 1e-4 2e-4
#      4e-4; the searched, random and manual structures and the PEFT LoRA / AdaLoRA peers, in WORKERS
#      parallel processes sharing the GPU (each takes every WORKERS-th run), then one report;
#   2. python benchmarks/step_cost.py --preset gpu (the search step against a re-training step).
# It writes OUT/evidence.json (both results, the exit status of every part), OUT/structures/
# (every run's workdir, structures.json / .md, structures.png, heatmaps.png) and OUT/step_cost.json.
#
#   benchmarks/gpu_evidence.sh [--tiny] [--data MRPC_DIR] [OUT]
#
# OUT: the argument, else $OUT (the device machine's output folder), else runs/gpu_evidence.
# MRPC_DIR: GLUE's MRPC files (train.tsv, validation.tsv, test.tsv); default ../shared/data/glue/MRPC.
# --tiny: the same pipeline on a CPU in about a minute: a tiny random BERT (hidden 32, 1 layer),
# 2-3 steps per run, a first-order search of the LoRA space, seeds 0 1, budgets 1e-4 2e-4, LNFit, LoRA
# and the linear probe as the manual structures, 2 workers, step_cost's tiny case, XLA's quick CPU
# compilation (compiling is most of such a run); tests/benchmarks/test_structures.py runs it.
# Time limits (seconds, environment): STRUCTURES_SECONDS (default 420) for part 1, STEP_COST_SECONDS
# (default 150) for part 2; a part cut short leaves its finished runs, and re-running the same
# command resumes it. Needs `pip install -e '.[evidence]'` and a CUDA build of jax and torch.
set -uo pipefail
cd "$(dirname "$0")/.."

TINY=0
DATA=../shared/data/glue/MRPC
OUT_DIR=
while (($#)); do
  case "$1" in
    --tiny) TINY=1 ;;
    --data) DATA=$2; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) OUT_DIR=$1 ;;
  esac
  shift
done
OUT_DIR=${OUT_DIR:-${OUT:-runs/gpu_evidence}}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT_DIR/xla-cache}
STARTED=$SECONDS

STRUCTURES=(python benchmarks/structures.py --config configs/mrpc.py:minilm --out "$OUT_DIR/structures"
            "--config.data.path=$DATA")
if ((TINY)); then
  WORKERS=${WORKERS:-2}
  export XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true ${XLA_FLAGS:-}"
  STRUCTURES+=(--seeds 0 1 --budgets 1e-4 2e-4 --manual lnfit lora_qv_r1 linear_probe
               --config.model.random_init=true --config.model.config_overrides.hidden_size=32
               --config.model.config_overrides.num_hidden_layers=1 --config.model.config_overrides.num_attention_heads=4
               --config.model.config_overrides.intermediate_size=64 --config.data.max_source_length=32
               --config.search.space=s3pet_lora --config.search.estimator=first_order --config.search.max_steps=2 --config.search.eval_every=2
               --config.retrain.max_steps=3 --config.retrain.eval_every=2)
  STEP_COST=(--preset cpu-quick --model tiny --steps 2 --warmup 1 --estimators first_order --no-profile --no-peer)
else
  WORKERS=${WORKERS:-8}
  STRUCTURES+=(--seeds 0 1 2 3 4 --budgets 1e-4 2e-4 4e-4
               --config.search.epochs=20 --config.retrain.epochs=20 --config.search.estimator=second_order_fd
               --config.data.max_source_length=128 --config.retrain.group_batches=0)  # the paper's, not the CPU quick start's
  STEP_COST=(--preset gpu)
fi

# Part 1: the runs, WORKERS processes at once, each cut at STRUCTURES_SECONDS; then the report.
mkdir -p "$OUT_DIR/logs"
pids=()
for ((i = 0; i < WORKERS; i++)); do
  timeout "${STRUCTURES_SECONDS:-420}" "${STRUCTURES[@]}" --shard "$i/$WORKERS" > "$OUT_DIR/logs/shard$i.log" 2>&1 &
  pids+=($!)
done
shard_status=()
for pid in "${pids[@]}"; do
  wait "$pid"
  shard_status+=($?)
done
"${STRUCTURES[@]}" --report-only > "$OUT_DIR/structures.md" 2> "$OUT_DIR/logs/report.log"
report_status=$?
structures_seconds=$((SECONDS - STARTED))

# Part 2: the step cost (benchmarks/step_cost.py, maintained with its own README section).
timeout "${STEP_COST_SECONDS:-150}" python benchmarks/step_cost.py "${STEP_COST[@]}" --json "$OUT_DIR/step_cost.json" \
  > "$OUT_DIR/logs/step_cost.log" 2>&1
step_cost_status=$?

python - "$OUT_DIR" "$TINY" "${shard_status[*]}" "$report_status" "$step_cost_status" "$structures_seconds" \
  "$((SECONDS - STARTED))" <<'EOF'
import json, os, sys

out, tiny, shards, report, step_cost, structures_seconds, total = sys.argv[1:]


def load(path):
    return json.load(open(path)) if os.path.isfile(path) else None


def tail(path, lines=20):
    return open(path).read().splitlines()[-lines:] if os.path.isfile(path) else []


evidence = {
    "tiny": tiny == "1",
    "structures": {"shard_exit_codes": [int(s) for s in shards.split()], "report_exit_code": int(report),
                   "wall_seconds": int(structures_seconds), "report": load(os.path.join(out, "structures", "structures.json")),
                   "log_tail": tail(os.path.join(out, "logs", "report.log"))},
    "step_cost": {"exit_code": int(step_cost), "result": load(os.path.join(out, "step_cost.json")),
                  "log_tail": tail(os.path.join(out, "logs", "step_cost.log"))},
    "wall_seconds": int(total),
}
json.dump(evidence, open(os.path.join(out, "evidence.json"), "w"), indent=1)
EOF
cat "$OUT_DIR/structures.md"
echo "shards: ${shard_status[*]}, report: $report_status, step_cost: $step_cost_status; $((SECONDS - STARTED)) s; wrote $OUT_DIR/evidence.json"
