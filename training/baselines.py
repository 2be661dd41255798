"""Trivial baselines that every trained method must beat, as stand-ins for a model.

Each baseline answers :meth:`~affordance_core.model.AffordanceModel.infer` on the features of
a trained model's backbones, so :func:`training.evaluate.evaluate_model` scores it with the
same code, the same test images and the same metrics as the methods:

* ``uniform map``: the same value everywhere (KLD of a featureless guess), constant score;
* ``centre Gaussian``: an isotropic Gaussian in the frame's centre (the photographer's
  prior), constant score;
* ``object affinity alone``: the CLIP-role affinity of the action's ego prompt, min-max
  normalised, with its un-normalised peak cosine as the score (what calibration multiplies
  the CAM by, without any trained head).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from affordance_core.backbones import minmax
from affordance_core.model import AffordanceModel, Features

__all__ = ["BASELINES", "MapBaseline", "baselines_of", "centre_gaussian"]

BASELINES = ("uniform map", "centre Gaussian", "object affinity alone")


def centre_gaussian(size: int, sigma: float = 0.25) -> Tensor:
    """(size, size) isotropic Gaussian centred in the frame, sigma as a fraction of size."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))


class MapBaseline:
    """A baseline named in :data:`BASELINES`, on the backbones of ``model``.

    Args:
        name: one of :data:`BASELINES`.
        model: a trained model whose backbones (and, for the affinity, CLIP-role text
            embeddings) the baseline reads; its heads are never used.

    Raises:
        ValueError: an unknown name, or the affinity baseline without a CLIP-role backbone.
    """

    def __init__(self, name: str, model: AffordanceModel) -> None:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
        if name == "object affinity alone" and model.clip is None:
            raise ValueError("the object-affinity baseline needs a CLIP-role backbone")
        self.name = name
        self.base = model
        self.config = model.config
        self.dino, self.clip = model.dino, model.clip
        self.vocabulary = list(model.vocabulary)
        self.num_classes = model.num_classes
        # min-max would turn the uniform map into zeros; it is scored as it is
        self.minmax_maps = name != "uniform map"

    def infer(self, feats: Features, class_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Maps (N, A, h, w) float in [0, 1] and scores (N, A) for ``class_ids`` (N, A)."""
        n, a = class_ids.shape
        h, w = feats.keys.shape[-2:]
        device = feats.keys.device
        if self.name == "uniform map":
            return torch.ones(n, a, h, w, device=device), torch.full((n, a), 0.5, device=device)
        if self.name == "centre Gaussian":
            gauss = centre_gaussian(h).to(device)
            return gauss.expand(n, a, h, w), torch.full((n, a), 0.5, device=device)
        text = self.base.ego_text[class_ids].to(feats.clip.dtype)  # (N, A, Dc)
        affinity = torch.einsum("ndhw,nad->nahw", feats.clip, text).float()
        return minmax(affinity), affinity.flatten(2).amax(-1)

    def maps_from_features(self, feats: Features, class_ids: Tensor) -> Tensor:
        """(N, h, w) maps for one class id per image."""
        return self.infer(feats, class_ids.view(-1, 1))[0][:, 0]

    def __repr__(self) -> str:
        return f"MapBaseline({self.name!r})"


def baselines_of(model: AffordanceModel) -> dict[str, Any]:
    """Every baseline that ``model``'s backbones support, by name."""
    names = BASELINES if model.clip is not None else BASELINES[:2]
    return {name: MapBaseline(name, model) for name in names}
