"""Write a synthetic benchmark corpus in the AGD20K layout, and stream pretraining scenes.

Layout written by ``write_agd_corpus`` (``reference/wsag_methods.md`` §1.1)::

    <root>/<split>/trainset/exocentric/<aff>/<obj>/<obj>_<index>.jpg
    <root>/<split>/trainset/egocentric/<aff>/<obj>/<obj>_<index>.jpg
    <root>/<split>/trainset/exo_meta.json     exo path relative to trainset -> {"occluded": bool}
    <root>/<split>/testset/egocentric/<aff>/<obj>/<obj>_<index>.jpg
    <root>/<split>/testset/GT/<aff>/<obj>/<obj>_<index>.png    uint8 heatmap, 0..255
    <root>/<split>/testset/background/background_<index>.jpg  clutter only, no object

Every image has its own generator, seeded from ``(seed, salt, split, aff, obj, kind, index)``
by name, so the output does not depend on the writing order and the same seed reproduces the
same bytes. Pretraining scenes (``iter_pretrain_scenes``) use another salt, so no benchmark
image is ever drawn for pretraining.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .world import (
    AFFORDANCES,
    EXO_SCALE_BENCHMARK,
    OBJECTS,
    Scene,
    afforded_parts,
    background_image,
    list_actions,
    render_scene,
)

__all__ = [
    "DEFAULT_SPLIT_OBJECTS",
    "CorpusStats",
    "corpus_image_rng",
    "corpus_pairs",
    "iter_pretrain_backgrounds",
    "iter_pretrain_scenes",
    "pretrain_scene",
    "write_agd_corpus",
]

_BENCH_SALT = 0x5EED_A6D
_PRETRAIN_SALT = 0x9E7A_1111
_PRETRAIN_BACKGROUND_SALT = 0x9E7A_B6B6

# Unseen: test categories never appear in training; every part type they are tested on is
# afforded, for the same action, by some training category (scissors <- knife/axe blades and
# handles, tennis_racket <- hammer head and handle, mug/wine_glass <- cup rim, kettle <- bottle
# spout, bench <- chair seat, motorcycle <- bicycle seat and handle, cell_phone <- laptop keys).
DEFAULT_SPLIT_OBJECTS: dict[str, dict[str, list[str]]] = {
    "Seen": {"train": sorted(OBJECTS), "test": sorted(OBJECTS)},
    "Unseen": {
        "train": ["axe", "bicycle", "bottle", "chair", "cup", "hammer", "knife", "laptop"],
        "test": [
            "bench",
            "cell_phone",
            "kettle",
            "motorcycle",
            "mug",
            "scissors",
            "tennis_racket",
            "wine_glass",
        ],
    },
}


@dataclass
class CorpusStats:
    """What ``write_agd_corpus`` wrote.

    Attributes:
        counts: split -> {"train_exo", "train_exo_occluded", "train_ego", "test"} image counts.
        test_parts: split -> afforded part type -> number of test images (with GT).
        pairs: split -> {"train": [(aff, obj), ...], "test": [(aff, obj), ...]}.
        seconds: Wall-clock time of the whole write.
    """

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    test_parts: dict[str, dict[str, int]] = field(default_factory=dict)
    pairs: dict[str, dict[str, list[tuple[str, str]]]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_images(self) -> int:
        """Number of JPEG images written, all splits."""
        return sum(c["train_exo"] + c["train_ego"] + c["test"] for c in self.counts.values())

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {
            "counts": self.counts,
            "test_parts": self.test_parts,
            "pairs": {
                s: {k: [list(p) for p in v] for k, v in d.items()} for s, d in self.pairs.items()
            },
            "seconds": self.seconds,
            "total_images": self.total_images,
        }


def _key(*names: str | int) -> list[int]:
    """Stable integer entropy for ``np.random.default_rng`` from names (not Python's hash)."""
    return [n if isinstance(n, int) else zlib.crc32(n.encode()) for n in names]


def corpus_image_rng(
    seed: int, split: str, kind: str, aff: str, obj: str, index: int
) -> np.random.Generator:
    """The generator ``write_agd_corpus(seed=seed)`` draws one image from.

    Args:
        seed: the corpus seed.
        split: ``Seen`` or ``Unseen``.
        kind: ``exo``, ``ego``, ``test`` or ``background`` (the latter with ``aff = obj = ""``).
        aff: the image's action.
        obj: the image's object.
        index: the image's index (the ``<index>`` of ``<obj>_<index>.jpg``).

    Returns:
        A fresh generator in the state the writer started that image from: replaying the same
        draws re-renders the same scene (for an exo image: first the occlusion draw, then
        ``render_scene``), e.g. to rebuild annotations the corpus does not store.
    """
    return np.random.default_rng(_key(seed, _BENCH_SALT, split, kind, aff, obj, index))


def corpus_pairs(
    train_objects: Sequence[str],
    test_objects: Sequence[str],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(aff, obj) pairs of a split's training and test sets.

    Test pairs keep only actions that occur in training, as AGD20K's test vocabulary is a
    subset of its training vocabulary.

    Raises:
        ValueError: on unknown object names.
    """
    for o in (*train_objects, *test_objects):
        if o not in OBJECTS:
            raise ValueError(
                f"unknown object {o!r} in split_objects; choose from {sorted(OBJECTS)}"
            )
    train = [(a, o) for a in AFFORDANCES for o in sorted(train_objects) if o in AFFORDANCES[a]]
    train_actions = {a for a, _ in train}
    test = [
        (a, o)
        for a in AFFORDANCES
        for o in sorted(test_objects)
        if o in AFFORDANCES[a] and a in train_actions
    ]
    return train, test


def _write_jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"could not write {path}")


def write_agd_corpus(
    root: Path | str,
    *,
    seed: int,
    split_objects: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    n_exo_per_pair: int = 12,
    n_ego_per_pair: int = 4,
    n_test_per_pair: int = 4,
    n_background: int = 20,
    size: int = 128,
    occlusion_rate: float = 0.25,
    exo_scale: tuple[float, float] = EXO_SCALE_BENCHMARK,
    progress: bool = True,
) -> CorpusStats:
    """Render and write a benchmark corpus in the AGD20K layout (see the module docstring).

    Args:
        root: Output directory; created if missing. Existing files are overwritten.
        seed: Corpus seed; the same seed and arguments give byte-identical files.
        split_objects: split name -> {"train": [...], "test": [...]} object categories;
            ``DEFAULT_SPLIT_OBJECTS`` (Seen and Unseen) when None.
        n_exo_per_pair: Exocentric training images per (aff, obj) pair.
        n_ego_per_pair: Egocentric training images per pair.
        n_test_per_pair: Egocentric test images (each with a GT heatmap) per test pair.
        n_background: Background-only test frames per split (the clutter of every scene,
            without any object), for the absence metrics.
        size: Image side in pixels.
        occlusion_rate: Probability in [0, 1] that an exocentric image has the hand covering
            most of the afforded part.
        exo_scale: (min, max) fraction of the frame spanned by an exo object's bounding circle.
        progress: Show a tqdm progress bar.

    Returns:
        Counts per split and per afforded part type.

    Raises:
        ValueError: on bad counts, rates or object names.
    """
    if min(n_exo_per_pair, n_ego_per_pair, n_test_per_pair) < 1:
        raise ValueError("n_exo_per_pair, n_ego_per_pair and n_test_per_pair must be >= 1")
    if n_background < 0:
        raise ValueError(f"n_background must be >= 0, got {n_background}")
    if not 0.0 <= occlusion_rate <= 1.0:
        raise ValueError(f"occlusion_rate must be in [0, 1], got {occlusion_rate}")
    split_objects = DEFAULT_SPLIT_OBJECTS if split_objects is None else split_objects
    root = Path(root)
    t0 = time.perf_counter()

    jobs: list[tuple[str, str, str, str, int]] = []  # (split, kind, aff, obj, index)
    stats = CorpusStats()
    for split, objs in split_objects.items():
        if set(objs) != {"train", "test"}:
            raise ValueError(
                f"split_objects[{split!r}] needs exactly the keys 'train' and "
                f"'test', got {sorted(objs)}"
            )
        train, test = corpus_pairs(objs["train"], objs["test"])
        if not test:
            raise ValueError(f"split {split!r} has no test pair whose action occurs in training")
        stats.pairs[split] = {"train": train, "test": test}
        for kind, pairs, n in (
            ("exo", train, n_exo_per_pair),
            ("ego", train, n_ego_per_pair),
            ("test", test, n_test_per_pair),
        ):
            jobs += [(split, kind, a, o, i) for a, o in pairs for i in range(n)]
        jobs += [(split, "background", "", "", i) for i in range(n_background)]

    meta: dict[str, dict[str, dict[str, bool]]] = {s: {} for s in split_objects}
    counts = {s: Counter() for s in split_objects}
    parts = {s: Counter() for s in split_objects}
    for split, kind, aff, obj, i in tqdm(
        jobs, desc="synthetic corpus", unit="img", disable=not progress
    ):
        rng = corpus_image_rng(seed, split, kind, aff, obj, i)
        stem = f"{obj}_{i:06d}"
        if kind == "exo":
            occluded = bool(rng.random() < occlusion_rate)
            scene = render_scene(
                rng,
                obj,
                size=size,
                view="exo",
                action=aff,
                occlude_part=occluded,
                exo_scale=exo_scale,
            )
            rel = f"exocentric/{aff}/{obj}/{stem}.jpg"
            _write_jpg(root / split / "trainset" / rel, scene.image)
            meta[split][rel] = {"occluded": occluded}
            counts[split]["train_exo"] += 1
            counts[split]["train_exo_occluded"] += int(occluded)
        elif kind == "background":
            _write_jpg(
                root / split / "testset" / "background" / f"background_{i:06d}.jpg",
                background_image(rng, size),
            )
            counts[split]["background"] += 1
        elif kind == "ego":
            scene = render_scene(rng, obj, size=size, view="ego", action=aff)
            _write_jpg(
                root / split / "trainset" / "egocentric" / aff / obj / f"{stem}.jpg", scene.image
            )
            counts[split]["train_ego"] += 1
        else:
            scene = _test_scene(rng, obj, aff, size)
            test_dir = root / split / "testset"
            _write_jpg(test_dir / "egocentric" / aff / obj / f"{stem}.jpg", scene.image)
            gt_path = test_dir / "GT" / aff / obj / f"{stem}.png"
            gt_path.parent.mkdir(parents=True, exist_ok=True)
            assert scene.affordance_map is not None
            gt = np.round(scene.affordance_map * 255).astype(np.uint8)
            if not cv2.imwrite(str(gt_path), gt):
                raise OSError(f"could not write {gt_path}")
            counts[split]["test"] += 1
            for p in afforded_parts(obj, aff):
                parts[split][p] += 1

    for split in split_objects:
        path = root / split / "trainset" / "exo_meta.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(sorted(meta[split].items())), indent=1) + "\n")
        actions = sorted({a for a, _ in stats.pairs[split]["train"]})
        (root / split / "vocabulary.txt").write_text("\n".join(actions) + "\n")
        stats.counts[split] = {
            k: int(counts[split][k])
            for k in ("train_exo", "train_exo_occluded", "train_ego", "test", "background")
        }
        stats.test_parts[split] = dict(sorted(parts[split].items()))
    stats.seconds = time.perf_counter() - t0
    return stats


def _test_scene(rng: np.random.Generator, obj: str, aff: str, size: int) -> Scene:
    """An ego test scene whose GT is non-empty (re-drawn from the same generator if not)."""
    for _ in range(8):
        scene = render_scene(rng, obj, size=size, view="ego", action=aff)
        if scene.affordance_map is not None and scene.affordance_map.max() > 0:
            return scene
    raise RuntimeError(f"could not render a visible afforded part for {aff}/{obj}")


def iter_pretrain_scenes(
    seed: int, n: int, size: int = 112, *, objects: Sequence[str] | None = None
) -> Iterator[Scene]:
    """Scenes for pretraining the tiny backbones, from a seed space disjoint from benchmarks.

    Objects are drawn uniformly from all categories (or ``objects``), views half ego half exo,
    the action uniformly among the object's actions (it places the exo hand). Pretraining must
    use ``object_mask``, ``part_masks``/``part_instance`` and object-level captions only,
    never ``affordance_map``: affordance supervision belongs to the methods under test.

    Args:
        seed: Pretraining seed.
        n: Number of scenes.
        size: Image side in pixels.
        objects: Restrict to these categories (default: all of ``OBJECTS``).

    Yields:
        ``Scene`` objects (``affordance_map`` is set, but is not to be used).
    """
    names = _pretrain_objects(objects)
    for i in range(n):
        yield pretrain_scene(seed, i, size, objects=names)


def _pretrain_objects(objects: Sequence[str] | None) -> list[str]:
    names = sorted(OBJECTS) if objects is None else list(objects)
    for o in names:
        if o not in OBJECTS:
            raise ValueError(f"unknown object {o!r}; choose from {sorted(OBJECTS)}")
    return names


def pretrain_scene(
    seed: int, index: int, size: int = 112, *, objects: Sequence[str] | None = None
) -> Scene:
    """Scene ``index`` of :func:`iter_pretrain_scenes` (each scene has its own generator, so
    scenes can be rendered in any order or in parallel)."""
    names = _pretrain_objects(objects)
    rng = np.random.default_rng(_key(seed, _PRETRAIN_SALT, index))
    obj = names[int(rng.integers(0, len(names)))]
    acts = list_actions(obj)
    action = acts[int(rng.integers(0, len(acts)))]
    view = "ego" if rng.random() < 0.5 else "exo"
    return render_scene(
        rng,
        obj,
        size=size,
        view=view,
        action=action,
        occlude_part=bool(view == "exo" and rng.random() < 0.25),
    )


def iter_pretrain_backgrounds(seed: int, n: int, size: int = 112) -> Iterator[np.ndarray]:
    """Background-only frames (the clutter every scene is drawn on, no object) from the
    pretraining seed space, disjoint from every benchmark corpus and from
    :func:`iter_pretrain_scenes`.

    Args:
        seed: Pretraining seed.
        n: Number of frames.
        size: Image side in pixels.

    Yields:
        (size, size, 3) uint8 RGB frames.
    """
    for i in range(n):
        rng = np.random.default_rng(_key(seed, _PRETRAIN_BACKGROUND_SALT, i))
        yield background_image(rng, size)
