"""Training methods: which losses a step computes from a batch, and with which weights.

``build_method(name, model, **options)`` returns an ``nn.Module``; calling it on a batch gives a
dict of scalar tensors: ``loss`` (to back-propagate) plus every named term and statistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import minmax
from .discovery import discover_parts
from .losses import (concentration_loss, pixel_contrast_loss, prototype_contrast_loss,
                     prototype_distillation_loss, weighted_prototypes)
from .model import AffordanceModel, Features

__all__ = ["METHODS", "build_method", "Method", "StepInputs", "exo_object_affinity"]


@dataclass
class StepInputs:
    """Backbone features and head outputs shared by every method for one batch.

    Shapes: B samples, E exo images each, C' classifier channels, D descriptor width.
    """

    labels: Tensor          # (B,)
    ego: Features           # B images
    exo: Features           # B*E images, sample-major
    ego_feat: Tensor        # (B, D, h, w) ego view projection
    ego_cam: Tensor         # (B, C', h, w)
    exo_feat: Tensor        # (B*E, D, h, w)
    exo_cam: Tensor         # (B*E, C', h, w)
    num_exo: int

    @property
    def exo_labels(self) -> Tensor:
        return self.labels.repeat_interleave(self.num_exo)


def exo_object_affinity(model: AffordanceModel, exo_clip: Tensor, exo_labels: Tensor,
                        exo_to_ego: Tensor | None = None) -> Tensor:
    """SelectiveCL's exo affinity A_exo: the 3x3 local mean (border-clipped) of the
    interaction cue's cosine times the ego-prompt cosine.

    The cue is the exo action prompt (the paper) or, with ``model.config.exo_cue == "hand"``,
    the hand prompt: object patches next to the hand then score highest.

    Args:
        model: the model whose cached prompt embeddings and ``exo_cue`` are used.
        exo_clip: (N, Dc, h, w) normalised CLIP patch embeddings of N exo images.
        exo_labels: (N,) int64 class ids.
        exo_to_ego: (N, h, w) the ego-prompt cosine when the caller already has it.

    Returns:
        (N, h, w) raw (unnormalised) affinities.
    """
    cue = model.affinity(exo_clip, exo_labels, "hand" if model.config.exo_cue == "hand" else "exo")
    if exo_to_ego is None:
        exo_to_ego = model.affinity(exo_clip, exo_labels, "ego")
    local = F.avg_pool2d(cue[:, None], 3, 1, 1, count_include_pad=False)[:, 0]
    return local * exo_to_ego


def _pick(cams: Tensor, labels: Tensor) -> Tensor:
    """(N, C, h, w), (N,) -> (N, h, w) the labelled channel."""
    return cams.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *cams.shape[2:]))[:, 0]


class Method(nn.Module):
    """Base: runs the backbones once for ego + exo images and the view heads.

    Args:
        model: the affordance model being trained.
        warmup: fraction of training during which CAM-dependent terms stay off (the
            references' "epoch 0").
        seed: seed of the K-means initialisation RNG.
    """

    name = "ce"

    def __init__(self, model: AffordanceModel, warmup: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.warmup = warmup
        self.generator = torch.Generator().manual_seed(seed)

    def features(self, batch: dict[str, Tensor]) -> tuple[Features, Features]:
        """Backbone features of ego and exo images (precomputed ones are used when present)."""
        if "ego_keys" in batch:
            def make(prefix: str) -> Features:
                keys = batch[f"{prefix}_keys"]
                attn = batch[f"{prefix}_attn"]
                clip = batch.get(f"{prefix}_clip")
                if prefix == "exo":
                    keys, attn = keys.flatten(0, 1), attn.flatten(0, 1)
                    clip = clip.flatten(0, 1) if clip is not None else None
                return Features(keys.float(), attn.float(),
                                None if clip is None else clip.float())
            return make("ego"), make("exo")
        ego, exo = batch["ego"], batch["exo"]
        feats = self.model.extract(torch.cat([ego, exo.flatten(0, 1)]))
        b = ego.shape[0]
        return feats.index(slice(0, b)), feats.index(slice(b, None))

    def prepare(self, batch: dict[str, Tensor]) -> StepInputs:
        ego, exo = self.features(batch)
        labels = batch["label"]
        ego_feat, ego_cam = self.model.cam(ego.keys, "ego")
        exo_feat, exo_cam = self.model.cam(exo.keys, "exo")
        return StepInputs(labels, ego, exo, ego_feat, ego_cam, exo_feat, exo_cam,
                          exo.keys.shape[0] // labels.shape[0])

    def ce_terms(self, s: StepInputs) -> dict[str, Tensor]:
        ce_ego = F.cross_entropy(s.ego_cam.mean((-1, -2)), s.labels)
        ce_exo = F.cross_entropy(s.exo_cam.mean((-1, -2)), s.exo_labels)
        return {"ce_ego": ce_ego, "ce_exo": ce_exo}

    def losses(self, s: StepInputs, progress: float) -> dict[str, Tensor]:
        return self.ce_terms(s)

    def forward(self, batch: dict[str, Tensor], progress: float = 1.0) -> dict[str, Tensor]:
        """Args: batch (see the datasets), progress in [0, 1]. Returns: named scalars."""
        s = self.prepare(batch)
        terms = self.losses(s, progress)
        loss_terms = [v for k, v in terms.items() if not k.startswith("stat_")]
        terms["loss"] = torch.stack(loss_terms).sum()
        return terms


class LocateMethod(Method):
    """LOCATE: CE + part-prototype distillation (after warm-up) + concentration loss."""

    name = "locate"

    def __init__(self, model: AffordanceModel, warmup: float = 0.1, seed: int = 0,
                 region_threshold: float = 0.6, piou_threshold: float = 0.6,
                 margin: float = 0.5, concentration_weight: float = 0.07) -> None:
        super().__init__(model, warmup, seed)
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
        exo_map = _pick(s.exo_cam, s.exo_labels).detach().view(b, s.num_exo, h, w)
        sal = s.ego.saliency()
        found = discover_parts(s.exo.keys.view(b, s.num_exo, -1, h, w), exo_map, s.ego.keys,
                               sal > sal.flatten(1).mean(1)[:, None, None],
                               self.region_threshold, self.piou_threshold,
                               generator=self.generator)
        weight = minmax(_pick(s.ego_cam, s.labels))                          # (B, h, w)
        ego_embedding = (s.ego.keys * weight[:, None]).sum((-1, -2)) / (
            weight.sum((-1, -2))[:, None] + 1e-6)
        active = found.reliable & (progress >= self.warmup)
        terms["proto"] = prototype_distillation_loss(ego_embedding, found.centroid, active,
                                                     self.margin)
        terms["stat_reliable_rate"] = found.reliable.float().mean()
        return terms


class SelectiveCLMethod(Method):
    """Selective Contrastive Learning (SelectiveCL, ICCV 2025).

    Args:
        proto: ``part`` (selective: part-level prototypes when discovery is reliable, object
            level otherwise), ``object`` (always object level), or ``none``.
        pixel: enable the selective pixel contrast.
        exo_indexing: ``paper`` (full per-exo 14x14 interaction maps) or ``reference`` (the
            released code's indexing, which reads one 14-value row; kept for comparison).
        temperature: contrastive tau.
        contrast_scale: loss multiplier (1 in the paper; the code's effective 0.5/0.07).
        region_threshold: gamma_1; piou_threshold: alpha.
    """

    name = "selectivecl"

    def __init__(self, model: AffordanceModel, warmup: float = 0.1, seed: int = 0,
                 proto: str = "part", pixel: bool = True, exo_indexing: str = "paper",
                 temperature: float = 0.5, contrast_scale: float = 1.0,
                 region_threshold: float = 0.6, piou_threshold: float = 0.6,
                 proto_weight: float = 1.0, pixel_weight: float = 1.0) -> None:
        super().__init__(model, warmup, seed)
        if model.clip is None or model.proto_head is None:
            raise ValueError("SelectiveCL needs a model built with CLIP and contrast heads: "
                             "create_model(..., method='selectivecl')")
        if proto not in ("part", "object", "none"):
            raise ValueError(f"proto must be part, object or none, not {proto!r}")
        if exo_indexing not in ("paper", "reference"):
            raise ValueError(f"exo_indexing must be paper or reference, not {exo_indexing!r}")
        self.proto = proto
        self.pixel = pixel
        self.exo_indexing = exo_indexing
        self.temperature = temperature
        self.contrast_scale = contrast_scale
        self.region_threshold = region_threshold
        self.piou_threshold = piou_threshold
        self.proto_weight = proto_weight
        self.pixel_weight = pixel_weight

    def losses(self, s: StepInputs, progress: float) -> dict[str, Tensor]:
        model = self.model
        terms = self.ce_terms(s)
        b, e = s.labels.shape[0], s.num_exo
        h, w = s.ego_cam.shape[-2:]
        warm = progress < self.warmup
        a_ego = model.affinity(s.ego.clip, s.labels, "ego")                     # (B, h, w)
        exo_to_ego = model.affinity(s.exo.clip, s.exo_labels, "ego")
        a_exo = exo_object_affinity(model, s.exo.clip, s.exo_labels, exo_to_ego).view(b, e, h, w)
        cam_ego = _pick(s.ego_cam, s.labels)
        cam_exo = _pick(s.exo_cam, s.exo_labels).view(b, e, h, w)
        interaction = a_exo if warm else F.relu(a_exo) * F.relu(cam_exo.detach())

        exo_keys = s.exo.keys.view(b, e, -1, h, w)
        reliable = torch.zeros(b, dtype=torch.bool, device=s.labels.device)
        exo_fallback = a_exo
        if self.exo_indexing == "reference":
            # The released code reads row n of flat exo image b as "exo n of sample b".
            rows = interaction.reshape(b * e, h, w)[:b, :e]                    # (B, E, w)
            interaction = rows.amin(-1)[..., None, None].expand(b, e, h, w).clone()
            interaction[:, :, 0] = rows
            fallback_rows = a_exo.reshape(b * e, h, w)[:b, :e]
            exo_fallback = fallback_rows[:, :, None, :].expand(b, e, h, w)
        stats: dict[str, Tensor] = {}
        if self.proto == "part":
            sal = s.ego.saliency()
            found = discover_parts(exo_keys, interaction.detach(), s.ego.keys,
                                   sal > sal.flatten(1).mean(1)[:, None, None],
                                   self.region_threshold, self.piou_threshold,
                                   generator=self.generator)
            reliable = found.reliable
            stats["stat_reliable_rate"] = reliable.float().mean()
            stats["stat_enough_points_rate"] = found.enough_points.float().mean()
            stats["stat_best_piou"] = found.best_piou.mean()
            centroid = found.centroid                                           # (B, D)
            exo_desc = F.normalize(exo_keys.flatten(3), dim=2)                  # (B, E, D, P)
            ego_desc = F.normalize(s.ego.keys.flatten(2), dim=1)                # (B, D, P)
            exo_cos = torch.einsum("bd,bedp->bep", centroid, exo_desc)
            ego_cos = torch.einsum("bd,bdp->bp", centroid, ego_desc)
            exo_soft = (-(exo_desc - centroid[:, None, :, None]).norm(dim=2)).flatten(1)
            ego_soft = -(ego_desc - centroid[:, :, None]).norm(dim=1)
            exo_part_rel = 0.5 * (exo_cos + exo_soft.softmax(-1).view_as(exo_cos))
            ego_part_rel = 0.5 * (ego_cos + ego_soft.softmax(-1))
            rel = reliable.view(b, 1, 1)
            ego_part = torch.where(rel, ego_part_rel.view(b, h, w), a_ego)
            exo_part = torch.where(rel[..., None], exo_part_rel.view(b, e, h, w), exo_fallback)
        else:
            ego_part, exo_part = a_ego, exo_fallback

        if self.proto != "none":
            if warm:
                ego_bg, exo_bg = 1 - ego_part, 1 - exo_part
            else:
                ego_bg = 1 - ego_part * F.relu(cam_ego)
                exo_bg = 1 - exo_part * F.relu(cam_exo)
            anchor_w = torch.where(reliable.view(b, 1, 1), a_ego, torch.ones_like(a_ego))
            f_ego = model.proto_head(s.ego_feat)
            f_exo = model.proto_head(s.exo_feat)
            fdim = f_ego.shape[1]
            terms["proto"] = self.proto_weight * prototype_contrast_loss(
                weighted_prototypes(f_ego, anchor_w), s.labels,
                weighted_prototypes(f_ego, ego_part), weighted_prototypes(f_ego, ego_bg),
                weighted_prototypes(f_exo, exo_part.flatten(0, 1)).view(b, e, fdim),
                weighted_prototypes(f_exo, exo_bg.flatten(0, 1)).view(b, e, fdim),
                self.temperature, self.contrast_scale)

        if self.pixel:
            rho = exo_to_ego.view(b, e, -1).amax(-1).amin(-1)                   # (B,)
            positive = a_ego > rho.view(b, 1, 1)
            object_mask = minmax(a_ego) >= model.config.object_threshold
            fallback = ~positive.flatten(1).any(1)
            positive = torch.where(fallback.view(b, 1, 1), object_mask, positive)
            terms["pix"] = self.pixel_weight * pixel_contrast_loss(
                model.pixel_head(s.ego_feat), positive, self.temperature, self.contrast_scale)
            stats["stat_pixel_fallback_rate"] = fallback.float().mean()
        terms.update(stats)
        return terms


METHODS: dict[str, type[Method]] = {
    "ce": Method,
    "locate": LocateMethod,
    "selectivecl": SelectiveCLMethod,
}


def build_method(name: str, model: AffordanceModel, **options: Any) -> Method:
    """Build a training method by name.

    Raises:
        ValueError: unknown method (message lists the valid ones) or bad options.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    try:
        return METHODS[name](model, **options)
    except TypeError as exc:
        raise ValueError(f"bad options for method {name!r}: {exc}") from None


from . import methods_looptrans as _looptrans  # noqa: E402,F401 - registers looptrans(_gated)
