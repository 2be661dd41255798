"""Tests of the AGD20K-layout data layer (affordance_core.data)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import affordance_core.data.datasets as datasets_module
from affordance_core.data import (
    AGD20K_SEEN,
    AGD20K_UNSEEN,
    HICO_IIF,
    AffordanceTestDataset,
    AffordanceTrainDataset,
    holdout_split,
    load_rgb,
    resolve_vocabulary,
    split_dir,
)
from affordance_core.metrics import prepare_gt

S = 32


def _spy_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every path the datasets decode, in call order."""
    calls: list[Path] = []
    real = datasets_module.load_rgb

    def spy(path: Path) -> np.ndarray | None:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(datasets_module, "load_rgb", spy)
    return calls


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_official_vocabularies() -> None:
    assert len(AGD20K_SEEN) == 36 and len(set(AGD20K_SEEN)) == 36
    assert len(AGD20K_UNSEEN) == 25
    assert [a for a in AGD20K_SEEN if a in AGD20K_UNSEEN] == list(AGD20K_UNSEEN)
    assert "write" not in AGD20K_UNSEEN and "hold" in AGD20K_UNSEEN
    assert len(HICO_IIF) == 10 and set(HICO_IIF) <= set(AGD20K_SEEN)


def test_train_items_follow_the_contract(tiny_agd_root: Path) -> None:
    ds = AffordanceTrainDataset(tiny_agd_root, "Seen", image_size=S)
    assert ds.vocabulary == list(AGD20K_SEEN)
    assert len(ds) == 3 * 4  # one item per exocentric image
    item = ds[5]
    assert item["ego"].shape == (3, S, S) and item["ego"].dtype == torch.float32
    assert item["exo"].shape == (3, 3, S, S) and item["exo"].dtype == torch.float32
    for key in ("ego", "exo"):
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) <= 1.0
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    assert item["skipped"] == 0 and item["index"] == 5
    aff = ds.keys[5].split("/")[0]
    assert int(item["label"]) == AGD20K_SEEN.index(aff) == int(ds.labels[5])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["exo"].shape == (4, 3, 3, S, S) and batch["label"].shape == (4,)


def test_vocabulary_official_or_from_directory_names(tmp_path: Path, make_agd_tree) -> None:
    make_agd_tree(tmp_path, split="Seen", affordances=("hold", "beat"))
    assert resolve_vocabulary(tmp_path, "Seen") == list(AGD20K_SEEN)
    make_agd_tree(tmp_path, split="Unseen", affordances=("hold", "cut"))
    assert resolve_vocabulary(tmp_path, "Unseen") == list(AGD20K_UNSEEN)
    # "beat" is not an Unseen class, so this is treated as a user's own data set.
    make_agd_tree(tmp_path / "b", split="Unseen", affordances=("hold", "beat"))
    assert resolve_vocabulary(tmp_path / "b", "Unseen") == ["beat", "hold"]
    make_agd_tree(tmp_path, split="Kitchen", affordances=("stir_with", "grasp"))
    assert resolve_vocabulary(tmp_path, "Kitchen") == ["grasp", "stir_with"]
    ds = AffordanceTrainDataset(tmp_path, "Kitchen", image_size=S)
    assert sorted(set(ds.labels.tolist())) == [0, 1]


def test_hico_layout_without_split_level(tmp_path: Path, make_agd_tree) -> None:
    make_agd_tree(tmp_path / "flat", split=None, affordances=("pour", "sip"))
    assert split_dir(tmp_path / "flat", "HICO-IIF") == tmp_path / "flat"
    assert resolve_vocabulary(tmp_path / "flat", "HICO-IIF") == list(HICO_IIF)
    make_agd_tree(tmp_path / "nested", split="HICO-IIF", affordances=("pour",))
    assert split_dir(tmp_path / "nested", "HICO-IIF") == tmp_path / "nested" / "HICO-IIF"
    ds = AffordanceTestDataset(tmp_path / "flat", "HICO-IIF", image_size=S)
    assert {int(label) for label in ds.labels} == {HICO_IIF.index("pour"), HICO_IIF.index("sip")}


def test_missing_root_and_split_errors(tmp_path: Path, tiny_agd_root: Path) -> None:
    with pytest.raises(ValueError, match="does not exist; expected the AGD20K layout"):
        AffordanceTrainDataset(tmp_path / "nowhere", "Seen", image_size=S)
    with pytest.raises(ValueError, match="Unseen"):
        AffordanceTrainDataset(tiny_agd_root, "Unseen", image_size=S)


