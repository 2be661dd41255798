#!/usr/bin/env bash
# Rebuild the tiny backbones (weights/tiny). The DINO role and the CLIP role train in two
# processes. The DINO role trains 6000 steps of batch 64 on 24000 scenes: 339 s on one H200
# (DEVICE=cuda), about 5.5 hours on one CPU thread (weights/tiny/README.md). RENDER_WORKERS
# processes render its scenes (the same scenes for any number).
# The CLIP role has three more stages, each from the previous stage's weights on 6000 newly
# rendered scenes: stages 2 and 3 (seeds 1, 2) a new cosine cycle at half the peak rate with
# the soft-threshold term; stage 4 (seed 3, 1000 steps at lr 5e-4) adds the hand prompt. Then the
# probe writes probe.json, and the objectness head is trained on the final backbones.
# Usage: scripts/pretrain.sh [OUT_DIR] (default weights/tiny).
set -euo pipefail
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cpu}
RENDER_WORKERS=${RENDER_WORKERS:-1}
OUT=${1:-weights/tiny}
STAGES="$OUT/clip_stages"
mkdir -p "$OUT" "$STAGES/1" "$STAGES/2" "$STAGES/3"
"$PY" -m training.pretrain --out "$OUT" --models dino --threads 1 --no-probe --log-every 250 \
    --n-scenes 24000 --steps 6000 --batch-size 64 --device "$DEVICE" \
    --render-workers "$RENDER_WORKERS" > "$OUT/pretrain_dino.log" 2>&1 &
dino=$!
"$PY" -m training.pretrain --out "$STAGES/1" --models clip --threads 1 --no-probe \
    --log-every 100 2>&1 | tee "$OUT/pretrain_clip.log"
"$PY" -m training.pretrain --out "$STAGES/2" --models clip --threads 1 --no-probe \
    --log-every 100 --init-from "$STAGES/1" --seed 1 --lr 1e-3 --w-threshold 1.0 \
    2>&1 | tee "$OUT/pretrain_clip_stage2.log"
"$PY" -m training.pretrain --out "$STAGES/3" --models clip --threads 1 --no-probe \
    --log-every 100 --init-from "$STAGES/2" --seed 2 --lr 1e-3 --w-threshold 1.0 \
    2>&1 | tee "$OUT/pretrain_clip_stage3.log"
"$PY" -m training.pretrain --out "$OUT" --models clip --threads 1 --no-probe \
    --log-every 100 --init-from "$STAGES/3" --seed 3 --lr 5e-4 --w-threshold 1.0 \
    --w-hand 1.0 --steps 1000 2>&1 | tee "$OUT/pretrain_clip_stage4.log"
rm -rf "$STAGES"
wait "$dino" || { echo "DINO-role pretraining failed; see $OUT/pretrain_dino.log" >&2; exit 1; }
"$PY" -m training.probes.backbone --weights-dir "$OUT" --out "$OUT/probe.json"
# The objectness head of the new backbones (frames with and without an object, hard clutter
# mined from 40000 more; about 30 minutes on two CPU cores).
"$PY" -m training.pretrain.objectness --weights-dir "$OUT" --no-progress \
    2>&1 | tee "$OUT/pretrain_objectness.log"
