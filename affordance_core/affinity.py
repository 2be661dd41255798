"""Object affinity: cosine between CLIP patch embeddings and an action prompt's embedding.

The ego affinity (``an item to X with``) says where the object is; SelectiveCL's exo affinity
A_exo weights it by the interaction cue around the hand or the exo action prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .model import AffordanceModel

__all__ = ["exo_object_affinity", "prompt_affinity"]


def prompt_affinity(clip_dense: Tensor, text: Tensor) -> Tensor:
    """Cosine between every patch embedding and per-image prompt embeddings.

    Args:
        clip_dense: (N, Dc, h, w) L2-normalised CLIP patch embeddings.
        text: (N, Dc) one prompt per image, or (N, A, Dc) A prompts per image, L2-normalised.

    Returns:
        (N, h, w) or (N, A, h, w) cosines in [-1, 1], in ``clip_dense``'s dtype.
    """
    text = text.to(clip_dense.dtype)
    if text.ndim == 2:
        return torch.einsum("ndhw,nd->nhw", clip_dense, text)
    return torch.einsum("ndhw,nad->nahw", clip_dense, text)


def exo_object_affinity(
    model: AffordanceModel, exo_clip: Tensor, exo_labels: Tensor, exo_to_ego: Tensor | None = None
) -> Tensor:
    """SelectiveCL's exo affinity A_exo: the 3x3 local mean (border-clipped) of the
    interaction cue's cosine times the ego-prompt cosine.

    The cue is the exo action prompt (the paper) or, with ``model.config.exo_cue == "hand"``,
    the hand prompt: object patches next to the hand then score highest.

    Args:
        model: the model whose cached prompt embeddings and ``exo_cue`` are used.
        exo_clip: (N, Dc, h, w) normalised CLIP patch embeddings of N exo images.
        exo_labels: (N,) int64 class ids.
        exo_to_ego: (N, h, w) the ego-prompt cosine when the caller already has it.

    Returns:
        (N, h, w) raw (unnormalised) affinities.
    """
    cue = model.affinity(exo_clip, exo_labels, "hand" if model.config.exo_cue == "hand" else "exo")
    if exo_to_ego is None:
        exo_to_ego = model.affinity(exo_clip, exo_labels, "ego")
    local = F.avg_pool2d(cue[:, None], 3, 1, 1, count_include_pad=False)[:, 0]
    return local * exo_to_ego
