"""LoopTrans' losses (closed-loop transfer, ICCV 2025), batched over samples and clusters.

* :func:`select_pseudo_masks`: ego pixel pseudo-labels from unsupervised clusters, chosen by
  the cross CAM (the ego image through the unified localiser) and the ego saliency.
* :func:`pseudo_mask_loss`: MSE + Dice between the ego pixel CAM and the pseudo-mask.
* :func:`correlation_loss`: class-correlation (Gram) preservation between ego and exo CAMs.
* :func:`denoising_distillation_loss`: the back-transfer; InfoNCE between CAM-pooled exo and
  ego descriptors with the noise-class poolings as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backbones import minmax

__all__ = [
    "PseudoMasks",
    "select_pseudo_masks",
    "pseudo_mask_loss",
    "correlation_loss",
    "cam_pooled_descriptors",
    "info_nce",
    "denoising_distillation_loss",
]


@dataclass
class PseudoMasks:
    """Result of :func:`select_pseudo_masks` for B samples.

    Attributes:
        mask: (B, h, w) bool pseudo-mask (all False where not ``valid``).
        cluster: (B,) int64 index of the chosen cluster.
        background: (B,) int64 index of the cluster taken as background.
        iou: (B,) float IoU in [0, 1] of the chosen cluster with the thresholded cross CAM.
        valid: (B,) bool, a non-empty, non-background cluster existed.
    """

    mask: Tensor
    cluster: Tensor
    background: Tensor
    iou: Tensor
    valid: Tensor


def select_pseudo_masks(
    clusters: Tensor,
    cross_cam: Tensor,
    saliency: Tensor,
    num_clusters: int,
    cam_threshold: float = 0.92,
) -> PseudoMasks:
    """Pick, per sample, the cluster that best matches the cross CAM as the pixel pseudo-label.

    The cross CAM is min-max normalised and thresholded at ``cam_threshold``. The non-empty
    cluster with the lowest mean saliency is background and excluded; among the remaining
    non-empty clusters the one with the highest IoU against the CAM mask is chosen. Empty
    clusters can never be background or chosen (the reference's NaN mean saliency could make
    an empty cluster the background).

    Args:
        clusters: (B, h, w) int64 cluster id of every patch, in [0, num_clusters).
        cross_cam: (B, h, w) raw GT-class CAM of the ego image through the unified localiser.
        saliency: (B, h, w) float ego saliency (any range; only its per-cluster means compare).
        num_clusters: K.
        cam_threshold: threshold on the min-max normalised cross CAM.

    Returns:
        :class:`PseudoMasks`. No gradient flows through it.
    """
    b, h, w = cross_cam.shape
    k = num_clusters
    with torch.no_grad():
        member = F.one_hot(clusters.reshape(b, -1), k).transpose(1, 2).bool()  # (B, K, P)
        cam_mask = (minmax(cross_cam) >= cam_threshold).reshape(b, 1, -1)  # (B, 1, P)
        count = member.sum(-1)  # (B, K)
        iou = (member & cam_mask).sum(-1) / (member | cam_mask).sum(-1).clamp_min(1)
        sal = (member * saliency.reshape(b, 1, -1)).sum(-1) / count.clamp_min(1)
        background = sal.masked_fill(count == 0, float("inf")).argmin(1)  # (B,)
        ids = torch.arange(k, device=clusters.device)
        candidate = (count > 0) & (ids[None] != background[:, None])
        best, cluster = iou.masked_fill(~candidate, -1.0).max(1)
        valid = best >= 0
        mask = (clusters.reshape(b, -1) == cluster[:, None]) & valid[:, None]
    return PseudoMasks(mask.view(b, h, w), cluster, background, best.clamp_min(0.0), valid)


def pseudo_mask_loss(
    cam: Tensor, mask: Tensor, active: Tensor | None = None, smooth: float = 1.0
) -> tuple[Tensor, Tensor]:
    """MSE and Dice between the min-max normalised pixel CAM and a binary pseudo-mask.

    Args:
        cam: (B, h, w) raw GT-class CAM of the ego pixel decoder.
        mask: (B, h, w) bool pseudo-mask.
        active: (B,) bool, samples that contribute (None = all).
        smooth: Dice smoothing term added to numerator and denominator.

    Returns:
        (mse, dice) scalars, each averaged over the active samples (0 when none is active,
        still attached to the graph). Both are 0 when the normalised CAM equals the mask.
    """
    pred = minmax(cam).flatten(1)  # (B, P)
    target = mask.flatten(1).to(pred.dtype)
    mse = (pred - target).pow(2).mean(1)
    dice = 1 - (2 * (pred * target).sum(1) + smooth) / (pred.sum(1) + target.sum(1) + smooth)
    weight = torch.ones_like(mse) if active is None else active.to(mse.dtype)
    denom = weight.sum().clamp_min(1.0)
    return (mse * weight).sum() / denom, (dice * weight).sum() / denom


def correlation_loss(ego_cams: Tensor, exo_cams: Tensor) -> Tensor:
    """1 - cosine between the class Gram matrices of the ego and exo CAMs.

    The ego Gram matrix is F F^T with F the (C', h*w) ego CAMs; the exo one uses the E exo CAMs
    concatenated along space, (C', E*h*w). Rows are compared by cosine (the matrices are
    symmetric, so rows and columns agree), averaged over classes and samples.

    Args:
        ego_cams: (B, C', h, w) raw CAMs of the ego pixel decoder.
        exo_cams: (B, E, C', h, w) raw CAMs of the exo images.

    Returns:
        scalar in [0, 2]; 0 when the Gram matrices are proportional.
    """
    ego = ego_cams.flatten(2)  # (B, C', P)
    exo = exo_cams.transpose(1, 2).flatten(2)  # (B, C', E*P)
    gram_ego = ego @ ego.transpose(1, 2)
    gram_exo = exo @ exo.transpose(1, 2)
    return (1 - F.cosine_similarity(gram_ego, gram_exo, dim=-1, eps=1e-8)).mean()


def cam_pooled_descriptors(cams: Tensor, keys: Tensor) -> Tensor:
    """Spatial mean of each CAM channel times the descriptors.

    Args:
        cams: (N, K, h, w) maps (raw).
        keys: (N, D, h, w) descriptors.

    Returns:
        (N, K, D) pooled descriptors (not normalised).
    """
    return torch.einsum("nkhw,ndhw->nkd", cams, keys) / (cams.shape[-1] * cams.shape[-2])


def info_nce(
    query: Tensor, positive: Tensor, negatives: Tensor, temperature: float = 1.0
) -> Tensor:
    """InfoNCE on cosine similarities with the positive first.

    Args:
        query: (B, D).
        positive: (B, D).
        negatives: (B, M, D) per-sample negatives.
        temperature: tau.

    Returns:
        scalar, mean over samples of -log softmax(cos / tau)[positive]; with M = 0 it is 0.
    """
    q = F.normalize(query, dim=-1)
    keys = F.normalize(torch.cat([positive[:, None], negatives], 1), dim=-1)  # (B, 1+M, D)
    logits = torch.einsum("bd,bmd->bm", q, keys) / temperature
    return (torch.logsumexp(logits, 1) - logits[:, 0]).mean()


def denoising_distillation_loss(
    exo_cams: Tensor,
    exo_keys: Tensor,
    ego_cam: Tensor,
    ego_keys: Tensor,
    labels: Tensor,
    num_classes: int,
    temperature: float = 1.0,
) -> Tensor:
    """LoopTrans' denoising knowledge distillation (the ego-to-exo back-transfer).

    The query pools the exo descriptors with the GT-class exo CAMs, the positive pools the ego
    descriptors with the ego pixel CAM, and each noise channel (classifier channels
    ``num_classes`` onwards) pools the exo descriptors into one negative; exo poolings are
    averaged over the E exos before normalisation. Descriptors are constants (detached), so
    gradients reach only the CAMs: the exo GT and noise channels and the ego pixel CAM.

    Args:
        exo_cams: (B, E, C', h, w) raw exo CAMs, C' = num_classes + noise classes.
        exo_keys: (B, E, D, h, w) exo descriptors.
        ego_cam: (B, h, w) raw GT-class CAM of the ego pixel decoder.
        ego_keys: (B, D, h, w) ego descriptors.
        labels: (B,) int64 class ids in [0, num_classes).
        num_classes: C, number of real classes.
        temperature: InfoNCE tau (1 in the reference).

    Returns:
        scalar >= 0.
    """
    b, e, c_all, h, w = exo_cams.shape
    noise = torch.arange(num_classes, c_all, device=labels.device)
    channels = torch.cat([labels[:, None], noise[None].expand(b, -1)], 1)  # (B, 1+N)
    picked = exo_cams.gather(2, channels[:, None, :, None, None].expand(b, e, -1, h, w))
    pooled = cam_pooled_descriptors(picked.flatten(0, 1), exo_keys.detach().flatten(0, 1))
    pooled = pooled.view(b, e, -1, pooled.shape[-1]).mean(1)  # (B, 1+N, D)
    positive = cam_pooled_descriptors(ego_cam[:, None], ego_keys.detach())[:, 0]
    return info_nce(pooled[:, 0], positive, pooled[:, 1:], temperature)
