"""The frame objectness read-out: the fit on descriptors of known frames, the score rule inside
``AffordanceModel.infer``, files and their errors, the exported heads graph, the fitting CLI,
and how affordance-train copies it into a model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from affordance_core.objectness import (
    ObjectnessFit,
    fit_objectness,
    frame_descriptor,
    load_objectness,
    objectness_file,
    save_objectness,
)

SHIPPED_READ_OUT = (
    Path(__file__).resolve().parents[1] / "weights" / "tiny" / objectness_file("tiny")
)


def _clusters(n: int, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    objects = torch.randn(n, dim, generator=g) + torch.tensor([2.0] + [0.0] * (dim - 1))
    backgrounds = torch.randn(n, dim, generator=g) - torch.tensor([2.0] + [0.0] * (dim - 1))
    return objects, backgrounds


def test_fit_separates_frames_with_and_without_an_object():
    objects, backgrounds = _clusters(200)
    fit = fit_objectness(objects, backgrounds, c=1.0)
    assert fit.weight.shape == (6,) and fit.weight[0] > 0
    assert fit.stats["n_objects"] == 200 and fit.stats["n_backgrounds"] == 200
    assert fit.stats["cv_auroc"] > 0.97
    test_objects, test_backgrounds = _clusters(100, seed=1)
    assert (fit.logit(test_objects) > 0).float().mean() > 0.9
    assert (fit.logit(test_backgrounds) < 0).float().mean() > 0.9


def test_fit_refuses_bad_inputs():
    objects, backgrounds = _clusters(10)
    with pytest.raises(ValueError, match="at least 3 frames"):
        fit_objectness(objects[:2], backgrounds)
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        fit_objectness(objects, backgrounds[:, :3])
    with pytest.raises(ValueError, match="c must be positive"):
        fit_objectness(objects, backgrounds, c=0.0)


def test_files_round_trip_and_a_wrong_file_names_the_fix(tmp_path):
    fit = ObjectnessFit(torch.arange(4.0), -1.5, {"cv_auroc": 0.9})
    path = save_objectness(fit, tmp_path / objectness_file("tiny"), preset="tiny")
    assert path.name == "objectness_tiny.pt"
    back = load_objectness(path)
    assert torch.equal(back.weight, fit.weight) and back.bias == -1.5
    assert back.stats == {"cv_auroc": 0.9}
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="training.pretrain.objectness"):
        load_objectness(tmp_path / "junk.pt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an objectness read-out"):
        load_objectness(tmp_path / "other.pt")


@pytest.fixture(scope="module")
def gated_model():
    from affordance_core import create_model

    torch.manual_seed(0)
    return create_model(
        "tiny", vocabulary=["hold", "cut_with", "sit_on"], pretrained=False, objectness=True
    ).eval()


def test_score_is_presence_times_frame_objectness(gated_model):
    import dataclasses

    model = gated_model
    feats = model.extract(torch.rand(3, 3, model.image_size, model.image_size))
    ids = torch.tensor([[0, 2], [1, 1], [2, 0]])
    with torch.inference_mode():
        unfitted_maps, unfitted = model.infer(feats, ids)
        original, gate = model.config, model.objectness
        model.config, model.objectness = dataclasses.replace(original, objectness=False), None
        try:
            plain_maps, plain = model.infer(feats, ids)
        finally:
            model.config, model.objectness = original, gate
    assert torch.allclose(unfitted, plain)  # an unfitted read-out passes every frame
    assert torch.equal(unfitted_maps, plain_maps)  # the maps never read it
    desc = frame_descriptor(feats.keys, feats.cls_attention, feats.clip)
    assert desc.shape == (3, gate.in_features)
    g = torch.Generator().manual_seed(1)
    fit = ObjectnessFit(torch.randn(gate.in_features, generator=g) / 10, 0.3)
    model.set_objectness(fit)
    try:
        with torch.inference_mode():
            _, scores = model.infer(feats, ids)
        p_object = torch.sigmoid(fit.logit(desc))
        assert torch.allclose(scores, plain * p_object[:, None], atol=1e-6)
        assert torch.allclose(model.frame_objectness(feats), p_object, atol=1e-6)
        with pytest.raises(ValueError, match="fitted on other backbones"):
            model.set_objectness(ObjectnessFit(torch.zeros(5), 0.0))
    finally:
        model.set_objectness(ObjectnessFit(torch.zeros(gate.in_features), 30.0))


def test_objectness_needs_clip_and_is_saved_with_the_heads(
    tmp_path, gated_model, random_tiny_weights
):
    from affordance_core import AffordanceConfig, load_model, save_model

    with pytest.raises(ValueError, match="objectness needs a CLIP-role backbone"):
        AffordanceConfig(clip=None, objectness=True)
    width = gated_model.objectness.in_features
    gated_model.set_objectness(ObjectnessFit(torch.linspace(-1, 1, width), -0.25))
    try:
        save_model(tmp_path / "model.pt", gated_model)
        loaded = load_model(tmp_path / "model.pt", weights_dir=random_tiny_weights)
        assert loaded.config.objectness and loaded.uses_affinity
        assert torch.equal(loaded.objectness.weight, gated_model.objectness.weight)
        assert loaded.objectness.bias.item() == -0.25
        assert not any(
            p is loaded.objectness.weight for g in loaded.param_groups(1.0) for p in g["params"]
        )
    finally:
        gated_model.set_objectness(ObjectnessFit(torch.zeros(width), 30.0))


def test_heads_graph_exports_the_objectness_gate(tmp_path):
    """ONNX scores equal the torch backend's with a fitted gate, and the cache key follows it."""
    from affordance_core import AffordancePredictor, create_model
    from affordance_core.runtime import model_fingerprint

    vocab = ["hold", "cut_with"]
    torch.manual_seed(4)
    model = create_model("tiny", vocabulary=vocab, pretrained=False, objectness=True).eval()
    before = model_fingerprint(model)
    width = model.objectness.in_features
    g = torch.Generator().manual_seed(5)
    model.set_objectness(ObjectnessFit(torch.randn(width, generator=g) / 20, 0.1))
    assert model_fingerprint(model) != before
    rng = torch.Generator().manual_seed(6)
    frame = (torch.rand(64, 80, 3, generator=rng) * 255).to(torch.uint8).numpy()
    ref = AffordancePredictor(model)(frame, vocab)
    got = AffordancePredictor(model, backend="onnxruntime", onnx_cache_dir=tmp_path)(frame, vocab)
    gate = model.frame_objectness(model.extract(torch.rand(1, 3, 112, 112))).item()
    assert gate < 0.999  # the fitted gate is not the pass-through
    for r, o in zip(ref, got, strict=True):
        assert abs(r.score - o.score) < 1e-4 and r.present == o.present


