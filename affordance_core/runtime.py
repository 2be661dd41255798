"""Inference backends of :class:`~affordance_core.predictor.AffordancePredictor`.

``torch`` runs the model eagerly. ``onnxruntime`` runs two exported ONNX graphs in ONNX
Runtime: the frozen backbones (one pass per frame, in ``set_image``) and the heads (CAMs,
calibration and scores for any number of actions of that frame, in ``predict``). Both graphs
are traced from the same model code the torch backend runs
(:meth:`AffordanceModel.extract <affordance_core.model.AffordanceModel.extract>` and
:meth:`AffordanceModel.infer <affordance_core.model.AffordanceModel.infer>`, the map path
evaluation uses too), so the backends cannot drift.
The CLIP text embeddings of the vocabulary are constants of the heads graph: computed once,
like the torch backend's cache per action.

Graphs are exported on first use into a cache folder keyed by a content hash of the whole
model (the checkpoint's heads, the backbones it loaded and the vocabulary) and the export
settings (variant, opset, exporter version, torch and onnx versions)::

    <cache>/<model hash[:20]>-<variant>/{backbone.onnx, heads.onnx, meta.json}

``meta.json`` records the full key and a SHA-256 of each graph file. An entry whose key
differs (stale: same model, other settings) or whose files are missing, altered or rejected by
ONNX Runtime (corrupt) is rebuilt, with a warning naming the reason. The cache folder is
``cache_dir`` if given, else ``$AFFORDANCE_ONNX_CACHE``, else
``$XDG_CACHE_HOME/affordance_ros/onnx`` (``~/.cache/affordance_ros/onnx``).

Execution providers: on a CUDA device the best available of TensorRT, CUDA, CPU (in that
order, from ``onnxruntime.get_available_providers()``; the ``onnxruntime-gpu`` package has
the first two); on a CPU device the CPU provider. With ``half``, TensorRT builds float16
engines; the CUDA and CPU providers run the float32 graph.

Variants: ``fp32`` (the exported graphs) and ``int8`` (the backbone graph after ONNX Runtime
dynamic quantization: int8 per-channel weights and per-frame activation scales for the MatMuls
with constant weights; the heads graph stays float32).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .files import atomic_write
from .model import AffordanceModel, Features

__all__ = [
    "BACKENDS",
    "EXPORT_VERSION",
    "PROVIDER_ORDER",
    "VARIANTS",
    "BackboneGraph",
    "HeadsGraph",
    "OnnxCacheEntry",
    "OnnxRuntimeEngine",
    "default_cache_dir",
    "feature_names",
    "model_fingerprint",
    "prepare_onnx_cache",
    "select_providers",
]

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
VARIANTS = ("fp32", "int8")
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# Bump when the exported graphs change meaning or layout: older cache entries become stale.
# 2: the heads graph's scores are the calibrated presence score, not a softmax.
# 3: with an objectness gate the graphs pass the CLS attention (``attn``) too.
EXPORT_VERSION = 3
GRAPH_FILES = ("backbone.onnx", "heads.onnx")


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError(
            "the onnxruntime backend needs ONNX Runtime: pip install onnxruntime "
            "(onnxruntime-gpu for CUDA/TensorRT), or pip install "
            "'affordance_ros[export]'"
        ) from None
    return ort


def uses_clip(model: AffordanceModel) -> bool:
    """True if the model's inference uses the CLIP patch embeddings: calibrated maps, or a
    presence score that weights the affinity peak (:attr:`AffordanceModel.uses_affinity`)."""
    return model.uses_affinity


def feature_names(model: AffordanceModel) -> list[str]:
    """The backbone features the heads graph reads, in graph order: ``keys``, then ``clip``
    (:func:`uses_clip`), then ``attn`` (the CLS attention, for an objectness gate)."""
    names = ["keys"]
    if uses_clip(model):
        names.append("clip")
    if model.objectness is not None:
        names.append("attn")
    return names


class BackboneGraph(nn.Module):
    """Exported backbone pass: images -> DINO keys (and CLIP patch embeddings, CLS attention).

    Inputs: ``images`` (1, 3, S, S) float32 RGB in [0, 1]. Outputs (:func:`feature_names`):
    ``keys`` (1, D, h, w) float32; when the model reads CLIP, ``clip`` (1, Dc, h, w) float32,
    L2-normalised per patch; with an objectness gate, ``attn`` (1, K, h, w) float32; exactly
    :meth:`AffordanceModel.extract`'s fields.
    """

    def __init__(self, model: AffordanceModel) -> None:
        super().__init__()
        self.model = model
        self.names = feature_names(model)
        self.eval()

    @property
    def output_names(self) -> list[str]:
        return list(self.names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        feats = self.model.extract(images)
        fields = {"keys": feats.keys, "clip": feats.clip, "attn": feats.cls_attention}
        return tuple(fields[name] for name in self.names)


class HeadsGraph(nn.Module):
    """Exported heads pass: one frame's features + A action ids -> A maps and scores.

    Inputs: the :class:`BackboneGraph` outputs (:func:`feature_names`), then ``class_ids``
    (A,) int64 in [0, C). Outputs: ``maps``
    (1, A, h, w) float32 (raw scale) and ``scores`` (1, A) float32 in [0, 1] (the calibrated
    presence score), exactly
    :meth:`AffordanceModel.infer` for that frame.
    """

    def __init__(self, model: AffordanceModel) -> None:
        super().__init__()
        self.model = model
        self.names = feature_names(model)
        self.eval()

    @property
    def input_names(self) -> list[str]:
        return [*self.names, "class_ids"]

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        fields = dict(zip(self.names, inputs[:-1], strict=True))
        class_ids, keys = inputs[-1], fields["keys"]
        # the CLS attention is read only by an objectness gate
        feats = Features(keys, fields.get("attn", keys.new_zeros(0)), fields.get("clip"))
        maps, scores = self.model.infer(feats, class_ids[None])
        return maps.float(), scores.float()


def default_cache_dir() -> Path:
    """``$AFFORDANCE_ONNX_CACHE``, else ``$XDG_CACHE_HOME/affordance_ros/onnx``, else
    ``~/.cache/affordance_ros/onnx``."""
    if os.environ.get("AFFORDANCE_ONNX_CACHE"):
        return Path(os.environ["AFFORDANCE_ONNX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "affordance_ros" / "onnx"


def model_fingerprint(model: AffordanceModel) -> str:
    """SHA-256 (hex) of the model's configuration, vocabulary and every parameter and buffer.

    Covers the checkpoint's heads and the backbone weights it was loaded with, so a different
    ``weights_dir`` gives a different key. Takes about a second per 500 MB of weights.
    """
    digest = hashlib.sha256()
    header = {"config": asdict(model.config), "vocabulary": list(model.vocabulary)}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _export_key(fingerprint: str, variant: str, opset: int) -> dict[str, Any]:
    import onnx

    return {
        "model_sha256": fingerprint,
        "variant": variant,
        "opset": opset,
        "export_version": EXPORT_VERSION,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }


@dataclass(frozen=True)
class OnnxCacheEntry:
    """A validated cache entry.

    Attributes:
        folder: the entry's folder.
        backbone: path of the backbone graph.
        heads: path of the heads graph.
        key: the export key recorded in ``meta.json``.
        status: ``hit`` (reused), ``exported`` (first use) or ``rebuilt`` (stale or corrupt).
    """

    folder: Path
    backbone: Path
    heads: Path
    key: dict[str, Any]
    status: str


def _check_entry(folder: Path, key: dict[str, Any]) -> str | None:
    """None if ``folder`` holds a valid entry for ``key``, else why not (for the log line)."""
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        recorded, files = meta["key"], meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"corrupt (meta.json unreadable: {type(exc).__name__})"
    if recorded != key:
        changed = sorted(k for k in set(key) | set(recorded) if key.get(k) != recorded.get(k))
        detail = ", ".join(f"{k}: {recorded.get(k)!r} -> {key.get(k)!r}" for k in changed)
        return f"stale ({detail})"
    for name in GRAPH_FILES:
        path = folder / name
        if not path.is_file():
            return f"corrupt ({name} missing)"
        if _file_sha256(path) != files.get(name):
            return f"corrupt ({name} does not match its recorded SHA-256)"
    return None


def _quantize_backbone(path: Path) -> None:
    """ONNX Runtime dynamic quantization of the backbone graph, in place.

    int8 weights per output channel for the MatMuls with constant weights (the ViT linear
    layers); attention's activation-by-activation MatMuls and the small heads graph stay
    float32 (quantizing the heads' calibration moved the maps' peaks).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = path.with_name(f"fp32-{path.name}")
    path.rename(source)
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint as WARNING
    try:
        quantize_dynamic(
            str(source),
            str(path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        quiet.setLevel(level)
        source.unlink()


def _write_entry(model: AffordanceModel, folder: Path, key: dict[str, Any], opset: int) -> None:
    """Export both graphs (and quantize them for ``int8``) into ``folder``, then meta.json."""
    from .export import export_onnx_module

    devices = {p.device for p in model.parameters()}
    model.cpu()
    try:
        size = model.image_size
        images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        backbone = BackboneGraph(model)
        export_onnx_module(
            backbone,
            (images,),
            folder / "backbone.onnx",
            ["images"],
            backbone.output_names,
            None,
            opset,
        )
        with torch.no_grad():
            features = backbone(images)
        heads = HeadsGraph(model)
        class_ids = torch.arange(2) % model.num_classes  # A = 2: no batch-1 folding
        export_onnx_module(
            heads,
            (*features, class_ids),
            folder / "heads.onnx",
            heads.input_names,
            ["maps", "scores"],
            {"class_ids": {0: "A"}, "maps": {1: "A"}, "scores": {1: "A"}},
            opset,
        )
    finally:
        if devices and devices != {torch.device("cpu")}:
            model.to(next(iter(devices)))
    if key["variant"] == "int8":
        _quantize_backbone(folder / "backbone.onnx")
    files = {name: _file_sha256(folder / name) for name in GRAPH_FILES}
    (folder / "meta.json").write_text(json.dumps({"key": key, "files": files}, indent=1))


def prepare_onnx_cache(
    model: AffordanceModel,
    cache_dir: str | os.PathLike | None = None,
    variant: str = "fp32",
    opset: int = 17,
    force: bool = False,
    fingerprint: str | None = None,
) -> OnnxCacheEntry:
    """Return the cache entry for ``model``, exporting (or re-exporting) it when needed.

    Args:
        model: the model to export (exported from CPU float32; moved back afterwards).
        cache_dir: cache folder (default :func:`default_cache_dir`).
        variant: ``fp32`` or ``int8``.
        opset: ONNX opset of the export.
        force: rebuild even a valid entry (used when ONNX Runtime rejects a cached file).
        fingerprint: :func:`model_fingerprint` of ``model`` if already computed.

    Returns:
        The entry; its ``status`` says whether it was reused, exported or rebuilt.

    Raises:
        ValueError: on an unknown ``variant``.
        RuntimeError: if onnx/onnxruntime are missing or the export fails.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; choose from {', '.join(VARIANTS)}")
    _import_ort()
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "the onnxruntime backend exports with the onnx package: pip install onnx"
        ) from None
    fingerprint = fingerprint or model_fingerprint(model)
    key = _export_key(fingerprint, variant, opset)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / f"{fingerprint[:20]}-{variant}"
    status = "hit"
    if force:
        status = "rebuilt"
    elif folder.exists():
        reason = _check_entry(folder, key)
        if reason is not None:
            logger.warning("ONNX cache %s is %s; re-exporting", folder, reason)
            status = "rebuilt"
    else:
        logger.info(
            "exporting the model to ONNX (%s) into the cache %s (first use)", variant, folder
        )
        status = "exported"
    if status != "hit":
        try:
            with atomic_write(folder, directory=True) as tmp:
                _write_entry(model, tmp, key, opset)
        except OSError:
            # Another process may have published the same entry meanwhile; use it if valid.
            if _check_entry(folder, key) is not None:
                raise
    return OnnxCacheEntry(folder, folder / "backbone.onnx", folder / "heads.onnx", key, status)


def select_providers(
    device: str | torch.device, half: bool = False, trt_cache: str | os.PathLike | None = None
) -> list[Any]:
    """Execution providers for ``device``, best first, as ``InferenceSession`` takes them.

    On CUDA: TensorRT, CUDA, CPU, keeping those ``onnxruntime.get_available_providers()``
    lists (a warning if neither GPU provider is there). On CPU: the CPU provider only.

    Args:
        device: the predictor's torch device.
        half: TensorRT builds float16 engines.
        trt_cache: folder for TensorRT's engine cache (engines take minutes to build).
    """
    ort = _import_ort()
    device = torch.device(device)
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    index = device.index or 0
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        options: dict[str, Any] = {"device_id": index, "trt_fp16_enable": bool(half)}
        if trt_cache is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache))
        providers.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    if not providers:
        logger.warning(
            "device %s requested but this onnxruntime has no CUDA or TensorRT "
            "provider (available: %s); running on the CPU. pip install "
            "onnxruntime-gpu for the GPU providers",
            device,
            sorted(available),
        )
    providers.append("CPUExecutionProvider")
    return providers


class OnnxRuntimeEngine:
    """The two exported graphs of one model in ONNX Runtime sessions.

    Args:
        model: the model; exported into the cache on first use.
        device: ``cpu`` or ``cuda[:N]`` (chooses the execution providers).
        half: float16 TensorRT engines (other providers run float32).
        cache_dir: ONNX cache folder (see :func:`prepare_onnx_cache`).
        variant: ``fp32`` or ``int8``.
        threads: ONNX Runtime intra-op threads; 0 = torch's current thread count.
        opset: ONNX opset of the export.
        providers: provider names to use instead of :func:`select_providers`' choice.

    Raises:
        RuntimeError: onnx/onnxruntime missing, or the export fails.
    """

    def __init__(
        self,
        model: AffordanceModel,
        device: str | torch.device = "cpu",
        half: bool = False,
        cache_dir: str | os.PathLike | None = None,
        variant: str = "fp32",
        threads: int = 0,
        opset: int = 17,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.ort = _import_ort()
        self.device = torch.device(device)
        self.half = bool(half)
        self.variant = variant
        self.threads = int(threads) or torch.get_num_threads()
        self.requested_providers = list(providers) if providers else None
        fingerprint = model_fingerprint(model)
        self.entry = prepare_onnx_cache(model, cache_dir, variant, opset, fingerprint=fingerprint)
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            logger.warning(
                "ONNX cache %s is corrupt (ONNX Runtime cannot load it: %s: %s); re-exporting",
                self.entry.folder,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            self.entry = prepare_onnx_cache(
                model, cache_dir, variant, opset, force=True, fingerprint=fingerprint
            )
            self._open()
        logger.info(
            "onnxruntime backend (%s): providers %s, cache %s (%s)",
            variant,
            self.providers,
            self.entry.folder,
            self.entry.status,
        )

    def _open(self) -> None:
        options = self.ort.SessionOptions()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3
        providers = self.requested_providers or select_providers(
            self.device, self.half, self.entry.folder / "trt"
        )
        if self.requested_providers and "TensorrtExecutionProvider" in providers:
            index = self.device.index or 0
            providers = [
                (
                    p,
                    {
                        "device_id": index,
                        "trt_fp16_enable": self.half,
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(self.entry.folder / "trt"),
                    },
                )
                if p == "TensorrtExecutionProvider"
                else p
                for p in providers
            ]
        self.backbone = self.ort.InferenceSession(
            str(self.entry.backbone), options, providers=providers
        )
        self.heads = self.ort.InferenceSession(str(self.entry.heads), options, providers=providers)
        self._backbone_outputs = [o.name for o in self.backbone.get_outputs()]

    @property
    def providers(self) -> list[str]:
        """The providers the backbone session runs on, best first."""
        return list(self.backbone.get_providers())

    def extract(self, images: Tensor) -> tuple[np.ndarray, ...]:
        """Backbone pass on (1, 3, S, S) float32 images in [0, 1]; returns the graph's outputs
        (:func:`feature_names`) as float32 numpy arrays."""
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return tuple(self.backbone.run(self._backbone_outputs, {"images": array}))

    def maps_and_scores(
        self, features: tuple[np.ndarray, ...], class_ids: Sequence[int]
    ) -> tuple[Tensor, Tensor]:
        """Heads pass for one frame: (1, A, h, w) float32 raw maps and (1, A) float32 scores
        in [0, 1], as CPU tensors (the shapes of :meth:`AffordanceModel.infer`)."""
        feeds = dict(zip(self._backbone_outputs, features, strict=True))
        feeds["class_ids"] = np.asarray(class_ids, dtype=np.int64)
        maps, scores = self.heads.run(["maps", "scores"], feeds)
        return torch.from_numpy(maps), torch.from_numpy(scores)
