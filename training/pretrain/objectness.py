"""Fit a preset's objectness read-out (``python -m training.pretrain.objectness``).

Renders frames with an object (:func:`~affordance_core.synthetic.corpus.iter_pretrain_scenes`,
half ego, half exo) and background-only frames
(:func:`~affordance_core.synthetic.corpus.iter_pretrain_backgrounds`), both from the
pretraining seed space, JPEG-compresses them as the corpora store images, runs the frozen
backbones, and fits :func:`affordance_core.objectness.fit_objectness` on the frame descriptors.
Only object presence is used: no affordance label, part mask or heatmap. Writes
``WEIGHTS_DIR/objectness_<preset>.pt`` atomically and prints the fit's statistics as JSON.

Usage: ``python -m training.pretrain.objectness --weights-dir weights/tiny`` (what
``make pretrain`` runs last; about two minutes on two CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from affordance_core import create_model
from affordance_core.data.transforms import center_resize, to_tensor
from affordance_core.factory import default_weights_dir
from affordance_core.model import AffordanceModel
from affordance_core.objectness import (
    fit_objectness,
    frame_descriptor,
    objectness_file,
    save_objectness,
)
from affordance_core.registry import get_config
from affordance_core.synthetic.corpus import iter_pretrain_backgrounds, iter_pretrain_scenes

__all__ = ["descriptors_of", "main"]

#: Pretraining seed of the objectness frames: no backbone stage of scripts/pretrain.sh used it.
DEFAULT_SEED = 10


def _jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    """JPEG round trip of an RGB frame (the corpora store JPEGs at quality 90)."""
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def descriptors_of(
    model: AffordanceModel,
    frames: Iterable[np.ndarray],
    total: int,
    *,
    batch_size: int = 64,
    desc: str = "frames",
    progress: bool = True,
) -> torch.Tensor:
    """(N, F) float32 frame descriptors of (H, W, 3) uint8 RGB frames, in batches."""
    device = next(model.parameters()).device
    out, batch = [], []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)

    def flush() -> None:
        x = torch.stack(batch).to(device)
        with torch.no_grad():
            feats = model.extract(x)
            out.append(frame_descriptor(feats.keys, feats.cls_attention, feats.clip).cpu())
        bar.update(len(batch))
        batch.clear()

    for frame in frames:
        batch.append(to_tensor(center_resize(_jpeg(frame), model.image_size)))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    return torch.cat(out)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m training.pretrain.objectness", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--model", default="tiny", help="preset whose backbones are read out")
    ap.add_argument(
        "--weights-dir",
        default=None,
        help="folder of the backbone weights; the read-out is written there "
        "(default for the tiny preset: weights/tiny; required for the others)",
    )
    ap.add_argument("--n-frames", type=int, default=3000, help="frames of each kind (>= 3)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="pretraining seed")
    ap.add_argument("--size", type=int, default=128, help="rendered frame side in pixels")
    ap.add_argument("--c", type=float, default=0.1, help="inverse L2 strength of the fit")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.n_frames < 3:
        ap.error(f"--n-frames must be at least 3, got {args.n_frames}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    weights_dir = default_weights_dir(get_config(args.model), args.weights_dir)
    if weights_dir is None:
        ap.error(
            f"pass --weights-dir: the folder holding preset {args.model!r}'s backbone "
            "weights, where the read-out is written"
        )
    model = create_model(
        args.model, vocabulary=["hold"], weights_dir=weights_dir, objectness=False
    ).eval()
    if model.clip is None:
        ap.error(f"preset {args.model!r} has no CLIP-role backbone; objectness needs one")
    model.to(args.device)
    t0 = time.perf_counter()
    n, progress = args.n_frames, not args.no_progress
    scenes = (s.image for s in iter_pretrain_scenes(args.seed, n, size=args.size))
    objects = descriptors_of(
        model, scenes, n, batch_size=args.batch_size, desc="object frames", progress=progress
    )
    backgrounds = descriptors_of(
        model,
        iter_pretrain_backgrounds(args.seed, n, size=args.size),
        n,
        batch_size=args.batch_size,
        desc="background frames",
        progress=progress,
    )
    fit = fit_objectness(objects, backgrounds, c=args.c, seed=args.seed)
    path = Path(weights_dir) / objectness_file(args.model)
    save_objectness(fit, path, preset=args.model, seed=args.seed, size=args.size)
    summary = {"file": str(path), **fit.stats, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
