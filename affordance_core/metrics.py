"""Saliency metrics of the AGD20K evaluation protocol: KLD, SIM and NSS.

The formulas follow the reference protocol (`docs/architecture.md`, "Metrics") term for term,
including its epsilons, and are vectorised over a batch of maps:

* the prediction is resized bilinearly to the evaluation size and min-max normalised
  (``(p - min) / (max - min + 1e-10)``), see :func:`prepare_prediction`;
* the ground truth is ``GT / 255`` resized bilinearly to the evaluation size, see
  :func:`prepare_gt`;
* ``P = pred / (sum(pred) + 1e-12)``, ``G = gt / (sum(gt) + 1e-12)``;
  ``KLD = sum(G * log(G / (P + 1e-12) + 1e-12))`` and ``SIM = sum(min(P, G))``;
* ``NSS = sum(z * fix) / sum(fix + 1e-12)`` with ``z`` the z-score of the prediction
  (population standard deviation) and ``fix`` the ground truth min-max normalised
  (``+1e-12``) and thresholded at ``> 0.1``.

One deliberate difference: the protocol's z-score has no epsilon, so a constant prediction
gives NaN. Here a prediction with zero standard deviation gets ``NSS = 0`` (the value a
featureless map deserves: it singles out no pixel). Every other number is unchanged.

Aggregation is a plain mean over images (not per class), as in the protocol.

Beside them, what a planner acts on (all vectorised over images; docs/evaluation.md):

* ``peak_hit`` (:func:`peak_hit`): the pointing game: the prediction's maximum falls on the
  GT region, ``GT >= 0.5 max(GT)``; tied maxima count by the fraction of them on the region;
* ``mask_iou`` (:func:`mask_iou`): IoU of the predictor's grasp mask with that GT region;
* ``action_sensitivity`` (:func:`action_sensitivity`): on one image, how often the labelled
  action's map is closer (KLD) to the GT than the map of another action the same object
  affords; 0.5 is chance;
* ``absence_auroc`` (:func:`auroc`): how well the score separates (image, action) pairs where
  the action is afforded from pairs where it is not;
* ``empty_on_background``: the share of background-only frames whose grasp mask is empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "EVAL_SIZE",
    "GT_REGION_FRACTION",
    "METRIC_NAMES",
    "PLANNER_METRIC_NAMES",
    "MetricAccumulator",
    "action_sensitivity",
    "affordance_metrics",
    "auroc",
    "gt_region",
    "mask_iou",
    "peak_hit",
    "prepare_gt",
    "prepare_prediction",
    "summarize",
]

EVAL_SIZE = 224
"""Side length (pixels) at which the protocol computes every metric."""

METRIC_NAMES = ("KLD", "SIM", "NSS")

PLANNER_METRIC_NAMES = (
    "peak_hit",
    "mask_iou",
    "action_sensitivity",
    "absence_auroc",
    "empty_on_background",
)
"""The planner-facing metrics that ``affordance-eval`` reports beside :data:`METRIC_NAMES`."""

GT_REGION_FRACTION = 0.5
"""The GT region of the planner metrics: pixels with ``GT >= 0.5 * max(GT)``."""

_EPS = 1e-12
_MINMAX_EPS = 1e-10
_FIXATION_THRESHOLD = 0.1


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive int or an (H, W) pair, got {size!r}")
    return int(size[0]), int(size[1])


def _bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resizes (N, h, w) maps like ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``.

    Run it in float64: float32 sampling coordinates drift by up to 5e-5 from cv2's.
    """
    if tuple(maps.shape[-2:]) == size:
        return maps
    # Half-pixel centres without antialiasing: the same sampling grid as cv2's INTER_LINEAR.
    out = F.interpolate(
        maps[:, None], size=size, mode="bilinear", align_corners=False, antialias=False
    )
    return out[:, 0]


