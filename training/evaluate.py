"""``affordance-eval``: KLD / SIM / NSS of a trained model on a split's test set.

Usage::

    affordance-eval --data-root DATA --split Seen --checkpoint runs/x/model.pt \
        [--json metrics.json] [--viz figures/ --viz-max 16] [--weights-dir DIR]

The metrics follow the reference protocol (:mod:`affordance_core.metrics`): every raw map is
resized bilinearly to 224 x 224 and min-max normalised, and the means are over images. The
last line on stdout is one JSON object ``{"KLD": .., "SIM": .., "NSS": .., "n": ..}``; the
``--json`` file adds the per-affordance breakdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from affordance_core.backbones import minmax
from affordance_core.config import PART_PRIOR_TEMPERATURES
from affordance_core.metrics import (
    EVAL_SIZE,
    METRIC_NAMES,
    PLANNER_METRIC_NAMES,
    MetricAccumulator,
    prepare_prediction,
)
from affordance_core.visualize import heatmap_overlay
from training.common import choose_device, run_cli, setup_logging

__all__ = [
    "ExtractedTestSet",
    "background_scores",
    "choose_on_validation",
    "evaluate_model",
    "extract_background",
    "extract_test_set",
    "feature_batches",
    "fit_presence_score",
    "inference_key",
    "main",
    "score_batch",
    "select_inference",
    "select_part_prior_temperature",
    "viz_panel",
]

PROG = "affordance-eval"
logger = logging.getLogger(__name__)


def viz_panel(
    image: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor, title: str = ""
) -> np.ndarray:
    """Image | GT overlay | prediction overlay, side by side at the GT's resolution.

    Args:
        image: (3, S, S) float RGB in [0, 1].
        gt: (G, G) float in [0, 1].
        pred: (G, G) float in [0, 1].
        title: text drawn on the first panel.

    Returns:
        (G, 3G, 3) uint8 RGB.
    """
    size = tuple(gt.shape[-2:])
    rgb = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0
    rgb = cv2.resize(rgb.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    panels = [
        rgb,
        heatmap_overlay(rgb, gt.cpu().numpy()),
        heatmap_overlay(rgb, pred.cpu().numpy()),
    ]
    panel = np.concatenate(panels, axis=1)
    if title:
        cv2.putText(
            panel, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA
        )
    return panel


def _mean_dict(sums: torch.Tensor, n: int) -> dict[str, float | int]:
    values = (sums / n).tolist() if n else [float("nan")] * len(METRIC_NAMES)
    return {**dict(zip(METRIC_NAMES, values, strict=True)), "n": n}


@dataclasses.dataclass
class ExtractedTestSet:
    """A test set's frozen-backbone features, computed once and shared by every model on the
    same backbones (the heads do not change what ``extract`` returns).

    Attributes:
        batches: per batch, (features on the extraction device, labels (B,) int64,
            GT (B, G, G) float in [0, 1] on the CPU, info: {"afforded": (B, C) bool,
            "key": list of "aff/obj/stem"}).
        backbone: :func:`~affordance_core.feature_cache.backbone_fingerprint` of the
            extracting model; a model with other backbones is refused.
        background: features of the split's background-only frames (``testset/background``),
            or None when it has none.
    """

    batches: list[tuple[Any, torch.Tensor, torch.Tensor, dict[str, Any]]]
    backbone: str
    background: Any = None

    def __len__(self) -> int:
        return sum(len(labels) for _, labels, _, _ in self.batches)


def _batch_info(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"afforded": batch["afforded"].to(device), "key": list(batch["key"])}


def extract_background(
    model: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 32
) -> Any:
    """Backbone features of every frame of a :class:`~affordance_core.data.BackgroundFrames`
    set in one :class:`~affordance_core.model.Features` (None for an empty set)."""
    from affordance_core.model import Features

    if len(dataset) == 0:
        return None
    parts = []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            parts.append(model.extract(batch["image"].to(device)))
    clip = None if parts[0].clip is None else torch.cat([f.clip for f in parts])
    return Features(
        torch.cat([f.keys for f in parts]), torch.cat([f.cls_attention for f in parts]), clip
    )


def extract_test_set(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 32,
    background: Dataset | None = None,
) -> ExtractedTestSet:
    """Run the backbones once over a test (or validation) set and, when given, its background
    frames; see :class:`ExtractedTestSet`."""
    from affordance_core.feature_cache import backbone_fingerprint

    batches = []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            labels = batch["label"].to(device)
            batches.append(
                (
                    model.extract(batch["image"].to(device)),
                    labels,
                    batch["gt"],
                    _batch_info(batch, device),
                )
            )
    bg = (
        None
        if background is None
        else extract_background(model, background, device=device, batch_size=batch_size)
    )
    return ExtractedTestSet(batches, backbone_fingerprint(model), bg)


def feature_batches(
    model: nn.Module,
    data: Dataset | ExtractedTestSet,
    *,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = False,
):
    """Yield ``(features, labels, gt, info)`` over a dataset (extracting each batch) or over an
    :class:`ExtractedTestSet`. ``info`` holds ``afforded`` (B, C) bool and ``key``, and, from
    a dataset, ``image`` (B, 3, S, S).

    Raises:
        ValueError: the extracted set comes from other backbones than ``model``'s.
    """
    if isinstance(data, ExtractedTestSet):
        from affordance_core.feature_cache import backbone_fingerprint

        if backbone_fingerprint(model) != data.backbone:
            raise ValueError(
                "these features were extracted by other backbones than this "
                "model's; extract the test set again with this model"
            )
        for feats, labels, gt, info in tqdm(
            data.batches, desc="eval", disable=not progress, file=sys.stderr, dynamic_ncols=True
        ):
            yield feats, labels, gt, info
        return
    loader = DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    for batch in tqdm(
        loader, desc="eval", disable=not progress, file=sys.stderr, dynamic_ncols=True
    ):
        feats = model.extract(batch["image"].to(device, non_blocking=True))
        yield (
            feats,
            batch["label"].to(device),
            batch["gt"],
            {**_batch_info(batch, device), "image": batch["image"]},
        )


def score_batch(
    model: nn.Module,
    feats: Any,
    labels: torch.Tensor,
    gt: torch.Tensor,
    afforded: torch.Tensor,
    mask_threshold: float = 0.5,
    min_score: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Every per-image metric of one batch from one pass of the heads over all actions.

    Args:
        model: an :class:`~affordance_core.model.AffordanceModel`.
        feats: backbone features of the B images.
        labels: (B,) int64 labelled actions.
        gt: (B, G, G) float GT in [0, 1] of the labelled actions.
        afforded: (B, C) bool, the actions each image's object affords.
        mask_threshold: the predictor's grasp-mask level.
        min_score: the predictor's presence level: a labelled action scored below it has an
            empty grasp mask (:func:`~affordance_core.predictor.gate_absent`).

    Returns:
        prepared maps of the labelled actions (B, G, G) float32 in [0, 1], per-image metrics
        {KLD, SIM, NSS, peak_hit, mask_iou, action_sensitivity: (B,) float64 on the CPU} and
        the scores of every action (B, C) float on the CPU.
    """
    from affordance_core.metrics import action_sensitivity, affordance_metrics, mask_iou, peak_hit

    b, size = len(labels), tuple(gt.shape[-2:])
    every = torch.arange(model.num_classes, device=labels.device).expand(b, -1)
    maps, scores = model.infer(feats, every)  # (B, C, h, w)
    maps = maps.float().cpu()
    labels_cpu, afforded = labels.cpu(), afforded.cpu().bool()
    rows = torch.arange(b)
    pred = _prepare(model, maps[rows, labels_cpu], size)  # (B, G, G)
    values = affordance_metrics(pred, gt)
    values["peak_hit"] = peak_hit(pred, gt)
    scores = scores.float().cpu()
    masks = _predictor_masks(pred, scores[rows, labels_cpu], mask_threshold, min_score)
    values["mask_iou"] = mask_iou(masks, gt)
    others = afforded.clone()
    others[rows, labels_cpu] = False
    other_kld = torch.full(others.shape, float("nan"), dtype=torch.float64)
    if others.any():
        img, act = others.nonzero(as_tuple=True)
        other_kld[img, act] = affordance_metrics(_prepare(model, maps[img, act], size), gt[img])[
            "KLD"
        ]
    values["action_sensitivity"] = action_sensitivity(values["KLD"], other_kld, others)
    return pred, values, scores


