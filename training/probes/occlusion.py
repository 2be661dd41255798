"""How well each model's exocentric branch finds the afforded part when a hand hides it.

The synthetic corpus renders every image from a generator keyed by its name, so the scene of
any exocentric training image can be rendered again with its dense annotations. For each
exocentric image of a split we rebuild the ground truth as the *amodal* mask of the afforded
part(s) (the part's full extent, under the hand too), blurred like the test GT, and score the
model's exocentric CAM of the labelled action with the protocol's KLD/SIM/NSS, separately for
images whose part is occluded by the hand and for the others.

Usage: python -m training.probes.occlusion --data-root outputs/demo/data --split Seen \
           --checkpoint RUN/model.pt [--checkpoint RUN2/model.pt ...] [--max-items 300]
Last line: one JSON object {checkpoint: {occluded: {...}, visible: {...}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from affordance_core import load_model
from affordance_core.data.transforms import center_resize, load_rgb, to_tensor
from affordance_core.metrics import MetricAccumulator
from affordance_core.synthetic.corpus import corpus_image_rng
from affordance_core.synthetic.world import affordance_heatmap, afforded_parts, render_scene

__all__ = ["main", "rebuild_exo_truth", "score_exo_branch"]


def rebuild_exo_truth(
    data_root: Path, split: str, seed: int, size: int, occlusion_rate: float, max_items: int | None
) -> list[tuple[Path, str, np.ndarray, bool]]:
    """(image path, action, amodal GT heatmap (size, size) in [0, 1], occluded) per exo image."""
    meta = json.loads((data_root / split / "trainset" / "exo_meta.json").read_text())
    items = []
    for rel, info in sorted(meta.items())[: max_items or None]:
        _, aff, obj, name = Path(rel).parts
        index = int(Path(name).stem.rsplit("_", 1)[1])
        rng = corpus_image_rng(seed, split, "exo", aff, obj, index)
        occluded = bool(rng.random() < occlusion_rate)
        if occluded != bool(info["occluded"]):
            raise ValueError(
                f"{rel}: re-rendering does not reproduce the corpus; pass the "
                f"seed and occlusion rate it was written with"
            )
        scene = render_scene(rng, obj, size=size, view="exo", action=aff, occlude_part=occluded)
        mask = np.zeros((size, size), bool)
        for part in afforded_parts(obj, aff):
            mask |= scene.amodal_part_masks.get(part, np.zeros_like(mask))
        heatmap = affordance_heatmap(mask, max(1.0, 0.02 * size))
        items.append((data_root / split / "trainset" / rel, aff, heatmap, occluded))
    return items


@torch.no_grad()
def score_exo_branch(
    model: torch.nn.Module,
    items: Sequence[tuple[Path, str, np.ndarray, bool]],
    batch_size: int = 32,
) -> dict[str, dict[str, float]]:
    """Protocol metrics of the exo CAM against the amodal part GT, by occlusion."""
    groups = {True: MetricAccumulator(), False: MetricAccumulator()}
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = torch.stack(
            [to_tensor(center_resize(load_rgb(p), model.image_size)) for p, _, _, _ in chunk]
        )
        labels = torch.tensor([model.vocabulary.index(a) for _, a, _, _ in chunk])
        _, cams = model.cam(model.extract(images).keys, "exo")
        maps = cams.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *cams.shape[2:]))[:, 0]
        gts = torch.from_numpy(np.stack([g for _, _, g, _ in chunk])).float()
        occluded = torch.tensor([o for _, _, _, o in chunk])
        for flag, acc in groups.items():
            pick = occluded == flag
            if pick.any():
                acc.update(maps[pick], gts[pick])
    return {("occluded" if flag else "visible"): acc.compute() for flag, acc in groups.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: score each ``--checkpoint``; prints one JSON line per checkpoint, then all."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--split", default="Seen")
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--seed", type=int, default=None, help="corpus seed (corpus.json)")
    parser.add_argument("--occlusion-rate", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=128, help="corpus image size")
    parser.add_argument("--max-items", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed
    if seed is None:
        seed = json.loads((args.data_root / "corpus.json").read_text())["params"]["seed"]
    items = rebuild_exo_truth(
        args.data_root, args.split, seed, args.size, args.occlusion_rate, args.max_items
    )
    results: dict[str, Any] = {}
    for checkpoint in args.checkpoint:
        results[checkpoint] = score_exo_branch(load_model(checkpoint), items)
        print(checkpoint, json.dumps(results[checkpoint]), flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
