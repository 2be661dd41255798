"""The demo's stages: corpora, training runs (one process per split), scoring, the node run.

:func:`run_demo` runs them all and hands the results to :mod:`training.demo.report`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.common import generator_fingerprint, source_fingerprint
from training.demo.report import write_action_figure, write_figure, write_report
from training.demo.settings import (
    CORPUS_VERSION,
    METHOD_ORDER,
    ROW_METRICS,
    SPLITS,
    VALIDATION_SEED_OFFSET,
    VARIANTS,
    budget_snapshots,
    demo_budget,
)
from training.stats import paired_gaps

__all__ = [
    "available_cpus",
    "make_corpus",
    "make_validation_corpus",
    "run_demo",
    "run_node_stage",
    "score_rows",
    "train_and_evaluate_split",
    "train_method",
]


def _stage(name: str) -> None:
    print(f"\n== {name}", flush=True)


def make_corpus(
    root: Path,
    budget: dict[str, Any],
    seed: int,
    split_objects: dict[str, dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    """Write the corpus once; a stamp file records the parameters and the generator's source
    fingerprint it was made with, and the corpus is reused only under both."""
    from affordance_core.synthetic.corpus import write_agd_corpus

    stamp = root / "corpus.json"
    params: dict[str, Any] = {
        "seed": seed,
        "version": CORPUS_VERSION,
        "generator": generator_fingerprint(),
        **budget["corpus"],
    }
    if split_objects is not None:
        params["split_objects"] = split_objects
    if stamp.is_file() and json.loads(stamp.read_text()).get("params") == params:
        print(f"reusing corpus in {root}")
        return json.loads(stamp.read_text())
    stats = write_agd_corpus(
        root, seed=seed, split_objects=split_objects, progress=True, **budget["corpus"]
    )
    record = {"params": params, "stats": stats.to_dict()}
    stamp.write_text(json.dumps(record, indent=1))
    return record


def make_validation_corpus(root: Path, budget: dict[str, Any], seed: int) -> dict[str, Any]:
    """Held-out images with GT for model decisions (never the test split).

    Each split's test folder holds new images of that split's *training* categories, rendered
    from seed ``seed + VALIDATION_SEED_OFFSET``: no test image and no unseen category is used
    to choose anything. Its training folders are minimal and unused.
    """
    from affordance_core.synthetic.corpus import DEFAULT_SPLIT_OBJECTS

    split_objects = {
        split: {"train": sorted(objs["train"]), "test": sorted(objs["train"])}
        for split, objs in DEFAULT_SPLIT_OBJECTS.items()
    }
    corpus = {
        "n_exo_per_pair": 1,
        "n_ego_per_pair": 1,
        "n_test_per_pair": budget["corpus"]["n_test_per_pair"],
        "n_background": budget["corpus"].get("n_background", 0),
    }
    return make_corpus(root, {"corpus": corpus}, seed + VALIDATION_SEED_OFFSET, split_objects)


def _mean_stat(log_file: Path, key: str) -> float | None:
    values = []
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            record = json.loads(line)
            if key in record:
                values.append(float(record[key]))
    return round(float(np.mean(values)), 3) if values else None


def train_arguments(
    data_root: Path,
    split: str,
    method: str,
    run_dir: Path,
    budget: dict[str, Any],
    seed: int,
    cache_dir: Path,
    sets: Sequence[str] = (),
) -> list[str]:
    """The ``affordance-train`` arguments of one demo run: the tiny tier on cached features,
    the budget's iterations and batch size, and ``--set`` overrides."""
    args = [
        "--data-root", str(data_root), "--split", split, "--method", method,
        "--model", "tiny", "--out", str(run_dir), "--iters", str(budget["iters"]),
        "--batch-size", str(budget["batch_size"]), "--seed", str(seed),
        "--cache-features", "--cache-dir", str(cache_dir), "--num-workers", "0",
        "--save-every", str(max(budget["iters"] // 2, 1)), "--log-every", "5",
    ]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    return args


def train_method(
    name: str,
    data_root: Path,
    split: str,
    run_dir: Path,
    budget: dict,
    cache_dir: Path,
    seed: int,
    val_root: Path | None = None,
) -> Path:
    """Train one row of :data:`VARIANTS` (or reuse its finished run) and return its model.pt.

    A finished or interrupted run is reused only when ``run_key.json`` in it records the same
    arguments and :func:`~training.common.source_fingerprint`; otherwise it is trained anew.

    With ``val_root``, a variant that chooses gets its budget, inference branch and
    calibration chosen there by ``affordance-train --val-root``.
    """
    from training.train import main as train_main

    method, sets, choose = VARIANTS[name]
    args = train_arguments(data_root, split, method, run_dir, budget, seed, cache_dir, sets)
    if choose and val_root is not None:
        args += ["--val-root", str(val_root), "--val-split", split]
        snapshots = budget_snapshots(budget["iters"])
        if snapshots:
            args += ["--snapshots", *map(str, snapshots)]
    model_path = run_dir / "model.pt"
    stamp = run_dir / "run_key.json"
    key = {"args": args, "source": source_fingerprint()}
    same = stamp.is_file() and json.loads(stamp.read_text()) == key
    if same and model_path.is_file():
        print(f"reusing {model_path}")
        return model_path
    if run_dir.exists() and not same:
        print(f"training {name} ({split}) again: {run_dir} was left by other code or settings")
        shutil.rmtree(run_dir)
    if (run_dir / "last.pt").is_file():
        args = [*args, "--resume"]
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(key))
    code = train_main(args)
    if code not in (0, None):
        raise RuntimeError(f"training {name} on {split} failed (exit {code})")
    return model_path


def score_rows(models: dict[str, Any], test_set) -> dict[str, dict[str, Any]]:
    """Every metric of each model or baseline on one extracted test set, with per-image values
    kept for the intervals (``per_image``)."""
    from training.evaluate import evaluate_model

    rows = {}
    for name, model in models.items():
        metrics = evaluate_model(model, test_set, device=torch.device("cpu"), progress=False)
        rows[name] = {
            **{k: metrics[k] for k in (*ROW_METRICS, "n", "n_background")},
            "per_image": metrics["per_image"],
        }
    return rows


def run_node_stage(checkpoint: Path, seconds: float, out: Path) -> dict[str, Any] | None:
    """Start the ROS 2 node on synthetic frames; None (with a note) if ROS is unavailable."""
    try:
        from affordance_ros.selftest import run_node_selftest
    except ImportError as exc:
        print(f"ROS 2 node stage skipped: {exc}")
        return None
    try:
        return run_node_selftest(checkpoint, seconds=seconds, log_dir=out / "ros_logs")
    except Exception as exc:  # noqa: BLE001 - the demo reports and goes on
        print(f"ROS 2 node stage failed: {exc}")
        return {"error": str(exc)}


def train_and_evaluate_split(
    split: str,
    data_root: Path,
    out: Path,
    budget: dict[str, Any],
    seed: int,
    train_seed: int | None = None,
) -> dict[str, Any]:
    """Stages 3-4 for one split: train every method, evaluate them and the baselines.

    Every method but ``selectivecl_paper`` gets its budget, inference branch, calibration and
    part prior temperature chosen on the validation corpus in ``out / "data_val"`` while it is
    trained; the test split is scored once, at the end.

    Args:
        seed: the corpus seed (names the feature cache).
        train_seed: the training seed (default ``seed``).

    Returns:
        Rows keyed by method or baseline name: the metrics of :data:`ROW_METRICS`, ``n``,
        ``n_background``, ``per_image`` and, for methods, ``train_seconds``,
        ``reliable_rate`` and ``inference`` (the validation choice, None for
        ``selectivecl_paper``); SelectiveCL's row also has ``gaps`` to the object affinity
        and to CE (:func:`training.stats.paired_gaps`).
    """
    from affordance_core import load_model
    from affordance_core.data import AffordanceTestDataset, BackgroundFrames
    from training.baselines import baselines_of
    from training.evaluate import extract_test_set

    train_seed = seed if train_seed is None else train_seed
    shared = data_root.parent  # the corpus, validation corpus and feature cache live together
    _stage(f"3/6 train on {split}")
    info: dict[str, Any] = {}
    trained: dict[str, Path] = {}
    for name in budget["methods"]:
        run_dir = out / "runs" / split / name
        t0 = time.perf_counter()
        trained[name] = train_method(
            name,
            data_root,
            split,
            run_dir,
            budget,
            shared / "feature_cache" / split,
            train_seed,
            val_root=shared / "data_val",
        )
        validation = run_dir / "validation.json"
        info[name] = {
            "train_seconds": round(time.perf_counter() - t0, 1),
            "reliable_rate": _mean_stat(run_dir / "log.jsonl", "stat_reliable_rate"),
            "inference": (
                {k: v for k, v in json.loads(validation.read_text()).items() if k != "scores"}
                if validation.is_file()
                else None
            ),
        }

    _stage(f"4/6 evaluate on {split}")
    models = {name: load_model(path).eval() for name, path in trained.items()}
    first = next(iter(models.values()))
    test_set = extract_test_set(
        first,
        AffordanceTestDataset(data_root, split, first.image_size, vocabulary=first.vocabulary),
        device=torch.device("cpu"),
        background=BackgroundFrames(data_root, split, first.image_size),
    )
    rows = score_rows({**models, **baselines_of(first)}, test_set)
    for name in models:
        rows[name].update(info[name])
    if "selectivecl" in rows:
        rivals = [r for r in ("object affinity alone", "ce") if r in rows]
        rows["selectivecl"]["gaps"] = {r: paired_gaps(rows, "selectivecl", r) for r in rivals}
    _print_rows(split, rows, flush=True)
    return rows


def _print_rows(split: str, rows: dict[str, dict[str, Any]], flush: bool = False) -> None:
    """One progress line per row: KLD, SIM, NSS and peak hit."""
    for name, row in rows.items():
        print(
            f"{split:7s} {name:22s} KLD {row['KLD']:.3f} SIM {row['SIM']:.3f} "
            f"NSS {row['NSS']:.3f} peak {row['peak_hit']:.3f}",
            flush=flush,
        )


def _split_worker(
    split: str,
    data_root: Path,
    out: Path,
    budget: dict[str, Any],
    seed: int,
    threads: int,
    log_path: Path,
    train_seed: int | None = None,
) -> dict[str, Any]:
    """Process-pool entry: one split on ``threads`` CPU threads, its output in ``log_path``."""
    torch.set_num_threads(threads)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log:
        sys.stdout = sys.stderr = log
        logging.basicConfig(
            level=logging.INFO,
            stream=log,
            force=True,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return train_and_evaluate_split(split, data_root, out, budget, seed, train_seed)


def _steps_done(out: Path, split: str, method: str, iters: int) -> int:
    run_dir = out / "runs" / split / method
    if (run_dir / "model.pt").is_file():
        return iters
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return 0
    lines = log.read_text().strip().splitlines()
    try:
        return min(iters, int(json.loads(lines[-1]).get("step", 0))) if lines else 0
    except (ValueError, json.JSONDecodeError):  # a line being written
        return 0


def _last_lines(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text().splitlines()[-n:]) if path.is_file() else "(no log)"


def _run_splits_in_parallel(
    data_root: Path,
    out: Path,
    budget: dict[str, Any],
    seed: int,
    jobs: int,
    train_seed: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Stages 3-4 for all splits in ``jobs`` processes, with one progress bar over all steps."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    from tqdm import tqdm

    threads = max(1, available_cpus() // jobs)
    logs = {split: out / "runs" / split / "demo.log" for split in SPLITS}
    print(
        f"training {len(SPLITS)} splits in {jobs} processes of {threads} thread(s); "
        f"logs: {', '.join(str(p) for p in logs.values())}",
        flush=True,
    )
    total = len(SPLITS) * len(budget["methods"]) * budget["iters"]
    ctx = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(jobs, mp_context=ctx) as pool,
        tqdm(total=total, desc="train all", unit="step", file=sys.stderr) as bar,
    ):
        futures = {
            split: pool.submit(
                _split_worker,
                split,
                data_root,
                out,
                budget,
                seed,
                threads,
                logs[split],
                train_seed,
            )
            for split in SPLITS
        }
        pending = set(futures.values())
        while pending:
            _, pending = wait(pending, timeout=1.0)
            done = sum(
                _steps_done(out, s, m, budget["iters"]) for s in SPLITS for m in budget["methods"]
            )
            bar.update(done - bar.n)
    rows = {}
    for split, future in futures.items():
        try:
            rows[split] = future.result()
        except Exception as exc:
            raise RuntimeError(
                f"the {split} split failed ({exc!r}); the end of its log "
                f"{logs[split]}:\n{_last_lines(logs[split])}"
            ) from exc
        _print_rows(split, rows[split])
    return rows


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_demo(
    out: Path,
    quick: bool = False,
    seed: int = 0,
    jobs: int | None = None,
    budget: dict[str, Any] | None = None,
    methods: Sequence[str] | None = None,
    train_seed: int | None = None,
    node: bool = True,
    figures: bool = True,
    shared: Path | None = None,
) -> dict[str, Any]:
    """Run every stage; returns the results dictionary written to results.json.

    Args:
        out: output folder; what a previous run left there is reused.
        quick: the smaller corpus and training budget.
        seed: corpus and training seed.
        jobs: processes training the splits side by side (default: 2 with at least two
            CPUs, else 1). Each gets an equal share of the CPU threads.
        budget: replaces the budget chosen by ``quick`` (tests use a tiny one).
        methods: replaces the budget's methods (names from ``METHOD_ORDER``).
        train_seed: the training seed (default ``seed``, the corpus seed).
        node: run the ROS 2 node stage.
        figures: write the overlay figures.
        shared: folder of the corpus (``data``), the validation corpus (``data_val``) and the
            feature cache, when several runs share them (default ``out``).
    """
    from affordance_core import load_model
    from affordance_core.data import AffordanceTestDataset

    start = time.perf_counter()
    budget = dict(budget if budget is not None else demo_budget(quick))
    if methods:
        unknown = [m for m in methods if m not in METHOD_ORDER]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHOD_ORDER)}")
        budget["methods"] = tuple(m for m in METHOD_ORDER if m in methods)
    # at most one process per split; each takes an equal share of the CPUs
    jobs = max(1, min(len(SPLITS), jobs if jobs is not None else available_cpus()))
    out.mkdir(parents=True, exist_ok=True)
    shared = out if shared is None else shared
    shared.mkdir(parents=True, exist_ok=True)
    data_root = shared / "data"
    results: dict[str, Any] = {
        "seed": seed,
        "quick": quick,
        "jobs": jobs,
        "train_seed": seed if train_seed is None else train_seed,
        "budget": {k: v for k, v in budget.items() if k != "corpus"},
        "splits": {},
    }

    _stage("1/6 synthetic corpus")
    results["corpus"] = make_corpus(data_root, budget, seed)
    results["validation_corpus"] = make_validation_corpus(shared / "data_val", budget, seed)

    _stage("2/6 tiny backbones")
    from affordance_core.tiny import default_tiny_weights_dir

    weights = default_tiny_weights_dir()
    probe_file = weights / "probe.json"
    if probe_file.is_file():
        results["backbone_probe"] = json.loads(probe_file.read_text())
        print(f"tiny backbones from {weights}; probe: {probe_file}")

    if jobs > 1:
        results["splits"] = _run_splits_in_parallel(data_root, out, budget, seed, jobs, train_seed)
    else:
        results["splits"] = {
            split: train_and_evaluate_split(split, data_root, out, budget, seed, train_seed)
            for split in SPLITS
        }

    _stage("5/6 figures")
    for split in SPLITS if figures else ():
        models = {
            m: load_model(out / "runs" / split / m / "model.pt").eval() for m in budget["methods"]
        }
        first = next(iter(models.values()))
        test_set = AffordanceTestDataset(
            data_root, split, first.image_size, vocabulary=first.vocabulary
        )
        print(f"wrote {write_figure(out, split, models, test_set)}")
        action_figure = write_action_figure(out, split, models, test_set)
        if action_figure is not None:
            print(f"wrote {action_figure}")

    _stage("6/6 ROS 2 node on synthetic camera frames")
    best = out / "runs" / "Seen" / "selectivecl" / "model.pt"
    if node and best.is_file() and budget["node_seconds"] > 0:
        results["node"] = run_node_stage(best, budget["node_seconds"], out)

    results["seconds"] = round(time.perf_counter() - start, 1)
    text = write_report(out, results)
    print("\n" + text)
    return results