def prepare_prediction(
    maps: torch.Tensor | np.ndarray, size: int | tuple[int, int] = EVAL_SIZE
) -> torch.Tensor:
    """Turns raw affordance maps into the protocol's evaluation maps.

    Bilinear resize to ``size`` (cv2 ``INTER_LINEAR`` semantics), then per-map min-max
    normalisation ``(p - min) / (max - min + 1e-10)``.

    Args:
        maps: (N, h, w) or (h, w) real-valued maps at any resolution (e.g. the 14x14 CAM).
        size: output side length, or an (H, W) pair.

    Returns:
        (N, H, W) float32 tensor in [0, 1] (a constant map becomes all zeros).

    Raises:
        ValueError: if ``maps`` is not 2-D or 3-D, is empty, or holds NaN/inf.
    """
    maps = torch.as_tensor(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or maps.numel() == 0:
        raise ValueError(f"maps must be a non-empty (N, h, w) array, got {tuple(maps.shape)}")
    maps = maps.detach().to(torch.float64)
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or inf; check the model output before evaluation")
    maps = _bilinear(maps, _as_size(size))
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    return ((maps - lo) / (hi - lo + _MINMAX_EPS)).to(torch.float32)


def prepare_gt(
    gt: torch.Tensor | np.ndarray, size: int | tuple[int, int] = EVAL_SIZE
) -> torch.Tensor:
    """Turns a stored ground-truth heat map into the protocol's evaluation map.

    ``GT / 255`` followed by a bilinear resize (cv2 ``INTER_LINEAR`` semantics). Integer input
    is divided by 255; floating-point input is taken to be in [0, 1] already.

    Args:
        gt: (H, W) or (N, H, W) heat map, uint8 in [0, 255] or float in [0, 1].
        size: output side length, or an (H, W) pair.

    Returns:
        float32 tensor in [0, 1] of shape ``size`` (or (N, *size) for batched input).

    Raises:
        ValueError: if ``gt`` is not 2-D or 3-D or is empty.
    """
    gt = torch.as_tensor(gt)
    if gt.ndim not in (2, 3) or gt.numel() == 0:
        raise ValueError(f"gt must be a non-empty (H, W) or (N, H, W) map, got {tuple(gt.shape)}")
    scaled = gt.detach().to(torch.float64)
    if not gt.is_floating_point():
        scaled = scaled / 255.0
    batched = scaled if scaled.ndim == 3 else scaled[None]
    out = _bilinear(batched, _as_size(size)).clamp_(0.0, 1.0).to(torch.float32)
    return out if gt.ndim == 3 else out[0]


def affordance_metrics(pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image KLD, SIM and NSS of the reference protocol.

    Computed in float64. Pass predictions through :func:`prepare_prediction` first (the
    protocol's KLD and SIM assume non-negative maps) and ground truth through
    :func:`prepare_gt`.

    Args:
        pred: (N, H, W) or (H, W) prediction, non-negative (normally in [0, 1]).
        gt: ground truth of the same shape, in [0, 1].

    Returns:
        ``{"KLD": (N,), "SIM": (N,), "NSS": (N,)}`` float64 tensors. KLD >= 0 (lower is
        better), SIM in [0, 1] (higher is better), NSS real (higher is better; 0 for a
        constant prediction).

    Raises:
        ValueError: on a shape mismatch or non-finite values.
    """
    pred = torch.as_tensor(pred)
    gt = torch.as_tensor(gt)
    if pred.ndim == 2:
        pred = pred[None]
    if gt.ndim == 2:
        gt = gt[None]
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(
            f"pred and gt must both be (N, H, W) of the same shape, got {tuple(pred.shape)} and "
            f"{tuple(gt.shape)}; resize with prepare_prediction(maps, size=gt.shape[-2:])"
        )
    pred = pred.detach().to(torch.float64).flatten(1)  # (N, HW)
    gt = gt.detach().to(device=pred.device, dtype=torch.float64).flatten(1)  # (N, HW)
    if not (bool(torch.isfinite(pred).all()) and bool(torch.isfinite(gt).all())):
        raise ValueError("pred or gt contains NaN or inf")

    p = pred / (pred.sum(dim=1, keepdim=True) + _EPS)
    g = gt / (gt.sum(dim=1, keepdim=True) + _EPS)
    sim = torch.minimum(p, g).sum(dim=1)
    # KLD = sum g * log(g / (p + eps) + eps), in place on p's buffer (one (N, HW) temporary).
    ratio = torch.div(g, p.add_(_EPS), out=p)
    kld = ratio.add_(_EPS).log_().mul_(g).sum(dim=1)

    # NSS = mean of the z-scored prediction over the fixations, without the (N, HW) z-map:
    # sum(z * fix) = (sum(pred * fix) - mean * n_fix) / std; 0 for a constant prediction.
    std = pred.std(dim=1, correction=0, keepdim=True)
    g_shift = gt - gt.amin(dim=1, keepdim=True)
    fixation = g_shift.div_(g_shift.amax(dim=1, keepdim=True) + _EPS) > _FIXATION_THRESHOLD
    fixation = fixation.to(torch.float64)
    n_fix = fixation.sum(dim=1, keepdim=True)
    on_fixations = (pred * fixation).sum(dim=1, keepdim=True)
    centred = on_fixations - pred.mean(dim=1, keepdim=True) * n_fix
    nss = centred / std / (n_fix + _EPS * pred.shape[1])
    nss = torch.where(std > 0, nss, torch.zeros_like(nss))[:, 0]
    return {"KLD": kld, "SIM": sim, "NSS": nss}


def summarize(
    metrics: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
) -> dict[str, float | int]:
    """Means over images, as the protocol reports them.

    Args:
        metrics: the output of :func:`affordance_metrics`, or an iterable of such outputs
            (e.g. one per batch).

    Returns:
        ``{"KLD": float, "SIM": float, "NSS": float, "n": int}``; the means are NaN when
        ``n == 0``.
    """
    parts = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    out: dict[str, float | int] = {}
    n = 0
    for name in METRIC_NAMES:
        values = [torch.as_tensor(m[name], dtype=torch.float64).reshape(-1) for m in parts]
        cat = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
        n = int(cat.numel())
        out[name] = float(cat.mean()) if n else float("nan")
    out["n"] = n
    return out


class MetricAccumulator:
    """Running KLD / SIM / NSS over an evaluation set (plain mean over images).

    Example:
        >>> acc = MetricAccumulator()
        >>> acc.update(cams_14x14, batch["gt"])   # raw (N, 14, 14) maps, (N, 224, 224) GT
        >>> acc.compute()                         # {"KLD": .., "SIM": .., "NSS": .., "n": ..}
    """

    def __init__(self) -> None:
        self._sums = torch.zeros(len(METRIC_NAMES), dtype=torch.float64)
        self._n = 0

    def reset(self) -> None:
        """Forgets every image seen so far."""
        self._sums.zero_()
        self._n = 0

    def update(
        self,
        pred: torch.Tensor | np.ndarray,
        gt: torch.Tensor | np.ndarray,
        prepared: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Adds a batch of images.

        Args:
            pred: (N, h, w) or (h, w) raw maps at any resolution; resized to the GT size and
                min-max normalised with :func:`prepare_prediction` unless ``prepared``.
            gt: (N, H, W) or (H, W) ground truth in [0, 1] (from :func:`prepare_gt`).
            prepared: set when ``pred`` already went through :func:`prepare_prediction`.

        Returns:
            The batch's per-image metrics, as :func:`affordance_metrics` returns them.
        """
        gt = torch.as_tensor(gt)
        if gt.ndim == 2:
            gt = gt[None]
        if not prepared:
            pred = prepare_prediction(
                torch.as_tensor(pred).detach().cpu(), size=tuple(gt.shape[-2:])
            )
        values = affordance_metrics(pred, gt)
        self._sums += torch.stack([values[k].sum().cpu() for k in METRIC_NAMES])
        self._n += int(values["KLD"].numel())
        return values

    @property
    def count(self) -> int:
        """Number of images accumulated."""
        return self._n

    def compute(self) -> dict[str, float | int]:
        """Returns ``{"KLD", "SIM", "NSS": mean over images, "n": count}`` (NaN means if empty)."""
        if self._n == 0:
            return {**{k: float("nan") for k in METRIC_NAMES}, "n": 0}
        means = (self._sums / self._n).tolist()
        return {**dict(zip(METRIC_NAMES, means, strict=True)), "n": self._n}


def gt_region(gt: torch.Tensor | np.ndarray, fraction: float = GT_REGION_FRACTION) -> torch.Tensor:
    """The afforded region of each ground-truth map: ``GT >= fraction * max(GT)`` and ``GT > 0``.

    Args:
        gt: (N, H, W) or (H, W) ground truth in [0, 1].
        fraction: share of each map's maximum, in (0, 1].

    Returns:
        bool tensor of ``gt``'s shape (all False for an all-zero map).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    gt = torch.as_tensor(gt)
    peak = gt.flatten(-2).amax(-1)[..., None, None]
    return (gt >= fraction * peak) & (gt > 0)


def peak_hit(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    fraction: float = GT_REGION_FRACTION,
) -> torch.Tensor:
    """Pointing game: does each prediction's maximum fall on the GT region?

    Every pixel that attains the maximum counts, so a map with tied maxima scores the share of
    them on the region (the expected hit when a planner breaks the tie at random; a constant
    map scores the region's area fraction).

    Args:
        pred: (N, H, W) or (H, W) predictions at the GT's resolution (any real values).
        gt: ground truth of the same shape, in [0, 1].
        fraction: the GT region is ``GT >= fraction * max(GT)`` (:func:`gt_region`).

    Returns:
        (N,) float64 in [0, 1]; NaN for an image whose GT is all zero.
    """
    pred, gt = _pair(pred, gt)
    flat = pred.flatten(1)
    is_max = flat == flat.amax(1, keepdim=True)  # (N, HW)
    region = gt_region(gt, fraction).flatten(1)
    hits = (is_max & region).sum(1).double() / is_max.sum(1).double()
    return torch.where(region.any(1), hits, torch.full_like(hits, float("nan")))


def mask_iou(
    masks: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    fraction: float = GT_REGION_FRACTION,
) -> torch.Tensor:
    """IoU of each predicted grasp mask with the GT region.

    Args:
        masks: (N, H, W) or (H, W) bool masks at the GT's resolution (e.g.
            :func:`affordance_core.predictor.grasp_masks` of the prepared maps).
        gt: ground truth of the same shape, in [0, 1].
        fraction: the GT region is ``GT >= fraction * max(GT)``.

    Returns:
        (N,) float64 in [0, 1]: 1 when both the mask and the region are empty, 0 when only
        one of them is.
    """
    masks, gt = _pair(masks, gt)
    masks = masks.bool().flatten(1)
    region = gt_region(gt, fraction).flatten(1)
    inter = (masks & region).sum(1).double()
    union = (masks | region).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def action_sensitivity(
    label_kld: torch.Tensor, other_kld: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Per image, the share of other afforded actions whose map is farther from the GT.

    Args:
        label_kld: (N,) KLD between the labelled action's map and the GT.
        other_kld: (N, A) KLD between the map of each other candidate action and the same GT.
        valid: (N, A) bool, True where the candidate is another action the image's object
            affords.

    Returns:
        (N,) float64 in [0, 1]: wins count 1 and exact ties 0.5; NaN for an image without a
        valid candidate (its object affords one action only).
    """
    label_kld = torch.as_tensor(label_kld, dtype=torch.float64)
    other_kld = torch.as_tensor(other_kld, dtype=torch.float64)
    valid = torch.as_tensor(valid, dtype=torch.bool)
    if other_kld.shape != valid.shape or other_kld.shape[:1] != label_kld.shape:
        raise ValueError(
            f"shapes do not match: label_kld {tuple(label_kld.shape)}, other_kld "
            f"{tuple(other_kld.shape)}, valid {tuple(valid.shape)}"
        )
    won = (label_kld[:, None] < other_kld).double() + 0.5 * (label_kld[:, None] == other_kld)
    count = valid.sum(1).double()
    share = (won * valid).sum(1) / count.clamp_min(1)
    return torch.where(count > 0, share, torch.full_like(share, float("nan")))


def auroc(scores: torch.Tensor | np.ndarray, positive: torch.Tensor | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positive`` from the rest.

    The probability that a random positive scores above a random negative, ties counting one
    half (scikit-learn's ``roc_auc_score``).

    Args:
        scores: (M,) real scores.
        positive: (M,) bool labels.

    Returns:
        AUROC in [0, 1]; NaN when either class is empty.
    """
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(torch.as_tensor(scores, dtype=torch.float64).reshape(-1))
    positive = np.asarray(torch.as_tensor(positive, dtype=torch.bool).reshape(-1))
    if scores.shape != positive.shape:
        raise ValueError(f"scores {scores.shape} and positive {positive.shape} differ in shape")
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))


def _pair(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    a = a[None] if a.ndim == 2 else a
    b = b[None] if b.ndim == 2 else b
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"expected two (N, H, W) arrays of one shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    return a, b.to(a.device)
