"""The frame objectness head: the linear miner and the head's training on known features,
the score rule inside ``AffordanceModel.infer``, files and their errors, the exported heads
graph, the training CLI, the probes, and how affordance-train copies the head into a model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from affordance_core.objectness import (
    ObjectnessFit,
    ObjectnessHead,
    fit_linear_objectness,
    load_objectness,
    objectness_file,
    save_objectness,
    train_objectness,
)

SHIPPED_READ_OUT = (
    Path(__file__).resolve().parents[1] / "weights" / "tiny" / objectness_file("tiny")
)


def _clusters(n: int, dim: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    objects = torch.randn(n, dim, generator=g) + torch.tensor([2.0] + [0.0] * (dim - 1))
    backgrounds = torch.randn(n, dim, generator=g) - torch.tensor([2.0] + [0.0] * (dim - 1))
    return objects, backgrounds


def test_linear_fit_separates_frames_with_and_without_an_object():
    objects, backgrounds = _clusters(200)
    fit = fit_linear_objectness(objects, backgrounds, c=1.0)
    assert fit.weight.shape == (6,) and fit.weight[0] > 0
    assert fit.stats["n_objects"] == 200 and fit.stats["n_backgrounds"] == 200
    assert fit.stats["cv_auroc"] > 0.97
    test_objects, test_backgrounds = _clusters(100, seed=1)
    assert (fit.logit(test_objects) > 0).float().mean() > 0.9
    assert (fit.logit(test_backgrounds) < 0).float().mean() > 0.9


def test_linear_fit_refuses_bad_inputs():
    objects, backgrounds = _clusters(10)
    with pytest.raises(ValueError, match="at least 3 frames"):
        fit_linear_objectness(objects[:2], backgrounds)
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        fit_linear_objectness(objects, backgrounds[:, :3])
    with pytest.raises(ValueError, match="c must be positive"):
        fit_linear_objectness(objects, backgrounds, c=0.0)


def _grids(n: int, seed: int, with_object: bool) -> tuple[torch.Tensor, ...]:
    """(keys, cls_attention, clip) of an 8-dim key, 4-dim CLIP, 2-head, 6x6 grid. Frames
    with an object carry a 2x2 block of patches whose CLIP channel 0 and keys' channel 0 are
    high together; background frames carry one such patch alone, elsewhere, or none."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, 8, 6, 6, generator=g)
    clip = torch.randn(n, 4, 6, 6, generator=g) * 0.3
    attn = torch.rand(n, 2, 6, 6, generator=g)
    ys = torch.randint(0, 5, (n,), generator=g)
    xs = torch.randint(0, 5, (n,), generator=g)
    for i in range(n):
        y, x = int(ys[i]), int(xs[i])
        if with_object:
            clip[i, 0, y : y + 2, x : x + 2] += 3.0
            keys[i, 0, y : y + 2, x : x + 2] += 6.0
        elif i % 2:
            clip[i, 0, y, x] += 3.0
    return keys.half(), attn.half(), clip.half()


def test_head_learns_the_contrast_from_features_and_refuses_bad_inputs():
    fit = train_objectness(
        _grids(96, 0, True), _grids(96, 1, False), epochs=15, hidden=16, batch_size=16
    )
    assert fit.dims == (8, 4, 2, 16)
    assert fit.stats["n_objects"] == fit.stats["n_backgrounds"] == 96
    assert fit.stats["last_epoch_loss"] < 0.3
    head = fit.head()
    with torch.no_grad():
        p_objects = torch.sigmoid(head(*_reorder(_grids(64, 2, True))))
        p_backgrounds = torch.sigmoid(head(*_reorder(_grids(64, 3, False))))
    assert (p_objects >= 0.5).float().mean() > 0.9
    assert (p_backgrounds < 0.5).float().mean() > 0.9
    objects, backgrounds = _grids(8, 0, True), _grids(8, 1, False)
    with pytest.raises(ValueError, match="frames of each kind"):
        train_objectness(objects, tuple(t[:0] for t in backgrounds))
    with pytest.raises(ValueError, match="same backbones"):
        train_objectness(objects, (backgrounds[0][:, :4], *backgrounds[1:]))
    with pytest.raises(ValueError, match="epochs must be positive"):
        train_objectness(objects, backgrounds, epochs=0)