def test_cli_fits_and_writes_the_read_out(tmp_path, random_tiny_weights):
    import shutil

    from training.pretrain import objectness as cli

    weights = tmp_path / "weights"
    shutil.copytree(random_tiny_weights, weights)
    (weights / objectness_file("tiny")).unlink()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        args = ["--weights-dir", str(weights), "--n-frames", "6", "--size", "64", "--no-progress"]
        assert cli.main(args) == 0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert summary["n_objects"] == summary["n_backgrounds"] == 6
    assert 0.0 <= summary["cv_auroc"] <= 1.0
    fit = load_objectness(weights / objectness_file("tiny"))
    assert fit.weight.abs().sum() > 0


def test_affordance_train_copies_the_read_out_and_names_a_missing_file(
    tmp_path, make_agd_tree, random_tiny_weights, capsys
):
    import shutil

    from affordance_core import load_model
    from training import train

    root = make_agd_tree(tmp_path / "data", split="Seen", n_exo=2, n_ego=2, n_test=2, seed=1)
    weights = tmp_path / "weights"
    shutil.copytree(random_tiny_weights, weights)
    width = load_objectness(weights / objectness_file("tiny")).weight.numel()
    fit = ObjectnessFit(torch.full((width,), 0.01), -0.5)
    save_objectness(fit, weights / "objectness_tiny.pt")
    args = [
        "--data-root", str(root.parent), "--split", "Seen", "--method", "locate",
        "--iters", "1", "--weights-dir", str(weights), "--batch-size", "2",
        "--num-workers", "0", "--no-progress", "--cache-features",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main([*args, "--out", str(tmp_path / "run")]) == 0
    model = load_model(tmp_path / "run" / "model.pt", weights_dir=weights)
    assert model.objectness.bias.item() == pytest.approx(-0.5)
    assert torch.allclose(model.objectness.weight, torch.full((1, width), 0.01))
    (weights / "objectness_tiny.pt").unlink()
    capsys.readouterr()
    assert train.main([*args, "--out", str(tmp_path / "run2")]) == 1
    err = capsys.readouterr().err
    assert "objectness_tiny.pt is not in" in err
    assert "python -m training.pretrain.objectness" in err and "model.objectness=false" in err


def test_absence_probe_reports_signals_and_rules_on_validation_frames(tmp_path):
    """The probe on a small corpus: every signal and rule in range, the gated rule present
    with a read-out, and a corpus without background frames refused by name."""
    from affordance_core import create_model, save_model
    from affordance_core.data import resolve_vocabulary
    from affordance_core.synthetic import write_agd_corpus
    from training.probes.absence import probe_absence

    objects = {"Seen": {"train": ["knife", "cup"], "test": ["knife", "cup"]}}
    sizes = {"n_exo_per_pair": 1, "n_ego_per_pair": 1, "n_test_per_pair": 3, "progress": False}
    write_agd_corpus(tmp_path / "val", seed=4, split_objects=objects, n_background=4, **sizes)
    write_agd_corpus(tmp_path / "nobg", seed=5, split_objects=objects, n_background=0, **sizes)
    vocabulary = resolve_vocabulary(tmp_path / "val", "Seen")
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=vocabulary, objectness=True)
    model.set_objectness(load_objectness(SHIPPED_READ_OUT))
    save_model(tmp_path / "model.pt", model)
    result = probe_absence(tmp_path / "model.pt", tmp_path / "val")
    assert result["n_background_frames"] == 4 and result["objectness"]
    assert result["n_afforded"] > 0 and result["n_not_afforded"] > 0
    assert set(result["signals"]) >= {"peak CAM logit", "objectness"}
    assert result["signals"]["peak DINO saliency"] == 0.5  # min-max saliency: always 1
    assert set(result["rules"]) == {
        "cam+aff",
        "cam+aff+objectness",
        "P(object) x P(afforded | object)",
    }
    for rule in result["rules"].values():
        for value in rule.values():
            assert 0.0 <= value <= 1.0
    with pytest.raises(ValueError, match="background"):
        probe_absence(tmp_path / "model.pt", tmp_path / "nobg")


