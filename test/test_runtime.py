"""The onnxruntime backend of the predictor against the torch backend, and its ONNX cache.

Tiny tier with random backbones, CPU execution provider.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from affordance_core import create_model
from affordance_core.data.transforms import center_resize, to_tensor
from affordance_core.predictor import AffordancePredictor
from affordance_core.runtime import (
    EXPORT_VERSION,
    BackboneGraph,
    OnnxRuntimeEngine,
    model_fingerprint,
    prepare_onnx_cache,
    select_providers,
)

pytest.importorskip("onnxruntime")
VOCAB = ["hold", "cut_with", "pour", "sit_on"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny", vocabulary=VOCAB, method="selectivecl", pretrained=False).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.fixture(scope="module")
def onnx_predictor(model, cache) -> AffordancePredictor:
    return AffordancePredictor(model, backend="onnxruntime", onnx_cache_dir=cache)


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [
        (rng.random(shape) * 255).astype(np.uint8)
        for shape in [(96, 128, 3), (60, 80, 3), (112, 112, 3)]
    ]


def assert_same_predictions(ref, got, tol: float = 1e-3) -> None:
    assert [p.action for p in ref] == [p.action for p in got]
    for r, g in zip(ref, got):
        assert g.heatmap.dtype == np.float32 and g.heatmap.shape == r.heatmap.shape
        assert np.abs(r.heatmap - g.heatmap).max() <= tol, r.action
        assert r.peak_xy == g.peak_xy, r.action
        np.testing.assert_array_equal(r.mask, g.mask)
        assert abs(r.score - g.score) <= 1e-4
        assert r.present == g.present


def test_heads_graph_exports_the_presence_score(model, tmp_path) -> None:
    """A score that weights the affinity peak needs CLIP even without calibration: the heads
    graph takes it, the scores match the torch backend, and the cache key follows the score
    parameters."""
    from affordance_core.runtime import uses_clip

    scored = _with_config(
        model,
        calibration="none",
        score_weights=(2.0, 3.0),
        score_map_weight=1.5,
        score_bias=-0.5,
    )
    assert uses_clip(scored)
    assert not uses_clip(_with_config(scored, score_weights=(2.0, 0.0)))
    assert model_fingerprint(scored) != model_fingerprint(_with_config(scored, score_bias=0.5))
    assert model_fingerprint(scored) != model_fingerprint(
        _with_config(scored, score_map_weight=0.0)
    )
    torch_predictor = AffordancePredictor(scored, min_score=0.6)
    onnx = AffordancePredictor(scored, backend="onnxruntime", onnx_cache_dir=tmp_path)
    onnx.min_score = 0.6
    for frame in _frames()[:2]:
        ref, got = torch_predictor(frame, VOCAB), onnx(frame, VOCAB)
        assert_same_predictions(ref, got)


def test_heads_graph_exports_the_part_prior(tmp_path) -> None:
    """A fitted part prior is part of the heads graph: ONNX maps equal the torch backend's,
    and the cache key follows the prior's weights."""
    from affordance_core.part_prior import PartPriorFit

    torch.manual_seed(2)
    prior = create_model(
        "tiny", vocabulary=VOCAB, method="selectivecl", pretrained=False, part_prior=True
    ).eval()
    before = model_fingerprint(prior)
    g = torch.Generator().manual_seed(3)
    dim = prior.dino.dim
    prior.set_part_prior(
        PartPriorFit(
            3 * torch.randn(len(VOCAB), dim, generator=g), torch.randn(4, generator=g), 1, 1
        )
    )
    assert model_fingerprint(prior) != before
    torch_predictor = AffordancePredictor(prior)
    onnx = AffordancePredictor(prior, backend="onnxruntime", onnx_cache_dir=tmp_path)
    for frame in _frames()[:2]:
        assert_same_predictions(torch_predictor(frame, VOCAB), onnx(frame, VOCAB))
    # the prior's temperature is part of the graph and of the cache key
    sharp = _with_config(prior, part_prior_temperature=0.35)
    assert model_fingerprint(sharp) != model_fingerprint(prior)
    sharp_torch = AffordancePredictor(sharp)
    sharp_onnx = AffordancePredictor(sharp, backend="onnxruntime", onnx_cache_dir=tmp_path)
    frame = _frames()[0]
    got = sharp_onnx(frame, VOCAB)
    assert_same_predictions(sharp_torch(frame, VOCAB), got)
    assert (
        max(
            np.abs(a.heatmap - b.heatmap).max()
            for a, b in zip(got, onnx(frame, VOCAB), strict=True)
        )
        > 1e-3
    )


