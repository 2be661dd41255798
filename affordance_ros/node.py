"""ROS 2 node: camera images and action words in, affordance heatmaps and grasp regions out.

A thin adapter over :class:`affordance_core.predictor.AffordancePredictor`. Image callbacks
only store the newest frame (latest-frame-only: an unprocessed frame is replaced and counted
as dropped, frames are never queued); a worker thread off the executor converts, runs the
predictor and publishes. Bad input is logged once per kind per ``log_throttle`` seconds and
produces no output for that frame.

Topics (relative; remap them):
    in:  ``image`` (sensor_msgs/Image), ``image/compressed`` (sensor_msgs/CompressedImage),
         ``action`` (std_msgs/String, one word or a comma-separated list),
         ``depth`` (16UC1 mm or 32FC1 m) and ``camera_info`` when ``use_depth`` is true.
    out: ``affordance/heatmap`` (32FC1 in [0, 1]) and ``affordance/mask`` (mono8 0/255) for
         the first requested action, ``affordance/result`` (one AffordanceResult per action),
         ``affordance/results`` (AffordanceResultArray per frame), ``affordance/overlay``
         (rgb8, first action) and ``diagnostics``. Every output copies the image header.

Run: ``ros2 run affordance_ros affordance_node --ros-args -p checkpoint:=heads.pt`` or
``python -m affordance_ros.node --ros-args ...``.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from affordance_ros.conversions import (
    ImageConversionError,
    array_to_image,
    compressed_to_rgb,
    depth_to_metres,
    heatmap_overlay,
    image_to_rgb,
)
from affordance_ros.geometry import backproject_pixel, scale_pixel
try:
    from affordance_ros.msg import AffordanceResult, AffordanceResultArray
except ImportError as _exc:  # pip/venv route without the generated messages
    raise ImportError(
        "affordance_ros.msg is not importable: build the messages with "
        "`scripts/build_msgs.sh build/ros_msgs` and use affordance_ros.env.ros_env(), or "
        "`colcon build` and source install/setup.bash"
    ) from _exc

MODELS = ("paper", "tiny")
IMAGE_QOS = ("sensor_data", "reliable")


class StartupError(RuntimeError):
    """The node cannot start: a parameter is invalid or the model cannot be loaded."""


@dataclass(frozen=True)
class NodeSettings:
    """Validated node parameters (see ``config/affordance.yaml`` for their meaning)."""

    model: str
    checkpoint: str
    weights_dir: str
    device: str
    half: bool
    compile: bool
    mask_threshold: float
    default_action: str
    image_qos: str
    max_rate: float
    publish_overlay: bool
    use_depth: bool
    max_image_side: int
    depth_window: int
    diagnostics_period: float
    log_throttle: float
    action_rerun_delay: float
    cpu_threads: int
    backend: str = "torch"
    onnx_variant: str = "fp32"


def parse_actions(text: str) -> list[str]:
    """Split an action request (``"hold"`` or ``"hold, cut_with"``) into unique words, in order."""
    words = [w.strip() for w in text.split(",")]
    return list(dict.fromkeys(w for w in words if w))


def load_predictor(settings: NodeSettings) -> Any:
    """Load the predictor named by the node parameters.

    Args:
        settings: Validated parameters.

    Returns:
        An ``AffordancePredictor``.

    Raises:
        StartupError: Missing or unreadable checkpoint or weights directory; the message names
            the file and the parameter.
    """
    if not settings.checkpoint:
        raise StartupError(
            "parameter 'checkpoint' is empty: set it to a trained heads file, "
            "e.g. --ros-args -p checkpoint:=runs/tiny/heads.pt"
        )
    ckpt = Path(settings.checkpoint).expanduser()
    if not ckpt.is_file():
        raise StartupError(f"checkpoint file not found: {ckpt} (parameter 'checkpoint')")
    weights_dir = Path(settings.weights_dir).expanduser() if settings.weights_dir else None
    if weights_dir is not None and not weights_dir.is_dir():
        raise StartupError(f"weights directory not found: {weights_dir} (parameter 'weights_dir')")
    if weights_dir is None:
        weights_dir = _installed_weights_dir(settings.model)
    import torch

    from affordance_core.predictor import AffordancePredictor

    if settings.cpu_threads > 0:
        torch.set_num_threads(settings.cpu_threads)

    try:
        predictor = AffordancePredictor.from_checkpoint(
            ckpt, device=settings.device, half=settings.half, weights_dir=weights_dir,
            mask_threshold=settings.mask_threshold, compile=settings.compile,
            backend=settings.backend, onnx_variant=settings.onnx_variant,
        )
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
        raise StartupError(
            f"cannot load checkpoint {ckpt} (parameter 'checkpoint'"
            f"{', weights_dir ' + str(weights_dir) if weights_dir else ''}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    tier = getattr(getattr(getattr(predictor, "model", None), "config", None), "name", None)
    if tier is not None and tier != settings.model:
        raise StartupError(f"checkpoint {ckpt} holds a '{tier}' model but parameter 'model' is "
                           f"'{settings.model}'; set model:={tier} or pick another checkpoint")
    return predictor


def _installed_weights_dir(model: str) -> Path | None:
    """``share/affordance_ros/weights/<model>`` of a colcon install, if present."""
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("affordance_ros")) / "weights" / model
    except Exception:  # noqa: BLE001 - not installed with colcon: the core's default applies
        return None
    return candidate if any(candidate.glob("*.pt")) else None


@dataclass
class _Frame:
    msg: Any
    compressed: bool
    t_recv: float  # time.monotonic() at the callback


class _LatestSlot:
    """Holds at most one item; ``put`` replaces an unconsumed item and reports it."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        with self._cv:
            replaced = self._item is not None
            self._item = item
            self._cv.notify()
            return replaced

    def put_if_empty(self, item: Any) -> None:
        with self._cv:
            if self._item is None:
                self._item = item
                self._cv.notify()

    def take(self, timeout: float) -> Any:
        with self._cv:
            if self._item is None and not self._closed:
                self._cv.wait(timeout)
            item, self._item = self._item, None
            return item

    def empty(self) -> bool:
        with self._cv:
            return self._item is None

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class _Stats:
    """Counters and latencies shared by the worker and the diagnostics timer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.dropped = 0
        self.processed = 0
        self.errors: dict[str, int] = {}
        self.window_processed = 0
        self.window_start = time.monotonic()
        self.predictor_ms: list[float] = []
        self.e2e_ms: list[float] = []


def _descriptor(text: str, **kwargs: Any) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=True, **kwargs)


class AffordanceNode(Node):
    """Affordance grounding node (see the module docstring for topics and behaviour).

    Args:
        predictor_loader: Builds the predictor from the validated parameters; defaults to
            :func:`load_predictor`. Tests inject fakes here.
        **kwargs: Forwarded to ``rclpy.node.Node`` (e.g. ``cli_args``, ``parameter_overrides``).

    Raises:
        StartupError: Invalid parameters or a predictor that cannot be loaded.
    """

    def __init__(
        self,
        predictor_loader: Callable[[NodeSettings], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__("affordance_node", **kwargs)
        self.settings = self._declare_and_read()
        self.predictor = (predictor_loader or load_predictor)(self.settings)
        self.vocabulary = list(self.predictor.vocabulary)
        self._actions: list[str] = []
        if self.settings.default_action:
            words = parse_actions(self.settings.default_action)
            unknown = [w for w in words if w not in self.vocabulary]
            if unknown or not words:
                raise StartupError(
                    f"parameter 'default_action' = '{self.settings.default_action}' names "
                    f"unknown actions {unknown}; vocabulary: {', '.join(self.vocabulary)}"
                )
            self._actions = words
        self._actions_lock = threading.Lock()
        self._slot = _LatestSlot()
        self._stats = _Stats()
        self._last_log: dict[str, float] = {}
        self._last_frame: _Frame | None = None
        self._rerun_due: float | None = None  # when to re-run the newest frame for new actions
        self._depth: tuple[Any, Any] = (None, None)  # latest (depth msg, camera_info msg)
        self._stop = threading.Event()

        s = self.settings
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1,
            reliability=(ReliabilityPolicy.BEST_EFFORT if s.image_qos == "sensor_data"
                         else ReliabilityPolicy.RELIABLE),
        )
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pub_heatmap = self.create_publisher(Image, "affordance/heatmap", out_qos)
        self.pub_mask = self.create_publisher(Image, "affordance/mask", out_qos)
        self.pub_result = self.create_publisher(AffordanceResult, "affordance/result", out_qos)
        self.pub_results = self.create_publisher(
            AffordanceResultArray, "affordance/results", out_qos)
        self.pub_overlay = (self.create_publisher(Image, "affordance/overlay", out_qos)
                            if s.publish_overlay else None)
        self.pub_diag = self.create_publisher(DiagnosticArray, "diagnostics", 10)

        self.create_subscription(Image, "image", self._on_image, image_qos)
        self.create_subscription(
            CompressedImage, "image/compressed", self._on_compressed, image_qos)
        self.create_subscription(String, "action", self._on_action, 10)
        if s.use_depth:
            self.create_subscription(Image, "depth", self._on_depth, image_qos)
            info_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                  reliability=ReliabilityPolicy.BEST_EFFORT)
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, info_qos)
        self.create_timer(s.diagnostics_period, self._publish_diagnostics)

        self._worker = threading.Thread(target=self._run, name="affordance_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: model={s.model} checkpoint={s.checkpoint} device={s.device} "
            f"vocabulary=[{', '.join(self.vocabulary)}] actions={self._actions or 'none yet'}"
        )

    # ----------------------------------------------------------------------------- parameters
    def _declare_and_read(self) -> NodeSettings:
        unit = FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)
        specs: list[tuple[str, Any, ParameterDescriptor]] = [
            ("model", "tiny", _descriptor(
                "Model tier: 'paper' (DINO ViT-S/16 + CLIP ViT-B/16) or 'tiny'.",
                additional_constraints="one of: paper, tiny")),
            ("checkpoint", "", _descriptor("Trained heads checkpoint file (required).")),
            ("weights_dir", "", _descriptor(
                "Directory with local backbone weights; empty = the tier's default location.")),
            ("device", "cpu", _descriptor("Torch device: cpu, cuda, cuda:1, ...")),
            ("half", False, _descriptor(
                "Autocast inference: float16 on CUDA, bfloat16 on CPU.")),
            ("compile", False, _descriptor(
                "torch.compile the backbone pass (slow first frame, faster after on GPU).")),
            ("mask_threshold", 0.5, _descriptor(
                "Heatmap level in [0, 1] above which a pixel joins the grasp mask.",
                floating_point_range=[unit])),
            ("default_action", "", _descriptor(
                "Action word(s), comma-separated, used until an 'action' message arrives.")),
            ("image_qos", "sensor_data", _descriptor(
                "Image subscription QoS: 'sensor_data' (best effort, depth 1) or 'reliable'.",
                additional_constraints="one of: sensor_data, reliable")),
            ("max_rate", 0.0, _descriptor(
                "Maximum inference rate in Hz; 0 = as fast as frames and compute allow.",
                floating_point_range=[FloatingPointRange(
                    from_value=0.0, to_value=1000.0, step=0.0)])),
            ("publish_overlay", True, _descriptor(
                "Publish affordance/overlay (rgb8 heatmap blended on the image).")),
            ("use_depth", False, _descriptor(
                "Subscribe to 'depth' and 'camera_info' and fill AffordanceResult.grasp_point.")),
            ("max_image_side", 2048, _descriptor(
                "Frames whose longer side exceeds this many pixels are rejected with a warning.",
                integer_range=[IntegerRange(from_value=16, to_value=16384, step=1)])),
            ("depth_window", 5, _descriptor(
                "Side in pixels of the window whose median depth gives the grasp point.",
                integer_range=[IntegerRange(from_value=1, to_value=51, step=1)])),
            ("diagnostics_period", 1.0, _descriptor(
                "Seconds between diagnostics messages.",
                floating_point_range=[FloatingPointRange(
                    from_value=0.1, to_value=60.0, step=0.0)])),
            ("log_throttle", 5.0, _descriptor(
                "Seconds between repeated log lines of one bad-input kind.",
                floating_point_range=[FloatingPointRange(
                    from_value=0.0, to_value=3600.0, step=0.0)])),
            ("cpu_threads", 0, _descriptor(
                "Torch intra-op CPU threads for inference; 0 = torch's default (all cores). "
                "On a small CPU shared with other processes fewer threads avoid "
                "oversubscription.",
                integer_range=[IntegerRange(from_value=0, to_value=1024, step=1)])),
            ("backend", "torch", _descriptor(
                "Inference backend: 'torch' (eager) or 'onnxruntime' (the exported graph; "
                "TensorRT > CUDA > CPU provider; exported on first use into "
                "$AFFORDANCE_ONNX_CACHE or ~/.cache/affordance_ros/onnx).",
                additional_constraints="one of: torch, onnxruntime")),
            ("onnx_variant", "fp32", _descriptor(
                "onnxruntime backend: 'fp32', or 'int8' (dynamically quantized backbones; "
                "faster on CPUs, see the README for its measured accuracy).",
                additional_constraints="one of: fp32, int8")),
            ("action_rerun_delay", 0.25, _descriptor(
                "After an action change, re-run the newest frame if no new image arrives "
                "within this many seconds (a static scene still gets an answer; a streaming "
                "camera's next frame is used instead of a stale one).",
                floating_point_range=[FloatingPointRange(
                    from_value=0.0, to_value=60.0, step=0.0)])),
        ]
        for name, default, desc in specs:
            self.declare_parameter(name, default, desc)
        v = {name: self.get_parameter(name).value for name, _, _ in specs}
        if v["model"] not in MODELS:
            raise StartupError(f"parameter 'model' = '{v['model']}'; use one of {MODELS}")
        if v["backend"] not in ("torch", "onnxruntime"):
            raise StartupError(f"parameter 'backend' = '{v['backend']}'; use torch or onnxruntime")
        if v["onnx_variant"] not in ("fp32", "int8"):
            raise StartupError(
                f"parameter 'onnx_variant' = '{v['onnx_variant']}'; use fp32 or int8")
        if v["image_qos"] not in IMAGE_QOS:
            raise StartupError(
                f"parameter 'image_qos' = '{v['image_qos']}'; use one of {IMAGE_QOS}")
        return NodeSettings(
            model=v["model"], checkpoint=v["checkpoint"], weights_dir=v["weights_dir"],
            device=v["device"], half=bool(v["half"]), compile=bool(v["compile"]),
            mask_threshold=float(v["mask_threshold"]),
            default_action=v["default_action"], image_qos=v["image_qos"],
            max_rate=float(v["max_rate"]), publish_overlay=bool(v["publish_overlay"]),
            use_depth=bool(v["use_depth"]), max_image_side=int(v["max_image_side"]),
            depth_window=int(v["depth_window"]),
            diagnostics_period=float(v["diagnostics_period"]),
            log_throttle=float(v["log_throttle"]),
            action_rerun_delay=float(v["action_rerun_delay"]),
            cpu_threads=int(v["cpu_threads"]), backend=str(v["backend"]),
            onnx_variant=str(v["onnx_variant"]),
        )

    # ------------------------------------------------------------------------------ callbacks
    def _store(self, msg: Any, compressed: bool) -> None:
        frame = _Frame(msg, compressed, time.monotonic())
        self._rerun_due = None  # the new frame answers any pending action change
        replaced = self._slot.put(frame)
        with self._stats.lock:
            self._stats.received += 1
            self._stats.dropped += int(replaced)

    def _on_image(self, msg: Image) -> None:
        self._store(msg, compressed=False)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._store(msg, compressed=True)

    def _on_depth(self, msg: Image) -> None:
        self._depth = (msg, self._depth[1])

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._depth = (self._depth[0], msg)

    def _on_action(self, msg: String) -> None:
        words = parse_actions(msg.data)
        if not words:
            self._bad_input("action", f"empty action request '{msg.data}'; actions unchanged")
            return
        unknown = [w for w in words if w not in self.vocabulary]
        if unknown:
            self._bad_input(
                "action", f"unknown action(s) {unknown} in request '{msg.data}'; actions "
                f"unchanged; vocabulary: {', '.join(self.vocabulary)}")
            return
        with self._actions_lock:
            changed = words != self._actions
            self._actions = words
        if changed:
            self.get_logger().info(f"actions set to {words}")
        last = self._last_frame
        if last is None:
            # Not an error: a robot may choose the action before its camera streams.
            self.get_logger().info(f"actions {words} stored; no image received yet on "
                                   f"'{self.resolve_topic_name('image')}', the first one "
                                   "will be answered")
        elif changed:
            # A static scene still gets an answer: the worker re-runs the newest frame unless a
            # new image arrives within action_rerun_delay (then that image answers instead).
            self._rerun_due = time.monotonic() + self.settings.action_rerun_delay

    # --------------------------------------------------------------------------------- worker
    def _bad_input(self, kind: str, text: str) -> None:
        """Count a bad input and log it at most once per ``log_throttle`` seconds per kind."""
        now = time.monotonic()
        with self._stats.lock:
            self._stats.errors[kind] = self._stats.errors.get(kind, 0) + 1
            due = now - self._last_log.get(kind, -1e9) >= self.settings.log_throttle
            if due:
                self._last_log[kind] = now
        if due:
            self.get_logger().warn(f"[{kind}] {text}; frame skipped")

    def _run(self) -> None:
        next_start = 0.0
        while not self._stop.is_set():
            if self.settings.max_rate > 0:
                delay = next_start - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            due = self._rerun_due
            wait = 0.2 if due is None else min(0.2, max(0.0, due - time.monotonic()))
            frame = self._slot.take(timeout=wait)
            if frame is None:
                frame = self._take_rerun()
            if frame is None:
                continue
            next_start = time.monotonic() + (1.0 / self.settings.max_rate
                                             if self.settings.max_rate > 0 else 0.0)
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any frame
                self._bad_input("internal", f"{type(exc).__name__}: {exc}")

    def _take_rerun(self) -> _Frame | None:
        """The newest frame again, once its action-change re-run is due and nothing is pending."""
        due, last = self._rerun_due, self._last_frame
        if due is None or last is None or time.monotonic() < due or not self._slot.empty():
            return None
        self._rerun_due = None
        return _Frame(last.msg, last.compressed, time.monotonic())

    def _process(self, frame: _Frame) -> None:
        try:
            rgb = compressed_to_rgb(frame.msg) if frame.compressed else image_to_rgb(frame.msg)
        except ImageConversionError as exc:
            self._bad_input(exc.kind, str(exc))
            return
        h, w = rgb.shape[:2]
        if max(h, w) > self.settings.max_image_side:
            self._bad_input("too_large", f"image {w}x{h} exceeds max_image_side="
                            f"{self.settings.max_image_side}; downscale it upstream or raise "
                            f"the parameter")
            return
        self._last_frame = frame
        with self._actions_lock:
            actions = list(self._actions)
        if not actions:
            self._bad_input("no_action", "no action requested yet: publish a word on "
                            f"'{self.resolve_topic_name('action')}' or set 'default_action'")
            return
        t0 = time.perf_counter()
        try:
            self.predictor.set_image(rgb)
            preds = self.predictor.predict(actions)
        except ValueError as exc:  # UnknownActionError is a ValueError
            self._bad_input("action", str(exc))
            return
        pred_ms = (time.perf_counter() - t0) * 1e3
        header = frame.msg.header
        heatmaps = [array_to_image(pred.heatmap.astype(np.float32, copy=False), "32FC1", header)
                    for pred in preds]
        self.pub_heatmap.publish(heatmaps[0])  # first: what latency-critical consumers wait for
        grasp = self._grasp_points(preds, (h, w))
        results = []
        for pred, point, heatmap in zip(preds, grasp, heatmaps):
            res = AffordanceResult(header=header, action=pred.action, score=float(pred.score))
            res.heatmap = heatmap
            res.mask = array_to_image(pred.mask.astype(bool, copy=False), "mono8", header)
            res.grasp_pixel = Point(x=float(pred.peak_xy[0]), y=float(pred.peak_xy[1]), z=0.0)
            if point is None:
                res.grasp_point = Point(x=float("nan"), y=float("nan"), z=float("nan"))
            else:
                res.grasp_point = Point(x=float(point[0]), y=float(point[1]), z=float(point[2]))
            res.has_grasp_point = point is not None
            results.append(res)
        self.pub_mask.publish(results[0].mask)
        for res in results:
            self.pub_result.publish(res)
        self.pub_results.publish(AffordanceResultArray(header=header, results=results))
        if self.pub_overlay is not None:
            self.pub_overlay.publish(
                array_to_image(heatmap_overlay(rgb, preds[0].heatmap), "rgb8", header))
        e2e_ms = (time.monotonic() - frame.t_recv) * 1e3
        with self._stats.lock:
            st = self._stats
            st.processed += 1
            st.window_processed += 1
            st.predictor_ms.append(pred_ms)
            st.e2e_ms.append(e2e_ms)

    def _grasp_points(self, preds: list[Any], hw: tuple[int, int]) -> list[np.ndarray | None]:
        """3D grasp point per prediction from the newest depth image, or None each."""
        none: list[np.ndarray | None] = [None] * len(preds)
        depth_msg, info = self._depth
        if not self.settings.use_depth or depth_msg is None or info is None:
            return none
        try:
            depth = depth_to_metres(depth_msg)
        except ImageConversionError as exc:
            self._bad_input("depth", str(exc))
            return none
        k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
        if info.width and info.height and (info.height, info.width) != depth.shape:
            k = k * np.array([[depth.shape[1] / info.width], [depth.shape[0] / info.height], [1]])
        points = []
        for pred in preds:
            xy = scale_pixel(tuple(pred.peak_xy), hw, depth.shape)
            points.append(backproject_pixel(depth, xy, k, self.settings.depth_window))
        return points

    # ---------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        with self._stats.lock:
            st = self._stats
            rate = st.window_processed / max(now - st.window_start, 1e-6)
            pred, e2e = st.predictor_ms, st.e2e_ms
            st.predictor_ms, st.e2e_ms = [], []
            st.window_processed, st.window_start = 0, now
            values = {
                "frames_received": st.received, "frames_processed": st.processed,
                "frames_dropped": st.dropped, "rate_hz": round(rate, 2),
                "predictor_ms_mean": round(float(np.mean(pred)), 2) if pred else "",
                "predictor_ms_max": round(float(np.max(pred)), 2) if pred else "",
                "e2e_ms_mean": round(float(np.mean(e2e)), 2) if e2e else "",
                "e2e_ms_max": round(float(np.max(e2e)), 2) if e2e else "",
                "errors_total": sum(st.errors.values()),
            }
            values.update({f"errors_{k}": n for k, n in sorted(st.errors.items())})
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f"{self.get_name()}: inference",
            hardware_id=self.settings.device,
            message="processing" if pred else "idle (no frames processed in this period)",
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )
        if values["errors_total"] and not pred:
            status.level = DiagnosticStatus.WARN
            status.message = "inputs rejected; see errors_*"
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        self._stop.set()
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the node until shutdown.

    Args:
        args: Command line (defaults to ``sys.argv``), including ``--ros-args ...``.

    Returns:
        Exit status: 0 after a normal shutdown, 2 when the node cannot start.
    """
    rclpy.init(args=args)
    node: AffordanceNode | None = None
    try:
        node = AffordanceNode()
        rclpy.spin(node)
    except StartupError as exc:
        rclpy.logging.get_logger("affordance_node").fatal(str(exc))
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
