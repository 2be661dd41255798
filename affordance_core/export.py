"""TorchScript and ONNX export of the inference graph (backbones + heads + calibration).

The exported graph maps a batch of images and one action id per image to the calibrated
affordance maps, exactly as :meth:`AffordanceModel.predict_maps`:

* input ``images``: (N, 3, S, S) float32 RGB in [0, 1] (not normalised; the graph applies
  each backbone's own mean/std);
* input ``class_ids``: (N,) int64 vocabulary indices;
* output ``maps``: (N, h, w) float32 raw-scale maps (h = w = 14 in both tiers).

The CLIP text embeddings of the vocabulary are constants of the graph, so neither the text
tower nor the tokenizer is exported; the vocabulary order is the one of the checkpoint.

Command line (prints one JSON line ``{"file", "format", "size_bytes", "max_abs_diff",
"map_range", "batch_sizes"}``)::

    python -m affordance_core.export --checkpoint RUN_DIR/model.pt --format onnx \
        --out model.onnx [--weights-dir DIR] [--opset 17] [--static-batch]

ONNX export uses the TorchScript-based exporter (``dynamo=False``), which needs only the
``onnx`` package; the dynamo exporter would also need ``onnxscript``. It runs with the fast
path of ``nn.MultiheadAttention`` switched off (:func:`mha_fastpath_disabled`): under tracing
in eval mode that path calls ``aten::_native_multi_head_attention``, which has no ONNX
symbolic (the paper tier's open_clip ViT-B/16 takes it); the regular path computes the same
attention from exportable ops.

The predictor's onnxruntime backend (:mod:`affordance_core.runtime`) exports its own pair of
graphs (backbones, then heads) through :func:`export_onnx_module`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .model import AffordanceModel

__all__ = [
    "FORMATS",
    "InferenceGraph",
    "compare_with_eager",
    "export_onnx",
    "export_onnx_module",
    "export_torchscript",
    "main",
    "mha_fastpath_disabled",
]

FORMATS = ("onnx", "torchscript")
INPUT_NAMES = ["images", "class_ids"]
OUTPUT_NAMES = ["maps"]


class InferenceGraph(nn.Module):
    """Deployable forward of a trained model: images + class ids -> calibrated maps.

    The wrapper itself is created in eval mode, so exporters that restore the "original"
    training mode after tracing leave the heads' BatchNorm layers in eval mode.

    Args:
        model: a trained :class:`AffordanceModel`; it is put in eval mode.
    """

    def __init__(self, model: AffordanceModel) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """Args:
            images: (N, 3, S, S) float32 RGB in [0, 1].
            class_ids: (N,) int64 action ids in [0, C).

        Returns:
            (N, h, w) float32 maps, identical to ``model.predict_maps(images, class_ids)``.
        """
        return self.model.maps_from_features(self.model.extract(images), class_ids)


def _example_inputs(
    model: AffordanceModel, batch: int = 2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = model.image_size
    images = torch.rand(batch, 3, size, size, generator=generator)
    class_ids = torch.randint(0, model.num_classes, (batch,), generator=generator)
    device = next(model.parameters()).device
    return images.to(device), class_ids.to(device)


def _quiet_export_warnings():
    context = warnings.catch_warnings()
    context.__enter__()
    for category in (torch.jit.TracerWarning, DeprecationWarning, UserWarning, FutureWarning):
        warnings.simplefilter("ignore", category)
    return context


@contextlib.contextmanager
def mha_fastpath_disabled() -> Iterator[None]:
    """Switch off ``nn.MultiheadAttention``'s fused inference fast path for the block.

    The fast path (``aten::_native_multi_head_attention``) cannot be exported to ONNX; the
    regular path computes the same attention. The previous setting is restored on exit.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def export_onnx_module(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    path: str | os.PathLike,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    opset: int = 17,
) -> Path:
    """Export one eval-mode module with the TorchScript-based ONNX exporter.

    Runs under :func:`mha_fastpath_disabled` and ``torch.no_grad``, with the exporter's
    tracer warnings silenced.

    Args:
        module: the module to export (CPU, float32, eval mode).
        inputs: example inputs, positional.
        path: output ``.onnx`` file; parent folders are created.
        input_names / output_names: graph input and output names, in order.
        dynamic_axes: symbolic axes per input/output name, as ``torch.onnx.export`` takes.
        opset: ONNX opset version.

    Returns:
        The written path.

    Raises:
        RuntimeError: if the ``onnx`` package is missing or the exporter fails.
    """
    try:
        import onnx  # noqa: F401 - the TorchScript-based exporter serialises through it
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx package: pip install onnx") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    context = _quiet_export_warnings()
    try:
        with torch.no_grad(), mha_fastpath_disabled():
            torch.onnx.export(
                module,
                inputs,
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    except Exception as exc:
        raise RuntimeError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        context.__exit__(None, None, None)
    return path


def export_torchscript(
    model: AffordanceModel, path: str | os.PathLike, example_batch: int = 2
) -> Path:
    """Trace the inference graph with ``torch.jit.trace`` and save it.

    The traced graph keeps the batch dimension dynamic; the image size is fixed to the
    model's S. Load it with ``torch.jit.load(path)`` and call it as ``graph(images, ids)``.

    Args:
        model: the trained model (CPU or CUDA; the trace runs on its device).
        path: output file (``.pt``); parent folders are created.
        example_batch: batch size of the tracing inputs (>= 2 avoids batch-1 specialisation).

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = InferenceGraph(model)
    inputs = _example_inputs(model, example_batch)
    context = _quiet_export_warnings()
    try:
        with torch.no_grad():
            traced = torch.jit.trace(graph, inputs, check_trace=False)
    finally:
        context.__exit__(None, None, None)
    traced.save(str(path))
    return path


def export_onnx(
    model: AffordanceModel,
    path: str | os.PathLike,
    opset: int = 17,
    dynamic_batch: bool = True,
    example_batch: int = 2,
) -> Path:
    """Export the inference graph to ONNX (TorchScript-based exporter, ``dynamo=False``).

    Args:
        model: the trained model; exported from CPU float32 weights.
        path: output ``.onnx`` file; parent folders are created.
        opset: ONNX opset version (>= 14 for scaled dot-product attention; 17 tested).
        dynamic_batch: make the batch axis of every input and the output symbolic (``N``);
            False fixes it to ``example_batch``.
        example_batch: batch size of the tracing inputs.

    Returns:
        The written path.

    Raises:
        RuntimeError: if the ``onnx`` package is missing or the exporter fails.
    """
    graph = InferenceGraph(model.float().cpu())
    inputs = _example_inputs(model, example_batch)
    axes = {"images": {0: "N"}, "class_ids": {0: "N"}, "maps": {0: "N"}} if dynamic_batch else None
    return export_onnx_module(graph, inputs, path, INPUT_NAMES, OUTPUT_NAMES, axes, opset)


def _runner(fmt: str, path: Path):
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError(
                "checking an ONNX file needs onnxruntime: pip install onnxruntime"
            ) from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(images: Tensor, class_ids: Tensor) -> Tensor:
            out = session.run(
                OUTPUT_NAMES,
                {"images": images.cpu().numpy(), "class_ids": class_ids.cpu().numpy()},
            )[0]
            return torch.from_numpy(out)

        return run
    if fmt == "torchscript":
        graph = torch.jit.load(str(path), map_location="cpu")

        def run(images: Tensor, class_ids: Tensor) -> Tensor:
            with torch.no_grad():
                return graph(images, class_ids).cpu()

        return run
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def compare_with_eager(
    model: AffordanceModel,
    path: str | os.PathLike,
    fmt: str,
    batch_sizes: Sequence[int] = (1, 2),
    seed: int = 1,
) -> dict[str, float]:
    """Run an exported file (onnxruntime CPU / TorchScript) and eager PyTorch on random inputs.

    Args:
        model: the model that was exported (on CPU).
        path: the exported file.
        fmt: ``onnx`` or ``torchscript``.
        batch_sizes: batches to compare; each gets fresh random images and class ids.

    Returns:
        ``max_abs_diff`` (largest absolute difference over all batches) and ``map_range``
        (largest max - min of the eager maps), both floats.

    Raises:
        ValueError: on an unknown ``fmt``.
    """
    run = _runner(fmt, Path(path))
    model = model.eval()
    worst, span = 0.0, 0.0
    for offset, batch in enumerate(batch_sizes):
        images, class_ids = _example_inputs(model, batch, seed + offset)
        images, class_ids = images.cpu(), class_ids.cpu()
        expected = model.predict_maps(images, class_ids)
        got = run(images, class_ids)
        if got.shape != expected.shape:
            raise RuntimeError(
                f"exported graph returned shape {tuple(got.shape)} for batch "
                f"{batch}; eager gives {tuple(expected.shape)}"
            )
        worst = max(worst, float((got - expected).abs().max()))
        span = max(span, float(expected.max() - expected.min()))
    return {"max_abs_diff": worst, "map_range": span}


def export(
    model: AffordanceModel,
    path: str | os.PathLike,
    fmt: str,
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Dispatch to :func:`export_onnx` or :func:`export_torchscript` by format name.

    Raises:
        ValueError: on an unknown ``fmt`` (the message lists the formats).
    """
    if fmt == "onnx":
        return export_onnx(model, path, opset=opset, dynamic_batch=dynamic_batch)
    if fmt == "torchscript":
        return export_torchscript(model, path)
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m affordance_core.export",
        description="Export a trained affordance model (backbones + heads + calibration) to "
        "ONNX or TorchScript and check it against eager PyTorch.",
    )
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/model.pt")
    parser.add_argument("--format", required=True, dest="fmt", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--weights-dir", help="directory with the backbone weights")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--static-batch",
        action="store_true",
        help="ONNX: fix the batch size to 2 instead of a symbolic N",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 with a one-line error on failure)."""
    args = _build_parser().parse_args(argv)
    try:
        if args.fmt not in FORMATS:
            raise ValueError(
                f"unknown export format {args.fmt!r}; choose from {', '.join(FORMATS)}"
            )
        from .checkpoint import load_model

        model = load_model(args.checkpoint, device="cpu", weights_dir=args.weights_dir)
        path = export(
            model, args.out, args.fmt, opset=args.opset, dynamic_batch=not args.static_batch
        )
        batches = (2,) if args.static_batch and args.fmt == "onnx" else (1, 2)
        check = compare_with_eager(model, path, args.fmt, batch_sizes=batches)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        message = " ".join(str(exc).split())
        print(f"affordance-export: error: {message}", file=sys.stderr, flush=True)
        return 1
    print(
        json.dumps(
            {
                "file": str(path),
                "format": args.fmt,
                "size_bytes": path.stat().st_size,
                **check,
                "batch_sizes": list(batches),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
