"""Where part-level maps stop: each stage of a trained model, next to its oracle ceiling, on
validation data only (``python -m training.probes.parts``).

The training corpus must come from :func:`~affordance_core.synthetic.write_agd_corpus`
(``--train-seed`` is its seed): its exo scenes are re-rendered to recover the afforded part and
the hand, which the files do not store; these annotations only score the exo stage and fit the
oracle priors. Every map is scored on the validation corpus (``--val-root``), never on a test
split. Stages:

* **exo**: in the training exo images, does the hand finder
  (:func:`~affordance_core.part_prior.hand_patch` with the model's
  ``part_prior_hand_reach``) touch the hand (``hand_pointing``)?
  Which share of the interaction patches (:func:`~affordance_core.part_prior.
  interaction_patches`) lies on the afforded part (``part_precision``), against all salient
  patches (``chance``), the four top exo-CAM patches of the labelled action (what the
  methods' exo branch points at) and the salient patches next to the true hand
  (``oracle_hand_precision``)?
* **ego** (validation test-layout images with GT; ``KLD, SIM, NSS, peak_hit, mask_iou,
  action_sensitivity``): the method's map with and without its calibration, then times a part
  prior fitted on the training exo images': interaction patches (what ``affordance-train``
  fits), the same on the method's projected features instead of the DINO keys, the salient
  patches next to the true hand, and the true afforded part (the ceiling of a linear part
  prior on these keys). Every prior row uses the model's ``part_prior_temperature``; when
  that is not 1, each is repeated at ``T = 1`` (the plain fit). ``--hand-reaches 0,1,2``
  adds the hand-finder prior fitted with each of those reaches.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from affordance_core import load_model
from affordance_core.backbones import minmax
from affordance_core.data import AffordanceTestDataset, BackgroundFrames
from affordance_core.data.datasets import AffordanceTrainDataset
from affordance_core.data.transforms import center_resize, load_rgb, to_tensor
from affordance_core.model import AffordanceModel, Features
from affordance_core.part_prior import (
    PartPriorFit,
    fit_part_prior,
    hand_patch,
    interaction_patches,
)
from affordance_core.synthetic.corpus import corpus_image_rng
from affordance_core.synthetic.world import EXO_SCALE_BENCHMARK, afforded_parts, render_scene
from training.common import print_json_result
from training.evaluate import evaluate_model, extract_test_set

__all__ = [
    "corpus_probe_parser",
    "main",
    "presence_of",
    "probe_parts",
    "reach_list",
    "score_with_infer",
]

EGO_METRICS = ("KLD", "SIM", "NSS", "peak_hit", "mask_iou", "action_sensitivity")


@dataclasses.dataclass
class _ExoSet:
    feats: Features
    labels: Tensor  # (N,)
    part: Tensor  # (N, h, w) afforded-part coverage of each patch, in [0, 1]
    hand: Tensor  # (N, h, w) hand coverage of each patch


def _exo_set(model: AffordanceModel, root: Path, split: str, seed: int, grid: int) -> _ExoSet:
    """Validation exo images with the part and hand coverage of their re-rendered scenes."""
    dataset = AffordanceTrainDataset(root, split, model.image_size, model.vocabulary)
    images, labels, parts, hands = [], [], [], []
    for (path, aff, obj), label in zip(dataset.samples, dataset.labels, strict=True):
        image = load_rgb(path)
        if image is None:
            continue
        rng = corpus_image_rng(seed, split, "exo", aff, obj, int(path.stem.rsplit("_", 1)[1]))
        occluded = bool(rng.random() < 0.25)
        scene = render_scene(
            rng,
            obj,
            size=image.shape[0],
            view="exo",
            action=aff,
            occlude_part=occluded,
            exo_scale=EXO_SCALE_BENCHMARK,
        )
        if np.abs(scene.image.astype(np.int16) - image.astype(np.int16)).mean() > 12:
            raise ValueError(
                f"{path} is not the scene corpus seed {seed} renders; pass the --train-seed "
                f"the training corpus was written with"
            )
        part = np.zeros(image.shape[:2], bool)
        for name in afforded_parts(obj, aff):
            part |= scene.part_masks[name]
        images.append(to_tensor(center_resize(image, model.image_size)))
        labels.append(int(label))
        for mask, out in ((part, parts), (scene.hand_mask, hands)):
            pooled = cv2.resize(
                mask.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA
            )
            out.append(torch.from_numpy(pooled))
    with torch.no_grad():
        feats = [model.extract(torch.stack(images[i : i + 32])) for i in range(0, len(images), 32)]
    joined = Features(
        torch.cat([f.keys for f in feats]),
        torch.cat([f.cls_attention for f in feats]),
        torch.cat([f.clip for f in feats]),
    )
    return _ExoSet(joined, torch.tensor(labels), torch.stack(parts), torch.stack(hands))


def _salient(saliency: Tensor) -> Tensor:
    return saliency > saliency.mean((1, 2), keepdim=True)


def _fit(descriptors: Tensor, region: Tensor, labels: Tensor, num_classes: int) -> PartPriorFit:
    return fit_part_prior([(descriptors, region, labels)], num_classes)


def _probability(
    fit: PartPriorFit, descriptors: Tensor, ids: Tensor, temperature: float = 1.0
) -> Tensor:
    d = F.normalize(descriptors.float(), dim=1)
    logits = torch.einsum("cd,ndhw->nchw", fit.weight, d) + fit.bias[None, :, None, None]
    prob = (logits / temperature).softmax(1)
    return prob.gather(1, ids[:, :, None, None].expand(-1, -1, *prob.shape[2:]))


def presence_of(
    model: AffordanceModel, feats: Features, class_ids: Tensor, maps: Tensor
) -> Tensor:
    """(N, A) presence scores in [0, 1] that ``model`` would give with ``maps`` (N, A, h, w) as
    its inference maps: its score with ``z_map`` read from them (so a prior row is gated the
    way a model carrying that prior is), times the objectness read-out."""
    peaks = model.score_features(feats, class_ids)
    peaks = torch.cat([peaks[..., :2], maps.float().amax((-1, -2))[..., None]], -1)
    scores = model.presence_score(peaks)
    if model.objectness is not None:
        scores = scores * model.frame_objectness(feats)[:, None]
    return scores


def score_with_infer(
    model: AffordanceModel,
    extracted: Any,
    infer: Callable[[Features, Tensor], tuple[Tensor, Tensor]],
) -> dict[str, float]:
    """:data:`EGO_METRICS` of ``extracted`` (:func:`~training.evaluate.extract_test_set`) with
    ``infer`` standing in for ``model.infer`` (restored after)."""
    model.infer = infer  # type: ignore[method-assign]
    try:
        result = evaluate_model(model, extracted, device=torch.device("cpu"), progress=False)
    finally:
        del model.infer
    return {k: round(float(result[k]), 4) for k in EGO_METRICS}


def _grid_ceiling(extracted: Any, grid: int) -> dict[str, float]:
    """The GT average-pooled to the patch grid and scored as a prediction (no gate): what a
    perfect patch-level map reaches after the protocol's bilinear upsampling."""
    from affordance_core.metrics import affordance_metrics, mask_iou, peak_hit, prepare_prediction
    from affordance_core.predictor import grasp_masks

    values: dict[str, list[Tensor]] = {
        k: [] for k in ("KLD", "SIM", "NSS", "peak_hit", "mask_iou")
    }
    for _, _, gt, _ in extracted.batches:
        pooled = F.adaptive_avg_pool2d(gt[:, None].float(), grid)[:, 0]
        pred = prepare_prediction(pooled, size=tuple(gt.shape[-2:]))
        for k, v in affordance_metrics(pred, gt).items():
            values[k].append(v)
        values["peak_hit"].append(peak_hit(pred, gt))
        masks = torch.from_numpy(grasp_masks(pred.numpy(), 0.5))
        values["mask_iou"].append(mask_iou(masks, gt))
    return {k: round(float(torch.cat(v).double().nanmean()), 4) for k, v in values.items()}


