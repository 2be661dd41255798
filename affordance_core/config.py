"""Model presets and the one factory that builds every affordance model.

A preset fills an :class:`AffordanceConfig`; ``create_model(name, vocabulary=...)`` builds the
frozen backbones (with offline-first weights) and the trainable heads for a method. The
``paper`` and ``tiny`` tiers differ only in their configs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .backbones import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ClipBackbone, DinoBackbone
from .weights import WeightsError, find_weights, load_strict, read_state_dict

__all__ = ["AffordanceConfig", "register_model", "list_models", "get_config", "create_model",
           "build_backbones", "METHOD_DEFAULTS"]


CALIBRATIONS = ("none", "binary", "product", "reference")
#: Former calibration names still accepted in configs and checkpoints (old -> current).
CALIBRATION_ALIASES = {"continuous": "product"}
INFERENCE_BRANCHES = ("ego", "exo", "ego+exo", "pixel")


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
            masks and hand masks but no person-object interaction; README, "Where we follow
            the paper rather than the reference code").
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
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.calibration = CALIBRATION_ALIASES.get(self.calibration, self.calibration)
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got "
                             f"{self.calibration!r}")
        if not 0.0 <= float(self.object_threshold) <= 1.0:
            raise ValueError(f"object_threshold must be in [0, 1], got {self.object_threshold}")
        if self.inference_branch not in INFERENCE_BRANCHES:
            raise ValueError(f"inference_branch must be one of {INFERENCE_BRANCHES}, got "
                             f"{self.inference_branch!r}")
        if self.exo_cue not in ("prompt", "hand"):
            raise ValueError(f"exo_cue must be 'prompt' or 'hand', got {self.exo_cue!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (YAML/JSON/checkpoint friendly)."""
        data = dataclasses.asdict(self)
        data["saliency_heads"] = list(self.saliency_heads) if self.saliency_heads else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AffordanceConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(known)}")
        data = dict(data)
        if data.get("saliency_heads") is not None:
            data["saliency_heads"] = tuple(data["saliency_heads"])
        return cls(**data)


_PRESETS: dict[str, Callable[[], AffordanceConfig]] = {}

#: Head shape and inference defaults implied by each training method.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "ce": {"proj_residual": True, "calibration": "none", "num_noise_classes": 0,
           "inference_branch": "ego"},
    "locate": {"proj_residual": True, "calibration": "none", "num_noise_classes": 0,
               "inference_branch": "ego"},
    "selectivecl": {"proj_residual": False, "calibration": "binary", "num_noise_classes": 0,
                    "inference_branch": "ego"},
    "looptrans": {"proj_residual": True, "calibration": "none", "num_noise_classes": 15,
                  "inference_branch": "pixel"},
}


def register_model(fn: Callable[[], AffordanceConfig]) -> Callable[[], AffordanceConfig]:
    """Decorator registering a preset function under its own name."""
    _PRESETS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered presets."""
    return sorted(_PRESETS)


@register_model
def paper() -> AffordanceConfig:
    """DINO ViT-S/16 + CLIP ViT-B/16 (OpenAI) at 224 px, as in the papers."""
    return AffordanceConfig(
        name="paper", image_size=224,
        dino="vit_small_patch16_224", dino_file="dino_deitsmall16_pretrain.pth",
        dino_url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
                 "dino_deitsmall16_pretrain.pth",
        dino_hub="vit_small_patch16_224.dino", saliency_heads=(0, 1, 3),
        clip="ViT-B-16", clip_file="ViT-B-16.pt",
        clip_url="https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078"
                 "d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        clip_hub_tag="openai")


@register_model
def tiny() -> AffordanceConfig:
    """The project's own small ViT + CLIP-style encoders at 112 px (14x14 grid), CPU-friendly."""
    return AffordanceConfig(name="tiny", image_size=112, mlp_ratio=2, proj_dim=128,
                            exo_cue="hand")


