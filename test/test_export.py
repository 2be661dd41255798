"""Export of the inference graph: ONNX (onnxruntime CPU) and TorchScript match eager PyTorch.

Tiny tier with random backbones (pretrained=False), 112 px, CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from affordance_core import create_model
from affordance_core.checkpoint import save_model
from affordance_core.export import (
    InferenceGraph,
    compare_with_eager,
    export,
    export_onnx,
    export_torchscript,
    main,
)

VOCAB = ["hold", "cut_with", "sit_on"]
# Relative to the range of the eager maps: float32 reassociation only, no mask flips.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", vocabulary=VOCAB, method="selectivecl", pretrained=False).eval()


def _inputs(batch: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 3, 112, 112, generator=gen),
        torch.randint(0, len(VOCAB), (batch,), generator=gen),
    )


def test_inference_graph_equals_predict_maps(model) -> None:
    images, ids = _inputs(2)
    with torch.no_grad():
        out = InferenceGraph(model)(images, ids)
    assert out.shape == (2, 14, 14) and out.dtype == torch.float32
    assert torch.equal(out, model.predict_maps(images, ids))


def test_onnx_matches_eager_with_dynamic_batch(model, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(model, tmp_path / "m.onnx", opset=17, dynamic_batch=True)
    # The exporter restores the wrapper's mode afterwards: the heads must stay in eval mode.
    assert not model.training and not model.ego_proj.training
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images", "class_ids"]
    for batch in (1, 2, 3):
        images, ids = _inputs(batch, seed=batch)
        got = torch.from_numpy(
            session.run(["maps"], {"images": images.numpy(), "class_ids": ids.numpy()})[0]
        )
        expected = model.predict_maps(images, ids)
        assert got.shape == expected.shape == (batch, 14, 14)
        span = float(expected.max() - expected.min())
        assert span > 0
        assert float((got - expected).abs().max()) <= REL_TOL * span
    # The class id is a real input of the graph, not a traced constant.
    images, _ = _inputs(1)
    a, b = (
        session.run(["maps"], {"images": images.numpy(), "class_ids": torch.tensor([k]).numpy()})[
            0
        ]
        for k in (0, 2)
    )
    assert abs(a - b).max() > 0


def test_torchscript_matches_eager(model, tmp_path: Path) -> None:
    path = export_torchscript(model, tmp_path / "m.pt")
    result = compare_with_eager(model, path, "torchscript", batch_sizes=(1, 2))
    assert result["map_range"] > 0
    assert result["max_abs_diff"] <= REL_TOL * result["map_range"]


def test_looptrans_pixel_branch_exports(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    looptrans = create_model("tiny", vocabulary=VOCAB, method="looptrans", pretrained=False).eval()
    path = export_onnx(looptrans, tmp_path / "lt.onnx")
    result = compare_with_eager(looptrans, path, "onnx", batch_sizes=(1, 2))
    assert result["max_abs_diff"] <= REL_TOL * result["map_range"]


def test_unknown_format_is_a_clear_error(model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown export format 'tflite'.*onnx, torchscript"):
        export(model, tmp_path / "m.bin", "tflite")
    with pytest.raises(ValueError, match="unknown export format"):
        compare_with_eager(model, tmp_path / "m.bin", "tflite")


def test_cli_writes_file_and_reports_diff(tmp_path: Path, capsys) -> None:
    from affordance_core import tiny

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.manual_seed(0)
    torch.save(tiny.build_tiny_dino().state_dict(), weights / tiny.TINY_DINO_FILE)
    torch.save(tiny.build_tiny_clip().state_dict(), weights / tiny.TINY_CLIP_FILE)
    trained = create_model("tiny", vocabulary=VOCAB, method="selectivecl", weights_dir=weights)
    ckpt = save_model(tmp_path / "model.pt", trained)
    out = tmp_path / "export" / "model.pt"
    status = main(
        [
            "--checkpoint",
            str(ckpt),
            "--format",
            "torchscript",
            "--out",
            str(out),
            "--weights-dir",
            str(weights),
        ]
    )
    assert status == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["file"] == str(out) and out.is_file()
    assert record["size_bytes"] == out.stat().st_size
    assert record["max_abs_diff"] <= REL_TOL * record["map_range"]

    status = main(["--checkpoint", str(ckpt), "--format", "tflite", "--out", str(out)])
    assert status == 1
    err = capsys.readouterr().err
    assert "unknown export format 'tflite'" in err and "onnx, torchscript" in err


@pytest.fixture(scope="module")
def paper_model():
    """The paper tier (DINO ViT-S/16 + CLIP ViT-B/16 at 224 px) with random weights: the real
    architectures, built offline (``pretrained=False`` downloads nothing)."""
    torch.manual_seed(0)
    return create_model("paper", vocabulary=VOCAB, method="selectivecl", pretrained=False).eval()


@pytest.mark.slow
def test_paper_tier_onnx_export_matches_eager(paper_model, tmp_path: Path) -> None:
    """open_clip's ViT-B/16 takes nn.MultiheadAttention's fused fast path under tracing
    (aten::_native_multi_head_attention, no ONNX symbolic); the export switches it off."""
    pytest.importorskip("onnxruntime")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    path = export_onnx(paper_model, tmp_path / "paper.onnx")
    assert torch.backends.mha.get_fastpath_enabled() == fastpath  # restored
    result = compare_with_eager(paper_model, path, "onnx", batch_sizes=(1, 2))
    assert result["map_range"] > 0
    assert result["max_abs_diff"] <= REL_TOL * result["map_range"]


@pytest.mark.slow
def test_paper_tier_onnxruntime_backend_matches_torch(paper_model, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import numpy as np

    from affordance_core.predictor import AffordancePredictor

    frame = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    ref = AffordancePredictor(paper_model)(frame, VOCAB)
    got = AffordancePredictor(paper_model, backend="onnxruntime", onnx_cache_dir=tmp_path)(
        frame, VOCAB
    )
    for r, g in zip(ref, got):
        assert np.abs(r.heatmap - g.heatmap).max() <= 1e-3
        assert r.peak_xy == g.peak_xy
        np.testing.assert_array_equal(r.mask, g.mask)
