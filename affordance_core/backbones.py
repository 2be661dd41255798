"""Frozen feature extractors: a DINO-style ViT (timm) and a CLIP dual encoder (open_clip).

Both wrappers take RGB images as float tensors in [0, 1] and normalise them with their own
statistics. They are differentiable (pretraining of the tiny tier trains through them); the
affordance model runs them under ``torch.no_grad`` and keeps their parameters frozen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipBackbone",
    "DinoBackbone",
    "DinoFeatures",
    "clearclip_head",
    "clip_trunk",
    "cls_patch_attention",
    "cls_saliency",
    "keys_to_grid",
    "minmax",
    "vit_last_block_qk",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)


@dataclass
class DinoFeatures:
    """Dense outputs of the DINO-role backbone.

    Attributes:
        keys: (N, D, h, w) keys of the last block's self-attention for the patch tokens,
            channels ordered head-dim major (channel = d * heads + head), as the reference.
        cls_attention: (N, K, h, w) CLS-to-patch attention of the K saliency heads, each
            head's map summing to at most 1 over the patches.
    """

    keys: Tensor
    cls_attention: Tensor

    def saliency(self, binarize_heads: bool = True) -> Tensor:
        """Object saliency (N, h, w) in [0, 1]; see :func:`cls_saliency`."""
        return cls_saliency(self.cls_attention, binarize_heads)


def cls_saliency(cls_attention: Tensor, binarize_heads: bool = True) -> Tensor:
    """Object saliency (N, h, w) in [0, 1] from CLS attention (N, K, h, w).

    Args:
        binarize_heads: LOCATE/SelectiveCL style (each head thresholded at its spatial mean,
            then averaged) when True; LoopTrans style (raw mean of the heads) when False.
            Both are min-max normalised per image.
    """
    attn = cls_attention
    if binarize_heads:
        attn = (attn > attn.flatten(2).mean(-1)[..., None, None]).to(attn.dtype)
    return minmax(attn.mean(1))


def minmax(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max normalise each map over its last two dimensions; constant maps become 0."""
    flat = maps.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(maps)


