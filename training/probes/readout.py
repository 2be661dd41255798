"""What the part prior could read instead of the last block's keys, on validation data only
(``python -m training.probes.readout``).

The part prior (:mod:`affordance_core.part_prior`) is a linear softmax over the actions of the
DINO-role keys of the last block, on the model's 14x14 patch grid. This probe refits it, on the
same training exo images and the same two regions as :mod:`training.probes.parts` (the hand
finder's interaction patches, and the true afforded part: the ceiling of a linear read-out),
from other descriptors of the same frozen backbone, and scores each on the validation corpus
the way :mod:`training.probes.parts` does (the method's min-max map, upsampled bilinearly to
the descriptor's grid, times the prior):

* ``block k``: the attention keys of block ``k`` (the last block is what ``affordance-train``
  fits; its row reproduces :mod:`training.probes.parts`' prior rows);
* ``blocks j+k``: two blocks' keys, each L2-normalised, concatenated;
* ``last block at S px``: the last block's keys of the image resized to S pixels (the patch
  size unchanged, so a finer grid; the position embedding is resampled with timm's
  ``resample_abs_pos_embed``). The hand finder's CLIP hand affinity is upsampled to that grid.

For each descriptor and region: the afforded-part share of the region's patches in the
training exo images (``part_share``) and the validation metrics at the model's
``part_prior_temperature`` and at ``T = 1``. Last line: one JSON object.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from affordance_core import load_model
from affordance_core.backbones import (
    DinoBackbone,
    cls_patch_attention,
    cls_saliency,
    keys_to_grid,
    minmax,
)
from affordance_core.data import AffordanceTestDataset
from affordance_core.data.datasets import AffordanceTrainDataset
from affordance_core.data.transforms import center_resize, load_rgb, to_tensor
from affordance_core.part_prior import interaction_patches
from training.common import print_json_result
from training.evaluate import extract_test_set
from training.probes.parts import (
    _exo_set,
    _fit,
    _probability,
    corpus_probe_parser,
    presence_of,
    score_with_infer,
)

__all__ = ["block_keys", "dino_at_size", "main", "probe_readout"]


def block_keys(dino: DinoBackbone, images: Tensor) -> tuple[list[Tensor], Tensor]:
    """The attention keys of every block of a DINO-role timm ViT, and its saliency.

    Args:
        dino: the backbone (its ``vit`` is a timm ``VisionTransformer``).
        images: (N, 3, S, S) float RGB in [0, 1], S a multiple of the patch size.

    Returns:
        one (N, D, h, w) float tensor per block (the last is
        :class:`~affordance_core.backbones.DinoFeatures`' ``keys``), and the (N, h, w)
        saliency in [0, 1] of the last block's CLS attention.
    """
    vit = dino.vit
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(dino.normalize(images))))
    keys = []
    for block in vit.blocks:
        attn = block.attn
        n, tokens, _ = x.shape
        qkv = attn.qkv(block.norm1(x)).reshape(n, tokens, 3, attn.num_heads, attn.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        keys.append(keys_to_grid(k, dino.num_prefix))
        x = block(x)
    heads = dino.saliency_heads
    cls = cls_patch_attention(q[:, heads], k[:, heads], attn.scale, dino.num_prefix)
    return keys, cls_saliency(cls.reshape(n, len(heads), *keys[-1].shape[-2:]))


def dino_at_size(dino: DinoBackbone, size: int) -> DinoBackbone:
    """A copy of ``dino`` that takes ``size`` px images (same patches, position embedding
    resampled to the finer or coarser grid)."""
    from timm.layers import resample_abs_pos_embed

    out = copy.deepcopy(dino)
    patch = dino.vit.patch_embed.patch_size[0]
    if size % patch:
        raise ValueError(f"size {size} is not a multiple of the patch size {patch}")
    grid = size // patch
    embed = out.vit.patch_embed
    embed.img_size, embed.grid_size, embed.num_patches = (size, size), (grid, grid), grid * grid
    out.vit.pos_embed = torch.nn.Parameter(
        resample_abs_pos_embed(dino.vit.pos_embed, (grid, grid), num_prefix_tokens=dino.num_prefix)
    )
    return out


def _exo_images(root: Path, split: str, vocabulary: list[str], size: int) -> Tensor:
    dataset = AffordanceTrainDataset(root, split, size, vocabulary)
    images = [load_rgb(path) for path, _, _ in dataset.samples]
    return torch.stack([to_tensor(center_resize(im, size)) for im in images if im is not None])


def probe_readout(
    checkpoint: str | Path,
    train_root: str | Path,
    train_seed: int,
    val_root: str | Path,
    split: str = "Seen",
    sizes: Sequence[int] = (168, 224),
) -> dict[str, Any]:
    """Every descriptor (module docstring) for one model; returns ``{"rows": {...}}``."""
    model = load_model(checkpoint, device="cpu").eval()
    if model.clip is None:
        raise ValueError("the read-out probe needs a model with a CLIP-role backbone")
    temperature = model.config.part_prior_temperature
    model.part_prior = None
    model.config = dataclasses.replace(model.config, part_prior=False)
    method_infer = model.infer
    c = model.num_classes
    val_set = AffordanceTestDataset(val_root, split, model.image_size, vocabulary=model.vocabulary)
    extracted = extract_test_set(model, val_set, device=torch.device("cpu"))

    def run_size(size: int) -> tuple[Any, list[Tensor], Tensor, Tensor, dict[int, list[Tensor]]]:
        dino = model.dino if size == model.image_size else dino_at_size(model.dino, size)
        grid = size // dino.vit.patch_embed.patch_size[0]
        exo = _exo_set(model, Path(train_root), split, train_seed, grid)
        images = _exo_images(Path(train_root), split, model.vocabulary, size)
        chunks = [block_keys(dino, images[i : i + 32]) for i in range(0, len(images), 32)]
        keys = [torch.cat([ch[0][b] for ch in chunks]) for b in range(len(chunks[0][0]))]
        saliency = torch.cat([ch[1] for ch in chunks])
        hand = model.affinity(exo.feats.clip, exo.labels, "hand")
        hand = F.interpolate(hand[:, None], size=(grid, grid), mode="bilinear")[:, 0]
        found = interaction_patches(hand, saliency, reach=model.config.part_prior_hand_reach)
        resized = AffordanceTestDataset(val_root, split, size, vocabulary=model.vocabulary)
        val_keys = {}
        loader = DataLoader(resized, batch_size=32, shuffle=False)
        for (feats, _, _, _), batch in zip(extracted.batches, loader, strict=True):
            val_keys[id(feats.keys)] = block_keys(dino, batch["image"])[0]
        return exo, keys, found, exo.part >= 0.3, val_keys

    def score(fit: Any, describe: Callable[[list[Tensor]], Tensor], val_keys: dict, t: float):
        def infer(feats: Any, ids: Tensor) -> tuple[Tensor, Tensor]:
            maps = method_infer(feats, ids)[0]
            prob = _probability(fit, describe(val_keys[id(feats.keys)]), ids, t)
            maps = F.interpolate(minmax(maps), size=prob.shape[-2:], mode="bilinear") * prob
            return maps, presence_of(model, feats, ids, maps)

        return score_with_infer(model, extracted, infer)

    def joined(blocks: Sequence[int]) -> Callable[[list[Tensor]], Tensor]:
        return lambda keys: torch.cat([F.normalize(keys[b].float(), dim=1) for b in blocks], 1)

    rows: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for size in (model.image_size, *sizes):
            exo, keys, found, true_part, val_keys = run_size(size)
            last = len(keys) - 1
            if size == model.image_size:
                names = {f"block {b}": joined([b]) for b in range(len(keys))}
                names[f"blocks {last - 1}+{last}"] = joined([last - 1, last])
            else:
                names = {f"last block at {size} px": joined([last])}
            for name, describe in names.items():
                for region_name, region in (("hand finder", found), ("true part", true_part)):
                    fit = _fit(describe(keys), region, exo.labels, c)
                    row: dict[str, Any] = {
                        "grid": int(region.shape[-1]),
                        "part_share": round(float(exo.part[region].mean()), 4),
                    }
                    for t in sorted({temperature, 1.0}):
                        row[f"T = {t:g}"] = score(fit, describe, val_keys, t)
                    rows[f"{name}, {region_name}"] = row
    return {
        "checkpoint": str(checkpoint),
        "split": split,
        "part_prior_temperature": temperature,
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = corpus_probe_parser("python -m training.probes.readout", __doc__)
    ap.add_argument(
        "--sizes", default="168,224", help="input sizes (px) for the finer grids, comma-separated"
    )
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    result = probe_readout(
        args.checkpoint, args.train_root, args.train_seed, args.val_root, args.split, sizes
    )
    print_json_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
