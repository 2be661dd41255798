"""Why background frames get a grasp region, and what each presence rule does about it, on
validation data only (``python -m training.probes.absence``).

For a trained model and a validation corpus whose splits hold background-only frames
(``testset/background``), every (frame, action) pair is a row: afforded (the frame's object
affords the action), not afforded (it does not), or background (a frame with no object).

* ``signals``: how well each frame-level signal ranks afforded pairs against background pairs
  (AUROC): the score's two inputs (peak raw CAM logit, peak raw ego-prompt affinity), the peak
  DINO saliency, the peak of the action's part prior (with a prior) and the model's objectness
  ``P(object in frame)`` (with a read-out).
* ``rules``: presence rules fitted and scored by 2-fold cross-validation over frames (a frame's
  rows are never split): ``cam+aff`` (the logistic fit on every row, the score without a gate),
  ``cam+aff+objectness`` (the objectness logit as a third feature of that fit) and
  ``P(object) x P(afforded | object)`` (the shipped gate: the fit on frames with an object,
  times the objectness). Each reports the AUROC over every row, the recall of afforded pairs
  at ``min_score``, the share of background pairs and of background frames (every action)
  below it, and the share of not-afforded object pairs below it.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affordance_core import load_model
from affordance_core.data import AffordanceTestDataset, BackgroundFrames
from affordance_core.metrics import auroc
from affordance_core.model import AffordanceModel, Features
from training.common import print_json_result
from training.evaluate import extract_test_set

__all__ = ["probe_absence", "main"]


def _rows(model: AffordanceModel, feats: Features) -> np.ndarray:
    """(N * C, 5) [z_cam, z_aff, objectness logit, peak part prior, peak saliency] for every
    action of N frames (the prior's column is 0 without a part prior)."""
    n, c = feats.keys.shape[0], model.num_classes
    every = torch.arange(c, device=feats.keys.device).expand(n, -1)
    z = model.score_features(feats, every).float()  # (N, C, 3)
    p_object = model.frame_objectness(feats).double().clamp(1e-12, 1 - 1e-12)
    logit = torch.logit(p_object).float()[:, None].expand(-1, c)
    prior = torch.zeros(n, c)
    if model.part_prior is not None:
        prior = model.part_probability(feats.keys, every).amax((-1, -2)).float()
    saliency = feats.saliency().amax((-1, -2)).float()[:, None].expand(-1, c)
    columns = [z[..., 0], z[..., 1], logit, prior, saliency]
    return torch.stack(columns, -1).flatten(0, 1).double().cpu().numpy()


def _cross_validated(
    x: np.ndarray, y: np.ndarray, fold: np.ndarray, fit_rows: np.ndarray, columns: list[int]
) -> np.ndarray:
    """Held-out logistic probabilities, 2 folds, each fitted on ``fit_rows`` of the other."""
    from sklearn.linear_model import LogisticRegression

    prob = np.zeros(len(y))
    for k in (0, 1):
        train, test = (fold != k) & fit_rows, fold == k
        mean, std = x[train][:, columns].mean(0), x[train][:, columns].std(0) + 1e-12
        reg = LogisticRegression(C=1.0, max_iter=2000).fit(
            (x[train][:, columns] - mean) / std, y[train]
        )
        prob[test] = reg.predict_proba((x[test][:, columns] - mean) / std)[:, 1]
    return prob


def probe_absence(
    checkpoint: str | Path,
    val_root: str | Path,
    split: str = "Seen",
    *,
    min_score: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the probe (see the module docstring); returns the JSON-ready result.

    Raises:
        ValueError: the split has no background frames, or no afforded or no background pair.
    """
    device = torch.device("cpu")
    model = load_model(checkpoint, device=device).eval()
    val = AffordanceTestDataset(val_root, split, model.image_size, vocabulary=model.vocabulary)
    background = BackgroundFrames(val_root, split, model.image_size)
    if len(background) == 0:
        raise ValueError(
            f"{val_root}/{split}/testset/background holds no frame: the probe needs "
            "background-only frames (write_agd_corpus writes them)"
        )
    extracted = extract_test_set(model, val, device=device, background=background)
    xs, ys, frames, is_bg = [], [], [], []
    frame = 0
    with torch.inference_mode():
        for feats, _, _, info in extracted.batches:
            rows = _rows(model, feats)
            n = feats.keys.shape[0]
            xs.append(rows)
            ys.append(info["afforded"].cpu().bool().flatten().numpy())
            frames.append(np.repeat(np.arange(frame, frame + n), model.num_classes))
            is_bg.append(np.zeros(len(rows), dtype=bool))
            frame += n
        rows = _rows(model, extracted.background)
        n = extracted.background.keys.shape[0]
        xs.append(rows)
        ys.append(np.zeros(len(rows), dtype=bool))
        frames.append(np.repeat(np.arange(frame, frame + n), model.num_classes))
        is_bg.append(np.ones(len(rows), dtype=bool))
    x, y = np.concatenate(xs), np.concatenate(ys)
    frame_of, bg = np.concatenate(frames), np.concatenate(is_bg)
    if not y.any() or not bg.any():
        raise ValueError("the probe needs afforded pairs and background pairs")
    pos_or_bg = y | bg
    gated = model.objectness is not None
    signals = {
        "peak CAM logit": auroc(x[pos_or_bg, 0], y[pos_or_bg]),
        "peak ego-prompt affinity": auroc(x[pos_or_bg, 1], y[pos_or_bg]),
        "peak DINO saliency": auroc(x[pos_or_bg, 4], y[pos_or_bg]),
    }
    if model.part_prior is not None:
        signals["peak part prior"] = auroc(x[pos_or_bg, 3], y[pos_or_bg])
    if gated:
        signals["objectness"] = auroc(x[pos_or_bg, 2], y[pos_or_bg])
    rng = np.random.default_rng(seed)
    fold = rng.integers(0, 2, frame_of.max() + 1)[frame_of]
    every_row = np.ones(len(y), dtype=bool)
    rules = {"cam+aff": _cross_validated(x, y, fold, every_row, [0, 1])}
    if gated:
        p_object = 1.0 / (1.0 + np.exp(-x[:, 2]))
        rules["cam+aff+objectness"] = _cross_validated(x, y, fold, every_row, [0, 1, 2])
        rules["P(object) x P(afforded | object)"] = (
            _cross_validated(x, y, fold, ~bg, [0, 1]) * p_object
        )
    bg_frames = np.unique(frame_of[bg])
    report = {}
    for name, prob in rules.items():
        absent = prob < min_score
        every_empty = [bool(absent[frame_of == f].all()) for f in bg_frames]
        report[name] = {
            "auroc": auroc(prob, y),
            "afforded_recall": float((~absent[y]).mean()),
            "background_pairs_empty": float(absent[bg].mean()),
            "background_frames_all_empty": float(np.mean(every_empty)),
            "not_afforded_pairs_empty": float(absent[~y & ~bg].mean()),
        }
    return {
        "checkpoint": str(checkpoint),
        "val_root": str(val_root),
        "split": split,
        "min_score": min_score,
        "n_afforded": int(y.sum()),
        "n_not_afforded": int((~y & ~bg).sum()),
        "n_background_frames": len(bg_frames),
        "objectness": gated,
        "signals": signals,
        "rules": report,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.probes.absence", description=__doc__)
    ap.add_argument("--checkpoint", required=True, help="a trained model.pt")
    ap.add_argument("--val-root", required=True, help="validation corpus with background frames")
    ap.add_argument("--split", default="Seen")
    ap.add_argument("--min-score", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args(argv)
    result = probe_absence(args.checkpoint, args.val_root, args.split, min_score=args.min_score)
    print_json_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