def _predictor_masks(
    pred: torch.Tensor, scores: torch.Tensor, mask_threshold: float, min_score: float
) -> torch.Tensor:
    """The predictor's grasp masks (N, G, G) bool of prepared maps (N, G, G) with scores (N,):
    :func:`~affordance_core.predictor.grasp_masks` then the absence rule
    :func:`~affordance_core.predictor.gate_absent`, as ``AffordancePredictor.predict``."""
    from affordance_core.predictor import gate_absent, grasp_masks

    maps = pred.numpy()
    _, masks, _ = gate_absent(maps, grasp_masks(maps, mask_threshold), scores.numpy(), min_score)
    return torch.from_numpy(masks)


def background_scores(
    model: nn.Module,
    feats: Any,
    size: int = EVAL_SIZE,
    mask_threshold: float = 0.5,
    min_score: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (M, C) of every action on M background-only frames and whether the predictor's
    grasp mask (``mask_threshold``, and empty below ``min_score``) is empty there, (M, C)
    bool."""
    m, c = feats.keys.shape[0], model.num_classes
    every = torch.arange(c, device=feats.keys.device).expand(m, -1)
    maps, scores = model.infer(feats, every)
    scores = scores.float().cpu()
    pred = _prepare(model, maps.float().cpu().flatten(0, 1), (size, size))
    masks = _predictor_masks(pred, scores.flatten(), mask_threshold, min_score)
    empty = ~masks.flatten(1).any(1)
    return scores, empty.view(m, c)


PER_IMAGE_NAMES = (*METRIC_NAMES, "peak_hit", "mask_iou", "action_sensitivity")


def _prepare(model: Any, maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """The protocol's evaluation maps, except for a model that marks its maps as final
    (``minmax_maps = False``: the uniform baseline, which min-max would turn to zeros)."""
    if getattr(model, "minmax_maps", True):
        return prepare_prediction(maps, size=size)
    return torch.nn.functional.interpolate(
        maps[:, None].double(), size=size, mode="bilinear", align_corners=False
    )[:, 0].float()


def evaluate_model(
    model: nn.Module,
    dataset: Dataset | ExtractedTestSet,
    *,
    device: torch.device,
    batch_size: int = 16,
    num_workers: int = 0,
    viz_dir: str | os.PathLike | None = None,
    viz_max: int = 16,
    progress: bool = True,
    background: Dataset | None = None,
    mask_threshold: float = 0.5,
    min_score: float = 0.5,
) -> dict[str, Any]:
    """Runs a model over a test set and computes the protocol's and the planner's metrics.

    Args:
        model: an :class:`~affordance_core.model.AffordanceModel` on ``device``, in eval mode.
        dataset: an :class:`~affordance_core.data.AffordanceTestDataset` (``image``,
            ``label``, ``gt``, ``key``, ``afforded``) built with the model's vocabulary and
            image size, or its :func:`extract_test_set` (no ``viz_dir`` then: it keeps no
            images; its background features are used).
        device: where the images go.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes.
        viz_dir: write ``image | GT | prediction`` PNGs for the first ``viz_max`` images here.
        viz_max: maximum number of visualisations.
        progress: show a progress bar.
        background: the split's :class:`~affordance_core.data.BackgroundFrames` (with a
            dataset; an extracted set carries its own).
        mask_threshold: the predictor's grasp-mask level (its default is 0.5).
        min_score: the predictor's presence level (its default is 0.5): ``mask_iou`` and
            ``empty_on_background`` use empty masks below it, as the predictor does.

    Returns:
        ``{"KLD", "SIM", "NSS", "peak_hit", "mask_iou", "action_sensitivity": means over
        images (action_sensitivity over images whose object affords another action),
        "absence_auroc", "empty_on_background" (NaN without background frames),
        "n": image count, "n_background": frames, "per_affordance": {action: {"KLD", "SIM",
        "NSS", "n"}}, "per_image": {"key": [...], metric: [...]}}``.
    """
    from affordance_core.metrics import auroc

    if viz_dir is not None and isinstance(dataset, ExtractedTestSet):
        raise ValueError("viz_dir needs the images: pass the dataset, not its extracted set")
    vocabulary = list(model.vocabulary)
    class_sums = torch.zeros(len(vocabulary), len(METRIC_NAMES), dtype=torch.float64)
    class_counts = torch.zeros(len(vocabulary), dtype=torch.int64)
    per_image: dict[str, list] = {"key": [], **{k: [] for k in PER_IMAGE_NAMES}}
    all_scores, all_afforded = [], []
    viz_path = Path(viz_dir) if viz_dir is not None else None
    if viz_path is not None:
        viz_path.mkdir(parents=True, exist_ok=True)
    written = 0
    size = EVAL_SIZE
    with torch.inference_mode():
        for feats, labels, gt, info in feature_batches(
            model,
            dataset,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        ):
            size = int(gt.shape[-1])
            pred, values, scores = score_batch(
                model, feats, labels, gt, info["afforded"], mask_threshold, min_score
            )
            per_image["key"] += info["key"]
            for k in PER_IMAGE_NAMES:
                per_image[k].append(values[k])
            all_scores.append(scores)
            all_afforded.append(info["afforded"].cpu().bool())
            stacked = torch.stack([values[k].cpu() for k in METRIC_NAMES], dim=1)  # (N, 3)
            cpu_labels = labels.cpu()
            class_sums.index_add_(0, cpu_labels, stacked)
            class_counts.index_add_(0, cpu_labels, torch.ones_like(cpu_labels))
            if viz_path is not None and "image" in info and written < viz_max:
                for i in range(min(len(pred), viz_max - written)):
                    key = info["key"][i]
                    title = f"{vocabulary[int(cpu_labels[i])]}  KLD {float(values['KLD'][i]):.2f}"
                    panel = viz_panel(info["image"][i], gt[i], pred[i], title)
                    name = key.replace("/", "__") + ".png"
                    cv2.imwrite(str(viz_path / name), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
                    written += 1
        bg_feats = (
            dataset.background
            if isinstance(dataset, ExtractedTestSet)
            else None
            if background is None
            else extract_background(model, background, device=device)
        )
        bg_scores, bg_empty = (
            background_scores(model, bg_feats, size, mask_threshold, min_score)
            if bg_feats is not None
            else (None, None)
        )
    columns = {k: torch.cat(v) for k, v in per_image.items() if k != "key"}
    result: dict[str, Any] = {k: float(columns[k].nanmean()) for k in PER_IMAGE_NAMES}
    result["n"] = int(columns["KLD"].numel())
    scores, positive = torch.cat(all_scores), torch.cat(all_afforded)
    if bg_scores is not None:
        scores = torch.cat([scores, bg_scores])
        positive = torch.cat([positive, torch.zeros_like(bg_scores, dtype=torch.bool)])
    result["absence_auroc"] = auroc(scores.flatten(), positive.flatten())
    result["empty_on_background"] = (
        float(bg_empty.float().mean()) if bg_empty is not None else float("nan")
    )
    result["n_background"] = 0 if bg_scores is None else int(bg_scores.shape[0])
    result["per_affordance"] = {
        vocabulary[c]: _mean_dict(class_sums[c], int(class_counts[c]))
        for c in range(len(vocabulary))
        if class_counts[c] > 0
    }
    result["per_image"] = {
        "key": per_image["key"],
        **{k: columns[k].tolist() for k in PER_IMAGE_NAMES},
    }
    return result


def inference_key(branch: str, calibration: str) -> str:
    """Name of an inference choice in :func:`select_inference`'s scores, e.g. ``ego/binary``."""
    return f"{branch}/{calibration}"


