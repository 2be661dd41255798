"""Intervals for per-image results that come in clusters of one (action, object) pair.

Test images of one pair share the object category, the action and its GT part, so they are not
independent draws: a bootstrap over single images understates the spread. These helpers
resample whole pairs (a cluster bootstrap), vectorised over the resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["pair_bootstrap", "pair_groups", "paired_gaps"]


def pair_groups(keys: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Cluster ids of test images keyed ``"aff/obj/stem"``.

    Returns:
        (N,) int64 pair id per image and the pair names ``"aff/obj"`` in id order.
    """
    names: dict[str, int] = {}
    ids = [names.setdefault("/".join(key.split("/")[:2]), len(names)) for key in keys]
    return np.asarray(ids, dtype=np.int64), list(names)


def pair_bootstrap(
    values: Sequence[float] | np.ndarray | torch.Tensor,
    groups: np.ndarray,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Mean over images with a percentile interval from resampling whole pairs.

    Each resample draws as many pairs as there are, with replacement, and takes the mean over
    all images of the drawn pairs (a pair drawn twice counts twice). NaN values (an image a
    metric does not apply to) are left out of every mean.

    Args:
        values: (N,) per-image values (e.g. a metric, or a per-image difference of two
            methods on the same images).
        groups: (N,) int pair id per image (:func:`pair_groups`).
        resamples: bootstrap resamples.
        seed: generator seed.
        level: coverage of the interval, in (0, 1).

    Returns:
        ``{"mean", "low", "high", "pairs": G, "n": images with a value}``; NaN mean and
        bounds when no image has a value.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = torch.as_tensor(np.asarray(values, dtype=np.float64))
    g = torch.as_tensor(np.asarray(groups, dtype=np.int64))
    if x.shape != g.shape or x.ndim != 1:
        raise ValueError(
            f"values {tuple(x.shape)} and groups {tuple(g.shape)} must be two (N,) arrays"
        )
    valid = ~torch.isnan(x)
    n_groups = int(g.max()) + 1 if len(g) else 0
    sums = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, torch.where(valid, x, 0.0))
    counts = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, g, valid.double())
    total = float(counts.sum())
    if total == 0:
        nan = float("nan")
        return {"mean": nan, "low": nan, "high": nan, "pairs": n_groups, "n": 0}
    draws = torch.randint(
        n_groups, (resamples, n_groups), generator=torch.Generator().manual_seed(seed)
    )
    weight = torch.zeros(resamples, n_groups, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones_like(draws, dtype=torch.float64)
    )  # (R, G) multiplicity
    means = (weight @ sums) / (weight @ counts).clamp_min(1e-12)
    means = means[(weight @ counts) > 0]
    tail = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=means.dtype))
    return {
        "mean": float(sums.sum() / total),
        "low": float(low),
        "high": float(high),
        "pairs": n_groups,
        "n": int(total),
    }


def paired_gaps(
    rows: dict[str, dict[str, Any]], ours: str, theirs: str, resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per-image gap ``ours - theirs`` on the same test images, with a 95 % interval from a
    bootstrap over (action, object) pairs (:func:`pair_bootstrap`).

    Args:
        rows: rows of ``training.demo.score_rows``; each ``per_image`` holds ``key`` (the
            test images) and one list per per-image metric.
        ours, theirs: the two rows compared.
        resamples, seed: of the bootstrap.

    Returns:
        {metric: {"mean", "low", "high", "pairs", "n"}} for the per-image metrics, in
        ``per_image`` order (a negative KLD gap and positive gaps elsewhere favour ``ours``).

    Raises:
        ValueError: the two rows were scored on different test images.
    """
    a, b = rows[ours]["per_image"], rows[theirs]["per_image"]
    if a["key"] != b["key"]:
        raise ValueError(f"{ours} and {theirs} were scored on different test images")
    groups, _ = pair_groups(a["key"])
    return {
        k: pair_bootstrap(np.asarray(a[k]) - np.asarray(b[k]), groups, resamples, seed)
        for k in a
        if k != "key"
    }
