"""Tests of the KLD / SIM / NSS evaluation protocol (affordance_core.metrics)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from affordance_core.metrics import (
    MetricAccumulator,
    affordance_metrics,
    prepare_gt,
    prepare_prediction,
    summarize,
)


def _reference_metrics(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """Slow, literal numpy transcription of the protocol's formulas for one image."""
    eps = 1e-12
    p = pred / (pred.sum() + eps)
    g = gt / (gt.sum() + eps)
    kld = np.sum(g * np.log(g / (p + eps) + eps))
    sim = np.sum(np.minimum(p, g))
    z = (pred - np.mean(pred)) / np.std(pred)
    fix = (gt - np.min(gt)) / (np.max(gt - np.min(gt)) + eps)
    binary = np.zeros_like(fix)
    for i in range(fix.shape[0]):
        for j in range(fix.shape[1]):
            binary[i, j] = 1.0 if fix[i, j] > 0.1 else 0.0
    nss = np.sum(z * binary) / np.sum(binary + eps)
    return float(kld), float(sim), float(nss)


def _random_maps(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pred = prepare_prediction(torch.randn(n, 14, 14, generator=gen), size=size)
    gt = torch.rand(n, size, size, generator=gen) ** 3
    return pred, gt


def test_identical_maps_give_zero_kld_and_unit_sim() -> None:
    pred, _ = _random_maps(3, 32, seed=1)
    out = affordance_metrics(pred, pred.clone())
    assert torch.allclose(out["KLD"], torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(out["SIM"], torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert bool((out["NSS"] > 0).all())


def test_hand_computed_2x2_values() -> None:
    # P = [.75, .25, 0, 0], G = [.5, .5, 0, 0]
    # KLD = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 ln(4/3); SIM = .5 + .25
    # mean(pred) = 1, population std = sqrt(6/4); z = [2, 0, -1, -1] / std; fix = [1, 1, 0, 0]
    # NSS = (2 / std) / 2 = 1 / sqrt(1.5)
    pred = torch.tensor([[[3.0, 1.0], [0.0, 0.0]]])
    gt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    out = affordance_metrics(pred, gt)
    assert out["KLD"].item() == pytest.approx(0.5 * math.log(4.0 / 3.0), abs=1e-9)
    assert out["SIM"].item() == pytest.approx(0.75, abs=1e-9)
    assert out["NSS"].item() == pytest.approx(1.0 / math.sqrt(1.5), abs=1e-9)


def test_fixation_threshold_is_strictly_above_a_tenth() -> None:
    # GT min-max = [1, 0.1, 0.5, 0] -> fixations at 1 and 0.5 only (0.1 is not > 0.1).
    pred = torch.tensor([[[4.0, 0.0], [2.0, 2.0]]])
    gt = torch.tensor([[[1.0, 0.1], [0.5, 0.0]]], dtype=torch.float64)  # float32 0.1 > 0.1
    std = math.sqrt(((4 - 2) ** 2 + 2**2 + 0 + 0) / 4)
    expected = ((4 - 2) / std + (2 - 2) / std) / 2
    assert affordance_metrics(pred, gt)["NSS"].item() == pytest.approx(expected, abs=1e-9)


def test_constant_prediction_gives_finite_nss() -> None:
    _, gt = _random_maps(2, 16, seed=2)
    pred = prepare_prediction(torch.full((2, 14, 14), 0.3), size=16)
    out = affordance_metrics(pred, gt)
    assert bool(torch.isfinite(out["NSS"]).all())
    assert torch.equal(out["NSS"], torch.zeros(2, dtype=torch.float64))
    assert bool(torch.isfinite(out["KLD"]).all()) and bool(torch.isfinite(out["SIM"]).all())


def test_matches_numpy_transcription_on_random_maps() -> None:
    pred, gt = _random_maps(4, 24, seed=3)
    gt[1] = 0.0  # an all-zero GT is legal and must match too
    out = affordance_metrics(pred, gt)
    for i in range(4):
        p, g = pred[i].double().numpy(), gt[i].double().numpy()
        kld, sim, nss = _reference_metrics(p, g)
        assert out["KLD"][i].item() == pytest.approx(kld, rel=1e-9, abs=1e-9)
        assert out["SIM"][i].item() == pytest.approx(sim, rel=1e-9, abs=1e-9)
        assert out["NSS"][i].item() == pytest.approx(nss, rel=1e-9, abs=1e-9)


def test_float64_inputs_are_left_as_they_were() -> None:
    """The metrics work in place on their own buffers, never on the caller's tensors (float64
    inputs are not copied by the dtype conversion)."""
    pred, gt = (t.double() for t in _random_maps(3, 16, seed=5))
    pred_before, gt_before = pred.clone(), gt.clone()
    affordance_metrics(pred, gt)
    assert torch.equal(pred, pred_before) and torch.equal(gt, gt_before)


def test_batched_equals_per_image() -> None:
    pred, gt = _random_maps(5, 20, seed=4)
    batched = affordance_metrics(pred, gt)
    for i in range(5):
        single = affordance_metrics(pred[i : i + 1], gt[i : i + 1])
        for key in ("KLD", "SIM", "NSS"):
            assert single[key][0].item() == pytest.approx(batched[key][i].item(), abs=1e-12)


@pytest.mark.parametrize("src", [(14, 14), (7, 11), (300, 260)])
def test_prepare_prediction_matches_cv2(src: tuple[int, int]) -> None:
    raw = np.random.default_rng(5).normal(size=(2, *src)).astype(np.float32)
    ours = prepare_prediction(torch.from_numpy(raw), size=224).numpy()
    assert ours.shape == (2, 224, 224)
    for i in range(2):
        up = cv2.resize(raw[i], (224, 224), interpolation=cv2.INTER_LINEAR)
        ref = (up - up.min()) / (up.max() - up.min() + 1e-10)
        np.testing.assert_allclose(ours[i], ref, atol=1e-5)
    assert ours.min() >= 0.0 and ours.max() <= 1.0


@pytest.mark.parametrize("shape", [(37, 53), (300, 450), (224, 224)])
def test_prepare_gt_matches_cv2(shape: tuple[int, int]) -> None:
    gt = np.random.default_rng(6).integers(0, 256, size=shape, dtype=np.uint8)
    ours = prepare_gt(gt, size=224)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (224, 224)
    ref = cv2.resize(gt / 255.0, (224, 224), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        affordance_metrics(torch.rand(2, 8, 8), torch.rand(2, 8, 9))


def test_accumulator_and_summarize_are_plain_means() -> None:
    pred, gt = _random_maps(6, 16, seed=7)
    per_image = affordance_metrics(pred, gt)
    acc = MetricAccumulator()
    acc.update(pred[:4], gt[:4], prepared=True)
    acc.update(pred[4:], gt[4:], prepared=True)
    result = acc.compute()
    summary = summarize(per_image)
    assert result["n"] == summary["n"] == 6
    for key in ("KLD", "SIM", "NSS"):
        mean = per_image[key].mean().item()
        assert result[key] == pytest.approx(mean, abs=1e-9)
        assert summary[key] == pytest.approx(mean, abs=1e-9)
    acc.reset()
    assert acc.compute()["n"] == 0 and math.isnan(acc.compute()["KLD"])


def test_accumulator_prepares_raw_maps() -> None:
    gen = torch.Generator().manual_seed(8)
    raw = torch.randn(3, 14, 14, generator=gen)
    gt = torch.rand(3, 32, 32, generator=gen)
    acc = MetricAccumulator()
    acc.update(raw, gt)
    expected = summarize(affordance_metrics(prepare_prediction(raw, size=32), gt))
    result = acc.compute()
    for key in ("KLD", "SIM", "NSS"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9)
