"""The training-method interface: what a step computes from a batch, and what it needs.

A method is an ``nn.Module``; calling it on a batch gives a dict of scalar tensors: ``loss``
(to back-propagate) plus every named term and statistic. Its class attribute ``spec``
(:class:`MethodSpec`) declares the heads it needs from the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import AffordanceModel, Features

__all__ = ["Method", "MethodSpec", "StepInputs", "check_kmeans_iters", "pick_action_maps"]


@dataclass(frozen=True)
class MethodSpec:
    """What a training method needs from the model, and the inference defaults it implies.

    :func:`affordance_core.registry.get_config` copies these into the
    :class:`~affordance_core.config.AffordanceConfig` before explicit overrides, so the model
    builds the heads the method trains without testing method names.

    Attributes:
        proj_residual: the token MLP ``aff_proj`` adds its input back.
        calibration: default inference calibration (see ``AffordanceConfig.calibration``).
        num_noise_classes: extra classifier channels (LoopTrans' denoising distillation).
        inference_branch: default inference branch; ``pixel`` also builds the ego pixel decoder.
        contrast_heads: the model needs SelectiveCL's two 1x1 contrast heads.
    """

    proj_residual: bool
    calibration: str
    num_noise_classes: int = 0
    inference_branch: str = "ego"
    contrast_heads: bool = False

    def config_fields(self) -> dict[str, Any]:
        """The spec as :class:`~affordance_core.config.AffordanceConfig` field values."""
        return dataclasses.asdict(self)


@dataclass
class StepInputs:
    """Backbone features and head outputs shared by every method for one batch.

    Shapes: B samples, E exo images each, C' classifier channels, D descriptor width.
    """

    labels: Tensor  # (B,)
    ego: Features  # B images
    exo: Features  # B*E images, sample-major
    ego_feat: Tensor  # (B, D, h, w) ego view projection
    ego_cam: Tensor  # (B, C', h, w)
    exo_feat: Tensor  # (B*E, D, h, w)
    exo_cam: Tensor  # (B*E, C', h, w)
    num_exo: int

    @property
    def exo_labels(self) -> Tensor:
        return self.labels.repeat_interleave(self.num_exo)


def pick_action_maps(cams: Tensor, labels: Tensor) -> Tensor:
    """(N, C, h, w), (N,) -> (N, h, w) the labelled channel."""
    return cams.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *cams.shape[2:]))[:, 0]


def check_kmeans_iters(iters: Any) -> int:
    """Validate a K-means iteration count (a positive int; ValueError otherwise)."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(
            f"kmeans_iters must be a positive integer (10 here, 300 in the "
            f"reference), not {iters!r}"
        )
    return iters


class Method(nn.Module):
    """Base: runs the backbones once for ego + exo images and the view heads.

    Args:
        model: the affordance model being trained.
        warmup: fraction of training during which CAM-dependent terms stay off (the
            references' "epoch 0").
        seed: seed of the K-means initialisation RNG.
        aff_norm_lr_mult: learning-rate multiplier of the LayerNorm weight inside ``aff_proj``
            (its bias gets twice that). 10 (default) trains it with the rest of the token MLP;
            1 is the reference code, whose "fc" name rule misses ``aff_proj.norm``. Stored on
            the model, which :meth:`AffordanceModel.param_groups` reads when the trainer builds
            the optimizer (``--set method.aff_norm_lr_mult=1``).
    """

    name = "ce"
    spec = MethodSpec(proj_residual=True, calibration="none")

    def __init__(
        self,
        model: AffordanceModel,
        warmup: float = 0.1,
        seed: int = 0,
        aff_norm_lr_mult: float = 10.0,
    ) -> None:
        super().__init__()
        if (
            isinstance(aff_norm_lr_mult, bool)
            or not isinstance(aff_norm_lr_mult, (int, float))
            or not aff_norm_lr_mult > 0
        ):
            raise ValueError(
                f"aff_norm_lr_mult must be a positive number (10: with the token "
                f"MLP, 1: the reference code), not {aff_norm_lr_mult!r}"
            )
        self.model = model
        self.warmup = warmup
        self.generator = torch.Generator().manual_seed(seed)
        model.aff_norm_lr_mult = float(aff_norm_lr_mult)

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
                return Features(keys.float(), attn.float(), None if clip is None else clip.float())

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
        return StepInputs(
            labels,
            ego,
            exo,
            ego_feat,
            ego_cam,
            exo_feat,
            exo_cam,
            exo.keys.shape[0] // labels.shape[0],
        )

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