def _with_config(model, **fields):
    import copy
    import dataclasses

    out = copy.deepcopy(model)
    out.config = dataclasses.replace(model.config, **fields)
    return out


def test_onnxruntime_backend_matches_torch(model, onnx_predictor) -> None:
    torch_predictor = AffordancePredictor(model)
    assert onnx_predictor.backend == "onnxruntime"
    assert onnx_predictor.providers == ["CPUExecutionProvider"]
    assert torch_predictor.providers == []
    for frame in _frames():
        ref = torch_predictor(frame, VOCAB)
        got = onnx_predictor(frame, VOCAB)
        assert_same_predictions(ref, got)
        # The maps differ between actions: the class id is a live input of the heads graph.
        assert np.abs(got[0].heatmap - got[1].heatmap).max() > 1e-3
    # One action, and a repeated action, work too (symbolic action axis).
    frame = _frames()[0]
    assert_same_predictions(
        torch_predictor(frame, ["pour", "pour"]), onnx_predictor(frame, ["pour", "pour"])
    )


def test_several_actions_share_one_backbone_pass(onnx_predictor) -> None:
    engine = onnx_predictor._engine
    calls = {"backbone": 0, "heads": 0}
    backbone_run, heads_run = engine.backbone.run, engine.heads.run

    class Counting:
        def __init__(self, session, name):
            self.session, self.name = session, name

        def run(self, *args, **kwargs):
            calls[self.name] += 1
            return self.session.run(*args, **kwargs)

        def __getattr__(self, attr):
            return getattr(self.session, attr)

    engine.backbone, engine.heads = (
        Counting(engine.backbone, "backbone"),
        Counting(engine.heads, "heads"),
    )
    try:
        onnx_predictor.set_image(_frames()[1])
        onnx_predictor.predict(VOCAB)
        onnx_predictor.predict(["hold"])
    finally:
        engine.backbone, engine.heads = engine.backbone.session, engine.heads.session
    assert calls == {"backbone": 1, "heads": 2}
    assert engine.backbone.run == backbone_run and engine.heads.run == heads_run


def test_cache_is_reused_and_keyed_by_content(model, cache, onnx_predictor) -> None:
    entry = onnx_predictor._engine.entry
    assert entry.folder.parent == cache and entry.folder.name.endswith("-fp32")
    assert prepare_onnx_cache(model, cache).status == "hit"
    meta = json.loads((entry.folder / "meta.json").read_text())
    assert meta["key"]["model_sha256"].startswith(entry.folder.name[:20])
    # Other head weights: another key, so another entry.
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier.bias.add_(1e-3)
    assert model_fingerprint(other) != model_fingerprint(model)
    assert model_fingerprint(copy.deepcopy(model)) == model_fingerprint(model)


def _rebuild_and_check(model, cache, caplog, expected: str) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="affordance_core.runtime"):
        predictor = AffordancePredictor(model, backend="onnxruntime", onnx_cache_dir=cache)
    lines = [r.getMessage() for r in caplog.records if "re-exporting" in r.getMessage()]
    assert len(lines) == 1 and expected in lines[0], caplog.text
    assert predictor._engine.entry.status == "rebuilt"
    frame = _frames()[0]
    assert_same_predictions(AffordancePredictor(model)(frame, VOCAB), predictor(frame, VOCAB))
    assert prepare_onnx_cache(model, cache).status == "hit"


def test_corrupt_cache_file_is_rebuilt_with_a_log_line(
    model, cache, onnx_predictor, caplog
) -> None:
    folder = onnx_predictor._engine.entry.folder
    (folder / "backbone.onnx").write_bytes(b"not an onnx graph")
    _rebuild_and_check(model, cache, caplog, "corrupt (backbone.onnx does not match")


