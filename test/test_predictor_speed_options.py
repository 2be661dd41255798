"""Predictor speed options: torch.compile and CPU bfloat16 autocast keep the eager outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affordance_core import create_model
from affordance_core.predictor import AffordancePredictor

VOCAB = ["hold", "cut_with", "pour"]


@pytest.fixture(scope="module")
def model_and_image():
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, pretrained=False)
    image = (np.random.default_rng(1).random((96, 128, 3)) * 255).astype(np.uint8)
    return model, image


@pytest.mark.slow
def test_compiled_predictor_matches_eager(model_and_image) -> None:
    model, image = model_and_image
    eager = AffordancePredictor(model)(image, VOCAB)
    compiled_predictor = AffordancePredictor(model, compile=True)
    assert compiled_predictor.compiled
    for _ in range(2):  # compiled once, then reused
        compiled = compiled_predictor(image, VOCAB)
        for ref, got in zip(eager, compiled):
            assert np.abs(ref.heatmap - got.heatmap).max() < 1e-4
            assert abs(ref.score - got.score) < 1e-5


def test_cpu_bfloat16_autocast_tracks_float32(model_and_image) -> None:
    model, image = model_and_image
    full = AffordancePredictor(model)(image, VOCAB)
    half_predictor = AffordancePredictor(model, half=True)
    assert half_predictor.autocast_dtype == torch.bfloat16
    half = half_predictor(image, VOCAB)
    for ref, got in zip(full, half):
        assert got.heatmap.dtype == np.float32 and got.heatmap.shape == ref.heatmap.shape
        corr = np.corrcoef(ref.heatmap.ravel(), got.heatmap.ravel())[0, 1]
        assert corr > 0.9, f"bfloat16 heatmap decorrelated from float32 (r={corr:.3f})"
