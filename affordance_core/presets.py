"""The two tiers: ``paper`` (DINO ViT-S/16 + CLIP ViT-B/16) and ``tiny`` (CPU-friendly).

Importing this module registers them (``affordance_core`` imports it); a user registers a
preset of their own the same way, with :func:`affordance_core.registry.register_model`.
"""

from __future__ import annotations

from .config import AffordanceConfig
from .registry import register_model

__all__ = ["paper", "tiny"]


@register_model
def paper() -> AffordanceConfig:
    """DINO ViT-S/16 + CLIP ViT-B/16 (OpenAI) at 224 px, as in the papers."""
    return AffordanceConfig(
        name="paper",
        image_size=224,
        dino="vit_small_patch16_224",
        dino_file="dino_deitsmall16_pretrain.pth",
        dino_url="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
        "dino_deitsmall16_pretrain.pth",
        dino_hub="vit_small_patch16_224.dino",
        saliency_heads=(0, 1, 3),
        clip="ViT-B-16",
        clip_file="ViT-B-16.pt",
        clip_url="https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078"
        "d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        clip_hub_tag="openai",
    )


@register_model
def tiny() -> AffordanceConfig:
    """The project's own small ViT + CLIP-style encoders at 112 px (14x14 grid), CPU-friendly."""
    return AffordanceConfig(name="tiny", image_size=112, mlp_ratio=2, proj_dim=128, exo_cue="hand")
