"""Pretraining data of the tiny backbones: the synthetic world, the pre-rendered scene set,
the CLIP role's text vocabulary, augmentation and per-patch targets."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from affordance_core.prompts import HAND_PROMPT, ego_prompt, exo_prompt
from affordance_core.tiny import TINY_GRID, TINY_IMAGE_SIZE

__all__ = [
    "PretrainData",
    "TextVocabulary",
    "augment",
    "build_pretrain_data",
    "build_text_vocabulary",
    "load_world",
    "object_captions",
    "patch_targets",
    "render_pretrain_data",
]


def load_world() -> Any:
    """The synthetic world as one namespace.

    Returns:
        Namespace with ``OBJECTS`` and ``PART_TYPES`` (lists of names), ``list_actions``,
        ``object_caption`` (from ``affordance_core.synthetic.world``) and
        ``iter_pretrain_scenes`` (from ``affordance_core.synthetic.corpus``).
    """
    world = importlib.import_module("affordance_core.synthetic.world")
    corpus = importlib.import_module("affordance_core.synthetic.corpus")
    return SimpleNamespace(
        OBJECTS=list(world.OBJECTS),
        PART_TYPES=list(world.PART_TYPES),
        list_actions=world.list_actions,
        object_caption=world.object_caption,
        iter_pretrain_scenes=corpus.iter_pretrain_scenes,
    )


def object_captions(world: Any, obj: str) -> list[str]:
    """Object-level captions of ``obj``: the plain name caption, then the one with actions."""
    return [world.object_caption(obj, with_actions=False), world.object_caption(obj)]


@dataclass
class PretrainData:
    """A pre-rendered pretraining set held in memory.

    Attributes:
        images: (N, 3, S, S) uint8 RGB.
        object_mask: (N, S, S) bool, pixels of the object.
        part_index: (N, S, S) int8, part-type index into ``part_types``, -1 off the object parts.
        obj_index: (N,) int64 index into ``objects``.
        objects: object names (the world's ``OBJECTS`` order).
        part_types: part-type names (the world's ``PART_TYPES`` order).
        hand_mask: (N, S, S) bool, pixels of the person's hand (exo scenes; all False in ego
            scenes), or None when the scenes carry no hand masks.
    """

    images: Tensor
    object_mask: Tensor
    part_index: Tensor
    obj_index: Tensor
    objects: list[str]
    part_types: list[str]
    hand_mask: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _resize_scene_arrays(
    image: np.ndarray, mask: np.ndarray, parts: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if image.shape[0] == size and image.shape[1] == size:
        return image, mask, parts
    import cv2

    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    parts = cv2.resize(parts.astype(np.int16), (size, size), interpolation=cv2.INTER_NEAREST)
    return image, _resize_mask(mask, size), parts


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) bool, nearest neighbour."""
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    import cv2

    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


def build_pretrain_data(
    scenes: Iterable[Any],
    objects: Sequence[str],
    part_types: Sequence[str],
    size: int = TINY_IMAGE_SIZE,
) -> PretrainData:
    """Stack rendered scenes into a :class:`PretrainData` (affordance maps are ignored).

    Args:
        scenes: objects with ``image`` (H, W, 3) uint8, ``object_mask`` (H, W) bool,
            ``part_instance`` (H, W) int part-type index or -1, ``obj`` (a name in
            ``objects``) and optionally ``hand_mask`` ((H, W) bool or None).
        objects: object vocabulary.
        part_types: part-type vocabulary (the range of ``part_instance``).
        size: output side in pixels; scenes of another size are resized.
    """
    obj_to_idx = {o: i for i, o in enumerate(objects)}
    imgs, masks, parts, idx, hands = [], [], [], [], []
    for sc in scenes:
        if sc.obj not in obj_to_idx:
            raise ValueError(f"scene object {sc.obj!r} not in the object vocabulary")
        im, m, p = _resize_scene_arrays(
            np.asarray(sc.image), np.asarray(sc.object_mask), np.asarray(sc.part_instance), size
        )
        hand = getattr(sc, "hand_mask", None)
        hand = np.zeros(m.shape, bool) if hand is None else _resize_mask(np.asarray(hand), size)
        imgs.append(im)
        masks.append(m)
        parts.append(p)
        hands.append(hand)
        idx.append(obj_to_idx[sc.obj])
    if not imgs:
        raise ValueError("no scenes to build a pretraining set from")
    part_index = torch.from_numpy(np.stack(parts).astype(np.int8))
    if int(part_index.max()) >= len(part_types):
        raise ValueError("part_instance holds an index outside the part-type vocabulary")
    return PretrainData(
        images=torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(),
        object_mask=torch.from_numpy(np.stack(masks).astype(bool)),
        part_index=part_index,
        obj_index=torch.tensor(idx, dtype=torch.int64),
        objects=list(objects),
        part_types=list(part_types),
        hand_mask=torch.from_numpy(np.stack(hands).astype(bool)),
    )


def _render_chunk(args: tuple[int, int, int, int]) -> PretrainData:
    from affordance_core.synthetic.corpus import pretrain_scene
    from affordance_core.synthetic.world import OBJECTS, PART_TYPES

    seed, start, stop, size = args
    scenes = (pretrain_scene(seed, i, size) for i in range(start, stop))
    return build_pretrain_data(scenes, list(OBJECTS), list(PART_TYPES), size)


def render_pretrain_data(
    seed: int, n: int, size: int = TINY_IMAGE_SIZE, workers: int = 1
) -> PretrainData:
    """Render scenes ``0 .. n-1`` of the pretraining seed space
    (:func:`~affordance_core.synthetic.corpus.pretrain_scene`) into a :class:`PretrainData`,
    in ``workers`` processes; the result does not depend on ``workers``.

    Raises:
        ValueError: ``n < 1`` or ``workers < 1``.
    """
    if n < 1 or workers < 1:
        raise ValueError(f"need n >= 1 scenes and workers >= 1, got n={n}, workers={workers}")
    bounds = np.linspace(0, n, min(workers, n) * 4 + 1).astype(int)
    chunks = [(seed, int(a), int(b), size) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if workers == 1:
        parts = [_render_chunk(c) for c in chunks]
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, chunks)
    return PretrainData(
        images=torch.cat([p.images for p in parts]),
        object_mask=torch.cat([p.object_mask for p in parts]),
        part_index=torch.cat([p.part_index for p in parts]),
        obj_index=torch.cat([p.obj_index for p in parts]),
        objects=parts[0].objects,
        part_types=parts[0].part_types,
        hand_mask=torch.cat([p.hand_mask for p in parts]),  # type: ignore[misc]
    )


@dataclass
class TextVocabulary:
    """The fixed text set of the CLIP role and which texts each object makes positive.

    Attributes:
        texts: T strings: O plain object captions, O captions with actions, then the ego
            prompts and the exo prompts of every action, then (``has_hand``) the hand prompt.
        positives: (O, T) float32 in {0, 1}; row o marks o's two captions and the ego/exo
            prompts of the actions o affords (the hand prompt's column is 0: its positives
            are the hand's patches, not an object).
        n_objects: O; ``texts[:O]`` are the plain captions, in object order.
        actions: the action vocabulary (order of the ego and exo blocks).
        has_hand: ``texts[-1]`` is ``HAND_PROMPT``.
    """

    texts: list[str]
    positives: Tensor
    n_objects: int
    actions: list[str]
    has_hand: bool = False


def build_text_vocabulary(world: Any, hand: bool = False) -> TextVocabulary:
    """Build the CLIP-role text set from the world's objects and actions (object level only),
    plus the action-agnostic hand prompt when ``hand``."""
    objects = list(world.OBJECTS)
    actions = sorted({a for o in objects for a in world.list_actions(o)})
    caps = [object_captions(world, o) for o in objects]
    texts = [c[0] for c in caps] + [c[1] for c in caps]
    texts += [ego_prompt(a) for a in actions] + [exo_prompt(a) for a in actions]
    texts += [HAND_PROMPT] if hand else []
    pos = torch.zeros(len(objects), len(texts))
    n_o, n_a = len(objects), len(actions)
    for i, o in enumerate(objects):
        pos[i, i] = pos[i, n_o + i] = 1.0
        for a in world.list_actions(o):
            j = actions.index(a)
            pos[i, 2 * n_o + j] = 1.0
            pos[i, 2 * n_o + n_a + j] = 1.0
    return TextVocabulary(
        texts=texts, positives=pos, n_objects=n_o, actions=actions, has_hand=hand
    )


def augment(
    images: Tensor,
    object_mask: Tensor,
    part_index: Tensor,
    gen: torch.Generator,
    min_scale: float = 0.7,
    hand_mask: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """Random horizontal flip and random square crop (resized back), same for masks.

    Args:
        images: (B, 3, S, S) float in [0, 1].
        object_mask: (B, S, S) bool.
        part_index: (B, S, S) int (-1 = none).
        gen: CPU generator for reproducibility.
        min_scale: smallest crop side as a fraction of S.
        hand_mask: optional (B, S, S) bool, cropped like ``object_mask``. It does not change
            the random draws, so the other outputs are the same with or without it.

    Returns:
        The augmented ``images`` (float, bilinear), ``object_mask`` (bool) and ``part_index``
        (int64), all at the input size (masks sampled nearest); then the augmented
        ``hand_mask`` (bool) when one was given.
    """
    b = images.shape[0]
    scale = min_scale + (1.0 - min_scale) * torch.rand(b, generator=gen)
    shift = (1.0 - scale)[:, None] * (2.0 * torch.rand(b, 2, generator=gen) - 1.0)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    channels = [object_mask.float(), part_index.float()]
    if hand_mask is not None:
        channels.append(hand_mask.float())
    labels = F.grid_sample(
        torch.stack(channels, dim=1),
        grid,
        mode="nearest",
        padding_mode="border",
        align_corners=False,
    )
    if hand_mask is None:
        return out, labels[:, 0] > 0.5, labels[:, 1].round().long()
    return out, labels[:, 0] > 0.5, labels[:, 1].round().long(), labels[:, 2] > 0.5


def patch_targets(
    object_mask: Tensor, part_index: Tensor, n_part_types: int, grid: int = TINY_GRID
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch targets on a grid x grid patch layout.

    Args:
        object_mask: (B, S, S) bool.
        part_index: (B, S, S) int, -1 where no part.
        n_part_types: P; background becomes class P.
        grid: patches per side (S must be divisible by it).

    Returns:
        obj_frac: (B, grid, grid) float in [0, 1], fraction of each patch on the object.
        part_label: (B, grid, grid) int64 in [0, P], majority part type (P = background).
        purity: (B, grid, grid) float in (0, 1], fraction of the patch with the majority label.
    """
    obj_frac = F.adaptive_avg_pool2d(object_mask.float()[:, None], grid)[:, 0]
    lab = torch.where(part_index < 0, torch.full_like(part_index, n_part_types), part_index)
    onehot = F.one_hot(lab.long(), n_part_types + 1).permute(0, 3, 1, 2).float()
    hist = F.adaptive_avg_pool2d(onehot, grid)
    purity, part_label = hist.max(dim=1)
    return obj_frac, part_label, purity
