"""Measure how well the tiny backbones play their dense roles, against trivial baselines.

On held-out synthetic pretraining-style scenes (a seed salt used by neither pretraining nor the
benchmark corpus) it reports:

* ``clip_object_iou`` / ``clip_action_iou``: ClearCLIP patch-text affinity with the object's
  caption / with the ego prompt of each action the object affords, min-max normalised per
  image, upsampled bilinearly, binarised at 0.5, IoU with the object mask. Baseline
  ``centre_affinity_iou``: a centre Gaussian treated the same way.
* ``clip_zero_shot_acc``: pooled image embedding vs object captions, top-1 accuracy.
* ``clip_hand_pointing``: in the scenes that show a person, the share whose highest patch of
  the hand-prompt affinity lies on the hand or next to it (the hand mask dilated by one
  patch, patch level). Baseline ``centre_hand_pointing``: the centre patch instead.
* ``dino_part_iou``: K-means (K=3) on the L2-normalised last-block keys of the object patches
  (object covers >= half the patch), mean over part types of the best-matching cluster IoU
  with the part mask (pixel level). ``dino_part_iou_raw`` clusters the raw keys. Baseline
  ``pixel_part_iou``: K-means on the patch-mean RGB of the same patches.
* ``dino_part_transfer_iou``: what SelectiveCL's part discovery needs across images: the mean
  L2-normalised key of one part type in one image (a part prototype) is compared with the
  object patches of *another* image (another instance, other colours); cosine above its mean
  over those patches is scored by IoU against that image's patches of the same part type
  (patch level, majority label, purity >= 0.5). Baseline ``pixel_part_transfer_iou``: the
  same with patch-mean RGB, which cannot transfer since colours are drawn per instance.
* ``dino_saliency_iou``: CLS->patch attention above its spatial mean, IoU with the object mask.
  Baseline ``centre_saliency_iou``: a centre Gaussian above its mean.

Every learned number is also given for randomly initialised models (``random`` block).
CLI: ``python -m training.probes.backbone [--weights-dir weights/tiny] [--out probe.json]``
prints one JSON line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from affordance_core.prompts import HAND_PROMPT, ego_prompt
from affordance_core.tiny import (
    TINY_CLIP_FILE,
    TINY_DINO_FILE,
    TINY_GRID,
    TINY_IMAGE_SIZE,
    build_tiny_clip,
    build_tiny_dino,
    clearclip_patch_embeddings,
    default_tiny_weights_dir,
    dino_keys_and_saliency,
    load_tiny_clip,
    load_tiny_dino,
    normalize_clip,
    normalize_dino,
    tiny_tokenizer,
)
from training.common import print_json_result
from training.pretrain.data import build_pretrain_data, load_world, object_captions, patch_targets

__all__ = [
    "PROBE_SEED_SALT",
    "batched_kmeans",
    "main",
    "part_transfer_iou",
    "probe_backbones",
    "probe_scenes",
]

PROBE_SEED_SALT = 7919


def probe_scenes(world: Any, seed: int, n: int) -> dict[str, Any]:
    """Render the held-out probe scenes.

    Returns:
        dict with ``images`` (n, 3, S, S) float in [0, 1], ``object_mask`` (n, S, S) bool,
        ``part_index`` (n, S, S) int64 (-1 off parts), ``hand_mask`` (n, S, S) bool (all
        False without a person), ``obj`` list of names.
    """
    scenes = world.iter_pretrain_scenes(
        seed=seed * 1000 + PROBE_SEED_SALT, n=n, size=TINY_IMAGE_SIZE
    )
    data = build_pretrain_data(scenes, world.OBJECTS, world.PART_TYPES)
    return {
        "images": data.images.float() / 255.0,
        "object_mask": data.object_mask,
        "part_index": data.part_index.long(),
        "hand_mask": data.hand_mask,
        "obj": [data.objects[i] for i in data.obj_index.tolist()],
    }


def _iou(pred: Tensor, gt: Tensor) -> Tensor:
    """IoU over the last two dims of bool tensors; 0 where the union is empty."""
    inter = (pred & gt).flatten(-2).sum(-1).float()
    union = (pred | gt).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def _minmax(x: Tensor) -> Tensor:
    flat = x.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp(min=1e-8)).reshape(x.shape)


def _up(x: Tensor, size: int, mode: str) -> Tensor:
    """Upsample (..., h, w) maps to (..., size, size)."""
    shp = x.shape
    y = F.interpolate(
        x.reshape(-1, 1, *shp[-2:]).float(),
        size=(size, size),
        mode=mode,
        **({"align_corners": False} if mode == "bilinear" else {}),
    )
    return y.reshape(*shp[:-2], size, size)


def _centre_gaussian(grid: int, sigma_frac: float = 0.25) -> Tensor:
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid - 0.5
    g = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma_frac**2))
    return g


def batched_kmeans(feats: Tensor, valid: Tensor, k: int = 3, iters: int = 25) -> Tensor:
    """Deterministic K-means run independently per image, vectorised over the batch.

    Initialisation: the valid point farthest from the valid mean, then farthest-point picks.

    Args:
        feats: (B, N, C) float features.
        valid: (B, N) bool, points that take part (at least ``k`` per image).
        k: number of clusters.
        iters: Lloyd iterations.

    Returns:
        (B, N) int64 cluster index in [0, k), -1 for invalid points.
    """
    b, n, _ = feats.shape
    vf = valid.float()[..., None]
    mean = (feats * vf).sum(1, keepdim=True) / vf.sum(1, keepdim=True).clamp(min=1)
    dist = torch.where(valid, ((feats - mean) ** 2).sum(-1), torch.full((b, n), -1.0))
    centres = []
    for _ in range(k):
        idx = dist.argmax(1)
        cen = feats[torch.arange(b), idx]
        centres.append(cen)
        d_new = ((feats - cen[:, None]) ** 2).sum(-1)
        d_new = torch.where(valid, d_new, torch.full_like(d_new, -1.0))
        dist = d_new if len(centres) == 1 else torch.minimum(dist, d_new)
    cent = torch.stack(centres, 1)  # (B, k, C)
    assign = torch.zeros(b, n, dtype=torch.long)
    for _ in range(iters):
        d = torch.cdist(feats, cent)  # (B, N, k)
        assign = d.argmin(-1)
        onehot = F.one_hot(assign, k).float() * vf
        cnt = onehot.sum(1)  # (B, k)
        new = onehot.transpose(1, 2) @ feats / cnt.clamp(min=1)[..., None]
        cent = torch.where(cnt[..., None] > 0, new, cent)
    return torch.where(valid, assign, torch.full_like(assign, -1))


def _part_cluster_iou(
    feats: Tensor, obj_patch: Tensor, part_index: Tensor, n_part_types: int, k: int = 3
) -> tuple[Tensor, Tensor]:
    """Mean best-match IoU between K-means clusters of patches and pixel part masks.

    Args:
        feats: (B, hw, C) patch features.
        obj_patch: (B, hw) bool, patches to cluster.
        part_index: (B, S, S) int64 part type per pixel, -1 elsewhere.
        n_part_types: number of part types.
        k: clusters.

    Returns:
        iou: (B,) float mean over present part types of the best cluster IoU.
        ok: (B,) bool, images with at least ``k`` object patches and one visible part.
    """
    b, hw, _ = feats.shape
    grid = round(hw**0.5)
    size = part_index.shape[-1]
    assign = batched_kmeans(feats, obj_patch, k=k).reshape(b, 1, grid, grid)
    cl = _up(assign.float(), size, "nearest").long()[:, 0]  # (B, S, S)
    cmask = cl[:, None] == torch.arange(k).view(1, k, 1, 1)  # (B, k, S, S)
    pmask = part_index[:, None] == torch.arange(n_part_types).view(1, -1, 1, 1)  # (B, P, S, S)
    present = pmask.flatten(2).sum(-1) > 0
    inter = torch.einsum("bksx,bpsx->bpk", cmask.float(), pmask.float())
    union = cmask.flatten(2).sum(-1)[:, None, :] + pmask.flatten(2).sum(-1)[:, :, None] - inter
    best = (inter / union.clamp(min=1)).max(-1).values  # (B, P)
    ok = present & (obj_patch.sum(1) >= k)[:, None]
    return (best * ok).sum(1) / ok.sum(1).clamp(min=1), ok.any(1)


def part_transfer_iou(feats: Tensor, part_label: Tensor, n_part_types: int) -> Tensor:
    """Cross-image part retrieval IoU (see the module docstring), vectorised over the batch.

    Args:
        feats: (B, hw, C) patch features (normalised inside).
        part_label: (B, hw) int64 part type of each patch, -1 off the object parts.
        n_part_types: P.

    Returns:
        (M,) float IoU for every (image, part type) present in image b and in image b + 1.
    """
    feats = F.normalize(feats.float(), dim=-1)
    onehot = (
        F.one_hot(part_label.clamp(min=0), n_part_types).float()
        * (part_label >= 0).float()[..., None]
    )  # (B, hw, P)
    counts = onehot.sum(1)  # (B, P)
    protos = F.normalize(onehot.transpose(1, 2) @ feats, dim=-1)  # (B, P, C)
    other = feats.roll(-1, dims=0)
    other_onehot = onehot.roll(-1, dims=0)
    on_object = other_onehot.sum(-1) > 0  # (B, hw)
    sim = torch.einsum("bpc,bnc->bpn", protos, other)  # (B, P, hw)
    weight = on_object.float()[:, None]
    mean = (sim * weight).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True).clamp(min=1)
    pred = (sim > mean) & on_object[:, None]
    gt = other_onehot.transpose(1, 2) > 0  # (B, P, hw)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    shared = (counts > 0) & (other_onehot.sum(1) > 0)
    return (inter / union.clamp(min=1))[shared]


def _patch_part_labels(sc: dict[str, Any], n_parts: int, grid: int) -> Tensor:
    """(B, grid*grid) majority part type of each patch (purity >= 0.5), -1 elsewhere."""
    _, label, purity = patch_targets(sc["object_mask"], sc["part_index"], n_parts, grid)
    keep = (purity >= 0.5) & (label < n_parts)
    return torch.where(keep, label, torch.full_like(label, -1)).flatten(1)


@torch.no_grad()
def _clip_numbers(
    clip: nn.Module, tokenizer: Any, world: Any, sc: dict[str, Any]
) -> dict[str, float]:
    objects = list(world.OBJECTS)
    actions = sorted({a for o in objects for a in world.list_actions(o)})
    texts = [object_captions(world, o)[0] for o in objects] + [ego_prompt(a) for a in actions]
    tok = tokenizer(texts)
    txt = F.normalize(clip.encode_text(tok), dim=-1)
    x = normalize_clip(sc["images"])
    patches = clearclip_patch_embeddings(clip, x)  # (B, E, h, w)
    aff = torch.einsum("behw,te->bthw", patches, txt)
    size = sc["images"].shape[-1]
    gt = sc["object_mask"]
    oi = torch.tensor([objects.index(o) for o in sc["obj"]])
    bidx = torch.arange(len(oi))
    obj_map = _up(_minmax(aff[bidx, oi]), size, "bilinear") >= 0.5
    obj_iou = _iou(obj_map, gt).mean()
    afford = torch.tensor([[a in world.list_actions(o) for a in actions] for o in sc["obj"]])
    act_maps = _up(_minmax(aff[:, len(objects) :]), size, "bilinear") >= 0.5  # (B, A, S, S)
    act_iou = _iou(act_maps, gt[:, None])
    act_iou = (act_iou * afford).sum() / afford.sum().clamp(min=1)
    img = F.normalize(clip.encode_image(x), dim=-1)
    acc = ((img @ txt[: len(objects)].t()).argmax(1) == oi).float().mean()
    hand_txt = F.normalize(clip.encode_text(tokenizer([HAND_PROMPT])), dim=-1)[0]
    hand_aff = torch.einsum("behw,e->bhw", patches, hand_txt)
    return {
        "clip_object_iou": float(obj_iou),
        "clip_action_iou": float(act_iou),
        "clip_zero_shot_acc": float(acc),
        "clip_hand_pointing": _hand_pointing(hand_aff, sc["hand_mask"]),
    }


def _hand_pointing(score: Tensor, hand_mask: Tensor) -> float:
    """Share of images with a hand whose top patch of ``score`` (B, h, w) is on the hand mask
    (B, S, S) dilated by one patch; NaN when no image shows a hand."""
    grid = score.shape[-1]
    near = F.max_pool2d(F.adaptive_max_pool2d(hand_mask.float()[:, None], grid), 3, 1, 1)
    near = near.flatten(1) > 0  # (B, hw)
    shown = near.any(1)
    top = score.flatten(1).argmax(1)
    hit = near[torch.arange(len(top)), top]
    return float(hit[shown].float().mean()) if bool(shown.any()) else float("nan")


@torch.no_grad()
def _dino_numbers(dino: nn.Module, world: Any, sc: dict[str, Any]) -> dict[str, float]:
    keys, sal = dino_keys_and_saliency(dino, normalize_dino(sc["images"]))
    grid = keys.shape[-1]
    size = sc["images"].shape[-1]
    obj_frac = F.adaptive_avg_pool2d(sc["object_mask"].float()[:, None], grid)[:, 0]
    obj_patch = obj_frac.flatten(1) >= 0.5
    feats = keys.flatten(2).transpose(1, 2)
    n_parts = len(world.PART_TYPES)
    norm_iou, ok = _part_cluster_iou(
        F.normalize(feats, dim=-1), obj_patch, sc["part_index"], n_parts
    )
    raw_iou, _ = _part_cluster_iou(feats, obj_patch, sc["part_index"], n_parts)
    sal_mask = sal > sal.flatten(1).mean(1)[:, None, None]
    sal_iou = _iou(_up(sal_mask.float(), size, "nearest") > 0.5, sc["object_mask"])
    transfer = part_transfer_iou(feats, _patch_part_labels(sc, n_parts, grid), n_parts)
    return {
        "dino_part_iou": float(norm_iou[ok].mean()),
        "dino_part_iou_raw": float(raw_iou[ok].mean()),
        "dino_part_transfer_iou": float(transfer.mean()),
        "dino_saliency_iou": float(sal_iou.mean()),
    }


@torch.no_grad()
def _baselines(world: Any, sc: dict[str, Any], grid: int = TINY_GRID) -> dict[str, float]:
    imgs = sc["images"]
    b, _, size, _ = imgs.shape
    gt = sc["object_mask"]
    g = _centre_gaussian(grid).expand(b, grid, grid)
    aff = _up(_minmax(g), size, "bilinear") >= 0.5
    sal = _up((g > g.mean()).float(), size, "nearest") > 0.5
    obj_frac = F.adaptive_avg_pool2d(gt.float()[:, None], grid)[:, 0]
    obj_patch = obj_frac.flatten(1) >= 0.5
    rgb = F.adaptive_avg_pool2d(imgs, grid).flatten(2).transpose(1, 2)
    n_parts = len(world.PART_TYPES)
    pix, ok = _part_cluster_iou(rgb, obj_patch, sc["part_index"], n_parts)
    transfer = part_transfer_iou(rgb, _patch_part_labels(sc, n_parts, grid), n_parts)
    return {
        "centre_affinity_iou": float(_iou(aff, gt).mean()),
        "centre_hand_pointing": _hand_pointing(g, sc["hand_mask"]),
        "centre_saliency_iou": float(_iou(sal, gt).mean()),
        "pixel_part_iou": float(pix[ok].mean()),
        "pixel_part_transfer_iou": float(transfer.mean()),
    }


def probe_backbones(
    dino: nn.Module,
    clip: nn.Module,
    tokenizer: Any,
    seed: int,
    n: int = 200,
    world: Any | None = None,
    with_random: bool = True,
) -> dict[str, Any]:
    """Probe both backbones on ``n`` held-out scenes.

    Args:
        dino: tiny timm ViT (DINO role).
        clip: tiny open_clip CLIP.
        tokenizer: callable list[str] -> (T, L) int64 tokens (see ``tiny_tokenizer``).
        seed: probe seed (scenes use ``seed * 1000 + PROBE_SEED_SALT``).
        n: number of scenes.
        world: synthetic world module (default ``affordance_core.synthetic.world``).
        with_random: also report randomly initialised models under ``"random"``.

    Returns:
        Flat dict of floats (see the module docstring) plus ``"random"`` (same keys for random
        init), ``"baselines"`` and ``"n"``; all IoUs and accuracies in [0, 1].
    """
    world = world if world is not None else load_world()
    sc = probe_scenes(world, seed, n)
    dino_was, clip_was = dino.training, clip.training
    dino.eval()
    clip.eval()
    out: dict[str, Any] = {"n": len(sc["obj"])}
    out.update(_clip_numbers(clip, tokenizer, world, sc))
    out.update(_dino_numbers(dino, world, sc))
    dino.train(dino_was)
    clip.train(clip_was)
    out["baselines"] = _baselines(world, sc)
    if with_random:
        torch.manual_seed(seed)
        rd, rc = build_tiny_dino().eval(), build_tiny_clip().eval()
        rand = _clip_numbers(rc, tokenizer, world, sc)
        rand.update(_dino_numbers(rd, world, sc))
        out["random"] = rand
    return _rounded(out)


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _rounded(v) if isinstance(v, dict) else (round(v, 4) if isinstance(v, float) else v)
        for k, v in d.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: probe the checkpoints in a weights folder and print one JSON line."""
    ap = argparse.ArgumentParser(description="Probe the tiny backbones' dense quality.")
    ap.add_argument("--weights-dir", default=None, help="folder with the tiny checkpoints")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args(argv)
    wdir = Path(args.weights_dir) if args.weights_dir else default_tiny_weights_dir()
    dino = load_tiny_dino(wdir / TINY_DINO_FILE)
    clip = load_tiny_clip(wdir / TINY_CLIP_FILE)
    print_json_result(
        probe_backbones(dino, clip, tiny_tokenizer(), seed=args.seed, n=args.n), args.out
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