def get_config(name: str, method: str = "selectivecl", **overrides: Any) -> AffordanceConfig:
    """Resolve a preset, apply the method's head defaults, then explicit overrides."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {', '.join(list_models())}")
    base = method.split("_")[0] if method not in METHOD_DEFAULTS else method
    if base not in METHOD_DEFAULTS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHOD_DEFAULTS)}")
    cfg = _PRESETS[name]()
    fields = {f.name for f in dataclasses.fields(AffordanceConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown model options {bad}; valid: {sorted(fields)}")
    return dataclasses.replace(cfg, method=method, **{**METHOD_DEFAULTS[base], **overrides})


def _how_to_get(cfg_file: str, url: str) -> str:
    return (f"Get {cfg_file} from {url} and pass its folder with --weights-dir "
            f"(node parameter weights_dir), or set AFFORDANCE_WEIGHTS_DIR.")


def _load_backbone_state(module: torch.nn.Module, file_name: str, url: str,
                         weights_dir: str | os.PathLike | None, ignore: tuple[str, ...] = (),
                         what: str = "") -> bool:
    path = find_weights(file_name, weights_dir)
    if path is None:
        return False
    how = _how_to_get(file_name, url)
    state = read_state_dict(path, how)
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    if what == "dino":
        from timm.models.vision_transformer import checkpoint_filter_fn
        state = checkpoint_filter_fn(state, module)
    load_strict(module, state, path, how, ignore=ignore)
    return True


def build_backbones(cfg: AffordanceConfig, weights_dir: str | os.PathLike | None = None,
                    pretrained: bool = True, allow_download: bool = False
                    ) -> tuple[DinoBackbone, ClipBackbone | None]:
    """Build the frozen DINO- and CLIP-role backbones for a config.

    Args:
        weights_dir: folder (or file) searched first for the backbone checkpoints.
        pretrained: load weights; False gives random backbones (unit tests).
        allow_download: fall back to the upstream hubs when no local file is found.

    Raises:
        WeightsError: a checkpoint is missing (and downloading is off or failed), unreadable
            or does not match; the message names the file and how to get it.
    """
    if cfg.dino == "tiny" or cfg.clip == "tiny":
        from . import tiny as tiny_arch
        if weights_dir is None:
            weights_dir = tiny_arch.default_tiny_weights_dir()
    if cfg.dino == "tiny":
        vit = tiny_arch.build_tiny_dino()
    else:
        import timm
        vit = timm.create_model(cfg.dino, pretrained=False, num_classes=0,
                                img_size=cfg.image_size)
    if pretrained and not _load_backbone_state(vit, cfg.dino_file, cfg.dino_url, weights_dir,
                                               ignore=("head.weight", "head.bias"), what="dino"):
        if allow_download and cfg.dino_hub:
            import timm
            try:
                vit = timm.create_model(cfg.dino_hub, pretrained=True, num_classes=0)
            except Exception as exc:  # noqa: BLE001 - offline hub: report the local fix
                raise WeightsError(f"DINO weights {cfg.dino_file} not found locally and the "
                                   f"download failed ({exc}). "
                                   f"{_how_to_get(cfg.dino_file, cfg.dino_url)}") from None
        else:
            raise WeightsError(f"DINO weights {cfg.dino_file} not found in {weights_dir or '-'}"
                               f" or the torch hub cache. "
                               f"{_how_to_get(cfg.dino_file, cfg.dino_url)}")
    dino = DinoBackbone(vit, cfg.saliency_heads, IMAGENET_MEAN, IMAGENET_STD)

    clip_backbone = None
    if cfg.clip:
        if cfg.clip == "tiny":
            clip = tiny_arch.build_tiny_clip()
            tokenizer = tiny_arch.tiny_tokenizer()
        else:
            import open_clip
            clip = open_clip.create_model(cfg.clip, pretrained=None, force_quick_gelu=True)
            tokenizer = open_clip.get_tokenizer(cfg.clip)
        if pretrained and not _load_backbone_state(clip, cfg.clip_file, cfg.clip_url,
                                                   weights_dir):
            if allow_download and cfg.clip_hub_tag:
                import open_clip
                try:
                    clip = open_clip.create_model(cfg.clip, pretrained=cfg.clip_hub_tag)
                except Exception as exc:  # noqa: BLE001
                    raise WeightsError(f"CLIP weights {cfg.clip_file} not found locally and the "
                                       f"download failed ({exc}). "
                                       f"{_how_to_get(cfg.clip_file, cfg.clip_url)}") from None
            else:
                raise WeightsError(f"CLIP weights {cfg.clip_file} not found in "
                                   f"{weights_dir or '-'} or the torch hub cache. "
                                   f"{_how_to_get(cfg.clip_file, cfg.clip_url)}")
        clip_backbone = ClipBackbone(clip, tokenizer, CLIP_MEAN, CLIP_STD)
    for module in (dino, clip_backbone):
        if module is not None:
            module.requires_grad_(False).eval()
    return dino, clip_backbone


def create_model(name: str = "tiny", *, vocabulary: Sequence[str], method: str = "selectivecl",
                 weights_dir: str | os.PathLike | None = None, pretrained: bool = True,
                 allow_download: bool = False, **overrides: Any):
    """Build an :class:`~affordance_core.model.AffordanceModel` from a preset.

    Args:
        name: preset (see :func:`list_models`).
        vocabulary: action words; their order defines the class ids.
        method: training method the heads are shaped for.
        weights_dir: folder searched first for backbone checkpoints.
        pretrained: load backbone weights (False: random, for tests).
        allow_download: let timm/open_clip fetch missing weights from their hubs.
        **overrides: any :class:`AffordanceConfig` field.
    """
    from .model import AffordanceModel

    cfg = get_config(name, method, **overrides)
    dino, clip = build_backbones(cfg, weights_dir, pretrained, allow_download)
    return AffordanceModel(cfg, list(vocabulary), dino, clip)
