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
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

logger = logging.getLogger("affordance.demo")

METHOD_ORDER = ("ce", "locate", "selectivecl", "looptrans", "looptrans_gated")
SPLITS = ("Seen", "Unseen")


def _budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {"corpus": {"n_exo_per_pair": 5, "n_ego_per_pair": 2, "n_test_per_pair": 2},
                "iters": 30, "batch_size": 8, "methods": ("ce", "selectivecl", "looptrans"),
                "node_seconds": 3.0}
    return {"corpus": {"n_exo_per_pair": 10, "n_ego_per_pair": 3, "n_test_per_pair": 3},
            "iters": 150, "batch_size": 8, "methods": METHOD_ORDER, "node_seconds": 6.0}


def _stage(name: str) -> None:
    print(f"\n== {name}", flush=True)


def make_corpus(root: Path, budget: dict[str, Any], seed: int) -> dict[str, Any]:
    """Write the corpus once; a stamp file records the parameters it was made with."""
    from affordance_core.synthetic.corpus import write_agd_corpus

    stamp = root / "corpus.json"
    params = {"seed": seed, **budget["corpus"]}
    if stamp.is_file() and json.loads(stamp.read_text()).get("params") == params:
        print(f"reusing corpus in {root}")
        return json.loads(stamp.read_text())
    stats = write_agd_corpus(root, seed=seed, progress=True, **budget["corpus"])
    record = {"params": params, "stats": stats.to_dict()}
    stamp.write_text(json.dumps(record, indent=1))
    return record


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
    """Uniform map, centre Gaussian and the CLIP object-affinity map alone, on one test set."""
    from torch.utils.data import DataLoader

    from affordance_core.backbones import minmax
    from affordance_core.metrics import MetricAccumulator, affordance_metrics, summarize

    uniform, centre, affinity = [], MetricAccumulator(), MetricAccumulator()
    grid = None
    for batch in DataLoader(dataset, batch_size=32):
        gt = batch["gt"]
        uniform.append(affordance_metrics(torch.ones_like(gt), gt))
        feats = model.extract(batch["image"])
        grid = feats.keys.shape[-2:]
        centre.update(centre_gaussian(grid[0])[None].expand(len(gt), -1, -1), gt)
        affinity.update(minmax(model.affinity(feats.clip, batch["label"], "ego")), gt)
    return {"uniform map": summarize(uniform), "centre Gaussian": centre.compute(),
            "object affinity alone": affinity.compute()}


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


def run_demo(out: Path, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run every stage; returns the results dictionary written to results.json."""
    from affordance_core import load_model
    from affordance_core.data import AffordanceTestDataset
    from training.evaluate import evaluate_model

    start = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    budget = _budget(quick)
    out.mkdir(parents=True, exist_ok=True)
    data_root = out / "data"
    results: dict[str, Any] = {"seed": seed, "quick": quick,
                               "budget": {k: v for k, v in budget.items() if k != "corpus"},
                               "splits": {}}

    _stage("1/6 synthetic corpus")
    results["corpus"] = make_corpus(data_root, budget, seed)

    _stage("2/6 tiny backbones")
    from affordance_core.tiny import default_tiny_weights_dir
    weights = default_tiny_weights_dir()
    probe_file = weights / "probe.json"
    if probe_file.is_file():
        results["backbone_probe"] = json.loads(probe_file.read_text())
        print(f"tiny backbones from {weights}; probe: {probe_file}")

    device = torch.device("cpu")
    figure_models: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
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
        models = {}
        test_set = None
        for method, path in trained.items():
            model = load_model(path).eval()
            if test_set is None:
                test_set = AffordanceTestDataset(data_root, split, model.image_size,
                                                 vocabulary=model.vocabulary)
            metrics = evaluate_model(model, test_set, device=device, batch_size=32,
                                     progress=False)
            rows[method].update({k: metrics[k] for k in ("KLD", "SIM", "NSS", "n")})
            print(f"{split:7s} {method:16s} KLD {metrics['KLD']:.3f} SIM {metrics['SIM']:.3f}"
                  f" NSS {metrics['NSS']:.3f}")
            models[method] = model
        any_model = next(iter(models.values()))
        for name, metrics in evaluate_baselines(any_model, test_set).items():
            rows[name] = {k: metrics[k] for k in ("KLD", "SIM", "NSS", "n")}
        results["splits"][split] = rows
        figure_models[split] = {"models": models, "test_set": test_set}

    _stage("5/6 figures")
    for split, entry in figure_models.items():
        path = write_figure(out, split, entry["models"], entry["test_set"])
        print(f"wrote {path}")

    _stage("6/6 ROS 2 node on synthetic camera frames")
    best = out / "runs" / "Seen" / "selectivecl" / "model.pt"
    if best.is_file():
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from training.common import run_cli

    def body(_: Sequence[str] | None) -> int:
        run_demo(Path(args.out), args.quick, args.seed)
        return 0

    return run_cli("affordance-demo", body, [])


if __name__ == "__main__":
    sys.exit(main())