class DinoBackbone(nn.Module):
    """Last-block attention keys and CLS saliency of a timm ``VisionTransformer``.

    Args:
        vit: a timm VisionTransformer with one class token (e.g. ``vit_small_patch16_224``).
        saliency_heads: indices of the heads whose CLS attention forms the saliency
            (the reference uses heads 0, 1 and 3 of DINO ViT-S/16); None = all heads.
        mean, std: input normalisation.
    """

    def __init__(
        self,
        vit: nn.Module,
        saliency_heads: Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.vit = vit
        self.normalize = _Normalize(mean, std)
        heads = vit.blocks[-1].attn.num_heads
        self.saliency_heads = (
            list(range(heads)) if saliency_heads is None else list(saliency_heads)
        )
        if max(self.saliency_heads) >= heads:
            raise ValueError(
                f"saliency_heads {self.saliency_heads} out of range for {heads} heads"
            )
        self.num_prefix = int(getattr(vit, "num_prefix_tokens", 1))
        self.dim = int(vit.embed_dim)

    def forward(self, images: Tensor) -> DinoFeatures:
        """Args: images (N, 3, S, S) float RGB in [0, 1]. Returns: DinoFeatures."""
        q, k = vit_last_block_qk(self.vit, self.normalize(images))  # (N, H, T, dh)
        sel = self.saliency_heads
        cls_attn = cls_patch_attention(
            q[:, sel], k[:, sel], self.vit.blocks[-1].attn.scale, self.num_prefix
        )
        keys = keys_to_grid(k, self.num_prefix)
        n, _, h, w = keys.shape
        return DinoFeatures(keys=keys, cls_attention=cls_attn.reshape(n, len(sel), h, w))


def vit_last_block_qk(vit: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """Queries and keys of a timm ViT's last attention, from that block's LayerNorm'd input.

    Args:
        vit: timm ``VisionTransformer``.
        images: (N, 3, S, S) already normalised.

    Returns:
        q, k: (N, heads, T, head_dim) for all T tokens (prefix tokens first).
    """
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
    for block in vit.blocks[:-1]:
        x = block(x)
    last = vit.blocks[-1]
    attn = last.attn
    n, tokens, _ = x.shape
    qkv = attn.qkv(last.norm1(x)).reshape(n, tokens, 3, attn.num_heads, attn.head_dim)
    qkv = qkv.permute(2, 0, 3, 1, 4)
    return attn.q_norm(qkv[0]), attn.k_norm(qkv[1])


def cls_patch_attention(q: Tensor, k: Tensor, scale: float, num_prefix: int) -> Tensor:
    """Attention of the class token to the patch tokens, per head.

    Args:
        q, k: (N, H, T, dh) queries and keys, the class token first.
        scale: the attention's logit scale (1 / sqrt(dh)).
        num_prefix: prefix tokens (class and register tokens) before the patches.

    Returns:
        (N, H, T - num_prefix) softmax weights over all T tokens, read at the patches (each
        row sums to less than 1: the prefix tokens' share is left out).
    """
    logits = (q[:, :, :1] * scale) @ k.transpose(-1, -2)  # (N, H, 1, T)
    return logits.softmax(-1)[:, :, 0, num_prefix:]


def keys_to_grid(k: Tensor, num_prefix: int) -> Tensor:
    """(N, H, T, dh) keys -> (N, dh * H, h, w) patch grid, channel = d * H + head."""
    n, heads, tokens, head_dim = k.shape
    patches = tokens - num_prefix
    grid = math.isqrt(int(patches))
    keys = k[:, :, num_prefix:].permute(0, 2, 3, 1).reshape(n, patches, head_dim * heads)
    return keys.transpose(1, 2).reshape(n, head_dim * heads, grid, grid)


def clip_trunk(visual: nn.Module, images: Tensor) -> Tensor:
    """Tokens entering open_clip's last vision block (embeddings, ``ln_pre``, blocks[:-1]).

    Args:
        visual: ``open_clip`` ViT vision tower.
        images: (N, 3, S, S) already normalised.

    Returns:
        (N, T, width) tokens, batch first, class token first.
    """
    x = visual._embeds(images)
    transformer = visual.transformer
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in transformer.resblocks[:-1]:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


def clearclip_head(visual: nn.Module, tokens: Tensor, normalize: bool = True) -> Tensor:
    """ClearCLIP last block on trunk tokens: q-q attention and the output projection, with
    neither residual nor MLP, then ``ln_post`` and the visual projection on every token.

    Args:
        visual: ``open_clip`` ViT vision tower.
        tokens: (N, T, width) from :func:`clip_trunk` (one class token first).
        normalize: L2-normalise each patch embedding.

    Returns:
        (N, Dc, h, w) patch embeddings.
    """
    last = visual.transformer.resblocks[-1]
    mha: nn.MultiheadAttention = last.attn
    y = last.ln_1(tokens)
    n, count, width = y.shape
    heads = mha.num_heads
    head_dim = width // heads
    q, _, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q = q.view(n, count, heads, head_dim).transpose(1, 2)
    v = v.view(n, count, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, q, v)  # (N, H, T, dh)
    out = visual.ln_post(mha.out_proj(out.transpose(1, 2).reshape(n, count, width))[:, 1:])
    if visual.proj is not None:
        out = out @ visual.proj
    if normalize:
        out = F.normalize(out, dim=-1)
    grid = math.isqrt(int(count) - 1)
    return out.transpose(1, 2).reshape(n, -1, grid, grid)


class ClipBackbone(nn.Module):
    """Dense CLIP patch embeddings with a ClearCLIP last block, and cached text embeddings.

    The last residual block of the image tower is replaced, for the patch tokens, by
    query-query attention over the block's LayerNorm'd input, followed by the block's output
    projection, with neither the residual connection nor the MLP; ``ln_post`` and the visual
    projection then map every token into the joint space. The ordinary last block is never
    run (its output would be discarded).

    Args:
        clip: an ``open_clip.model.CLIP`` (batch-first transformer).
        tokenizer: callable mapping a list of strings to a (T, L) int64 token tensor.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.normalize = _Normalize(mean, std)
        self.dim = int(clip.visual.output_dim)

    def encode_dense(self, images: Tensor) -> Tensor:
        """Args: images (N, 3, S, S) in [0, 1]. Returns: (N, Dc, h, w) L2-normalised embeddings."""
        visual = self.clip.visual
        return clearclip_head(visual, clip_trunk(visual, self.normalize(images)))

    def encode_text(self, texts: list[str]) -> Tensor:
        """Args: texts, T strings. Returns: (T, Dc) L2-normalised text embeddings."""
        device = next(self.clip.parameters()).device
        tokens = self.tokenizer(texts).to(device)
        return F.normalize(self.clip.encode_text(tokens), dim=-1)
