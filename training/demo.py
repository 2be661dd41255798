"""``affordance-demo``: the embedded default, end to end on a CPU.

Stages (each cached under ``--out``, so a second run reuses what it can):

1. write the synthetic affordance corpus (AGD20K layout, Seen and Unseen splits);
2. check the tiny backbones (``weights/tiny``) and copy their probe numbers;
3. train every method on each split with the same seed and budget (``affordance-train``,
   frozen features cached once per split);
4. evaluate them and the trivial baselines (uniform, centre Gaussian, object affinity alone);
5. write ``results.md``, ``results.json`` and heatmap overlay figures;
6. run the ROS 2 node on synthetic camera frames for a few seconds and print what it
   published (skipped with a note when the ROS messages are not built).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

logger = logging.getLogger("affordance.demo")

METHOD_ORDER = ("ce", "locate", "selectivecl", "looptrans", "looptrans_gated")
DEFAULT_METHODS = ("ce", "locate", "selectivecl", "looptrans")
SPLITS = ("Seen", "Unseen")


def _budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {"corpus": {"n_exo_per_pair": 5, "n_ego_per_pair": 2, "n_test_per_pair": 2},
                "iters": 12, "batch_size": 8, "methods": ("ce", "selectivecl", "looptrans"),
                "node_seconds": 3.0}
    return {"corpus": {"n_exo_per_pair": 10, "n_ego_per_pair": 3, "n_test_per_pair": 10},
            "iters": 100, "batch_size": 8, "methods": DEFAULT_METHODS, "node_seconds": 6.0}


def _stage(name: str) -> None:
    print(f"\n== {name}", flush=True)


#: Bumped whenever the generator's output changes, so that a cached corpus is rebuilt.
CORPUS_VERSION = 2


def make_corpus(root: Path, budget: dict[str, Any], seed: int,
                split_objects: dict[str, dict[str, list[str]]] | None = None) -> dict[str, Any]:
    """Write the corpus once; a stamp file records the parameters it was made with."""
    from affordance_core.synthetic.corpus import write_agd_corpus

    stamp = root / "corpus.json"
    params: dict[str, Any] = {"seed": seed, "version": CORPUS_VERSION, **budget["corpus"]}
    if split_objects is not None:
        params["split_objects"] = split_objects
    if stamp.is_file() and json.loads(stamp.read_text()).get("params") == params:
        print(f"reusing corpus in {root}")
        return json.loads(stamp.read_text())
    stats = write_agd_corpus(root, seed=seed, split_objects=split_objects, progress=True,
                             **budget["corpus"])
    record = {"params": params, "stats": stats.to_dict()}
    stamp.write_text(json.dumps(record, indent=1))
    return record


VALIDATION_SEED_OFFSET = 1000


def make_validation_corpus(root: Path, budget: dict[str, Any], seed: int) -> dict[str, Any]:
    """Held-out images with GT for model decisions (never the test split).

    Each split's test folder holds new images of that split's *training* categories, rendered
    from seed ``seed + VALIDATION_SEED_OFFSET``: no test image and no unseen category is used
    to choose anything. Its training folders are minimal and unused.
    """
    from affordance_core.synthetic.corpus import DEFAULT_SPLIT_OBJECTS

    split_objects = {split: {"train": sorted(objs["train"]), "test": sorted(objs["train"])}
                     for split, objs in DEFAULT_SPLIT_OBJECTS.items()}
    corpus = {"n_exo_per_pair": 1, "n_ego_per_pair": 1,
              "n_test_per_pair": budget["corpus"]["n_test_per_pair"]}
    return make_corpus(root, {"corpus": corpus}, seed + VALIDATION_SEED_OFFSET, split_objects)


def choose_inference(model, model_path: Path, val_data) -> dict[str, Any] | None:
    """Pick a trained model's inference branch (ego, exo or ego+exo) and, for a method trained
    with a calibration, its calibration (binary or continuous) on validation data; apply the
    choice to ``model`` and write it into its checkpoint. None for LoopTrans' pixel decoder,
    which has no choice.

    Args:
        model: the model loaded from ``model_path``, in eval mode.
        model_path: its ``model.pt``.
        val_data: the validation ``AffordanceTestDataset`` or its ``extract_test_set``.
    """
    import dataclasses

    from affordance_core.checkpoint import update_checkpoint_config
    from training.evaluate import select_inference

    if model.config.inference_branch == "pixel":
        return None
    calibrations = (("none",) if model.config.calibration == "none"
                    else ("binary", "continuous"))
    best, scores = select_inference(model, val_data, device=torch.device("cpu"),
                                    calibrations=calibrations)
    update_checkpoint_config(model_path, **best)
    model.config = dataclasses.replace(model.config, **best)
    return {"chosen": best, "validation": {c: {k: round(float(v), 4) for k, v in m.items()}
                                           for c, m in scores.items()}}


def _mean_stat(log_file: Path, key: str) -> float | None:
    values = []
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            record = json.loads(line)
            if key in record:
                values.append(float(record[key]))
    return round(float(np.mean(values)), 3) if values else None


def train_method(method: str, data_root: Path, split: str, run_dir: Path, budget: dict,
                 cache_dir: Path, seed: int) -> Path:
    """Train one method (or reuse its finished run) and return its model.pt."""
    from training.train import main as train_main

    model_path = run_dir / "model.pt"
    if model_path.is_file():
        print(f"reusing {model_path}")
        return model_path
    args = ["--data-root", str(data_root), "--split", split, "--method", method,
            "--model", "tiny", "--out", str(run_dir), "--iters", str(budget["iters"]),
            "--batch-size", str(budget["batch_size"]), "--seed", str(seed),
            "--cache-features", "--cache-dir", str(cache_dir), "--num-workers", "0",
            "--save-every", str(max(budget["iters"] // 2, 1)), "--log-every", "5"]
    if (run_dir / "last.pt").is_file():
        args.append("--resume")
    code = train_main(args)
    if code not in (0, None):
        raise RuntimeError(f"training {method} on {split} failed (exit {code})")
    return model_path


def centre_gaussian(size: int, sigma: float = 0.25) -> torch.Tensor:
    """(size, size) isotropic Gaussian centred in the frame, sigma as a fraction of size."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))