def probe_parts(
    checkpoint: str | Path,
    train_root: str | Path,
    train_seed: int,
    val_root: str | Path,
    split: str = "Seen",
    hand_reaches: Sequence[int] = (),
) -> dict[str, Any]:
    """Run every stage (module docstring) for one model; returns ``{"exo": ..., "ego": ...}``.

    ``hand_reaches`` adds, for each reach (>= 0), the hand-finder prior fitted with that
    ``part_prior_hand_reach`` instead of the model's (ego row ``x prior (hand finder, reach
    r)``, exo ``part_precision_reach_r``); the heads do not depend on the prior, so this is
    what a model trained with that reach carries, up to its presence-score fit."""
    model = load_model(checkpoint, device="cpu").eval()
    if model.clip is None:
        raise ValueError("the part probe needs a model with a CLIP-role backbone")
    own_prior, model.part_prior = model.part_prior, None
    plain_config = dataclasses.replace(model.config, part_prior=False)
    model.config = plain_config
    grid = model.extract(torch.zeros(1, 3, model.image_size, model.image_size)).keys.shape[-1]
    c = model.num_classes

    exo = _exo_set(model, Path(train_root), split, train_seed, grid)
    with torch.no_grad():
        hand_aff = model.affinity(exo.feats.clip, exo.labels, "hand")
        saliency = exo.feats.saliency()
        _, exo_cams = model.cam(exo.feats.keys, "exo")
    salient = _salient(saliency)
    reach = model.config.part_prior_hand_reach
    found = interaction_patches(hand_aff, saliency, reach=reach)
    hand_index = hand_patch(hand_aff, saliency, reach)
    near_hand = F.max_pool2d((exo.hand > 0).float()[:, None], 3, 1, 1)[:, 0] > 0
    oracle_hand = near_hand & salient & (exo.hand < 0.5)
    cam = exo_cams.gather(1, exo.labels.view(-1, 1, 1, 1).expand(-1, 1, grid, grid))[:, 0]
    top_cam = cam >= cam.flatten(1).topk(4, 1).values[:, -1, None, None]
    exo_stage = {
        "n": int(exo.labels.numel()),
        "hand_pointing": float(
            (exo.hand.flatten(1).gather(1, hand_index[:, None]) > 0).float().mean()
        ),
        "part_precision": float(exo.part[found].mean()),
        "chance": float(exo.part[salient].mean()),
        "exo_cam_precision": float(exo.part[top_cam].mean()),
        "oracle_hand_precision": float(exo.part[oracle_hand].mean()),
    }

    val_set = AffordanceTestDataset(val_root, split, model.image_size, vocabulary=model.vocabulary)
    background = BackgroundFrames(val_root, split, model.image_size)
    extracted = extract_test_set(model, val_set, device=torch.device("cpu"), background=background)
    method_infer = model.infer

    def evaluate(
        transform: Callable[[Features, Tensor, Tensor], Tensor] | None,
    ) -> dict[str, float]:
        def infer(feats: Features, ids: Tensor) -> tuple[Tensor, Tensor]:
            maps, scores = method_infer(feats, ids)
            if transform is None:
                return maps, scores
            maps = transform(feats, ids, maps)
            return maps, presence_of(model, feats, ids, maps)

        return score_with_infer(model, extracted, infer)

    temperature = model.config.part_prior_temperature

    def with_prior(fit: PartPriorFit, descriptors: Callable[[Features], Tensor], t: float):
        return lambda feats, ids, maps: (
            minmax(maps) * _probability(fit, descriptors(feats), ids, t)
        )

    keys = lambda f: f.keys  # noqa: E731
    branch = model.inference_branch()
    projected = lambda f: model.cam(f.keys, branch)[0]  # noqa: E731
    with torch.no_grad():
        exo_projected = projected(exo.feats)
    fits = {
        "x prior (hand finder)": (_fit(exo.feats.keys, found, exo.labels, c), keys),
        "x prior on projected features (hand finder)": (
            _fit(exo_projected, found, exo.labels, c),
            projected,
        ),
        "x prior (true hand)": (_fit(exo.feats.keys, oracle_hand, exo.labels, c), keys),
        "x prior (true part): ceiling": (
            _fit(exo.feats.keys, exo.part >= 0.3, exo.labels, c),
            keys,
        ),
    }
    for r in hand_reaches:
        name = f"x prior (hand finder, reach {r})"
        if r == reach:  # the model's own rule: the hand-finder row, fitted and scored once
            fits[name] = fits["x prior (hand finder)"]
            exo_stage[f"part_precision_reach_{r}"] = exo_stage["part_precision"]
            continue
        region = interaction_patches(hand_aff, saliency, reach=r)
        exo_stage[f"part_precision_reach_{r}"] = float(exo.part[region].mean())
        fits[name] = (_fit(exo.feats.keys, region, exo.labels, c), keys)
    ego: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        ego[f"method map ({model.config.calibration})"] = evaluate(None)
        model.config = dataclasses.replace(plain_config, calibration="none")
        ego["method map (raw CAM)"] = evaluate(None)
        model.config = plain_config
        scored: dict[int, dict[str, dict[str, float]]] = {}
        for name, (fit, descriptors) in fits.items():
            if id(fit) not in scored:
                scored[id(fit)] = {"": evaluate(with_prior(fit, descriptors, temperature))}
                if temperature != 1.0:
                    scored[id(fit)][", T = 1"] = evaluate(with_prior(fit, descriptors, 1.0))
            for suffix, row in scored[id(fit)].items():
                ego[f"{name}{suffix}"] = row
        ego["GT pooled to the patch grid: ceiling"] = _grid_ceiling(extracted, grid)
    model.part_prior = own_prior
    return {
        "checkpoint": str(checkpoint),
        "split": split,
        "calibration": model.config.calibration,
        "inference_branch": branch,
        "part_prior_temperature": temperature,
        "exo": {k: round(v, 4) if isinstance(v, float) else v for k, v in exo_stage.items()},
        "ego": ego,
    }


