"""Fit a model's hand-region part prior on the exocentric images of its training set."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from tqdm import tqdm

from affordance_core.data.datasets import AffordanceTrainDataset
from affordance_core.data.transforms import center_resize, load_rgb, to_tensor
from affordance_core.model import AffordanceModel, Features
from affordance_core.part_prior import fit_part_prior, interaction_patches

__all__ = ["fit_training_part_prior"]

logger = logging.getLogger(__name__)


def _exo_features(
    model: AffordanceModel,
    dataset: AffordanceTrainDataset,
    cache: Any,
    device: torch.device,
    batch_size: int,
    progress: bool,
) -> Iterator[tuple[Features, torch.Tensor]]:
    """Backbone features (plain view) and labels of every readable exo image, in batches."""
    samples = [(path, int(label)) for (path, _, _), label in zip(dataset.samples, dataset.labels)]
    bar = tqdm(total=len(samples), desc="part prior", unit="img", disable=not progress)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        bar.update(len(chunk))
        if cache is not None:
            rows = [(cache.get(p, 0), y) for p, y in chunk if str(p) in cache.index]
            if not rows:
                continue
            parts = cache.unpack(torch.stack([r for r, _ in rows]).float().to(device))
            feats = Features(parts["keys"], parts["attn"], parts.get("clip"))
        else:
            images, rows = [], []
            for path, label in chunk:
                image = load_rgb(path)
                if image is None:
                    continue
                images.append(to_tensor(center_resize(image, model.image_size)))
                rows.append((None, label))
            if not images:
                continue
            with torch.no_grad():
                feats = model.extract(torch.stack(images).to(device))
        yield feats, torch.tensor([y for _, y in rows], device=device)
    bar.close()


def fit_training_part_prior(
    model: AffordanceModel,
    dataset: AffordanceTrainDataset,
    *,
    cache: Any = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit ``model``'s part prior on the dataset's exo images and load it into the model.

    Args:
        model: a model built with ``part_prior=True`` (and a CLIP-role backbone).
        dataset: the training set; every exo image with its action label is used once.
        cache: the run's :class:`~affordance_core.feature_cache.FeatureCache` (its plain view
            is read instead of running the backbones), or None.
        device: where the backbones run.

    Returns:
        :meth:`~affordance_core.part_prior.PartPriorFit.summary` statistics.
    """
    device = torch.device(device)

    def batches():
        for feats, labels in _exo_features(model, dataset, cache, device, batch_size, progress):
            with torch.no_grad():
                hand = model.affinity(feats.clip, labels, "hand")
            region = interaction_patches(
                hand, feats.saliency(), reach=model.config.part_prior_hand_reach
            )
            yield feats.keys, region, labels

    fit = fit_part_prior(batches(), model.num_classes)
    model.set_part_prior(fit)
    summary = fit.summary(model.vocabulary)
    logger.info(
        "part prior: %d interaction patches from %d exo images, training accuracy %.3f",
        summary["n_patches"],
        summary["n_images"],
        summary["train_accuracy"],
    )
    return summary