def select_inference(
    model: nn.Module,
    dataset: Dataset | ExtractedTestSet,
    *,
    device: torch.device,
    branches: Sequence[str] = ("ego", "exo", "ego+exo"),
    calibrations: Sequence[str] = ("binary", "product", "reference"),
    metric: str = "KLD",
    batch_size: int = 32,
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Choose how a trained model maps ego images, on a *validation* set.

    Two choices leave the trained heads unchanged, so they belong to held-out data:

    * the calibration (:meth:`~affordance_core.model.AffordanceModel.calibrate`): the paper
      binarises the object affinity (gamma_2 = ``object_threshold``) before multiplying it
      with the min-max CAM; ``product`` multiplies the min-max CAM by the min-max affinity;
      the reference code multiplies the raw CAM by the min-max affinity; ``none`` is the raw
      CAM;
    * the branch whose CAM is taken: the ego branch's view projection (the papers), the exo
      branch's, which is trained on images of people using the object and reads the same
      DINO keys, or the mean of the two.

    The backbones run once per batch, each branch's CAM once per batch
    (:meth:`~affordance_core.model.AffordanceModel.maps_under`), and every candidate is
    scored on the same features.

    Args:
        model: an :class:`~affordance_core.model.AffordanceModel` (with a CLIP-role backbone
            unless ``calibrations`` is ``("none",)``), on ``device``, in eval mode. Its
            config is left as it was.
        dataset: validation images with GT (an ``AffordanceTestDataset`` or its
            :func:`extract_test_set`), never the test set.
        device: where the images go.
        branches: ``AffordanceConfig.inference_branch`` values other than ``pixel``.
        calibrations: values of ``AffordanceConfig.calibration`` to compare (``("none",)``
            for a method that maps with the raw CAM: only the branch is chosen).
        metric: ``KLD`` (lower wins) or ``SIM`` / ``NSS`` (higher wins).
        batch_size: images per forward pass.

    Returns:
        ({"inference_branch": .., "calibration": ..} of the winner,
        {``inference_key(branch, calibration)``: {"KLD", "SIM", "NSS", "n"}}).

    Raises:
        ValueError: a calibration needs the CLIP-role backbone the model lacks, the model
            uses LoopTrans' pixel decoder, or an unknown metric or branch.
    """
    if getattr(model, "clip", None) is None and set(calibrations) != {"none"}:
        raise ValueError("calibration needs the CLIP-role object affinity; this model has none")
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
    if model.config.inference_branch == "pixel" or set(branches) - {"ego", "exo", "ego+exo"}:
        raise ValueError(
            f"select_inference compares the 'ego', 'exo' and 'ego+exo' branches, got "
            f"{list(branches)} for a model whose branch is "
            f"{model.config.inference_branch!r}"
        )
    choices = [(b, c) for b in branches for c in calibrations]
    accumulators = {choice: MetricAccumulator() for choice in choices}
    with torch.inference_mode():
        for feats, labels, gt, _ in feature_batches(
            model, dataset, device=device, batch_size=batch_size
        ):
            candidates = model.maps_under(feats, labels.view(-1, 1), choices)
            for maps, acc in zip(candidates, accumulators.values(), strict=True):
                acc.update(
                    prepare_prediction(maps[:, 0].float().cpu(), size=tuple(gt.shape[-2:])),
                    gt,
                    prepared=True,
                )
    scores = {inference_key(*choice): dict(acc.compute()) for choice, acc in accumulators.items()}
    sign = 1.0 if metric == "KLD" else -1.0
    branch, calibration = min(
        choices, key=lambda ch: sign * float(scores[inference_key(*ch)][metric])
    )
    return {"inference_branch": branch, "calibration": calibration}, scores


def select_part_prior_temperature(
    model: nn.Module,
    dataset: Dataset | ExtractedTestSet,
    *,
    device: torch.device,
    temperatures: Sequence[float] = PART_PRIOR_TEMPERATURES,
    metric: str = "KLD",
    batch_size: int = 32,
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Choose the part prior's softmax temperature (``model.part_prior_temperature``) on a
    *validation* set.

    The prior is a logistic regression fitted, with an L2 penalty, on patches whose labels are
    mostly wrong (the hand's neighbourhood lies on the afforded part for about a fifth of its
    area; docs/diagnosis.md), so its probabilities are flatter than its ranking deserves.
    Dividing its logits by ``T < 1`` sharpens it without changing which action each patch
    prefers; how much is a choice for held-out data, like the calibration.

    Args:
        model: an :class:`~affordance_core.model.AffordanceModel` with a part prior, on
            ``device``, in eval mode, with its branch and calibration already chosen. Its
            config is left as it was.
        dataset: validation images with GT (or their :func:`extract_test_set`), never the
            test set.
        device: where the images go.
        temperatures: candidates, each > 0. The method's map is computed once per batch;
            each candidate only re-weights it (the maps equal :meth:`infer`'s at that T).
        metric: ``KLD`` (lower wins) or ``SIM`` / ``NSS`` (higher wins).
        batch_size: images per forward pass.

    Returns:
        (the winning temperature, {``str(T)``: {"KLD", "SIM", "NSS", "n"}}).

    Raises:
        ValueError: the model has no part prior, no or a non-positive candidate, or an unknown
            metric.
    """
    if getattr(model, "part_prior", None) is None:
        raise ValueError("this model has no part prior; there is no temperature to choose")
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
    if not temperatures or any(not float(t) > 0.0 for t in temperatures):
        raise ValueError(f"temperatures must be numbers > 0, got {list(temperatures)}")
    accumulators = {float(t): MetricAccumulator() for t in temperatures}
    with torch.inference_mode():
        for feats, labels, gt, _ in feature_batches(
            model, dataset, device=device, batch_size=batch_size
        ):
            ids = labels.view(-1, 1)
            method_map = minmax(model.method_maps(feats, ids))  # the same for every T
            for temperature, acc in accumulators.items():
                prior = model.part_probability(feats.keys, ids, temperature)
                maps = (method_map * prior)[:, 0].float().cpu()
                acc.update(prepare_prediction(maps, size=tuple(gt.shape[-2:])), gt, prepared=True)
    scores = {str(t): dict(acc.compute()) for t, acc in accumulators.items()}
    sign = 1.0 if metric == "KLD" else -1.0
    best = min(accumulators, key=lambda t: sign * float(scores[str(t)][metric]))
    return best, scores


def _validation_scores(
    model: nn.Module, val: ExtractedTestSet, device: torch.device
) -> dict[str, float | int]:
    """KLD / SIM / NSS of a model's current inference settings on validation features."""
    acc = MetricAccumulator()
    with torch.inference_mode():
        for feats, labels, gt, _ in feature_batches(model, val, device=device):
            maps = model.maps_from_features(feats, labels).float().cpu()
            acc.update(prepare_prediction(maps, size=tuple(gt.shape[-2:])), gt, prepared=True)
    return acc.compute()


def fit_presence_score(
    model: nn.Module, val: ExtractedTestSet, device: torch.device
) -> dict[str, Any]:
    """Fit the presence score's weights and bias on validation features (logistic regression).

    The features are :meth:`~affordance_core.model.AffordanceModel.score_features`'
    ``z_cam`` (peak raw CAM logit of the action on the model's inference branch), ``z_aff``
    (peak raw ego-prompt affinity) and ``z_map`` (peak of the inference map before any
    stretching: with a part prior, how strongly the action's part is found). Positives are
    the (image, action) pairs whose object affords the action; negatives are the pairs whose
    object does not, and every action on every background-only frame (``val.background``).
    scikit-learn's ``LogisticRegression`` (L2, C = 1, on standardised features, no class
    weighting: the probability is calibrated to the validation pairs' prior) gives
    ``score_weights = (w_cam, w_aff)``, ``score_map_weight`` and ``score_bias``. It is fitted
    on the feature sets ``cam+aff``, ``cam``, ``aff``, ``cam+aff+map`` and ``map`` (the other
    weights 0); the fit with the highest validation AUROC is kept, the earlier one on ties
    (the regression maximises the likelihood, not the ranking).

    With an objectness read-out (``model.objectness``) the model's score is
    ``P(object in frame) * sigmoid(...)``: the regression is then fitted on the frames with an
    object only (``P(afforded | object)``), and the fits are ranked by the AUROC of the
    product over every pair, background frames included.

    Args:
        model: the chosen model (its inference branch decides ``z_cam``), on ``device``.
        val: the validation set's features (:func:`extract_test_set`), never the test set.
        device: where the heads run.

    Returns:
        ``{"score_weights": [w_cam, w_aff], "score_map_weight": w_map, "score_bias": b,
        "features": the kept fit, "n_pos", "n_neg", "n_background": frames, "auroc":
        validation AUROC of the kept score, "auroc_fits": of each fit, "auroc_cam",
        "auroc_aff", "auroc_map": of each raw feature, "objectness": whether the score is gated,
        "auroc_objectness_background": with a gate, how well ``P(object)`` alone separates
        background pairs from afforded pairs}``, or ``{"skipped": reason, "n_pos", "n_neg"}``
        when one class is empty (the config is then left as it was).
    """
    from sklearn.linear_model import LogisticRegression

    from affordance_core.metrics import auroc

    gated = getattr(model, "objectness", None) is not None
    feats_all, labels_all, objectness_all, background_all = [], [], [], []
    with torch.inference_mode():
        for feats, labels, _, info in feature_batches(model, val, device=device):
            every = torch.arange(model.num_classes, device=labels.device).expand(len(labels), -1)
            z = model.score_features(feats, every).float().cpu().flatten(0, 1)
            feats_all.append(z)
            labels_all.append(info["afforded"].cpu().bool().flatten())
            objectness_all.append(
                model.frame_objectness(feats).float().cpu().repeat_interleave(every.shape[1])
            )
            background_all.append(torch.zeros(len(z), dtype=torch.bool))
        n_background = 0
        if val.background is not None:
            bg = val.background
            n_background = int(bg.keys.shape[0])
            every = torch.arange(model.num_classes, device=bg.keys.device).expand(n_background, -1)
            z = model.score_features(bg, every).float().cpu().flatten(0, 1)
            feats_all.append(z)
            labels_all.append(torch.zeros(len(z), dtype=torch.bool))
            objectness_all.append(
                model.frame_objectness(bg).float().cpu().repeat_interleave(every.shape[1])
            )
            background_all.append(torch.ones(len(z), dtype=torch.bool))
    x = torch.cat(feats_all).double().numpy()
    y = torch.cat(labels_all).numpy()
    p_object = torch.cat(objectness_all).double().numpy()
    is_background = torch.cat(background_all).numpy()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return {"skipped": "one class is empty", "n_pos": n_pos, "n_neg": n_neg}
    # With an objectness read-out the score is P(object) * P(afforded | object): the logistic
    # part is fitted on the frames with an object only, and ranked with the product.
    fit_rows = ~is_background if gated else np.ones(len(y), dtype=bool)
    if gated and (y[fit_rows].all() or not y[fit_rows].any()):
        skipped = "one class is empty among object frames"
        return {"skipped": skipped, "n_pos": n_pos, "n_neg": n_neg}
    # The regression runs on standardised features (the CAM logit and the cosine differ in
    # scale by orders of magnitude, and the L2 penalty would otherwise mostly shrink the
    # cosine's weight); the fitted line is mapped back to raw-feature weights and bias.
    mean, std = x[fit_rows].mean(0), x[fit_rows].std(0) + 1e-12
    candidates = {}
    feature_sets = (
        ("cam+aff", [0, 1]),
        ("cam", [0]),
        ("aff", [1]),
        ("cam+aff+map", [0, 1, 2]),
        ("map", [2]),
    )
    for name, columns in feature_sets:
        fit = LogisticRegression(C=1.0, max_iter=1000).fit(
            (x[fit_rows][:, columns] - mean[columns]) / std[columns], y[fit_rows]
        )
        weights = [0.0, 0.0, 0.0]
        bias = float(fit.intercept_[0])
        for column, w in zip(columns, fit.coef_[0], strict=True):
            weights[column] = float(w / std[column])
            bias -= float(w * mean[column] / std[column])
        score = 1.0 / (1.0 + np.exp(-(x @ np.asarray(weights) + bias))) * p_object
        candidates[name] = (auroc(score, y), weights, bias)
    # logistic regression maximises the likelihood, not the ranking: keep the fit whose
    # validation AUROC is highest (the earlier feature set on ties)
    features = max(candidates, key=lambda k: candidates[k][0])
    value, weights, bias = candidates[features]
    extra: dict[str, Any] = {}
    if gated:
        extra["auroc_objectness_background"] = (
            auroc(p_object[y | is_background], y[y | is_background])
            if is_background.any()
            else float("nan")
        )
    return {
        "score_weights": weights[:2],
        "score_map_weight": weights[2],
        "score_bias": bias,
        "features": features,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_background": n_background,
        "auroc": value,
        "auroc_fits": {k: v[0] for k, v in candidates.items()},
        "auroc_cam": auroc(x[:, 0], y),
        "auroc_aff": auroc(x[:, 1], y),
        "auroc_map": auroc(x[:, 2], y),
        "objectness": gated,
        **extra,
    }


#: The last validation set's features with their key (see :func:`_validation_features`).
_LAST_VALIDATION_FEATURES: list[tuple[str, ExtractedTestSet]] = []


def _validation_features(
    model: nn.Module, dataset: Any, background: Any, device: torch.device
) -> ExtractedTestSet:
    """:func:`extract_test_set` of a validation set, reused by the next choice in the same
    process while nothing it depends on changed: the backbones (fingerprint), device, input
    and evaluation sizes, vocabulary, and every image, GT and background file (path, size,
    modification time). ``make demo`` chooses for every method of a split in one process."""
    from affordance_core.feature_cache import backbone_fingerprint

    digest = hashlib.sha1()
    parts = (device, dataset.image_size, dataset.eval_size, dataset.vocabulary)
    digest.update(repr((*parts, backbone_fingerprint(model))).encode())
    files = [path for sample in dataset.samples for path in sample[:2]] + list(background.paths)
    for path in files:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    key = digest.hexdigest()
    if _LAST_VALIDATION_FEATURES and _LAST_VALIDATION_FEATURES[0][0] == key:
        return _LAST_VALIDATION_FEATURES[0][1]
    _LAST_VALIDATION_FEATURES.clear()
    val = extract_test_set(model, dataset, device=device, background=background)
    _LAST_VALIDATION_FEATURES.append((key, val))
    return val


def choose_on_validation(
    run_dir: str | os.PathLike,
    val_root: str | os.PathLike,
    split: str,
    *,
    device: torch.device,
    weights_dir: str | os.PathLike | None = None,
    metric: str = "KLD",
) -> dict[str, Any]:
    """Choose a finished run's inference branch, calibration and training budget on validation
    data, and make the winner ``RUN_DIR/model.pt``.

    Two steps, so that the cost grows with the sum and not the product of the choices:

    1. on the final ``model.pt``, every branch (ego, exo, ego+exo) and calibration (none,
       binary, product, reference; only none without a CLIP-role backbone) is scored
       (:func:`select_inference`); LoopTrans' pixel decoder has no such choice;
    2. with a part prior, its softmax temperature (:func:`select_part_prior_temperature`) for
       the winning branch and calibration;
    3. with those settings, every ``snapshot_<step>.pt`` is scored, and the budget (snapshot
       or final step) with the best validation score is kept;
    4. the chosen model's presence score (``score_weights``, ``score_bias``) is fitted on the
       validation images and background-only frames (:func:`fit_presence_score`).

    The backbones run once over the validation images. ``RUN_DIR/validation.json`` records
    every score (keys ``step/branch/calibration``; with a part prior, the chosen branch and
    calibration are scored at the chosen temperature, the other rows at the config's), each
    temperature's score (``temperature_scores``), the chosen ``part_prior_temperature`` and
    the score fit (``score_fit``).

    Args:
        run_dir: the run folder written by ``affordance-train``.
        val_root: a dataset in the AGD20K layout whose ``testset`` holds images with GT of the
            training categories (never the test split).
        split: the split folder under ``val_root``.
        device: where the heads run.
        weights_dir: the backbone weights folder of the run.
        metric: ``KLD`` (lower wins), ``SIM`` or ``NSS`` (higher win).

    Returns:
        ``{"step", "inference_branch", "calibration", metric: value, "candidates": n}``, and
        ``"part_prior_temperature"`` for a model with a part prior.

    Raises:
        FileNotFoundError: no ``model.pt`` in ``run_dir``.
        ValueError: the validation data does not fit the model's vocabulary, or a bad metric.
    """
    from affordance_core.checkpoint import (
        atomic_save,
        load_model,
        read_checkpoint,
        update_checkpoint_config,
    )
    from affordance_core.data import AffordanceTestDataset, BackgroundFrames

    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {METRIC_NAMES}, got {metric!r}")
    run_dir = Path(run_dir)
    final = run_dir / "model.pt"
    if not final.is_file():
        raise FileNotFoundError(f"{final} does not exist; train the run first")
    sign = 1.0 if metric == "KLD" else -1.0

    def step_of(path: Path) -> int:
        return int((read_checkpoint(path).get("extra") or {}).get("step", 0))

    model = load_model(final, device=str(device), weights_dir=weights_dir).to(device).eval()
    try:
        dataset = AffordanceTestDataset(
            val_root, split, model.image_size, vocabulary=model.vocabulary
        )
    except ValueError as exc:
        raise ValueError(f"validation data {val_root} ({split}): {exc}") from None
    background = BackgroundFrames(val_root, split, model.image_size)
    val = _validation_features(model, dataset, background, device)
    final_step = step_of(final)
    if model.config.inference_branch == "pixel":
        choice = {"inference_branch": "pixel", "calibration": model.config.calibration}
        scores = {
            inference_key("pixel", choice["calibration"]): _validation_scores(model, val, device)
        }
    else:
        calibrations = (
            ("none", "binary", "product", "reference") if model.clip is not None else ("none",)
        )
        choice, scores = select_inference(
            model, val, device=device, calibrations=calibrations, metric=metric
        )
    key = inference_key(choice["inference_branch"], choice["calibration"])
    table = {f"{final_step}/{k}": v for k, v in scores.items()}
    temperature_scores: dict[str, dict[str, Any]] | None = None
    if model.part_prior is not None:
        model.config = dataclasses.replace(model.config, **choice)
        temperature, temperature_scores = select_part_prior_temperature(
            model, val, device=device, metric=metric
        )
        choice["part_prior_temperature"] = temperature
        table[f"{final_step}/{key}"] = temperature_scores[str(temperature)]
    best = (float(table[f"{final_step}/{key}"][metric]), final, final_step)
    for path in sorted(run_dir.glob("snapshot_*.pt")):
        snapshot = (
            load_model(path, device=str(device), weights_dir=weights_dir, **choice)
            .to(device)
            .eval()
        )
        step = step_of(path)
        table[f"{step}/{key}"] = _validation_scores(snapshot, val, device)
        value = float(table[f"{step}/{key}"][metric])
        if sign * value < sign * best[0]:
            best = (value, path, step)
    value, path, step = best
    if path != final:
        payload = read_checkpoint(path)
        payload.setdefault("extra", {})["chosen_from"] = path.name
        atomic_save(payload, final)
    update_checkpoint_config(final, **choice)
    chosen = load_model(final, device=str(device), weights_dir=weights_dir).to(device).eval()
    score_fit = fit_presence_score(chosen, val, device)
    if "skipped" not in score_fit:
        update_checkpoint_config(
            final,
            score_weights=score_fit["score_weights"],
            score_map_weight=score_fit["score_map_weight"],
            score_bias=score_fit["score_bias"],
        )
    record = {
        "step": step,
        **choice,
        metric: round(value, 4),
        "candidates": len(table),
        "split": split,
        "val_root": str(val_root),
        "scores": {k: {m: round(float(x), 4) for m, x in v.items()} for k, v in table.items()},
        "score_fit": score_fit,
    }
    if temperature_scores is not None:
        record["part_prior_temperature"] = choice["part_prior_temperature"]
        record["temperature_scores"] = {
            t: {m: round(float(x), 4) for m, x in v.items()} for t, v in temperature_scores.items()
        }
    (run_dir / "validation.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    logger.info(
        "validation choice (%s of %d candidates): step %d, branch %s, calibration %s, "
        "part prior temperature %s, %s %.4f",
        metric,
        len(table),
        step,
        choice["inference_branch"],
        choice["calibration"],
        choice.get("part_prior_temperature", "-"),
        metric,
        value,
    )
    keys = ("step", "inference_branch", "calibration", "part_prior_temperature", metric)
    return {k: record[k] for k in (*keys, "candidates") if k in record}


def _rounded(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (*METRIC_NAMES, *PLANNER_METRIC_NAMES):
        if key not in result:
            continue
        value = float(result[key])
        out[key] = round(value, 4) if math.isfinite(value) else None
    out["n"] = int(result["n"])
    if "n_background" in result:
        out["n_background"] = int(result["n_background"])
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate a trained affordance model on a test split "
        "(KLD, SIM, NSS of the AGD20K protocol). The last stdout line is a JSON object.",
    )
    parser.add_argument("--data-root", required=True, help="dataset root (AGD20K layout)")
    parser.add_argument(
        "--split",
        required=True,
        help="Seen, Unseen, HICO-IIF or the name of your own split folder",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="model file written by affordance-train (model.pt, best.pt, last.pt)",
    )
    parser.add_argument(
        "--json",
        metavar="OUT.json",
        help="also write metrics and the per-affordance breakdown to this file",
    )
    parser.add_argument("--viz", metavar="DIR", help="write image | GT | prediction overlays")
    parser.add_argument("--viz-max", type=int, default=16, help="overlays to write (default 16)")
    parser.add_argument("--weights-dir", help="directory with the backbone weights")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--calibration",
        choices=["none", "binary", "product", "reference"],
        help="score with this CAM calibration instead of the checkpoint's "
        "(an ablation: the trained heads are unchanged)",
    )
    parser.add_argument(
        "--inference-branch",
        choices=["ego", "exo", "ego+exo"],
        help="map the ego image with this branch's CAM instead of the "
        "checkpoint's (an ablation; not for LoopTrans' pixel decoder)",
    )
    parser.add_argument(
        "--object-threshold",
        type=float,
        metavar="GAMMA",
        help="threshold on the min-max object affinity for binary calibration",
    )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=0.5,
        help="grasp-mask level of mask_iou and empty_on_background (the predictor's default, 0.5)",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=0.5,
        help="presence level of mask_iou and empty_on_background: below it the mask is empty "
        "(the predictor's default, 0.5)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from affordance_core.checkpoint import load_model
    from affordance_core.data import AffordanceTestDataset, BackgroundFrames

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = choose_device(args.device)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    overrides = {
        k: v
        for k, v in (
            ("calibration", args.calibration),
            ("inference_branch", args.inference_branch),
            ("object_threshold", args.object_threshold),
        )
        if v is not None
    }
    if "object_threshold" in overrides and not 0.0 <= overrides["object_threshold"] <= 1.0:
        raise ValueError(f"--object-threshold must be in [0, 1], got {args.object_threshold}")
    model = load_model(checkpoint, device=str(device), weights_dir=args.weights_dir, **overrides)
    model.to(device).eval()
    try:
        dataset = AffordanceTestDataset(
            args.data_root, args.split, model.config.image_size, vocabulary=model.vocabulary
        )
    except ValueError as exc:
        raise ValueError(
            f"{exc} (checkpoint {checkpoint} knows: {', '.join(model.vocabulary)})"
        ) from None
    if not 0.0 <= args.mask_threshold <= 1.0:
        raise ValueError(f"--mask-threshold must be in [0, 1], got {args.mask_threshold}")
    if not 0.0 <= args.min_score <= 1.0:
        raise ValueError(f"--min-score must be in [0, 1], got {args.min_score}")
    background = BackgroundFrames(args.data_root, args.split, model.config.image_size)
    logger.info(
        "evaluating %s on %d test images and %d background frames of %s",
        checkpoint,
        len(dataset),
        len(background),
        args.split,
    )
    if not len(background):
        logger.info(
            "no testset/background folder: absence_auroc uses the actions each "
            "object does not afford only, and empty_on_background is null"
        )
    result = evaluate_model(
        model,
        dataset,
        device=device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        viz_dir=args.viz,
        viz_max=max(0, args.viz_max),
        progress=not args.no_progress,
        background=background,
        mask_threshold=args.mask_threshold,
        min_score=args.min_score,
    )
    for action, values in result["per_affordance"].items():
        logger.info(
            "%-14s KLD %.4f  SIM %.4f  NSS %.4f  (n=%d)",
            action,
            values["KLD"],
            values["SIM"],
            values["NSS"],
            values["n"],
        )
    summary = _rounded(result)
    if args.json:
        report = {
            **summary,
            "split": args.split,
            "checkpoint": str(checkpoint),
            "per_affordance": {a: _rounded(v) for a, v in result["per_affordance"].items()},
            "per_image": result["per_image"],
        }
        out = Path(args.json)
        if out.parent != Path(""):
            out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``affordance-eval``; returns the exit status."""
    return run_cli(PROG, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
