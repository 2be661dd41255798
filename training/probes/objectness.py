"""The linear objectness read-out's penalty, chosen on validation frames
(``python -m training.probes.objectness``).

Fits the linear read-out (:func:`affordance_core.objectness.fit_linear_objectness`: the gate
before the objectness head, now the miner of its hard background frames) once per inverse L2
strength ``C`` on the same pretraining frames ``python -m training.pretrain.objectness`` fits it
on (its first seed, count and size, so a ``C`` here is the miner that command fits with
``--c C``), then scores each fit on validation corpora: their background-only frames
(``testset/background``) and their test images (every frame holds an object). Per ``C``,
over all corpora pooled (beside the fit's cross-validated statistics and bias): background
frames at or above 0.5 (these keep a grasp region whatever the action), the largest
background ``P(object)``, the share of object frames below 0.5 (these lose theirs), and the
AUROC of object against background frames. Rows per corpus are in ``per_corpus``.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from affordance_core import create_model
from affordance_core.data import AffordanceTestDataset, BackgroundFrames
from affordance_core.factory import default_weights_dir
from affordance_core.metrics import auroc
from affordance_core.model import AffordanceModel
from affordance_core.objectness import (
    LinearObjectness,
    fit_linear_objectness,
    frame_descriptor,
)
from affordance_core.registry import get_config
from affordance_core.synthetic.corpus import iter_pretrain_backgrounds, iter_pretrain_scenes
from training.common import print_json_result
from training.evaluate import extract_background
from training.pretrain.objectness import DEFAULT_SEED, descriptors_of

__all__ = ["probe_objectness_penalty", "main"]


def _descriptors(model: AffordanceModel, dataset: Dataset) -> torch.Tensor:
    """(N, F) frame descriptors of a non-empty dataset whose items hold an ``image`` tensor."""
    feats = extract_background(model, dataset, device=torch.device("cpu"), batch_size=64)
    return frame_descriptor(feats.keys, feats.cls_attention, feats.clip)


def _p_object(fit: LinearObjectness, descriptors: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(fit.logit(descriptors)).double().numpy()


def _summary(p_background: np.ndarray, p_objects: np.ndarray) -> dict[str, Any]:
    scores = np.concatenate([p_objects, p_background])
    labels = np.r_[np.ones(len(p_objects), bool), np.zeros(len(p_background), bool)]
    return {
        "n_background": len(p_background),
        "n_objects": len(p_objects),
        "background_at_or_above_half": int((p_background >= 0.5).sum()),
        "background_max": float(p_background.max()) if len(p_background) else None,
        "objects_below_half": float((p_objects < 0.5).mean()) if len(p_objects) else None,
        "auroc": auroc(scores, labels) if len(p_background) and len(p_objects) else None,
    }


def probe_objectness_penalty(
    corpora: Sequence[tuple[str, str]],
    cs: Sequence[float],
    *,
    model_name: str = "tiny",
    weights_dir: str | None = None,
    n_frames: int = 3000,
    seed: int = DEFAULT_SEED,
    size: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit one read-out per ``C`` and score each on validation corpora.

    Args:
        corpora: (root, split) pairs of validation corpora; each split needs a
            ``testset/background`` folder.
        cs: inverse L2 strengths to compare (each > 0).
        model_name: preset whose backbones give the descriptors.
        weights_dir: that preset's weight folder (default for ``tiny``: ``weights/tiny``).
        n_frames, seed, size: the pretraining frames of each kind, as
            ``python -m training.pretrain.objectness`` takes them.
        progress: tqdm bars while rendering the pretraining frames.

    Returns:
        ``{"fits": {C: summary}, "per_corpus": [{root, split, C: summary}], ...}``; a summary
        as described in the module docstring.

    Raises:
        ValueError: when a corpus split has no background frames.
    """
    weights = default_weights_dir(get_config(model_name), weights_dir)
    model = create_model(model_name, vocabulary=["hold"], weights_dir=weights, objectness=False)
    model.eval()
    scenes = (s.image for s in iter_pretrain_scenes(seed, n_frames, size=size))
    objects = descriptors_of(model, scenes, n_frames, desc="object frames", progress=progress)
    backgrounds = descriptors_of(
        model,
        iter_pretrain_backgrounds(seed, n_frames, size=size),
        n_frames,
        desc="background frames",
        progress=progress,
    )
    fits = {c: fit_linear_objectness(objects, backgrounds, c=c, seed=seed) for c in cs}
    pooled: dict[float, tuple[list, list]] = {c: ([], []) for c in cs}
    per_corpus = []
    for root, split in corpora:
        background_set = BackgroundFrames(root, split, model.image_size)
        if len(background_set) == 0:
            raise ValueError(
                f"{root} split {split} has no testset/background frames; pass a validation "
                "corpus rendered by affordance-synth (it writes them)"
            )
        d_background = _descriptors(model, background_set)
        d_objects = _descriptors(model, AffordanceTestDataset(root, split, model.image_size))
        row: dict[str, Any] = {"root": str(root), "split": split}
        for c, fit in fits.items():
            p_bg, p_obj = _p_object(fit, d_background), _p_object(fit, d_objects)
            pooled[c][0].append(p_bg)
            pooled[c][1].append(p_obj)
            row[str(c)] = _summary(p_bg, p_obj)
        per_corpus.append(row)
    return {
        "pretraining_frames": {"n_each": n_frames, "seed": seed, "size": size},
        "fits": {
            str(c): {
                "cv": fits[c].stats,
                "bias": fits[c].bias,
                **_summary(np.concatenate(pooled[c][0]), np.concatenate(pooled[c][1])),
            }
            for c in cs
        },
        "per_corpus": per_corpus,
    }


def _corpus(text: str) -> tuple[str, str]:
    root, sep, split = text.rpartition(":")
    if not sep or not root or not split:
        raise argparse.ArgumentTypeError(f"expected ROOT:SPLIT, got {text!r}")
    return root, split


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m training.probes.objectness", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--val",
        type=_corpus,
        nargs="+",
        required=True,
        metavar="ROOT:SPLIT",
        help="validation corpora with background frames, e.g. outputs/demo/data_val:Seen",
    )
    ap.add_argument("--c", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--n-frames", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if any(not c > 0 for c in args.c):
        ap.error(f"every --c must be positive, got {args.c}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = probe_objectness_penalty(
        args.val,
        args.c,
        model_name=args.model,
        weights_dir=args.weights_dir,
        n_frames=args.n_frames,
        seed=args.seed,
        size=args.size,
        progress=not args.no_progress,
    )
    print_json_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
