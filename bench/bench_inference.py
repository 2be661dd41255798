"""Inference cost per frame: the predictor's backends side by side, and eager overheads.

Measured in one run on the same frames, so the ratios hold even on a noisy machine:

* ``backends``: for each inference backend, the median frame time (``set_image`` +
  ``predict`` of one action) and its ratio to eager PyTorch float32 (``torch``), with the
  backends taking turns frame by frame so drift in machine load hits all alike; plus each
  backend's largest heatmap difference from eager and whether the peaks agree. Defaults: on
  CPU ``torch``, ``onnxruntime`` (fp32) and ``onnxruntime-int8``; on CUDA ``torch``,
  ``torch-half`` (float16 autocast), ``torch-compile``, ``onnxruntime-cuda``,
  ``onnxruntime-tensorrt`` and ``onnxruntime-tensorrt-fp16`` (the TensorRT rows need the
  onnxruntime-gpu package with TensorRT; a backend that cannot start is reported with its
  error and skipped). Setup (export, TensorRT engine build, compilation) is excluded and
  reported as ``setup_s``.
* ``backbones_ms``: DINO forward + CLIP dense image forward in eager PyTorch (the
  irreducible cost of the torch path); ``predictor_ms`` and
  ``ratio_predictor_over_backbones`` (target <= 1.05), alternating frame by frame;
* frames per second with 1, 4 and 8 action words per frame (one backbone pass each), eager.

Backbone weights are random (inference cost does not depend on their values); the paper tier
has the real architectures (DINO ViT-S/16, CLIP ViT-B/16 at 224 px).

Usage: python bench/bench_inference.py [--model paper|tiny] [--frames N] [--device cpu|cuda]
       [--backends torch,onnxruntime,...] [--half] [--compile] [--rounds R]
Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from affordance_core import create_model
from affordance_core.predictor import AffordancePredictor

VOCAB = [
    "hold",
    "cut_with",
    "pour",
    "sit_on",
    "ride",
    "drink_with",
    "hit",
    "swing",
    "type_on",
    "open",
]
_GPU_EPS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
_TRT_EPS = ["TensorrtExecutionProvider", *_GPU_EPS]
# name -> AffordancePredictor keyword arguments (device and cache are added).
BACKEND_OPTIONS: dict[str, dict[str, Any]] = {
    "torch": {},
    "torch-half": {"half": True},
    "torch-compile": {"compile": True},
    "onnxruntime": {"backend": "onnxruntime"},
    "onnxruntime-int8": {"backend": "onnxruntime", "onnx_variant": "int8"},
    "onnxruntime-cuda": {"backend": "onnxruntime", "onnx_providers": _GPU_EPS},
    "onnxruntime-tensorrt": {"backend": "onnxruntime", "onnx_providers": _TRT_EPS},
    "onnxruntime-tensorrt-fp16": {
        "backend": "onnxruntime",
        "onnx_providers": _TRT_EPS,
        "half": True,
    },
}
DEFAULT_CPU = "torch,onnxruntime,onnxruntime-int8"
DEFAULT_CUDA = (
    "torch,torch-half,torch-compile,onnxruntime-cuda,onnxruntime-tensorrt,"
    "onnxruntime-tensorrt-fp16"
)


def _timed(fn: Callable[[Any], None], frames: list, sync: Callable[[], None]) -> float:
    start = time.perf_counter()
    for frame in frames:
        fn(frame)
    sync()
    return (time.perf_counter() - start) / len(frames) * 1000.0


def compare_backends(
    model, names: list[str], frames: list[np.ndarray], device: str, rounds: int, cache_dir: str
) -> dict[str, Any]:
    """Median frame time of each backend (one action), as a ratio to ``torch``.

    Returns ``{name: {"frame_ms", "ratio_to_eager", "fps", "setup_s", "max_heatmap_diff",
    "peaks_agree", "providers"}}`` or ``{name: {"error": ...}}``; ``torch`` is always built
    first as the reference.
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    action = VOCAB[:1]
    predictors: dict[str, AffordancePredictor] = {}
    out: dict[str, Any] = {}
    for name in ["torch", *[n for n in names if n != "torch"]]:
        if name not in BACKEND_OPTIONS:
            raise SystemExit(f"unknown backend {name!r}; choose from {', '.join(BACKEND_OPTIONS)}")
        options = dict(BACKEND_OPTIONS[name])
        if options.get("backend") == "onnxruntime":
            options["onnx_cache_dir"] = cache_dir
        start = time.perf_counter()
        try:
            predictor = AffordancePredictor(model, device=device, **options)
            for frame in frames[:2]:  # warm-up: compilation, engine builds
                predictor(frame, action)
            sync()
        except Exception as exc:  # noqa: BLE001 - report and go on with the other backends
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            continue
        predictors[name] = predictor
        out[name] = {
            "setup_s": round(time.perf_counter() - start, 1),
            "providers": predictor.providers,
        }
    reference = {i: predictors["torch"](f, action)[0] for i, f in enumerate(frames)}
    for name, predictor in predictors.items():
        diffs, agree = [], []
        for i, frame in enumerate(frames):
            got = predictor(frame, action)[0]
            diffs.append(float(np.abs(got.heatmap - reference[i].heatmap).max()))
            agree.append(got.peak_xy == reference[i].peak_xy)
        out[name].update(
            max_heatmap_diff=float(f"{max(diffs):.3g}"), peaks_agree=f"{sum(agree)}/{len(agree)}"
        )
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for frame in frames:
            for name, predictor in predictors.items():
                times[name].append(_timed(lambda f, p=predictor: p(f, action), [frame], sync))
    eager = float(np.median(times["torch"]))
    for name, samples in times.items():
        median = float(np.median(samples))
        out[name].update(
            frame_ms=round(median, 2),
            ratio_to_eager=round(median / eager, 3),
            fps=round(1000.0 / median, 2),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="paper", choices=["paper", "tiny"])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument(
        "--rounds", type=int, default=2, help="passes over the frames per measurement (default 2)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--backends",
        default=None,
        help=f"comma-separated, from {', '.join(BACKEND_OPTIONS)}; "
        f"default {DEFAULT_CPU} on CPU, {DEFAULT_CUDA} on CUDA; "
        "'none' skips the comparison",
    )
    parser.add_argument(
        "--half",
        action="store_true",
        help="eager rows under autocast: float16 on CUDA, bfloat16 on CPU",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="eager rows: torch.compile the backbone pass (compilation excluded)",
    )
    parser.add_argument(
        "--onnx-cache",
        default=None,
        help="ONNX cache folder (default: a temporary one, so the export is "
        "part of each run's setup_s)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model, vocabulary=VOCAB, pretrained=False).to(args.device)
    predictor = AffordancePredictor(
        model, device=args.device, half=args.half, compile=args.compile
    )
    extract = predictor._extract
    rng = np.random.default_rng(0)
    frames = [(rng.random((480, 640, 3)) * 255).astype(np.uint8) for _ in range(args.frames)]
    tensors = [predictor.image_tensor(f) for f in frames]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def backbones(t: torch.Tensor) -> None:
        with torch.inference_mode(), predictor._autocast():
            extract(t)

    def predict(actions):
        def run(frame: np.ndarray) -> None:
            predictor.set_image(frame)
            predictor.predict(actions)

        return run

    backbones(tensors[0])  # warm-up
    predict(VOCAB[:1])(frames[0])
    results: dict[str, Any] = {}
    # Alternate the two measurements frame by frame, so drift in machine load hits both alike,
    # and report medians (a noisy neighbour shows up as outliers, not as a shifted mean).
    bb, pr = [], []
    for _ in range(args.rounds):
        for frame, tensor in zip(frames, tensors):
            bb.append(_timed(backbones, [tensor], sync))
            pr.append(_timed(predict(VOCAB[:1]), [frame], sync))
    results["backbones_ms"] = round(float(np.median(bb)), 2)
    results["predictor_ms"] = round(float(np.median(pr)), 2)
    results["ratio_predictor_over_backbones"] = round(float(np.median(pr) / np.median(bb)), 3)
    for n in (1, 4, 8):
        ms = _timed(predict(VOCAB[:n]), frames, sync)
        results[f"fps_{n}_actions"] = round(1000.0 / ms, 2)
    predictor = None  # frees the torch predictor before the ONNX backends load

    spec = args.backends or (DEFAULT_CUDA if args.device.startswith("cuda") else DEFAULT_CPU)
    names = [] if spec == "none" else [n.strip() for n in spec.split(",") if n.strip()]
    if names:
        with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
            results["backends"] = compare_backends(
                model, names, frames, args.device, args.rounds, args.onnx_cache or tmp
            )
    results.update(
        model=args.model,
        device=args.device,
        half=args.half,
        compile=args.compile,
        frames=args.frames,
        rounds=args.rounds,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
