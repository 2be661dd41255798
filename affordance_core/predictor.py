"""Numpy-in, numpy-out inference for one camera frame and one or several action words."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .backbones import minmax
from .checkpoint import load_model
from .model import AffordanceModel, Features

__all__ = [
    "AffordancePredictor",
    "AffordancePrediction",
    "UnknownActionError",
    "gate_absent",
    "grasp_masks",
]


class UnknownActionError(ValueError):
    """An action word that is not in the model's vocabulary."""


@dataclass
class AffordancePrediction:
    """Where ``action`` is afforded in the last image given to :meth:`set_image`.

    Attributes:
        action: the action word.
        heatmap: (H, W) float32 in [0, 1] at the input image's resolution: the min-max
            stretched map when ``present``, else that map times ``score`` (its maximum is
            the score, not 1).
        mask: (H, W) bool grasp region: heatmap >= mask threshold, the connected region
            around the heatmap peak; all False when not ``present``.
        score: float in [0, 1], the calibrated probability that the image affords the action
            somewhere (absolute, per action: :meth:`AffordanceModel.infer`).
        peak_xy: (x, y) integer pixel of the heatmap maximum, always set (for debugging); a
            planner uses it only when ``present``.
        present: ``score >= min_score``: the action is afforded here, so there is a grasp
            region and a grasp point.
    """

    action: str
    heatmap: np.ndarray
    mask: np.ndarray
    score: float
    peak_xy: tuple[int, int]
    present: bool = True


def grasp_masks(
    heatmaps: np.ndarray, threshold: float = 0.5, peak_component: bool = True
) -> np.ndarray:
    """The predictor's grasp regions for a batch of heatmaps.

    A pixel joins the region when its heatmap value is ``>= threshold``; with
    ``peak_component`` only the 8-connected region holding the heatmap maximum (the first
    maximum in row-major order) is kept.

    Args:
        heatmaps: (N, H, W) or (H, W) float maps in [0, 1].
        threshold: level in [0, 1].
        peak_component: keep only the region around the peak.

    Returns:
        bool array of the input's shape.
    """
    maps = np.asarray(heatmaps, dtype=np.float32)
    single = maps.ndim == 2
    maps = maps[None] if single else maps
    masks = maps >= threshold
    if peak_component:
        flat_peak = maps.reshape(len(maps), -1).argmax(1)
        for i in np.flatnonzero(masks.reshape(len(masks), -1).any(1)):
            count, labels = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
            if count > 2:
                masks[i] = labels == labels.reshape(-1)[flat_peak[i]]
    return masks[0] if single else masks


