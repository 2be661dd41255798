"""The objectness gate on the test splits of fresh corpora
(``python -m training.probes.objectness_gate``).

With the gate the score is ``P(object in frame) * P(afforded | object)``, so a background-only
frame whose ``P(object)`` is below ``min_score`` has an empty mask for every action and every
method, whatever the rest of the model says. This probe writes corpora with the benchmark's
budget (``training.benchmark``: the same folders, so a later ``make benchmark`` on these seeds
reuses them), and scores, on each split's background frames and test images (every one of
which holds an object):

* ``head``: the objectness head in the weights folder (``objectness_<preset>.pt``);
* ``linear``: the linear read-out of the frame descriptor, fitted as
  ``python -m training.pretrain.objectness`` fits its miner (the gate before the head).

Per corpus, split and gate: background frames at or above ``min_score``, their largest
``P(object)``, and the share of object frames below ``min_score``; pooled over all.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affordance_core import create_model
from affordance_core.data import AffordanceTestDataset, BackgroundFrames
from affordance_core.factory import default_weights_dir
from affordance_core.objectness import (
    fit_linear_objectness,
    load_objectness,
    objectness_file,
)
from affordance_core.registry import get_config
from training.common import print_json_result
from training.evaluate import extract_background
from training.pretrain.objectness import (
    DEFAULT_FIT_SEEDS,
    _frames,
    descriptors_of,
    head_probabilities,
)
from training.probes.objectness_head import _linear_probabilities

__all__ = ["probe_objectness_gate", "main"]


def _row(p_background: np.ndarray, p_objects: np.ndarray, min_score: float) -> dict[str, Any]:
    return {
        "n_background": len(p_background),
        "n_objects": len(p_objects),
        "background_at_or_above": int((p_background >= min_score).sum()),
        "background_max": float(p_background.max()) if len(p_background) else None,
        "objects_below": float((p_objects < min_score).mean()) if len(p_objects) else None,
    }


def probe_objectness_gate(
    out: str | Path,
    corpus_seeds: Sequence[int],
    *,
    model_name: str = "tiny",
    weights_dir: str | None = None,
    min_score: float = 0.5,
    n_frames: int = 3000,
    c: float = 0.1,
    size: int = 128,
    budget: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write (or reuse) ``OUT/corpus_<seed>/data`` per seed and score both gates.

    Args:
        out: the benchmark's output folder.
        corpus_seeds: corpus seeds to write and score.
        model_name, weights_dir: the preset and its weights folder (with the head).
        min_score: the node's and predictor's default threshold.
        n_frames, c, size: the linear read-out's fit (first fit seed of the head's CLI).
        budget: the corpus budget (default: the benchmark's, ``demo_budget(False)``).
    """
    from training.demo.pipeline import make_corpus
    from training.demo.settings import demo_budget

    weights = default_weights_dir(get_config(model_name), weights_dir)
    model = create_model(model_name, vocabulary=["hold"], weights_dir=weights, objectness=False)
    model.eval()
    head = load_objectness(Path(weights) / objectness_file(model_name))
    seed = DEFAULT_FIT_SEEDS[0]
    linear = fit_linear_objectness(
        descriptors_of(
            model, _frames("objects", seed, n_frames, size), n_frames, progress=progress
        ),
        descriptors_of(
            model, _frames("backgrounds", seed, n_frames, size), n_frames, progress=progress
        ),
        c=c,
        seed=seed,
    )
    gates = {
        "head": lambda feats: head_probabilities(head, feats),
        "linear": _linear_probabilities(linear),
    }
    cpu = torch.device("cpu")
    rows, pooled = [], {"head": ([], []), "linear": ([], [])}
    for corpus_seed in corpus_seeds:
        root = Path(out) / f"corpus_{corpus_seed}" / "data"
        make_corpus(root, budget or demo_budget(False), corpus_seed)
        for split in ("Seen", "Unseen"):
            frames = [
                extract_background(model, dataset, device=cpu, batch_size=64)
                for dataset in (
                    BackgroundFrames(root, split, model.image_size),
                    AffordanceTestDataset(root, split, model.image_size),
                )
            ]
            row: dict[str, Any] = {"corpus_seed": corpus_seed, "split": split}
            for name, probabilities in gates.items():
                p = [probabilities(f).double().numpy() for f in frames]
                pooled[name][0].append(p[0])
                pooled[name][1].append(p[1])
                row[name] = _row(p[0], p[1], min_score)
            rows.append(row)
    return {
        "min_score": min_score,
        "pooled": {
            name: _row(np.concatenate(bg), np.concatenate(obj), min_score)
            for name, (bg, obj) in pooled.items()
        },
        "per_split": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m training.probes.objectness_gate", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--out", required=True, help="benchmark output folder for the corpora")
    ap.add_argument("--corpus-seeds", type=int, nargs="+", required=True)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--weights-dir", default=None)
    ap.add_argument("--min-score", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--json", default=None, help="also write the JSON to this file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = probe_objectness_gate(
        args.out,
        args.corpus_seeds,
        model_name=args.model,
        weights_dir=args.weights_dir,
        min_score=args.min_score,
        progress=not args.no_progress,
    )
    print_json_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
