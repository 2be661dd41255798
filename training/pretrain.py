"""Pretrain the project's ``tiny`` backbones with dense supervision (``affordance-pretrain``).

Both models train on one fixed, pre-rendered set of synthetic pretraining scenes
(``affordance_core.synthetic.world.iter_pretrain_scenes``), never on a benchmark corpus and
never from affordance labels or affordance heatmaps:

* CLIP role: a multi-label sigmoid loss between every ClearCLIP patch embedding and a fixed
  text set (object captions, ego and exo action prompts). A patch is positive for the caption
  of the object covering it and for the prompts of every action that object affords (object
  level), weighted by the fraction of the patch the object covers; background patches are
  negative for every text. A global image-to-caption cross-entropy keeps the pooled image
  embedding and the text tower meaningful.
* DINO role: last-block keys are classified by a cosine prototype classifier into part types
  (plus background) using the majority part type of each patch, and the CLS->patch attention
  of every head is pulled towards the normalised object mask (KL divergence).

Usage: ``python -m training.pretrain --out weights/tiny`` (what ``make pretrain`` runs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from affordance_core.prompts import HAND_PROMPT, ego_prompt, exo_prompt
from affordance_core.backbones import clearclip_head, clip_trunk
from affordance_core.tiny import (
    TINY_CLIP_FILE,
    TINY_DINO_FILE,
    TINY_GRID,
    TINY_IMAGE_SIZE,
    build_tiny_clip,
    build_tiny_dino,
    dino_last_block_qk,
    load_tiny_clip,
    load_tiny_dino,
    normalize_clip,
    normalize_dino,
    save_state_dict_fp16,
    tiny_tokenizer,
)

__all__ = [
    "PretrainConfig",
    "PretrainData",
    "TextVocabulary",
    "augment",
    "build_pretrain_data",
    "build_text_vocabulary",
    "clip_dense_losses",
    "dino_dense_losses",
    "load_world",
    "main",
    "patch_targets",
    "pretrain",
]

PRETRAIN_SEED_SALT = 0  # scenes for pretraining; the probe uses a different salt


def load_world() -> Any:
    """The synthetic world as one namespace.

    Returns:
        Namespace with ``OBJECTS`` and ``PART_TYPES`` (lists of names), ``list_actions``,
        ``object_caption`` (from ``affordance_core.synthetic.world``) and
        ``iter_pretrain_scenes`` (from ``affordance_core.synthetic.corpus``).
    """
    world = importlib.import_module("affordance_core.synthetic.world")
    corpus = importlib.import_module("affordance_core.synthetic.corpus")
    return SimpleNamespace(
        OBJECTS=list(world.OBJECTS), PART_TYPES=list(world.PART_TYPES),
        list_actions=world.list_actions, object_caption=world.object_caption,
        iter_pretrain_scenes=corpus.iter_pretrain_scenes,
    )


def object_captions(world: Any, obj: str) -> list[str]:
    """Object-level captions of ``obj``: the plain name caption, then the one with actions."""
    return [world.object_caption(obj, with_actions=False), world.object_caption(obj)]


@dataclass
class PretrainData:
    """A pre-rendered pretraining set held in memory.

    Attributes:
        images: (N, 3, S, S) uint8 RGB.
        object_mask: (N, S, S) bool, pixels of the object.
        part_index: (N, S, S) int8, part-type index into ``part_types``, -1 off the object parts.
        obj_index: (N,) int64 index into ``objects``.
        objects: object names (the world's ``OBJECTS`` order).
        part_types: part-type names (the world's ``PART_TYPES`` order).
        hand_mask: (N, S, S) bool, pixels of the person's hand (exo scenes; all False in ego
            scenes), or None when the scenes carry no hand masks.
    """

    images: Tensor
    object_mask: Tensor
    part_index: Tensor
    obj_index: Tensor
    objects: list[str]
    part_types: list[str]
    hand_mask: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _resize_scene_arrays(
    image: np.ndarray, mask: np.ndarray, parts: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if image.shape[0] == size and image.shape[1] == size:
        return image, mask, parts
    import cv2

    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    parts = cv2.resize(parts.astype(np.int16), (size, size), interpolation=cv2.INTER_NEAREST)
    return image, _resize_mask(mask, size), parts


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) bool, nearest neighbour."""
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    import cv2

    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


def build_pretrain_data(
    scenes: Iterable[Any], objects: Sequence[str], part_types: Sequence[str],
    size: int = TINY_IMAGE_SIZE,
) -> PretrainData:
    """Stack rendered scenes into a :class:`PretrainData` (affordance maps are ignored).

    Args:
        scenes: objects with ``image`` (H, W, 3) uint8, ``object_mask`` (H, W) bool,
            ``part_instance`` (H, W) int part-type index or -1, ``obj`` (a name in
            ``objects``) and optionally ``hand_mask`` ((H, W) bool or None).
        objects: object vocabulary.
        part_types: part-type vocabulary (the range of ``part_instance``).
        size: output side in pixels; scenes of another size are resized.
    """
    obj_to_idx = {o: i for i, o in enumerate(objects)}
    imgs, masks, parts, idx, hands = [], [], [], [], []
    for sc in scenes:
        if sc.obj not in obj_to_idx:
            raise ValueError(f"scene object {sc.obj!r} not in the object vocabulary")
        im, m, p = _resize_scene_arrays(
            np.asarray(sc.image), np.asarray(sc.object_mask), np.asarray(sc.part_instance), size
        )
        hand = getattr(sc, "hand_mask", None)
        hand = np.zeros(m.shape, bool) if hand is None else _resize_mask(np.asarray(hand), size)
        imgs.append(im)
        masks.append(m)
        parts.append(p)
        hands.append(hand)
        idx.append(obj_to_idx[sc.obj])
    if not imgs:
        raise ValueError("no scenes to build a pretraining set from")
    part_index = torch.from_numpy(np.stack(parts).astype(np.int8))
    if int(part_index.max()) >= len(part_types):
        raise ValueError("part_instance holds an index outside the part-type vocabulary")
    return PretrainData(
        images=torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(),
        object_mask=torch.from_numpy(np.stack(masks).astype(bool)),
        part_index=part_index,
        obj_index=torch.tensor(idx, dtype=torch.int64),
        objects=list(objects),
        part_types=list(part_types),
        hand_mask=torch.from_numpy(np.stack(hands).astype(bool)),
    )


@dataclass
class TextVocabulary:
    """The fixed text set of the CLIP role and which texts each object makes positive.

    Attributes:
        texts: T strings: O plain object captions, O captions with actions, then the ego
            prompts and the exo prompts of every action, then (``has_hand``) the hand prompt.
        positives: (O, T) float32 in {0, 1}; row o marks o's two captions and the ego/exo
            prompts of the actions o affords (the hand prompt's column is 0: its positives
            are the hand's patches, not an object).
        n_objects: O; ``texts[:O]`` are the plain captions, in object order.
        actions: the action vocabulary (order of the ego and exo blocks).
        has_hand: ``texts[-1]`` is ``HAND_PROMPT``.
    """

    texts: list[str]
    positives: Tensor
    n_objects: int
    actions: list[str]
    has_hand: bool = False


def build_text_vocabulary(world: Any, hand: bool = False) -> TextVocabulary:
    """Build the CLIP-role text set from the world's objects and actions (object level only),
    plus the action-agnostic hand prompt when ``hand``."""
    objects = list(world.OBJECTS)
    actions = sorted({a for o in objects for a in world.list_actions(o)})
    caps = [object_captions(world, o) for o in objects]
    texts = [c[0] for c in caps] + [c[1] for c in caps]
    texts += [ego_prompt(a) for a in actions] + [exo_prompt(a) for a in actions]
    texts += [HAND_PROMPT] if hand else []
    pos = torch.zeros(len(objects), len(texts))
    n_o, n_a = len(objects), len(actions)
    for i, o in enumerate(objects):
        pos[i, i] = pos[i, n_o + i] = 1.0
        for a in world.list_actions(o):
            j = actions.index(a)
            pos[i, 2 * n_o + j] = 1.0
            pos[i, 2 * n_o + n_a + j] = 1.0
    return TextVocabulary(texts=texts, positives=pos, n_objects=n_o, actions=actions,
                          has_hand=hand)


def augment(
    images: Tensor, object_mask: Tensor, part_index: Tensor, gen: torch.Generator,
    min_scale: float = 0.7, hand_mask: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Random horizontal flip and random square crop (resized back), same for masks.

    Args:
        images: (B, 3, S, S) float in [0, 1].
        object_mask: (B, S, S) bool.
        part_index: (B, S, S) int (-1 = none).
        gen: CPU generator for reproducibility.
        min_scale: smallest crop side as a fraction of S.
        hand_mask: optional (B, S, S) bool, cropped like ``object_mask``. It does not change
            the random draws, so the other outputs are the same with or without it.

    Returns:
        The augmented ``images`` (float, bilinear), ``object_mask`` (bool) and ``part_index``
        (int64), all at the input size (masks sampled nearest); then the augmented
        ``hand_mask`` (bool) when one was given.
    """
    b = images.shape[0]
    scale = min_scale + (1.0 - min_scale) * torch.rand(b, generator=gen)
    shift = (1.0 - scale)[:, None] * (2.0 * torch.rand(b, 2, generator=gen) - 1.0)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    channels = [object_mask.float(), part_index.float()]
    if hand_mask is not None:
        channels.append(hand_mask.float())
    labels = F.grid_sample(torch.stack(channels, dim=1), grid, mode="nearest",
                           padding_mode="border", align_corners=False)
    if hand_mask is None:
        return out, labels[:, 0] > 0.5, labels[:, 1].round().long()
    return out, labels[:, 0] > 0.5, labels[:, 1].round().long(), labels[:, 2] > 0.5


def patch_targets(
    object_mask: Tensor, part_index: Tensor, n_part_types: int, grid: int = TINY_GRID
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch targets on a grid x grid patch layout.

    Args:
        object_mask: (B, S, S) bool.
        part_index: (B, S, S) int, -1 where no part.
        n_part_types: P; background becomes class P.
        grid: patches per side (S must be divisible by it).

    Returns:
        obj_frac: (B, grid, grid) float in [0, 1], fraction of each patch on the object.
        part_label: (B, grid, grid) int64 in [0, P], majority part type (P = background).
        purity: (B, grid, grid) float in (0, 1], fraction of the patch with the majority label.
    """
    obj_frac = F.adaptive_avg_pool2d(object_mask.float()[:, None], grid)[:, 0]
    lab = torch.where(part_index < 0, torch.full_like(part_index, n_part_types), part_index)
    onehot = F.one_hot(lab.long(), n_part_types + 1).permute(0, 3, 1, 2).float()
    hist = F.adaptive_avg_pool2d(onehot, grid)
    purity, part_label = hist.max(dim=1)
    return obj_frac, part_label, purity


def within_image_contrast(features: Tensor, labels: Tensor, valid: Tensor,
                          temperature: float = 0.1) -> Tensor:
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
    sim = features @ features.transpose(1, 2) / temperature                # (B, N, N)
    pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(n, dtype=torch.bool,
                                                              device=features.device)
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
    clip: nn.Module, images: Tensor, obj_index: Tensor, obj_frac: Tensor, text_tokens: Tensor,
    positives: Tensor, n_objects: int, dense_scale: Tensor, dense_bias: Tensor,
    objectness_head: nn.Module | None = None, hand_frac: Tensor | None = None,
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
    dense = pos_term.sum() / target.sum().clamp(min=1e-6) \
        + neg_term.sum() / (1.0 - target).sum().clamp(min=1e-6)
    frac = obj_frac.flatten(1)
    contrast = within_image_contrast(patches.flatten(2).transpose(1, 2), (frac >= 0.5).long(),
                                     (frac >= 0.5) | (frac <= 0.01))
    captions = text[:n_objects]
    text_sep = F.cross_entropy(captions @ captions.t() / 0.1,
                               torch.arange(n_objects, device=captions.device))
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
    flat = cos.flatten(2)                                                  # (B, T, hw)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    norm = (flat - lo) / (hi - lo).clamp(min=1e-6)
    pos_text = positives[obj_index][:, :, None]                            # (B, T, 1)
    on, off = (frac >= 0.5)[:, None].float(), (frac <= 0.01)[:, None].float()
    threshold = _soft_threshold(norm, pos_text * on, pos_text * off)
    out = {"dense": dense, "contrast": contrast, "text": text_sep, "global": glob, "acc": acc,
           "threshold": threshold}
    if hand_frac is not None:
        hand = hand_frac.flatten(1)
        shown = (hand.amax(-1, keepdim=True) > 0).float()                 # (B, 1)
        on_hand, off_hand = (hand >= 0.3).float() * shown, (hand <= 0.01).float() * shown
        out["hand"] = _soft_threshold(norm[:, -1], on_hand, off_hand)
    if objectness_head is not None:
        logit = objectness_head(trunk[:, 1:]).squeeze(-1)                     # (B, h*w)
        out["objectness"] = F.binary_cross_entropy_with_logits(logit, frac)
    return out


def dino_dense_losses(
    vit: nn.Module, images: Tensor, obj_frac: Tensor, part_label: Tensor, purity: Tensor,
    prototypes: Tensor, temperature: float = 0.1, min_purity: float = 0.5,
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
    weight = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * n_cls),
                         torch.zeros_like(counts)).clamp(max=10.0)
    part = F.cross_entropy(logits.reshape(-1, n_cls), lab.reshape(-1), weight=weight,
                           ignore_index=-100)
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


@dataclass
class PretrainConfig:
    """Recipe of ``make pretrain`` (see weights/tiny/README.md).

    Attributes:
        seed: seed of scene rendering, initialisation, batching and augmentation.
        n_scenes: size of the pre-rendered pretraining set.
        steps: optimisation steps (shared by both models; one batch feeds both).
        batch_size: images per step.
        lr: peak AdamW learning rate (warm-up then cosine).
        weight_decay: AdamW weight decay (matrices only).
        warmup_frac: fraction of steps of linear warm-up.
        w_global: weight of the CLIP global caption CE.
        w_clip_contrast: weight of the CLIP within-image object/background contrast.
        w_text: weight of the CLIP caption-separation CE.
        w_saliency: weight of the DINO saliency KL.
        w_dino_contrast: weight of the DINO within-image part contrast.
        w_objectness: weight of the CLIP trunk's deep objectness supervision.
        w_threshold: weight of the CLIP soft-threshold term on min-max normalised affinity.
        w_hand: weight of the CLIP hand term (the hand prompt's dense target is the hand
            mask; 0 leaves the hand prompt out of the text set altogether).
        clearclip_query_init_scale: factor on the initial query weights of the CLIP's last
            block (the block ClearCLIP reuses).
        models: which backbones to train (``dino``, ``clip``).
        save_every: write the checkpoints every this many steps (0 = only at the end).
        threads: torch CPU threads (0 = leave torch's default).
        init_from: folder holding ``dino_tiny.pt`` / ``clip_tiny.pt`` to start from instead of
            a random initialisation (a later stage of a multi-stage recipe; the query scaling
            is then not applied again). None starts from scratch.
    """

    seed: int = 0
    n_scenes: int = 6000
    steps: int = 2500
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    w_global: float = 0.5
    w_clip_contrast: float = 1.0
    w_text: float = 1.0
    w_saliency: float = 1.0
    w_dino_contrast: float = 0.5
    w_objectness: float = 1.0
    w_threshold: float = 0.0
    w_hand: float = 0.0
    clearclip_query_init_scale: float = 4.0
    models: tuple[str, ...] = ("dino", "clip")
    save_every: int = 250
    threads: int = 0
    init_from: str | None = None


def _param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


MODELS = ("dino", "clip")


def _initial_model(name: str, init_from: str | None) -> nn.Module:
    """A freshly initialised backbone, or the checkpoint of an earlier stage, in train mode."""
    if init_from is None:
        return (build_tiny_dino() if name == "dino" else build_tiny_clip()).train()
    path = Path(init_from) / (TINY_DINO_FILE if name == "dino" else TINY_CLIP_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"--init-from {init_from}: no {path.name} there; run the earlier pretraining stage "
            "first (scripts/pretrain.sh runs all stages)")
    return (load_tiny_dino(path) if name == "dino" else load_tiny_clip(path)).train()


def pretrain(
    cfg: PretrainConfig, out_dir: str | Path | None = None, world: Any | None = None,
    data: PretrainData | None = None, log_every: int = 50, verbose: bool = True,
) -> dict[str, Any]:
    """Pretrain the tiny backbones named in ``cfg.models``; optionally write their checkpoints.

    Both models see the same batches and augmentations, and each model's initialisation,
    optimiser and gradient clipping are its own, so training one model alone
    (``cfg.models=("clip",)``) gives the same weights as training both together, up to
    floating-point summation order: the two can run as two processes on a multi-core machine.

    Args:
        cfg: the recipe.
        out_dir: where to write ``dino_tiny.pt`` and ``clip_tiny.pt`` (also every
            ``cfg.save_every`` steps, atomically); None writes nothing.
        world: the synthetic world module (default: ``affordance_core.synthetic.world``).
        data: a pre-built set (default: render ``cfg.n_scenes`` scenes from ``world``).
        log_every: steps between log lines.
        verbose: print progress.

    Returns:
        Summary dict: ``dino`` and ``clip`` (the trained float32 models in eval mode, None for
        a model not trained), ``history`` (list of per-log-step loss dicts), ``render_s``,
        ``train_s``, ``files``.
    """
    unknown = set(cfg.models) - set(MODELS)
    if unknown or not cfg.models:
        raise ValueError(f"models must be a non-empty subset of {MODELS}, got {cfg.models}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    np.random.seed(cfg.seed)
    world = world if world is not None else load_world()
    t0 = time.perf_counter()
    if data is None:
        scenes = world.iter_pretrain_scenes(
            seed=cfg.seed * 1000 + PRETRAIN_SEED_SALT, n=cfg.n_scenes, size=TINY_IMAGE_SIZE
        )
        data = build_pretrain_data(scenes, world.OBJECTS, world.PART_TYPES)
    render_s = time.perf_counter() - t0
    vocab = build_text_vocabulary(world, hand=cfg.w_hand > 0)
    if vocab.has_hand and data.hand_mask is None:
        raise ValueError("w_hand > 0 needs pretraining data with hand masks")
    tokens = tiny_tokenizer()(vocab.texts)
    n_parts = len(data.part_types)

    dino = clip = None
    trained: dict[str, tuple[nn.Module, list[nn.Parameter], torch.optim.Optimizer]] = {}
    if "dino" in cfg.models:
        torch.manual_seed(cfg.seed * 7 + 1)
        dino = _initial_model("dino", cfg.init_from)
        prototypes = nn.Parameter(torch.randn(n_parts + 1, dino.embed_dim) * 0.02)
        groups = _param_groups(dino, cfg.weight_decay)
        groups.append({"params": [prototypes], "weight_decay": 0.0})
        trained["dino"] = (dino, [p for g in groups for p in g["params"]],
                           torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98)))
    if "clip" in cfg.models:
        torch.manual_seed(cfg.seed * 7 + 2)
        clip = _initial_model("clip", cfg.init_from)
        if cfg.init_from is None:
            with torch.no_grad():
                # Larger initial queries make ClearCLIP's q-q attention start near-diagonal, so
                # each patch embedding starts local instead of an image-wide average.
                attn = clip.visual.transformer.resblocks[-1].attn
                attn.in_proj_weight[: attn.embed_dim] *= cfg.clearclip_query_init_scale
        dense_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        dense_bias = nn.Parameter(torch.tensor(-2.0))
        objectness = nn.Linear(clip.visual.transformer.width, 1)
        groups = _param_groups(clip, cfg.weight_decay) + _param_groups(objectness, 0.0)
        groups.append({"params": [dense_scale, dense_bias], "weight_decay": 0.0})
        trained["clip"] = (clip, [p for g in groups for p in g["params"]],
                           torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98)))
    warm = max(1, int(cfg.warmup_frac * cfg.steps))

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.lr * (step + 1) / warm
        prog = (step - warm) / max(1, cfg.steps - warm)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * prog))

    def save() -> dict[str, str]:
        if out_dir is None:
            return {}
        names = {"dino": TINY_DINO_FILE, "clip": TINY_CLIP_FILE}
        return {name: str(save_state_dict_fp16(model, Path(out_dir) / names[name]))
                for name, (model, _, _) in trained.items()}

    gen = torch.Generator().manual_seed(cfg.seed)  # batches and augmentation, shared
    history: list[dict[str, float]] = []
    n = len(data)
    perm = torch.randperm(n, generator=gen)
    cursor = 0
    t1 = time.perf_counter()
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        imgs = data.images[idx].float() / 255.0
        hand_frac = None
        if vocab.has_hand:
            imgs, omask, pidx, hand = augment(imgs, data.object_mask[idx], data.part_index[idx],
                                              gen, hand_mask=data.hand_mask[idx])
            hand_frac = F.adaptive_avg_pool2d(hand.float()[:, None], TINY_GRID)[:, 0]
        else:
            imgs, omask, pidx = augment(imgs, data.object_mask[idx], data.part_index[idx], gen)
        obj_frac, part_label, purity = patch_targets(omask, pidx, n_parts)
        rec: dict[str, float] = {"step": step}
        for name, (model, params, opt) in trained.items():
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            if name == "clip":
                parts = clip_dense_losses(model, imgs, data.obj_index[idx], obj_frac, tokens,
                                          vocab.positives, vocab.n_objects, dense_scale,
                                          dense_bias, objectness_head=objectness,
                                          hand_frac=hand_frac)
                loss = parts["dense"] + cfg.w_global * parts["global"] \
                    + cfg.w_clip_contrast * parts["contrast"] + cfg.w_text * parts["text"] \
                    + cfg.w_objectness * parts["objectness"] \
                    + cfg.w_threshold * parts["threshold"] \
                    + cfg.w_hand * parts.get("hand", 0.0)
            else:
                parts = dino_dense_losses(model, imgs, obj_frac, part_label, purity, prototypes)
                loss = parts["part"] + cfg.w_saliency * parts["saliency"] \
                    + cfg.w_dino_contrast * parts["contrast"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            rec[f"{name}_loss"] = float(loss.detach())
            rec.update({f"{name}_{k}": float(v.detach()) for k, v in parts.items()})
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save()
        if step % log_every == 0 or step == cfg.steps - 1:
            rec["elapsed_s"] = time.perf_counter() - t1
            history.append(rec)
            if verbose:
                print(json.dumps({k: round(v, 4) for k, v in rec.items()}), flush=True)
    train_s = time.perf_counter() - t1
    for model, _, _ in trained.values():
        model.eval()
    files = save()
    return {"dino": dino, "clip": clip, "history": history, "render_s": render_s,
            "train_s": train_s, "files": files}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``affordance-pretrain --out weights/tiny [--steps N] [--n-scenes N] [--seed S]``."""
    ap = argparse.ArgumentParser(prog="affordance-pretrain", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="weights/tiny", help="output folder for the checkpoints")
    d = PretrainConfig()
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--n-scenes", type=int, default=d.n_scenes)
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(d.models),
                    help="backbones to train (one each in two processes gives the same weights)")
    ap.add_argument("--w-threshold", type=float, default=d.w_threshold,
                    help="weight of the CLIP soft-threshold term")
    ap.add_argument("--w-hand", type=float, default=d.w_hand,
                    help="weight of the CLIP hand term (0: no hand prompt)")
    ap.add_argument("--init-from", default=None, metavar="DIR",
                    help="start from the checkpoints in DIR (a later stage of the recipe)")
    ap.add_argument("--no-probe", action="store_true", help="skip the backbone probe")
    args = ap.parse_args(argv)
    cfg = PretrainConfig(seed=args.seed, n_scenes=args.n_scenes, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, threads=args.threads,
                         models=tuple(args.models), init_from=args.init_from,
                         w_threshold=args.w_threshold, w_hand=args.w_hand)
    res = pretrain(cfg, out_dir=args.out, log_every=args.log_every)
    summary: dict[str, Any] = {"render_s": round(res["render_s"], 1),
                               "train_s": round(res["train_s"], 1), "files": res["files"]}
    if not args.no_probe and (res["dino"] is None or res["clip"] is None):
        # A file left in --out by an earlier run may not belong with the model just trained.
        print("probe skipped: it needs both backbones trained in this run; run "
              "`python -m training.backbone_probe --weights-dir OUT` once both are written",
              flush=True)
    elif not args.no_probe:
        from training.backbone_probe import probe_backbones

        probe = probe_backbones(res["dino"], res["clip"], tiny_tokenizer(), seed=cfg.seed)
        summary["probe"] = probe
        tmp = Path(args.out) / "probe.json.tmp"
        tmp.write_text(json.dumps(probe, indent=2) + "\n")
        tmp.replace(Path(args.out) / "probe.json")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
