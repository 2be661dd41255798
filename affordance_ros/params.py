"""The node's parameters: one table of names, types, defaults, ranges and which are live.

Pure Python (no rclpy): the node turns each :class:`ParamSpec` into a declared parameter with a
``ParameterDescriptor``; the README's parameter table is written from the same table.
Validation that needs no ROS (choices, device strings, action words) lives here so it can be
tested without a graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

MODELS = ("paper", "tiny")
IMAGE_QOS = ("sensor_data", "reliable")
TRANSPORTS = ("raw", "compressed")
_DEVICE_RE = re.compile(r"^(cpu|cuda|mps|xpu)(:\d+)?$")


class StartupError(RuntimeError):
    """The node cannot start: a parameter is invalid or the model cannot be loaded."""


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter.

    Attributes:
        name: Parameter name (part of the node's interface; keep stable).
        default: Default value; its Python type is the parameter's ROS type.
        description: One sentence for ``ros2 param describe``.
        live: True when a change at runtime takes effect on the next frame.
        low, high: Inclusive numeric range, or None.
        choices: Allowed string values, or empty.
    """

    name: str
    default: Any
    description: str
    live: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    @property
    def type_name(self) -> str:
        """ROS parameter type name of the default (bool, integer, double, string)."""
        return ros_type_name(self.default)


