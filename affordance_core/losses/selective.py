"""SelectiveCL's selective prototypical and pixel contrastive losses (batched)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["weighted_prototypes", "prototype_contrast_loss", "pixel_contrast_loss"]


def weighted_prototypes(features: Tensor, weights: Tensor) -> Tensor:
    """L2-normalised spatial mean of ``features * weights``.

    Args:
        features: (N, F, h, w).
        weights: (N, h, w) (any real values; 1 everywhere gives a global average).

    Returns:
        (N, F) unit vectors.
    """
    return F.normalize((features * weights[:, None]).mean((-1, -2)), dim=-1)


def prototype_contrast_loss(
    anchors: Tensor,
    labels: Tensor,
    ego_pos: Tensor,
    ego_bg: Tensor,
    exo_pos: Tensor,
    exo_bg: Tensor,
    temperature: float = 0.5,
    scale: float = 1.0,
) -> Tensor:
    """Selective prototypical contrast.

    For anchor b (label y): positives are the ego positive prototypes of the *other* samples
    of class y and the exo positive prototypes of every class-y exo image (its own included);
    the denominator holds the positives, the positive prototypes of other classes and the
    background prototypes of class-y samples. The anchor's own ego positive is left out
    everywhere, and background prototypes of other classes are ignored.

    Args:
        anchors: (B, F) unit vectors.
        labels: (B,) int64.
        ego_pos, ego_bg: (B, F) unit prototypes of each sample's ego image.
        exo_pos, exo_bg: (B, E, F) unit prototypes of each sample's exo images.
        temperature: tau.
        scale: multiplier of the loss (1 in the paper; the reference code's SupCon factor
            tau / 0.07 is available by passing it here).

    Returns:
        scalar, mean over anchors.
    """
    b, e, _ = exo_pos.shape
    cand = torch.cat([ego_pos, ego_bg, exo_pos.reshape(b * e, -1), exo_bg.reshape(b * e, -1)])
    owner = torch.cat(
        [torch.arange(b, device=labels.device)] * 2
        + [torch.arange(b, device=labels.device).repeat_interleave(e)] * 2
    )
    cand_label = labels[owner]
    is_pos = torch.zeros(len(cand), dtype=torch.bool, device=labels.device)
    is_pos[:b] = True
    is_pos[2 * b : 2 * b + b * e] = True
    is_ego = torch.zeros_like(is_pos)
    is_ego[: 2 * b] = True

    same = labels[:, None] == cand_label[None]  # (B, M)
    own_ego_pos = (
        is_pos[None]
        & is_ego[None]
        & (owner[None] == torch.arange(b, device=labels.device)[:, None])
    )
    positives = is_pos[None] & same & ~own_ego_pos
    denominator = positives | (is_pos[None] & ~same) | (~is_pos[None] & same)

    logits = anchors @ cand.T / temperature
    logits = logits.masked_fill(~denominator, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos_count = positives.sum(1).clamp_min(1)
    per_anchor = -(log_prob.masked_fill(~positives, 0.0)).sum(1) / pos_count
    return scale * per_anchor.mean()


def pixel_contrast_loss(
    features: Tensor,
    positive: Tensor,
    temperature: float = 0.5,
    scale: float = 1.0,
    anchors: Tensor | None = None,
    background_positives: bool = False,
) -> Tensor:
    """Selective pixel contrast on the ego feature map.

    By default the paper's formulation: anchors are the positive pixels Q+; each anchor's
    positives are the other Q+ pixels and its denominator every other pixel (Q+ and Q-).
    ``anchors`` and ``background_positives`` give the reference code's variant: anchors are
    the object-mask pixels, and an anchor outside Q+ takes the other non-Q+ pixels as its
    positives. Anchors without any positive pixel do not contribute, nor do samples without
    such an anchor.

    Args:
        features: (B, F, h, w) float pixel embeddings (normalised inside).
        positive: (B, h, w) bool, Q+.
        temperature: tau.
        scale: loss multiplier (see :func:`prototype_contrast_loss`).
        anchors: (B, h, w) bool anchor pixels, or None for Q+ itself.
        background_positives: pair non-Q+ anchors with the other non-Q+ pixels (the
            reference); False leaves them without positives.

    Returns:
        scalar: the mean over contributing samples of the mean over their anchors of
        -mean log-probability of the anchor's positives (0 when no sample contributes).
    """
    z = F.normalize(features.flatten(2), dim=1)  # (B, F, P)
    pos = positive.flatten(1)  # (B, P)
    anchor_set = pos if anchors is None else anchors.flatten(1)
    p = pos.shape[1]
    eye = torch.eye(p, dtype=torch.bool, device=features.device)[None]
    logits = (z.transpose(1, 2) @ z / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, P, P)
    if background_positives:
        same = pos[:, :, None] == pos[:, None, :]
    else:
        same = pos[:, :, None] & pos[:, None, :]
    pair = anchor_set[:, :, None] & same & ~eye
    count = pair.sum(-1)  # (B, P)
    per_anchor = -(log_prob.masked_fill(~pair, 0.0)).sum(-1) / count.clamp_min(1)
    anchor = anchor_set & (count > 0)
    per_sample = (per_anchor * anchor).sum(1) / anchor.sum(1).clamp_min(1)
    has = anchor.any(1)
    if not has.any():
        return features.sum() * 0.0
    return scale * per_sample[has].mean()
