"""CUDA paths of the predictor (skipped without a CUDA device; ``bench/gpu_check.sh`` runs
them with ``pytest -m cuda``): eager float32 and float16 autocast, and the onnxruntime
backend on the GPU providers, each against eager float32 on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affordance_core import create_model
from affordance_core.predictor import AffordancePredictor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]
VOCAB = ["hold", "cut_with", "pour"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("tiny", vocabulary=VOCAB, pretrained=False).eval()
    frame = (np.random.default_rng(2).random((96, 128, 3)) * 255).astype(np.uint8)
    reference = AffordancePredictor(model)(frame, VOCAB)
    return model, frame, reference


def test_cuda_float32_matches_cpu(setup) -> None:
    model, frame, reference = setup
    got = AffordancePredictor(model, device="cuda")(frame, VOCAB)
    for r, g in zip(reference, got):
        assert np.abs(r.heatmap - g.heatmap).max() <= 1e-3
        assert r.peak_xy == g.peak_xy
    model.cpu()


def test_cuda_float16_autocast_tracks_float32(setup) -> None:
    model, frame, reference = setup
    got = AffordancePredictor(model, device="cuda", half=True)(frame, VOCAB)
    for r, g in zip(reference, got):
        corr = np.corrcoef(r.heatmap.ravel(), g.heatmap.ravel())[0, 1]
        assert corr > 0.95, f"float16 heatmap decorrelated from float32 (r={corr:.3f})"
    model.cpu()


def test_onnxruntime_on_gpu_providers_matches_cpu(setup, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider (pip install onnxruntime-gpu)")
    model, frame, reference = setup
    predictor = AffordancePredictor(
        model, device="cuda", backend="onnxruntime", onnx_cache_dir=tmp_path
    )
    assert predictor.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    for r, g in zip(reference, predictor(frame, VOCAB)):
        assert np.abs(r.heatmap - g.heatmap).max() <= 1e-3
        assert r.peak_xy == g.peak_xy
