"""Selective Contrastive Learning (SelectiveCL, ICCV 2025).

The composition of the paper's losses is written as one pure function per step (interaction
map, part relevance, part selection, background and anchor weights, pixel labels) so that each
can be checked on hand-made tensors; :class:`SelectiveCLMethod` chains them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..affinity import exo_object_affinity
from ..backbones import minmax
from ..discovery import discover_parts
from ..losses import pixel_contrast_loss, prototype_contrast_loss, weighted_prototypes
from ..model import AffordanceModel
from .base import Method, MethodSpec, StepInputs, check_kmeans_iters, pick_action_maps

__all__ = [
    "SelectiveCLMethod",
    "interaction_map",
    "reference_exo_rows",
    "part_relevance",
    "select_part_maps",
    "background_weights",
    "anchor_weights",
    "pixel_threshold",
    "pixel_labels",
]


# Shapes: B samples, E exo images each, h x w grid, D descriptor width; every tensor is
# float32 unless said otherwise.


def interaction_map(a_exo: Tensor, cam_exo: Tensor, warm: bool) -> Tensor:
    """The exo interaction map M_exo that part discovery thresholds.

    Args:
        a_exo: (B, E, h, w) raw exo affinity A_exo.
        cam_exo: (B, E, h, w) raw exo CAM of the labelled class.
        warm: True during warm-up (the references' epoch 0).

    Returns:
        (B, E, h, w): ``a_exo`` itself during warm-up, ``relu(a_exo) * relu(cam_exo)`` after
        (the CAM detached).
    """
    return a_exo if warm else F.relu(a_exo) * F.relu(cam_exo.detach())


def reference_exo_rows(interaction: Tensor, a_exo: Tensor) -> tuple[Tensor, Tensor]:
    """The released code's exo indexing, reproduced for comparison.

    The code reshapes the exo maps to (B*E, h, w) and then reads ``[b, n]``, i.e. row n of
    flat exo image b. Part discovery then thresholds those w values (they are placed in the
    top row of exo n of sample b, every other cell carrying the row's minimum so that min-max
    normalisation leaves the row alone), and the unreliable fallback broadcasts the row down
    all h rows.

    Args:
        interaction: (B, E, h, w) interaction maps; needs B * E >= B and E <= h.
        a_exo: (B, E, h, w) raw exo affinities.

    Returns:
        ((B, E, h, w) interaction maps as the code sees them,
         (B, E, h, w) the code's exo fallback part maps).
    """
    b, e, h, w = interaction.shape
    rows = interaction.reshape(b * e, h, w)[:b, :e]  # (B, E, w)
    seen = rows.amin(-1)[..., None, None].expand(b, e, h, w).clone()
    seen[:, :, 0] = rows
    fallback_rows = a_exo.reshape(b * e, h, w)[:b, :e]
    return seen, fallback_rows[:, :, None, :].expand(b, e, h, w)


def part_relevance(centroid: Tensor, exo_keys: Tensor, ego_keys: Tensor) -> tuple[Tensor, Tensor]:
    """Part maps of a reliable sample from its winning centroid c.

    Each map is 1/2 [cos(c, descriptor) + softmax over the view's patches of -||d - c||], with
    d the L2-normalised descriptor (both sides normalised; the code mixes a raw descriptor with
    the normalised centroid). The exo softmax runs over all E x h x w exo patches together.

    Args:
        centroid: (B, D) unit part centroid.
        exo_keys: (B, E, D, h, w) exo descriptors.
        ego_keys: (B, D, h, w) ego descriptors.

    Returns:
        ((B, h, w) ego part map, (B, E, h, w) exo part map).
    """
    b, e, _, h, w = exo_keys.shape
    exo_desc = F.normalize(exo_keys.flatten(3), dim=2)  # (B, E, D, P)
    ego_desc = F.normalize(ego_keys.flatten(2), dim=1)  # (B, D, P)
    exo_cos = torch.einsum("bd,bedp->bep", centroid, exo_desc)
    ego_cos = torch.einsum("bd,bdp->bp", centroid, ego_desc)
    exo_soft = (-(exo_desc - centroid[:, None, :, None]).norm(dim=2)).flatten(1)
    ego_soft = -(ego_desc - centroid[:, :, None]).norm(dim=1)
    exo_part = 0.5 * (exo_cos + exo_soft.softmax(-1).view_as(exo_cos))
    ego_part = 0.5 * (ego_cos + ego_soft.softmax(-1))
    return ego_part.view(b, h, w), exo_part.view(b, e, h, w)


def select_part_maps(
    reliable: Tensor,
    ego_relevance: Tensor,
    exo_relevance: Tensor,
    a_ego: Tensor,
    exo_fallback: Tensor,
) -> tuple[Tensor, Tensor]:
    """Selective part maps: part level where discovery is reliable, object level otherwise.

    Args:
        reliable: (B,) bool.
        ego_relevance, exo_relevance: (B, h, w) and (B, E, h, w) from :func:`part_relevance`.
        a_ego: (B, h, w) raw ego affinity (the unreliable ego map).
        exo_fallback: (B, E, h, w) the unreliable exo map (A_exo, or the reference's rows).

    Returns:
        ((B, h, w) ego part maps, (B, E, h, w) exo part maps).
    """
    rel = reliable.view(-1, 1, 1)
    return (
        torch.where(rel, ego_relevance, a_ego),
        torch.where(rel[..., None], exo_relevance, exo_fallback),
    )


def background_weights(
    ego_part: Tensor, exo_part: Tensor, cam_ego: Tensor, cam_exo: Tensor, warm: bool
) -> tuple[Tensor, Tensor]:
    """Background weight maps of the prototypical contrast.

    ``1 - part`` during warm-up, ``1 - part * relu(CAM)`` after; not detached, so the loss
    reaches the classifier through the CAMs (as in the reference).

    Args:
        ego_part: (B, h, w); exo_part: (B, E, h, w).
        cam_ego: (B, h, w) and cam_exo: (B, E, h, w) raw CAMs of the labelled class.
        warm: True during warm-up.

    Returns:
        ((B, h, w) ego, (B, E, h, w) exo background weights).
    """
    if warm:
        return 1 - ego_part, 1 - exo_part
    return 1 - ego_part * F.relu(cam_ego), 1 - exo_part * F.relu(cam_exo)


def anchor_weights(reliable: Tensor, a_ego: Tensor) -> Tensor:
    """Anchor weight maps: the raw ego affinity for reliable samples, ones (a global
    average) for the others.

    Args:
        reliable: (B,) bool; a_ego: (B, h, w).

    Returns:
        (B, h, w).
    """
    return torch.where(reliable.view(-1, 1, 1), a_ego, torch.ones_like(a_ego))


def pixel_threshold(exo_to_ego: Tensor) -> Tensor:
    """rho: the minimum over a sample's exo images of their highest exo-patch-to-ego-prompt
    cosine.

    Args:
        exo_to_ego: (B, E, h, w) cosines of the exo CLIP patches with the ego prompt.

    Returns:
        (B,) thresholds.
    """
    b, e = exo_to_ego.shape[:2]
    return exo_to_ego.reshape(b, e, -1).amax(-1).amin(-1)


def pixel_labels(
    a_ego: Tensor, rho: Tensor, object_threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Q+ of the selective pixel contrast, with the object-level fallback.

    Args:
        a_ego: (B, h, w) raw ego affinity.
        rho: (B,) thresholds (:func:`pixel_threshold`).
        object_threshold: gamma_2 on the min-max normalised ego affinity.

    Returns:
        ((B, h, w) bool Q+: ``a_ego > rho``, or the object mask for samples where no pixel
        exceeds rho; (B,) bool which samples fell back; (B, h, w) bool the binary ego object
        mask ``minmax(a_ego) >= object_threshold``).
    """
    b = a_ego.shape[0]
    positive = a_ego > rho.view(b, 1, 1)
    object_mask = minmax(a_ego) >= object_threshold
    fallback = ~positive.flatten(1).any(1)
    positive = torch.where(fallback.view(b, 1, 1), object_mask, positive)
    return positive, fallback, object_mask


class SelectiveCLMethod(Method):
    """Selective Contrastive Learning (SelectiveCL, ICCV 2025).

    Every option is reachable from ``affordance-train --set method.KEY=VALUE``; defaults give
    this project's behaviour (docs/deviations.md lists paper, reference code and measurements).

    Args:
        proto: ``part`` (selective: part-level prototypes when discovery is reliable, object
            level otherwise), ``object`` (always object level), or ``none``.
        pixel: enable the selective pixel contrast.
        exo_indexing: ``paper`` (full per-exo 14x14 interaction maps) or ``reference`` (the
            released code's indexing, which reads one 14-value row; kept for comparison).
        temperature: contrastive tau.
        contrast_scale: loss multiplier (1 in the paper; the code's effective 0.5/0.07).
        region_threshold: gamma_1; piou_threshold: alpha.
        proto_weight, pixel_weight: weights of the two contrastive terms.
        pixel_anchors: which ego pixels anchor the pixel contrast: ``positive`` (Q+, the
            paper) or ``object`` (the binary ego object mask, the reference code).
        pixel_bg_positives: anchors outside Q+ take the other non-Q+ pixels as positives
            (background-background pairs, the reference code). False (the paper): only Q+
            pixels have positives, so object-mask anchors outside Q+ drop out. Needs
            ``pixel_anchors='object'`` (Q+ anchors have no background anchor to pair).
        kmeans_iters: the most K-means iterations of part discovery (10; the reference 300).
        aff_norm_lr_mult: see :class:`Method`.
    """

    name = "selectivecl"
    spec = MethodSpec(proj_residual=False, calibration="binary", contrast_heads=True)

    def __init__(
        self,
        model: AffordanceModel,
        warmup: float = 0.1,
        seed: int = 0,
        proto: str = "part",
        pixel: bool = True,
        exo_indexing: str = "paper",
        temperature: float = 0.5,
        contrast_scale: float = 1.0,
        region_threshold: float = 0.6,
        piou_threshold: float = 0.6,
        proto_weight: float = 1.0,
        pixel_weight: float = 1.0,
        pixel_anchors: str = "positive",
        pixel_bg_positives: bool = False,
        kmeans_iters: int = 10,
        aff_norm_lr_mult: float = 10.0,
    ) -> None:
        super().__init__(model, warmup, seed, aff_norm_lr_mult)
        if model.clip is None or model.proto_head is None:
            raise ValueError(
                "SelectiveCL needs a model built with CLIP and contrast heads: "
                "create_model(..., method='selectivecl')"
            )
        if proto not in ("part", "object", "none"):
            raise ValueError(f"proto must be part, object or none, not {proto!r}")
        if exo_indexing not in ("paper", "reference"):
            raise ValueError(f"exo_indexing must be paper or reference, not {exo_indexing!r}")
        if not isinstance(pixel, bool):
            raise ValueError(f"pixel must be true or false, not {pixel!r}")
        if pixel_anchors not in ("positive", "object"):
            raise ValueError(
                f"pixel_anchors must be positive (Q+, the paper) or object (the "
                f"binary object mask, the reference code), not {pixel_anchors!r}"
            )
        if not isinstance(pixel_bg_positives, bool):
            raise ValueError(
                f"pixel_bg_positives must be true or false, not {pixel_bg_positives!r}"
            )
        if pixel_bg_positives and pixel_anchors != "object":
            raise ValueError(
                "pixel_bg_positives=true needs pixel_anchors=object: with Q+ "
                "anchors no anchor is background, so the switch would do nothing"
            )
        self.proto = proto
        self.pixel = pixel
        self.exo_indexing = exo_indexing
        self.temperature = temperature
        self.contrast_scale = contrast_scale
        self.region_threshold = region_threshold
        self.piou_threshold = piou_threshold
        self.proto_weight = proto_weight
        self.pixel_weight = pixel_weight
        self.pixel_anchors = pixel_anchors
        self.pixel_bg_positives = pixel_bg_positives
        self.kmeans_iters = check_kmeans_iters(kmeans_iters)

    def losses(self, s: StepInputs, progress: float) -> dict[str, Tensor]:
        """CE terms, the selective prototypical contrast ``proto`` and the selective pixel
        contrast ``pix``, composed from the pure functions above, plus ``stat_*`` scalars."""
        model = self.model
        terms = self.ce_terms(s)
        b, e = s.labels.shape[0], s.num_exo
        h, w = s.ego_cam.shape[-2:]
        warm = progress < self.warmup
        a_ego = model.affinity(s.ego.clip, s.labels, "ego")  # (B, h, w)
        exo_to_ego = model.affinity(s.exo.clip, s.exo_labels, "ego")
        a_exo = exo_object_affinity(model, s.exo.clip, s.exo_labels, exo_to_ego).view(b, e, h, w)
        cam_ego = pick_action_maps(s.ego_cam, s.labels)
        cam_exo = pick_action_maps(s.exo_cam, s.exo_labels).view(b, e, h, w)
        interaction = interaction_map(a_exo, cam_exo, warm)

        exo_keys = s.exo.keys.view(b, e, -1, h, w)
        reliable = torch.zeros(b, dtype=torch.bool, device=s.labels.device)
        exo_fallback = a_exo
        if self.exo_indexing == "reference":
            interaction, exo_fallback = reference_exo_rows(interaction, a_exo)
        stats: dict[str, Tensor] = {}
        if self.proto == "part":
            sal = s.ego.saliency()
            found = discover_parts(
                exo_keys,
                interaction.detach(),
                s.ego.keys,
                sal > sal.flatten(1).mean(1)[:, None, None],
                self.region_threshold,
                self.piou_threshold,
                iters=self.kmeans_iters,
                generator=self.generator,
            )
            reliable = found.reliable
            stats["stat_reliable_rate"] = reliable.float().mean()
            stats["stat_enough_points_rate"] = found.enough_points.float().mean()
            stats["stat_best_piou"] = found.best_piou.mean()
            ego_rel, exo_rel = part_relevance(found.centroid, exo_keys, s.ego.keys)
            ego_part, exo_part = select_part_maps(reliable, ego_rel, exo_rel, a_ego, exo_fallback)
        else:
            ego_part, exo_part = a_ego, exo_fallback

        if self.proto != "none":
            ego_bg, exo_bg = background_weights(ego_part, exo_part, cam_ego, cam_exo, warm)
            anchor_w = anchor_weights(reliable, a_ego)
            f_ego = model.proto_head(s.ego_feat)
            f_exo = model.proto_head(s.exo_feat)
            fdim = f_ego.shape[1]
            terms["proto"] = self.proto_weight * prototype_contrast_loss(
                weighted_prototypes(f_ego, anchor_w),
                s.labels,
                weighted_prototypes(f_ego, ego_part),
                weighted_prototypes(f_ego, ego_bg),
                weighted_prototypes(f_exo, exo_part.flatten(0, 1)).view(b, e, fdim),
                weighted_prototypes(f_exo, exo_bg.flatten(0, 1)).view(b, e, fdim),
                self.temperature,
                self.contrast_scale,
            )

        if self.pixel:
            rho = pixel_threshold(exo_to_ego.view(b, e, h, w))  # (B,)
            positive, fallback, object_mask = pixel_labels(
                a_ego, rho, model.config.object_threshold
            )
            anchors = object_mask if self.pixel_anchors == "object" else None
            terms["pix"] = self.pixel_weight * pixel_contrast_loss(
                model.pixel_head(s.ego_feat),
                positive,
                self.temperature,
                self.contrast_scale,
                anchors=anchors,
                background_positives=self.pixel_bg_positives,
            )
            stats["stat_pixel_fallback_rate"] = fallback.float().mean()
        terms.update(stats)
        return terms
