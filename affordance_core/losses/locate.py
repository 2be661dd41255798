"""LOCATE's losses: part-prototype distillation and the concentration (compactness) loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones import minmax

__all__ = ["concentration_loss", "prototype_distillation_loss"]


def concentration_loss(cams: Tensor, floor: float = 1e-3) -> Tensor:
    """Spatial variance of every class map around its centroid (SCOPS-style).

    Each (h, w) map is min-max normalised, offset by ``floor`` and normalised to a
    distribution p; the loss is E_p[(x - cx)^2 + (y - cy)^2] with x, y in [-1, 1)
    (x = 2 j / w - 1), averaged over classes and batch.

    Args:
        cams: (B, C, h, w) raw CAMs.

    Returns:
        scalar tensor >= 0.
    """
    b, c, h, w = cams.shape
    p = minmax(cams) + floor
    p = p / p.sum((-1, -2), keepdim=True)
    ys = torch.arange(h, device=cams.device, dtype=cams.dtype) / h * 2 - 1
    xs = torch.arange(w, device=cams.device, dtype=cams.dtype) / w * 2 - 1
    py, px = p.sum(-1), p.sum(-2)  # (B, C, h), (B, C, w)
    cy, cx = (py * ys).sum(-1, keepdim=True), (px * xs).sum(-1, keepdim=True)
    var = (py * (ys - cy) ** 2).sum(-1) + (px * (xs - cx) ** 2).sum(-1)
    return var.mean()


def prototype_distillation_loss(
    ego_embedding: Tensor, prototype: Tensor, has_prototype: Tensor, margin: float = 0.5
) -> Tensor:
    """max(0, 1 - cos(ego embedding, part prototype) - margin), over samples with a prototype.

    Args:
        ego_embedding: (B, D) CAM-weighted ego descriptor.
        prototype: (B, D) part prototype.
        has_prototype: (B,) bool.

    Returns:
        scalar; 0 when no sample has a prototype.
    """
    cos = F.cosine_similarity(ego_embedding, prototype, dim=-1)
    loss = (1 - cos - margin).clamp_min(0)
    weight = has_prototype.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1.0)
