"""The project's own ``tiny`` backbones: a small timm ViT (DINO role) and a small open_clip CLIP.

Both take 112x112 RGB images with patch 8, giving the same 14x14 patch grid as the paper tier
(224 px, patch 16). Their weights come from ``training/pretrain/`` (dense supervision from
object and part masks of a synthetic pretraining corpus) and live in ``weights/tiny``.

The dense feature functions here are differentiable reference implementations of what the
production backbone wrappers compute:

* :func:`dino_keys_and_saliency`: last-block attention keys (head-dim-major channels) and the
  head-averaged CLS->patch attention.
* :func:`clearclip_patch_embeddings`: ClearCLIP last block (q-q attention, no residual, no FFN),
  then ``ln_post`` and the projection on every token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import open_clip
import timm.models.vision_transformer as tvit
import torch
import torch.nn.functional as F
from torch import Tensor

from .backbones import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    clearclip_head,
    clip_trunk,
    cls_patch_attention,
    keys_to_grid,
    vit_last_block_qk,
)
from .files import atomic_write

__all__ = [
    "TINY_CLIP_FILE",
    "TINY_DINO_FILE",
    "TINY_GRID",
    "TINY_IMAGE_SIZE",
    "build_tiny_clip",
    "build_tiny_dino",
    "clearclip_patch_embeddings",
    "default_tiny_weights_dir",
    "dino_keys_and_saliency",
    "dino_last_block_qk",
    "encode_text_normalized",
    "load_tiny_clip",
    "load_tiny_dino",
    "normalize_clip",
    "normalize_dino",
    "save_state_dict_fp16",
    "tiny_dino_size",
    "tiny_tokenizer",
]

TINY_DINO_FILE = "dino_tiny.pt"
TINY_CLIP_FILE = "clip_tiny.pt"
TINY_IMAGE_SIZE = 112
TINY_GRID = 14
TINY_CONTEXT_LENGTH = 16
TINY_HEAD_WIDTH = 64  # attention head width of the tiny DINO-role ViT at every size
TINY_DINO_WIDTH = 192  # size of the shipped dino_tiny.pt
TINY_DINO_DEPTH = 4
WEIGHTS_ENV = "AFFORDANCE_WEIGHTS_DIR"


def default_tiny_weights_dir() -> Path:
    """Directory holding the tiny checkpoints.

    Returns:
        ``$AFFORDANCE_WEIGHTS_DIR/tiny`` if that variable is set and the subfolder exists,
        ``$AFFORDANCE_WEIGHTS_DIR`` if set otherwise, else the repository's ``weights/tiny``
        (resolved from this package's location).
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        root = Path(env).expanduser()
        return root / "tiny" if (root / "tiny").is_dir() else root
    return Path(__file__).resolve().parent.parent / "weights" / "tiny"


def build_tiny_dino(
    width: int = TINY_DINO_WIDTH, depth: int = TINY_DINO_DEPTH
) -> tvit.VisionTransformer:
    """Tiny DINO-role ViT: 112 px, patch 8 (14x14 grid), ``width // 64`` heads of width 64.

    The shipped ``dino_tiny.pt`` is width 192, 4 blocks (3 heads); other sizes are for
    pretraining experiments (:func:`load_tiny_dino` reads the size from the checkpoint).

    Raises:
        ValueError: ``width`` is not a positive multiple of 64, or ``depth < 1``.
    """
    if width < TINY_HEAD_WIDTH or width % TINY_HEAD_WIDTH or depth < 1:
        raise ValueError(
            f"tiny DINO-role width must be a positive multiple of {TINY_HEAD_WIDTH} and depth "
            f">= 1, got width {width}, depth {depth}"
        )
    return tvit.VisionTransformer(
        img_size=TINY_IMAGE_SIZE,
        patch_size=8,
        embed_dim=width,
        depth=depth,
        num_heads=width // TINY_HEAD_WIDTH,
        mlp_ratio=4,
        qkv_bias=True,
        num_classes=0,
        class_token=True,
        global_pool="token",
    )


def build_tiny_clip() -> open_clip.model.CLIP:
    """Tiny CLIP dual encoder: vision 112 px / patch 8 / width 192 / 4 layers, embedding 128."""
    return open_clip.model.CLIP(
        embed_dim=128,
        vision_cfg=open_clip.model.CLIPVisionCfg(
            image_size=TINY_IMAGE_SIZE,
            patch_size=8,
            width=192,
            layers=4,
            head_width=64,
            mlp_ratio=4,
        ),
        text_cfg=open_clip.model.CLIPTextCfg(
            context_length=TINY_CONTEXT_LENGTH,
            vocab_size=49408,
            width=64,
            heads=2,
            layers=3,
        ),
    )


def tiny_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    """open_clip BPE tokenizer with the tiny text encoder's context length (16)."""
    return open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CONTEXT_LENGTH)


def _normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
    m = images.new_tensor(mean).view(1, 3, 1, 1)
    s = images.new_tensor(std).view(1, 3, 1, 1)
    return (images - m) / s


def normalize_dino(images: Tensor) -> Tensor:
    """ImageNet-normalise float RGB images (N, 3, H, W) in [0, 1]."""
    return _normalize(images, IMAGENET_MEAN, IMAGENET_STD)


def normalize_clip(images: Tensor) -> Tensor:
    """OpenAI-CLIP-normalise float RGB images (N, 3, H, W) in [0, 1]."""
    return _normalize(images, CLIP_MEAN, CLIP_STD)