def evaluate_baselines(model, dataset) -> dict[str, dict[str, float]]:
    """Uniform map, centre Gaussian and the CLIP object-affinity map alone, on one test set
    (an ``AffordanceTestDataset`` or its ``extract_test_set``)."""
    from affordance_core.backbones import minmax
    from affordance_core.metrics import MetricAccumulator, affordance_metrics, summarize
    from training.evaluate import feature_batches

    uniform, centre, affinity = [], MetricAccumulator(), MetricAccumulator()
    with torch.inference_mode():
        for feats, labels, gt, _ in feature_batches(model, dataset, device=torch.device("cpu")):
            uniform.append(affordance_metrics(torch.ones_like(gt), gt))
            grid = feats.keys.shape[-2:]
            centre.update(centre_gaussian(grid[0])[None].expand(len(gt), -1, -1), gt)
            affinity.update(minmax(model.affinity(feats.clip, labels, "ego")), gt)
    return {"uniform map": summarize(uniform), "centre Gaussian": centre.compute(),
            "object affinity alone": affinity.compute()}


def gap_to_affinity(model, dataset, resamples: int = 2000,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Per-image gap between a model's maps and the object-affinity map alone, with a
    paired-bootstrap 95 % interval of its mean over the test images (an
    ``AffordanceTestDataset`` or its ``extract_test_set``).

    Returns:
        {metric: {"mean", "low", "high"}} for KLD, SIM and NSS (model minus affinity; a
        negative KLD gap and positive SIM / NSS gaps favour the model).
    """
    from affordance_core.backbones import minmax
    from affordance_core.metrics import METRIC_NAMES, affordance_metrics, prepare_prediction
    from training.evaluate import feature_batches

    gaps = []
    with torch.inference_mode():
        for feats, labels, gt, _ in feature_batches(model, dataset, device=torch.device("cpu")):
            size = tuple(gt.shape[-2:])
            ours = affordance_metrics(prepare_prediction(
                model.maps_from_features(feats, labels).float(), size=size), gt)
            theirs = affordance_metrics(prepare_prediction(
                minmax(model.affinity(feats.clip, labels, "ego")).float(), size=size), gt)
            gaps.append(torch.stack([ours[k] - theirs[k] for k in METRIC_NAMES], 1))
    gap = torch.cat(gaps).double()                                               # (n, 3)
    draws = torch.randint(len(gap), (resamples, len(gap)),
                          generator=torch.Generator().manual_seed(seed))
    means = gap[draws].mean(1)                                                   # (R, 3)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype), dim=0)
    return {k: {"mean": float(gap[:, i].mean()), "low": float(low[i]), "high": float(high[i])}
            for i, k in enumerate(METRIC_NAMES)}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return "–" if value is None else str(value)


def selectivecl_check(rows: dict[str, dict[str, Any]]) -> str:
    """One sentence: does SelectiveCL beat CE-only and every baseline on KLD, SIM and NSS?"""
    scl = rows["selectivecl"]
    rivals = [name for name in ("ce", "uniform map", "centre Gaussian", "object affinity alone")
              if name in rows]
    lost = [f"{metric} vs {name} ({_fmt(scl[metric])} vs {_fmt(rows[name][metric])})"
            for name in rivals for metric in ("KLD", "SIM", "NSS")
            if (scl[metric] >= rows[name][metric] if metric == "KLD"
                else scl[metric] <= rows[name][metric])]
    if not lost:
        return f"SelectiveCL beats {', '.join(rivals)} on KLD, SIM and NSS."
    return "SelectiveCL does not beat: " + "; ".join(lost) + "."


PROBE_ROWS = (
    ("CLIP object-caption affinity IoU", "clip_object_iou", "centre_affinity_iou", ">= 0.5"),
    ("CLIP action-prompt affinity IoU", "clip_action_iou", "centre_affinity_iou",
     "> centre prior"),
    ("CLIP hand prompt pointing (exo interaction cue)", "clip_hand_pointing",
     "centre_hand_pointing", "> centre prior"),
    ("DINO part clusters (K-means on keys)", "dino_part_iou", "pixel_part_iou",
     "> raw-pixel K-means"),
    ("DINO part transfer across instances", "dino_part_transfer_iou",
     "pixel_part_transfer_iou", "> raw pixels"),
    ("DINO CLS saliency IoU", "dino_saliency_iou", "centre_saliency_iou", "> centre prior"),
)


def probe_table(probe: dict[str, Any]) -> list[str]:
    """Markdown rows: each probe number against random init and its trivial baseline."""
    lines = ["| number | trained | random init | trivial baseline | target | met |",
             "|---|---|---|---|---|---|"]
    base, rand = probe.get("baselines", {}), probe.get("random", {})
    for label, key, base_key, target in PROBE_ROWS:
        if key not in probe:
            continue
        value, ref = probe[key], base.get(base_key)
        met = value >= 0.5 if target == ">= 0.5" else (ref is not None and value > ref)
        lines.append(f"| {label} | {_fmt(value)} | {_fmt(rand.get(key))} | "
                     f"{_fmt(ref)} ({base_key}) | {target} | {'yes' if met else 'no'} |")
    return lines


def write_report(out: Path, results: dict[str, Any]) -> str:
    """results.json + results.md; returns the Markdown text."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = ["# Embedded default: results", "",
             f"Synthetic corpus, tiny backbones, {results['budget']['iters']} iterations of "
             f"batch {results['budget']['batch_size']} per method and split, seed "
             f"{results['seed']}; the model is the final iteration (no test-set selection). "
             "KLD lower is better; SIM and NSS higher are better.", ""]
    for split in SPLITS:
        rows = results["splits"].get(split)
        if not rows:
            continue
        lines += [f"## {split}", "", "| method | KLD | SIM | NSS | n | train s | "
                  "reliable rate |", "|---|---|---|---|---|---|---|"]
        for name, row in rows.items():
            lines.append(f"| {name} | {_fmt(row['KLD'])} | {_fmt(row['SIM'])} | "
                         f"{_fmt(row['NSS'])} | {row['n']} | {_fmt(row.get('train_seconds'))} "
                         f"| {_fmt(row.get('reliable_rate'))} |")
        ce, scl = rows.get("ce"), rows.get("selectivecl")
        if ce and scl:
            gain = (ce["KLD"] - scl["KLD"]) / ce["KLD"] * 100
            word = "lower" if gain >= 0 else "higher"
            lines += ["", f"SelectiveCL vs CE-only: KLD {abs(gain):.1f}% {word} "
                      f"(the paper reports 16.7% lower on AGD20K-Seen)."]
            lines += ["", selectivecl_check(rows)]
            gap = scl.get("gap_to_affinity")
            if gap:
                lines += ["", "SelectiveCL minus the object affinity alone, per test image "
                          "(mean [95 % paired-bootstrap interval]): " + "; ".join(
                              f"{k} {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"
                              for k, g in gap.items()) + "."]
        for name, row in rows.items():
            choice = row.get("inference")
            if choice:
                val = ", ".join(f"{c} {m['KLD']:.3f}" for c, m in choice["validation"].items())
                chosen = choice["chosen"]
                lines += ["", f"{name} inference branch and calibration, chosen on the "
                          f"validation corpus (new images of the training categories, another "
                          f"seed): {chosen['inference_branch']}/{chosen['calibration']} "
                          f"(validation KLD: {val})."]
        lines.append("")
    probe = results.get("backbone_probe")
    if probe:
        lines += ["## Tiny backbones against trivial baselines (held-out scenes)", "",
                  *probe_table(probe), "", "```json", json.dumps(probe, indent=1), "```", ""]
    node = results.get("node")
    if node:
        lines += ["## ROS 2 node on synthetic frames", "", "```json",
                  json.dumps(node, indent=1), "```", ""]
    lines += [f"Total wall time: {results['seconds']:.0f} s.", ""]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    return text


