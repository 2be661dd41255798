"""Frame objectness: is there an object in this frame at all?

The presence score of an action (:meth:`AffordanceModel.infer
<affordance_core.model.AffordanceModel.infer>`) is fitted on validation images, nearly all of
which show an object, so it ranks "this object affords the action" well but has seen few frames
with no object: on an empty, cluttered table the action's CAM and prompt affinity still peak
somewhere. The objectness head answers the other half of the question. With it the score is
``P(object in frame) * P(action afforded | object)``.

The head (:class:`ObjectnessHead`) reads the frozen backbones' patch grid and is trained with
binary cross-entropy on frames with an object and background-only frames (object presence
only: no affordance label, part or heatmap), among them *hard* background frames, mined from
many rendered ones by a first, linear read-out of a frame descriptor
(:func:`fit_linear_objectness`). It belongs to the backbone weights it was trained on:
``affordance-train`` copies it from :func:`objectness_file` in the weights folder into the
model's heads, so a checkpoint carries it. For the ``tiny`` tier
``python -m training.pretrain.objectness`` trains it on pretraining-space synthetic scenes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import cls_saliency
from .files import atomic_write

__all__ = [
    "LinearObjectness",
    "ObjectnessFit",
    "ObjectnessHead",
    "descriptor_dim",
    "fit_linear_objectness",
    "frame_descriptor",
    "load_objectness",
    "objectness_file",
    "save_objectness",
    "train_objectness",
]

_REFIT = "write it with `python -m training.pretrain.objectness --weights-dir DIR`"


def objectness_file(preset: str) -> str:
    """File name of a preset's objectness head beside its backbone weights
    (``objectness_tiny.pt`` in ``weights/tiny``)."""
    return f"objectness_{preset}.pt"


#: 1: a linear read-out of :func:`frame_descriptor` (no longer read); 2: :class:`ObjectnessHead`.
_FORMAT = 2
#: Output bias of a head that was never trained: P(object) = 1 - 1e-13, no gating.
UNFITTED_LOGIT = 30.0


class ObjectnessHead(nn.Module):
    """``P(object in frame)`` logit from the backbones' patch grid.

    Per patch, the L2-normalised DINO-role key, the CLIP-role embedding and the saliency heads'
    CLS attention are stacked, normalised and projected; two 3x3 convolutions give each patch
    its neighbours (whether parts join into one object); the grid's mean and maximum feed a
    linear output. Built unfitted by default: zero output weights and bias
    :data:`UNFITTED_LOGIT`, so every frame gets ``P(object)`` ~ 1 until a trained state is
    loaded.

    Args:
        key_dim: D of the (N, D, h, w) keys.
        clip_dim: Dc of the (N, Dc, h, w) CLIP patch embeddings.
        heads: K saliency heads of the (N, K, h, w) CLS attention.
        hidden: channels after the projection.
        unfitted: start as the pass-through (False: PyTorch's default initialisation, for
            training).
    """

    def __init__(
        self, key_dim: int, clip_dim: int, heads: int, hidden: int = 64, unfitted: bool = True
    ) -> None:
        super().__init__()
        self.dims = (int(key_dim), int(clip_dim), int(heads), int(hidden))
        channels = key_dim + clip_dim + heads
        self.norm = nn.GroupNorm(1, channels)
        self.project = nn.Conv2d(channels, hidden, 1)
        self.context = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.GELU(),
        )
        self.out = nn.Linear(2 * hidden, 1)
        if unfitted:
            nn.init.zeros_(self.out.weight)
            nn.init.constant_(self.out.bias, UNFITTED_LOGIT)

    def forward(self, keys: Tensor, cls_attention: Tensor, clip: Tensor) -> Tensor:
        """(N,) logits of (N, D, h, w) keys, (N, K, h, w) CLS attention and (N, Dc, h, w) CLIP
        patch embeddings (any float dtype; computed in the head's dtype)."""
        dtype = self.out.weight.dtype
        tokens = torch.cat(
            [F.normalize(keys.to(dtype), dim=1), clip.to(dtype), cls_attention.to(dtype)], 1
        )
        x = self.context(F.gelu(self.project(self.norm(tokens))))
        return self.out(torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1))[:, 0]


@dataclass
class ObjectnessFit:
    """A trained :class:`ObjectnessHead`: its constructor arguments and state.

    Attributes:
        dims: (key_dim, clip_dim, heads, hidden) of the head.
        state: the head's ``state_dict`` (float32 CPU tensors).
        stats: what the training saw and how well the head separates held-out frames.
    """

    dims: tuple[int, int, int, int]
    state: dict[str, Tensor]
    stats: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, head: ObjectnessHead, stats: dict[str, Any] | None = None) -> ObjectnessFit:
        """The fit holding a head's current state (an unfitted head gives a pass-through)."""
        state = {k: v.detach().float().cpu().clone() for k, v in head.state_dict().items()}
        return cls(head.dims, state, dict(stats or {}))

    def head(self) -> ObjectnessHead:
        """A new head in eval mode with this state."""
        head = ObjectnessHead(*self.dims)
        head.load_state_dict(self.state)
        return head.eval()


