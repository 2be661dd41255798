"""Dense pretraining losses of the tiny backbones' CLIP and DINO roles."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from affordance_core.backbones import clearclip_head, clip_trunk
from affordance_core.tiny import dino_last_block_qk, normalize_clip, normalize_dino

__all__ = ["clip_dense_losses", "dino_dense_losses", "within_image_contrast"]


def within_image_contrast(
    features: Tensor, labels: Tensor, valid: Tensor, temperature: float = 0.1
) -> Tensor:
    """Supervised contrast between the patches of each image (no pair crosses images).

    Every valid patch is an anchor; its positives are the other valid patches of the same
    image with the same label, its candidates all other valid patches of that image.

    Args:
        features: (B, N, C) L2-normalised patch descriptors.
        labels: (B, N) int64 patch labels.
        valid: (B, N) bool, patches that take part.
        temperature: softmax temperature on cosine similarities.

    Returns:
        Scalar mean over anchors with at least one positive (0 when there is none).
    """
    n = features.shape[1]
    sim = features @ features.transpose(1, 2) / temperature  # (B, N, N)
    pair = (
        valid[:, :, None]
        & valid[:, None, :]
        & ~torch.eye(n, dtype=torch.bool, device=features.device)
    )
    positive = pair & (labels[:, :, None] == labels[:, None, :])
    logp = sim.masked_fill(~pair, -1e4).log_softmax(-1)
    n_pos = positive.sum(-1)
    per_anchor = -(logp * positive).sum(-1) / n_pos.clamp(min=1)
    use = valid & (n_pos > 0)
    return per_anchor[use].mean() if bool(use.any()) else features.sum() * 0.0


def _soft_threshold(norm: Tensor, on: Tensor, off: Tensor) -> Tensor:
    """Softplus push of min-max normalised affinities ``norm`` above 0.6 where ``on`` and
    below 0.4 where ``off`` (weights broadcastable to ``norm``), each side averaged apart."""
    above = (on * F.softplus(10.0 * (0.6 - norm))).sum() / on.sum().clamp(min=1)
    below = (off * F.softplus(10.0 * (norm - 0.4))).sum() / off.sum().clamp(min=1)
    return above + below


def clip_dense_losses(
    clip: nn.Module,
    images: Tensor,
    obj_index: Tensor,
    obj_frac: Tensor,
    text_tokens: Tensor,
    positives: Tensor,
    n_objects: int,
    dense_scale: Tensor,
    dense_bias: Tensor,
    objectness_head: nn.Module | None = None,
    hand_frac: Tensor | None = None,
) -> dict[str, Tensor]:
    """CLIP-role losses: dense sigmoid patch-text term (ClearCLIP path) + global caption CE.

    Args:
        clip: tiny open_clip CLIP (train mode).
        images: (B, 3, S, S) float in [0, 1], not normalised.
        obj_index: (B,) int64 object of each image.
        obj_frac: (B, h, w) float in [0, 1], patch coverage by the object.
        text_tokens: (T, L) int64 tokens of the text vocabulary.
        positives: (O, T) float {0, 1} text positives per object.
        n_objects: O; texts[:O] are the object captions.
        dense_scale: scalar log-scale parameter of the sigmoid logits.
        dense_bias: scalar bias of the sigmoid logits.
        objectness_head: optional ``Linear(width, 1)`` on the trunk's patch tokens; when given,
            ``objectness`` (BCE against the object coverage) supervises the trunk directly
            (deep supervision; the head is discarded after pretraining).
        hand_frac: (B, h, w) float in [0, 1], patch coverage by the person's hand, when the
            last text is the hand prompt: its dense target is this coverage, and ``hand``
            pushes its min-max normalised affinity above 0.6 on the hand and below 0.4 away
            from it, in images that show a hand.

    Returns:
        ``dense`` (sigmoid BCE, positives and negatives averaged separately, scalar),
        ``contrast`` (within-image object-vs-background contrast of the patch embeddings:
        patches at least half on the object against patches off it), ``text`` (CE that keeps
        the O object captions apart from each other), ``global`` (caption CE, scalar),
        ``acc`` (detached caption accuracy).
    """
    x = normalize_clip(images)
    text = F.normalize(clip.encode_text(text_tokens), dim=-1)  # (T, E)
    trunk = clip_trunk(clip.visual, x)
    patches = clearclip_head(clip.visual, trunk)  # (B, E, h, w)
    cos = torch.einsum("behw,te->bthw", patches, text)
    logits = cos * dense_scale.exp() + dense_bias
    target = positives[obj_index][:, :, None, None] * obj_frac[:, None]
    if hand_frac is not None:
        target = torch.cat([target[:, :-1], hand_frac[:, None]], dim=1)
    # Positives are rare (object patches x afforded texts): average them apart from negatives.
    pos_term = target * F.softplus(-logits)
    neg_term = (1.0 - target) * F.softplus(logits)
    dense = pos_term.sum() / target.sum().clamp(min=1e-6) + neg_term.sum() / (
        1.0 - target
    ).sum().clamp(min=1e-6)
    frac = obj_frac.flatten(1)
    contrast = within_image_contrast(
        patches.flatten(2).transpose(1, 2), (frac >= 0.5).long(), (frac >= 0.5) | (frac <= 0.01)
    )
    captions = text[:n_objects]
    text_sep = F.cross_entropy(
        captions @ captions.t() / 0.1, torch.arange(n_objects, device=captions.device)
    )
    vis = clip.visual
    pooled, _ = vis._pool(vis.transformer.resblocks[-1](trunk))
    img = F.normalize(pooled @ vis.proj, dim=-1)
    glog = clip.logit_scale.exp().clamp(max=100) * img @ text[:n_objects].t()
    glob = F.cross_entropy(glog, obj_index)
    acc = (glog.argmax(1) == obj_index).float().mean().detach()
    # The downstream use of these maps: min-max normalised per image, then thresholded. Push
    # the normalised affinity of every positive text above 0.6 on the object and below 0.4 off
    # it (a soft version of that threshold; it targets the off-object patches that a plain
    # average over all negatives lets through).
    flat = cos.flatten(2)  # (B, T, hw)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    norm = (flat - lo) / (hi - lo).clamp(min=1e-6)
    pos_text = positives[obj_index][:, :, None]  # (B, T, 1)
    on, off = (frac >= 0.5)[:, None].float(), (frac <= 0.01)[:, None].float()
    threshold = _soft_threshold(norm, pos_text * on, pos_text * off)
    out = {
        "dense": dense,
        "contrast": contrast,
        "text": text_sep,
        "global": glob,
        "acc": acc,
        "threshold": threshold,
    }
    if hand_frac is not None:
        hand = hand_frac.flatten(1)
        shown = (hand.amax(-1, keepdim=True) > 0).float()  # (B, 1)
        on_hand, off_hand = (hand >= 0.3).float() * shown, (hand <= 0.01).float() * shown
        out["hand"] = _soft_threshold(norm[:, -1], on_hand, off_hand)
    if objectness_head is not None:
        logit = objectness_head(trunk[:, 1:]).squeeze(-1)  # (B, h*w)
        out["objectness"] = F.binary_cross_entropy_with_logits(logit, frac)
    return out


def dino_dense_losses(
    vit: nn.Module,
    images: Tensor,
    obj_frac: Tensor,
    part_label: Tensor,
    purity: Tensor,
    prototypes: Tensor,
    temperature: float = 0.1,
    min_purity: float = 0.5,
) -> dict[str, Tensor]:
    """DINO-role losses: part-type prototype classification of keys + saliency-to-object KL.

    Args:
        vit: tiny timm ViT (train mode).
        images: (B, 3, S, S) float in [0, 1], not normalised.
        obj_frac: (B, h, w) float in [0, 1].
        part_label: (B, h, w) int64 in [0, P] (P = background).
        purity: (B, h, w) float; patches below ``min_purity`` are ignored by the part term.
        prototypes: (P + 1, C) learnable class prototypes in key space.
        temperature: cosine-classifier temperature.
        min_purity: purity threshold for the part term.

    Returns:
        ``part`` (CE), ``contrast`` (within-image contrast of the keys of object patches by
        part type), ``saliency`` (KL(object || CLS attention), mean over heads), ``part_acc``.
    """
    q, k = dino_last_block_qk(vit, normalize_dino(images))  # (B, T, heads, dh)
    bsz, tok, heads, dh = k.shape
    n_prefix = tok - vit.patch_embed.num_patches
    kp = k[:, n_prefix:]
    keys = F.normalize(kp.transpose(2, 3).reshape(bsz, tok - n_prefix, heads * dh), dim=-1)
    logits = keys @ F.normalize(prototypes, dim=-1).t() / temperature
    lab = part_label.flatten(1).clone()
    lab[purity.flatten(1) < min_purity] = -100
    n_cls = prototypes.shape[0]
    # Balance classes so thin parts are not drowned by background patches.
    counts = torch.bincount(lab[lab >= 0], minlength=n_cls).float()
    weight = torch.where(
        counts > 0, counts.sum() / (counts.clamp(min=1) * n_cls), torch.zeros_like(counts)
    ).clamp(max=10.0)
    part = F.cross_entropy(
        logits.reshape(-1, n_cls), lab.reshape(-1), weight=weight, ignore_index=-100
    )
    acc = ((logits.argmax(-1) == lab).float().sum() / (lab >= 0).sum().clamp(min=1)).detach()
    on_part = (lab >= 0) & (lab < n_cls - 1)
    contrast = within_image_contrast(keys, lab.clamp(min=0), on_part)
    # CLS->patch attention per head, softmax over patch tokens only: (B, heads, hw).
    sal = (torch.einsum("bhd,bthd->bht", q[:, 0], kp) * dh**-0.5).softmax(dim=-1)
    tgt = obj_frac.flatten(1)
    valid = tgt.sum(1) > 0
    tgt = tgt[valid] / tgt[valid].sum(1, keepdim=True)
    logp = sal[valid].clamp(min=1e-8).log()
    kl = (tgt[:, None] * (tgt[:, None].clamp(min=1e-8).log() - logp)).sum(-1).mean()
    return {"part": part, "contrast": contrast, "saliency": kl, "part_acc": acc}