def test_shipped_tiny_read_out_tells_empty_clutter_from_objects():
    """The committed weights/tiny read-out on pretraining-space frames it was not fitted on
    (seed 99; the file was fitted on seed 10): most clutter-only frames fall below 0.5 and
    most frames with an object above it, and a blank frame is far below."""
    import numpy as np

    from affordance_core import create_model
    from affordance_core.synthetic.corpus import iter_pretrain_backgrounds, iter_pretrain_scenes
    from training.pretrain.objectness import descriptors_of

    fit = load_objectness(SHIPPED_READ_OUT)
    model = create_model("tiny", vocabulary=["hold"], objectness=True).eval()
    model.set_objectness(fit)
    n = 40
    scenes = (s.image for s in iter_pretrain_scenes(99, n, size=128))
    objects = descriptors_of(model, scenes, n, progress=False)
    backgrounds = descriptors_of(
        model, iter_pretrain_backgrounds(99, n, size=128), n, progress=False
    )
    assert (fit.logit(objects) >= 0).float().mean() >= 0.9
    assert (fit.logit(backgrounds) < 0).float().mean() >= 0.9
    blank = descriptors_of(model, [np.zeros((96, 96, 3), np.uint8)], 1, progress=False)
    assert torch.sigmoid(fit.logit(blank)).item() < 0.01


def test_penalty_probe_fits_what_the_cli_writes_and_scores_validation_frames(
    tmp_path, random_tiny_weights
):
    """Each C of the penalty probe is the read-out `training.pretrain.objectness --c C` writes
    from the same frames; every summary counts the corpus's frames; a corpus without
    background frames is refused by name."""
    import shutil

    from affordance_core.synthetic import write_agd_corpus
    from training.pretrain import objectness as cli
    from training.probes.objectness import probe_objectness_penalty

    objects = {"Seen": {"train": ["knife", "cup"], "test": ["knife", "cup"]}}
    sizes = {"n_exo_per_pair": 1, "n_ego_per_pair": 1, "n_test_per_pair": 2, "progress": False}
    write_agd_corpus(tmp_path / "val", seed=4, split_objects=objects, n_background=3, **sizes)
    write_agd_corpus(tmp_path / "nobg", seed=5, split_objects=objects, n_background=0, **sizes)
    weights = tmp_path / "weights"
    shutil.copytree(random_tiny_weights, weights)
    frames = {"n_frames": 6, "size": 64, "seed": 3, "progress": False}
    result = probe_objectness_penalty(
        [(str(tmp_path / "val"), "Seen")], [0.05, 2.0], weights_dir=str(weights), **frames
    )
    assert set(result["fits"]) == {"0.05", "2.0"}
    for summary in result["fits"].values():
        assert summary["n_background"] == 3 and summary["n_objects"] > 0
        assert 0 <= summary["background_at_or_above_half"] <= 3
        assert 0.0 <= summary["objects_below_half"] <= 1.0 and 0.0 <= summary["auroc"] <= 1.0
    assert result["per_corpus"][0]["0.05"] == {
        k: v for k, v in result["fits"]["0.05"].items() if k not in ("cv", "bias")
    }
    args = ["--weights-dir", str(weights), "--n-frames", "6", "--size", "64", "--seed", "3"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main([*args, "--c", "2.0", "--no-progress"]) == 0
    written = load_objectness(weights / objectness_file("tiny"))
    assert result["fits"]["2.0"]["cv"] == written.stats
    assert result["fits"]["2.0"]["bias"] == pytest.approx(written.bias)
    assert result["fits"]["0.05"]["bias"] != pytest.approx(written.bias)
    with pytest.raises(ValueError, match="background"):
        probe_objectness_penalty(
            [(str(tmp_path / "nobg"), "Seen")], [0.1], weights_dir=str(weights), **frames
        )
