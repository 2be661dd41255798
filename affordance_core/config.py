"""The dataclass that defines an affordance model's architecture and inference settings.

Presets fill it (:mod:`affordance_core.presets`, looked up through
:mod:`affordance_core.registry`); :func:`affordance_core.factory.create_model` builds a model
from it; checkpoints store it as plain data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AffordanceConfig",
    "CALIBRATIONS",
    "CALIBRATION_ALIASES",
    "INFERENCE_BRANCHES",
    "PART_PRIOR_TEMPERATURES",
]


CALIBRATIONS = ("none", "binary", "product", "reference")
#: Former calibration names still accepted in configs and checkpoints (old -> current).
CALIBRATION_ALIASES = {"continuous": "product"}
INFERENCE_BRANCHES = ("ego", "exo", "ego+exo", "pixel")
PART_PRIOR_TEMPERATURES = (1.0, 0.7, 0.5, 0.35, 0.25)
"""The part prior's softmax temperatures compared on validation data (1 = the plain fit)."""


def _finite_number(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float; ValueError naming ``name`` unless it is a finite real number
    (not a bool), and > 0 when ``positive``."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(float(value))
        and (not positive or float(value) > 0.0)
    )
    if not ok:
        bound = " > 0" if positive else ""
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


@dataclass
class AffordanceConfig:
    """Everything that defines an affordance model's architecture.

    Attributes:
        name: preset name (``paper``, ``tiny``).
        method: training method the heads are shaped for (``ce``, ``locate``,
            ``selectivecl``, ``looptrans``, ``looptrans_gated``).
        image_size: square network input S in pixels.
        dino: DINO-role backbone, ``vit_small_patch16_224`` (timm) or ``tiny``.
        dino_file: file searched in the weights directories.
        dino_url: where a user downloads ``dino_file`` (shown in errors).
        dino_hub: timm ``arch.tag`` used when downloading is allowed.
        saliency_heads: heads forming the CLS saliency (None = all).
        clip: CLIP-role backbone, ``ViT-B-16`` (open_clip) or ``tiny``; None disables CLIP.
        clip_file, clip_url, clip_hub_tag: as for DINO (open_clip pretrained tag).
        proj_residual: aff_proj adds its input back (LOCATE, LoopTrans) or not (SelectiveCL).
        mlp_ratio: hidden width of aff_proj relative to the descriptor width.
        proj_dim: output width of the view projections (None = the descriptor width D).
        num_noise_classes: extra classifier channels (LoopTrans' denoising distillation).
        calibration: inference map (:meth:`AffordanceModel.calibrate` gives the formulas):
            ``none`` (raw CAM), ``binary`` (min-max CAM x binarised object affinity, the
            paper), ``product`` (min-max CAM x min-max affinity; called ``continuous``
            before, still accepted) or ``reference`` (raw CAM x min-max affinity, exactly the
            reference code).
        object_threshold: threshold on the min-max normalised ego affinity (gamma_2).
        inference_branch: which head maps the ego image at inference: ``ego`` (the ego
            branch's view projection, the papers), ``exo`` (the exo branch's view projection,
            trained on people using the object, applied to the ego image), ``ego+exo`` (the
            mean of the two, i.e. the mean of their CAMs) or ``pixel`` (LoopTrans' ego pixel
            decoder). The first three share the trained heads, so they are a choice for
            held-out data (``training.evaluate.select_inference``).
        exo_cue: what SelectiveCL's exo affinity A_exo takes its 3x3 interaction
            neighbourhood from: ``prompt`` (the exo action prompt, the paper) or ``hand``
            (the action-agnostic hand prompt; the tiny tier, whose CLIP role learns object
            masks and hand masks but no person-object interaction; docs/deviations.md).
        contrast_heads: build SelectiveCL's two 1x1 contrast heads (``proto_head``,
            ``pixel_head``); set from the method's
            :class:`~affordance_core.methods.MethodSpec` by
            :func:`~affordance_core.registry.get_config`.
        score_weights: ``(w_cam, w_aff)`` of the absolute presence score
            ``sigmoid(w_cam * z_cam + w_aff * z_aff + w_map * z_map + score_bias)``
            (:meth:`AffordanceModel.infer`): ``z_cam`` is the spatial maximum of the action's
            raw CAM logit on the inference branch, ``z_aff`` the spatial maximum of the raw
            ego-prompt affinity (0 without CLIP). Fitted on validation data by
            ``training.evaluate.choose_on_validation`` (logistic regression); the default
            ``(1, 0)`` with bias 0 is the unfitted ``sigmoid(max CAM logit)``.
        score_bias: the score's bias ``b`` (see ``score_weights``).
        score_map_weight: weight ``w_map`` of ``z_map``, the spatial maximum of the inference
            map before any stretching, in the score's logit (0: the score without it; fitted
            with the other weights).
        part_prior: multiply the inference map by the hand-region part prior
            ``p(action | patch)`` (:mod:`affordance_core.part_prior`), a linear classifier on
            the DINO keys fitted on the patches next to the hand in the training exo images;
            needs a CLIP-role backbone (the hand prompt). ``affordance-train`` fits it before
            the heads train. Off in the papers (docs/deviations.md).
        part_prior_temperature: temperature ``T > 0`` of the prior's softmax over the actions,
            ``softmax(logits / T)``: below 1 the prior is sharper than the regularised fit. A
            choice for held-out data, made by ``training.evaluate.choose_on_validation``
            (among :data:`PART_PRIOR_TEMPERATURES`); 1 is the plain fit.
        part_prior_hand_reach: how many patches beside the salient object the prior's hand
            finder may place the hand (:func:`affordance_core.part_prior.hand_patch`; int >=
            0; 0 = on a salient patch, the rule of checkpoints that do not record it). Read
            when the prior is fitted, not at inference.
        objectness: multiply the presence score by the frame's objectness ``P(object in
            frame)`` (:mod:`affordance_core.objectness`), a logistic read-out of the frozen
            backbones fitted on frames with and without an object; needs a CLIP-role backbone.
            ``affordance-train`` copies it from the weights folder. Not in the papers
            (docs/deviations.md).
    """

    name: str = "tiny"
    method: str = "selectivecl"
    image_size: int = 112
    dino: str = "tiny"
    dino_file: str = "dino_tiny.pt"
    dino_url: str = "run `make pretrain` (rebuilds weights/tiny)"
    dino_hub: str | None = None
    saliency_heads: tuple[int, ...] | None = None
    clip: str | None = "tiny"
    clip_file: str = "clip_tiny.pt"
    clip_url: str = "run `make pretrain` (rebuilds weights/tiny)"
    clip_hub_tag: str | None = None
    proj_residual: bool = False
    mlp_ratio: int = 4
    proj_dim: int | None = None
    num_noise_classes: int = 0
    calibration: str = "binary"
    object_threshold: float = 0.6
    inference_branch: str = "ego"
    exo_cue: str = "prompt"
    contrast_heads: bool = False
    score_weights: tuple[float, float] = (1.0, 0.0)
    score_bias: float = 0.0
    score_map_weight: float = 0.0
    part_prior: bool = False
    part_prior_temperature: float = 1.0
    part_prior_hand_reach: int = 0
    objectness: bool = False

    def __post_init__(self) -> None:
        self.calibration = CALIBRATION_ALIASES.get(self.calibration, self.calibration)
        if self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}"
            )
        if not 0.0 <= float(self.object_threshold) <= 1.0:
            raise ValueError(f"object_threshold must be in [0, 1], got {self.object_threshold}")
        if self.inference_branch not in INFERENCE_BRANCHES:
            raise ValueError(
                f"inference_branch must be one of {INFERENCE_BRANCHES}, got "
                f"{self.inference_branch!r}"
            )
        if self.exo_cue not in ("prompt", "hand"):
            raise ValueError(f"exo_cue must be 'prompt' or 'hand', got {self.exo_cue!r}")
        try:
            weights = tuple(float(w) for w in self.score_weights)
        except (TypeError, ValueError):
            weights = ()
        if len(weights) != 2 or not all(math.isfinite(w) for w in weights):
            raise ValueError(
                f"score_weights must be two finite numbers (w_cam, w_aff), got "
                f"{self.score_weights!r}"
            )
        self.score_weights = weights
        self.score_bias = _finite_number("score_bias", self.score_bias)
        self.score_map_weight = _finite_number("score_map_weight", self.score_map_weight)
        self.part_prior_temperature = _finite_number(
            "part_prior_temperature", self.part_prior_temperature, positive=True
        )
        reach = self.part_prior_hand_reach
        if isinstance(reach, bool) or not isinstance(reach, int) or reach < 0:
            raise ValueError(
                f"part_prior_hand_reach must be an integer >= 0 (patches), got {reach!r}"
            )
        if self.part_prior and self.clip is None:
            raise ValueError(
                "part_prior needs a CLIP-role backbone (it finds the hand with the hand "
                "prompt); set clip or part_prior=false"
            )
        if self.objectness and self.clip is None:
            raise ValueError(
                "objectness needs a CLIP-role backbone (its frame descriptor reads the CLIP "
                "patch embeddings); set clip or objectness=false"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (YAML/JSON/checkpoint friendly)."""
        data = dataclasses.asdict(self)
        data["saliency_heads"] = list(self.saliency_heads) if self.saliency_heads else None
        data["score_weights"] = list(self.score_weights)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AffordanceConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(known)}")
        data = dict(data)
        if data.get("saliency_heads") is not None:
            data["saliency_heads"] = tuple(data["saliency_heads"])
        if data.get("score_weights") is not None:
            data["score_weights"] = tuple(data["score_weights"])
        return cls(**data)