def dino_last_block_qk(vit: tvit.VisionTransformer, images: Tensor) -> tuple[Tensor, Tensor]:
    """Queries and keys of the last block's attention, from its LayerNorm'd input.

    Args:
        vit: timm ``VisionTransformer``.
        images: (N, 3, H, W) float, already normalised.

    Returns:
        q, k: (N, T, heads, head_dim) float for all T tokens (prefix tokens first).
    """
    q, k = vit_last_block_qk(vit, images)
    return q.transpose(1, 2), k.transpose(1, 2)


def dino_keys_and_saliency(vit: tvit.VisionTransformer, images: Tensor) -> tuple[Tensor, Tensor]:
    """Last-block attention keys and CLS->patch saliency of a timm ViT.

    Args:
        vit: timm ``VisionTransformer`` with a class token and no register tokens.
        images: (N, 3, H, W) float, already normalised (see :func:`normalize_dino`).

    Returns:
        keys: (N, C, h, w) float, C = embed dim, channel index = d * heads + h
            (head-dim major), patch tokens only.
        saliency: (N, h, w) float in [0, 1], softmax(q_cls k^T / sqrt(dh)) restricted to the
            patch tokens (the CLS-to-CLS entry is left out, so maps sum to < 1), averaged over
            heads.
    """
    q, k = vit_last_block_qk(vit, images)  # (N, H, T, dh)
    n_prefix = k.shape[2] - vit.patch_embed.num_patches
    sal = cls_patch_attention(q, k, vit.blocks[-1].attn.scale, n_prefix).mean(dim=1)
    keys = keys_to_grid(k, n_prefix)
    return keys, sal.reshape(keys.shape[0], *keys.shape[-2:])


def clearclip_patch_embeddings(
    clip: open_clip.model.CLIP, images: Tensor, normalize: bool = True
) -> Tensor:
    """Dense ClearCLIP patch embeddings of open_clip's vision tower.

    The last residual block is replaced by q-q self-attention (softmax(q q^T / sqrt(dh)) v and
    the out-projection) with no residual and no FFN; ``ln_post`` and ``proj`` then map every
    token to the joint embedding space.

    Args:
        clip: open_clip ``CLIP`` with a ViT vision tower (``visual.proj`` set).
        images: (N, 3, H, W) float, already normalised (see :func:`normalize_clip`).
        normalize: L2-normalise each patch embedding over channels.

    Returns:
        (N, E, h, w) float patch embeddings (E = joint embedding width); unit norm over E
        when ``normalize``.
    """
    return clearclip_head(clip.visual, clip_trunk(clip.visual, images), normalize=normalize)


def encode_text_normalized(clip: open_clip.model.CLIP, tokens: Tensor) -> Tensor:
    """Text embeddings (M, E) with unit L2 norm, from tokens (M, context_length) int64."""
    return F.normalize(clip.encode_text(tokens), dim=-1)


def save_state_dict_fp16(model: torch.nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``model.state_dict()`` with floating tensors cast to float16, atomically.

    Readers never see a partial file (:func:`~affordance_core.files.atomic_write`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).cpu()
        for k, v in model.state_dict().items()
    }
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


def _read_state(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"tiny checkpoint not found: {path}; rebuild it with `make pretrain` "
            f"(python -m training.pretrain --out weights/tiny) or set {WEIGHTS_ENV}"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _load(
    model: torch.nn.Module, path: Path, state: dict[str, Tensor] | None = None
) -> torch.nn.Module:
    state = _read_state(path) if state is None else state
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_tiny_dino(path: str | os.PathLike[str] | None = None) -> tvit.VisionTransformer:
    """Build the tiny ViT and load its float16 checkpoint (strict) as float32, in eval mode.

    Width and depth come from the checkpoint (``cls_token`` width, number of blocks).
    """
    p = Path(path) if path is not None else default_tiny_weights_dir() / TINY_DINO_FILE
    state = _read_state(p)
    return _load(build_tiny_dino(*tiny_dino_size(state, p)), p, state)  # type: ignore[return-value]


def tiny_dino_size(state: Mapping[str, Tensor], source: object = "checkpoint") -> tuple[int, int]:
    """``(width, depth)`` of the tiny DINO-role ViT a state dict belongs to.

    Raises:
        ValueError: the state dict is not a tiny DINO-role ViT's (no ``cls_token`` or blocks,
            not patch 8 on the 14x14 grid, or a width that is not a multiple of 64); the
            message names ``source``.
    """
    blocks = [int(k.split(".")[1]) for k in state if k.startswith("blocks.")]
    patch = state.get("patch_embed.proj.weight")
    pos = state.get("pos_embed")
    if (
        "cls_token" not in state
        or not blocks
        or patch is None
        or tuple(patch.shape[-2:]) != (8, 8)
        or pos is None
        or pos.shape[1] != TINY_GRID * TINY_GRID + 1
        or int(state["cls_token"].shape[-1]) % TINY_HEAD_WIDTH
    ):
        raise ValueError(
            f"{source} is not a tiny DINO-role ViT state dict (patch 8 on a {TINY_GRID}x"
            f"{TINY_GRID} grid, width a multiple of {TINY_HEAD_WIDTH})"
        )
    return int(state["cls_token"].shape[-1]), 1 + max(blocks)


def load_tiny_clip(path: str | os.PathLike[str] | None = None) -> open_clip.model.CLIP:
    """Build the tiny CLIP and load its float16 checkpoint (strict) as float32, in eval mode."""
    p = Path(path) if path is not None else default_tiny_weights_dir() / TINY_CLIP_FILE
    return _load(build_tiny_clip(), p)  # type: ignore[return-value]
