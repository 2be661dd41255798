"""Model, part discovery, losses and predictor of affordance_core on small hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from affordance_core import create_model, list_models, load_model, save_model
from affordance_core.affinity import exo_object_affinity
from affordance_core.discovery import discover_parts, masked_kmeans, piou
from affordance_core.losses import (
    concentration_loss,
    pixel_contrast_loss,
    prototype_contrast_loss,
    prototype_distillation_loss,
)
from affordance_core.methods import METHODS, build_method
from affordance_core.predictor import AffordancePredictor, UnknownActionError
from affordance_core.prompts import ego_prompt, exo_prompt

VOCAB = ["hold", "cut_with", "pour", "sit_on"]


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "ego": torch.rand(4, 3, 112, 112, generator=g),
        "exo": torch.rand(4, 3, 3, 112, 112, generator=g),
        "label": torch.tensor([0, 1, 0, 2]),
    }


def test_presets_registered() -> None:
    assert {"paper", "tiny"} <= set(list_models())
    with pytest.raises(ValueError, match="available"):
        create_model("huge", vocabulary=VOCAB, pretrained=False)


def test_prompts_are_readable() -> None:
    assert ego_prompt("hold") == "an item to hold with"
    assert ego_prompt("cut_with") == "an item to cut with"
    assert ego_prompt("sit_on") == "an item to sit on"
    assert exo_prompt("pour") == "a person pour an item"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_step_reduces_loss_and_trains_only_heads(method: str, batch) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, method=method, pretrained=False)
    frozen = {k: v.clone() for k, v in model.dino.state_dict().items()}
    step = build_method(method, model)
    opt = torch.optim.SGD(model.param_groups(1e-2), lr=1e-2, momentum=0.9)
    model.train()
    losses = []
    for _ in range(4):
        out = step(batch, progress=0.5)
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, model.dino.state_dict()[k]) for k, v in frozen.items())
    assert not any(p.requires_grad for p in model.dino.parameters())
    maps = model.predict_maps(batch["ego"], batch["label"])
    assert maps.shape == (4, 14, 14) and torch.isfinite(maps).all()


def test_param_groups_follow_locate_recipe() -> None:
    model = create_model("tiny", vocabulary=VOCAB, pretrained=False)
    mults = {g["name"]: g["lr_mult"] for g in model.param_groups(1e-3)}
    assert mults == {"x1": 1.0, "x2_bias": 2.0, "x10": 10.0, "x20_bias": 20.0}
    n_grouped = sum(p.numel() for g in model.param_groups(1e-3) for p in g["params"])
    n_heads = sum(p.numel() for _, m in model.head_modules() for p in m.parameters())
    assert n_grouped == n_heads


def test_masked_kmeans_finds_separated_clusters() -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centres])[None]
    outliers = torch.full((1, 5, 2), 100.0)
    points = torch.cat([pts, outliers], 1).repeat(2, 1, 1)
    valid = torch.ones(2, 65, dtype=torch.bool)
    valid[:, 60:] = False  # the outliers must be ignored
    valid[1, 2:] = False  # row 1 has too few points
    cents, ok = masked_kmeans(points, valid, k=3, generator=g)
    assert ok.tolist() == [True, False]
    found = sorted(cents[0].round().tolist())
    assert found == sorted(centres.tolist())


def test_piou_matches_hand_values() -> None:
    parts = torch.tensor([[[1, 1, 0, 0], [0, 0, 1, 1]]], dtype=torch.bool)
    sal = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    # part 0: |P and S|/|P| = 1, |S|/|P or S| = 3/3 -> 1.0
    # part 1: 1/2 and 3/4 -> 0.625
    assert torch.allclose(piou(parts, sal), torch.tensor([[1.0, 0.625]]), atol=1e-6)


def test_discover_parts_reliability_gate() -> None:
    torch.manual_seed(0)
    d, h = 8, 4
    part_dir = torch.zeros(d)
    part_dir[0] = 1.0
    exo_keys = torch.randn(2, 3, d, h, h) * 0.05
    exo_maps = torch.zeros(2, 3, h, h)
    exo_keys[:, :, :, :2, :2] += part_dir[:, None, None] * 5  # interaction region = part
    exo_maps[:, :, :2, :2] = 1.0
    ego_keys = torch.randn(2, d, h, h) * 0.05
    ego_keys[:, :, :2, :2] += part_dir[:, None, None] * 5
    sal = torch.zeros(2, h, h, dtype=torch.bool)
    sal[0, :2, :2] = True  # saliency agrees with the part in sample 0
    sal[1, 2:, 2:] = True  # and not in sample 1
    found = discover_parts(
        exo_keys,
        exo_maps,
        ego_keys,
        sal,
        region_threshold=0.5,
        piou_threshold=0.6,
        generator=torch.Generator().manual_seed(0),
    )
    assert found.enough_points.all()
    assert found.reliable.tolist() == [True, False]
    assert found.centroid[0, 0] > 0.9


def test_concentration_loss_prefers_compact_maps() -> None:
    compact = torch.zeros(1, 1, 14, 14)
    compact[..., 6:8, 6:8] = 1.0
    spread = torch.rand(1, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    assert concentration_loss(compact) < concentration_loss(spread)
    # a uniform-plus-floor map's variance about the centre: known closed form on the grid
    flat = torch.zeros(1, 1, 4, 4)
    xs = torch.arange(4) / 4 * 2 - 1
    expected = 2 * ((xs - xs.mean()) ** 2).mean()
    assert torch.allclose(concentration_loss(flat), expected, atol=1e-6)


def test_prototype_distillation_margin() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(prototype_distillation_loss(a, p, torch.tensor([True, True]))) == pytest.approx(
        0.25
    )  # (0 + 0.5) / 2
    assert float(prototype_distillation_loss(a, p, torch.tensor([False, False]))) == 0.0


def test_prototype_contrast_known_value_and_gradient() -> None:
    e = torch.eye(4)
    labels = torch.tensor([0, 1])
    anchors = e[[0, 1]].clone().requires_grad_(True)
    ego_pos, ego_bg = e[[0, 1]], e[[2, 3]]
    exo_pos, exo_bg = e[[0, 1]][:, None], e[[2, 3]][:, None]
    loss = prototype_contrast_loss(anchors, labels, ego_pos, ego_bg, exo_pos, exo_bg, 1.0)
    # anchor 0: positive exo_pos[0] (cos 1); denominator: that, ego_pos[1] and exo_pos[1]
    # (other class, cos 0), ego_bg[0] and exo_bg[0] (own class background, cos 0)
    expected = -math.log(math.e / (math.e + 4))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0


def test_pixel_contrast_separates_groups() -> None:
    pos = torch.zeros(1, 2, 2, dtype=torch.bool)
    pos[0, 0] = True
    aligned = torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    mixed = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    assert pixel_contrast_loss(aligned, pos, 0.5) < pixel_contrast_loss(mixed, pos, 0.5)
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert float(pixel_contrast_loss(aligned, empty)) == 0.0


def test_selectivecl_reference_indexing_and_ablations(batch) -> None:
    """Each ablation switch changes the terms it should, by value, and leaves the others
    bit-identical (same model, batch and K-means seed)."""
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, method="selectivecl", pretrained=False)

    def run(**opts) -> dict[str, float]:
        with torch.no_grad():
            return {
                k: float(v)
                for k, v in build_method("selectivecl", model, **opts)(batch, 0.5).items()
            }

    base = run()
    ce = ("ce_ego", "ce_exo")
    assert base["stat_reliable_rate"] > 0  # the part-level branch is exercised
    # reference indexing: discovery sees other maps -> the prototype term only
    ref = run(exo_indexing="reference")
    assert all(ref[k] == base[k] for k in (*ce, "pix"))
    assert abs(ref["proto"] - base["proto"]) > 1e-3
    assert ref["stat_reliable_rate"] != base["stat_reliable_rate"]
    # object level = the selective composition with every sample unreliable
    obj = run(proto="object")
    assert all(obj[k] == base[k] for k in (*ce, "pix"))
    assert abs(obj["proto"] - base["proto"]) > 1e-3
    assert obj["proto"] == pytest.approx(run(piou_threshold=1.01)["proto"], abs=1e-6)
    # none / pixel off: exactly their term disappears
    none, no_pix = run(proto="none"), run(pixel=False)
    assert "proto" not in none and "pix" not in no_pix
    assert all(none[k] == base[k] for k in (*ce, "pix"))
    assert all(no_pix[k] == base[k] for k in (*ce, "proto"))
    assert none["loss"] == pytest.approx(base["ce_ego"] + base["ce_exo"] + base["pix"], abs=1e-5)
    # the contrast factor multiplies both contrastive terms and nothing else
    scaled = run(contrast_scale=7.14)
    assert all(scaled[k] == base[k] for k in ce)
    assert scaled["proto"] == pytest.approx(7.14 * base["proto"], rel=1e-6)
    assert scaled["pix"] == pytest.approx(7.14 * base["pix"], rel=1e-6)
    with pytest.raises(ValueError, match="exo_indexing"):
        build_method("selectivecl", model, exo_indexing="wrong")
    with pytest.raises(ValueError, match="unknown method"):
        build_method("nope", model)


def test_exo_affinity_follows_the_configured_interaction_cue() -> None:
    hand_model = create_model("tiny", vocabulary=VOCAB, pretrained=False)
    prompt_model = create_model("tiny", vocabulary=VOCAB, pretrained=False, exo_cue="prompt")
    assert hand_model.config.exo_cue == "hand" and prompt_model.config.exo_cue == "prompt"
    with pytest.raises(ValueError, match="exo_cue"):
        create_model("tiny", vocabulary=VOCAB, pretrained=False, exo_cue="elbow")
    dim = hand_model.ego_text.shape[1]
    basis = torch.eye(dim)
    for model in (hand_model, prompt_model):  # orthogonal texts: every cosine is one channel
        model.ego_text = basis[:4].clone()
        model.exo_text = basis[4:8].clone()
        model.hand_text = basis[8].clone()
    clip = torch.zeros(1, dim, 14, 14)
    clip[0, 0] = 0.5  # ego prompt of "hold": the whole image is "object"
    clip[0, 8, 3, 3] = 1.0  # the hand at patch (3, 3)
    clip[0, 4, 10, 10] = 1.0  # the exo prompt of "hold" fires elsewhere, at (10, 10)
    label = torch.tensor([0])
    by_hand = exo_object_affinity(hand_model, clip, label)[0]
    by_prompt = exo_object_affinity(prompt_model, clip, label)[0]
    assert divmod(int(by_hand.argmax()), 14) in {(r, c) for r in (2, 3, 4) for c in (2, 3, 4)}
    assert float(by_hand[10, 10]) == 0.0
    assert divmod(int(by_prompt.argmax()), 14) in {
        (r, c) for r in (9, 10, 11) for c in (9, 10, 11)
    }
    # 3x3 border-clipped mean of the cue times the ego cosine: (1 / 9) * 0.5 at the hand.
    assert math.isclose(float(by_hand[3, 3]), 0.5 / 9, rel_tol=1e-5)


def test_checkpoint_roundtrip_and_mismatch(tmp_path) -> None:
    model = create_model("tiny", vocabulary=VOCAB, pretrained=False)
    path = save_model(tmp_path / "model.pt", model)
    again = load_model(path, pretrained=False)
    assert again.vocabulary == VOCAB
    for k, v in model.trainable_state_dict().items():
        assert torch.equal(v, again.trainable_state_dict()[k])
    payload = torch.load(path, weights_only=False)
    payload["heads"]["classifier.weight"] = torch.zeros(7, 192, 1, 1)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(tmp_path / "bad.pt", pretrained=False)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an affordance model checkpoint"):
        load_model(tmp_path / "other.pt", pretrained=False)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt", pretrained=False)


def test_predictor_multi_action_matches_single(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, pretrained=False)
    # min_score 0: every action is present, so the mask geometry is what is checked here
    # (the absence rule has its own tests in test_evaluation.py)
    pred = AffordancePredictor(model, mask_threshold=0.6, min_score=0.0)
    image = (np.random.default_rng(0).random((90, 130, 3)) * 255).astype(np.uint8)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict("hold")
    both = pred(image, ["hold", "pour"])
    single = pred.predict("pour")[0]
    assert np.allclose(both[1].heatmap, single.heatmap, atol=1e-5)
    for p in both:
        assert p.heatmap.shape == (90, 130) and p.heatmap.dtype == np.float32
        assert 0.0 <= p.heatmap.min() and p.heatmap.max() <= 1.0
        assert p.present and p.mask.dtype == bool and p.mask[p.peak_xy[1], p.peak_xy[0]]
        assert 0.0 <= p.score <= 1.0
    assert not np.allclose(both[0].heatmap, both[1].heatmap)
    with pytest.raises(UnknownActionError, match="known actions: hold"):
        pred.predict("fly")
    with pytest.raises(ValueError, match="HxWx3"):
        pred.set_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        pred.set_image(np.zeros((0, 10, 3), np.uint8))


def test_exo_and_mean_inference_branches_map_ego_images(tmp_path, batch) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, pretrained=False, method="selectivecl").eval()
    path = save_model(tmp_path / "model.pt", model)
    ego_model = load_model(path, pretrained=False, calibration="continuous")
    exo_model = load_model(
        path, pretrained=False, calibration="continuous", inference_branch="exo"
    )
    images, labels = batch["ego"], batch["label"]
    feats = ego_model.extract(images)
    exo_maps = exo_model.maps_from_features(feats, labels)
    _, exo_cams = exo_model.cam(feats.keys, "exo")
    picked = exo_cams[torch.arange(len(labels)), labels]
    expected = exo_model.calibrate(picked, exo_model.affinity(feats.clip, labels, "ego"))
    assert torch.allclose(exo_maps, expected)
    assert not torch.allclose(exo_maps, ego_model.maps_from_features(feats, labels))
    image = (images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    by_exo = AffordancePredictor(exo_model)(image, ["hold"])[0].heatmap
    by_ego = AffordancePredictor(ego_model)(image, ["hold"])[0].heatmap
    assert by_exo.shape == by_ego.shape == image.shape[:2]
    assert not np.allclose(by_exo, by_ego, atol=1e-3)
    both = load_model(path, pretrained=False, inference_branch="ego+exo")
    _, ego_cams = both.cam(feats.keys, "ego")
    _, both_cams = both.cam(feats.keys, "ego+exo")
    assert torch.allclose(both_cams, 0.5 * (ego_cams + exo_cams), atol=1e-5)
    with pytest.raises(ValueError, match="pixel decoder"):
        load_model(path, pretrained=False, inference_branch="pixel")
