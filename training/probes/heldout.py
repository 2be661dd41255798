"""Category-held-out validation: what a part-prior setting does on object categories the model
never trained on, without drawing any test category (``python -m training.probes.heldout``).

The validation corpus of ``affordance-demo`` and ``make benchmark`` holds new images of each
split's *training* categories, so it cannot see how a choice carries to new categories, which
is what the Unseen test split measures. This probe holds out categories of the Unseen training
set instead. For each fold of :data:`HELDOUT_FOLDS` it writes

* a corpus whose training set is the other Unseen training categories and whose test set is
  the held-out ones (pairs whose action the remaining categories afford; every such pair's
  part type is afforded for that action by a remaining category, as in the Unseen split),
* a validation corpus of the remaining categories (``--val-root`` of the run, which chooses
  budget, branch, calibration and temperature there, as in the demo),

trains the method with the demo's budget and runs :func:`training.probes.parts.probe_parts`
on the held-out categories with each hand reach. No Unseen test category is rendered.

Last line: one JSON object (per fold, and the image-weighted mean over folds).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from affordance_core.synthetic.corpus import DEFAULT_SPLIT_OBJECTS, corpus_pairs
from affordance_core.synthetic.world import afforded_parts
from training.common import print_json_result
from training.probes.parts import EGO_METRICS, probe_parts, reach_list

__all__ = ["HELDOUT_FOLDS", "fold_objects", "main", "probe_heldout", "uncovered_pairs"]

#: Held-out categories of each fold, drawn from the Unseen training categories. Only the axe,
#: bicycle, hammer and knife keep every tested part type afforded, for the same action, by a
#: remaining category (a held-out cup, bottle or chair would leave its rim, spout, body or bar
#: untaught; the laptop's actions would leave the vocabulary with it).
HELDOUT_FOLDS: tuple[tuple[str, ...], ...] = (("axe", "bicycle"), ("hammer", "knife"))

#: Seed of the first fold's corpus; never used by the demo (0, 1000) or the benchmark (21, 1021).
DEFAULT_CORPUS_SEED = 5000


def fold_objects(held_out: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """``split_objects`` of one fold: split ``Unseen``, trained on the Unseen training
    categories but ``held_out``, tested on ``held_out``.

    Raises:
        ValueError: a held-out category that is not an Unseen training category.
    """
    train = DEFAULT_SPLIT_OBJECTS["Unseen"]["train"]
    unknown = sorted(set(held_out) - set(train))
    if unknown:
        raise ValueError(f"held-out categories {unknown} are not Unseen training categories")
    rest = sorted(o for o in train if o not in held_out)
    return {"Unseen": {"train": rest, "test": sorted(held_out)}}


def uncovered_pairs(held_out: Sequence[str]) -> list[tuple[str, str, str]]:
    """(action, object, part) of a fold's test pairs whose part type no remaining training
    category affords for that action (empty for every fold of :data:`HELDOUT_FOLDS`)."""
    objs = fold_objects(held_out)["Unseen"]
    train, test = corpus_pairs(objs["train"], objs["test"])
    taught = {(a, p) for a, o in train for p in afforded_parts(o, a)}
    return [(a, o, p) for a, o in test for p in afforded_parts(o, a) if (a, p) not in taught]


def probe_heldout(
    out: Path,
    *,
    corpus_seed: int = DEFAULT_CORPUS_SEED,
    train_seed: int = 0,
    hand_reaches: Sequence[int] = (0, 1, 2),
    folds: Sequence[Sequence[str]] = HELDOUT_FOLDS,
    n_test_per_pair: int = 25,
    quick: bool = False,
) -> dict[str, Any]:
    """Write, train and probe every fold (module docstring) under ``out``.

    Fold ``k`` uses corpus seed ``corpus_seed + k`` and validation seed ``corpus_seed + k +
    VALIDATION_SEED_OFFSET``; finished corpora and runs are reused as the demo reuses them.
    The corpora and the training budget are the demo's (``quick``: ``--quick``'s), but for
    ``n_test_per_pair`` held-out images per pair (each fold tests four pairs).

    Returns:
        ``{"folds": [{"held_out", "n_images", "exo", "ego"}...], "mean": {row: metrics}}``,
        the mean weighting each fold by its number of held-out test images (rows and metrics
        every fold reports).
    """
    from training.demo.pipeline import make_corpus, train_method
    from training.demo.settings import VALIDATION_SEED_OFFSET, demo_budget

    budget = demo_budget(quick)
    results = []
    for k, held_out in enumerate(folds):
        bad = uncovered_pairs(held_out)
        if bad:
            raise ValueError(f"fold {list(held_out)} tests parts no training category has: {bad}")
        fold_dir = out / f"fold{k}_{'_'.join(held_out)}"
        split_objects = fold_objects(held_out)
        rest = split_objects["Unseen"]["train"]
        seed = corpus_seed + k
        tested = {**budget["corpus"], "n_test_per_pair": n_test_per_pair}
        make_corpus(fold_dir / "data", {"corpus": tested}, seed, split_objects)
        val = {"corpus": {**budget["corpus"], "n_exo_per_pair": 1, "n_ego_per_pair": 1}}
        make_corpus(
            fold_dir / "data_val",
            val,
            seed + VALIDATION_SEED_OFFSET,
            {"Unseen": {"train": rest, "test": rest}},
        )
        model_path = train_method(
            "selectivecl",
            fold_dir / "data",
            "Unseen",
            fold_dir / "run",
            budget,
            fold_dir / "cache",
            train_seed,
            val_root=fold_dir / "data_val",
        )
        torch.manual_seed(0)
        probe = probe_parts(
            model_path,
            fold_dir / "data",
            seed,
            fold_dir / "data",
            "Unseen",
            hand_reaches=hand_reaches,
        )
        n_images = sum(1 for _ in (fold_dir / "data" / "Unseen" / "testset" / "GT").rglob("*.png"))
        results.append({"held_out": list(held_out), "n_images": n_images, **probe})
    total = sum(r["n_images"] for r in results)
    rows = [row for row in results[0]["ego"] if all(row in r["ego"] for r in results)]
    mean = {
        row: {
            m: round(sum(r["ego"][row][m] * r["n_images"] for r in results) / total, 4)
            for m in EGO_METRICS
            if all(m in r["ego"][row] for r in results)
        }
        for row in rows
    }
    return {"corpus_seed": corpus_seed, "train_seed": train_seed, "folds": results, "mean": mean}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.probes.heldout", description=__doc__)
    ap.add_argument("--out", default="outputs/heldout", help="folder of the folds' corpora, runs")
    ap.add_argument("--corpus-seed", type=int, default=DEFAULT_CORPUS_SEED)
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--hand-reaches", type=reach_list, default=[0, 1, 2])
    ap.add_argument("--n-test-per-pair", type=int, default=25, help="held-out images per pair")
    ap.add_argument("--quick", action="store_true", help="the demo's --quick corpus and budget")
    ap.add_argument("--json", default=None, help="also write the JSON to this file")
    args = ap.parse_args(argv)
    result = probe_heldout(
        Path(args.out),
        corpus_seed=args.corpus_seed,
        train_seed=args.train_seed,
        hand_reaches=args.hand_reaches,
        n_test_per_pair=args.n_test_per_pair,
        quick=args.quick,
    )
    for row, metrics in result["mean"].items():
        print(f"{row:55s} " + " ".join(f"{m} {v:.3f}" for m, v in metrics.items()))
    print_json_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
