"""Precomputed frozen-backbone features, so training steps only run the trainable heads.

The backbones are frozen, so the features of an image never change during training. The cache
stores, per image and per view (view 0: the image resized to S x S; view 1: its mirror image),
the DINO keys, the CLS attention of the saliency heads and the CLIP patch embeddings, packed
along the channel axis in one float16 ``.npy`` memory map. ``CachedTrainDataset`` then draws
items exactly as :class:`AffordanceTrainDataset` does and returns features instead of pixels;
:class:`affordance_core.methods.base.Method` accepts either. The trade: random crops are replaced
by the cached views (flip only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.datasets import AffordanceTrainDataset
from .data.transforms import center_resize, load_rgb, to_tensor
from .files import atomic_write
from .model import AffordanceModel

__all__ = ["BACKBONE_FIELDS", "FeatureCache", "CachedTrainDataset", "backbone_fingerprint"]

logger = logging.getLogger(__name__)

#: ``AffordanceConfig`` fields that change what ``AffordanceModel.extract`` returns.
BACKBONE_FIELDS = (
    "image_size",
    "dino",
    "dino_file",
    "dino_hub",
    "saliency_heads",
    "clip",
    "clip_file",
    "clip_hub_tag",
)


def backbone_fingerprint(model: AffordanceModel) -> str:
    """Key of what ``model.extract`` returns: the backbone config fields and weights.

    The heads (method, projections, calibration...) do not enter it, so models trained with
    different methods on the same backbones share one fingerprint.
    """
    config = model.config.to_dict()
    digest = hashlib.sha1()
    digest.update(
        json.dumps({k: config[k] for k in BACKBONE_FIELDS}, sort_keys=True, default=str).encode()
    )
    for role, backbone in (("dino", model.dino), ("clip", model.clip)):
        if backbone is None:
            continue
        for name, tensor in backbone.state_dict().items():
            digest.update(f"{role}.{name}".encode())
            digest.update(tensor.double().sum().item().hex().encode())
    return digest.hexdigest()


class FeatureCache:
    """Per-image backbone features, read from a memory-mapped float16 array.

    Attributes:
        index: path (str) -> row of the array; unreadable images are absent.
        dims: channel counts (keys, attention, clip) packed in each row.
        views: cached views per image (1 = plain, 2 = plain + mirrored).
    """

    def __init__(
        self, array: np.ndarray, index: dict[str, int], dims: tuple[int, int, int], views: int
    ) -> None:
        self.array = array  # (N, views, sum(dims), h, w) float16
        self.index = index
        self.dims = dims
        self.views = views

    @staticmethod
    def _fingerprint(model: AffordanceModel, paths: Sequence[Path], views: int) -> str:
        """Key of the cached features: the backbone config and weights, the views, the files.

        The heads (method, projections, calibration...) do not change what ``extract``
        returns, so every method trained on the same data and backbones shares one cache.
        """
        digest = hashlib.sha1(backbone_fingerprint(model).encode())
        digest.update(str(views).encode())
        for path in paths:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    @classmethod
    def build(
        cls,
        model: AffordanceModel,
        paths: Sequence[Path],
        cache_dir: str | os.PathLike,
        views: int = 2,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> FeatureCache:
        """Compute (or reuse, when the fingerprint matches) the features of ``paths``.

        Args:
            model: provides the frozen backbones and the input size.
            paths: image files.
            cache_dir: folder for ``features-<fingerprint>.npy`` and its index.
            views: 1 (plain) or 2 (plain + horizontal mirror).
        """
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        paths = sorted(Path(p) for p in paths)
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tag = cls._fingerprint(model, paths, views)
        array_path = cache_dir / f"features-{tag}.npy"
        index_path = cache_dir / f"features-{tag}.json"
        if array_path.is_file() and index_path.is_file():
            meta = json.loads(index_path.read_text())
            array = np.load(array_path, mmap_mode="r")
            return cls(array, meta["index"], tuple(meta["dims"]), meta["views"])

        model = model.to(device).eval()
        size = model.image_size
        probe = model.extract(torch.zeros(1, 3, size, size, device=device))
        dims = (
            probe.keys.shape[1],
            probe.cls_attention.shape[1],
            0 if probe.clip is None else probe.clip.shape[1],
        )
        grid = probe.keys.shape[-2:]
        with atomic_write(array_path) as tmp_path:
            array = np.lib.format.open_memmap(
                tmp_path, mode="w+", dtype=np.float16, shape=(len(paths), views, sum(dims), *grid)
            )
            index: dict[str, int] = {}
            row = 0
            bar = tqdm(
                total=len(paths),
                desc="caching backbone features",
                unit="img",
                disable=not progress,
            )
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                images, names = [], []
                for path in chunk:
                    image = load_rgb(path)
                    if image is None:
                        logger.warning("unreadable image %s left out of the feature cache", path)
                        continue
                    images.append(to_tensor(center_resize(image, size)))
                    names.append(str(path))
                bar.update(len(chunk))
                if not images:
                    continue
                batch = torch.stack(images).to(device)
                for view in range(views):
                    feats = model.extract(batch.flip(-1) if view else batch)
                    parts = [feats.keys, feats.cls_attention]
                    if feats.clip is not None:
                        parts.append(feats.clip)
                    packed = torch.cat(parts, 1).half().cpu().numpy()
                    array[row : row + len(names), view] = packed
                for offset, name in enumerate(names):
                    index[name] = row + offset
                row += len(names)
            bar.close()
            array.flush()
            del array
        with atomic_write(index_path) as tmp_index:
            tmp_index.write_text(json.dumps({"index": index, "dims": list(dims), "views": views}))
        return cls(np.load(array_path, mmap_mode="r"), index, dims, views)

    def get(self, path: Path | str, view: int) -> torch.Tensor:
        """(sum(dims), h, w) float16 packed features of one image view."""
        return torch.from_numpy(np.array(self.array[self.index[str(path)], view]))

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split packed (..., C, h, w) features into keys / attn / clip."""
        k, a, c = self.dims
        out = {"keys": packed[..., :k, :, :], "attn": packed[..., k : k + a, :, :]}
        if c:
            out["clip"] = packed[..., k + a :, :, :]
        return out


class CachedTrainDataset(AffordanceTrainDataset):
    """:class:`AffordanceTrainDataset` that yields cached features instead of images.

    Items: ``ego_keys`` (D, h, w), ``ego_attn`` (K, h, w), ``ego_clip`` (Dc, h, w), ``exo_*``
    with a leading E axis, all float16; plus ``label``, ``skipped``, ``index``. Images missing
    from the cache (unreadable when it was built) are treated as corrupt and replaced.
    """

    def __init__(self, cache: FeatureCache, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cache = cache

    def _load_from(self, paths, first, rng):  # type: ignore[override]
        i, skipped = first, 0
        good = [j for j, p in enumerate(paths) if str(p) in self.cache.index]
        if str(paths[i]) not in self.cache.index:
            if paths[i] not in self.corrupt_files:
                self._note_bad(paths[i])
            skipped += 1
            if not good:
                return None, skipped
            i = good[int(rng.integers(len(good)))]
        return paths[i], skipped

    def _transform(self, path, rng):  # type: ignore[override]
        view = int(rng.integers(self.cache.views)) if self.augment else 0
        return self.cache.get(path, view)

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        for prefix in ("ego", "exo"):
            for name, value in self.cache.unpack(item.pop(prefix)).items():
                item[f"{prefix}_{name}"] = value
        return item