def gate_absent(
    heatmaps: np.ndarray, masks: np.ndarray, scores: np.ndarray, min_score: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The absence rule shared by the predictor and evaluation: where ``score < min_score``
    the mask is emptied and the heatmap is scaled by the score (not stretched to 1).

    Args:
        heatmaps: (N, H, W) float min-max maps in [0, 1].
        masks: (N, H, W) bool grasp masks of those maps (:func:`grasp_masks`).
        scores: (N,) presence scores in [0, 1].
        min_score: level in [0, 1].

    Returns:
        (heatmaps, masks, present (N,) bool), new arrays.
    """
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    present = scores >= min_score
    absent = ~present
    masks = np.array(masks, dtype=bool, copy=True)
    masks[absent] = False
    heatmaps = np.array(heatmaps, dtype=np.float32, copy=True)
    heatmaps[absent] *= scores[absent, None, None]
    return heatmaps, masks, present


class AffordancePredictor:
    """Stateful predictor: ``set_image`` runs the frozen backbones once, ``predict`` is cheap.

    Text embeddings of every action are computed once when the model is built, so a new action
    word costs nothing per frame; several actions for one frame share one backbone pass.

    Two backends give the same predictions (heatmaps within 1e-3, same peak and mask):
    ``torch`` runs the model eagerly; ``onnxruntime`` runs the exported backbone and heads
    graphs in ONNX Runtime (:mod:`affordance_core.runtime`: exported on first use into a cache
    keyed by the model's content, TensorRT > CUDA > CPU providers on a CUDA device).

    Args:
        model: a trained :class:`AffordanceModel`.
        device: torch device for inference.
        half: run the backbones and heads under autocast: float16 on CUDA, bfloat16 on CPU
            (bfloat16 only pays on CPUs with native bf16 matrix units, e.g. AVX512-BF16 or
            AMX; ``bench/bench_inference.py --half`` measures it).
        mask_threshold: heatmap level in [0, 1] above which pixels join the grasp region.
        min_score: presence level in [0, 1] (default 0.5, the calibrated probability's even
            odds): below it a prediction is absent (empty mask, heatmap not stretched to 1,
            ``present`` False; :func:`gate_absent`). Can be changed on the instance.
        peak_component: keep only the connected region of the mask around the peak.
        compile: wrap the backbone pass in ``torch.compile`` (the first frame then takes
            seconds to minutes of compilation; later frames of the same size reuse it);
            torch backend only.
        backend: ``torch`` or ``onnxruntime`` (see above). With ``onnxruntime``, ``half``
            makes TensorRT build float16 engines and is ignored by the CUDA and CPU
            providers; the torch model is not moved (only its vocabulary is used).
        onnx_cache_dir: folder of the ONNX cache (default
            :func:`affordance_core.runtime.default_cache_dir`).
        onnx_variant: ``fp32``, or ``int8`` (the backbone graph dynamically quantized by ONNX
            Runtime: faster on CPUs with int8 dot-product instructions (VNNI), slower than
            ``fp32`` on one without; speed and accuracy in docs/benchmarks.md).
        onnx_providers: ONNX Runtime execution provider names to use instead of the
            automatic choice (e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``).

    Raises:
        ValueError: an out-of-range ``mask_threshold`` or ``min_score``, an unknown ``backend`` or
            ``onnx_variant``, or ``compile`` with the onnxruntime backend.
        RuntimeError: onnxruntime backend without the onnx/onnxruntime packages, or a
            failed export.
    """

    def __init__(
        self,
        model: AffordanceModel,
        device: str | torch.device = "cpu",
        half: bool = False,
        mask_threshold: float = 0.5,
        peak_component: bool = True,
        compile: bool = False,
        backend: str = "torch",
        onnx_cache_dir: str | os.PathLike | None = None,
        onnx_variant: str = "fp32",
        onnx_providers: Sequence[str] | None = None,
        min_score: float = 0.5,
    ) -> None:
        from .runtime import BACKENDS, VARIANTS, OnnxRuntimeEngine

        if not 0.0 <= mask_threshold <= 1.0:
            raise ValueError(f"mask_threshold must be in [0, 1], got {mask_threshold}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if onnx_variant not in VARIANTS:
            raise ValueError(
                f"unknown onnx_variant {onnx_variant!r}; choose from {', '.join(VARIANTS)}"
            )
        if compile and backend != "torch":
            raise ValueError(
                "compile=True applies to the torch backend only; the onnxruntime "
                "backend runs the exported graph (drop compile)"
            )
        self.backend = backend
        self.device = torch.device(device)
        self.half = bool(half)
        self.autocast_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.mask_threshold = float(mask_threshold)
        self.min_score = float(min_score)
        self.peak_component = peak_component
        self.compiled = bool(compile)
        self._engine: OnnxRuntimeEngine | None = None
        if backend == "onnxruntime":
            self.model = model.eval()
            self._engine = OnnxRuntimeEngine(
                model,
                self.device,
                half=half,
                cache_dir=onnx_cache_dir,
                variant=onnx_variant,
                providers=onnx_providers,
            )
            self._tensor_device = torch.device("cpu")
        else:
            self.model = model.to(self.device).eval()
            self._tensor_device = self.device
        self._extract = torch.compile(model.extract, dynamic=False) if compile else model.extract
        self._features: Features | tuple[np.ndarray, ...] | None = None
        self._size: tuple[int, int] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        half: bool = False,
        weights_dir: str | os.PathLike | None = None,
        mask_threshold: float = 0.5,
        allow_download: bool = False,
        compile: bool = False,
        backend: str = "torch",
        onnx_cache_dir: str | os.PathLike | None = None,
        onnx_variant: str = "fp32",
        min_score: float = 0.5,
        **overrides,
    ) -> AffordancePredictor:
        """Load ``RUN_DIR/model.pt`` (see :func:`affordance_core.checkpoint.load_model`).

        ``backend``, ``onnx_cache_dir``, ``onnx_variant`` and ``min_score`` are as in the
        constructor; the
        ONNX cache key covers this checkpoint's heads and the backbones loaded with it.
        """
        model = load_model(
            path, device="cpu", weights_dir=weights_dir, allow_download=allow_download, **overrides
        )
        return cls(
            model,
            device,
            half,
            mask_threshold,
            compile=compile,
            backend=backend,
            onnx_cache_dir=onnx_cache_dir,
            onnx_variant=onnx_variant,
            min_score=min_score,
        )

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime execution providers in use, best first (empty for the torch backend)."""
        return [] if self._engine is None else self._engine.providers

    def to(self, device: str | torch.device) -> AffordancePredictor:
        """Move the model to ``device`` and drop the cached image features (frees them there).

        Used by the ROS lifecycle node to release GPU memory on deactivate (``to("cpu")``) and
        re-acquire it on activate. Returns ``self``.
        """
        self._features = None
        self._size = None
        self.device = torch.device(device)
        self.autocast_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.model.to(self.device)
        return self

    @property
    def vocabulary(self) -> list[str]:
        return list(self.model.vocabulary)

    def class_ids(self, actions: str | Sequence[str]) -> list[int]:
        """Validate action words and map them to class ids."""
        if isinstance(actions, str):
            actions = [actions]
        if not actions:
            raise UnknownActionError(
                "no action word given; known actions: " + ", ".join(self.vocabulary)
            )
        ids = []
        for action in actions:
            if action not in self.model.vocabulary:
                raise UnknownActionError(
                    f"unknown action {action!r}; known actions: {', '.join(self.vocabulary)}"
                )
            ids.append(self.model.vocabulary.index(action))
        return ids

    def _autocast(self):
        if not self.half:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def image_tensor(self, image: np.ndarray) -> Tensor:
        """Validate an HxWx3 uint8 RGB frame and resize it to the network input (1,3,S,S)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise ValueError(f"expected an HxWx3 RGB uint8 image, got shape {shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected dtype uint8, got {image.dtype}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError("the image is empty (zero width or height)")
        size = self.model.image_size
        resized = cv2.resize(
            image,
            (size, size),
            interpolation=cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR,
        )
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).to(self._tensor_device)
        return tensor.permute(2, 0, 1)[None].float().div_(255.0)

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Embed one RGB frame (HxWx3 uint8); following :meth:`predict` calls reuse it."""
        tensor = self.image_tensor(image)
        if self._engine is not None:
            self._features = self._engine.extract(tensor)
        else:
            with self._autocast():
                self._features = self._extract(tensor)
        self._size = (int(image.shape[0]), int(image.shape[1]))

    @torch.inference_mode()
    def predict_torch(self, actions: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """Heatmaps and scores on the device for the current image.

        Returns:
            heatmaps (A, H, W) float32 in [0, 1] (min-max stretched, before the absence rule
            of :meth:`predict`) and scores (A,) in [0, 1], on the predictor's device (the CPU
            with the onnxruntime backend).
        """
        if self._features is None or self._size is None:
            raise RuntimeError("call set_image() before predict()")
        ids = self.class_ids(actions)
        if self._engine is not None:
            maps, scores = self._engine.maps_and_scores(self._features, ids)  # (1, A, h, w)
        else:
            ids_t = torch.tensor(ids, device=self.device)
            with self._autocast():
                maps, scores = self.model.infer(self._features, ids_t[None])  # (1, A, h, w)
        maps = F.interpolate(maps.float(), size=self._size, mode="bilinear", align_corners=False)[
            0
        ]
        return minmax(maps), scores[0].float()

    def predict(self, actions: str | Sequence[str]) -> list[AffordancePrediction]:
        """Predictions for one or several action words on the current image."""
        names = [actions] if isinstance(actions, str) else list(actions)
        heatmaps, scores = self.predict_torch(names)
        heatmaps_np = heatmaps.cpu().numpy().astype(np.float32, copy=False)
        scores_np = scores.cpu().numpy()
        masks = grasp_masks(heatmaps_np, self.mask_threshold, self.peak_component)
        gated, masks, present = gate_absent(heatmaps_np, masks, scores_np, self.min_score)
        out = []
        for action, stretched, heatmap, mask, score, here in zip(
            names, heatmaps_np, gated, masks, scores_np, present, strict=True
        ):
            y, x = np.unravel_index(int(np.argmax(stretched)), stretched.shape)
            out.append(
                AffordancePrediction(
                    action, heatmap, mask, float(score), (int(x), int(y)), bool(here)
                )
            )
        return out

    def __call__(
        self, image: np.ndarray, actions: str | Sequence[str]
    ) -> list[AffordancePrediction]:
        """``set_image(image)`` then ``predict(actions)``."""
        self.set_image(image)
        return self.predict(actions)