def test_empty_affordance_folder_is_an_error(tiny_agd_root: Path) -> None:
    empty = tiny_agd_root / "Seen" / "trainset" / "exocentric" / "carry"
    (empty / "obj0").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"carry.*holds no images.*remove it or add images"):
        AffordanceTrainDataset(tiny_agd_root, "Seen", image_size=S)


def test_items_without_egocentric_images_are_dropped(tiny_agd_root: Path, caplog) -> None:
    ego = tiny_agd_root / "Seen" / "trainset" / "egocentric" / "hold" / "obj0"
    for path in ego.iterdir():
        path.unlink()
    with caplog.at_level(logging.WARNING, logger=datasets_module.__name__):
        ds = AffordanceTrainDataset(tiny_agd_root, "Seen", image_size=S)
    assert len(ds) == 2 * 4 and ds.dropped_items == 4
    assert not any(k.startswith("hold/") for k in ds.keys)
    warnings = [r for r in caplog.records if "dropped 4 exocentric" in r.getMessage()]
    assert len(warnings) == 1


def test_unknown_affordance_in_given_vocabulary(tiny_agd_root: Path) -> None:
    with pytest.raises(ValueError, match=r"\['sit_on'\].*not in the vocabulary"):
        AffordanceTrainDataset(
            tiny_agd_root, "Seen", image_size=S, vocabulary=["hold", "cut_with"]
        )
    with pytest.raises(ValueError, match=r"\['sit_on'\].*not in the vocabulary"):
        AffordanceTestDataset(tiny_agd_root, "Seen", image_size=S, vocabulary=["hold", "cut_with"])


@pytest.mark.parametrize("n_exo", [6, 2])
def test_exocentric_sampling_rules(tmp_path: Path, make_agd_tree, monkeypatch, n_exo: int) -> None:
    make_agd_tree(tmp_path, affordances=("hold",), n_exo=n_exo, n_ego=3)
    ds = AffordanceTrainDataset(tmp_path, "Seen", image_size=S, augment=False)
    calls = _spy_loads(monkeypatch)
    exo_dir = tmp_path / "Seen" / "trainset" / "exocentric" / "hold" / "obj0"
    ego_dir = tmp_path / "Seen" / "trainset" / "egocentric" / "hold" / "obj0"
    drawn: set[Path] = set()
    for index in range(len(ds)):
        for _ in range(4):
            calls.clear()
            item = ds[index]
            assert item["exo"].shape == (3, 3, S, S)
            exo_paths, ego_path = calls[:3], calls[3]
            assert len(calls) == 4
            assert exo_paths[0].name == ds.keys[index].split("/")[-1]
            assert all(p.parent == exo_dir for p in exo_paths)
            assert ego_path.parent == ego_dir
            if n_exo > 3:
                assert len(set(exo_paths)) == 3  # without replacement, keyed image excluded
            drawn.update(exo_paths[1:])
            # The keyed image comes first, unaugmented here, so it matches a direct decode.
            keyed = cv2.resize(load_rgb(exo_paths[0]), (S, S), interpolation=cv2.INTER_AREA)
            torch.testing.assert_close(
                item["exo"][0], torch.from_numpy(keyed).permute(2, 0, 1).float() / 255.0
            )
    assert len(drawn) == n_exo  # every image of the folder serves as an extra view


def test_same_seed_same_items(tiny_agd_root: Path) -> None:
    a = AffordanceTrainDataset(tiny_agd_root, "Seen", image_size=S, seed=3)
    b = AffordanceTrainDataset(tiny_agd_root, "Seen", image_size=S, seed=3)
    for index in (0, 7):
        x, y = a[index], b[index]
        assert torch.equal(x["exo"], y["exo"]) and torch.equal(x["ego"], y["ego"])
    assert not torch.equal(a[0]["exo"], a[0]["exo"])  # re-drawn on every access (p ~ 1)


def test_truncated_jpeg_is_skipped_counted_and_replaced(tiny_agd_root: Path, caplog) -> None:
    folder = tiny_agd_root / "Seen" / "trainset" / "exocentric" / "hold" / "obj0"
    bad = sorted(folder.iterdir())[0]
    _truncate(bad)
    assert load_rgb(bad) is None
    ds = AffordanceTrainDataset(tiny_agd_root, "Seen", image_size=S)
    index = ds.keys.index(f"hold/obj0/{bad.name}")
    with caplog.at_level(logging.WARNING, logger=datasets_module.__name__):
        item = ds[index]
    assert item["skipped"] >= 1 and bad in ds.corrupt_files
    assert item["exo"].shape == (3, 3, S, S) and bool(torch.isfinite(item["exo"]).all())
    assert any(bad.name in r.getMessage() for r in caplog.records)
    # A folder whose images are all unreadable: the whole item is replaced by another one.
    ego = tiny_agd_root / "Seen" / "trainset" / "egocentric" / "hold" / "obj0"
    for path in ego.iterdir():
        _truncate(path)
    item = ds[index]
    assert item["skipped"] >= 2 and item["ego"].shape == (3, S, S)
    for _ in range(3):  # later accesses still never crash
        assert ds[index]["exo"].shape == (3, 3, S, S)


