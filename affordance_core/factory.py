"""The one factory that builds every affordance model: backbones with offline-first weights
plus the trainable heads a method needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .backbones import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ClipBackbone, DinoBackbone
from .config import AffordanceConfig
from .model import AffordanceModel
from .registry import get_config
from .weights import WeightsError, find_weights, load_strict, read_state_dict

__all__ = ["build_backbones", "create_model", "default_weights_dir"]


def _how_to_get(cfg_file: str, url: str) -> str:
    return (
        f"Get {cfg_file} from {url} and pass its folder with --weights-dir "
        f"(node parameter weights_dir), or set AFFORDANCE_WEIGHTS_DIR."
    )


LocalState = tuple[Path, dict[str, torch.Tensor]]  # a checkpoint found locally, and its contents


def _read_local_state(
    file_name: str, url: str, weights_dir: str | os.PathLike | None
) -> LocalState | None:
    path = find_weights(file_name, weights_dir)
    return None if path is None else (path, read_state_dict(path, _how_to_get(file_name, url)))


def _load_backbone_state(
    module: torch.nn.Module,
    file_name: str,
    url: str,
    weights_dir: str | os.PathLike | None,
    ignore: tuple[str, ...] = (),
    what: str = "",
    local: LocalState | None = None,
) -> bool:
    """Load the local checkpoint (``local`` if already read) into ``module``; False if none."""
    local = local or _read_local_state(file_name, url, weights_dir)
    if local is None:
        return False
    path, state = local
    how = _how_to_get(file_name, url)
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    if what == "dino":
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, module)
    load_strict(module, state, path, how, ignore=ignore)
    return True


def _tiny_dino_size(local: LocalState | None) -> tuple[int, int]:
    """Width and depth of the tiny DINO-role checkpoint that will be loaded: the shipped size
    when there is none or it is no tiny DINO-role ViT (loading it then fails with the
    architecture mismatch)."""
    from . import tiny as tiny_arch

    if local is not None:
        try:
            return tiny_arch.tiny_dino_size(local[1], local[0])
        except ValueError:
            pass
    return tiny_arch.TINY_DINO_WIDTH, tiny_arch.TINY_DINO_DEPTH


def default_weights_dir(
    cfg: AffordanceConfig, weights_dir: str | os.PathLike | None = None
) -> str | os.PathLike | None:
    """``weights_dir`` if given, else the folder a preset's own weights ship in
    (``weights/tiny`` for a preset with a tiny backbone), else None (search
    ``$AFFORDANCE_WEIGHTS_DIR`` and the hub cache only)."""
    if weights_dir is None and (cfg.dino == "tiny" or cfg.clip == "tiny"):
        from . import tiny as tiny_arch

        return tiny_arch.default_tiny_weights_dir()
    return weights_dir


def build_backbones(
    cfg: AffordanceConfig,
    weights_dir: str | os.PathLike | None = None,
    pretrained: bool = True,
    allow_download: bool = False,
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
    weights_dir = default_weights_dir(cfg, weights_dir)
    if cfg.dino == "tiny" or cfg.clip == "tiny":
        from . import tiny as tiny_arch
    dino_local = None  # read once: the tiny DINO role's size comes from its checkpoint
    if cfg.dino == "tiny":
        if pretrained:
            dino_local = _read_local_state(cfg.dino_file, cfg.dino_url, weights_dir)
        vit = tiny_arch.build_tiny_dino(*_tiny_dino_size(dino_local))
    else:
        import timm

        vit = timm.create_model(cfg.dino, pretrained=False, num_classes=0, img_size=cfg.image_size)
    if pretrained and not _load_backbone_state(
        vit,
        cfg.dino_file,
        cfg.dino_url,
        weights_dir,
        ignore=("head.weight", "head.bias"),
        what="dino",
        local=dino_local,
    ):
        if allow_download and cfg.dino_hub:
            import timm

            try:
                vit = timm.create_model(cfg.dino_hub, pretrained=True, num_classes=0)
            except Exception as exc:  # noqa: BLE001 - offline hub: report the local fix
                raise WeightsError(
                    f"DINO weights {cfg.dino_file} not found locally and the "
                    f"download failed ({exc}). "
                    f"{_how_to_get(cfg.dino_file, cfg.dino_url)}"
                ) from None
        else:
            raise WeightsError(
                f"DINO weights {cfg.dino_file} not found in {weights_dir or '-'}"
                f" or the torch hub cache. "
                f"{_how_to_get(cfg.dino_file, cfg.dino_url)}"
            )
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
        if pretrained and not _load_backbone_state(clip, cfg.clip_file, cfg.clip_url, weights_dir):
            if allow_download and cfg.clip_hub_tag:
                import open_clip

                try:
                    clip = open_clip.create_model(cfg.clip, pretrained=cfg.clip_hub_tag)
                except Exception as exc:  # noqa: BLE001
                    raise WeightsError(
                        f"CLIP weights {cfg.clip_file} not found locally and the "
                        f"download failed ({exc}). "
                        f"{_how_to_get(cfg.clip_file, cfg.clip_url)}"
                    ) from None
            else:
                raise WeightsError(
                    f"CLIP weights {cfg.clip_file} not found in "
                    f"{weights_dir or '-'} or the torch hub cache. "
                    f"{_how_to_get(cfg.clip_file, cfg.clip_url)}"
                )
        clip_backbone = ClipBackbone(clip, tokenizer, CLIP_MEAN, CLIP_STD)
    for module in (dino, clip_backbone):
        if module is not None:
            module.requires_grad_(False).eval()
    return dino, clip_backbone


def create_model(
    name: str = "tiny",
    *,
    vocabulary: Sequence[str],
    method: str = "selectivecl",
    weights_dir: str | os.PathLike | None = None,
    pretrained: bool = True,
    allow_download: bool = False,
    **overrides: Any,
) -> AffordanceModel:
    """Build an :class:`~affordance_core.model.AffordanceModel` from a preset.

    Args:
        name: preset (see :func:`affordance_core.registry.list_models`).
        vocabulary: action words; their order defines the class ids.
        method: training method the heads are shaped for.
        weights_dir: folder searched first for backbone checkpoints.
        pretrained: load backbone weights (False: random, for tests).
        allow_download: let timm/open_clip fetch missing weights from their hubs.
        **overrides: any :class:`AffordanceConfig` field.

    Raises:
        ValueError: unknown preset, method or field.
        WeightsError: backbone weights missing or mismatched (the message names the file and
            how to get it).
    """
    cfg = get_config(name, method, **overrides)
    dino, clip = build_backbones(cfg, weights_dir, pretrained, allow_download)
    return AffordanceModel(cfg, list(vocabulary), dino, clip)
