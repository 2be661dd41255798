"""Does SelectiveCL's exo -> ego part discovery find the afforded part? (``python -m
training.probes.discovery``)

For every validation ego image (test layout, with GT) the probe takes ``num_exo`` training exo
images of the same (action, object) pair and runs SelectiveCL's discovery as training does
after warm-up: interaction map ReLU(A_exo) x ReLU(exo CAM), K-means over the DINO keys above
the region threshold, one centroid chosen by pIoU against the ego saliency. Each centroid's
cosine map on the ego keys, min-max normalised and multiplied by the object affinity, is then
scored against the GT (KLD, SIM, NSS) next to:

* ``object affinity``: the min-max ego-prompt affinity alone (the object-level prior that a
  part prototype has to improve on);
* ``chosen part x affinity``: the pIoU-chosen centroid (what SelectiveCL's part terms use;
  the affinity alone where too few interaction points were found), also on the samples the
  gate calls reliable;
* ``mean over clusters``: the average of all K centroids' scores, i.e. what a choice by chance
  gets;
* ``GT-part prototype x affinity``: a prototype pooled from the GT part of *another* validation
  image of the same pair, i.e. what a correct part prototype transfers to this image;
* ``GT-nearest cluster x affinity``: of the K exo centroids, the one nearest (cosine) to that
  other image's GT-part prototype, i.e. the choice a rule that knew the true part would make
  (this image's own GT is not used to choose).

The model is only read; no test image is involved. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from affordance_core import load_model
from affordance_core.affinity import exo_object_affinity
from affordance_core.backbones import minmax
from affordance_core.data import AffordanceTestDataset, AffordanceTrainDataset
from affordance_core.data.transforms import center_resize, load_rgb, to_tensor
from affordance_core.discovery import discover_parts
from affordance_core.metrics import MetricAccumulator
from affordance_core.model import Features
from training.common import print_json_result

__all__ = ["main", "probe_discovery"]


def _exo_images(paths: Sequence[Path], j: int, num_exo: int, size: int) -> Tensor:
    """(E, 3, S, S) exo images of one pair: the readable files from position ``j`` on."""
    images = []
    for t in range(len(paths)):
        image = load_rgb(paths[(j + t) % len(paths)])
        if image is not None:
            images.append(to_tensor(center_resize(image, size)))
        if len(images) == num_exo:
            break
    if not images:
        raise ValueError(f"no readable exo image among {len(paths)} files, e.g. {paths[0]}")
    images += [images[0]] * (num_exo - len(images))  # fewer readable files than num_exo
    return torch.stack(images)


def probe_discovery(
    model: torch.nn.Module,
    val_set: AffordanceTestDataset,
    train_set: AffordanceTrainDataset,
    *,
    batch_size: int = 16,
    region_threshold: float = 0.6,
    piou_threshold: float = 0.6,
    seed: int = 0,
) -> dict[str, Any]:
    """Score SelectiveCL's discovered part prototypes on validation ego images.

    Args:
        model: a trained SelectiveCL :class:`~affordance_core.model.AffordanceModel` (eval).
        val_set: validation ego images with GT of the split's training categories.
        train_set: the split's training set; its exo files are read directly (resized, not
            augmented), ``num_exo`` per validation image, the same ones on every call.
        batch_size: validation images per pass.
        region_threshold, piou_threshold: SelectiveCL's gamma_1 and alpha.
        seed: K-means initialisation seed.

    Returns:
        ``{"n", "reliable_rate", "maps": {name: {"KLD", "SIM", "NSS", "n"}}}``.

    Raises:
        ValueError: the model has no CLIP-role backbone, or a validation pair has no
            training exo images.
    """
    if getattr(model, "clip", None) is None:
        raise ValueError("the discovery probe needs a SelectiveCL model (with the CLIP role)")
    items: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for path, aff, obj in train_set.samples:
        items[(aff, obj)].append(Path(path))
    pairs = [tuple(key.split("/")[:2]) for key in val_set.keys]
    missing = sorted({f"{a}/{o}" for a, o in pairs if (a, o) not in items})
    if missing:
        raise ValueError(
            f"no training exo images for validation pairs {missing[:3]}; "
            "pass the training root of the same split"
        )
    by_pair: dict[tuple[str, str], list[int]] = defaultdict(list)
    for j, pair in enumerate(pairs):
        by_pair[pair].append(j)
    partner = [
        by_pair[p][(by_pair[p].index(j) + 1) % len(by_pair[p])] for j, p in enumerate(pairs)
    ]

    names = (
        "object affinity",
        "chosen part x affinity",
        "mean over clusters",
        "GT-part prototype x affinity",
        "GT-nearest cluster x affinity",
        "object affinity (reliable samples)",
        "chosen part x affinity (reliable samples)",
    )
    acc = {name: MetricAccumulator() for name in names}
    generator = torch.Generator().manual_seed(seed)
    reliable_count = 0
    with torch.inference_mode():
        batches = list(DataLoader(val_set, batch_size=batch_size, shuffle=False))
        gts = torch.cat([batch["gt"] for batch in batches])
        labels = torch.cat([batch["label"] for batch in batches])
        parts = [model.extract(batch["image"]) for batch in batches]
        ego_all = Features(
            *(
                torch.cat([getattr(f, name) for f in parts])
                for name in ("keys", "cls_attention", "clip")
            )
        )
        h, w = ego_all.keys.shape[-2:]
        keys_n = F.normalize(ego_all.keys, dim=1)  # (N, D, h, w)
        gt_grid = F.adaptive_avg_pool2d(gts[:, None].float(), (h, w))[:, 0]
        gt_proto = F.normalize((keys_n * gt_grid[:, None]).sum((-1, -2)), dim=-1)
        for start in range(0, len(val_set), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(val_set)))
            b = len(idx)
            exo = torch.stack(
                [
                    _exo_images(items[pairs[j]], j, train_set.num_exo, model.image_size)
                    for j in idx.tolist()
                ]
            )
            e = exo.shape[1]
            exo_f = model.extract(exo.flatten(0, 1))
            ego = ego_all.index(idx)
            lab, gt = labels[idx], gts[idx]
            exo_lab = lab.repeat_interleave(e)
            a_exo = exo_object_affinity(model, exo_f.clip, exo_lab)
            _, exo_cam = model.cam(exo_f.keys, "exo")
            cam = exo_cam.gather(1, exo_lab.view(-1, 1, 1, 1).expand(-1, 1, h, w))[:, 0]
            interaction = (F.relu(a_exo) * F.relu(cam)).view(b, e, h, w)
            sal = ego.saliency()
            found = discover_parts(
                exo_f.keys.view(b, e, -1, h, w),
                interaction,
                ego.keys,
                sal > sal.flatten(1).mean(1)[:, None, None],
                region_threshold,
                piou_threshold,
                generator=generator,
            )
            affinity = minmax(model.affinity(ego.clip, lab, "ego"))  # (b, h, w)
            part_maps = minmax(torch.einsum("bkd,bdhw->bkhw", found.centroids, keys_n[idx]))
            chosen_part = minmax(torch.einsum("bd,bdhw->bhw", found.centroid, keys_n[idx]))
            acc["object affinity"].update(affinity, gt)
            # too few interaction points: SelectiveCL falls back to the affinity, and so do we
            enough = found.enough_points.view(b, 1, 1)
            chosen_map = torch.where(enough, chosen_part * affinity, affinity)
            acc["chosen part x affinity"].update(chosen_map, gt)
            k = part_maps.shape[1]
            acc["mean over clusters"].update(
                (part_maps * affinity[:, None]).flatten(0, 1), gt.repeat_interleave(k, 0)
            )
            other = gt_proto[torch.tensor([partner[j] for j in idx.tolist()])]
            transfer = minmax(torch.einsum("bd,bdhw->bhw", other, keys_n[idx]))
            acc["GT-part prototype x affinity"].update(transfer * affinity, gt)
            nearest = torch.einsum("bkd,bd->bk", found.centroids, other).argmax(1)
            nearest_map = part_maps[torch.arange(b), nearest]
            acc["GT-nearest cluster x affinity"].update(
                torch.where(enough, nearest_map * affinity, affinity), gt
            )
            rel = found.reliable
            reliable_count += int(rel.sum())
            if rel.any():
                acc["object affinity (reliable samples)"].update(affinity[rel], gt[rel])
                acc["chosen part x affinity (reliable samples)"].update(chosen_map[rel], gt[rel])
    maps = {
        name: {k: round(float(v), 4) for k, v in a.compute().items()}
        for name, a in acc.items()
        if a.count
    }
    return {
        "n": len(val_set),
        "reliable_rate": round(reliable_count / len(val_set), 4),
        "maps": maps,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: probe one checkpoint; prints a table and one JSON line."""
    ap = argparse.ArgumentParser(
        description="Score SelectiveCL's discovered part prototypes on validation ego images."
    )
    ap.add_argument("--checkpoint", required=True, help="a SelectiveCL model.pt")
    ap.add_argument("--train-root", required=True, help="the corpus the model trained on")
    ap.add_argument(
        "--val-root",
        required=True,
        help="validation corpus in the test layout (training categories)",
    )
    ap.add_argument("--split", default="Seen")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    args = ap.parse_args(argv)
    model = load_model(args.checkpoint).eval()
    val_set = AffordanceTestDataset(
        args.val_root, args.split, model.image_size, vocabulary=model.vocabulary
    )
    train_set = AffordanceTrainDataset(
        args.train_root, args.split, model.image_size, vocabulary=model.vocabulary
    )
    result = probe_discovery(model, val_set, train_set)
    for name, m in result["maps"].items():
        print(
            f"{name:44s} KLD {m['KLD']:.3f}  SIM {m['SIM']:.3f}  NSS {m['NSS']:.3f}  "
            f"n {int(m['n'])}"
        )
    print_json_result(result, args.out, line={"split": args.split, **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
