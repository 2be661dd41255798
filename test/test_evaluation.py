"""The evaluation instrument by value: planner metrics worked by hand (ties, empty masks), the
calibration modes on a hand-computed example, the one multi-action map path, the pair
bootstrap, and the validation choice of affordance-train."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os

import numpy as np
import pytest
import torch

from affordance_core.metrics import action_sensitivity, auroc, gt_region, mask_iou, peak_hit
from affordance_core.predictor import grasp_masks

NAN = float("nan")

# GT region (>= 0.5 max): (0, 2) and (1, 1).
GT = torch.tensor([[0.0, 0.2, 1.0], [0.0, 0.6, 0.4], [0.0, 0.0, 0.0]])


def one_hot(y: int, x: int, value: float = 1.0) -> torch.Tensor:
    pred = torch.zeros(3, 3)
    pred[y, x] = value
    return pred


def test_gt_region_is_half_the_maximum_and_empty_for_a_zero_map():
    assert gt_region(GT).nonzero().tolist() == [[0, 2], [1, 1]]
    assert not gt_region(torch.zeros(3, 3)).any()


def test_peak_hit_counts_tied_maxima_by_their_share_on_the_region():
    tied = one_hot(0, 2) + one_hot(2, 0)  # one maximum on, one off
    preds = torch.stack([one_hot(1, 1), one_hot(2, 2), tied, torch.ones(3, 3)])
    hits = peak_hit(preds, GT.expand(4, 3, 3))
    assert hits.tolist() == pytest.approx([1.0, 0.0, 0.5, 2 / 9])
    assert math.isnan(float(peak_hit(one_hot(0, 0), torch.zeros(3, 3))[0]))


def test_mask_iou_by_hand_with_empty_masks():
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 1] = mask[0, 2] = True  # 1 of 3 pixels in the union
    empty = torch.zeros(3, 3, dtype=torch.bool)
    values = mask_iou(torch.stack([mask, empty, empty]), torch.stack([GT, GT, torch.zeros(3, 3)]))
    assert values.tolist() == pytest.approx([1 / 3, 0.0, 1.0])


def test_action_sensitivity_wins_ties_and_images_without_candidates():
    label = torch.tensor([1.0, 2.0, 0.5])
    other = torch.tensor([[2.0, 0.5], [2.0, NAN], [9.0, 9.0]])
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    values = action_sensitivity(label, other, valid)
    assert values[:2].tolist() == [0.5, 0.5]  # one win one loss; one tie
    assert math.isnan(float(values[2]))
    with pytest.raises(ValueError, match="shapes do not match"):
        action_sensitivity(label, other, valid[:, :1])


def test_auroc_counts_ties_as_half_and_is_nan_for_one_class():
    assert auroc([0.9, 0.8, 0.8, 0.1], [True, True, False, False]) == pytest.approx(3.5 / 4)
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert math.isnan(auroc([0.3, 0.4], [True, True]))


def test_grasp_mask_keeps_the_thresholded_region_around_the_peak():
    heat = np.zeros((2, 5, 5), np.float32)
    heat[0, 0, 0:2] = [0.9, 0.6]  # the peak's region
    heat[0, 4, 3:5] = [0.7, 0.8]  # a second region, not the peak's
    heat[1] = 0.2  # nothing above the threshold
    masks = grasp_masks(heat, threshold=0.5)
    assert np.argwhere(masks[0]).tolist() == [[0, 0], [0, 1]]
    assert not masks[1].any()
    both = grasp_masks(heat[0], threshold=0.5, peak_component=False)
    assert int(both.sum()) == 4


@pytest.fixture(scope="module")
def model():
    from affordance_core import create_model

    torch.manual_seed(0)
    return create_model(
        "tiny", vocabulary=["hold", "cut_with", "sit_on"], pretrained=False, method="selectivecl"
    ).eval()


def test_calibration_modes_on_a_hand_computed_example(model):
    cams = torch.tensor([[[-1.0, 1.0], [3.0, 1.0]]])  # min-max: 0, .5, 1, .5
    affinity = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])  # already in [0, 1]
    expected = {
        "none": [[-1.0, 1.0], [3.0, 1.0]],
        "binary": [[0.0, 0.0], [1.0, 0.0]],  # object_threshold 0.6
        "product": [[0.0, 0.25], [1.0, 0.125]],
        "reference": [[0.0, 0.5], [3.0, 0.25]],
    }
    original = model.config
    try:
        for mode, values in expected.items():
            model.config = dataclasses.replace(original, calibration=mode, object_threshold=0.6)
            out = model.calibrate(cams, affinity)
            assert torch.allclose(out, torch.tensor([values]), atol=1e-6), mode
    finally:
        model.config = original


def test_continuous_is_read_as_product_and_unknown_modes_are_refused():
    from affordance_core.config import AffordanceConfig

    assert AffordanceConfig(calibration="continuous").calibration == "product"
    with pytest.raises(ValueError, match="calibration must be one of"):
        AffordanceConfig(calibration="sometimes")


def test_infer_is_the_one_map_path_for_several_actions(model):
    images = torch.rand(2, 3, model.image_size, model.image_size)
    feats = model.extract(images)
    ids = torch.tensor([[0, 2, 1], [1, 1, 0]])
    with torch.inference_mode():
        maps, scores = model.infer(feats, ids)
        every = model.infer(feats, torch.arange(3).expand(2, 3))[1]
    assert maps.shape == (2, 3, 14, 14) and scores.shape == (2, 3)
    assert ((every > 0) & (every < 1)).all()
    for a in range(3):
        single = model.maps_from_features(feats, ids[:, a])
        assert torch.allclose(maps[:, a], single, atol=1e-6)
        assert torch.allclose(scores[:, a], every.gather(1, ids[:, a : a + 1])[:, 0])


def test_maps_under_each_choice_are_the_maps_of_that_config(model):
    """The validation choice's shortcut (each branch's CAM once) gives, for every (branch,
    calibration), the maps the model gives with that config, and leaves the config alone."""
    feats = model.extract(torch.rand(3, 3, model.image_size, model.image_size))
    ids = torch.tensor([[0, 2], [1, 1], [2, 0]])
    choices = [(b, c) for b in ("ego", "exo", "ego+exo") for c in ("binary", "product", "none")]
    original = model.config
    with torch.inference_mode():
        candidates = model.maps_under(feats, ids, choices)
        assert model.config is original
        try:
            for (branch, calibration), maps in zip(choices, candidates, strict=True):
                model.config = dataclasses.replace(
                    original, inference_branch=branch, calibration=calibration
                )
                assert torch.equal(maps, model.infer(feats, ids)[0]), (branch, calibration)
        finally:
            model.config = original
    assert not torch.allclose(candidates[0], candidates[3])  # the branches differ


def test_infer_score_is_the_sigmoid_of_the_cam_affinity_and_map_peaks(model):
    """The score by hand: sigmoid(w_cam * max CAM logit + w_aff * max ego cosine + w_map * max
    of the returned map + b), each (image, action) on its own, on the inference branch; the
    maps do not depend on it."""
    from affordance_core.affinity import prompt_affinity

    images = torch.rand(2, 3, model.image_size, model.image_size)
    feats = model.extract(images)
    ids = torch.tensor([[0, 2], [1, 1]])
    original = model.config
    try:
        for branch, weights, w_map, bias in (
            ("ego", (0.7, -2.0), 0.0, 0.3),
            ("ego+exo", (1.5, 4.0), 0.0, -1.0),
            ("ego+exo", (0.2, 1.0), 2.5, -0.5),
        ):
            model.config = dataclasses.replace(
                original,
                inference_branch=branch,
                score_weights=weights,
                score_map_weight=w_map,
                score_bias=bias,
            )
            with torch.inference_mode():
                maps, scores = model.infer(feats, ids)
                tokens = model.aff_proj(feats.keys)
                ego, exo = model.ego_proj(tokens), model.exo_proj(tokens)
                proj = ego if branch == "ego" else 0.5 * (ego + exo)
                cams = model.classifier(proj)
                aff = prompt_affinity(feats.clip, model.ego_text[ids])
            for i in range(2):
                for a in range(2):
                    z_cam = float(cams[i, ids[i, a]].max())
                    z_aff = float(aff[i, a].max())
                    z_map = float(maps[i, a].max())
                    logit = weights[0] * z_cam + weights[1] * z_aff + w_map * z_map + bias
                    expected = 1.0 / (1.0 + math.exp(-logit))
                    assert float(scores[i, a]) == pytest.approx(expected, abs=1e-5)
            model.config = dataclasses.replace(original, inference_branch=branch)
            with torch.inference_mode():
                assert torch.equal(model.infer(feats, ids)[0], maps)
    finally:
        model.config = original


def test_predictor_below_min_score_is_absent_and_above_it_unchanged(model):
    from affordance_core.predictor import AffordancePredictor

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    low = AffordancePredictor(model, min_score=0.0)
    seen = low(image, ["hold", "sit_on"])
    assert all(p.present and p.heatmap.max() == pytest.approx(1.0) for p in seen)
    assert all(np.array_equal(p.mask, grasp_masks(p.heatmap, 0.5)) and p.mask.any() for p in seen)
    # min_score between the two scores: the lower one is absent, the other as before
    scores = sorted(p.score for p in seen)
    assert scores[0] < scores[1], "the two actions must score differently"
    low.min_score = 0.5 * (scores[0] + scores[1])
    gated = low.predict(["hold", "sit_on"])
    for before, after in zip(seen, gated, strict=True):
        assert after.score == before.score and after.peak_xy == before.peak_xy
        if before.score >= low.min_score:
            assert after.present
            assert np.array_equal(after.heatmap, before.heatmap)
            assert np.array_equal(after.mask, before.mask)
        else:
            assert not after.present and not after.mask.any()
            assert after.heatmap.max() == pytest.approx(after.score, abs=1e-6)
            assert np.allclose(after.heatmap, before.heatmap * before.score, atol=1e-6)
    with pytest.raises(ValueError, match="min_score"):
        AffordancePredictor(model, min_score=1.5)


def test_score_config_round_trips_and_old_checkpoints_load(tmp_path, random_tiny_weights):
    from affordance_core import create_model
    from affordance_core.checkpoint import (
        load_model,
        read_checkpoint,
        save_model,
        update_checkpoint_config,
    )
    from affordance_core.config import AffordanceConfig

    cfg = AffordanceConfig(score_weights=(2.0, -1.5), score_bias=0.25, score_map_weight=1.5)
    data = cfg.to_dict()
    assert data["score_weights"] == [2.0, -1.5] and data["score_map_weight"] == 1.5
    assert AffordanceConfig.from_dict(data) == cfg
    for bad in (
        {"score_weights": (1.0,)},
        {"score_bias": float("nan")},
        {"score_map_weight": float("inf")},
        {"score_map_weight": True},
    ):
        with pytest.raises(ValueError, match="score_"):
            AffordanceConfig(**bad)
    model = create_model("tiny", vocabulary=["hold", "cut_with"], pretrained=False)
    path = tmp_path / "model.pt"
    save_model(path, model)
    payload = torch.load(path, weights_only=False)
    for key in ("score_weights", "score_bias", "score_map_weight"):
        payload["config"].pop(key)
    torch.save(payload, path)
    assert "score_bias" not in read_checkpoint(path)["config"]
    old = load_model(path, weights_dir=random_tiny_weights)
    assert old.config.score_weights == (1.0, 0.0) and old.config.score_bias == 0.0
    assert old.config.score_map_weight == 0.0
    update_checkpoint_config(path, score_weights=[0.5, 3.0], score_bias=-2.0)
    new = load_model(path, weights_dir=random_tiny_weights)
    assert new.config.score_weights == (0.5, 3.0) and new.config.score_bias == -2.0


def test_predictor_heatmaps_are_the_models_maps_upsampled(model):
    import torch.nn.functional as F

    from affordance_core.backbones import minmax
    from affordance_core.predictor import AffordancePredictor

    predictor = AffordancePredictor(model)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    preds = predictor(image, ["sit_on", "hold"])
    with torch.inference_mode():
        feats = model.extract(predictor.image_tensor(image))
        maps, scores = model.infer(feats, torch.tensor([[2, 0]]))
    expected = minmax(F.interpolate(maps, size=(60, 80), mode="bilinear", align_corners=False))
    for i, pred in enumerate(preds):
        assert np.allclose(pred.heatmap, expected[0, i].numpy(), atol=1e-5)
        assert pred.score == pytest.approx(float(scores[0, i]), abs=1e-6)
        assert np.array_equal(pred.mask, grasp_masks(pred.heatmap, predictor.mask_threshold))


def test_pair_bootstrap_resamples_pairs_and_skips_nan():
    from training.stats import pair_bootstrap, pair_groups

    keys = ["hold/mug/0", "hold/mug/1", "hold/mug/2", "cut_with/knife/0"]
    groups, names = pair_groups(keys)
    assert groups.tolist() == [0, 0, 0, 1] and names == ["hold/mug", "cut_with/knife"]
    out = pair_bootstrap([0.0, 0.0, 0.0, 1.0], groups, resamples=500)
    assert out["mean"] == pytest.approx(0.25) and out["pairs"] == 2 and out["n"] == 4
    # drawing only the mug pair gives 0, only the knife pair 1: both occur in 500 draws
    assert out["low"] == pytest.approx(0.0) and out["high"] == pytest.approx(1.0)
    constant = pair_bootstrap([0.3, NAN, 0.3, 0.3], groups, resamples=200)
    assert constant["n"] == 3
    assert constant["low"] == pytest.approx(0.3) and constant["high"] == pytest.approx(0.3)


def test_benchmark_aggregate_means_spreads_and_gaps():
    from training.benchmark import aggregate
    from training.demo import ROW_METRICS

    keys = ["hold/a/0", "hold/a/1", "cut_with/b/0"]

    def rows(offset: float) -> dict:
        out = {}
        for name, shift in (("selectivecl", 0.0), ("ce", 1.0)):
            per = {
                m: [1.0 + shift + offset, 2.0 + shift + offset, 3.0 + shift + offset]
                for m in ("KLD", "SIM", "NSS", "peak_hit", "mask_iou", "action_sensitivity")
            }
            out[name] = {
                **{m: float(np.mean(per.get(m, [offset]))) for m in ROW_METRICS},
                "n": 3,
                "per_image": {"key": keys, **per},
            }
        return out

    result = aggregate([rows(0.0), rows(2.0)], resamples=200)
    kld = result["selectivecl"]["KLD"]
    assert kld["mean"] == pytest.approx(3.0) and (kld["min"], kld["max"]) == (2.0, 4.0)
    assert kld["low"] <= kld["mean"] <= kld["high"]
    gap = result["selectivecl"]["gap_to"]["ce"]["KLD"]
    assert gap["mean"] == pytest.approx(-1.0)
    assert gap["low"] == pytest.approx(-1.0) and gap["high"] == pytest.approx(-1.0)


@pytest.mark.timeout(300)
def test_eval_reports_planner_metrics_and_train_chooses_on_validation(
    tmp_path, make_agd_tree, random_tiny_weights, capsys
):
    from affordance_core.checkpoint import load_model, read_checkpoint
    from affordance_core.data import AffordanceTestDataset, BackgroundFrames
    from training import evaluate, train

    root = make_agd_tree(tmp_path / "data", split="Seen", n_exo=3, n_ego=2, n_test=2, seed=1)
    val_root = make_agd_tree(
        tmp_path / "val", split="Seen", n_exo=1, n_ego=1, n_test=2, seed=5
    ).parent
    background = root / "testset" / "background"
    background.mkdir(parents=True)
    import cv2

    for i in range(3):
        cv2.imwrite(str(background / f"bg_{i}.jpg"), np.full((32, 32, 3), 40 * i, np.uint8))
    val_background = val_root / "Seen" / "testset" / "background"
    val_background.mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(val_background / f"bg_{i}.jpg"), np.full((32, 32, 3), 30 * i, np.uint8))
    run = tmp_path / "run"
    args = [
        "--data-root",
        str(root.parent),
        "--split",
        "Seen",
        "--method",
        "selectivecl",
        "--out",
        str(run),
        "--iters",
        "4",
        "--weights-dir",
        str(random_tiny_weights),
        "--model",
        "tiny",
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
        "--val-root",
        str(val_root),
        "--snapshots",
        "2",
    ]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert train.main(args) == 0
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    record = json.loads((run / "validation.json").read_text())
    # 3 branches x 4 calibrations on the final step, then the winner on snapshot 2
    assert record["candidates"] == 13 == summary["validation"]["candidates"]
    final = {k: v["KLD"] for k, v in record["scores"].items() if k.startswith("4/")}
    assert len(final) == 12
    chosen = f"{record['inference_branch']}/{record['calibration']}"
    assert final[f"4/{chosen}"] == min(final.values())
    budgets = {k: v["KLD"] for k, v in record["scores"].items() if k.endswith(f"/{chosen}")}
    assert set(budgets) == {f"2/{chosen}", f"4/{chosen}"}
    assert budgets[f"{record['step']}/{chosen}"] == min(budgets.values())
    saved = read_checkpoint(run / "model.pt")
    assert saved["config"]["inference_branch"] == record["inference_branch"]
    assert saved["config"]["calibration"] == record["calibration"]
    assert saved["extra"]["step"] == record["step"]
    # the part prior's temperature: each candidate scored on the chosen branch and calibration,
    # the best kept, written into the checkpoint, and the final step's row is at that setting
    from affordance_core.config import PART_PRIOR_TEMPERATURES

    temperatures = record["temperature_scores"]
    assert set(temperatures) == {str(t) for t in PART_PRIOR_TEMPERATURES}
    chosen_t = record["part_prior_temperature"]
    assert temperatures[str(chosen_t)]["KLD"] == min(v["KLD"] for v in temperatures.values())
    assert summary["validation"]["part_prior_temperature"] == chosen_t
    assert saved["config"]["part_prior_temperature"] == chosen_t
    assert record["scores"][f"4/{chosen}"] == temperatures[str(chosen_t)]
    # the presence score is fitted on validation pairs and written into the checkpoint; the
    # checkpoint's own scores, recomputed here, rank afforded pairs above the negatives at
    # least as well as either feature alone
    fit = record["score_fit"]
    assert saved["config"]["score_weights"] == fit["score_weights"]
    assert saved["config"]["score_map_weight"] == fit["score_map_weight"]
    assert saved["config"]["score_bias"] == fit["score_bias"]
    model = load_model(run / "model.pt", weights_dir=random_tiny_weights)
    assert model.config.score_weights == tuple(fit["score_weights"])
    val_set = AffordanceTestDataset(val_root, "Seen", model.image_size, model.vocabulary)
    bg_set = BackgroundFrames(val_root, "Seen", model.image_size)
    val = evaluate.extract_test_set(model, val_set, device=torch.device("cpu"), background=bg_set)
    scores, positive, peaks = [], [], []
    frames = [(f, info["afforded"]) for f, _, _, info in val.batches]
    c = model.num_classes
    frames.append((val.background, torch.zeros(len(bg_set), c, dtype=torch.bool)))
    with torch.inference_mode():
        for feats, afforded in frames:
            every = torch.arange(c).expand(len(afforded), -1)
            scores.append(model.infer(feats, every)[1].flatten())
            peaks.append(model.score_features(feats, every).flatten(0, 1))
            positive.append(afforded.flatten())
    scores, positive, peaks = torch.cat(scores), torch.cat(positive), torch.cat(peaks)
    assert fit["n_background"] == len(bg_set) == 4
    assert (fit["n_pos"], fit["n_neg"]) == (int(positive.sum()), int((~positive).sum()))
    assert fit["n_pos"] > 0 and fit["n_neg"] >= 4 * c
    fitted = auroc(scores, positive)
    assert fitted == pytest.approx(fit["auroc"], abs=1e-4)
    assert fitted >= auroc(peaks[:, 0], positive) - 1e-6
    assert fitted >= auroc(peaks[:, 1], positive) - 1e-6
    assert fitted >= auroc(peaks[:, 2], positive) - 1e-6
    assert set(fit["auroc_fits"]) == {"cam+aff", "cam", "aff", "cam+aff+map", "map"}
    snapshot = read_checkpoint(run / "snapshot_000002.pt")
    same = all(torch.equal(saved["heads"][k], snapshot["heads"][k]) for k in snapshot["heads"])
    assert same == (record["step"] == 2)

    assert (
        evaluate.main(
            [
                "--data-root",
                str(root.parent),
                "--split",
                "Seen",
                "--checkpoint",
                str(run / "model.pt"),
                "--weights-dir",
                str(random_tiny_weights),
                "--no-progress",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line) == {
        "KLD",
        "SIM",
        "NSS",
        "peak_hit",
        "mask_iou",
        "action_sensitivity",
        "absence_auroc",
        "empty_on_background",
        "n",
        "n_background",
    }
    assert line["n"] == 6 and line["n_background"] == 3
    for key in (
        "peak_hit",
        "mask_iou",
        "action_sensitivity",
        "absence_auroc",
        "empty_on_background",
    ):
        assert 0.0 <= line[key] <= 1.0, key
    report = json.loads((tmp_path / "m.json").read_text())
    per_image = report["per_image"]
    assert len(per_image["key"]) == 6
    assert line["peak_hit"] == pytest.approx(np.mean(per_image["peak_hit"]), abs=1e-4)


@pytest.mark.timeout(300)
def test_validation_features_are_extracted_once_per_split_and_again_when_a_file_changes(
    tmp_path, make_agd_tree, random_tiny_weights, monkeypatch
):
    """Two runs on the same backbones chosen on one validation set in one process (as `make
    demo` does per split) extract its features once and choose as a fresh extraction would;
    a changed validation file extracts them again."""
    import shutil

    from training import evaluate, train

    root = make_agd_tree(tmp_path / "data", split="Seen", n_exo=2, n_ego=2, n_test=2, seed=1)
    val_root = make_agd_tree(
        tmp_path / "val", split="Seen", n_exo=1, n_ego=1, n_test=2, seed=5
    ).parent
    runs = []
    for method in ("ce", "locate"):
        run = tmp_path / method
        args = [
            "--data-root", str(root.parent), "--split", "Seen", "--method", method,
            "--out", str(run), "--iters", "2", "--weights-dir", str(random_tiny_weights),
            "--batch-size", "2", "--num-workers", "0", "--no-progress",
        ]  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            assert train.main(args) == 0
        runs.append(run)
    fresh = tmp_path / "fresh"
    shutil.copytree(runs[1], fresh)
    calls = []
    extract = evaluate.extract_test_set
    monkeypatch.setattr(
        evaluate, "extract_test_set", lambda *a, **k: calls.append(1) or extract(*a, **k)
    )
    monkeypatch.setattr(evaluate, "_LAST_VALIDATION_FEATURES", [])
    cpu = torch.device("cpu")
    kwargs = {"device": cpu, "weights_dir": random_tiny_weights}
    evaluate.choose_on_validation(runs[0], val_root, "Seen", **kwargs)
    evaluate.choose_on_validation(runs[1], val_root, "Seen", **kwargs)
    assert len(calls) == 1
    evaluate._LAST_VALIDATION_FEATURES.clear()
    evaluate.choose_on_validation(fresh, val_root, "Seen", **kwargs)
    assert len(calls) == 2
    reused, extracted = (json.loads((r / "validation.json").read_text()) for r in (runs[1], fresh))
    assert (
        reused["scores"] == extracted["scores"] and reused["score_fit"] == extracted["score_fit"]
    )
    image = next((val_root / "Seen" / "testset" / "egocentric").rglob("*.jpg"))
    image.write_bytes(image.read_bytes())  # same pixels, a new modification time
    os.utime(image, ns=(1, 1))
    evaluate.choose_on_validation(runs[1], val_root, "Seen", **kwargs)
    assert len(calls) == 3
