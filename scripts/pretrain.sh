#!/usr/bin/env bash
# Rebuild the tiny backbones (weights/tiny): the DINO and CLIP roles train in two processes
# (same batches and seeds as one joint run, see training/pretrain.py), then the probe
# writes probe.json. Usage: scripts/pretrain.sh [OUT_DIR] (default weights/tiny).
set -euo pipefail
PY=${PYTHON:-python}
OUT=${1:-weights/tiny}
mkdir -p "$OUT"
"$PY" -m training.pretrain --out "$OUT" --models dino --threads 1 --no-probe --log-every 100 \
    > "$OUT/pretrain_dino.log" 2>&1 &
dino=$!
"$PY" -m training.pretrain --out "$OUT" --models clip --threads 1 --no-probe --log-every 100 \
    2>&1 | tee "$OUT/pretrain_clip.log"
wait "$dino" || { echo "DINO-role pretraining failed; see $OUT/pretrain_dino.log" >&2; exit 1; }
"$PY" -m training.backbone_probe --weights-dir "$OUT" --out "$OUT/probe.json"
