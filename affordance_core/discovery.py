"""Batched part discovery: masked K-means over exocentric descriptors, pIoU reliability.

Every function works on a whole batch at once; samples differ only through masks, so no
Python loop runs over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbones import minmax

__all__ = ["masked_kmeans", "piou", "PartDiscovery", "discover_parts"]


def masked_kmeans(
    points: Tensor,
    valid: Tensor,
    k: int = 3,
    iters: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Lloyd's K-means run independently per batch row on the valid points only.

    Args:
        points: (B, N, D) float descriptors.
        valid: (B, N) bool, which points take part.
        k: clusters per row.
        iters: the most Lloyd iterations. The loop stops early once no assignment changes in
            any row: the centroids are then a fixed point, so the result is exactly that of
            running all ``iters`` (the reference runs up to 300 with a tolerance).
        generator: RNG for the initial centroids (k distinct valid points per row).

    Returns:
        centroids (B, k, D) and ok (B,) bool: rows with at least ``k`` valid points.
        Rows that are not ok carry meaningless centroids.
    """
    b, n, _ = points.shape
    ok = valid.sum(1) >= k
    gen_device = generator.device if generator is not None else points.device
    noise = torch.rand(b, n, generator=generator, device=gen_device).to(points.device)
    noise = noise.masked_fill(~valid, -1.0)
    init = noise.topk(k, dim=1).indices  # (B, k)
    centroids = points.gather(1, init[..., None].expand(-1, -1, points.shape[-1]))
    if iters < 1:
        raise ValueError(f"iters must be a positive number of Lloyd iterations, got {iters}")
    weight = valid.to(points.dtype)
    previous: Tensor | None = None
    for _ in range(iters):
        # squared distances up to the per-point constant |x|^2, which argmin ignores
        dist = (centroids * centroids).sum(-1)[:, None] - 2 * points @ centroids.transpose(1, 2)
        assign = dist.argmin(-1)  # (B, N)
        if previous is not None and torch.equal(assign, previous):
            break  # same assignments give the same centroids from here on
        previous = assign
        onehot = F.one_hot(assign, k).to(points.dtype) * weight[..., None]  # (B, N, k)
        counts = onehot.sum(1)  # (B, k)
        sums = onehot.transpose(1, 2) @ points  # (B, k, D)
        centroids = torch.where(
            counts[..., None] > 0, sums / counts.clamp_min(1.0)[..., None], centroids
        )
    return centroids, ok


def piou(parts: Tensor, saliency: Tensor, eps: float = 1e-10) -> Tensor:
    """LOCATE's part-IoU between binary part maps and a binary saliency map.

    pIoU = 1/2 (|P and S| / |P| + |S| / |P or S|).

    Args:
        parts: (B, K, P) bool candidate part maps.
        saliency: (B, P) bool saliency.

    Returns:
        (B, K) float scores in [0, 1].
    """
    p = parts.float()
    s = saliency.float()[:, None]
    inter = (p * s).sum(-1)
    union = ((p + s) > 0).float().sum(-1)
    return 0.5 * (inter / (p.sum(-1) + eps) + s.sum(-1) / (union + eps))


@dataclass
class PartDiscovery:
    """Result of :func:`discover_parts` for a batch of B samples.

    Attributes:
        centroid: (B, D) L2-normalised best part centroid (meaningless where not reliable).
        reliable: (B,) bool, enough points and best pIoU >= alpha.
        enough_points: (B,) bool, at least K interaction descriptors were found.
        best_piou: (B,) float (0 where not enough points).
        centroids: (B, K, D) every L2-normalised K-means centroid.
        scores: (B, K) pIoU of every centroid's binarised ego similarity map.
    """

    centroid: Tensor
    reliable: Tensor
    enough_points: Tensor
    best_piou: Tensor
    centroids: Tensor
    scores: Tensor


def discover_parts(
    exo_keys: Tensor,
    exo_maps: Tensor,
    ego_keys: Tensor,
    ego_saliency: Tensor,
    region_threshold: float = 0.6,
    piou_threshold: float = 0.6,
    k: int = 3,
    iters: int = 10,
    generator: torch.Generator | None = None,
) -> PartDiscovery:
    """Find the affordance part prototype from exocentric interaction regions.

    Steps (per sample, batched): min-max normalise each exo map and keep the descriptors above
    ``region_threshold`` across the E exo images; cluster them with K-means; compare each
    normalised centroid with the ego descriptors (cosine, min-max, binarised at its mean);
    score each cluster by pIoU against the binarised ego saliency; keep the best.

    Args:
        exo_keys: (B, E, D, h, w) exo descriptors.
        exo_maps: (B, E, h, w) interaction maps (CAM or affinity-derived).
        ego_keys: (B, D, h, w) ego descriptors.
        ego_saliency: (B, h, w) bool binarised ego saliency.
        region_threshold: gamma_1 on the min-max normalised exo maps.
        piou_threshold: alpha, the reliability threshold on the best pIoU.
        k: K-means clusters.
        iters: the most K-means iterations (:func:`masked_kmeans`; the reference's 300).
        generator: RNG of the K-means initialisation.
    """
    b, e, d, h, w = exo_keys.shape
    region = minmax(exo_maps) > region_threshold  # (B, E, h, w)
    points = exo_keys.permute(0, 1, 3, 4, 2).reshape(b, e * h * w, d)
    centroids, enough = masked_kmeans(points, region.reshape(b, -1), k, iters, generator)
    centroids = F.normalize(centroids, dim=-1)  # (B, K, D)
    ego = F.normalize(ego_keys.flatten(2), dim=1)  # (B, D, P)
    sim = minmax(torch.einsum("bkd,bdp->bkp", centroids, ego)[..., None])[..., 0]
    parts = sim > sim.mean(-1, keepdim=True)
    scores = piou(parts, ego_saliency.reshape(b, -1))  # (B, K)
    best, idx = scores.max(1)
    best = torch.where(enough, best, torch.zeros_like(best))
    centroid = centroids.gather(1, idx.view(b, 1, 1).expand(-1, 1, d))[:, 0]
    return PartDiscovery(
        centroid, enough & (best >= piou_threshold), enough, best, centroids, scores
    )
