"""The demo's report: ``results.json``, ``results.md`` (tables and numbers) and the heatmap
overlay figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.demo.settings import ROW_METRICS, SPLITS, VALIDATION_SEED_OFFSET
from training.stats import pair_groups

__all__ = ["SHORT", "metric_table", "probe_table", "write_figure", "write_report"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return "–" if value is None else str(value)


#: Probe table rows: label, probe key, key of its trivial baseline.
PROBE_ROWS = (
    ("CLIP object-caption affinity IoU", "clip_object_iou", "centre_affinity_iou"),
    ("CLIP action-prompt affinity IoU", "clip_action_iou", "centre_affinity_iou"),
    (
        "CLIP hand prompt pointing (exo interaction cue)",
        "clip_hand_pointing",
        "centre_hand_pointing",
    ),
    ("DINO part clusters (K-means on keys)", "dino_part_iou", "pixel_part_iou"),
    ("DINO part transfer across instances", "dino_part_transfer_iou", "pixel_part_transfer_iou"),
    ("DINO CLS saliency IoU", "dino_saliency_iou", "centre_saliency_iou"),
)


def probe_table(probe: dict[str, Any]) -> list[str]:
    """Markdown rows: each probe number, at random init and of its trivial baseline."""
    lines = ["| number | trained | random init | trivial baseline |", "|---|---|---|---|"]
    base, rand = probe.get("baselines", {}), probe.get("random", {})
    for label, key, base_key in PROBE_ROWS:
        if key in probe:
            lines.append(
                f"| {label} | {_fmt(probe[key])} | {_fmt(rand.get(key))} | "
                f"{_fmt(base.get(base_key))} ({base_key}) |"
            )
    return lines


#: Column labels of the row metrics.
SHORT = {
    "KLD": "KLD",
    "SIM": "SIM",
    "NSS": "NSS",
    "peak_hit": "peak hit",
    "mask_iou": "mask IoU",
    "action_sensitivity": "action sens.",
    "absence_auroc": "absence AUROC",
    "empty_on_background": "empty on bg",
}


def _inference_cell(row: dict[str, Any]) -> str:
    choice = row.get("inference")
    if not choice:
        return "–"
    prior = choice.get("part_prior_temperature")
    temperature = "" if prior is None else f" T {prior:g}"
    return f"{choice['inference_branch']}/{choice['calibration']}{temperature} @ {choice['step']}"


def metric_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown table of every row (method or baseline) and every metric."""
    lines = [
        "| row | inference @ steps | "
        + " | ".join(SHORT[m] for m in ROW_METRICS)
        + " | n | train s |",
        "|---" * (len(ROW_METRICS) + 4) + "|",
    ]
    for name, row in rows.items():
        cells = " | ".join(_fmt(row[m]) for m in ROW_METRICS)
        lines.append(
            f"| {name} | {_inference_cell(row)} | {cells} | {row['n']} | "
            f"{_fmt(row.get('train_seconds'))} |"
        )
    return lines


def gap_sentence(name: str, gap: dict[str, dict[str, float]]) -> str:
    """One line: SelectiveCL minus ``name`` per metric, mean and 95 % interval."""
    return (
        f"SelectiveCL minus {name}, per test image (mean [95 % interval over (action, "
        f"object) pairs]): "
        + "; ".join(
            f"{k} {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]" for k, g in gap.items()
        )
        + "."
    )


def per_pair_metric(
    rows: dict[str, dict[str, Any]], metric: str = "peak_hit", min_actions: int = 2
) -> dict[str, dict[str, float]]:
    """Mean of a per-image metric per (action, object) pair, for objects with at least
    ``min_actions`` actions in the split: ``{"aff/obj": {row: mean}}``, pairs sorted by
    object then action. Rows without ``per_image`` are left out."""
    scored = {n: r["per_image"] for n, r in rows.items() if r.get("per_image")}
    means: dict[str, dict[str, float]] = {}
    for row, per_image in scored.items():
        groups, names = pair_groups(per_image["key"])
        counts = np.bincount(groups, minlength=len(names))
        values = np.asarray(per_image[metric], dtype=float)
        sums = np.bincount(groups, weights=values, minlength=len(names))
        means[row] = dict(zip(names, (sums / counts).tolist()))
    if not means:
        return {}
    names = list(next(iter(means.values())))
    actions_of: dict[str, set[str]] = {}
    for name in names:
        aff, obj = name.split("/")
        actions_of.setdefault(obj, set()).add(aff)
    kept = sorted(
        (n for n in names if len(actions_of[n.split("/")[1]]) >= min_actions),
        key=lambda n: tuple(reversed(n.split("/"))),
    )
    return {n: {row: m[n] for row, m in means.items() if n in m} for n in kept}


def per_pair_table(pairs: dict[str, dict[str, float]]) -> list[str]:
    """Markdown table of :func:`per_pair_metric`: one line per (action, object) pair."""
    if not pairs:
        return []
    rows = list(next(iter(pairs.values())))
    lines = [
        f"| object | action | {' | '.join(rows)} |",
        "|---" * (len(rows) + 2) + "|",
    ]
    for name, values in pairs.items():
        aff, obj = name.split("/")
        lines.append(f"| {obj} | {aff} | " + " | ".join(_fmt(values.get(r)) for r in rows) + " |")
    return lines


