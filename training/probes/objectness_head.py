"""Which objectness read-out leaves the fewest clutter frames above the gate, at equal
object recall (``python -m training.probes.objectness_head``).

A linear read-out of the frame descriptor fitted on 3000 + 3000 pretraining frames (the gate
until the objectness head replaced it) puts about one clutter-only frame in seventy at or above
``P(object)`` 0.5: clutter drawn from the object parts' shapes sometimes composes into
something object-like. On the frames ``python -m training.pretrain.objectness`` renders and
mines (:func:`training.pretrain.objectness.render_objectness_frames`), this probe compares:

* ``linear``: that linear read-out (the first fit seed's frames; it is also the miner);
* ``linear+mined``: the same logistic read-out on every fit seed's frames plus the descriptors
  of every mined background frame;
* ``patch+mined``: the :class:`~affordance_core.objectness.ObjectnessHead` trained on every fit
  seed's frames plus the *hard* mined background frames (those the linear read-out scores at
  or above ``hard_at``): the head the CLI writes with the same settings.

Only object presence is used (no affordance label, part or heatmap). Each candidate is scored
on validation corpora (their background frames and their test images, every one of which holds
an object) and on held-out pretraining-space frames of a seed no fit used. Because a read-out
that rejects more object frames also rejects more clutter, the comparison is made at equal
object recall: for each share ``q`` of validation object frames given up, the threshold is that
quantile of their ``P(object)``, and the clutter frames at or above it are counted. The usual
0.5 operating point is reported too.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from affordance_core import create_model
from affordance_core.data import AffordanceTestDataset, BackgroundFrames
from affordance_core.factory import default_weights_dir
from affordance_core.metrics import auroc
from affordance_core.model import Features
from affordance_core.objectness import (
    LinearObjectness,
    fit_linear_objectness,
    frame_descriptor,
)
from affordance_core.registry import get_config
from training.common import print_json_result
from training.evaluate import extract_background
from training.pretrain.objectness import (
    DEFAULT_FIT_SEEDS,
    DEFAULT_HELDOUT_SEED,
    DEFAULT_MINE_SEEDS,
    _half,
    cat_features,
    head_probabilities,
    render_heldout_features,
    render_objectness_frames,
)
from training.probes.objectness import _corpus

__all__ = ["probe_objectness_heads", "main"]


def _linear_probabilities(fit: LinearObjectness) -> Callable[[Features], Tensor]:
    def p(feats: Features) -> Tensor:
        d = frame_descriptor(feats.keys.float(), feats.cls_attention.float(), feats.clip.float())
        return torch.sigmoid(fit.logit(d))

    return p


def _summary(
    p_background: np.ndarray,
    p_objects: np.ndarray,
    p_heldout_background: np.ndarray,
    p_heldout_objects: np.ndarray,
    losses: Sequence[float],
) -> dict[str, Any]:
    scores = np.concatenate([p_objects, p_background])
    labels = np.r_[np.ones(len(p_objects), bool), np.zeros(len(p_background), bool)]
    at_equal_recall = {}
    for q in losses:
        threshold = float(np.quantile(p_objects, q))
        at_equal_recall[str(q)] = {
            "threshold": threshold,
            "validation_background_at_or_above": int((p_background >= threshold).sum()),
            "heldout_background_at_or_above": int((p_heldout_background >= threshold).sum()),
        }
    return {
        "validation": {
            "n_background": len(p_background),
            "n_objects": len(p_objects),
            "background_at_or_above_half": int((p_background >= 0.5).sum()),
            "background_max": float(p_background.max()),
            "objects_below_half": float((p_objects < 0.5).mean()),
            "auroc": auroc(scores, labels),
        },
        "heldout_pretraining": {
            "n_background": len(p_heldout_background),
            "n_objects": len(p_heldout_objects),
            "background_at_or_above_half": int((p_heldout_background >= 0.5).sum()),
            "objects_below_half": float((p_heldout_objects < 0.5).mean()),
        },
        "at_equal_validation_object_loss": at_equal_recall,
    }


def probe_objectness_heads(
    corpora: Sequence[tuple[str, str]],
    *,
    model_name: str = "tiny",
    weights_dir: str | None = None,
    n_frames: int = 3000,
    fit_seeds: Sequence[int] = DEFAULT_FIT_SEEDS,
    heldout_seed: int = DEFAULT_HELDOUT_SEED,
    mine_seeds: Sequence[int] = DEFAULT_MINE_SEEDS,
    n_mine: int = 20000,
    hard_at: float = 0.05,
    c: float = 0.1,
    epochs: int = 20,
    size: int = 128,
    losses: Sequence[float] = (0.02, 0.03, 0.05),
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the three candidates and score them (see the module docstring).

    Args:
        corpora: (root, split) pairs of validation corpora, each with ``testset/background``.
        model_name, weights_dir: the preset and its backbone weights.
        n_frames, fit_seeds, mine_seeds, n_mine, hard_at, c, epochs, size: as
            ``python -m training.pretrain.objectness`` takes them.
        heldout_seed: pretraining seed of held-out frames no candidate is fitted on.
        losses: shares of validation object frames given up at the equal-recall points.

    Raises:
        ValueError: when a corpus split has no background frames, or the seeds overlap.
    """
    if heldout_seed in [*fit_seeds, *mine_seeds]:
        raise ValueError(f"the held-out seed {heldout_seed} is also a fit or mining seed")
    for root, split in corpora:
        if len(BackgroundFrames(root, split, 32)) == 0:
            raise ValueError(
                f"{root} split {split} has no testset/background frames; pass a validation "
                "corpus rendered by affordance-synth (it writes them)"
            )
    t0 = time.perf_counter()
    weights = default_weights_dir(get_config(model_name), weights_dir)
    model = create_model(model_name, vocabulary=["hold"], weights_dir=weights, objectness=False)
    model.eval()
    frames = render_objectness_frames(
        model,
        fit_seeds=fit_seeds,
        n_frames=n_frames,
        mine_seeds=mine_seeds,
        n_mine=n_mine,
        hard_at=hard_at,
        c=c,
        size=size,
        progress=progress,
    )
    heldout_objects, heldout_backgrounds = render_heldout_features(
        model, heldout_seed, n_frames, size, progress=progress
    )
    cpu = torch.device("cpu")
    val_background, val_objects = [], []
    for root, split in corpora:
        background_set = BackgroundFrames(root, split, model.image_size)
        test_set = AffordanceTestDataset(root, split, model.image_size)
        val_background.append(
            _half(extract_background(model, background_set, device=cpu, batch_size=64))
        )
        val_objects.append(_half(extract_background(model, test_set, device=cpu, batch_size=64)))

    linear_mined = fit_linear_objectness(
        torch.cat([d for _, d in frames.objects]),
        torch.cat([d for _, d in frames.backgrounds] + [frames.mined_descriptors]),
        c=c,
        seed=fit_seeds[0],
    )
    head = frames.train_head(epochs=epochs, progress=progress)
    candidates: dict[str, Callable[[Features], Tensor]] = {
        "linear": _linear_probabilities(frames.linear),
        "linear+mined": _linear_probabilities(linear_mined),
        "patch+mined": lambda feats: head_probabilities(head, feats),
    }
    sets = (
        cat_features(val_background),
        cat_features(val_objects),
        heldout_backgrounds,
        heldout_objects,
    )
    rows = {
        name: _summary(*(score(f).double().numpy() for f in sets), losses)
        for name, score in candidates.items()
    }
    return {
        "frames": {
            "n_each": n_frames,
            "fit_seeds": list(fit_seeds),
            "heldout_seed": heldout_seed,
            "mine_seeds": list(mine_seeds),
            "n_mine": n_mine,
            "hard_at": hard_at,
            "n_hard": 0 if frames.hard is None else len(frames.hard.keys),
            "size": size,
        },
        "candidates": rows,
        "head_stats": head.stats,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m training.probes.objectness_head",
        description=__doc__.split("\n\n")[0],
    )
    ap.add_argument("--val", type=_corpus, nargs="+", required=True, metavar="ROOT:SPLIT")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--n-frames", type=int, default=3000)
    ap.add_argument("--n-mine", type=int, default=20000, help="background frames per mining seed")
    ap.add_argument("--hard-at", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = probe_objectness_heads(
        args.val,
        model_name=args.model,
        weights_dir=args.weights_dir,
        n_frames=args.n_frames,
        n_mine=args.n_mine,
        hard_at=args.hard_at,
        epochs=args.epochs,
        progress=not args.no_progress,
    )
    print_json_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