def corpus_probe_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments of a probe that re-renders a model's training corpus: ``--checkpoint``,
    ``--train-root``, ``--train-seed``, ``--val-root``, ``--split``, ``--out``."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--checkpoint", required=True, help="a trained model.pt")
    ap.add_argument(
        "--train-root", required=True, help="the corpus the model trained on (write_agd_corpus)"
    )
    ap.add_argument("--train-seed", type=int, required=True, help="its corpus seed")
    ap.add_argument("--val-root", required=True, help="the validation corpus (images with GT)")
    ap.add_argument("--split", default="Seen")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    return ap


def reach_list(text: str) -> list[int]:
    """``--hand-reaches`` value: comma-separated non-negative integers, e.g. ``0,1,2``."""
    reaches = [int(v) for v in text.split(",") if v.strip()]
    if any(r < 0 for r in reaches):
        raise argparse.ArgumentTypeError(f"hand reaches must be >= 0, got {text!r}")
    return reaches


def main(argv: Sequence[str] | None = None) -> int:
    ap = corpus_probe_parser("python -m training.probes.parts", __doc__)
    ap.add_argument(
        "--hand-reaches",
        type=reach_list,
        default=[],
        help="also fit the hand-finder prior with each of these reaches, e.g. 0,1,2",
    )
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    result = probe_parts(
        args.checkpoint,
        args.train_root,
        args.train_seed,
        args.val_root,
        args.split,
        hand_reaches=args.hand_reaches,
    )
    print_json_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
