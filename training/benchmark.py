"""``python -m training.benchmark``: the demo's table over several training seeds, on corpus
seeds that no design choice looked at, with intervals over (action, object) pairs.

For each corpus seed it writes one synthetic corpus and its validation corpus (corpus seed +
1000), then runs the demo's training and evaluation (:func:`training.demo.run_demo`, without
the node stage and figures) once per training seed, sharing the corpus and the feature cache.
Every choice (budget, inference branch, calibration) is made on the validation corpus inside
training; the test split is scored once per model.

Reported per split and row:

* the mean over training seeds of each metric and its spread (min and max over seeds);
* a 95 % interval of the per-image metrics from a bootstrap over (action, object) pairs
  (:func:`training.stats.pair_bootstrap`) of the per-image values averaged over the seeds;
* SelectiveCL minus each other row, per image (averaged over the seeds), with the same
  pair-bootstrap interval.

Usage::

    python -m training.benchmark --out outputs/benchmark --corpus-seeds 21 --train-seeds 1 2 3

Each training seed's rows are kept in ``<out>/corpus_<seed>/train_<seed>/rows.json``, so the
seeds can also run as separate processes (``--train-seeds 2``, ``--train-seeds 3``) and a
last call with all of them only aggregates.

The last stdout line is one JSON object with the headline rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.common import source_fingerprint
from training.demo import METHOD_ORDER, ROW_METRICS, SHORT, SPLITS, demo_budget
from training.demo.cli import add_run_arguments

__all__ = ["aggregate", "main", "run_benchmark"]

PER_IMAGE = ("KLD", "SIM", "NSS", "peak_hit", "mask_iou", "action_sensitivity")


def aggregate(
    runs: Sequence[dict[str, dict[str, Any]]], resamples: int = 2000
) -> dict[str, dict[str, Any]]:
    """Combine one split's rows over training seeds.

    Args:
        runs: per training seed, the rows of :func:`training.demo.train_and_evaluate_split`
            (with ``per_image``), all scored on the same test images.

    Returns:
        {row: {metric: {"mean", "min", "max", "per_seed": [...], and for per-image metrics
        "low", "high" (pair-bootstrap 95 % interval)}, "gap_to": {rival: {metric: {"mean",
        "low", "high"}}} (SelectiveCL only), "inference": [choice per seed]}}.
    """
    from training.stats import pair_bootstrap, pair_groups

    names = list(runs[0])
    keys = runs[0][names[0]]["per_image"]["key"]
    groups, _ = pair_groups(keys)
    out: dict[str, dict[str, Any]] = {}
    averaged: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        row: dict[str, Any] = {
            "inference": [run[name].get("inference") for run in runs],
            "n": runs[0][name]["n"],
        }
        averaged[name] = {}
        for metric in ROW_METRICS:
            per_seed = [float(run[name][metric]) for run in runs]
            row[metric] = {
                "mean": float(np.nanmean(per_seed))
                if not np.all(np.isnan(per_seed))
                else float("nan"),
                "min": float(np.min(per_seed)),
                "max": float(np.max(per_seed)),
                "per_seed": per_seed,
            }
            if metric in PER_IMAGE:
                if any(run[name]["per_image"]["key"] != keys for run in runs):
                    raise ValueError(f"{name} was scored on other test images in some seed")
                values = np.nanmean(
                    np.stack(
                        [
                            np.asarray(run[name]["per_image"][metric], dtype=np.float64)
                            for run in runs
                        ]
                    ),
                    0,
                )
                averaged[name][metric] = values
                interval = pair_bootstrap(values, groups, resamples)
                row[metric].update(
                    low=interval["low"], high=interval["high"], pairs=interval["pairs"]
                )
        out[name] = row
    if "selectivecl" in averaged:
        out["selectivecl"]["gap_to"] = {
            rival: {
                m: pair_bootstrap(
                    averaged["selectivecl"][m] - averaged[rival][m], groups, resamples
                )
                for m in PER_IMAGE
            }
            for rival in names
            if rival != "selectivecl"
        }
    return out


def _cell(stat: dict[str, Any]) -> str:
    if np.isnan(stat["mean"]):
        return "–"
    text = f"{stat['mean']:.3f}"
    if "low" in stat:
        text += f" [{stat['low']:.3f}, {stat['high']:.3f}]"
    return text + f" ({stat['min']:.3f}–{stat['max']:.3f})"


def report(results: dict[str, Any]) -> str:
    """Markdown tables of :func:`aggregate`'s output per corpus seed and split."""
    seeds = results["train_seeds"]
    lines = [
        "# Benchmark over training seeds",
        "",
        f"Corpus seeds {results['corpus_seeds']} (never used for a design choice), "
        f"training seeds {seeds}, at most {results['budget']['iters']} iterations of batch "
        f"{results['budget']['batch_size']}; budget, inference branch, calibration and part "
        "prior temperature chosen on each corpus's validation corpus (seed + 1000). "
        "Cells: mean over training seeds [95 % interval from a bootstrap over (action, "
        "object) pairs of the seed-averaged per-image values] (min–max over training "
        "seeds). KLD lower is better; every other column higher is better.",
        "",
    ]
    for corpus_seed, splits in results["corpora"].items():
        for split, rows in splits.items():
            lines += [
                f"## Corpus seed {corpus_seed}, {split}",
                "",
                "| row | " + " | ".join(SHORT[m] for m in ROW_METRICS) + " |",
                "|---" * (len(ROW_METRICS) + 1) + "|",
            ]
            for name, row in rows.items():
                lines.append(
                    f"| {name} | " + " | ".join(_cell(row[m]) for m in ROW_METRICS) + " |"
                )
            gaps = rows.get("selectivecl", {}).get("gap_to", {})
            if gaps:
                lines += [
                    "",
                    "SelectiveCL minus each row, per image (seed-averaged; mean "
                    "[95 % pair-bootstrap interval]):",
                    "",
                    "| row | " + " | ".join(SHORT[m] for m in PER_IMAGE) + " |",
                    "|---" * (len(PER_IMAGE) + 1) + "|",
                ]
                for rival, gap in gaps.items():
                    lines.append(
                        f"| {rival} | "
                        + " | ".join(
                            f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"
                            for g in (gap[m] for m in PER_IMAGE)
                        )
                        + " |"
                    )
            lines.append("")
    lines += [f"Wall time: {results['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def seed_rows(
    shared: Path,
    corpus_seed: int,
    train_seed: int,
    budget: dict[str, Any],
    jobs: int | None = None,
) -> dict[str, dict[str, Any]]:
    """One training seed's rows per split (with ``per_image``), from ``rows.json`` in its run
    folder when a run with the same budget and :func:`~training.common.source_fingerprint`
    wrote it, else by :func:`training.demo.run_demo` (which itself reuses finished models
    under the same rule). Seeds can thus run in separate processes and be aggregated
    afterwards."""
    from training.demo import run_demo

    out = shared / f"train_{train_seed}"
    key = json.loads(
        json.dumps(
            {
                "budget": budget,
                "corpus_seed": corpus_seed,
                "train_seed": train_seed,
                "source": source_fingerprint(),
            }
        )
    )
    cache = out / "rows.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            print(f"reusing {cache}")
            return saved["splits"]
    results = run_demo(
        out,
        seed=corpus_seed,
        train_seed=train_seed,
        jobs=jobs,
        budget=budget,
        node=False,
        figures=False,
        shared=shared,
    )
    cache.write_text(json.dumps({"key": key, "splits": results["splits"]}))
    return results["splits"]