def write_figure(out: Path, split: str, models: dict[str, Any], dataset, count: int = 6) -> Path:
    """Rows: test images; columns: image, GT, then each method's heatmap overlay."""
    from training.evaluate import heatmap_overlay

    picks = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).astype(int)
    rows = []
    for index in picks:
        item = dataset[int(index)]
        image = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        size = image.shape[0]
        gt = cv2.resize(item["gt"].numpy(), (size, size))
        tiles = [image, heatmap_overlay(image, gt)]
        for model in models.values():
            maps = model.predict_maps(item["image"][None], item["label"][None])
            heat = cv2.resize(maps[0].numpy(), (size, size), interpolation=cv2.INTER_LINEAR)
            heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-10)
            tiles.append(heatmap_overlay(image, heat))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    tile = grid.shape[1] // (2 + len(models))
    for i, name in enumerate(["image", "GT", *models]):
        cv2.putText(header, name, (i * tile + 4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    path = out / f"overlays_{split}.png"
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([header, grid]), cv2.COLOR_RGB2BGR))
    return path


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


def train_and_evaluate_split(split: str, data_root: Path, out: Path, budget: dict[str, Any],
                             seed: int) -> dict[str, Any]:
    """Stages 3-4 for one split: train every method, evaluate them and the baselines.

    Every method but LoopTrans' pixel decoder gets its inference branch (and SelectiveCL its
    calibration) chosen on the validation corpus in ``out / "data_val"`` before it is
    evaluated.

    Returns:
        Rows keyed by method or baseline name: ``KLD``, ``SIM``, ``NSS``, ``n`` and, for
        methods, ``train_seconds``, ``reliable_rate`` and ``inference`` (None, or the
        chosen branch and calibration with their validation scores); SelectiveCL's row
        also has ``gap_to_affinity`` (:func:`gap_to_affinity`).
    """
    from affordance_core import load_model
    from affordance_core.data import AffordanceTestDataset
    from training.evaluate import evaluate_model, extract_test_set

    _stage(f"3/6 train on {split}")
    rows: dict[str, Any] = {}
    trained: dict[str, Path] = {}
    for method in budget["methods"]:
        run_dir = out / "runs" / split / method
        t0 = time.perf_counter()
        trained[method] = train_method(method, data_root, split, run_dir, budget,
                                       out / "feature_cache" / split, seed)
        rows[method] = {"train_seconds": round(time.perf_counter() - t0, 1),
                        "reliable_rate": _mean_stat(run_dir / "log.jsonl",
                                                    "stat_reliable_rate")}

    _stage(f"4/6 evaluate on {split}")
    # Every method runs on the same frozen backbones: extract validation and test once.
    cpu = torch.device("cpu")
    val_set = test_set = None
    for method, path in trained.items():
        model = load_model(path).eval()
        if test_set is None:
            val_set, test_set = [
                extract_test_set(model, AffordanceTestDataset(
                    root, split, model.image_size, vocabulary=model.vocabulary), device=cpu)
                for root in (out / "data_val", data_root)]
        rows[method]["inference"] = choose_inference(model, path, val_set)
        metrics = evaluate_model(model, test_set, device=cpu, progress=False)
        rows[method].update({k: metrics[k] for k in ("KLD", "SIM", "NSS", "n")})
        if method == "selectivecl":
            rows[method]["gap_to_affinity"] = gap_to_affinity(model, test_set)
        print(f"{split:7s} {method:16s} KLD {metrics['KLD']:.3f} SIM {metrics['SIM']:.3f}"
              f" NSS {metrics['NSS']:.3f}", flush=True)
    for name, metrics in evaluate_baselines(model, test_set).items():
        rows[name] = {k: metrics[k] for k in ("KLD", "SIM", "NSS", "n")}
    return rows


