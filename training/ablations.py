"""Measured effect of SelectiveCL's paper / reference-code switches, on validation data only.

Trains SelectiveCL on the demo's corpus (seed 0, the demo's budget: 100 iterations, batch 8,
tiny backbones, cached features) once with the defaults and once per flipped switch, and
scores every model on the demo's validation corpus (seed 1000: new images of the training
categories), never on the test split. Each model is scored twice: with the inference branch
and calibration its checkpoint carries (the defaults a user gets) and with the branch and
calibration that the demo's validation choice picks on this corpus (``--eval-flags``).

    python -m training.ablations --out outputs/ablations [--splits Seen Unseen]
        [--variants default kmeans_iters=300 ...]

Writes ``OUT/runs/<split>/<variant>/summary.json`` per run and gathers every finished one
into ``OUT/ablations.json`` and ``OUT/ablations.md`` (a table per split); finished runs are
reused, so an interrupted call can be repeated, and calls with disjoint ``--variants`` can
run side by side on one ``--out``. docs/deviations.md reports the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["VARIANTS", "run_ablations", "main"]

#: (name, --set overrides) of every measured variant; "default" first, then one flip each.
VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("default", ()),
    ("pixel_anchors=object", ("method.pixel_anchors=object",)),
    (
        "pixel_anchors=object+bg_positives",
        ("method.pixel_anchors=object", "method.pixel_bg_positives=true"),
    ),
    ("kmeans_iters=300", ("method.kmeans_iters=300",)),
    ("aff_norm_lr_mult=1", ("method.aff_norm_lr_mult=1",)),
    ("exo_indexing=reference", ("method.exo_indexing=reference",)),
    ("contrast_scale=1", ("method.contrast_scale=1.0",)),
    ("proj_residual=false", ("model.proj_residual=false",)),
    ("exo_cue=prompt", ("model.exo_cue=prompt",)),
    ("proto=object", ("method.proto=object",)),
    ("proto=none", ("method.proto=none",)),
    ("pixel=false", ("method.pixel=false",)),
    ("default, training seed 1", ("train.seed=1",)),  # run-to-run spread of the default
)

#: The demo's validation choice for SelectiveCL on corpus seed 0 (docs/results.md).
DEFAULT_EVAL_FLAGS = ("--inference-branch", "ego+exo", "--calibration", "product")


def _slug(name: str) -> str:
    return name.replace("=", "-").replace("+", "_").replace(", ", "_").replace(" ", "_")


def train_variant(
    sets: Sequence[str],
    data_root: Path,
    split: str,
    run_dir: Path,
    budget: dict[str, Any],
    cache_dir: Path,
    seed: int = 0,
) -> list[str]:
    """Train SelectiveCL with the demo's arguments plus ``--set`` overrides (or reuse a
    finished run); returns the ``affordance-train`` arguments."""
    from training.demo.pipeline import train_arguments
    from training.train import main as train_main

    args = train_arguments(data_root, split, "selectivecl", run_dir, budget, seed, cache_dir, sets)
    args.append("--no-progress")
    if not (run_dir / "model.pt").is_file():
        resume = ["--resume"] if (run_dir / "last.pt").is_file() else []
        with contextlib.redirect_stdout(io.StringIO()):
            code = train_main(args + resume)
        if code not in (0, None):
            raise RuntimeError(f"training {run_dir} failed (exit {code})")
    return args


def score(
    checkpoint: Path, val_root: Path, split: str, flags: Sequence[str], out_json: Path
) -> tuple[dict[str, float], list[str]]:
    """``affordance-eval`` on the validation corpus; (KLD/SIM/NSS/n, the arguments)."""
    from training.evaluate import main as eval_main

    args = [
        "--data-root",
        str(val_root),
        "--split",
        split,
        "--checkpoint",
        str(checkpoint),
        "--json",
        str(out_json),
        "--no-progress",
        *flags,
    ]
    if not out_json.is_file():
        with contextlib.redirect_stdout(io.StringIO()):
            code = eval_main(args)
        if code not in (0, None):
            raise RuntimeError(f"evaluating {checkpoint} failed (exit {code})")
    report = json.loads(out_json.read_text())
    return {k: report[k] for k in ("KLD", "SIM", "NSS", "n")}, args


def run_ablations(
    out: Path,
    splits: Sequence[str] = ("Seen", "Unseen"),
    variants: Sequence[str] | None = None,
    eval_flags: Sequence[str] = DEFAULT_EVAL_FLAGS,
) -> dict[str, Any]:
    """Train and score every variant on every split (variant by variant); each run writes
    ``summary.json`` in its run folder, so several calls with other variants can share one
    ``out``. Returns (and writes) the results of every finished run under ``out``."""
    from training.demo import demo_budget, make_corpus, make_validation_corpus

    unknown = set(variants or ()) - {name for name, _ in VARIANTS}
    if unknown:
        raise ValueError(
            f"unknown variants {sorted(unknown)}; choose from "
            f"{', '.join(name for name, _ in VARIANTS)}"
        )
    chosen = [v for v in VARIANTS if variants is None or v[0] in variants]
    budget = demo_budget(False)
    out.mkdir(parents=True, exist_ok=True)
    make_corpus(out / "data", budget, 0)
    make_validation_corpus(out / "data_val", budget, 0)
    for name, sets in chosen:
        for split in splits:
            run_dir = out / "runs" / split / _slug(name)
            summary_file = run_dir / "summary.json"
            if summary_file.is_file():
                continue
            t0 = time.perf_counter()
            train_args = train_variant(
                sets, out / "data", split, run_dir, budget, out / "feature_cache" / split
            )
            seconds = round(time.perf_counter() - t0, 1)
            own, own_args = score(
                run_dir / "model.pt",
                out / "data_val",
                split,
                (),
                run_dir / "val_checkpoint_inference.json",
            )
            picked, picked_args = score(
                run_dir / "model.pt",
                out / "data_val",
                split,
                eval_flags,
                run_dir / "val_chosen_inference.json",
            )
            summary_file.write_text(
                json.dumps(
                    {
                        "sets": list(sets),
                        "eval_flags": list(eval_flags),
                        "checkpoint_inference": own,
                        "chosen_inference": picked,
                        "train_seconds": seconds,
                        "train": ["affordance-train", *train_args],
                        "eval": [
                            ["affordance-eval", *own_args],
                            ["affordance-eval", *picked_args],
                        ],
                    },
                    indent=1,
                )
            )
            print(
                f"{split:7s} {name:38s} own {own['KLD']:.3f}/{own['SIM']:.3f}/"
                f"{own['NSS']:.3f}  chosen {picked['KLD']:.3f}/{picked['SIM']:.3f}/"
                f"{picked['NSS']:.3f}  ({seconds:.0f} s)",
                flush=True,
            )
    return collect(out)


def collect(out: Path) -> dict[str, Any]:
    """Gather every finished run's summary into ``out/ablations.json`` and ``.md``."""
    results: dict[str, Any] = {"splits": {}}
    for split_dir in sorted((out / "runs").glob("*")):
        rows = {
            name: json.loads((split_dir / _slug(name) / "summary.json").read_text())
            for name, _ in VARIANTS
            if (split_dir / _slug(name) / "summary.json").is_file()
        }
        if rows:
            results["splits"][split_dir.name] = rows
    (out / "ablations.json").write_text(json.dumps(results, indent=1))
    (out / "ablations.md").write_text(_markdown(results))
    return results


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "Validation KLD/SIM/NSS of SelectiveCL (tiny tier, demo budget, corpus seed 0, "
        "validation corpus seed 1000).",
        "",
    ]
    for split, rows in results["splits"].items():
        flags = " ".join(next(iter(rows.values()))["eval_flags"])
        lines += [
            f"## {split}",
            "",
            f"| variant | checkpoint's inference | `{flags}` |",
            "|---|---|---|",
        ]
        for name, row in rows.items():
            a, b = row["checkpoint_inference"], row["chosen_inference"]
            lines.append(
                f"| {name} | {a['KLD']:.3f}/{a['SIM']:.3f}/{a['NSS']:.3f} | "
                f"{b['KLD']:.3f}/{b['SIM']:.3f}/{b['NSS']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.ablations", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default="outputs/ablations")
    parser.add_argument("--splits", nargs="+", default=["Seen", "Unseen"])
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="NAME",
        help=f"subset of: {', '.join(name for name, _ in VARIANTS)}",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--eval-flags",
        nargs=argparse.REMAINDER,
        default=list(DEFAULT_EVAL_FLAGS),
        help="affordance-eval flags of the second score (last option)",
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    run_ablations(Path(args.out), args.splits, args.variants, args.eval_flags)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
