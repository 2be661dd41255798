"""AGD20K-layout datasets: weakly supervised training items and GT-paired test images.

Layout and vocabularies: :mod:`affordance_core.data.vocab`. Images come out as float32
(3, S, S) tensors in [0, 1], RGB, not normalised (each backbone normalises on its own).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from affordance_core.data.transforms import (
    center_resize,
    load_gray,
    load_rgb,
    to_tensor,
    train_augment,
)
from affordance_core.data.vocab import (
    IMAGE_EXTENSIONS,
    LAYOUT_HELP,
    list_subdirs,
    resolve_vocabulary,
    split_dir,
)
from affordance_core.metrics import EVAL_SIZE, prepare_gt

__all__ = ["AffordanceTestDataset", "AffordanceTrainDataset", "BackgroundFrames", "holdout_split"]

logger = logging.getLogger(__name__)

_MAX_ITEM_RETRIES = 10


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise ValueError(f"missing directory {path}; {LAYOUT_HELP}")


def _check_vocabulary(vocabulary: Sequence[str], found: Sequence[str], where: Path) -> list[str]:
    vocab = list(vocabulary)
    if not vocab or len(set(vocab)) != len(vocab):
        raise ValueError(f"vocabulary must be a non-empty list of unique names, got {vocab}")
    unknown = sorted(set(found) - set(vocab))
    if unknown:
        raise ValueError(
            f"affordance folders {unknown} under {where} are not in the vocabulary "
            f"{vocab}; pass a vocabulary that contains them or remove the folders"
        )
    return vocab


@dataclass(frozen=True)
class _Group:
    """One <aff>/<obj> folder pair of the trainset."""

    aff: str
    obj: str
    label: int
    exo: tuple[Path, ...]
    ego: tuple[Path, ...]


class AffordanceTrainDataset(Dataset):
    """Weakly supervised training items: one per exocentric image.

    An item keyed by exocentric image ``trainset/exocentric/<aff>/<obj>/<img>`` holds

    * ``ego``: float32 (3, S, S) in [0, 1], an egocentric image drawn uniformly at random from
      ``trainset/egocentric/<aff>/<obj>/`` on every access;
    * ``exo``: float32 (E, 3, S, S) in [0, 1], the keyed image first, then E - 1 more from the
      same folder (without replacement and never the keyed one when the folder holds more
      than E images, otherwise with replacement);
    * ``label``: int64 scalar tensor, the vocabulary index of ``<aff>``;
    * ``skipped``: int64 scalar tensor, number of unreadable files replaced while building
      the item;
    * ``index``: int64 scalar tensor, the item index.

    With ``augment`` every image is augmented independently (shorter side to
    ``round(S * 256 / 224)``, random S x S crop, horizontal flip p = 0.5); without it each
    image is resized to S x S.

    Exocentric images whose ``<aff>/<obj>`` has no egocentric images are dropped at
    construction (one warning with the count). An unreadable or truncated file is logged
    (first 5, then every 100th), added to :attr:`corrupt_files` and replaced by another image
    of its folder, or the whole item by another one when its folder has no readable image
    left; an epoch never stops on a bad file. With DataLoader workers each worker keeps its
    own :attr:`corrupt_files`.

    Randomness: each access seeds a NumPy generator from (``seed``, index, an access counter,
    the DataLoader worker seed), so a run is reproducible given ``torch.manual_seed``.

    Args:
        root: dataset root (see :func:`affordance_core.data.vocab.split_dir`).
        split: "Seen", "Unseen", "HICO-IIF" or the name of a user's split directory.
        image_size: output side S in pixels (224 paper tier, 112 tiny tier).
        vocabulary: class names in id order; default :func:`resolve_vocabulary`.
        num_exo: exocentric images per item E.
        augment: apply the random training augmentation.
        seed: base seed of the per-access generators.
        indices: keep only these items (indices into the full item list, e.g. one side of
            :func:`holdout_split`), in the given order.

    Attributes:
        vocabulary: class names in id order.
        samples: ``(exo_path, aff, obj)`` of every item, in item order.
        corrupt_files: files found unreadable or truncated in this process.

    Raises:
        ValueError: on a missing root or layout, an affordance folder without images, an
            affordance folder missing from ``vocabulary``, no usable item at all, or
            ``indices`` out of range.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int,
        vocabulary: Sequence[str] | None = None,
        num_exo: int = 3,
        augment: bool = True,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ) -> None:
        if int(image_size) < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if int(num_exo) < 1:
            raise ValueError(f"num_exo must be >= 1, got {num_exo}")
        self.root = Path(root)
        self.split = split
        self.image_size = int(image_size)
        self.num_exo = int(num_exo)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.corrupt_files: set[Path] = set()
        self._bad_events = 0
        self._accesses = 0

        base = split_dir(self.root, split)
        exo_root = base / "trainset" / "exocentric"
        ego_root = base / "trainset" / "egocentric"
        _require_dir(exo_root)
        _require_dir(ego_root)
        affordances = list_subdirs(exo_root)
        if not affordances:
            raise ValueError(f"no affordance folders under {exo_root}; {LAYOUT_HELP}")
        if vocabulary is None:
            vocabulary = resolve_vocabulary(self.root, split)
        self.vocabulary = _check_vocabulary(vocabulary, affordances, exo_root)

        groups: list[_Group] = []
        dropped_images, dropped_folders = 0, []
        for aff in affordances:
            label = self.vocabulary.index(aff)
            found_any = False
            for obj in list_subdirs(exo_root / aff):
                exo = _list_images(exo_root / aff / obj)
                if not exo:
                    continue
                found_any = True
                ego = _list_images(ego_root / aff / obj)
                if not ego:
                    dropped_images += len(exo)
                    dropped_folders.append(f"{aff}/{obj}")
                    continue
                groups.append(_Group(aff, obj, label, tuple(exo), tuple(ego)))
            if not found_any:
                raise ValueError(
                    f"affordance folder {exo_root / aff} holds no images under "
                    f"<obj>/ subfolders; remove it or add images "
                    f"({exo_root / aff}/<obj>/*.jpg)"
                )
        if dropped_images:
            logger.warning(
                "dropped %d exocentric images in %d <aff>/<obj> folders that have no "
                "egocentric images under %s (e.g. %s)",
                dropped_images,
                len(dropped_folders),
                ego_root,
                ", ".join(dropped_folders[:3]),
            )
        if not groups:
            raise ValueError(
                f"no usable training items under {base / 'trainset'}: no "
                f"<aff>/<obj> folder has both exocentric and egocentric images"
            )
        self.dropped_items = dropped_images
        self._groups = groups
        sizes = np.array([len(g.exo) for g in groups])
        self._item_group = np.repeat(np.arange(len(groups)), sizes)  # (N,)
        self._item_pos = np.concatenate([np.arange(n) for n in sizes])  # (N,)
        if indices is not None:
            keep = np.asarray(indices, dtype=np.int64).reshape(-1)
            if keep.size and (keep.min() < 0 or keep.max() >= sizes.sum()):
                raise ValueError(
                    f"indices must lie in [0, {int(sizes.sum())}), the number of "
                    f"exocentric images; got min {keep.min()}, max {keep.max()}"
                )
            self._item_group, self._item_pos = self._item_group[keep], self._item_pos[keep]
        self.labels = np.array([g.label for g in groups], dtype=np.int64)[self._item_group]
        self.samples: list[tuple[Path, str, str]] = [
            (groups[g].exo[i], groups[g].aff, groups[g].obj)
            for g, i in zip(self._item_group.tolist(), self._item_pos.tolist(), strict=True)
        ]
        self.keys = [f"{aff}/{obj}/{path.name}" for path, aff, obj in self.samples]

    def image_paths(self) -> list[Path]:
        """Every distinct image file an item of this dataset can read (for feature caching).

        Returns:
            Sorted exocentric and egocentric paths of the ``<aff>/<obj>`` folders the items
            come from.
        """
        used = {int(g) for g in np.unique(self._item_group)}
        return sorted({p for g in used for p in (*self._groups[g].exo, *self._groups[g].ego)})

    def __len__(self) -> int:
        return int(self._item_group.size)

    def _generator(self, index: int) -> np.random.Generator:
        self._accesses += 1
        worker = get_worker_info()
        worker_seed = int(worker.seed) if worker is not None else 0
        return np.random.default_rng([self.seed, index, self._accesses, worker_seed])

    def _note_bad(self, path: Path) -> None:
        self.corrupt_files.add(path)
        self._bad_events += 1
        if self._bad_events <= 5 or self._bad_events % 100 == 0:
            logger.warning(
                "unreadable or truncated image %s replaced (%d so far)", path, self._bad_events
            )

    def _load_from(
        self, paths: Sequence[Path], first: int, rng: np.random.Generator
    ) -> tuple[np.ndarray | None, int]:
        """Decodes ``paths[first]``, falling back on other readable files of the folder."""
        i, skipped = first, 0
        while True:
            path = paths[i]
            image = None if path in self.corrupt_files else load_rgb(path)
            if image is not None:
                return image, skipped
            if path not in self.corrupt_files:
                self._note_bad(path)
            skipped += 1
            good = [j for j, p in enumerate(paths) if p not in self.corrupt_files]
            if not good:
                return None, skipped
            i = good[int(rng.integers(len(good)))]

    def _transform(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.augment:
            image = train_augment(image, self.image_size, rng)
        else:
            image = center_resize(image, self.image_size)
        return to_tensor(image)

    def _build(self, index: int, rng: np.random.Generator) -> tuple[dict | None, int]:
        group = self._groups[int(self._item_group[index])]
        pos = int(self._item_pos[index])
        n = len(group.exo)
        extra = self.num_exo - 1
        if n > self.num_exo:
            others = rng.choice(n - 1, size=extra, replace=False)
            others = others + (others >= pos)  # skip the keyed image
        else:
            others = rng.integers(0, n, size=extra)
        skipped = 0
        exo = []
        for i in [pos, *others.tolist()]:
            image, bad = self._load_from(group.exo, int(i), rng)
            skipped += bad
            if image is None:
                return None, skipped
            exo.append(self._transform(image, rng))
        ego, bad = self._load_from(group.ego, int(rng.integers(len(group.ego))), rng)
        skipped += bad
        if ego is None:
            return None, skipped
        item = {
            "ego": self._transform(ego, rng),
            "exo": torch.stack(exo),
            "label": torch.tensor(group.label, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        return item, skipped

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = int(index) % len(self)
        rng = self._generator(index)
        skipped = 0
        candidate = index
        for _ in range(_MAX_ITEM_RETRIES):
            item, bad = self._build(candidate, rng)
            skipped += bad
            if item is not None:
                item["skipped"] = torch.tensor(skipped, dtype=torch.int64)
                return item
            candidate = int(rng.integers(len(self)))
        raise RuntimeError(
            f"could not build a training item after {_MAX_ITEM_RETRIES} tries: "
            f"{len(self.corrupt_files)} unreadable files so far under "
            f"{self.root}; check the dataset's integrity"
        )


class AffordanceTestDataset(Dataset):
    """Test images paired with their ground-truth heat maps.

    Pairs ``testset/egocentric/<aff>/<obj>/<stem>.<ext>`` (any image extension) with
    ``testset/GT/<aff>/<obj>/<stem>.png``; images without a GT file are left out. An item is

    * ``image``: float32 (3, S, S) in [0, 1], the image resized to S x S (no crop);
    * ``label``: int64 scalar tensor;
    * ``gt``: float32 (G, G) in [0, 1], GT / 255 resized bilinearly to G = ``eval_size`` (a
      GT of another size than its image is fine: the protocol resizes both);
    * ``key``: "aff/obj/stem";
    * ``afforded``: bool (C,), the actions the item's object affords in this split: every
      ``<aff>`` with an ``<aff>/<obj>`` folder for the object under ``testset/egocentric`` or
      ``trainset/{egocentric,exocentric}`` (the planner metrics compare them).

    Args:
        root: dataset root (see :func:`affordance_core.data.vocab.split_dir`).
        split: split name.
        image_size: network input side S.
        vocabulary: class names in id order; default :func:`resolve_vocabulary`.
        eval_size: side G of the evaluation maps (the protocol uses 224).

    Raises:
        ValueError: at construction on a missing layout, affordance folders missing from the
            vocabulary or no image with GT; when reading an item whose image or GT cannot be
            decoded (the message names the file).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int,
        vocabulary: Sequence[str] | None = None,
        eval_size: int = EVAL_SIZE,
    ) -> None:
        if int(image_size) < 1 or int(eval_size) < 1:
            raise ValueError(
                f"image_size and eval_size must be positive, got {image_size}, {eval_size}"
            )
        self.root = Path(root)
        self.split = split
        self.image_size = int(image_size)
        self.eval_size = int(eval_size)
        base = split_dir(self.root, split)
        image_root = base / "testset" / "egocentric"
        gt_root = base / "testset" / "GT"
        _require_dir(image_root)
        _require_dir(gt_root)
        affordances = list_subdirs(image_root)
        if vocabulary is None:
            vocabulary = resolve_vocabulary(self.root, split)
        self.vocabulary = _check_vocabulary(vocabulary, affordances, image_root)

        self.samples: list[tuple[Path, Path, int, str]] = []
        for aff in affordances:
            label = self.vocabulary.index(aff)
            for obj in list_subdirs(image_root / aff):
                gt_dir = gt_root / aff / obj
                for path in _list_images(image_root / aff / obj):
                    gt_path = gt_dir / f"{path.stem}.png"
                    if gt_path.is_file():
                        self.samples.append((path, gt_path, label, f"{aff}/{obj}/{path.stem}"))
        if not self.samples:
            raise ValueError(
                f"no test image under {image_root} has a GT <stem>.png under "
                f"{gt_root}; {LAYOUT_HELP}"
            )
        self.keys = [s[3] for s in self.samples]
        self.labels = np.array([s[2] for s in self.samples], dtype=np.int64)
        self.objects = [key.split("/")[1] for key in self.keys]
        pairs = {(aff, obj) for aff in affordances for obj in list_subdirs(image_root / aff)}
        for view in ("egocentric", "exocentric"):
            view_root = base / "trainset" / view
            pairs |= {
                (aff, obj)
                for aff in list_subdirs(view_root)
                for obj in list_subdirs(view_root / aff)
            }
        self.afforded = np.array(
            [[(aff, obj) in pairs for aff in self.vocabulary] for obj in self.objects], dtype=bool
        ).reshape(len(self.samples), len(self.vocabulary))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, gt_path, label, key = self.samples[index]
        image = load_rgb(path)
        if image is None:
            raise ValueError(f"cannot decode test image {path}; replace or remove it")
        gt = load_gray(gt_path)
        if gt is None:
            raise ValueError(f"cannot decode ground-truth map {gt_path}; replace or remove it")
        return {
            "image": to_tensor(center_resize(image, self.image_size)),
            "label": torch.tensor(label, dtype=torch.int64),
            "gt": prepare_gt(gt, self.eval_size),
            "key": key,
            "afforded": torch.from_numpy(self.afforded[index]),
        }


class BackgroundFrames(Dataset):
    """Background-only frames of a split, for the absence metrics: ``testset/background/*``.

    The folder is optional (the synthetic corpus writes one; AGD20K has none): a split without
    it gives an empty dataset. Items are ``{"image": float32 (3, S, S) in [0, 1], "key": str}``.

    Args:
        root: dataset root (see :func:`affordance_core.data.vocab.split_dir`).
        split: split name.
        image_size: network input side S.

    Raises:
        ValueError: when reading a frame that cannot be decoded (the message names the file).
    """

    def __init__(self, root: str | Path, split: str, image_size: int) -> None:
        self.image_size = int(image_size)
        self.paths = _list_images(split_dir(Path(root), split) / "testset" / "background")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        image = load_rgb(path)
        if image is None:
            raise ValueError(f"cannot decode background frame {path}; replace or remove it")
        return {
            "image": to_tensor(center_resize(image, self.image_size)),
            "key": f"background/{path.stem}",
        }


def holdout_split(
    dataset: AffordanceTrainDataset, fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Deterministic train / validation split of a training set, for model selection.

    Each exocentric image key is hashed with ``seed``; within every class the
    ``round(fraction * n_class)`` items with the smallest hashes go to validation (at least
    one item of a class always stays in training). The result depends only on the keys, the
    labels and ``seed``, not on file-system order. Validation items' images may still be
    drawn as extra exocentric views of training items from the same folder.

    Args:
        dataset: the training set (anything with ``keys`` and ``labels`` works).
        fraction: share of items held out, in (0, 1).
        seed: split seed.

    Returns:
        (train_indices, val_indices): disjoint sorted lists of item indices covering the set.

    Raises:
        ValueError: if ``fraction`` is not in (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    keys = list(dataset.keys)
    labels = np.asarray(dataset.labels)
    hashes = np.array(
        [
            int.from_bytes(
                hashlib.blake2b(f"{seed}/{k}".encode(), digest_size=8).digest(), "little"
            )
            for k in keys
        ],
        dtype=np.uint64,
    )
    order = np.lexsort((hashes, labels))  # by class, then by hash
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(len(order)) - starts  # position within the class
    counts = np.bincount(labels)[sorted_labels]
    n_val = np.minimum(np.rint(fraction * counts), counts - 1)
    is_val = np.zeros(len(order), dtype=bool)
    is_val[order] = rank < n_val
    return np.flatnonzero(~is_val).tolist(), np.flatnonzero(is_val).tolist()
