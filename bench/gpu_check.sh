#!/usr/bin/env bash
# One prepared check for a machine with a CUDA GPU; the whole run is bounded by 8 minutes.
#
# Stages, in order, each under its own time limit (cut to what is left of the total budget):
#   tests      pytest -m cuda (the CUDA-marked tests of `make test`)
#   train      affordance-train, tiny tier, 50 steps, SelectiveCL, AMP (train.amp=true) and the
#              feature cache, on a small synthetic corpus (the demo's generator, --quick size)
#   infer_tiny bench/bench_inference.py --model tiny  on CUDA: torch fp32 / fp16 / compile,
#   infer_paper bench/bench_inference.py --model paper   ONNX Runtime CUDA / TensorRT (fp32, fp16)
#   node       bench/bench_node.py --model paper --device cuda (node end to end / predictor)
# Peak GPU memory: nvidia-smi memory.used sampled every 0.5 s over each stage (all processes
# on the GPU), plus torch's max_memory_allocated where a stage reports it.
#
# GPU_CHECK_BUDGET_S overrides the 480 s total (the CPU plumbing run on a loaded 2-core
# machine needs more).
# Without a CUDA device every CUDA stage is skipped (reason recorded) and the script exits 0.
# --force-cpu runs the stages on the CPU (paper-tier inference left out), to check the
# plumbing (test/test_gpu_check.py does, with --quick); --quick shrinks every stage.
#
# Usage: bash bench/gpu_check.sh [--quick] [--force-cpu] [--out DIR]
#        (after `make msgs`; PY overrides the interpreter, default .venv/bin/python)
# Last line: one JSON object {"cuda", "gpu", "stages": {name: {"rc", "wall_s", "result" |
#        "skipped" | "error"}}, "peak_gpu_memory_mib", "total_s", "budget_s"}.
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=outputs/gpu_check
QUICK=0
FORCE_CPU=0
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --force-cpu) FORCE_CPU=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --quick, --force-cpu, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
START=$(date +%s)

if [ ! -x "$PY" ]; then
  echo "gpu_check.sh: $PY not found; run 'make msgs' first (or set PY=...)" >&2
  exit 2
fi

CUDA=$("$PY" -c "import torch; print('true' if torch.cuda.is_available() else 'false')" 2>/dev/null || echo false)
GPU=none
if [ "$CUDA" = true ]; then
  GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
fi
if [ "$FORCE_CPU" = 1 ]; then DEVICE=cpu; RUN=1; elif [ "$CUDA" = true ]; then DEVICE=cuda; RUN=1; else DEVICE=cpu; RUN=0; fi
echo "gpu_check: cuda=$CUDA gpu=$GPU device=$DEVICE quick=$QUICK out=$OUT"

STAGES_FILE="$OUT/stages.jsonl"
: > "$STAGES_FILE"

# record NAME JSON-FIELDS: append one stage record
record() { echo "{\"name\": \"$1\", $2}" >> "$STAGES_FILE"; }

# sample_gpu_memory FILE: background sampler of nvidia-smi memory.used (MiB); prints its pid
sample_gpu_memory() {
  if command -v nvidia-smi >/dev/null 2>&1 && [ "$DEVICE" = cuda ]; then
    ( while true; do
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1
        sleep 0.5
      done ) > "$1" &
    echo $!
  else
    echo ""
  fi
}

# stage NAME CAP_SECONDS CMD...: run CMD with a time limit, log to OUT/NAME.log, keep its
# last stdout line if it is a JSON object.
stage() {
  local name=$1 cap=$2; shift 2
  if [ "$RUN" = 0 ]; then
    record "$name" "\"skipped\": \"no CUDA device (torch.cuda.is_available() is False)\""
    echo "gpu_check: $name skipped (no CUDA device)"
    return
  fi
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 10 ]; then
    record "$name" "\"skipped\": \"total budget of ${BUDGET_S} s used up\""
    echo "gpu_check: $name skipped (budget used up)"
    return
  fi
  echo "gpu_check: $name (limit ${limit} s): $*"
  local memfile="$OUT/$name.mem" sampler
  sampler=$(sample_gpu_memory "$memfile")
  local t0 rc
  t0=$(date +%s.%N)
  timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local wall
  wall=$("$PY" -c "import time,sys; print(round(time.time()-float(sys.argv[1]),1))" "$t0")
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  local peak=null
  if [ -s "$memfile" ]; then peak=$(sort -n "$memfile" | tail -1); fi
  local last
  last=$(tail -n 1 "$OUT/$name.log" | tr -d '\r')
  if [ "$rc" = 0 ] && "$PY" -c "import json,sys; json.loads(sys.argv[1])" "$last" 2>/dev/null; then
    record "$name" "\"rc\": 0, \"wall_s\": $wall, \"gpu_memory_peak_mib\": $peak, \"result\": $last"
  elif [ "$rc" = 0 ]; then
    local summary
    summary=$(tail -n 2 "$OUT/$name.log" | tr -d '\r' | "$PY" -c "import json,sys; print(json.dumps(sys.stdin.read().strip()[-400:]))")
    record "$name" "\"rc\": 0, \"wall_s\": $wall, \"gpu_memory_peak_mib\": $peak, \"summary\": $summary"
  else
    local why
    why=$(tail -n 3 "$OUT/$name.log" | tr -d '\r' | "$PY" -c "import json,sys; print(json.dumps(sys.stdin.read()[-400:]))")
    [ "$rc" = 124 ] && why="\"timed out after ${limit} s\""
    record "$name" "\"rc\": $rc, \"wall_s\": $wall, \"gpu_memory_peak_mib\": $peak, \"error\": $why"
  fi
  echo "gpu_check: $name rc=$rc wall=${wall}s"
}

