"""Bad-input behaviour of the CLIs (one-line errors, exit codes) and affordance-predict."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from affordance_core import create_model, save_model
from training import evaluate, predict, train
from training.common import parse_set_items

VOCAB = ["hold", "cut_with", "sit_on"]


def error_line(err: str, prog: str) -> str:
    """The single ``<prog>: error: ...`` line of a failed run."""
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1, err
    assert err.rstrip().splitlines()[-1] == lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, random_tiny_weights: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli")
    weights = random_tiny_weights
    torch.manual_seed(0)  # heads independent of the fixtures created before
    model = create_model("tiny", vocabulary=VOCAB, method="selectivecl", weights_dir=weights)
    checkpoint = save_model(base / "model.pt", model, extra={"step": 0})
    image = np.zeros((60, 80, 3), np.uint8)
    cv2.circle(image, (40, 30), 15, (0, 200, 255), -1)
    cv2.imwrite(str(base / "mug.jpg"), image)
    return {"base": base, "weights": weights, "checkpoint": checkpoint, "image": base / "mug.jpg"}


def test_missing_data_root_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    status = train.main(
        [
            "--data-root",
            str(missing),
            "--split",
            "Seen",
            "--method",
            "ce",
            "--model",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert status == 1
    line = error_line(capsys.readouterr().err, "affordance-train")
    assert str(missing) in line and "does not exist" in line


def test_unknown_method_is_a_usage_error_listing_the_methods(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(
            [
                "--data-root",
                str(tmp_path),
                "--split",
                "Seen",
                "--method",
                "magic",
                "--out",
                str(tmp_path / "run"),
            ]
        )
    assert exc.value.code == 2
    line = error_line(capsys.readouterr().err, "affordance-train")
    for name in ("ce", "locate", "selectivecl", "looptrans"):
        assert repr(name) in line


def test_empty_affordance_folder_is_a_one_line_error(tmp_path, make_agd_tree, capsys):
    split = make_agd_tree(tmp_path / "data", split="Seen")
    empty = split / "trainset" / "exocentric" / "pour"
    empty.mkdir()
    status = train.main(
        [
            "--data-root",
            str(tmp_path / "data"),
            "--split",
            "Seen",
            "--method",
            "ce",
            "--model",
            "tiny",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "model.pretrained=false",
            "--no-progress",
        ]
    )
    assert status == 1
    line = error_line(capsys.readouterr().err, "affordance-train")
    assert str(empty) in line
    assert not (tmp_path / "run" / "last.pt").exists()


def test_user_split_name_only_needs_its_folder(tmp_path, capsys):
    status = train.main(
        [
            "--data-root",
            str(tmp_path),
            "--split",
            "MyKitchen",
            "--method",
            "ce",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert status == 1
    line = error_line(capsys.readouterr().err, "affordance-train")
    assert "MyKitchen" in line


def test_resume_without_a_checkpoint_and_bad_overrides(tmp_path, capsys):
    status = train.main(["--out", str(tmp_path / "fresh"), "--resume"])
    assert status == 1
    assert "last.pt" in error_line(capsys.readouterr().err, "affordance-train")
    status = train.main(
        [
            "--data-root",
            str(tmp_path),
            "--split",
            "Seen",
            "--method",
            "ce",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "train.lr",
        ]
    )
    assert status == 2
    assert "KEY=VALUE" in error_line(capsys.readouterr().err, "affordance-train")
    assert parse_set_items(["train.lr=1e-3", "model.pretrained=false"]) == {
        "train": {"lr": 0.001},
        "model": {"pretrained": False},
    }


def test_eval_rejects_a_file_that_is_not_a_checkpoint(tmp_path, make_agd_tree, capsys):
    make_agd_tree(tmp_path / "data", split="Seen")
    bogus = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, bogus)
    status = evaluate.main(
        [
            "--data-root",
            str(tmp_path / "data"),
            "--split",
            "Seen",
            "--checkpoint",
            str(bogus),
            "--no-progress",
        ]
    )
    assert status == 1
    line = error_line(capsys.readouterr().err, "affordance-eval")
    assert str(bogus) in line and "not an affordance model checkpoint" in line


def test_eval_rejects_heads_of_another_model(tmp_path, make_agd_tree, assets, capsys):
    make_agd_tree(tmp_path / "data", split="Seen")
    payload = torch.load(assets["checkpoint"], map_location="cpu", weights_only=False)
    payload["heads"]["classifier.weight"] = torch.zeros(7, 5, 1, 1)
    other = tmp_path / "other.pt"
    torch.save(payload, other)
    status = evaluate.main(
        [
            "--data-root",
            str(tmp_path / "data"),
            "--split",
            "Seen",
            "--checkpoint",
            str(other),
            "--weights-dir",
            str(assets["weights"]),
            "--no-progress",
        ]
    )
    assert status == 1
    line = error_line(capsys.readouterr().err, "affordance-eval")
    assert str(other) in line and "classifier.weight" in line


def test_eval_rejects_a_split_outside_the_checkpoint_vocabulary(
    tmp_path, make_agd_tree, assets, capsys
):
    make_agd_tree(tmp_path / "data", split="Seen", affordances=("hold", "pour"))
    status = evaluate.main(
        [
            "--data-root",
            str(tmp_path / "data"),
            "--split",
            "Seen",
            "--checkpoint",
            str(assets["checkpoint"]),
            "--weights-dir",
            str(assets["weights"]),
            "--no-progress",
        ]
    )
    assert status == 1
    line = error_line(capsys.readouterr().err, "affordance-eval")
    assert "pour" in line and str(assets["checkpoint"]) in line


def test_predict_writes_overlay_mask_and_heatmaps(assets, tmp_path, capsys):
    out = tmp_path / "pred" / "mug.png"
    npy = tmp_path / "mug.npy"
    status = predict.main(
        [
            "--checkpoint",
            str(assets["checkpoint"]),
            "--image",
            str(assets["image"]),
            "--action",
            "hold",
            "--out",
            str(out),
            "--weights-dir",
            str(assets["weights"]),
            "--heatmap-npy",
            str(npy),
        ]
    )
    assert status == 0
    overlay = cv2.imread(str(out))
    mask = cv2.imread(str(out.with_name("mug_mask.png")), cv2.IMREAD_GRAYSCALE)
    assert overlay.shape == (60, 80, 3)
    assert mask.shape == (60, 80) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    heat = np.load(npy)
    assert heat.shape == (1, 60, 80) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["actions"][0]["action"] == "hold"
    x, y = report["actions"][0]["peak_xy"]
    assert heat[0, y, x] == heat.max()


def test_predict_several_actions_in_one_image(assets, tmp_path):
    out = tmp_path / "two.png"
    status = predict.main(
        [
            "--checkpoint",
            str(assets["checkpoint"]),
            "--image",
            str(assets["image"]),
            "--action",
            "hold,cut_with",
            "--out",
            str(out),
            "--weights-dir",
            str(assets["weights"]),
        ]
    )
    assert status == 0
    assert cv2.imread(str(out)).shape == (60, 160, 3)
    for action in ("hold", "cut_with"):
        assert (tmp_path / f"two_{action}_mask.png").is_file()


def test_predict_onnxruntime_backend_matches_torch(assets, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    heat, reports = {}, {}
    for backend in ("torch", "onnxruntime"):
        npy = tmp_path / f"{backend}.npy"
        status = predict.main(
            [
                "--checkpoint",
                str(assets["checkpoint"]),
                "--image",
                str(assets["image"]),
                "--action",
                "hold,sit_on",
                "--out",
                str(tmp_path / f"{backend}.png"),
                "--weights-dir",
                str(assets["weights"]),
                "--heatmap-npy",
                str(npy),
                "--backend",
                backend,
                "--onnx-cache",
                str(tmp_path / "cache"),
            ]
        )
        assert status == 0
        heat[backend] = np.load(npy)
        reports[backend] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reports["onnxruntime"]["backend"] == "onnxruntime"
    assert list((tmp_path / "cache").glob("*-fp32/meta.json"))
    assert np.abs(heat["torch"] - heat["onnxruntime"]).max() <= 1e-3
    assert [a["peak_xy"] for a in reports["torch"]["actions"]] == [
        a["peak_xy"] for a in reports["onnxruntime"]["actions"]
    ]


def test_predict_unknown_action_lists_the_vocabulary(assets, tmp_path, capsys):
    out = tmp_path / "x.png"
    status = predict.main(
        [
            "--checkpoint",
            str(assets["checkpoint"]),
            "--image",
            str(assets["image"]),
            "--action",
            "fly",
            "--out",
            str(out),
            "--weights-dir",
            str(assets["weights"]),
        ]
    )
    assert status == 2
    line = error_line(capsys.readouterr().err, "affordance-predict")
    assert "'fly'" in line and all(word in line for word in VOCAB)
    assert not out.exists()


def test_predict_unreadable_image_is_a_one_line_error(assets, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    status = predict.main(
        [
            "--checkpoint",
            str(assets["checkpoint"]),
            "--image",
            str(broken),
            "--action",
            "hold",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    assert status == 1
    assert str(broken) in error_line(capsys.readouterr().err, "affordance-predict")