def train_objectness(
    objects: Sequence[Tensor],
    backgrounds: Sequence[Tensor],
    *,
    hidden: int = 64,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ObjectnessFit:
    """Train an :class:`ObjectnessHead` with binary cross-entropy (AdamW, one-cycle schedule).

    Args:
        objects: (keys, cls_attention, clip) of frames with an object: (N1, D, h, w),
            (N1, K, h, w), (N1, Dc, h, w), any float dtype (float16 saves memory).
        backgrounds: the same for background-only frames (N0 of them).
        hidden, epochs, batch_size, lr, weight_decay: the head and its optimiser.
        seed: initialisation and batch order.
        device: where the head trains (the features stay where they are; each batch moves).
        progress: a tqdm bar over epochs.

    Returns:
        The fit; ``stats`` holds the frame counts, the settings and the last epoch's mean loss.

    Raises:
        ValueError: on an empty class, mismatched shapes or non-positive ``epochs``.
    """
    from tqdm import tqdm

    if len(objects) != 3 or len(backgrounds) != 3:
        raise ValueError("objects and backgrounds must each be (keys, cls_attention, clip)")
    if any(a.shape[1:] != b.shape[1:] for a, b in zip(objects, backgrounds, strict=True)):
        raise ValueError(
            "objects and backgrounds must come from the same backbones: got feature shapes "
            f"{[tuple(t.shape) for t in objects]} and {[tuple(t.shape) for t in backgrounds]}"
        )
    n_objects, n_backgrounds = len(objects[0]), len(backgrounds[0])
    if n_objects < 1 or n_backgrounds < 1:
        raise ValueError(
            f"need frames of each kind, got {n_objects} with an object and {n_backgrounds} "
            "background-only"
        )
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    keys, attn, clip = (torch.cat([a, b]) for a, b in zip(objects, backgrounds, strict=True))
    labels = torch.cat([torch.ones(n_objects), torch.zeros(n_backgrounds)])
    torch.manual_seed(seed)
    head = ObjectnessHead(keys.shape[1], clip.shape[1], attn.shape[1], hidden, unfitted=False)
    head.to(device)
    n = len(labels)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    order = torch.Generator().manual_seed(seed)
    head.train()
    for _ in tqdm(range(epochs), desc="objectness head", unit="epoch", disable=not progress):
        perm, total = torch.randperm(n, generator=order), 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            batch = (t[idx].to(device) for t in (keys, attn, clip))
            logits = head(*batch)
            loss = F.binary_cross_entropy_with_logits(logits, labels[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
    stats = {
        "n_objects": n_objects,
        "n_backgrounds": n_backgrounds,
        "epochs": epochs,
        "hidden": hidden,
        "lr": lr,
        "weight_decay": weight_decay,
        "last_epoch_loss": total / n,
    }
    return ObjectnessFit.of(head.eval(), stats)


def descriptor_dim(key_dim: int, clip_dim: int, heads: int) -> int:
    """Length of :func:`frame_descriptor` for D-dim keys, Dc-dim CLIP patches and K heads."""
    return 3 * int(key_dim) + 2 * int(clip_dim) + 2 * int(heads)


def frame_descriptor(keys: Tensor, cls_attention: Tensor, clip: Tensor) -> Tensor:
    """One vector per frame summarising where and what the backbones see (the input of the
    linear read-out that mines hard background frames).

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
class LinearObjectness:
    """A linear read-out ``P(object) = sigmoid(weight . descriptor + bias)`` of
    :func:`frame_descriptor`; picks the hard background frames the head is trained on.

    Attributes:
        weight: (F,) float32 over the raw descriptor (standardisation folded in).
        bias: the logit's bias.
        stats: what the fit saw and how well it separates its own held-out frames.
    """

    weight: Tensor
    bias: float
    stats: dict[str, Any] = field(default_factory=dict)

    def logit(self, descriptors: Tensor) -> Tensor:
        """(N,) objectness logits of (N, F) descriptors."""
        return descriptors.float() @ self.weight.to(descriptors.device) + self.bias


def fit_linear_objectness(
    objects: Tensor, backgrounds: Tensor, *, c: float = 0.1, seed: int = 0
) -> LinearObjectness:
    """Fit the linear read-out: logistic regression (scikit-learn, L2).

    The descriptors are standardised; ``c`` is the inverse L2 strength (small: the descriptor
    is long and correlated). A 3-fold cross-validated AUROC and accuracy at 0.5 go into
    ``stats``.

    Args:
        objects: (N1, F) descriptors of frames with an object.
        backgrounds: (N0, F) descriptors of background-only frames.
        c: inverse regularisation strength (> 0).
        seed: fold assignment of the cross-validation.

    Raises:
        ValueError: on fewer than 3 frames of a class, mismatched widths or a non-positive
            ``c``.
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
    return LinearObjectness(torch.from_numpy(weight).float(), bias, stats)


def save_objectness(fit: ObjectnessFit, path: str | os.PathLike, **meta: Any) -> Path:
    """Write a trained head atomically (``torch.save`` of plain tensors and numbers)."""
    path = Path(path)
    payload = {
        "format": _FORMAT,
        "dims": list(fit.dims),
        "state": {k: v.detach().float().cpu() for k, v in fit.state.items()},
        "stats": fit.stats,
        "meta": meta,
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_objectness(path: str | os.PathLike) -> ObjectnessFit:
    """Read :func:`save_objectness` output.

    Raises:
        ValueError: the file is not an objectness head of this version (the message names the
            file and the command that writes one).
    """
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"{path} is not a readable objectness head ({exc}); {_REFIT}") from None
    if isinstance(payload, dict) and payload.get("format") == 1:
        raise ValueError(
            f"{path} is a linear objectness read-out of an older version; the gate is now a "
            f"trained head: {_REFIT}"
        )
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not an objectness head (format {_FORMAT}); {_REFIT}")
    dims, state = payload.get("dims"), payload.get("state")
    if not isinstance(dims, list) or len(dims) != 4 or not isinstance(state, dict):
        raise ValueError(f"{path}: dims or state missing; {_REFIT}")
    fit = ObjectnessFit(tuple(int(d) for d in dims), dict(state), dict(payload.get("stats", {})))
    try:
        fit.head()
    except RuntimeError as exc:
        raise ValueError(f"{path}: the state does not fit dims {dims} ({exc}); {_REFIT}") from None
    return fit
