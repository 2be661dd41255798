"""Pretrain the project's ``tiny`` backbones with dense supervision (``affordance-pretrain``).

Both models train on one fixed, pre-rendered set of synthetic pretraining scenes
(``affordance_core.synthetic.world.iter_pretrain_scenes``), never on a benchmark corpus and
never from affordance labels or affordance heatmaps:

* CLIP role: a multi-label sigmoid loss between every ClearCLIP patch embedding and a fixed
  text set (object captions, ego and exo action prompts). A patch is positive for the caption
  of the object covering it and for the prompts of every action that object affords (object
  level), weighted by the fraction of the patch the object covers; background patches are
  negative for every text. A global image-to-caption cross-entropy keeps the pooled image
  embedding and the text tower meaningful.
* DINO role: last-block keys are classified by a cosine prototype classifier into part types
  (plus background) using the majority part type of each patch, and the CLS->patch attention
  of every head is pulled towards the normalised object mask (KL divergence).

Modules: ``data`` (scenes, text vocabulary, augmentation, patch targets), ``losses``, ``loop``
(:func:`pretrain`) and ``cli`` (``affordance-pretrain``).

Usage: ``python -m training.pretrain --out weights/tiny`` (what ``make pretrain`` runs).
"""

from training.pretrain.data import (
    PretrainData,
    TextVocabulary,
    augment,
    build_pretrain_data,
    build_text_vocabulary,
    load_world,
    object_captions,
    patch_targets,
)
from training.pretrain.loop import PretrainConfig, pretrain
from training.pretrain.losses import clip_dense_losses, dino_dense_losses, within_image_contrast

__all__ = [
    "PretrainConfig",
    "PretrainData",
    "TextVocabulary",
    "augment",
    "build_pretrain_data",
    "build_text_vocabulary",
    "clip_dense_losses",
    "dino_dense_losses",
    "load_world",
    "object_captions",
    "patch_targets",
    "pretrain",
    "within_image_contrast",
]