def run_benchmark(
    out: Path,
    corpus_seeds: Sequence[int],
    train_seeds: Sequence[int],
    quick: bool = False,
    jobs: int | None = None,
    methods: Sequence[str] | None = None,
    budget: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and score every method for each (corpus seed, training seed); see the module doc.

    Returns:
        ``{"corpus_seeds", "train_seeds", "budget", "corpora": {seed: {split: aggregate}},
        "seconds"}``, also written to ``out/benchmark.json`` with ``out/benchmark.md``.
    """
    start = time.perf_counter()
    budget = dict(budget if budget is not None else demo_budget(quick))
    if methods:
        budget["methods"] = tuple(m for m in METHOD_ORDER if m in methods)
    out.mkdir(parents=True, exist_ok=True)
    corpora: dict[str, Any] = {}
    for corpus_seed in corpus_seeds:
        shared = out / f"corpus_{corpus_seed}"
        runs = [seed_rows(shared, corpus_seed, t, budget, jobs) for t in train_seeds]
        corpora[str(corpus_seed)] = {
            split: aggregate([r[split] for r in runs]) for split in SPLITS
        }
    results = {
        "corpus_seeds": list(corpus_seeds),
        "train_seeds": list(train_seeds),
        "budget": {k: v for k, v in budget.items() if k != "corpus"},
        "corpus": budget["corpus"],
        "corpora": corpora,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "benchmark.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    (out / "benchmark.md").write_text(text)
    print("\n" + text)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.benchmark",
        description="The demo's methods over several training seeds on corpus seeds no choice "
        "looked at, with intervals over (action, object) pairs.",
    )
    add_run_arguments(parser, "outputs/benchmark")
    parser.add_argument("--corpus-seeds", type=int, nargs="+", default=[21])
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    from training.common import run_cli

    def body(_: Sequence[str] | None) -> int:
        results = run_benchmark(
            Path(args.out),
            args.corpus_seeds,
            args.train_seeds,
            args.quick,
            args.jobs,
            args.methods,
        )
        headline = {
            f"{c}/{s}/{name}": {
                m: round(rows[name][m]["mean"], 4) for m in ("KLD", "SIM", "NSS", "peak_hit")
            }
            for c, splits in results["corpora"].items()
            for s, rows in splits.items()
            for name in rows
            if name in ("selectivecl", "ce", "object affinity alone")
        }
        print(json.dumps(headline), flush=True)
        return 0

    return run_cli("benchmark", body, [])


if __name__ == "__main__":
    sys.exit(main())
