"""Node end-to-end latency against the predictor's own time on the same frames.

One run: (1) the predictor in this process on the synthetic frames the self-test sends
(``set_image`` + ``predict``); (2) ``affordance_node`` in its own process fed those frames over
DDS by a client process (``affordance_ros.selftest``), measuring image stamp to heatmap
reception. Prints ``ratio_e2e_over_predictor`` (target <= 1.10) and, since on a 2-core machine
the client process competes with the node for the CPU, also the ratio over the predictor
time the node itself reports in its diagnostics. Needs the messages (``make msgs``).

``--checkpoint`` takes a trained model (``make demo`` writes tiny ones). ``--model paper``
instead writes random paper-tier backbones in their upstream file formats and random heads
to a temporary folder and measures those (latency does not depend on weight values). Keep
``--rate`` below the frame rate the predictor sustains, or frames wait for the busy model and
the latency measures the wait.

``--device`` and ``--backend`` (torch | onnxruntime) apply to both the predictor measured here
and the node (its parameters of the same names), so the ratio compares like with like.

Usage: python bench/bench_node.py (--checkpoint RUN/model.pt [--weights-dir W] | --model paper)
       [--seconds 8] [--rate 5] [--image-size 160] [--cpu-threads N] [--device cpu|cuda]
       [--backend torch|onnxruntime]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from affordance_core.predictor import AffordancePredictor
from affordance_core.synthetic.world import OBJECTS, list_actions, render_scene
from affordance_ros.selftest import run_node_selftest


def write_random_paper_model(folder: Path) -> tuple[Path, Path]:
    """Random DINO ViT-S/16 and CLIP ViT-B/16 files in the upstream formats, plus random heads.

    Returns:
        (checkpoint path, weights folder).
    """
    import open_clip
    import timm

    from affordance_core import create_model
    from affordance_core.checkpoint import save_model

    torch.manual_seed(0)
    weights = folder / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), weights / "dino_deitsmall16_pretrain.pth")
    clip = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    torch.save(clip.state_dict(), weights / "ViT-B-16.pt")
    vocabulary = sorted({a for obj in OBJECTS for a in list_actions(obj)})
    model = create_model("paper", vocabulary=vocabulary, weights_dir=weights)
    return save_model(folder / "model.pt", model), weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument(
        "--model",
        choices=["paper"],
        help="measure random paper-tier weights written to a temporary folder",
    )
    parser.add_argument("--weights-dir")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=0,
        help="torch threads, here and in the node (node parameter cpu_threads); "
        "0 = torch's default",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    args = parser.parse_args()
    if args.cpu_threads > 0:
        torch.set_num_threads(args.cpu_threads)

    tmp = None
    checkpoint, weights_dir = args.checkpoint, args.weights_dir
    if args.model == "paper":
        tmp = tempfile.TemporaryDirectory(prefix="bench_node_paper_")
        ckpt_path, weights_path = write_random_paper_model(Path(tmp.name))
        checkpoint, weights_dir = str(ckpt_path), str(weights_path)

    onnx_cache = tempfile.TemporaryDirectory(prefix="bench_node_onnx_")
    os.environ["AFFORDANCE_ONNX_CACHE"] = onnx_cache.name  # shared with the node
    predictor = AffordancePredictor.from_checkpoint(
        checkpoint, weights_dir=weights_dir, device=args.device, backend=args.backend
    )
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rng = np.random.default_rng(0)
    frames = [render_scene(rng, obj, size=args.image_size, view="ego").image for obj in OBJECTS]
    action = predictor.vocabulary[0]
    predictor(frames[0], action)  # warm-up
    start = time.perf_counter()
    for frame in frames:
        predictor(frame, action)
    sync()
    predictor_ms = (time.perf_counter() - start) / len(frames) * 1000.0
    del predictor

    node = run_node_selftest(
        checkpoint,
        seconds=args.seconds,
        rate=args.rate,
        weights_dir=weights_dir,
        image_size=args.image_size,
        node_params={
            "cpu_threads": args.cpu_threads,
            "device": args.device,
            "backend": args.backend,
        },
    )
    e2e = node.get("latency_ms", {}).get("median", float("nan"))
    in_node = float(node.get("diagnostics", {}).get("predictor_ms_mean") or "nan")
    print(
        json.dumps(
            {
                "model": args.model or "checkpoint",
                "predictor_ms": round(predictor_ms, 2),
                "node_e2e_median_ms": e2e,
                "node_e2e_p95_ms": node.get("latency_ms", {}).get("p95"),
                "node_predictor_ms": in_node,
                "ratio_e2e_over_predictor": round(e2e / predictor_ms, 3),
                "ratio_e2e_over_node_predictor": round(e2e / in_node, 3),
                "frames_sent": node.get("frames_sent"),
                "heatmaps": node["received"]["heatmap"],
                "dropped": node.get("diagnostics", {}).get("frames_dropped"),
                "rate_hz": args.rate,
                "image_size": args.image_size,
                "device": args.device,
                "backend": args.backend,
                "cpu_threads": args.cpu_threads or torch.get_num_threads(),
            }
        )
    )
    if tmp is not None:
        tmp.cleanup()
    onnx_cache.cleanup()


if __name__ == "__main__":
    main()
