"""LoopTrans: clustering, pseudo-mask selection, losses and training steps on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from affordance_core import create_model
from affordance_core.clustering import (
    KMeansClusterer,
    PrototypeClusterer,
    fit_prototype_clusterer,
    modularity_loss,
)
from affordance_core.losses.looptrans import (
    correlation_loss,
    denoising_distillation_loss,
    info_nce,
    pseudo_mask_loss,
    select_pseudo_masks,
)
from affordance_core.methods import METHODS, build_method

VOCAB = ["hold", "cut_with", "pour"]


def _quadrants(k_used: int = 4) -> torch.Tensor:
    """(4, 4) cluster ids: one quadrant per cluster (ids >= k_used folded onto 0)."""
    ids = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    return torch.where(ids < k_used, ids, torch.zeros_like(ids))


# ---------------------------------------------------------------- pseudo-mask selection
def test_pseudo_mask_picks_best_iou_cluster_but_never_background() -> None:
    clusters = torch.stack([_quadrants(), _quadrants()])  # (2, 4, 4)
    sal = torch.tensor([[0.1, 0.5], [0.6, 0.9]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    sal = torch.stack([sal, sal])  # cluster 0 = bg
    cam = torch.zeros(2, 4, 4)
    cam[0, 2:, 2:] = 1.0  # cluster 3
    cam[1, :2, :2] = 1.0  # cluster 0 (bg)
    cam[1, 0, 2] = 1.0  # + 1 px of 1
    out = select_pseudo_masks(clusters, cam, sal, num_clusters=4)
    assert out.mask.shape == (2, 4, 4) and out.mask.dtype == torch.bool
    assert out.background.tolist() == [0, 0]
    assert out.cluster.tolist() == [3, 1]
    assert torch.equal(out.mask[0], clusters[0] == 3)
    assert torch.equal(out.mask[1], clusters[1] == 1)
    assert out.iou[0] == pytest.approx(1.0) and out.iou[1] == pytest.approx(1 / 8)
    assert out.valid.all()


def test_pseudo_mask_handles_empty_clusters_without_nan() -> None:
    clusters = torch.stack([_quadrants(k_used=3), torch.zeros(4, 4, dtype=torch.long)])
    sal = 0.2 + 0.8 * torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))
    sal[0, :2, :2] = 0.05  # cluster 0 (TL + BR): lowest non-empty mean
    sal[0, 2:, 2:] = 0.05
    cam = torch.zeros(2, 4, 4)
    cam[:, 3, 3] = 1.0
    out = select_pseudo_masks(clusters, cam, sal, num_clusters=4)
    # Sample 0: cluster 3 is empty and must be neither background nor chosen.
    assert out.background[0] == 0 and out.cluster[0] in (1, 2) and out.valid[0]
    # Sample 1: a single (background) cluster: nothing left to choose.
    assert not out.valid[1] and not out.mask[1].any()
    assert torch.isfinite(out.iou).all()


# ---------------------------------------------------------------- losses
def test_pseudo_mask_loss_known_values_and_gate() -> None:
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    cam = mask.float() * 5 + 2  # min-max normalises to the mask
    mse, dice = pseudo_mask_loss(cam, mask)
    assert float(mse) == pytest.approx(0.0) and float(dice) == pytest.approx(0.0, abs=1e-6)
    inverted = (~mask).float()
    mse, dice = pseudo_mask_loss(inverted, mask)
    assert float(mse) == pytest.approx(1.0)
    assert float(dice) == pytest.approx(1 - 1 / 17)  # pred 12 px + target 4 px + 1
    bad = torch.stack([cam[0], inverted[1]]).requires_grad_()
    mse, dice = pseudo_mask_loss(bad, mask, torch.tensor([True, False]))
    mse, dice = mse.detach(), dice.detach()
    assert float(mse) == pytest.approx(0.0) and float(dice) == pytest.approx(0.0, abs=1e-6)
    mse, dice = pseudo_mask_loss(bad, mask, torch.tensor([False, False]))
    (mse + dice).backward()  # still attached when none active
    assert float(mse.detach()) == 0.0 and float(bad.grad.abs().sum()) == 0.0


def test_correlation_loss_known_values() -> None:
    ego = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    exo = ego[:, None].expand(-1, 3, -1, -1, -1)  # Gram matrix x3: proportional
    assert float(correlation_loss(ego, exo)) == pytest.approx(0.0, abs=1e-6)
    ego = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # Gram = identity
    exo = torch.ones(1, 1, 2, 1, 2)  # Gram = all 2s
    assert float(correlation_loss(ego, exo)) == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_info_nce_known_values() -> None:
    q = torch.tensor([[1.0, 0.0, 0.0]])
    neg = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]])
    assert float(info_nce(q, 3 * q, neg, temperature=0.01)) == pytest.approx(0.0, abs=1e-6)
    # tau = 1: logits [1, 0, 0, 0] -> log(e + 3) - 1.
    assert float(info_nce(q, q, neg)) == pytest.approx(math.log(math.e + 3) - 1, abs=1e-6)
    assert float(info_nce(q, -q, neg)) > float(info_nce(q, q, neg))


def test_denoising_gradients_reach_cams_only() -> None:
    g = torch.Generator().manual_seed(0)
    b, e, c, n, d = 2, 3, 3, 4, 8
    exo_cams = torch.randn(b, e, c + n, 4, 4, generator=g, requires_grad=True)
    exo_keys = torch.randn(b, e, d, 4, 4, generator=g, requires_grad=True)
    ego_cam = torch.randn(b, 4, 4, generator=g, requires_grad=True)
    ego_keys = torch.randn(b, d, 4, 4, generator=g, requires_grad=True)
    labels = torch.tensor([0, 2])
    loss = denoising_distillation_loss(exo_cams, exo_keys, ego_cam, ego_keys, labels, c)
    assert loss.shape == () and float(loss.detach()) > 0
    loss.backward()
    per_channel = exo_cams.grad.abs().sum((1, 3, 4))  # (B, C + N)
    assert (per_channel[:, c:] > 0).all()  # noise channels
    assert per_channel[0, 0] > 0 and per_channel[1, 2] > 0  # GT channels
    assert per_channel[0, 1:c].sum() == 0 and per_channel[1, :2].sum() == 0  # other classes
    assert float(ego_cam.grad.abs().sum()) > 0
    assert exo_keys.grad is None and ego_keys.grad is None


# ---------------------------------------------------------------- clustering
def _two_direction_keys() -> torch.Tensor:
    """(2, 6, 4, 4) keys: left half along one direction, right half along another (+noise)."""
    g = torch.Generator().manual_seed(0)
    keys = torch.zeros(2, 6, 4, 4)
    keys[:, 0, :, :2] = 3.0
    keys[:, 1, :, 2:] = 3.0
    return keys + 0.05 * torch.randn(keys.shape, generator=g)


def test_kmeans_clusterer_separates_directions_and_is_deterministic() -> None:
    keys = _two_direction_keys()
    labels = KMeansClusterer(num_clusters=2)(keys, torch.Generator().manual_seed(3))
    assert labels.shape == (2, 4, 4) and labels.dtype == torch.int64
    for lab in labels:
        assert (lab[:, :2] == lab[0, 0]).all() and (lab[:, 2:] == lab[0, 3]).all()
        assert lab[0, 0] != lab[0, 3]
    again = KMeansClusterer(num_clusters=2)(keys, torch.Generator().manual_seed(3))
    assert torch.equal(labels, again)


def test_modularity_known_values() -> None:
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])[None]  # (1, D=2, P=4)
    hard = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])[None]  # (1, K=2, P)
    assert float(modularity_loss(hard, x)) == pytest.approx(-0.5)
    assert float(modularity_loss(torch.full_like(hard, 0.5), x)) == pytest.approx(0.0, abs=1e-6)


def test_prototype_clusterer_trains_and_freeze_queries_flag() -> None:
    torch.manual_seed(0)
    keys = _two_direction_keys()
    module = PrototypeClusterer(dim=6, num_clusters=2, depth=2, heads=2)
    history = fit_prototype_clusterer(module, [keys] * 15, lr=1e-2)
    assert history[-1] < history[0] - 0.1
    labels = module(keys)
    assert labels.shape == (2, 4, 4) and (labels[:, :, :2] != labels[:, :, 2:]).all()
    # The reference's fixed queries only matter from the second layer on.
    one = PrototypeClusterer(dim=6, num_clusters=2, depth=1, heads=2)
    one_frozen = PrototypeClusterer(dim=6, num_clusters=2, depth=1, heads=2, freeze_queries=True)
    one_frozen.load_state_dict(one.state_dict())
    assert torch.allclose(one.scores(keys), one_frozen.scores(keys))
    frozen = PrototypeClusterer(dim=6, num_clusters=2, depth=2, heads=2, freeze_queries=True)
    frozen.load_state_dict(module.state_dict())
    assert not torch.allclose(frozen.scores(keys), module.scores(keys))


# ---------------------------------------------------------------- the method
@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "ego": torch.rand(2, 3, 112, 112, generator=g),
        "exo": torch.rand(2, 3, 3, 112, 112, generator=g),
        "label": torch.tensor([0, 2]),
    }


@pytest.mark.parametrize(
    "name,options",
    [("looptrans", {}), ("looptrans", {"ego_pixel_ce": False}), ("looptrans_gated", {})],
)
def test_training_steps_reduce_loss(name: str, options: dict, batch) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, method=name, pretrained=False)
    assert model.classifier.out_channels == len(VOCAB) + 15
    step = build_method(name, model, **options)
    assert step.gate == (name == "looptrans_gated")
    opt = torch.optim.SGD(model.param_groups(1e-2), lr=1e-2, momentum=0.9)
    model.train()
    losses = []
    for _ in range(3):
        out = step(batch, progress=0.5)
        assert torch.isfinite(out["loss"])
        assert ("ce_ego" in out) == options.get("ego_pixel_ce", True)
        opt.zero_grad()
        out["loss"].backward()
        pixel_grad = sum(float(p.grad.abs().sum()) for p in model.pixel_proj.parameters())
        assert pixel_grad > 0
        assert all(p.grad is None for p in model.ego_proj.parameters())  # branch never run
        assert all(p.grad is None for p in model.dino.parameters())
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0]
    assert 0 < float(out["stat_pseudo_area"]) < 1
    maps = model.predict_maps(batch["ego"], batch["label"])
    assert maps.shape == (2, 14, 14) and torch.isfinite(maps).all()


def test_gate_skips_unreliable_pseudo_masks(batch) -> None:
    model = create_model("tiny", vocabulary=VOCAB, method="looptrans", pretrained=False)
    trusting = build_method("looptrans", model, piou_threshold=1.01)(batch)
    gated = build_method("looptrans_gated", model, piou_threshold=1.01)(batch)
    assert float(trusting["stat_pseudo_active_rate"]) == 1.0
    assert float(gated["stat_pseudo_active_rate"]) == 0.0
    assert float(gated["stat_gate_rate"]) == 0.0
    assert float(gated["pseudo_mse"].detach()) == 0.0
    assert float(trusting["pseudo_mse"].detach()) > 0


def test_registered_and_rejects_models_without_pixel_branch() -> None:
    assert {"looptrans", "looptrans_gated"} <= set(METHODS)
    model = create_model("tiny", vocabulary=VOCAB, method="locate", pretrained=False)
    with pytest.raises(ValueError, match="looptrans"):
        build_method("looptrans", model)
