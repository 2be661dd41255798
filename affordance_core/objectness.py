"""Frame objectness: is there an object in this frame at all?

The presence score of an action (:meth:`AffordanceModel.infer
<affordance_core.model.AffordanceModel.infer>`) is fitted on validation images, nearly all of
which show an object, so it ranks "this object affords the action" well but has seen few frames
with no object: on an empty, cluttered table the action's CAM and prompt affinity still peak
somewhere. The objectness read-out answers the other half of the question. With it the score
is ``P(object in frame) * P(action afforded | object)``.

The read-out is a logistic regression on a frame descriptor of the frozen backbones' features
(:func:`frame_descriptor`), fitted on frames with an object and background-only frames
(object presence only: no affordance label, part or heatmap). It belongs to the backbone
weights it was fitted on: ``affordance-train`` copies it from :func:`objectness_file` in the
weights folder into the model's heads, so a checkpoint carries it. For the ``tiny`` tier
``python -m training.pretrain.objectness`` fits it on pretraining-space synthetic scenes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .backbones import cls_saliency
from .files import atomic_write

__all__ = [
    "ObjectnessFit",
    "descriptor_dim",
    "fit_objectness",
    "frame_descriptor",
    "load_objectness",
    "objectness_file",
    "save_objectness",
]


def objectness_file(preset: str) -> str:
    """File name of a preset's objectness read-out beside its backbone weights
    (``objectness_tiny.pt`` in ``weights/tiny``)."""
    return f"objectness_{preset}.pt"


_FORMAT = 1


def descriptor_dim(key_dim: int, clip_dim: int, heads: int) -> int:
    """Length of :func:`frame_descriptor` for D-dim keys, Dc-dim CLIP patches and K heads."""
    return 3 * int(key_dim) + 2 * int(clip_dim) + 2 * int(heads)


def frame_descriptor(keys: Tensor, cls_attention: Tensor, clip: Tensor) -> Tensor:
    """One vector per frame summarising where and what the backbones see.

    Args:
        keys: (N, D, h, w) DINO-role keys.
        cls_attention: (N, K, h, w) CLS attention of the saliency heads.
        clip: (N, Dc, h, w) L2-normalised CLIP-role patch embeddings.

    Returns:
        (N, 3 D + 2 Dc + 2 K) float32: the L2-normalised keys' spatial mean, maximum and
        saliency-weighted mean; the CLIP patches' spatial mean and maximum; each head's CLS
        attention maximum and standard deviation.
    """
    k = F.normalize(keys.float(), dim=1)
    c = clip.float()
    attn = cls_attention.float()
    sal = cls_saliency(attn)  # (N, h, w)
    weighted = (k * sal[:, None]).sum((2, 3)) / (sal.sum((1, 2))[:, None] + 1e-6)
    flat = attn.flatten(2)
    return torch.cat(
        [
            k.mean((2, 3)),
            k.amax((2, 3)),
            weighted,
            c.mean((2, 3)),
            c.amax((2, 3)),
            flat.amax(2),
            flat.std(2),
        ],
        1,
    )


@dataclass
class ObjectnessFit:
    """A fitted objectness read-out: ``P(object) = sigmoid(weight . descriptor + bias)``.

    Attributes:
        weight: (F,) float32 over the raw :func:`frame_descriptor` (standardisation folded in).
        bias: the logit's bias.
        stats: what the fit saw and how well it separates its own held-out frames.
    """

    weight: Tensor
    bias: float
    stats: dict[str, Any] = field(default_factory=dict)

    def logit(self, descriptors: Tensor) -> Tensor:
        """(N,) objectness logits of (N, F) descriptors."""
        return descriptors.float() @ self.weight.to(descriptors.device) + self.bias


def fit_objectness(
    objects: Tensor, backgrounds: Tensor, *, c: float = 0.1, seed: int = 0
) -> ObjectnessFit:
    """Fit the read-out: logistic regression (scikit-learn, L2, balanced classes).

    The descriptors are standardised; ``c`` is the inverse L2 strength (small: the descriptor
    is long and correlated). A 3-fold cross-validated AUROC and accuracy at 0.5 go into
    ``stats``.

    Args:
        objects: (N1, F) descriptors of frames with an object.
        backgrounds: (N0, F) descriptors of background-only frames.
        c: inverse regularisation strength (> 0).
        seed: fold assignment of the cross-validation.

    Raises:
        ValueError: on an empty class, mismatched widths or a non-positive ``c``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from .metrics import auroc

    if objects.ndim != 2 or backgrounds.ndim != 2 or objects.shape[1] != backgrounds.shape[1]:
        raise ValueError(
            f"descriptors must be (N, F) with one F, got {tuple(objects.shape)} and "
            f"{tuple(backgrounds.shape)}"
        )
    if len(objects) < 3 or len(backgrounds) < 3:
        raise ValueError(
            f"need at least 3 frames of each kind, got {len(objects)} with an object and "
            f"{len(backgrounds)} background-only"
        )
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    x = torch.cat([objects, backgrounds]).double().cpu().numpy()
    y = np.r_[np.ones(len(objects)), np.zeros(len(backgrounds))]
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = (x - mean) / std
    reg = LogisticRegression(C=c, max_iter=5000)
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    held_out = cross_val_predict(reg, z, y, cv=folds, method="decision_function")
    reg.fit(z, y)
    weight = reg.coef_[0] / std
    bias = float(reg.intercept_[0] - (reg.coef_[0] * mean / std).sum())
    stats = {
        "n_objects": len(objects),
        "n_backgrounds": len(backgrounds),
        "c": c,
        "cv_auroc": auroc(held_out, y.astype(bool)),
        "cv_object_recall": float((held_out[y == 1] >= 0).mean()),
        "cv_background_rejected": float((held_out[y == 0] < 0).mean()),
    }
    return ObjectnessFit(torch.from_numpy(weight).float(), bias, stats)


def save_objectness(fit: ObjectnessFit, path: str | os.PathLike, **meta: Any) -> Path:
    """Write a fit atomically (``torch.save`` of plain tensors and numbers) to ``path``."""
    path = Path(path)
    payload = {
        "format": _FORMAT,
        "weight": fit.weight.float().cpu(),
        "bias": float(fit.bias),
        "stats": fit.stats,
        "meta": meta,
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_objectness(path: str | os.PathLike) -> ObjectnessFit:
    """Read :func:`save_objectness` output.

    Raises:
        ValueError: the file is not an objectness read-out (the message names the file and
            the command that writes one).
    """
    how = "write it with `python -m training.pretrain.objectness --weights-dir DIR`"
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"{path} is not a readable objectness read-out ({exc}); {how}") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an objectness read-out (format {_FORMAT}); {how}")
    weight = payload["weight"]
    if not isinstance(weight, Tensor) or weight.ndim != 1:
        raise ValueError(f"{path}: weight must be a 1-D tensor; {how}")
    return ObjectnessFit(weight.float(), float(payload["bias"]), dict(payload.get("stats", {})))
