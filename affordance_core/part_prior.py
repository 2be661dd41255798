"""The hand-region part prior: which action's part a DINO-key patch looks like.

Image-level labels say which action an exocentric image shows, not where. The hand does: in an
exo image of action ``a`` the hand rests on the part that affords ``a``, so the object patches
next to the hand are examples of ``a``'s part. A linear softmax classifier over the actions,
fitted on the L2-normalised DINO keys of those patches (scikit-learn logistic regression),
gives ``p(a | patch)`` for any image; :meth:`AffordanceModel.infer
<affordance_core.model.AffordanceModel.infer>` multiplies the method's min-max map by it.

Where the hand is comes from the frozen backbones (the CLIP-role hand prompt's patch affinity
times the DINO saliency, optionally dilated: :func:`hand_patch`); no part mask, affordance map
or hand mask is read. The backbones are frozen, so the prior depends only on the training exo
images: it is fitted once, before the heads train, and stored with them
(``AffordanceModel.part_prior``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .backbones import minmax

__all__ = [
    "PartPriorFit",
    "fit_part_prior",
    "hand_patch",
    "interaction_patches",
    "part_descriptors",
]


def part_descriptors(keys: Tensor) -> Tensor:
    """(N, D, h, w) float DINO keys, L2-normalised over D: what the prior classifies."""
    return F.normalize(keys.float(), dim=1)


def hand_patch(hand_affinity: Tensor, saliency: Tensor, reach: int = 0) -> Tensor:
    """Where the hand is in each exocentric image: the patch maximising
    ``minmax(hand_affinity)`` times the saliency max-pooled over ``reach`` patches.

    With ``reach = 0`` the hand must lie on a salient patch; with ``reach >= 1`` it may lie up
    to ``reach`` patches beside the salient object (a hand holds a part from the side, and
    its own patches are not object saliency).

    Args:
        hand_affinity: (N, h, w) cosine between patch embeddings and the hand prompt.
        saliency: (N, h, w) object saliency in [0, 1].
        reach: patches (>= 0) the hand may lie from a salient patch.

    Returns:
        (N,) int64 flat patch index (row-major).
    """
    if reach < 0:
        raise ValueError(f"reach must be >= 0, got {reach}")
    near_object = F.max_pool2d(saliency[:, None], 2 * reach + 1, 1, reach)[:, 0]
    return (minmax(hand_affinity) * near_object).flatten(1).argmax(1)


def interaction_patches(
    hand_affinity: Tensor, saliency: Tensor, radius: int = 1, reach: int = 0
) -> Tensor:
    """The patches an exocentric image's hand touches.

    The hand is :func:`hand_patch` (``reach`` patches from the salient object at most); the
    interaction patches are the salient patches (saliency above the image's mean) within
    ``radius`` patches of it (a (2 radius + 1)^2 square, the hand patch included).

    Args:
        hand_affinity: (N, h, w) cosine between patch embeddings and the hand prompt.
        saliency: (N, h, w) object saliency in [0, 1].
        radius: neighbourhood half-width in patches (>= 0).
        reach: see :func:`hand_patch`.

    Returns:
        (N, h, w) bool.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    n, h, w = saliency.shape
    hand = hand_patch(hand_affinity, saliency, reach)
    peak = F.one_hot(hand, h * w).view(n, 1, h, w).float()
    near = F.max_pool2d(peak, 2 * radius + 1, 1, radius)[:, 0] > 0
    return near & (saliency > saliency.mean((1, 2), keepdim=True))


@dataclass
class PartPriorFit:
    """A fitted prior and what it was fitted on.

    Attributes:
        weight: (C, D) float32 classifier weights over the L2-normalised keys.
        bias: (C,) float32; actions without any interaction patch get ``-30`` (never chosen).
        n_images: exocentric images read.
        n_patches: interaction patches the classifier was fitted on (after subsampling).
        patches_per_action: action id -> interaction patches found.
        train_accuracy: share of the fitted patches classified as their image's action.
    """

    weight: Tensor
    bias: Tensor
    n_images: int
    n_patches: int
    patches_per_action: dict[int, int] = field(default_factory=dict)
    train_accuracy: float = float("nan")

    def summary(self, vocabulary: list[str]) -> dict[str, object]:
        """JSON-ready statistics (no weights)."""
        return {
            "n_images": self.n_images,
            "n_patches": self.n_patches,
            "train_accuracy": round(self.train_accuracy, 4),
            "patches_per_action": {
                vocabulary[c]: n for c, n in sorted(self.patches_per_action.items())
            },
        }


def fit_part_prior(
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    num_classes: int,
    *,
    inverse_reg: float = 0.3,
    max_patches: int = 200_000,
    seed: int = 0,
) -> PartPriorFit:
    """Fit the part prior: a softmax over the actions of the L2-normalised descriptors of each
    image's region, labelled with the image's action.

    Args:
        batches: ``(descriptors (B, D, h, w), region (B, h, w) bool, labels (B,) int64)`` per
            batch of exocentric training images; the region is normally
            :func:`interaction_patches` (diagnostics pass other regions).
        num_classes: C, the vocabulary size.
        inverse_reg: scikit-learn's ``C`` (inverse L2 strength) of the logistic regression.
        max_patches: at most this many patches (a uniform random subset) enter the fit.
        seed: subsampling and solver seed.

    Returns:
        the fitted weights and statistics.

    Raises:
        ValueError: no interaction patch was found, or all belong to one action.
    """
    from sklearn.linear_model import LogisticRegression

    descriptors, targets, n_images = [], [], 0
    for keys, region, labels in batches:
        img, row, col = region.nonzero(as_tuple=True)
        descriptors.append(part_descriptors(keys)[img, :, row, col].cpu())
        targets.append(labels.to(img.device)[img].cpu())
        n_images += int(labels.shape[0])
    if not descriptors or sum(len(t) for t in targets) == 0:
        raise ValueError("the part prior found no interaction patch in the exocentric images")
    x = torch.cat(descriptors).numpy()
    y = torch.cat(targets).numpy()
    counts = {int(c): int(n) for c, n in zip(*np.unique(y, return_counts=True), strict=True)}
    if len(counts) < 2:
        raise ValueError(
            f"the part prior needs interaction patches of at least two actions, found only "
            f"action id {next(iter(counts))}"
        )
    if len(y) > max_patches:
        keep = np.random.default_rng(seed).choice(len(y), max_patches, replace=False)
        x, y = x[keep], y[keep]
    classifier = LogisticRegression(C=inverse_reg, max_iter=3000, random_state=seed)
    classifier.fit(x, y)
    weight = torch.zeros(num_classes, x.shape[1])
    bias = torch.full((num_classes,), -30.0)
    seen = torch.as_tensor(classifier.classes_, dtype=torch.long)
    coef = torch.as_tensor(classifier.coef_, dtype=torch.float32)
    intercept = torch.as_tensor(classifier.intercept_, dtype=torch.float32)
    if len(seen) == 2:  # binary: p(second) = sigmoid(w x + b) = softmax([0, w x + b])
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    weight[seen] = coef
    bias[seen] = intercept
    return PartPriorFit(
        weight=weight,
        bias=bias,
        n_images=n_images,
        n_patches=int(len(y)),
        patches_per_action=counts,
        train_accuracy=float(classifier.score(x, y)),
    )