def write_report(out: Path, results: dict[str, Any]) -> str:
    """results.json + results.md; returns the Markdown text."""

    def strip(rows: dict[str, Any]) -> dict[str, Any]:
        return {n: {k: v for k, v in r.items() if k != "per_image"} for n, r in rows.items()}

    per_pair = {s: per_pair_metric(r) for s, r in results["splits"].items()}
    public = {
        **results,
        "splits": {s: strip(r) for s, r in results["splits"].items()},
        "peak_hit_per_pair": per_pair,
    }
    (out / "results.json").write_text(json.dumps(public, indent=1))
    lines = [
        "# Embedded default: results",
        "",
        f"Synthetic corpus (seed {results['seed']}), tiny backbones, batch "
        f"{results['budget']['batch_size']}, at most {results['budget']['iters']} "
        "iterations per method and split, training seed "
        f"{results.get('train_seed', results['seed'])}. Each method's budget (snapshot "
        "step), inference branch, calibration and part prior temperature (T) were chosen on "
        "the validation corpus "
        "(new images of the training categories, corpus seed "
        f"{results['seed'] + VALIDATION_SEED_OFFSET}); the test split was scored once. "
        "selectivecl_paper is SelectiveCL with the paper's settings (ego branch, binary "
        "calibration, lambda = 1, no residual token MLP, exo action prompt), nothing "
        "chosen. KLD lower is better; every other column higher is better "
        "(docs/evaluation.md defines them).",
        "",
    ]
    for split in SPLITS:
        rows = results["splits"].get(split)
        if not rows:
            continue
        lines += [f"## {split}", "", *metric_table(rows), ""]
        ce, scl = rows.get("ce"), rows.get("selectivecl")
        if ce and scl:
            gain = (ce["KLD"] - scl["KLD"]) / ce["KLD"] * 100
            word = "lower" if gain >= 0 else "higher"
            lines += [
                f"SelectiveCL vs CE-only (both with their validation-chosen inference): "
                f"KLD {abs(gain):.1f}% {word}.",
                "",
            ]
        for rival, gap in (scl or {}).get("gaps", {}).items():
            lines += [gap_sentence(rival, gap), ""]
        if per_pair.get(split):
            lines += [
                f"Peak hit per (action, object) pair, objects with two or more actions "
                f"({split} test split):",
                "",
                *per_pair_table(per_pair[split]),
                "",
            ]
    probe = results.get("backbone_probe")
    if probe:
        lines += [
            "## Tiny backbones against trivial baselines (held-out scenes)",
            "",
            *probe_table(probe),
            "",
            "```json",
            json.dumps(probe, indent=1),
            "```",
            "",
        ]
    node = results.get("node")
    if node:
        lines += [
            "## ROS 2 node on synthetic frames",
            "",
            "```json",
            json.dumps(node, indent=1),
            "```",
            "",
        ]
    lines += [f"Total wall time: {results['seconds']:.0f} s.", ""]
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    return text


def _title_strip(names: list[str], tile: int) -> np.ndarray:
    """(24, len(names) * tile, 3) uint8 white strip with one title per tile column."""
    strip = np.full((24, len(names) * tile, 3), 255, np.uint8)
    for i, name in enumerate(names):
        cv2.putText(strip, name, (i * tile + 4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    return strip


def write_figure(out: Path, split: str, models: dict[str, Any], dataset, count: int = 6) -> Path:
    """Rows: test images; columns: image, GT, then each method's heatmap overlay."""
    from affordance_core.visualize import heatmap_overlay

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
    header = _title_strip(["image", "GT", *models], grid.shape[1] // (2 + len(models)))
    path = out / f"overlays_{split}.png"
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([header, grid]), cv2.COLOR_RGB2BGR))
    return path


def write_action_figure(out: Path, split: str, models: dict[str, Any], dataset) -> Path | None:
    """One object under each of its actions: the test object with the most actions, its first
    test image, one row per method, one column per action the object affords."""
    from affordance_core.visualize import heatmap_overlay

    actions_of: dict[str, set[str]] = {}
    first: dict[str, int] = {}
    for index, (*_, key) in enumerate(dataset.samples):
        aff, obj = key.split("/")[:2]
        actions_of.setdefault(obj, set()).add(aff)
        first.setdefault(obj, index)
    obj = max(sorted(actions_of), key=lambda o: len(actions_of[o]))
    item = dataset[first[obj]]
    ids = item["afforded"].nonzero().flatten()
    if len(ids) < 2:
        return None
    image = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    size = image.shape[0]
    vocabulary = next(iter(models.values())).vocabulary
    names = ["image", *(vocabulary[int(i)] for i in ids)]
    rows = []
    for model in models.values():
        maps = model.predict_maps(item["image"][None].expand(len(ids), -1, -1, -1), ids)
        tiles = [image]
        for heat in maps.numpy():
            heat = cv2.resize(heat, (size, size), interpolation=cv2.INTER_LINEAR)
            tiles.append(heatmap_overlay(image, (heat - heat.min()) / (np.ptp(heat) + 1e-10)))
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    header = _title_strip(names, size)
    labels = np.full((grid.shape[0] + 24, 110, 3), 255, np.uint8)
    for r, name in enumerate(models):
        cv2.putText(labels, name, (4, 24 + r * size + size // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    panel = np.concatenate([labels, np.concatenate([header, grid])], axis=1)
    path = out / f"actions_{split}_{obj}.png"
    cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    return path