def _split_worker(split: str, data_root: Path, out: Path, budget: dict[str, Any], seed: int,
                  threads: int, log_path: Path) -> dict[str, Any]:
    """Process-pool entry: one split on ``threads`` CPU threads, its output in ``log_path``."""
    torch.set_num_threads(threads)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as log:
        sys.stdout = sys.stderr = log
        logging.basicConfig(level=logging.INFO, stream=log, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return train_and_evaluate_split(split, data_root, out, budget, seed)


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


def _run_splits_in_parallel(data_root: Path, out: Path, budget: dict[str, Any], seed: int,
                            jobs: int) -> dict[str, dict[str, Any]]:
    """Stages 3-4 for all splits in ``jobs`` processes, with one progress bar over all steps."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    from tqdm import tqdm

    threads = max(1, available_cpus() // jobs)
    logs = {split: out / "runs" / split / "demo.log" for split in SPLITS}
    print(f"training {len(SPLITS)} splits in {jobs} processes of {threads} thread(s); "
          f"logs: {', '.join(str(p) for p in logs.values())}", flush=True)
    total = len(SPLITS) * len(budget["methods"]) * budget["iters"]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool, \
            tqdm(total=total, desc="train all", unit="step", file=sys.stderr) as bar:
        futures = {split: pool.submit(_split_worker, split, data_root, out, budget, seed,
                                      threads, logs[split]) for split in SPLITS}
        pending = set(futures.values())
        while pending:
            _, pending = wait(pending, timeout=1.0)
            done = sum(_steps_done(out, s, m, budget["iters"])
                       for s in SPLITS for m in budget["methods"])
            bar.update(done - bar.n)
    rows = {}
    for split, future in futures.items():
        try:
            rows[split] = future.result()
        except Exception as exc:
            raise RuntimeError(f"the {split} split failed ({exc!r}); the end of its log "
                               f"{logs[split]}:\n{_last_lines(logs[split])}") from exc
        for name, row in rows[split].items():
            print(f"{split:7s} {name:22s} KLD {row['KLD']:.3f} SIM {row['SIM']:.3f} "
                  f"NSS {row['NSS']:.3f}")
    return rows


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_demo(out: Path, quick: bool = False, seed: int = 0, jobs: int | None = None,
             budget: dict[str, Any] | None = None,
             methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every stage; returns the results dictionary written to results.json.

    Args:
        out: output folder; what a previous run left there is reused.
        quick: the smaller corpus and training budget.
        seed: corpus and training seed.
        jobs: processes training the splits side by side (default: 2 with at least two
            CPUs, else 1). Each gets an equal share of the CPU threads.
        budget: replaces the budget chosen by ``quick`` (tests use a tiny one).
        methods: replaces the budget's methods (names from ``METHOD_ORDER``).
    """
    from affordance_core import load_model
    from affordance_core.data import AffordanceTestDataset

    start = time.perf_counter()
    budget = dict(budget if budget is not None else _budget(quick))
    if methods:
        unknown = [m for m in methods if m not in METHOD_ORDER]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHOD_ORDER)}")
        budget["methods"] = tuple(m for m in METHOD_ORDER if m in methods)
    # at most one process per split; each takes an equal share of the CPUs
    jobs = max(1, min(len(SPLITS), jobs if jobs is not None else available_cpus()))
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "data"
    results: dict[str, Any] = {"seed": seed, "quick": quick, "jobs": jobs,
                               "budget": {k: v for k, v in budget.items() if k != "corpus"},
                               "splits": {}}

    _stage("1/6 synthetic corpus")
    results["corpus"] = make_corpus(data_root, budget, seed)
    results["validation_corpus"] = make_validation_corpus(out / "data_val", budget, seed)

    _stage("2/6 tiny backbones")
    from affordance_core.tiny import default_tiny_weights_dir
    weights = default_tiny_weights_dir()
    probe_file = weights / "probe.json"
    if probe_file.is_file():
        results["backbone_probe"] = json.loads(probe_file.read_text())
        print(f"tiny backbones from {weights}; probe: {probe_file}")

    if jobs > 1:
        results["splits"] = _run_splits_in_parallel(data_root, out, budget, seed, jobs)
    else:
        results["splits"] = {split: train_and_evaluate_split(split, data_root, out, budget, seed)
                             for split in SPLITS}

    _stage("5/6 figures")
    for split in SPLITS:
        models = {m: load_model(out / "runs" / split / m / "model.pt").eval()
                  for m in budget["methods"]}
        first = next(iter(models.values()))
        test_set = AffordanceTestDataset(data_root, split, first.image_size,
                                         vocabulary=first.vocabulary)
        print(f"wrote {write_figure(out, split, models, test_set)}")

    _stage("6/6 ROS 2 node on synthetic camera frames")
    best = out / "runs" / "Seen" / "selectivecl" / "model.pt"
    if best.is_file() and budget["node_seconds"] > 0:
        results["node"] = run_node_stage(best, budget["node_seconds"], out)

    results["seconds"] = round(time.perf_counter() - start, 1)
    text = write_report(out, results)
    print("\n" + text)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="affordance-demo",
        description="Synthetic corpus -> train CE/LOCATE/SelectiveCL/LoopTrans -> evaluate "
                    "-> results table, figures -> ROS 2 node run.")
    parser.add_argument("--out", default="outputs/demo", help="output folder (reused)")
    parser.add_argument("--quick", action="store_true", help="smaller corpus and budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes training the two splits side by side (default: 2 "
                             "with at least two CPUs, else 1)")
    parser.add_argument("--methods", nargs="+", choices=METHOD_ORDER, default=None,
                        help=f"methods to train (default: {' '.join(DEFAULT_METHODS)}; "
                             "looptrans_gated is LoopTrans with the pIoU gate)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from training.common import run_cli

    def body(_: Sequence[str] | None) -> int:
        run_demo(Path(args.out), args.quick, args.seed, args.jobs, methods=args.methods)
        return 0

    return run_cli("affordance-demo", body, [])


if __name__ == "__main__":
    sys.exit(main())
