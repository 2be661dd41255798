"""LOCATE (CVPR 2023): CE plus part-prototype distillation and a concentration loss."""

from __future__ import annotations

from torch import Tensor

from ..backbones import minmax
from ..discovery import discover_parts
from ..losses import concentration_loss, prototype_distillation_loss
from ..model import AffordanceModel
from .base import Method, MethodSpec, StepInputs, check_kmeans_iters, pick_action_maps

__all__ = ["LocateMethod"]


class LocateMethod(Method):
    """LOCATE: CE + part-prototype distillation (after warm-up) + concentration loss.

    Args (beyond :class:`Method`'s):
        region_threshold: gamma_1; piou_threshold: alpha; margin: distillation margin.
        concentration_weight: weight of the concentration loss.
        kmeans_iters: the most K-means iterations of part discovery (10; the reference 300).
    """

    name = "locate"
    spec = MethodSpec(proj_residual=True, calibration="none")

    def __init__(
        self,
        model: AffordanceModel,
        warmup: float = 0.1,
        seed: int = 0,
        region_threshold: float = 0.6,
        piou_threshold: float = 0.6,
        margin: float = 0.5,
        concentration_weight: float = 0.07,
        kmeans_iters: int = 10,
        aff_norm_lr_mult: float = 10.0,
    ) -> None:
        super().__init__(model, warmup, seed, aff_norm_lr_mult)
        self.kmeans_iters = check_kmeans_iters(kmeans_iters)
        self.region_threshold = region_threshold
        self.piou_threshold = piou_threshold
        self.margin = margin
        self.concentration_weight = concentration_weight

    def losses(self, s: StepInputs, progress: float) -> dict[str, Tensor]:
        terms = self.ce_terms(s)
        c = self.model.num_classes
        terms["concentration"] = self.concentration_weight * concentration_loss(s.ego_cam[:, :c])
        b = s.labels.shape[0]
        h, w = s.ego_cam.shape[-2:]
        exo_map = pick_action_maps(s.exo_cam, s.exo_labels).detach().view(b, s.num_exo, h, w)
        sal = s.ego.saliency()
        found = discover_parts(
            s.exo.keys.view(b, s.num_exo, -1, h, w),
            exo_map,
            s.ego.keys,
            sal > sal.flatten(1).mean(1)[:, None, None],
            self.region_threshold,
            self.piou_threshold,
            iters=self.kmeans_iters,
            generator=self.generator,
        )
        weight = minmax(pick_action_maps(s.ego_cam, s.labels))  # (B, h, w)
        ego_embedding = (s.ego.keys * weight[:, None]).sum((-1, -2)) / (
            weight.sum((-1, -2))[:, None] + 1e-6
        )
        active = found.reliable & (progress >= self.warmup)
        terms["proto"] = prototype_distillation_loss(
            ego_embedding, found.centroid, active, self.margin
        )
        terms["stat_reliable_rate"] = found.reliable.float().mean()
        return terms
