"""Node end-to-end latency against the predictor's own time on the same frames.

One run: (1) the predictor in this process on the synthetic frames the self-test sends
(``set_image`` + ``predict``); (2) ``affordance_node`` in its own process fed those frames over
DDS by a client process (``affordance_ros.selftest``), measuring image stamp to heatmap
reception. Prints ``ratio_e2e_over_predictor`` (target <= 1.10) and, since on a 2-core machine
the client process competes with the node for the CPU, also the ratio over the predictor
time the node itself reports in its diagnostics. Needs the messages (``make msgs``).

Usage: python bench/bench_node.py --checkpoint RUN/model.pt [--weights-dir W] [--seconds 8]
       [--rate 5] [--image-size 160]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from affordance_core.predictor import AffordancePredictor
from affordance_core.synthetic.world import OBJECTS, render_scene
from affordance_ros.selftest import run_node_selftest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--weights-dir")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--image-size", type=int, default=160)
    args = parser.parse_args()

    predictor = AffordancePredictor.from_checkpoint(args.checkpoint, weights_dir=args.weights_dir)
    rng = np.random.default_rng(0)
    frames = [render_scene(rng, obj, size=args.image_size, view="ego").image for obj in OBJECTS]
    action = predictor.vocabulary[0]
    predictor(frames[0], action)                                     # warm-up
    start = time.perf_counter()
    for frame in frames:
        predictor(frame, action)
    predictor_ms = (time.perf_counter() - start) / len(frames) * 1000.0

    node = run_node_selftest(args.checkpoint, seconds=args.seconds, rate=args.rate,
                             weights_dir=args.weights_dir, image_size=args.image_size)
    e2e = node.get("latency_ms", {}).get("median", float("nan"))
    in_node = float(node.get("diagnostics", {}).get("predictor_ms_mean") or "nan")
    print(json.dumps({
        "predictor_ms": round(predictor_ms, 2),
        "node_e2e_median_ms": e2e,
        "node_e2e_p95_ms": node.get("latency_ms", {}).get("p95"),
        "node_predictor_ms": in_node,
        "ratio_e2e_over_predictor": round(e2e / predictor_ms, 3),
        "ratio_e2e_over_node_predictor": round(e2e / in_node, 3),
        "frames_sent": node.get("frames_sent"), "heatmaps": node["received"]["heatmap"],
        "rate_hz": args.rate, "image_size": args.image_size}))


if __name__ == "__main__":
    main()