CORPUS="b['corpus']"          # the demo's --quick corpus
if [ "$QUICK" = 1 ]; then
  CORPUS="{'n_exo_per_pair': 1, 'n_ego_per_pair': 1, 'n_test_per_pair': 1}"
  ITERS=3; FRAMES=2; NODE_S=3; TEST_CAP=120; TRAIN_CAP=200; INFER_CAP=200; NODE_CAP=300
else
  ITERS=50; FRAMES=20; NODE_S=10; TEST_CAP=60; TRAIN_CAP=75; INFER_CAP=150; NODE_CAP=90
fi
if [ "$DEVICE" = cuda ]; then
  BACKENDS=""            # bench_inference's CUDA default: fp32, fp16, compile, ORT CUDA, TensorRT
else
  BACKENDS="--backends torch,onnxruntime"
fi

stage tests "$TEST_CAP" "$PY" -m pytest test -m cuda -q -p no:cacheprovider
# (pytest prints no JSON line: the record keeps its summary; affordance-train ends with one)
WORK="$OUT/work"
mkdir -p "$WORK"
stage train "$TRAIN_CAP" bash -c "
  '$PY' -c \"from pathlib import Path; from training.demo import demo_budget, make_corpus; b = demo_budget(True); b['corpus'] = $CORPUS; make_corpus(Path('$WORK/data'), b, 0)\" >/dev/null 2>&1 &&
  rm -rf '$WORK/run' &&
  '$PY' -m training.train --data-root '$WORK/data' --split Seen --method selectivecl --model tiny \
    --out '$WORK/run' --iters $ITERS --batch-size 8 --device $DEVICE --cache-features \
    --cache-dir '$WORK/feature_cache' --num-workers 2 --set train.amp=true --no-progress"
stage infer_tiny "$INFER_CAP" "$PY" bench/bench_inference.py --model tiny --device "$DEVICE" \
  --frames "$FRAMES" $BACKENDS
if [ "$FORCE_CPU" = 1 ]; then
  record infer_paper "\"skipped\": \"--force-cpu: the paper tier is left to the CPU benchmarks\""
else
  stage infer_paper "$INFER_CAP" "$PY" bench/bench_inference.py --model paper --device "$DEVICE" \
    --frames "$FRAMES" $BACKENDS
fi
if [ "$QUICK" = 1 ]; then
  NODE_ARGS=(--checkpoint "$WORK/run/model.pt")     # the tiny model trained above
else
  NODE_ARGS=(--model paper)
fi
stage node "$NODE_CAP" "$PY" bench/bench_node.py "${NODE_ARGS[@]}" --device "$DEVICE" \
  --seconds "$NODE_S" --rate 5

TOTAL=$(( $(date +%s) - START ))
"$PY" - "$STAGES_FILE" "$CUDA" "$GPU" "$TOTAL" "$BUDGET_S" "$DEVICE" <<'EOF'
import json, sys
path, cuda, gpu, total, budget, device = sys.argv[1:7]
stages = {}
for line in open(path):
    rec = json.loads(line)
    stages[rec.pop("name")] = rec
peaks = [s.get("gpu_memory_peak_mib") for s in stages.values()]
peaks = [p for p in peaks if isinstance(p, (int, float))]
print(json.dumps({"cuda": cuda == "true", "gpu": gpu, "device": device, "stages": stages,
                  "peak_gpu_memory_mib": max(peaks) if peaks else None,
                  "total_s": int(total), "budget_s": int(budget)}))
EOF
