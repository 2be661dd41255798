"""Synthetic affordance world and its AGD20K-layout corpus."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from affordance_core.synthetic import (
    AFFORDANCES,
    OBJECTS,
    PART_TYPES,
    afforded_parts,
    list_actions,
    object_caption,
    render_scene,
)
from affordance_core.synthetic.corpus import (
    DEFAULT_SPLIT_OBJECTS,
    corpus_pairs,
    iter_pretrain_scenes,
    write_agd_corpus,
)

PAIRS = [(a, o) for a, objs in AFFORDANCES.items() for o in objs]
N_EXO, N_EGO, N_TEST, N_BACKGROUND = 2, 1, 2, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("agd")
    stats = write_agd_corpus(
        root,
        seed=3,
        n_exo_per_pair=N_EXO,
        n_ego_per_pair=N_EGO,
        n_test_per_pair=N_TEST,
        n_background=N_BACKGROUND,
        size=64,
        occlusion_rate=0.5,
        progress=False,
    )
    return root, stats


def _files(root: Path, pattern: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob(pattern))


def test_vocabulary_is_consistent() -> None:
    for action, objs in AFFORDANCES.items():
        for obj, parts in objs.items():
            assert set(parts) <= set(OBJECTS[obj].parts), (action, obj)
    for obj, spec in OBJECTS.items():
        assert set(spec.parts) <= set(PART_TYPES)
        assert list_actions(obj), obj
        assert obj.replace("_", " ") in object_caption(obj)
    multi = [
        o for o in OBJECTS if len({p for a in list_actions(o) for p in afforded_parts(o, a)}) >= 2
    ]
    assert len(multi) >= len(OBJECTS) // 2  # the part must be found, not just the object
    with pytest.raises(ValueError, match="does not afford"):
        afforded_parts("knife", "sit_on")


@pytest.mark.parametrize("view", ["ego", "exo"])
def test_scene_contract(view: str) -> None:
    scene = render_scene(np.random.default_rng(0), "cup", size=96, view=view, action="drink_with")
    assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
    assert scene.part_instance.dtype == np.int16
    assert set(scene.part_masks) == set(OBJECTS["cup"].parts)
    union = np.logical_or.reduce(list(scene.part_masks.values()))
    np.testing.assert_array_equal(union, scene.object_mask)
    np.testing.assert_array_equal(scene.object_mask, scene.part_instance >= 0)
    for name, mask in scene.part_masks.items():
        np.testing.assert_array_equal(mask, scene.part_instance == PART_TYPES.index(name))
    amap = scene.affordance_map
    assert amap is not None and amap.dtype == np.float32
    assert amap.min() >= 0.0 and amap.max() == pytest.approx(1.0)
    assert (scene.hand_mask is None) == (view == "ego")
    again = render_scene(np.random.default_rng(0), "cup", size=96, view=view, action="drink_with")
    np.testing.assert_array_equal(scene.image, again.image)


def test_bad_arguments_raise() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown object"):
        render_scene(rng, "spaceship")
    with pytest.raises(ValueError, match="does not afford"):
        render_scene(rng, "cup", action="ride")
    with pytest.raises(ValueError, match="needs an action"):
        render_scene(rng, "cup", view="exo", occlude_part=True)
    with pytest.raises(ValueError, match="view"):
        render_scene(rng, "cup", view="side")  # type: ignore[arg-type]


@pytest.mark.parametrize("action,obj", PAIRS)
def test_heatmap_mass_on_afforded_part(action: str, obj: str) -> None:
    for seed in range(2):
        scene = render_scene(np.random.default_rng(seed), obj, view="ego", action=action)
        part = np.logical_or.reduce([scene.part_masks[p] for p in afforded_parts(obj, action)])
        near = cv2.dilate(part.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        amap = scene.affordance_map
        assert amap is not None and amap.sum() > 0
        assert amap[near].sum() / amap.sum() > 0.7
        assert amap[~near].max() < 0.3


@pytest.mark.parametrize("action,obj", PAIRS)
def test_exo_hand_on_afforded_part(action: str, obj: str) -> None:
    parts = afforded_parts(obj, action)
    for seed in range(2):
        rng = np.random.default_rng(100 + seed)
        scene = render_scene(rng, obj, view="exo", action=action)
        assert scene.hand_mask is not None and not scene.occluded
        part = np.logical_or.reduce([scene.amodal_part_masks[p] for p in parts])
        assert (scene.hand_mask & part).sum() >= 0.2 * min(scene.hand_mask.sum(), part.sum())

        occ = render_scene(rng, obj, view="exo", action=action, occlude_part=True)
        assert occ.occluded and occ.hand_mask is not None
        part = np.logical_or.reduce([occ.amodal_part_masks[p] for p in parts])
        assert (occ.hand_mask & part).sum() > 0.6 * part.sum()


def test_benchmark_exo_objects_are_closer_views() -> None:
    from affordance_core.synthetic.world import EXO_SCALE_BENCHMARK, EXO_SCALE_PRETRAIN

    areas = {}
    for name, scale in (("pretrain", EXO_SCALE_PRETRAIN), ("benchmark", EXO_SCALE_BENCHMARK)):
        rng = np.random.default_rng(7)
        areas[name] = np.mean(
            [
                render_scene(
                    rng, obj, size=96, view="exo", action=action, exo_scale=scale
                ).object_mask.mean()
                for action, obj in PAIRS
                for _ in range(3)
            ]
        )
    assert areas["benchmark"] > 1.5 * areas["pretrain"]
    rng = np.random.default_rng(7)
    action, obj = PAIRS[0]
    assert np.array_equal(
        render_scene(rng, obj, view="exo", action=action).image,
        render_scene(
            np.random.default_rng(7), obj, view="exo", action=action, exo_scale=EXO_SCALE_PRETRAIN
        ).image,
    )


def test_corpus_layout(corpus: tuple[Path, object]) -> None:
    root, stats = corpus
    assert sorted(p.name for p in root.iterdir()) == ["Seen", "Unseen"]
    for split, objs in DEFAULT_SPLIT_OBJECTS.items():
        train, test = corpus_pairs(objs["train"], objs["test"])
        base = root / split
        assert sorted(p.name for p in base.iterdir()) == ["testset", "trainset", "vocabulary.txt"]
        assert (base / "vocabulary.txt").read_text().split() == sorted({a for a, _ in train})
        assert sorted(p.name for p in (base / "testset").iterdir()) == [
            "GT",
            "background",
            "egocentric",
        ]
        backgrounds = _files(base / "testset/background", "*")
        assert len(backgrounds) == N_BACKGROUND == stats.counts[split]["background"]
        frame = cv2.imread(str(base / "testset/background" / backgrounds[0]))
        assert frame.shape == (64, 64, 3) and frame.std() > 5  # clutter, not a blank frame
        assert sorted(p.name for p in (base / "trainset").iterdir()) == [
            "egocentric",
            "exo_meta.json",
            "exocentric",
        ]
        for kind, n in (("exocentric", N_EXO), ("egocentric", N_EGO)):
            files = _files(base / "trainset", f"{kind}/*/*/*")
            assert len(files) == n * len(train)
            assert {tuple(f.split("/")[1:3]) for f in files} == set(train)
            assert all(f.endswith(".jpg") for f in files)
        test_imgs = _files(base / "testset/egocentric", "*/*/*")
        gts = _files(base / "testset/GT", "*/*/*")
        assert len(test_imgs) == N_TEST * len(test)
        assert [g[:-4] for g in gts] == [t[:-4] for t in test_imgs]
        assert all(g.endswith(".png") for g in gts)
        meta = json.loads((base / "trainset/exo_meta.json").read_text())
        assert sorted(meta) == _files(base / "trainset", "exocentric/*/*/*")
        assert stats.counts[split]["train_exo"] == len(meta)
        assert stats.counts[split]["train_exo_occluded"] == sum(
            m["occluded"] for m in meta.values()
        )
        assert stats.counts[split]["test"] == len(test_imgs)
        assert sum(stats.test_parts[split].values()) >= len(test_imgs)
        img = cv2.imread(str(base / "testset/egocentric" / test_imgs[0]))
        gt = cv2.imread(str(base / "testset/GT" / gts[0]), cv2.IMREAD_UNCHANGED)
        assert img.shape == (64, 64, 3) and gt.shape == (64, 64) and gt.dtype == np.uint8
        assert all(
            cv2.imread(str(base / "testset/GT" / g), cv2.IMREAD_UNCHANGED).max() == 255
            for g in gts
        )


def test_unseen_split_generalises_by_part() -> None:
    objs = DEFAULT_SPLIT_OBJECTS["Unseen"]
    assert not set(objs["train"]) & set(objs["test"])
    train, test = corpus_pairs(objs["train"], objs["test"])
    seen = {(a, p) for a, o in train for p in afforded_parts(o, a)}
    assert {o for _, o in test} == set(objs["test"])
    for a, o in test:
        assert {(a, p) for p in afforded_parts(o, a)} <= seen, (a, o)
    seen_objs = DEFAULT_SPLIT_OBJECTS["Seen"]
    assert set(seen_objs["train"]) == set(seen_objs["test"]) == set(OBJECTS)


def test_corpus_is_deterministic_and_order_independent(
    corpus: tuple[Path, object], tmp_path: Path
) -> None:
    root, _ = corpus
    small = {"Seen": {"train": ["knife", "cup"], "test": ["cup"]}}
    for run in ("a", "b"):
        write_agd_corpus(
            tmp_path / run,
            seed=3,
            split_objects=small,
            n_exo_per_pair=N_EXO,
            n_ego_per_pair=N_EGO,
            n_test_per_pair=N_TEST,
            size=64,
            occlusion_rate=0.5,
            n_background=2,
            progress=False,
        )
    files = _files(tmp_path / "a", "**/*.*")
    # + 2 background frames, exo_meta, vocabulary
    assert len(files) == 5 * (N_EXO + N_EGO) + 3 * 2 * N_TEST + 2 + 2
    assert files == _files(tmp_path / "b", "**/*.*")
    for f in files:
        data = (tmp_path / "a" / f).read_bytes()
        assert data == (tmp_path / "b" / f).read_bytes(), f
        if f.endswith((".jpg", ".png")):  # same key -> same image, whatever else is written
            assert data == (root / f).read_bytes(), f
    other = tmp_path / "c"
    write_agd_corpus(
        other,
        seed=4,
        split_objects=small,
        n_exo_per_pair=1,
        n_ego_per_pair=1,
        n_test_per_pair=1,
        size=64,
        progress=False,
    )
    f = "Seen/testset/GT/drink_with/cup/cup_000000.png"
    assert (other / f).read_bytes() != (tmp_path / "a" / f).read_bytes()


def test_pretrain_scenes_are_disjoint_and_reproducible(corpus: tuple[Path, object]) -> None:
    scenes = list(iter_pretrain_scenes(3, 12, size=64))
    again = list(iter_pretrain_scenes(3, 12, size=64))
    assert len(scenes) == 12
    assert {s.view for s in scenes} == {"ego", "exo"}
    for s, t in zip(scenes, again, strict=True):
        np.testing.assert_array_equal(s.image, t.image)
    root, _ = corpus
    bench = [
        cv2.imread(str(p))[..., ::-1].astype(np.int16)
        for p in sorted(root.glob("Seen/testset/egocentric/*/*/*.jpg"))[:20]
    ]
    for s in scenes:  # JPEG round trip aside, no pretraining image equals a benchmark image
        assert all(np.abs(s.image.astype(np.int16) - b).mean() > 10 for b in bench)
