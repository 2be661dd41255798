"""Train a preset's objectness head (``python -m training.pretrain.objectness``).

Renders frames with an object (:func:`~affordance_core.synthetic.corpus.iter_pretrain_scenes`,
half ego, half exo) and background-only frames
(:func:`~affordance_core.synthetic.corpus.iter_pretrain_backgrounds`) from the pretraining seed
space, JPEG-compressed as the corpora store images, and runs the frozen backbones. Then:

1. a linear read-out of the frame descriptor
   (:func:`~affordance_core.objectness.fit_linear_objectness`) is fitted on the first seed's
   frames;
2. many more background frames are rendered (the mining seeds) and those the linear read-out
   scores at or above ``--hard-at`` are kept: clutter that composes into something object-like;
3. the :class:`~affordance_core.objectness.ObjectnessHead` is trained on every fit seed's
   frames plus the hard ones, and scored on held-out frames of another seed.

Only object presence is used: no affordance label, part mask or heatmap. Writes
``WEIGHTS_DIR/objectness_<preset>.pt`` atomically and prints the statistics as JSON.

Usage: ``python -m training.pretrain.objectness --weights-dir weights/tiny`` (what
``make pretrain`` runs last; about an hour on two CPU cores with the defaults, 77 minutes
measured with another job beside it. Most of it is the backbones' forward pass over the 40000
mined frames: rendering a frame costs a fifth (clutter) to a half (object scene) of that).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from affordance_core import create_model
from affordance_core.data.transforms import center_resize, to_tensor
from affordance_core.factory import default_weights_dir
from affordance_core.metrics import auroc
from affordance_core.model import AffordanceModel, Features
from affordance_core.objectness import (
    LinearObjectness,
    ObjectnessFit,
    fit_linear_objectness,
    frame_descriptor,
    objectness_file,
    save_objectness,
    train_objectness,
)
from affordance_core.registry import get_config
from affordance_core.synthetic.corpus import iter_pretrain_backgrounds, iter_pretrain_scenes

__all__ = [
    "ObjectnessFrames",
    "descriptors_of",
    "features_of",
    "head_probabilities",
    "main",
    "render_heldout_features",
    "render_objectness_frames",
]

#: Pretraining seeds of the objectness frames: no backbone stage of scripts/pretrain.sh used
#: them. The first fits the linear mining read-out; every fit seed trains the head.
DEFAULT_FIT_SEEDS = (10, 12)
DEFAULT_HELDOUT_SEED = 11
DEFAULT_MINE_SEEDS = (13, 14)
#: Kept for the descriptor-only callers (the penalty probe): the first fit seed.
DEFAULT_SEED = DEFAULT_FIT_SEEDS[0]


def _jpeg(rgb: np.ndarray, quality: int = 90) -> np.ndarray:
    """JPEG round trip of an RGB frame (the corpora store JPEGs at quality 90)."""
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def _half(feats: Features) -> Features:
    """float16 CPU copy of features (the training set of the head holds tens of thousands)."""
    clip = None if feats.clip is None else feats.clip.half().cpu()
    return Features(feats.keys.half().cpu(), feats.cls_attention.half().cpu(), clip)


def cat_features(parts: Sequence[Features]) -> Features:
    """One :class:`~affordance_core.model.Features` of several, concatenated over frames."""
    return Features(
        torch.cat([p.keys for p in parts]),
        torch.cat([p.cls_attention for p in parts]),
        torch.cat([p.clip for p in parts]),
    )


def features_of(
    model: AffordanceModel,
    frames: Iterable[np.ndarray],
    total: int,
    *,
    keep: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 64,
    desc: str = "frames",
    progress: bool = True,
) -> tuple[Features | None, Tensor]:
    """Backbone features and frame descriptors of (H, W, 3) uint8 RGB frames, in batches.

    Returns:
        The features (float16, to hold tens of thousands of frames) of the kept frames (all
        without ``keep``, which maps (B, F) descriptors to a (B,) bool mask; None when none is
        kept) and the (N, F) float32 descriptors of every frame.
    """
    device = next(model.parameters()).device
    kept, descriptors, batch = [], [], []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)

    def flush() -> None:
        x = torch.stack(batch).to(device)
        with torch.no_grad():
            feats = model.extract(x)
            d = frame_descriptor(feats.keys, feats.cls_attention, feats.clip).cpu()
        descriptors.append(d)
        mask = torch.ones(len(d), dtype=torch.bool) if keep is None else keep(d)
        if bool(mask.any()):
            kept.append(_half(feats.index(mask.to(device))))
        bar.update(len(batch))
        batch.clear()

    for frame in frames:
        batch.append(to_tensor(center_resize(_jpeg(frame), model.image_size)))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    return (cat_features(kept) if kept else None), torch.cat(descriptors)


def descriptors_of(
    model: AffordanceModel,
    frames: Iterable[np.ndarray],
    total: int,
    *,
    batch_size: int = 64,
    desc: str = "frames",
    progress: bool = True,
) -> Tensor:
    """(N, F) float32 frame descriptors of (H, W, 3) uint8 RGB frames, in batches."""
    _, descriptors = features_of(
        model,
        frames,
        total,
        keep=lambda d: torch.zeros(len(d), dtype=torch.bool),
        batch_size=batch_size,
        desc=desc,
        progress=progress,
    )
    return descriptors


@dataclass
class ObjectnessFrames:
    """What :func:`render_objectness_frames` renders and mines.

    Attributes:
        objects, backgrounds: per fit seed, the (features, descriptors) of its frames.
        linear: the linear read-out fitted on the first fit seed's frames (it mines).
        hard: features of the mined background frames the linear read-out kept.
        mined_descriptors: (M, F) descriptors of every mined frame.
    """

    objects: list[tuple[Features, Tensor]]
    backgrounds: list[tuple[Features, Tensor]]
    linear: LinearObjectness
    hard: Features | None
    mined_descriptors: Tensor

    def train_head(
        self, *, epochs: int = 20, device: str | torch.device = "cpu", progress: bool = True
    ) -> ObjectnessFit:
        """:func:`~affordance_core.objectness.train_objectness` on every fit seed's frames,
        the hard mined frames last among the background ones."""
        backgrounds = [f for f, _ in self.backgrounds]
        if self.hard is not None:
            backgrounds.append(self.hard)
        positives = cat_features([f for f, _ in self.objects])
        negatives = cat_features(backgrounds)
        return train_objectness(
            (positives.keys, positives.cls_attention, positives.clip),
            (negatives.keys, negatives.cls_attention, negatives.clip),
            epochs=epochs,
            device=device,
            progress=progress,
        )


def _frames(kind: str, seed: int, n: int, size: int) -> Iterable[np.ndarray]:
    if kind == "objects":
        return (s.image for s in iter_pretrain_scenes(seed, n, size=size))
    return iter_pretrain_backgrounds(seed, n, size=size)


def render_heldout_features(
    model: AffordanceModel, seed: int, n_frames: int, size: int = 128, progress: bool = True
) -> tuple[Features, Features]:
    """float16 features of ``n_frames`` frames with an object and as many background frames
    of pretraining seed ``seed`` (the held-out frames a head is scored on)."""
    objects, backgrounds = (
        features_of(
            model,
            _frames(kind, seed, n_frames, size),
            n_frames,
            desc=f"held-out {kind}",
            progress=progress,
        )[0]
        for kind in ("objects", "backgrounds")
    )
    return objects, backgrounds  # type: ignore[return-value]


def render_objectness_frames(
    model: AffordanceModel,
    *,
    fit_seeds: Sequence[int] = DEFAULT_FIT_SEEDS,
    n_frames: int = 3000,
    mine_seeds: Sequence[int] = DEFAULT_MINE_SEEDS,
    n_mine: int = 20000,
    hard_at: float = 0.05,
    c: float = 0.1,
    size: int = 128,
    progress: bool = True,
) -> ObjectnessFrames:
    """Render the fit seeds' frames, fit the linear read-out, mine hard background frames.

    Raises:
        ValueError: on no fit seed, overlapping seeds or fewer than 3 frames per kind.
    """
    seeds = [*fit_seeds, *mine_seeds]
    if not fit_seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"need at least one fit seed and distinct seeds, got {seeds}")
    if n_frames < 3:
        raise ValueError(f"n_frames must be at least 3, got {n_frames}")

    def render(kind: str, seed: int, n: int, keep=None) -> tuple[Features | None, Tensor]:
        return features_of(
            model,
            _frames(kind, seed, n, size),
            n,
            keep=keep,
            desc=f"seed {seed} {kind}",
            progress=progress,
        )

    objects = [render("objects", s, n_frames) for s in fit_seeds]
    backgrounds = [render("backgrounds", s, n_frames) for s in fit_seeds]
    linear = fit_linear_objectness(objects[0][1], backgrounds[0][1], c=c, seed=fit_seeds[0])

    def is_hard(descriptors: Tensor) -> Tensor:
        return torch.sigmoid(linear.logit(descriptors)) >= hard_at

    mined = [render("backgrounds", s, n_mine, keep=is_hard) for s in mine_seeds]
    hard_parts = [f for f, _ in mined if f is not None]
    return ObjectnessFrames(
        objects,  # type: ignore[arg-type]
        backgrounds,  # type: ignore[arg-type]
        linear,
        cat_features(hard_parts) if hard_parts else None,
        torch.cat([d for _, d in mined]) if mined else torch.zeros(0, objects[0][1].shape[1]),
    )


def head_probabilities(fit: ObjectnessFit, feats: Features, batch_size: int = 512) -> Tensor:
    """(N,) float32 ``P(object)`` of a trained head on (possibly float16) features."""
    head = fit.head()
    with torch.no_grad():
        parts = [
            torch.sigmoid(head(f.keys, f.cls_attention, f.clip))
            for f in (
                feats.index(slice(i, i + batch_size))
                for i in range(0, len(feats.keys), batch_size)
            )
        ]
    return torch.cat(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m training.pretrain.objectness", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--model", default="tiny", help="preset whose backbones are read out")
    ap.add_argument(
        "--weights-dir",
        default=None,
        help="folder of the backbone weights; the head is written there "
        "(default for the tiny preset: weights/tiny; required for the others)",
    )
    ap.add_argument("--n-frames", type=int, default=3000, help="frames of each kind per seed")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEFAULT_FIT_SEEDS),
        help="pretraining seeds of the training frames (the first fits the miner)",
    )
    ap.add_argument(
        "--heldout-seed",
        type=int,
        default=DEFAULT_HELDOUT_SEED,
        help="pretraining seed of the held-out frames the head is scored on",
    )
    ap.add_argument("--mine-seeds", type=int, nargs="*", default=list(DEFAULT_MINE_SEEDS))
    ap.add_argument("--n-mine", type=int, default=20000, help="background frames per mining seed")
    ap.add_argument(
        "--hard-at",
        type=float,
        default=0.05,
        help="a mined frame is kept when the linear read-out gives it at least this",
    )
    ap.add_argument("--c", type=float, default=0.1, help="inverse L2 strength of the linear fit")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs of the head")
    ap.add_argument("--size", type=int, default=128, help="rendered frame side in pixels")
    ap.add_argument("--device", default="cpu", help="device of the backbones and the head")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.n_frames < 3:
        ap.error(f"--n-frames must be at least 3, got {args.n_frames}")
    if args.heldout_seed in [*args.seeds, *args.mine_seeds]:
        ap.error(f"--heldout-seed {args.heldout_seed} is also a training or mining seed")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    weights_dir = default_weights_dir(get_config(args.model), args.weights_dir)
    if weights_dir is None:
        ap.error(
            f"pass --weights-dir: the folder holding preset {args.model!r}'s backbone "
            "weights, where the head is written"
        )
    model = create_model(
        args.model, vocabulary=["hold"], weights_dir=weights_dir, objectness=False
    ).eval()
    if model.clip is None:
        ap.error(f"preset {args.model!r} has no CLIP-role backbone; objectness needs one")
    model.to(args.device)
    t0 = time.perf_counter()
    progress = not args.no_progress
    try:
        frames = render_objectness_frames(
            model,
            fit_seeds=args.seeds,
            n_frames=args.n_frames,
            mine_seeds=args.mine_seeds,
            n_mine=args.n_mine,
            hard_at=args.hard_at,
            c=args.c,
            size=args.size,
            progress=progress,
        )
    except ValueError as exc:
        ap.error(str(exc))
    fit = frames.train_head(epochs=args.epochs, device=args.device, progress=progress)
    heldout_objects, heldout_backgrounds = render_heldout_features(
        model, args.heldout_seed, args.n_frames, args.size, progress=progress
    )
    p_obj = head_probabilities(fit, heldout_objects).double().numpy()
    p_bg = head_probabilities(fit, heldout_backgrounds).double().numpy()
    fit.stats.update(
        {
            "fit_seeds": list(args.seeds),
            "mine_seeds": list(args.mine_seeds),
            "n_mined": int(len(frames.mined_descriptors)),
            "n_hard": 0 if frames.hard is None else int(len(frames.hard.keys)),
            "hard_at": args.hard_at,
            **{f"linear_{k}": v for k, v in frames.linear.stats.items()},
            "heldout_seed": args.heldout_seed,
            "heldout_auroc": auroc(
                np.r_[p_obj, p_bg], np.r_[np.ones(len(p_obj), bool), np.zeros(len(p_bg), bool)]
            ),
            "heldout_object_recall": float((p_obj >= 0.5).mean()),
            "heldout_background_rejected": float((p_bg < 0.5).mean()),
        }
    )
    path = Path(weights_dir) / objectness_file(args.model)
    save_objectness(fit, path, preset=args.model, size=args.size)
    summary = {"file": str(path), **fit.stats, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