def ros_type_name(value: Any) -> str:
    """ROS parameter type name of a Python value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "not set" if value is None else type(value).__name__


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "model",
        "tiny",
        "Model tier: 'paper' (DINO ViT-S/16 + CLIP ViT-B/16) or 'tiny'.",
        choices=MODELS,
    ),
    ParamSpec("checkpoint", "", "Trained model file written by affordance-train (required)."),
    ParamSpec(
        "weights_dir",
        "",
        "Directory with local backbone weights; empty = the tier's default location.",
    ),
    ParamSpec("device", "cpu", "Torch device: cpu, cuda, cuda:N (checked before loading)."),
    ParamSpec("half", False, "Autocast inference: float16 on CUDA, bfloat16 on CPU."),
    ParamSpec(
        "compile",
        False,
        "torch.compile the backbone pass (slow first frame, faster after on GPU).",
    ),
    ParamSpec(
        "cpu_threads",
        0,
        "Torch intra-op CPU threads; 0 = torch's default (all cores).",
        low=0,
        high=1024,
    ),
    ParamSpec(
        "backend",
        "torch",
        "Inference backend: 'torch' (eager) or 'onnxruntime' (the exported graph; "
        "TensorRT > CUDA > CPU provider; exported on first use into "
        "$AFFORDANCE_ONNX_CACHE or ~/.cache/affordance_ros/onnx).",
        choices=("torch", "onnxruntime"),
    ),
    ParamSpec(
        "onnx_variant",
        "fp32",
        "onnxruntime backend: 'fp32', or 'int8' (dynamically quantized backbones; "
        "faster on CPUs with VNNI, slower without; docs/benchmarks.md has its accuracy).",
        choices=("fp32", "int8"),
    ),
    ParamSpec(
        "transport",
        "raw",
        "Image input: 'raw' subscribes 'image', 'compressed' subscribes "
        "'image/compressed' (JPEG/PNG). Only the chosen one is subscribed.",
        choices=TRANSPORTS,
    ),
    ParamSpec(
        "image_qos",
        "sensor_data",
        "Image subscription QoS: 'sensor_data' (best effort, depth 1) or 'reliable'.",
        choices=IMAGE_QOS,
    ),
    ParamSpec(
        "use_depth",
        False,
        "Subscribe 'depth' and 'camera_info' (synchronised with the image) and fill "
        "the 3D grasp point.",
    ),
    ParamSpec(
        "diagnostics_period",
        1.0,
        "Seconds between diagnostics messages (one window).",
        low=0.1,
        high=60.0,
    ),
    ParamSpec(
        "mask_threshold",
        0.5,
        "Heatmap level in [0, 1] above which a pixel joins the grasp mask.",
        live=True,
        low=0.0,
        high=1.0,
    ),
    ParamSpec(
        "min_score",
        0.5,
        "Presence level: below this score (the calibrated probability that the image affords "
        "the action) a result has an empty mask, an unstretched heatmap and no grasp point.",
        live=True,
        low=0.0,
        high=1.0,
    ),
    ParamSpec(
        "default_action",
        "",
        "Action word(s), comma-separated, used until an action request arrives; "
        "setting it at runtime replaces the current actions.",
        live=True,
    ),
    ParamSpec(
        "max_rate",
        0.0,
        "Maximum inference rate in Hz; 0 = as fast as frames allow.",
        live=True,
        low=0.0,
        high=1000.0,
    ),
    ParamSpec(
        "publish_overlay",
        True,
        "Publish affordance/overlay (rgb8 heatmap blended on the image).",
        live=True,
    ),
    ParamSpec(
        "results_include_images",
        True,
        "Carry heatmap and mask images inside affordance/result(s); false sends "
        "empty images there (heatmap and mask stay on their own topics).",
        live=True,
    ),
    ParamSpec(
        "max_image_side",
        2048,
        "Frames whose longer side exceeds this many pixels are downscaled to it.",
        live=True,
        low=16,
        high=16384,
    ),
    ParamSpec(
        "pad_to_square",
        False,
        "Pad non-square frames to a square before inference instead of stretching "
        "them; outputs keep the frame's size.",
        live=True,
    ),
    ParamSpec(
        "depth_window",
        5,
        "Side in pixels of the window whose median depth gives the grasp point.",
        live=True,
        low=1,
        high=51,
    ),
    ParamSpec(
        "depth_scale",
        0.001,
        "Metres per unit of a 16UC1 depth image (0.001 = millimetres); 32FC1 depth is in metres.",
        live=True,
        low=1e-6,
        high=1.0,
    ),
    ParamSpec(
        "sync_slop",
        0.05,
        "Largest stamp difference in seconds between the image, its depth image and "
        "its camera_info (approximate-time synchronisation).",
        live=True,
        low=0.0,
        high=10.0,
    ),
    ParamSpec(
        "max_depth_age",
        1.0,
        "Depth older than this many seconds (node clock minus depth stamp) gives no "
        "grasp point; 0 = no limit.",
        live=True,
        low=0.0,
        high=3600.0,
    ),
    ParamSpec(
        "target_frame",
        "",
        "If set, the grasp point is transformed into this frame with tf2; the result "
        "says when no transform was available.",
        live=True,
    ),
    ParamSpec(
        "stale_input_warn",
        2.0,
        "Seconds without an image before diagnostics report WARN.",
        live=True,
        low=0.1,
        high=3600.0,
    ),
    ParamSpec(
        "stale_input_error",
        10.0,
        "Seconds without an image before diagnostics report ERROR.",
        live=True,
        low=0.1,
        high=3600.0,
    ),
    ParamSpec(
        "log_throttle",
        5.0,
        "Seconds between repeated log lines of one bad-input kind.",
        live=True,
        low=0.0,
        high=3600.0,
    ),
    ParamSpec(
        "action_rerun_delay",
        0.25,
        "After an action change, re-run the newest frame if no new image arrives "
        "within this many seconds.",
        live=True,
        low=0.0,
        high=60.0,
    ),
    ParamSpec(
        "max_frame_age",
        2.0,
        "The newest frame is re-run after an action change only if it was received "
        "less than this many seconds ago.",
        live=True,
        low=0.0,
        high=3600.0,
    ),
)
SPEC_BY_NAME = {s.name: s for s in SPECS}


@dataclass(frozen=True)
class NodeSettings:
    """Validated node parameters (see :data:`SPECS` for their meaning)."""

    model: str
    checkpoint: str
    weights_dir: str
    device: str
    half: bool
    compile: bool
    cpu_threads: int
    backend: str
    onnx_variant: str
    transport: str
    image_qos: str
    use_depth: bool
    diagnostics_period: float
    mask_threshold: float
    min_score: float
    default_action: str
    max_rate: float
    publish_overlay: bool
    results_include_images: bool
    max_image_side: int
    pad_to_square: bool
    depth_window: int
    depth_scale: float
    sync_slop: float
    max_depth_age: float
    target_frame: str
    stale_input_warn: float
    stale_input_error: float
    log_throttle: float
    action_rerun_delay: float
    max_frame_age: float


assert {f.name for f in fields(NodeSettings)} == set(SPEC_BY_NAME), "SPECS and NodeSettings differ"


def check_value(spec: ParamSpec, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``spec`` (type, range, choices), or None.

    An integer is not accepted for a double parameter: ROS 2 parameters are typed, and a
    silently converted type would be rejected again on the next ``ros2 param set``.
    """
    want = spec.type_name
    got = ros_type_name(value)
    if got != want:
        hint = ""
        if want == "double" and got == "integer":
            hint = f" (write {value}.0)"
        elif want == "string":
            hint = " (quote it in YAML)"
        return f"parameter '{spec.name}' must be a {want}, got {got} {value!r}{hint}"
    if spec.low is not None and spec.high is not None and not spec.low <= value <= spec.high:
        return f"parameter '{spec.name}' = {value} is outside [{spec.low}, {spec.high}]"
    if spec.choices and value not in spec.choices:
        return f"parameter '{spec.name}' = '{value}'; use one of: {', '.join(spec.choices)}"
    return None


def check_device(device: str) -> str | None:
    """Why ``device`` cannot be used (syntax, CUDA missing, index too large), or None.

    Imports torch only for ``cuda`` devices.
    """
    if not _DEVICE_RE.match(device):
        return f"parameter 'device' = '{device}' is not a torch device; use cpu, cuda or cuda:N"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return (
                f"parameter 'device' = '{device}' but CUDA is not available to torch "
                f"{torch.__version__}; use device:=cpu or install a CUDA build of torch"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            return (
                f"parameter 'device' = '{device}' but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    return None


def parse_actions(text: str) -> list[str]:
    """Split an action request (``"hold"`` or ``"hold, cut_with"``) into unique words, in order."""
    words = [w.strip() for w in text.split(",")]
    return list(dict.fromkeys(w for w in words if w))


def unknown_actions(words: list[str], vocabulary: list[str]) -> list[str]:
    """The words of ``words`` that the vocabulary lacks."""
    return [w for w in words if w not in vocabulary]