def test_test_dataset_pairs_images_with_gt(tmp_path: Path, make_agd_tree) -> None:
    base = make_agd_tree(tmp_path, affordances=("cut", "hold"), n_test=3, gt_size=(20, 30))
    image_dir = base / "testset" / "egocentric" / "hold" / "obj0"
    (image_dir / "extra_without_gt.jpg").write_bytes(
        (image_dir / "hold_obj0_0000.jpg").read_bytes()
    )
    # A non-3-character extension must pair too.
    (image_dir / "hold_obj0_0002.jpg").rename(image_dir / "hold_obj0_0002.jpeg")
    ds = AffordanceTestDataset(tmp_path, "Seen", image_size=S)
    assert len(ds) == 6
    assert "hold/obj0/hold_obj0_0002" in ds.keys
    item = ds[ds.keys.index("hold/obj0/hold_obj0_0001")]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    assert item["gt"].shape == (224, 224) and item["gt"].dtype == torch.float32
    assert int(item["label"]) == AGD20K_SEEN.index("hold")
    raw = cv2.imread(
        str(base / "testset" / "GT" / "hold" / "obj0" / "hold_obj0_0001.png"), cv2.IMREAD_GRAYSCALE
    )
    assert raw.shape == (20, 30)
    torch.testing.assert_close(item["gt"], prepare_gt(raw, 224))
    assert 0.0 <= float(item["gt"].min()) and float(item["gt"].max()) <= 1.0
    assert AffordanceTestDataset(tmp_path, "Seen", image_size=S, eval_size=64)[0]["gt"].shape == (
        64,
        64,
    )


def test_unreadable_gt_names_the_file(tiny_agd_root: Path) -> None:
    ds = AffordanceTestDataset(tiny_agd_root, "Seen", image_size=S)
    gt_path = ds.samples[0][1]
    gt_path.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=gt_path.name):
        ds[0]


def test_holdout_split_is_disjoint_and_deterministic(tmp_path: Path, make_agd_tree) -> None:
    make_agd_tree(tmp_path, objects_per_aff=2, n_exo=5, n_ego=1)
    ds = AffordanceTrainDataset(tmp_path, "Seen", image_size=S)
    train, val = holdout_split(ds, 0.2, seed=0)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(len(ds)))
    assert len(val) == 3 * 2  # round(0.2 * 10) per class
    assert holdout_split(ds, 0.2, seed=0) == (train, val)
    assert holdout_split(ds, 0.2, seed=1) != (train, val)
    assert set(ds.labels[train].tolist()) == set(ds.labels.tolist())
    with pytest.raises(ValueError, match="fraction"):
        holdout_split(ds, 1.0)