def _reorder(grids: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """(keys, cls_attention, clip) is also the head's argument order."""
    return grids


def _random_fit(dims: tuple[int, int, int, int], seed: int) -> ObjectnessFit:
    """A head with PyTorch's default initialisation: P(object) near 0.5, not the pass-through."""
    torch.manual_seed(seed)
    return ObjectnessFit.of(ObjectnessHead(*dims, unfitted=False))


def test_files_round_trip_and_a_wrong_file_names_the_fix(tmp_path):
    fit = _random_fit((8, 4, 2, 16), 0)
    fit.stats["heldout_auroc"] = 0.9
    path = save_objectness(fit, tmp_path / objectness_file("tiny"), preset="tiny")
    assert path.name == "objectness_tiny.pt"
    back = load_objectness(path)
    assert back.dims == (8, 4, 2, 16) and back.stats == {"heldout_auroc": 0.9}
    assert all(torch.equal(back.state[k], v) for k, v in fit.state.items())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="training.pretrain.objectness"):
        load_objectness(tmp_path / "junk.pt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an objectness head"):
        load_objectness(tmp_path / "other.pt")
    torch.save({"format": 1, "weight": torch.zeros(3), "bias": 0.0}, tmp_path / "linear.pt")
    with pytest.raises(ValueError, match="older version.*training.pretrain.objectness"):
        load_objectness(tmp_path / "linear.pt")
    torch.save({"format": 2, "dims": [8, 4, 2, 32], "state": fit.state}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit dims"):
        load_objectness(tmp_path / "bad.pt")


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
    assert torch.allclose(unfitted, plain)  # an unfitted head passes every frame
    assert torch.equal(unfitted_maps, plain_maps)  # the maps never read it
    pass_through = ObjectnessFit.of(gate)
    fit = _random_fit(gate.dims, 1)
    model.set_objectness(fit)
    try:
        with torch.inference_mode():
            _, scores = model.infer(feats, ids)
            p_object = torch.sigmoid(fit.head()(feats.keys, feats.cls_attention, feats.clip))
        assert ((p_object > 0.01) & (p_object < 0.99)).all()
        assert torch.allclose(scores, plain * p_object[:, None], atol=1e-6)
        assert torch.allclose(model.frame_objectness(feats), p_object, atol=1e-6)
        with pytest.raises(ValueError, match="trained on other backbones"):
            model.set_objectness(_random_fit((8, 4, 2, 16), 0))
    finally:
        model.set_objectness(pass_through)


def test_objectness_needs_clip_and_is_saved_with_the_heads(
    tmp_path, gated_model, random_tiny_weights
):
    from affordance_core import AffordanceConfig, load_model, save_model

    with pytest.raises(ValueError, match="objectness needs a CLIP-role backbone"):
        AffordanceConfig(clip=None, objectness=True)
    pass_through = ObjectnessFit.of(gated_model.objectness)
    fit = _random_fit(gated_model.objectness.dims, 2)
    gated_model.set_objectness(fit)
    try:
        save_model(tmp_path / "model.pt", gated_model)
        loaded = load_model(tmp_path / "model.pt", weights_dir=random_tiny_weights)
        assert loaded.config.objectness and loaded.uses_affinity
        state = loaded.objectness.state_dict()
        assert all(torch.equal(state[k], v) for k, v in fit.state.items())
        state = gated_model.trainable_state_dict()
        old = {k: v for k, v in state.items() if not k.startswith("objectness.")}
        old |= {"objectness.weight": torch.zeros(1, 838), "objectness.bias": torch.zeros(1)}
        with pytest.raises(ValueError, match="linear objectness read-out of an older version"):
            loaded.load_trainable_state_dict(old)
        head_params = {id(p) for p in loaded.objectness.parameters()}
        assert not any(id(p) in head_params for g in loaded.param_groups(1.0) for p in g["params"])
    finally:
        gated_model.set_objectness(pass_through)


def test_heads_graph_exports_the_objectness_gate(tmp_path):
    """ONNX scores equal the torch backend's with a trained gate, and the cache key follows it."""
    from affordance_core import AffordancePredictor, create_model
    from affordance_core.runtime import model_fingerprint

    vocab = ["hold", "cut_with"]
    torch.manual_seed(4)
    model = create_model("tiny", vocabulary=vocab, pretrained=False, objectness=True).eval()
    before = model_fingerprint(model)
    model.set_objectness(_random_fit(model.objectness.dims, 5))
    assert model_fingerprint(model) != before
    rng = torch.Generator().manual_seed(6)
    frame = (torch.rand(64, 80, 3, generator=rng) * 255).to(torch.uint8).numpy()
    ref = AffordancePredictor(model)(frame, vocab)
    got = AffordancePredictor(model, backend="onnxruntime", onnx_cache_dir=tmp_path)(frame, vocab)
    gate = model.frame_objectness(model.extract(torch.rand(1, 3, 112, 112))).item()
    assert gate < 0.999  # the trained gate is not the pass-through
    for r, o in zip(ref, got, strict=True):
        assert abs(r.score - o.score) < 1e-4 and r.present == o.present


#: Small CLI settings: two fit seeds, one mining seed, a held-out seed, one epoch.
SMALL_CLI = [
    "--n-frames", "6", "--size", "64", "--seeds", "3", "7", "--mine-seeds", "8",
    "--n-mine", "12", "--heldout-seed", "9", "--epochs", "1", "--no-progress",
]  # fmt: skip


def test_cli_trains_and_writes_the_head(tmp_path, random_tiny_weights, capsys):
    import shutil

    from training.pretrain import objectness as cli

    weights = tmp_path / "weights"
    shutil.copytree(random_tiny_weights, weights)
    (weights / objectness_file("tiny")).unlink()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # hard_at 0 keeps every mined frame: 12 more backgrounds
        assert cli.main(["--weights-dir", str(weights), *SMALL_CLI, "--hard-at", "0"]) == 0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    assert summary["n_objects"] == 12 and summary["n_backgrounds"] == 12 + 12
    assert summary["n_mined"] == summary["n_hard"] == 12
    assert summary["linear_n_objects"] == summary["linear_n_backgrounds"] == 6
    assert 0.0 <= summary["heldout_auroc"] <= 1.0 and summary["fit_seeds"] == [3, 7]
    fit = load_objectness(weights / objectness_file("tiny"))
    assert fit.stats == {k: v for k, v in summary.items() if k not in ("file", "seconds")}
    assert fit.head().out.weight.abs().sum() > 0
    with pytest.raises(SystemExit):
        cli.main(["--weights-dir", str(weights), *SMALL_CLI, "--heldout-seed", "8"])
    assert "--heldout-seed 8 is also a training or mining seed" in capsys.readouterr().err


def test_affordance_train_copies_the_head_and_names_a_missing_file(
    tmp_path, make_agd_tree, random_tiny_weights, capsys
):
    import shutil

    from affordance_core import load_model
    from training import train

    root = make_agd_tree(tmp_path / "data", split="Seen", n_exo=2, n_ego=2, n_test=2, seed=1)
    weights = tmp_path / "weights"
    shutil.copytree(random_tiny_weights, weights)
    fit = _random_fit(load_objectness(weights / objectness_file("tiny")).dims, 3)
    save_objectness(fit, weights / "objectness_tiny.pt")
    args = [
        "--data-root", str(root.parent), "--split", "Seen", "--method", "locate",
        "--iters", "1", "--weights-dir", str(weights), "--batch-size", "2",
        "--num-workers", "0", "--no-progress", "--cache-features",
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main([*args, "--out", str(tmp_path / "run")]) == 0
    model = load_model(tmp_path / "run" / "model.pt", weights_dir=weights)
    state = model.objectness.state_dict()
    assert all(torch.equal(state[k], v) for k, v in fit.state.items())
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


def test_shipped_tiny_head_tells_empty_clutter_from_objects():
    """The committed weights/tiny head on pretraining-space frames it was not trained on
    (seed 99; it was trained on seeds 10 and 12 and mined frames of 13 and 14): most
    clutter-only frames fall below 0.5 and most frames with an object above it, and a blank
    frame is far below."""

    from affordance_core import create_model
    from affordance_core.synthetic.corpus import iter_pretrain_backgrounds, iter_pretrain_scenes
    from training.pretrain.objectness import features_of, head_probabilities

    fit = load_objectness(SHIPPED_READ_OUT)
    model = create_model("tiny", vocabulary=["hold"], objectness=True).eval()
    model.set_objectness(fit)
    n = 40
    scenes = (s.image for s in iter_pretrain_scenes(99, n, size=128))
    objects = features_of(model, scenes, n, progress=False)[0]
    backgrounds = features_of(
        model, iter_pretrain_backgrounds(99, n, size=128), n, progress=False
    )[0]
    assert (head_probabilities(fit, objects) >= 0.5).float().mean() >= 0.9
    assert (head_probabilities(fit, backgrounds) < 0.5).float().mean() >= 0.9
    blank = model.extract(torch.zeros(1, 3, model.image_size, model.image_size))
    assert model.frame_objectness(blank).item() < 0.01


def test_probes_fit_what_the_cli_fits_and_score_validation_frames(tmp_path, random_tiny_weights):
    """Each C of the penalty probe is the linear miner `training.pretrain.objectness --c C`
    fits from the same frames, and the head probe's `patch+mined` candidate is the head that
    command writes; every summary counts the corpus's frames; a corpus without background
    frames is refused by name."""
    import shutil

    from affordance_core.synthetic import write_agd_corpus
    from training.pretrain import objectness as cli
    from training.probes.objectness import probe_objectness_penalty
    from training.probes.objectness_head import probe_objectness_heads

    objects = {"Seen": {"train": ["knife", "cup"], "test": ["knife", "cup"]}}
    sizes = {"n_exo_per_pair": 1, "n_ego_per_pair": 1, "n_test_per_pair": 2, "progress": False}
    write_agd_corpus(tmp_path / "val", seed=4, split_objects=objects, n_background=3, **sizes)
    write_agd_corpus(tmp_path / "nobg", seed=5, split_objects=objects, n_background=0, **sizes)
    weights = tmp_path / "weights"
    shutil.copytree(random_tiny_weights, weights)
    val = [(str(tmp_path / "val"), "Seen")]
    frames = {"n_frames": 6, "size": 64, "seed": 3, "progress": False}
    result = probe_objectness_penalty(val, [0.05, 2.0], weights_dir=str(weights), **frames)
    assert set(result["fits"]) == {"0.05", "2.0"}
    for summary in result["fits"].values():
        assert summary["n_background"] == 3 and summary["n_objects"] > 0
        assert 0 <= summary["background_at_or_above_half"] <= 3
        assert 0.0 <= summary["objects_below_half"] <= 1.0 and 0.0 <= summary["auroc"] <= 1.0
    assert result["per_corpus"][0]["0.05"] == {
        k: v for k, v in result["fits"]["0.05"].items() if k not in ("cv", "bias")
    }
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["--weights-dir", str(weights), *SMALL_CLI, "--c", "2.0"]) == 0
    written = load_objectness(weights / objectness_file("tiny")).stats
    linear = {k.removeprefix("linear_"): v for k, v in written.items() if k.startswith("linear_")}
    assert result["fits"]["2.0"]["cv"] == linear
    heads = probe_objectness_heads(
        val,
        weights_dir=str(weights),
        n_frames=6,
        size=64,
        fit_seeds=(3, 7),
        mine_seeds=(8,),
        n_mine=12,
        heldout_seed=9,
        epochs=1,
        c=2.0,
        progress=False,
    )
    assert set(heads["candidates"]) == {"linear", "linear+mined", "patch+mined"}
    assert heads["head_stats"] == {k: written[k] for k in heads["head_stats"]}
    for row in heads["candidates"].values():
        assert row["validation"]["n_background"] == 3
        assert row["heldout_pretraining"]["n_background"] == 6
        assert set(row["at_equal_validation_object_loss"]) == {"0.02", "0.03", "0.05"}
    for probe in (
        lambda: probe_objectness_penalty(
            [(str(tmp_path / "nobg"), "Seen")], [0.1], weights_dir=str(weights), **frames
        ),
        lambda: probe_objectness_heads([(str(tmp_path / "nobg"), "Seen")], n_frames=6),
    ):
        with pytest.raises(ValueError, match="background"):
            probe()


def test_gate_probe_writes_benchmark_corpora_and_scores_both_gates(tmp_path, random_tiny_weights):
    """The gate probe writes the corpus where the benchmark reads it (and reuses it), and
    counts every background frame and test image of both splits for both gates."""
    from training.probes.objectness_gate import probe_objectness_gate

    budget = {
        "corpus": {"n_exo_per_pair": 1, "n_ego_per_pair": 1, "n_test_per_pair": 1,
                   "n_background": 3}
    }  # fmt: skip
    kwargs = {"weights_dir": str(random_tiny_weights), "n_frames": 6, "size": 64}
    result = probe_objectness_gate(tmp_path, [31], budget=budget, progress=False, **kwargs)
    assert (tmp_path / "corpus_31" / "data" / "corpus.json").is_file()
    assert [(r["corpus_seed"], r["split"]) for r in result["per_split"]] == [
        (31, "Seen"),
        (31, "Unseen"),
    ]
    for row in result["per_split"]:
        # the pass-through head of random_tiny_weights keeps every frame
        assert row["head"]["background_at_or_above"] == row["head"]["n_background"] == 3
        assert row["head"]["objects_below"] == 0.0
        assert 0 <= row["linear"]["background_at_or_above"] <= 3
    assert result["pooled"]["head"]["n_background"] == 6
    again = probe_objectness_gate(tmp_path, [31], budget=budget, progress=False, **kwargs)
    assert again == result
