"""Inference cost per frame: predictor time against the two backbone forwards alone.

Measured in one run on the same frames, so the ratios hold even on a noisy machine:

* ``backbones_ms``: DINO forward + CLIP dense image forward (the irreducible cost), through
  the same (optionally compiled) function the predictor calls;
* ``predictor_ms``: ``AffordancePredictor.set_image`` + ``predict`` for one action;
* ``ratio_predictor_over_backbones`` (target <= 1.05), from per-frame medians with the two
  measurements alternating frame by frame;
* frames per second with 1, 4 and 8 action words per frame (one backbone pass each).

Backbone weights are random (inference cost does not depend on their values); the paper tier
has the real architectures (DINO ViT-S/16, CLIP ViT-B/16 at 224 px).

Usage: python bench/bench_inference.py [--model paper|tiny] [--frames N] [--device cpu|cuda]
       [--half] [--compile]
Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from affordance_core import create_model
from affordance_core.predictor import AffordancePredictor

VOCAB = ["hold", "cut_with", "pour", "sit_on", "ride", "drink_with", "hit", "swing",
         "type_on", "open"]


def _timed(fn, frames, sync) -> float:
    start = time.perf_counter()
    for frame in frames:
        fn(frame)
    sync()
    return (time.perf_counter() - start) / len(frames) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--half", action="store_true",
                        help="autocast: float16 on CUDA, bfloat16 on CPU")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the backbone pass (compilation excluded from timing)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model, vocabulary=VOCAB, pretrained=False).to(args.device)
    predictor = AffordancePredictor(model, device=args.device, half=args.half,
                                    compile=args.compile)
    extract = predictor._extract
    rng = np.random.default_rng(0)
    frames = [(rng.random((480, 640, 3)) * 255).astype(np.uint8) for _ in range(args.frames)]
    tensors = [predictor.image_tensor(f) for f in frames]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def backbones(t: torch.Tensor) -> None:
        with torch.inference_mode(), predictor._autocast():
            extract(t)

    def predict(actions):
        def run(frame: np.ndarray) -> None:
            predictor.set_image(frame)
            predictor.predict(actions)
        return run

    backbones(tensors[0])                        # warm-up
    predict(VOCAB[:1])(frames[0])
    results = {}
    # Alternate the two measurements frame by frame, so drift in machine load hits both alike,
    # and report medians (a noisy neighbour shows up as outliers, not as a shifted mean).
    bb, pr = [], []
    for _ in range(2):
        for frame, tensor in zip(frames, tensors):
            bb.append(_timed(backbones, [tensor], sync))
            pr.append(_timed(predict(VOCAB[:1]), [frame], sync))
    results["backbones_ms"] = round(float(np.median(bb)), 2)
    results["predictor_ms"] = round(float(np.median(pr)), 2)
    results["ratio_predictor_over_backbones"] = round(float(np.median(pr) / np.median(bb)), 3)
    for n in (1, 4, 8):
        ms = _timed(predict(VOCAB[:n]), frames, sync)
        results[f"fps_{n}_actions"] = round(1000.0 / ms, 2)
    results.update(model=args.model, device=args.device, half=args.half, compile=args.compile,
                   frames=args.frames, threads=torch.get_num_threads())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