def _plain(path: Path) -> torch.Tensor:
    """The tensor an un-augmented training set makes of ``path``."""
    image = cv2.resize(load_rgb(path), (S, S), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def _which(tensor: torch.Tensor, candidates: dict[Path, torch.Tensor]) -> Path:
    """The one file whose un-augmented tensor equals ``tensor``."""
    hits = [p for p, t in candidates.items() if torch.equal(t, tensor)]
    assert len(hits) == 1, f"{len(hits)} files match"
    return hits[0]


def test_samples_image_paths_and_indices(tmp_path: Path, make_agd_tree) -> None:
    make_agd_tree(tmp_path, objects_per_aff=2, n_exo=4, n_ego=2)
    full = AffordanceTrainDataset(tmp_path, "Seen", image_size=S, augment=False)
    assert len(full.samples) == len(full) == 3 * 2 * 4
    for index in (0, len(full) - 1):
        exo_path, aff, obj = full.samples[index]
        assert exo_path.parent.name == obj and exo_path.parent.parent.name == aff
        assert int(full[index]["label"]) == AGD20K_SEEN.index(aff)
        assert torch.equal(full[index]["exo"][0], _plain(exo_path))
    paths = full.image_paths()
    assert len(paths) == len(set(paths)) == 3 * 2 * (4 + 2)
    assert all(p.is_file() for p in paths)
    sub = AffordanceTrainDataset(tmp_path, "Seen", image_size=S, augment=False, indices=[5, 0, 7])
    assert len(sub) == 3 and sub.samples == [full.samples[i] for i in (5, 0, 7)]
    assert int(sub[0]["index"]) == 0 and int(sub[0]["label"]) == int(full.labels[5])
    assert set(sub.image_paths()) <= set(paths)
    with pytest.raises(ValueError, match="indices"):
        AffordanceTrainDataset(tmp_path, "Seen", image_size=S, indices=[len(full)])


def test_egocentric_image_is_redrawn_from_its_folder(tmp_path: Path, make_agd_tree) -> None:
    make_agd_tree(tmp_path, affordances=("hold",), objects_per_aff=2, n_exo=4, n_ego=4)
    ds = AffordanceTrainDataset(tmp_path, "Seen", image_size=S, augment=False)
    exo_path, aff, obj = ds.samples[0]
    ego_dir = tmp_path / "Seen" / "trainset" / "egocentric" / aff / obj
    egos = {p: _plain(p) for p in ego_dir.iterdir()}
    drawn = {_which(ds[0]["ego"], egos) for _ in range(20)}
    assert len(drawn) > 1


def test_garbage_file_is_replaced_and_remembered(
    tmp_path: Path, make_agd_tree, monkeypatch
) -> None:
    make_agd_tree(tmp_path, affordances=("hold",), n_exo=4, n_ego=2)
    ds = AffordanceTrainDataset(tmp_path, "Seen", image_size=S, augment=False)
    ego_dir = tmp_path / "Seen" / "trainset" / "egocentric" / "hold" / "obj0"
    broken = sorted(ego_dir.iterdir())[0]
    broken.write_bytes(b"not an image at all")
    good = {p: _plain(p) for p in ego_dir.iterdir() if p != broken}
    calls = _spy_loads(monkeypatch)
    items = [ds[i] for i in range(len(ds)) for _ in range(5)]
    assert broken in ds.corrupt_files
    assert calls.count(broken) == 1  # decoded once, then avoided without reading it
    assert {int(item["skipped"]) for item in items} == {0, 1}
    for item in items:
        _which(item["ego"], good)


def test_jpeg_without_end_marker_is_rejected(tmp_path: Path, make_agd_tree) -> None:
    base = make_agd_tree(tmp_path, affordances=("hold",), n_exo=1)
    path = base / "trainset" / "exocentric" / "hold" / "obj0" / "hold_obj0_0000.jpg"
    assert load_rgb(path) is not None and load_rgb(path).shape == (40, 48, 3)
    data = path.read_bytes()
    path.write_bytes(data[:-2])  # only the end-of-image marker is missing
    assert load_rgb(path) is None
    path.write_bytes(data + b"\x00\x00")  # trailing padding after the marker is fine
    assert load_rgb(path) is not None


def test_missing_egocentric_subfolder_is_an_error(tiny_agd_root: Path) -> None:
    ego = tiny_agd_root / "Seen" / "trainset" / "egocentric"
    ego.rename(tiny_agd_root / "elsewhere")
    with pytest.raises(ValueError, match="egocentric"):
        AffordanceTrainDataset(tiny_agd_root, "Seen", image_size=S)


def test_dataloader_collates_both_datasets(tiny_agd_root: Path) -> None:
    train = AffordanceTrainDataset(tiny_agd_root, "Seen", image_size=S)
    batch = next(iter(DataLoader(train, batch_size=2, shuffle=True, num_workers=0)))
    assert batch["ego"].shape == (2, 3, S, S) and batch["exo"].shape == (2, 3, 3, S, S)
    for key in ("label", "skipped", "index"):
        assert batch[key].shape == (2,) and batch[key].dtype == torch.int64
    test = AffordanceTestDataset(tiny_agd_root, "Seen", image_size=S)
    batch = next(iter(DataLoader(test, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 3, S, S) and batch["gt"].shape == (2, 224, 224)
    assert isinstance(batch["key"], list) and len(batch["key"]) == 2


def test_vocabulary_file_pins_class_order(tmp_path: Path, make_agd_tree) -> None:
    split = make_agd_tree(tmp_path, affordances=("hold", "cut_with"))
    (split / "vocabulary.txt").write_text("cut_with\nhold\npour\n")
    assert resolve_vocabulary(tmp_path, "Seen") == ["cut_with", "hold", "pour"]
    (split / "vocabulary.txt").write_text("hold\nhold\n")
    with pytest.raises(ValueError, match="distinct"):
        resolve_vocabulary(tmp_path, "Seen")