def test_file_rejected_by_onnxruntime_is_rebuilt(model, cache, onnx_predictor, caplog) -> None:
    folder = onnx_predictor._engine.entry.folder
    (folder / "heads.onnx").write_bytes(b"garbage")
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"]["heads.onnx"] = hashlib.sha256(b"garbage").hexdigest()  # checksum agrees
    (folder / "meta.json").write_text(json.dumps(meta))
    _rebuild_and_check(model, cache, caplog, "ONNX Runtime cannot load it")


def test_stale_cache_entry_is_rebuilt_with_a_log_line(
    model, cache, onnx_predictor, caplog
) -> None:
    folder = onnx_predictor._engine.entry.folder
    meta = json.loads((folder / "meta.json").read_text())
    meta["key"]["export_version"] = 0
    (folder / "meta.json").write_text(json.dumps(meta))
    _rebuild_and_check(model, cache, caplog, f"stale (export_version: 0 -> {EXPORT_VERSION})")


def test_unreadable_meta_is_corrupt(model, cache, onnx_predictor, caplog) -> None:
    folder = onnx_predictor._engine.entry.folder
    (folder / "meta.json").write_text("{truncated")
    _rebuild_and_check(model, cache, caplog, "corrupt (meta.json unreadable")


def test_bad_backend_arguments_are_clear_errors(model) -> None:
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'.*torch, onnxruntime"):
        AffordancePredictor(model, backend="tensorrt")
    with pytest.raises(ValueError, match="torch backend only"):
        AffordancePredictor(model, backend="onnxruntime", compile=True)
    with pytest.raises(ValueError, match="unknown onnx_variant 'int4'"):
        AffordancePredictor(model, backend="onnxruntime", onnx_variant="int4")


def test_missing_onnxruntime_says_how_to_install(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeError, match="pip install onnxruntime"):
        OnnxRuntimeEngine(model, cache_dir=tmp_path)


def test_provider_order(monkeypatch) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"],
    )
    chosen = select_providers("cuda:1", half=True, trt_cache="/tmp/trt")
    assert [p if isinstance(p, str) else p[0] for p in chosen] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert chosen[0][1]["device_id"] == 1 and chosen[0][1]["trt_fp16_enable"] is True
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert select_providers("cuda") == ["CPUExecutionProvider"]


def test_int8_variant_quantizes_the_backbone_only(cache) -> None:
    """int8 quantizes the backbone graph's weight MatMuls, not the heads, and the quantized
    backbone's features stay close to float32 (cosine > 0.99 per frame) on the shipped tiny
    weights. The features are compared rather than the stretched heatmaps: untrained heads on
    noise frames give near-flat maps whose min-max stretch amplifies rounding, and how much
    depends on the CPU's int8 kernels (without VNNI, onnxruntime's u8s8 products differ)."""
    import onnx

    torch.manual_seed(0)
    shipped = create_model("tiny", vocabulary=VOCAB, method="selectivecl").eval()
    predictor = AffordancePredictor(
        shipped, backend="onnxruntime", onnx_cache_dir=cache, onnx_variant="int8"
    )
    entry = predictor._engine.entry
    assert entry.folder.name.endswith("-int8") and entry.key["variant"] == "int8"
    ops = {
        name: {n.op_type for n in onnx.load(str(entry.folder / name)).graph.node}
        for name in ("backbone.onnx", "heads.onnx")
    }
    assert "DynamicQuantizeLinear" in ops["backbone.onnx"]
    assert not any("Integer" in op or "Quantize" in op for op in ops["heads.onnx"])
    graph = BackboneGraph(shipped)
    for frame in _frames():
        image = to_tensor(center_resize(frame, shipped.image_size))[None]
        with torch.no_grad():
            reference = graph(image)
        for name, ref, got in zip(
            graph.output_names, reference, predictor._engine.extract(image), strict=True
        ):
            ref, got = ref.numpy().ravel(), np.asarray(got).ravel()
            cosine = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)))
            assert cosine > 0.99, f"int8 {name} drifted from float32 (cosine {cosine:.4f})"
    for r, g in zip(
        AffordancePredictor(shipped)(_frames()[0], VOCAB), predictor(_frames()[0], VOCAB)
    ):
        assert g.heatmap.shape == r.heatmap.shape and g.heatmap.dtype == np.float32
