"""LoopTrans (closed-loop transfer, ICCV 2025) as a training method of the shared core.

Branches of :class:`~affordance_core.model.AffordanceModel` used: ``exo`` is the unified
localiser (exo images and, as the "cross CAM", the ego image), ``pixel`` is the ego pixel
decoder whose GT-class CAM is the inference map; the shared classifier carries C + noise
channels. The ``ego`` branch is never run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..clustering import Clusterer, KMeansClusterer
from ..discovery import piou
from ..losses.locate import concentration_loss
from ..losses.looptrans import (
    correlation_loss,
    denoising_distillation_loss,
    pseudo_mask_loss,
    select_pseudo_masks,
)
from ..model import AffordanceModel
from .base import Method, MethodSpec, StepInputs, pick_action_maps

__all__ = ["LoopTransInputs", "LoopTransMethod", "GatedLoopTransMethod"]


@dataclass
class LoopTransInputs(StepInputs):
    """:class:`StepInputs` where ``ego_feat``/``ego_cam`` come from the ego pixel decoder.

    Extra fields: ``cross_feat`` (B, D, h, w) and ``cross_cam`` (B, C', h, w), the ego image
    through the unified (exo) localiser.
    """

    cross_feat: Tensor
    cross_cam: Tensor


class LoopTransMethod(Method):
    """LoopTrans: cross-CAM CE, pseudo-mask distillation, correlation, denoising, concentration.

    Args:
        model: a model built with ``method='looptrans'`` (pixel decoder + noise classes).
        warmup: fraction of training without the pseudo-mask term (0: the reference has none).
        seed: seed of the K-means initialisation RNG.
        ego_pixel_ce: also train the ego pixel decoder with the CE on its GAP logits (the
            paper's intent); False reproduces the reference code, where it gets none.
        gate: SelectiveCL-style reliability gate: a sample's pseudo-mask loss counts only when
            the pIoU of its pseudo-mask against the binarised ego saliency is at least
            ``piou_threshold``; False always trusts the pseudo-label (reference, paper).
        piou_threshold: alpha of the gate.
        cam_threshold: threshold on the min-max normalised cross CAM.
        mse_weight, dice_weight: pseudo-mask loss weights.
        correlation_weight, denoise_weight, concentration_weight: other loss weights.
        temperature: InfoNCE tau of the denoising distillation.
        num_clusters, cluster_iters: K-means settings when no ``clusterer`` is given.
        clusterer: custom patch clusterer (e.g. a trained
            :class:`~affordance_core.clustering.PrototypeClusterer`).
    """

    name = "looptrans"
    spec = MethodSpec(
        proj_residual=True, calibration="none", num_noise_classes=15, inference_branch="pixel"
    )

    def __init__(
        self,
        model: AffordanceModel,
        warmup: float = 0.0,
        seed: int = 0,
        ego_pixel_ce: bool = True,
        gate: bool = False,
        piou_threshold: float = 0.6,
        cam_threshold: float = 0.92,
        mse_weight: float = 10.0,
        dice_weight: float = 2.0,
        correlation_weight: float = 1.5,
        denoise_weight: float = 0.05,
        concentration_weight: float = 0.07,
        temperature: float = 1.0,
        num_clusters: int = 4,
        cluster_iters: int = 10,
        clusterer: Clusterer | None = None,
    ) -> None:
        super().__init__(model, warmup, seed)
        if model.pixel_proj is None or model.config.num_noise_classes <= 0:
            raise ValueError(
                "LoopTrans needs a model with the pixel decoder and noise classes: "
                "create_model(..., method='looptrans')"
            )
        self.ego_pixel_ce = ego_pixel_ce
        self.gate = gate
        self.piou_threshold = piou_threshold
        self.cam_threshold = cam_threshold
        self.mse_weight = mse_weight
        self.dice_weight = dice_weight
        self.correlation_weight = correlation_weight
        self.denoise_weight = denoise_weight
        self.concentration_weight = concentration_weight
        self.temperature = temperature
        self.clusterer = (
            clusterer if clusterer is not None else KMeansClusterer(num_clusters, cluster_iters)
        )

    def prepare(self, batch: dict[str, Tensor]) -> LoopTransInputs:
        ego, exo = self.features(batch)
        labels = batch["label"]
        pixel_feat, pixel_cam = self.model.cam(ego.keys, "pixel")
        cross_feat, cross_cam = self.model.cam(ego.keys, "exo")
        exo_feat, exo_cam = self.model.cam(exo.keys, "exo")
        return LoopTransInputs(
            labels,
            ego,
            exo,
            pixel_feat,
            pixel_cam,
            exo_feat,
            exo_cam,
            exo.keys.shape[0] // labels.shape[0],
            cross_feat,
            cross_cam,
        )

    def ce_terms(self, s: StepInputs) -> dict[str, Tensor]:
        assert isinstance(s, LoopTransInputs)
        terms = {
            "ce_cross": F.cross_entropy(s.cross_cam.mean((-1, -2)), s.labels),
            "ce_exo": F.cross_entropy(s.exo_cam.mean((-1, -2)), s.exo_labels),
        }
        if self.ego_pixel_ce:
            terms["ce_ego"] = F.cross_entropy(s.ego_cam.mean((-1, -2)), s.labels)
        return terms

    def losses(self, s: StepInputs, progress: float) -> dict[str, Tensor]:
        assert isinstance(s, LoopTransInputs)
        terms = self.ce_terms(s)
        b, e = s.labels.shape[0], s.num_exo
        c_all, h, w = s.ego_cam.shape[1:]
        pixel_gt = pick_action_maps(s.ego_cam, s.labels)  # (B, h, w)
        exo_cams = s.exo_cam.view(b, e, c_all, h, w)

        clusters = self.clusterer(s.ego.keys, self.generator)  # (B, h, w)
        found = select_pseudo_masks(
            clusters,
            pick_action_maps(s.cross_cam, s.labels).detach(),
            s.ego.saliency(binarize_heads=False),
            self.clusterer.num_clusters,
            self.cam_threshold,
        )
        sal = s.ego.saliency()
        sal_mask = (sal > sal.flatten(1).mean(1)[:, None, None]).flatten(1)
        score = piou(found.mask.flatten(1)[:, None], sal_mask)[:, 0]  # (B,)
        active = found.valid & (progress >= self.warmup)
        passed = score >= self.piou_threshold
        if self.gate:
            active = active & passed
        mse, dice = pseudo_mask_loss(pixel_gt, found.mask, active)
        terms["pseudo_mse"] = self.mse_weight * mse
        terms["pseudo_dice"] = self.dice_weight * dice
        terms["correlation"] = self.correlation_weight * correlation_loss(s.ego_cam, exo_cams)
        terms["denoise"] = self.denoise_weight * denoising_distillation_loss(
            exo_cams,
            s.exo.keys.view(b, e, -1, h, w),
            pixel_gt,
            s.ego.keys,
            s.labels,
            self.model.num_classes,
            self.temperature,
        )
        terms["concentration"] = self.concentration_weight * concentration_loss(s.ego_cam)

        valid = found.valid.to(score.dtype)
        n_valid = valid.sum().clamp_min(1.0)
        area = found.mask.flatten(1).float().mean(1)
        terms["stat_pseudo_area"] = (area * valid).sum() / n_valid
        terms["stat_pseudo_iou"] = (found.iou * valid).sum() / n_valid
        terms["stat_pseudo_piou"] = (score * valid).sum() / n_valid
        terms["stat_gate_rate"] = (passed & found.valid).float().mean()
        terms["stat_pseudo_active_rate"] = active.float().mean()
        return terms


class GatedLoopTransMethod(LoopTransMethod):
    """LoopTrans with SelectiveCL's reliability gate on the pseudo-masks (``gate=True``)."""

    name = "looptrans_gated"

    def __init__(self, model: AffordanceModel, gate: bool = True, **options: Any) -> None:
        super().__init__(model, gate=gate, **options)
