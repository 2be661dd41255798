"""Shared pytest fixtures: tiny AGD20K-layout datasets generated on the fly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

DEFAULT_AFFORDANCES = ("hold", "cut_with", "sit_on")


def _write_tree(
    root: str | Path,
    split: str | None = "Seen",
    affordances: Sequence[str] = DEFAULT_AFFORDANCES,
    objects_per_aff: int = 1,
    n_exo: int = 4,
    n_ego: int = 2,
    n_test: int = 2,
    image_size: tuple[int, int] = (40, 48),
    gt_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a small AGD20K tree of random JPEGs and blob-shaped GT PNGs; return the split dir."""
    rng = np.random.default_rng(seed)
    base = Path(root) if split is None else Path(root) / split
    h, w = image_size
    gh, gw = gt_size or image_size
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)

    def image() -> np.ndarray:
        img = np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(img, centre, int(rng.integers(4, max(5, min(h, w) // 2))), colour, -1)
        return img

    for aff in affordances:
        for j in range(objects_per_aff):
            obj = f"obj{j}"
            for sub, count in (
                ("trainset/exocentric", n_exo),
                ("trainset/egocentric", n_ego),
                ("testset/egocentric", n_test),
            ):
                folder = base / sub / aff / obj
                folder.mkdir(parents=True, exist_ok=True)
                for k in range(count):
                    cv2.imwrite(str(folder / f"{aff}_{obj}_{k:04d}.jpg"), image())
            gt_folder = base / "testset" / "GT" / aff / obj
            gt_folder.mkdir(parents=True, exist_ok=True)
            for k in range(n_test):
                cy, cx = rng.uniform(0.2, 0.8) * gh, rng.uniform(0.2, 0.8) * gw
                sigma = max(gh, gw) / 6.0
                blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
                cv2.imwrite(
                    str(gt_folder / f"{aff}_{obj}_{k:04d}.png"),
                    np.round(255 * blob).astype(np.uint8),
                )
    return base


@pytest.fixture(scope="session")
def make_agd_tree() -> Callable[..., Path]:
    """Factory writing a tiny AGD20K-layout dataset with cv2; returns the split directory.

    Call it as ``make_agd_tree(root, split="Seen", affordances=("hold", "cut_with", "sit_on"),
    objects_per_aff=1, n_exo=4, n_ego=2, n_test=2, image_size=(40, 48), gt_size=None,
    seed=0)``:

    * ``root``: dataset root (e.g. ``tmp_path``); several splits may share one root.
    * ``split``: split directory name; ``None`` writes the tree directly under ``root``
      (the HICO-IIF layout without the split level).
    * ``affordances``: affordance folder names, in any order.
    * ``objects_per_aff``: object folders per affordance, named ``obj0``, ``obj1``, ...
    * ``n_exo`` / ``n_ego``: JPEGs per ``trainset/{exocentric,egocentric}/<aff>/<obj>/``.
    * ``n_test``: JPEGs per ``testset/egocentric/<aff>/<obj>/``, each with a grayscale GT
      PNG of the same stem in ``testset/GT/<aff>/<obj>/``.
    * ``image_size``: (H, W) of every JPEG; ``gt_size``: (H, W) of the GT PNGs (default:
      the image size).
    * ``seed``: seeds the random content; the same arguments write identical files.

    File names are ``<aff>_<obj>_<k:04d>.jpg`` (``.png`` for GT), so stems match across
    subsets.
    """
    return _write_tree


@pytest.fixture
def tiny_agd_root(tmp_path: Path) -> Path:
    """Dataset root holding a default tiny ``Seen`` split (see :func:`make_agd_tree`).

    Three Seen affordances (hold, cut_with, sit_on), one object each, 4 exocentric and 2
    egocentric training JPEGs and 2 test JPEGs with GT PNGs per folder, all 40x48 pixels.
    Pass the returned path as ``root`` with ``split="Seen"``.
    """
    root = tmp_path / "agd"
    _write_tree(root, split="Seen")
    return root


@pytest.fixture(scope="session")
def random_tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with randomly initialised tiny backbones (``dino_tiny.pt``, ``clip_tiny.pt``)
    and a pass-through objectness head (``objectness_tiny.pt``).

    Pass it as ``--weights-dir`` so tests do not depend on the pretrained files in
    ``weights/tiny`` (which ``make pretrain`` may change).
    """
    import torch

    from affordance_core import tiny

    directory = tmp_path_factory.mktemp("random_tiny_weights")
    torch.manual_seed(0)
    torch.save(tiny.build_tiny_dino().state_dict(), directory / tiny.TINY_DINO_FILE)
    torch.save(tiny.build_tiny_clip().state_dict(), directory / tiny.TINY_CLIP_FILE)
    # the objectness head that affordance-train copies: the unfitted pass-through (P = 1)
    from affordance_core import create_model
    from affordance_core.objectness import ObjectnessFit, objectness_file, save_objectness

    gated = create_model("tiny", vocabulary=["hold"], pretrained=False, objectness=True)
    save_objectness(ObjectnessFit.of(gated.objectness), directory / objectness_file("tiny"))
    return directory
