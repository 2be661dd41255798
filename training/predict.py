"""``affordance-predict``: affordance heat map and grasp-region mask for one image.

Usage::

    affordance-predict --checkpoint runs/x/model.pt --image mug.jpg --action hold --out mug.png
    affordance-predict --checkpoint runs/x/model.pt --image knife.jpg --action hold,cut_with \
        --out knife.png --heatmap-npy knife.npy
    affordance-predict --checkpoint runs/x/model.pt --image mug.jpg --action hold --out mug.png \
        --backend onnxruntime

``--backend onnxruntime`` runs the exported ONNX graphs in ONNX Runtime (exported on first use
into the cache ``--onnx-cache``, see :mod:`affordance_core.runtime`); the outputs match the
default ``torch`` backend (heatmaps within 1e-3, same peak and mask).

Writes the heat-map overlay to ``--out`` and the mask (0/255) to ``<out stem>_mask.png``. With
several actions (one backbone pass for all), ``--out`` holds the overlays side by side and
each mask goes to ``<out stem>_<action>_mask.png``; ``--heatmap-npy`` stores an (A, H, W)
float32 array in [0, 1] in the order of the actions. The last stdout line is a JSON object
with the score and peak pixel of every action.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from affordance_core.visualize import heatmap_overlay
from training.common import CLIError, choose_device, run_cli, setup_logging

__all__ = ["build_parser", "main"]

PROG = "affordance-predict"
logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``affordance-predict``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Predict where an action can be performed on an object image: "
        "writes a heat-map overlay PNG and a grasp-region mask PNG.",
    )
    parser.add_argument("--checkpoint", required=True, help="model file from affordance-train")
    parser.add_argument("--image", required=True, help="input image (any format OpenCV reads)")
    parser.add_argument(
        "--action",
        required=True,
        metavar="WORD[,WORD2]",
        help="action word(s) of the model's vocabulary, comma-separated",
    )
    parser.add_argument("--out", required=True, metavar="PNG", help="overlay image to write")
    parser.add_argument(
        "--heatmap-npy", metavar="PATH", help="also save the (A, H, W) float32 heat maps in [0, 1]"
    )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="heat-map level of the mask (default: the predictor's)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0..1)")
    parser.add_argument("--weights-dir", help="directory with the backbone weights")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="inference backend: eager PyTorch (default) or the exported ONNX "
        "graph in ONNX Runtime (TensorRT > CUDA > CPU provider)",
    )
    parser.add_argument(
        "--onnx-variant",
        default="fp32",
        choices=["fp32", "int8"],
        help="onnxruntime backend: fp32 (default) or int8 (dynamically "
        "quantized backbones; faster on CPUs with VNNI, small accuracy change)",
    )
    parser.add_argument(
        "--onnx-cache",
        metavar="DIR",
        help="ONNX cache folder (default $AFFORDANCE_ONNX_CACHE or ~/.cache/affordance_ros/onnx)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    out = panel.copy()
    scale = max(0.4, out.shape[1] / 640.0)
    org = (6, int(18 * scale) + 4)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _write_png(path: Path, image: np.ndarray) -> None:
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}; check the folder and the file extension")


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from affordance_core import AffordancePredictor

    actions = [a.strip() for a in args.action.split(",") if a.strip()]
    if not actions:
        raise CLIError("--action needs at least one action word")
    if not 0.0 <= args.alpha <= 1.0:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CLIError(f"--out must name a .png file, got {out}")
    image_path = Path(args.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"image {image_path} does not exist")
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ValueError(f"cannot decode image {image_path}; is it a valid image file?")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    if args.mask_threshold is not None and not 0.0 <= args.mask_threshold <= 1.0:
        raise CLIError(f"--mask-threshold must be in [0, 1], got {args.mask_threshold}")
    device = choose_device(args.device)
    options = {} if args.mask_threshold is None else {"mask_threshold": args.mask_threshold}
    predictor = AffordancePredictor.from_checkpoint(
        args.checkpoint,
        device=str(device),
        weights_dir=args.weights_dir,
        backend=args.backend,
        onnx_cache_dir=args.onnx_cache,
        onnx_variant=args.onnx_variant,
        **options,
    )
    unknown = [a for a in actions if a not in predictor.vocabulary]
    if unknown:
        raise CLIError(
            f"unknown action {', '.join(map(repr, unknown))}; this model knows: "
            f"{', '.join(predictor.vocabulary)}"
        )
    predictor.set_image(rgb)
    preds = predictor.predict(actions)

    overlays = []
    report = []
    for action, pred in zip(actions, preds, strict=True):
        overlay = heatmap_overlay(rgb, pred.heatmap, alpha=args.alpha)
        overlays.append(_label(overlay, action) if len(actions) > 1 else overlay)
        mask = np.asarray(pred.mask, dtype=bool).astype(np.uint8) * 255
        suffix = "_mask.png" if len(actions) == 1 else f"_{action}_mask.png"
        mask_path = out.with_name(out.stem + suffix)
        _write_png(mask_path, mask)
        report.append(
            {
                "action": action,
                "score": round(float(pred.score), 4),
                "peak_xy": [int(v) for v in pred.peak_xy],
                "mask": str(mask_path),
                "mask_fraction": round(float(mask.mean() / 255.0), 4),
            }
        )
    _write_png(out, cv2.cvtColor(np.concatenate(overlays, axis=1), cv2.COLOR_RGB2BGR))
    if args.heatmap_npy:
        npy = Path(args.heatmap_npy)
        if npy.parent != Path(""):
            npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, np.stack([np.asarray(p.heatmap, dtype=np.float32) for p in preds]))
    logger.info("wrote %s", out)
    print(
        json.dumps(
            {
                "image": str(image_path),
                "overlay": str(out),
                "backend": args.backend,
                "actions": report,
            }
        ),
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``affordance-predict``; returns the exit status."""
    return run_cli(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
