"""ROS 2 node: camera images and action words in, affordance heatmaps and grasp regions out.

A thin adapter over :class:`affordance_core.predictor.AffordancePredictor`. Image callbacks
only store the newest frame (latest-frame-only: an unprocessed frame is replaced and counted
as dropped, frames are never queued); a worker thread off the executor converts, runs the
predictor and publishes. Bad input is logged once per kind per ``log_throttle`` seconds and
produces no output for that frame.

Topics (relative; remap them):
    in:  ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage),
         chosen by ``transport``; ``action`` (std_msgs/String, one word or a comma-separated
         list; empty pauses inference); ``depth`` and ``camera_info`` when ``use_depth``.
    out: ``affordance/heatmap`` (32FC1 in [0, 1]), ``affordance/mask`` (mono8 0/255) and
         ``affordance/overlay`` (rgb8) for the first action; ``affordance/result`` (one
         AffordanceResult per action), ``affordance/results`` (AffordanceResultArray per
         frame); with depth ``affordance/grasp_point`` (PointStamped), ``affordance/marker``
         (visualization_msgs/Marker) and ``affordance/camera_info``;
         ``affordance/vocabulary`` (transient local) and ``/diagnostics``. Every frame output
         copies the image header and is published only while the topic has a subscriber.
    services: ``affordance/set_actions`` (SetActions), ``affordance/query`` (Query).

Run: ``ros2 run affordance_ros affordance_node --ros-args -p checkpoint:=model.pt`` or
``python -m affordance_ros.node --ros-args ...``. The lifecycle variant is
:mod:`affordance_ros.lifecycle_node`.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _import_interfaces() -> tuple[Any, ...]:
    """The generated interfaces; on the pip/venv route, from the prefix ``make msgs`` built."""
    try:
        from affordance_ros.msg import (
            AffordanceResult,
            AffordanceResultArray,
            AffordanceVocabulary,
        )
        from affordance_ros.srv import Query, SetActions
    except ImportError as first:
        import os

        from affordance_ros.env import DEFAULT_MSG_PREFIX, use_msg_prefix

        prefix = os.environ.get("AFFORDANCE_MSG_PREFIX", str(DEFAULT_MSG_PREFIX))
        try:
            use_msg_prefix(prefix)
            from affordance_ros.msg import (
                AffordanceResult,
                AffordanceResultArray,
                AffordanceVocabulary,
            )
            from affordance_ros.srv import Query, SetActions
        except (ImportError, OSError) as exc:
            raise ImportError(
                f"affordance_ros.msg is not importable ({first}) and no usable messages were "
                f"found in {prefix} ({exc}): run `make msgs` in the repository (or set "
                "AFFORDANCE_MSG_PREFIX to the prefix given to scripts/build_msgs.sh), or "
                "`colcon build` and source install/setup.bash"
            ) from exc
    return AffordanceResult, AffordanceResultArray, AffordanceVocabulary, Query, SetActions


(AffordanceResult, AffordanceResultArray, AffordanceVocabulary, Query, SetActions) = (
    _import_interfaces()
)

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from geometry_msgs.msg import Point, PointStamped  # noqa: E402
from rcl_interfaces.msg import (  # noqa: E402
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException  # noqa: E402
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.qos_overriding_options import QoSOverridingOptions, QoSPolicyKind  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from affordance_core.visualize import heatmap_overlay  # noqa: E402
from affordance_ros.conversions import (  # noqa: E402
    ImageConversionError,
    array_to_image,
    compressed_to_rgb,
    depth_to_metres,
    image_to_rgb,
)
from affordance_ros.depth_sync import DepthSync  # noqa: E402
from affordance_ros.geometry import backproject_pixel, scale_pixel, transform_point  # noqa: E402
from affordance_ros.params import (  # noqa: E402
    SPECS,
    NodeSettings,
    ParamSpec,
    StartupError,
    check_device,
    check_value,
    parse_actions,
    unknown_actions,
)

try:  # visualization_msgs is optional: without it no marker is published
    from visualization_msgs.msg import Marker
except ImportError:  # pragma: no cover - declared in setup.py and package.xml
    Marker = None

__all__ = [
    "AffordanceNode",
    "NodeSettings",
    "StartupError",
    "load_predictor",
    "main",
    "parse_actions",
]


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
            "parameter 'checkpoint' is empty: set it to a trained model file, "
            "e.g. --ros-args -p checkpoint:=runs/tiny/model.pt"
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
            ckpt,
            device=settings.device,
            half=settings.half,
            weights_dir=weights_dir,
            mask_threshold=settings.mask_threshold,
            min_score=settings.min_score,
            compile=settings.compile,
            backend=settings.backend,
            onnx_variant=settings.onnx_variant,
        )
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
        raise StartupError(
            f"cannot load checkpoint {ckpt} (parameter 'checkpoint'"
            f"{', weights_dir ' + str(weights_dir) if weights_dir else ''}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    tier = getattr(getattr(getattr(predictor, "model", None), "config", None), "name", None)
    if tier is not None and tier != settings.model:
        raise StartupError(
            f"checkpoint {ckpt} holds a '{tier}' model but parameter 'model' is "
            f"'{settings.model}'; set model:={tier} or pick another checkpoint"
        )
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


@dataclass
class _QueryJob:
    image: Any  # sensor_msgs/Image, or None for the newest frame
    actions: list[str]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    response: Any = None


@dataclass
class _Grasp:
    point: np.ndarray | None = None
    frame: str = ""
    status: str = ""


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

    def take(self, timeout: float) -> Any:
        with self._cv:
            if self._item is None and not self._closed:
                self._cv.wait(timeout)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def empty(self) -> bool:
        with self._cv:
            return self._item is None

    def clear(self) -> None:
        with self._cv:
            self._item = None

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def reopen(self) -> None:
        with self._cv:
            self._closed = False


class _Stats:
    """Counters shared by the worker and the diagnostics timer (guarded by ``lock``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.dropped = 0
        self.processed = 0
        self.errors_total: dict[str, int] = {}
        self.errors_window: dict[str, int] = {}
        self.window_processed = 0
        self.window_bytes = 0
        self.window_start = time.monotonic()
        self.last_frame_t: float | None = None
        self.predictor_ms: list[float] = []
        self.e2e_ms: list[float] = []


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(
        description=spec.description
        + ("" if spec.live else " Read-only: fixed at start-up (restart to change)."),
        read_only=not spec.live,
    )
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.low is not None and spec.high is not None:
        if isinstance(spec.default, float):
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)
            ]
        elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
            desc.integer_range = [
                IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)
            ]
    return desc


def _overridable() -> QoSOverridingOptions:
    """History, depth, reliability and durability can be set by ``qos_overrides.*`` params."""
    return QoSOverridingOptions(
        policy_kinds=(
            QoSPolicyKind.HISTORY,
            QoSPolicyKind.DEPTH,
            QoSPolicyKind.RELIABILITY,
            QoSPolicyKind.DURABILITY,
        )
    )


def _sensor_qos(reliable: bool) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1,
        reliability=(ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT),
    )


class AffordanceNodeMixin:
    """The node's behaviour, shared by the plain and the lifecycle node.

    Subclasses call, in order: :meth:`_init_parameters` (declare and validate),
    :meth:`_configure` (device check, model, outputs, services), :meth:`_activate` (inputs and
    worker); and back: :meth:`_deactivate`, :meth:`_cleanup`.
    """

    # ------------------------------------------------------------------------------ set-up
    def _init_parameters(self, predictor_loader: Callable[[NodeSettings], Any] | None) -> None:
        """Declare every parameter and validate types, ranges and choices (StartupError)."""
        self._loader = predictor_loader or load_predictor
        self.predictor: Any = None
        self.vocabulary: list[str] = []
        self._actions: list[str] = []
        self._actions_set = False
        self._actions_lock = threading.Lock()
        self._slot = _LatestSlot()
        self._queries: deque[_QueryJob] = deque()
        self._stats = _Stats()
        self._last_log: dict[str, float] = {}
        self._last_frame: _Frame | None = None
        self._rerun_due: float | None = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._inputs: list[Any] = []
        self._outputs: list[Any] = []
        self._tf_lock = threading.Lock()
        self._tf_buffer: Any = None
        self._tf_listener: Any = None
        self._tf_missing = ""
        self._started = time.monotonic()
        values: dict[str, Any] = {}
        for spec in SPECS:
            override = self._parameter_overrides.get(spec.name)
            if override is not None:
                problem = check_value(spec, override.value)
                if problem:
                    raise StartupError(problem)
            try:
                self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                raise StartupError(f"parameter '{spec.name}': {exc}") from exc
            values[spec.name] = self.get_parameter(spec.name).value
        self.settings = NodeSettings(**values)
        self._depth_sync = DepthSync(
            depth_topic=self.resolve_topic_name("depth"),
            info_topic=self.resolve_topic_name("camera_info"),
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _configure(self) -> None:
        """Check the device, load and warm up the model, create outputs and services."""
        s = self.settings
        problem = check_device(s.device)
        if problem:
            raise StartupError(problem)
        self.predictor = self._loader(s)
        self.vocabulary = list(self.predictor.vocabulary)
        if s.default_action:
            words = parse_actions(s.default_action)
            unknown = unknown_actions(words, self.vocabulary)
            if unknown or not words:
                raise StartupError(
                    f"parameter 'default_action' = '{s.default_action}' names unknown "
                    f"actions {unknown}; vocabulary: {', '.join(self.vocabulary)}"
                )
            self._actions, self._actions_set = words, True
        self._warm_up()
        out_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE
        )
        qoo = _overridable()

        def pub(typ: Any, topic: str, qos: Any = out_qos, overridable: bool = True) -> Any:
            p = self.create_publisher(
                typ, topic, qos, qos_overriding_options=qoo if overridable else None
            )
            self._outputs.append(p)
            return p

        self.pub_heatmap = pub(Image, "affordance/heatmap")
        self.pub_mask = pub(Image, "affordance/mask")
        self.pub_overlay = pub(Image, "affordance/overlay")
        self.pub_result = pub(AffordanceResult, "affordance/result")
        self.pub_results = pub(AffordanceResultArray, "affordance/results")
        self.pub_point = pub(PointStamped, "affordance/grasp_point")
        self.pub_info = pub(CameraInfo, "affordance/camera_info")
        self.pub_marker = pub(Marker, "affordance/marker") if Marker is not None else None
        latched = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.pub_vocab = pub(AffordanceVocabulary, "affordance/vocabulary", latched, False)
        self.pub_diag = pub(DiagnosticArray, "/diagnostics", 10, False)
        self._query_group = MutuallyExclusiveCallbackGroup()
        self._outputs.append(
            self.create_service(SetActions, "affordance/set_actions", self._on_set_actions)
        )
        self._outputs.append(
            self.create_service(
                Query, "affordance/query", self._on_query, callback_group=self._query_group
            )
        )
        self._diag_timer = self.create_timer(s.diagnostics_period, self._publish_diagnostics)
        self._publish_vocabulary()

    def _warm_up(self) -> None:
        """One inference on a blank frame, so the first real frame does not pay for set-up."""
        action = self._actions[0] if self._actions else self.vocabulary[0]
        t0 = time.perf_counter()
        try:
            self.predictor.set_image(np.zeros((64, 64, 3), np.uint8))
            self.predictor.predict([action])
        except Exception as exc:  # noqa: BLE001 - a failing model cannot serve frames
            raise StartupError(f"warm-up inference failed: {type(exc).__name__}: {exc}") from exc
        self.get_logger().info(
            f"warm-up inference done in {(time.perf_counter() - t0) * 1e3:.0f} ms"
        )

    def _activate(self) -> None:
        """Subscribe the inputs and start the worker thread."""
        s = self.settings
        qos = _sensor_qos(s.image_qos == "reliable")
        qoo = _overridable()
        if s.transport == "compressed":
            self._inputs.append(
                self.create_subscription(
                    CompressedImage,
                    "image/compressed",
                    self._on_compressed,
                    qos,
                    qos_overriding_options=qoo,
                )
            )
        else:
            self._inputs.append(
                self.create_subscription(
                    Image, "image", self._on_image, qos, qos_overriding_options=qoo
                )
            )
        self._inputs.append(self.create_subscription(String, "action", self._on_action, 10))
        if s.use_depth:
            self._inputs.append(
                self.create_subscription(
                    Image,
                    "depth",
                    self._depth_sync.add_depth,
                    _sensor_qos(False),
                    qos_overriding_options=qoo,
                )
            )
            self._inputs.append(
                self.create_subscription(
                    CameraInfo, "camera_info", self._depth_sync.add_info, _sensor_qos(False)
                )
            )
        self._stop.clear()
        self._slot.reopen()
        self._started = time.monotonic()
        self._worker = threading.Thread(target=self._run, name="affordance_worker", daemon=True)
        self._worker.start()

    def _deactivate(self) -> None:
        """Unsubscribe the inputs and stop the worker (pending frames are dropped)."""
        for sub in self._inputs:
            self.destroy_subscription(sub)
        self._inputs = []
        self._stop_worker()
        self._slot.clear()
        self._depth_sync.clear()
        self._last_frame = None

    def _stop_worker(self) -> None:
        self._stop.set()
        self._slot.close()
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=10.0)
        self._worker = None
        while self._queries:
            job = self._queries.popleft()
            job.response = self._query_response(False, "the node is shutting down")
            job.done.set()

    def _cleanup(self) -> None:
        """Destroy outputs and services and drop the model."""
        if getattr(self, "_diag_timer", None) is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for entity in self._outputs:
            if hasattr(entity, "srv_type"):
                self.destroy_service(entity)
            else:
                self.destroy_publisher(entity)
        self._outputs = []
        self.predictor = None
        self._release_device_memory()

    def _release_device_memory(self) -> None:
        if self.settings.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # -------------------------------------------------------------------------- parameters
    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        """Validate and apply runtime parameter changes (live ones only)."""
        updates: dict[str, Any] = {}
        for p in params:
            spec = next((s for s in SPECS if s.name == p.name), None)
            if spec is None:
                continue  # e.g. use_sim_time: rclpy handles it
            if not spec.live:
                return SetParametersResult(
                    successful=False,
                    reason=f"'{p.name}' is read-only: it is fixed at start-up; restart the node "
                    "with the new value to change it",
                )
            problem = check_value(spec, p.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            updates[p.name] = p.value
        new = dataclasses.replace(self.settings, **updates)
        if new.stale_input_error < new.stale_input_warn:
            return SetParametersResult(
                successful=False, reason="stale_input_error must be >= stale_input_warn"
            )
        if "default_action" in updates and self.vocabulary:
            words = parse_actions(new.default_action)
            unknown = unknown_actions(words, self.vocabulary)
            if unknown:
                return SetParametersResult(
                    successful=False,
                    reason=f"default_action names unknown actions {unknown}; "
                    f"vocabulary: {', '.join(self.vocabulary)}",
                )
        self.settings = new
        if "mask_threshold" in updates and self.predictor is not None:
            self.predictor.mask_threshold = float(new.mask_threshold)
        if "min_score" in updates and self.predictor is not None:
            self.predictor.min_score = float(new.min_score)
        if "default_action" in updates and self.vocabulary:
            self._set_actions(parse_actions(new.default_action), "parameter default_action")
        self._slot.wake()
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------------------- actions
    def _set_actions(self, words: list[str], source: str) -> tuple[bool, str]:
        """Replace the active actions (empty pauses); False and the reason for unknown words."""
        unknown = unknown_actions(words, self.vocabulary)
        if unknown:
            return False, (
                f"unknown action(s) {unknown} in {source}; actions unchanged; "
                f"vocabulary: {', '.join(self.vocabulary)}"
            )
        with self._actions_lock:
            changed = words != self._actions or not self._actions_set
            self._actions, self._actions_set = list(words), True
        if not changed:
            return True, f"actions unchanged: {words or 'paused'}"
        self._publish_vocabulary()
        if not words:
            self.get_logger().info(f"inference paused (empty action list from {source})")
            self._rerun_due = None
            return True, "inference paused"
        self.get_logger().info(f"actions set to {words} ({source})")
        last = self._last_frame
        if last is None:
            self.get_logger().info(
                f"actions {words} stored; no image received yet on "
                f"'{self.resolve_topic_name(self._image_topic())}', the first one will be "
                "answered"
            )
        elif time.monotonic() - last.t_recv <= self.settings.max_frame_age:
            # A static scene still gets an answer: the worker re-runs the newest frame unless
            # a new image arrives within action_rerun_delay (that image answers instead).
            self._rerun_due = time.monotonic() + self.settings.action_rerun_delay
            self._slot.wake()
        return True, f"actions set to {words}"

    def _image_topic(self) -> str:
        return "image/compressed" if self.settings.transport == "compressed" else "image"

    def _publish_vocabulary(self) -> None:
        if getattr(self, "pub_vocab", None) is None:
            return
        with self._actions_lock:
            active = list(self._actions)
        self.pub_vocab.publish(
            AffordanceVocabulary(vocabulary=self.vocabulary, active_actions=active)
        )

    def _on_action(self, msg: String) -> None:
        ok, text = self._set_actions(parse_actions(msg.data), f"request '{msg.data}'")
        if not ok:
            self._bad_input("action", text)

    def _on_set_actions(self, request: Any, response: Any) -> Any:
        words = list(dict.fromkeys(w.strip() for w in request.actions if w.strip()))
        ok, text = self._set_actions(words, "service set_actions")
        if not ok:
            self._count_error("action")
        response.success, response.message = ok, text
        with self._actions_lock:
            response.active_actions = list(self._actions)
        response.vocabulary = list(self.vocabulary)
        return response

    def _query_response(self, ok: bool, message: str, results: Any = None) -> Any:
        resp = Query.Response(success=ok, message=message)
        if results is not None:
            resp.results = results
        return resp

    def _on_query(self, request: Any, response: Any) -> Any:
        """One-shot inference on the worker thread; blocks only the query callback group."""
        del response
        image = request.image if request.image.width and request.image.height else None
        job = _QueryJob(image=image, actions=[a.strip() for a in request.actions if a.strip()])
        if self._worker is None:
            return self._query_response(False, "the node is not active")
        self._queries.append(job)
        self._slot.wake()
        if not job.done.wait(timeout=60.0):
            return self._query_response(False, "inference did not finish within 60 s")
        return job.response

    # ------------------------------------------------------------------------------ inputs
    def _store(self, msg: Any, compressed: bool) -> None:
        frame = _Frame(msg, compressed, time.monotonic())
        self._rerun_due = None  # the new frame answers any pending action change
        replaced = self._slot.put(frame)
        with self._stats.lock:
            self._stats.received += 1
            self._stats.dropped += int(replaced)
            self._stats.last_frame_t = frame.t_recv

    def _on_image(self, msg: Image) -> None:
        self._store(msg, compressed=False)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._store(msg, compressed=True)

    # -------------------------------------------------------------------------------- worker
    def _count_error(self, kind: str) -> None:
        with self._stats.lock:
            st = self._stats
            st.errors_total[kind] = st.errors_total.get(kind, 0) + 1
            st.errors_window[kind] = st.errors_window.get(kind, 0) + 1

    def _bad_input(self, kind: str, text: str) -> None:
        """Count a bad input and log it at most once per ``log_throttle`` seconds per kind."""
        self._count_error(kind)
        now = time.monotonic()
        with self._stats.lock:
            due = now - self._last_log.get(kind, -1e9) >= self.settings.log_throttle
            if due:
                self._last_log[kind] = now
        if due:
            self.get_logger().warn(f"[{kind}] {text}; frame skipped")

    def _run(self) -> None:
        next_start = 0.0
        while not self._stop.is_set():
            if self._queries:
                self._serve_query(self._queries.popleft())
                continue
            if self.settings.max_rate > 0:
                delay = next_start - time.monotonic()
                if delay > 0:
                    self._stop.wait(min(delay, 0.1))
                    continue
            due = self._rerun_due
            wait = 0.2 if due is None else min(0.2, max(0.0, due - time.monotonic()))
            frame = self._slot.take(timeout=wait)
            if frame is None:
                frame = self._take_rerun()
            if frame is None:
                continue
            rate = self.settings.max_rate
            next_start = time.monotonic() + (1.0 / rate if rate > 0 else 0.0)
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
        if time.monotonic() - last.t_recv > self.settings.max_frame_age:
            return None
        return _Frame(last.msg, last.compressed, time.monotonic())

    def _decode(self, msg: Any, compressed: bool) -> np.ndarray:
        """RGB frame, downscaled to ``max_image_side`` (ImageConversionError on bad input)."""
        import cv2

        rgb = compressed_to_rgb(msg) if compressed else image_to_rgb(msg)
        h, w = rgb.shape[:2]
        side = self.settings.max_image_side
        if max(h, w) > side:
            f = side / max(h, w)
            rgb = cv2.resize(
                rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
            )
        return rgb

    def _predict(self, rgb: np.ndarray, actions: list[str]) -> list[Any]:
        """Predictions at the frame's size; with ``pad_to_square`` the frame is zero-padded to a
        square (bottom/right) for the model and the outputs are cropped back."""
        h, w = rgb.shape[:2]
        if not self.settings.pad_to_square or h == w:
            self.predictor.set_image(rgb)
            return self.predictor.predict(actions)
        side = max(h, w)
        padded = np.zeros((side, side, 3), np.uint8)
        padded[:h, :w] = rgb
        self.predictor.set_image(padded)
        out = []
        for p in self.predictor.predict(actions):
            heat = np.ascontiguousarray(p.heatmap[:h, :w])
            y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
            out.append(
                dataclasses.replace(
                    p,
                    heatmap=heat,
                    mask=np.ascontiguousarray(p.mask[:h, :w]),
                    peak_xy=(int(x), int(y)),
                )
            )
        return out

    def _infer(
        self, msg: Any, compressed: bool, actions: list[str], header: Any, with_images: bool
    ) -> tuple[np.ndarray, list[Any], list[Any], float, Any]:
        """(rgb, predictions, results, predictor ms, matched camera_info) for one frame."""
        rgb = self._decode(msg, compressed)
        t0 = time.perf_counter()
        preds = self._predict(rgb, actions)
        pred_ms = (time.perf_counter() - t0) * 1e3
        s = self.settings
        grasps, info = self._grasp_points(preds, header, rgb.shape[:2])
        results = []
        for pred, grasp in zip(preds, grasps):
            absent = not pred.present  # the predictor's absence rule (score < min_score)
            res = AffordanceResult(header=header, action=pred.action, score=float(pred.score))
            if with_images:
                res.heatmap = array_to_image(
                    pred.heatmap.astype(np.float32, copy=False), "32FC1", header
                )
                res.mask = array_to_image(pred.mask.astype(bool, copy=False), "mono8", header)
            else:
                res.heatmap.header = header
                res.mask.header = header
            res.grasp_pixel = Point(x=float(pred.peak_xy[0]), y=float(pred.peak_xy[1]), z=0.0)
            if absent:
                grasp = _Grasp(status=f"score {pred.score:.3f} is below min_score={s.min_score:g}")
            if grasp.point is None:
                res.grasp_point = Point(x=float("nan"), y=float("nan"), z=float("nan"))
            else:
                res.grasp_point = Point(
                    x=float(grasp.point[0]), y=float(grasp.point[1]), z=float(grasp.point[2])
                )
                res.grasp_point_frame = grasp.frame
            res.has_grasp_point = grasp.point is not None
            res.grasp_point_status = grasp.status
            results.append(res)
        return rgb, preds, results, pred_ms, info

    def _serve_query(self, job: _QueryJob) -> None:
        try:
            with self._actions_lock:
                actions = job.actions or list(self._actions)
            unknown = unknown_actions(actions, self.vocabulary)
            if not actions:
                job.response = self._query_response(
                    False, "no actions given and inference is paused (no active actions)"
                )
            elif unknown:
                job.response = self._query_response(
                    False, f"unknown action(s) {unknown}; vocabulary: {', '.join(self.vocabulary)}"
                )
            else:
                if job.image is not None:
                    msg, compressed = job.image, False
                elif self._last_frame is not None:
                    msg, compressed = self._last_frame.msg, self._last_frame.compressed
                else:
                    msg = None
                if msg is None:
                    job.response = self._query_response(
                        False,
                        "no image given and no frame received yet on "
                        f"'{self.resolve_topic_name(self._image_topic())}'",
                    )
                else:
                    _, _, results, _, _ = self._infer(msg, compressed, actions, msg.header, True)
                    job.response = self._query_response(
                        True, "", AffordanceResultArray(header=msg.header, results=results)
                    )
        except ImageConversionError as exc:
            job.response = self._query_response(False, f"[{exc.kind}] {exc}")
        except Exception as exc:  # noqa: BLE001 - the caller gets the reason
            job.response = self._query_response(False, f"{type(exc).__name__}: {exc}")
        finally:
            job.done.set()

    def _has_subs(self, pub: Any) -> bool:
        return pub is not None and pub.get_subscription_count() > 0

    def _process(self, frame: _Frame) -> None:
        with self._actions_lock:
            actions = list(self._actions)
            explicitly_paused = self._actions_set and not actions
        if not actions:
            if not explicitly_paused:
                self._bad_input(
                    "no_action",
                    "no action requested yet: publish a word on "
                    f"'{self.resolve_topic_name('action')}' or set 'default_action'",
                )
            self._last_frame = frame
            return
        s = self.settings
        header = frame.msg.header
        want_results = self._has_subs(self.pub_result) or self._has_subs(self.pub_results)
        try:
            rgb, preds, results, pred_ms, info = self._infer(
                frame.msg,
                frame.compressed,
                actions,
                header,
                with_images=s.results_include_images and want_results,
            )
        except ImageConversionError as exc:
            self._bad_input(exc.kind, str(exc))
            return
        except ValueError as exc:  # UnknownActionError is a ValueError
            self._bad_input("action", str(exc))
            return
        self._last_frame = frame
        nbytes = 0
        if self._has_subs(self.pub_heatmap):
            img = (
                results[0].heatmap
                if results[0].heatmap.data
                else array_to_image(
                    preds[0].heatmap.astype(np.float32, copy=False), "32FC1", header
                )
            )
            self.pub_heatmap.publish(img)  # first: what latency-critical consumers wait for
            nbytes += len(img.data)
        if self._has_subs(self.pub_mask):
            img = (
                results[0].mask
                if results[0].mask.width
                else array_to_image(preds[0].mask.astype(bool, copy=False), "mono8", header)
            )
            self.pub_mask.publish(img)
            nbytes += len(img.data)
        result_bytes = sum(len(r.heatmap.data) + len(r.mask.data) for r in results)
        if self._has_subs(self.pub_result):
            for res in results:
                self.pub_result.publish(res)
            nbytes += result_bytes
        if self._has_subs(self.pub_results):
            self.pub_results.publish(AffordanceResultArray(header=header, results=results))
            nbytes += result_bytes
        if s.publish_overlay and self._has_subs(self.pub_overlay):
            img = array_to_image(heatmap_overlay(rgb, preds[0].heatmap), "rgb8", header)
            self.pub_overlay.publish(img)
            nbytes += len(img.data)
        self._publish_3d(results[0], header, info)
        e2e_ms = (time.monotonic() - frame.t_recv) * 1e3
        with self._stats.lock:
            st = self._stats
            st.processed += 1
            st.window_processed += 1
            st.window_bytes += nbytes
            st.predictor_ms.append(pred_ms)
            st.e2e_ms.append(e2e_ms)

    def _publish_3d(self, first: Any, header: Any, info: Any) -> None:
        """Grasp point, RViz marker and the camera_info beside the heatmap."""
        if info is not None and self._has_subs(self.pub_info):
            out = CameraInfo(
                header=header,
                height=info.height,
                width=info.width,
                distortion_model=info.distortion_model,
                d=info.d,
                k=info.k,
                r=info.r,
                p=info.p,
                binning_x=info.binning_x,
                binning_y=info.binning_y,
                roi=info.roi,
            )
            self.pub_info.publish(out)
        if not first.has_grasp_point:
            return
        stamped_header = type(header)(stamp=header.stamp, frame_id=first.grasp_point_frame)
        if self._has_subs(self.pub_point):
            self.pub_point.publish(PointStamped(header=stamped_header, point=first.grasp_point))
        if self._has_subs(self.pub_marker):
            m = Marker(
                header=stamped_header, ns="affordance", id=0, type=Marker.SPHERE, action=Marker.ADD
            )
            m.pose.position = first.grasp_point
            m.pose.orientation.w = 1.0
            m.scale.x = m.scale.y = m.scale.z = 0.03
            m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 0.2, 0.1, 0.9
            m.lifetime.nanosec = 500_000_000
            m.text = first.action
            self.pub_marker.publish(m)

    def _grasp_points(
        self, preds: list[Any], header: Any, hw: tuple[int, int]
    ) -> tuple[list[_Grasp], Any]:
        """3D grasp point per prediction from synchronised depth, or the reason it is missing."""
        s = self.settings
        if not s.use_depth:
            return [_Grasp(status="use_depth is false") for _ in preds], None
        match = self._depth_sync.match(
            header,
            s.sync_slop,
            now_ns=self.get_clock().now().nanoseconds,
            max_age=s.max_depth_age,
            wait=min(s.sync_slop, 0.5),
        )
        if not match.ok:
            return [_Grasp(status=match.reason) for _ in preds], None
        try:
            depth = depth_to_metres(match.depth, s.depth_scale)
        except ImageConversionError as exc:
            self._bad_input("depth", str(exc))
            return [_Grasp(status=f"depth image unusable: {exc}") for _ in preds], None
        info = match.info
        k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
        if info.width and info.height and (info.height, info.width) != depth.shape:
            k = k * np.array([[depth.shape[1] / info.width], [depth.shape[0] / info.height], [1]])
        frame = str(header.frame_id)
        out = []
        for pred in preds:
            xy = scale_pixel(tuple(pred.peak_xy), hw, depth.shape)
            point = backproject_pixel(depth, xy, k, s.depth_window)
            if point is None:
                out.append(_Grasp(status="no valid depth around the heatmap peak"))
                continue
            out.append(self._to_target(point, frame, header))
        return out, info

    def _to_target(self, point: np.ndarray, frame: str, header: Any) -> _Grasp:
        """The point in ``target_frame`` via tf2, or in the camera frame with the reason."""
        target = self.settings.target_frame
        if not target or target == frame:
            return _Grasp(point, frame)
        buffer = self._tf()
        if buffer is None:
            return _Grasp(
                point,
                frame,
                f"no transform to target_frame '{target}': "
                f"{self._tf_missing}; grasp_point is in '{frame}'",
            )
        try:
            from rclpy.time import Time

            tf = buffer.lookup_transform(target, frame, Time.from_msg(header.stamp))
        except Exception as exc:  # noqa: BLE001 - tf2 raises several lookup exceptions
            return _Grasp(
                point,
                frame,
                f"no transform from '{frame}' to target_frame "
                f"'{target}': {type(exc).__name__}: {exc}; "
                f"grasp_point is in '{frame}'",
            )
        t, q = tf.transform.translation, tf.transform.rotation
        return _Grasp(transform_point(point, (t.x, t.y, t.z), (q.x, q.y, q.z, q.w)), target)

    def _tf(self) -> Any:
        """tf2 buffer, created on first use; None when tf2_ros is not installed."""
        with self._tf_lock:
            if self._tf_buffer is None and not self._tf_missing:
                try:
                    from tf2_ros import Buffer, TransformListener
                except ImportError:
                    self._tf_missing = (
                        "tf2_ros is not installed (a ROS 2 install provides "
                        "it; it is not published on PyPI)"
                    )
                    return None
                self._tf_buffer = Buffer()
                self._tf_listener = TransformListener(self._tf_buffer, self)
            return self._tf_buffer

    # ---------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        s = self.settings
        with self._actions_lock:
            paused = self._actions_set and not self._actions
        with self._stats.lock:
            st = self._stats
            span = max(now - st.window_start, 1e-6)
            rate = st.window_processed / span
            pred, e2e = st.predictor_ms, st.e2e_ms
            window_errors = dict(st.errors_window)
            last = st.last_frame_t
            values: dict[str, Any] = {
                "frames_received": st.received,
                "frames_processed": st.processed,
                "frames_dropped": st.dropped,
                "rate_hz": round(rate, 2),
                "published_bytes_per_s": round(st.window_bytes / span),
                "predictor_ms_mean": round(float(np.mean(pred)), 2) if pred else "",
                "predictor_ms_max": round(float(np.max(pred)), 2) if pred else "",
                "e2e_ms_mean": round(float(np.mean(e2e)), 2) if e2e else "",
                "e2e_ms_max": round(float(np.max(e2e)), 2) if e2e else "",
                "errors_window": sum(window_errors.values()),
                "errors_total": sum(st.errors_total.values()),
            }
            values.update({f"errors_{k}": n for k, n in sorted(st.errors_total.items())})
            st.predictor_ms, st.e2e_ms, st.errors_window = [], [], {}
            st.window_processed, st.window_bytes, st.window_start = 0, 0, now
        silent = now - (last if last is not None else self._started)
        values["seconds_since_last_image"] = round(silent, 2)
        level, message = DiagnosticStatus.OK, "processing" if pred else "idle"
        if paused:
            message = "paused (empty action list)"
        if window_errors:
            level = DiagnosticStatus.WARN
            message = "inputs rejected in the last window: " + ", ".join(
                f"{k} x{n}" for k, n in sorted(window_errors.items())
            )
        if silent >= s.stale_input_error:
            level = DiagnosticStatus.ERROR
            message = (
                f"no image for {silent:.1f} s on '{self.resolve_topic_name(self._image_topic())}'"
            )
        elif silent >= s.stale_input_warn and level == DiagnosticStatus.OK:
            level = DiagnosticStatus.WARN
            message = (
                f"no image for {silent:.1f} s on '{self.resolve_topic_name(self._image_topic())}'"
            )
        ns = self.get_namespace().rstrip("/")
        status = DiagnosticStatus(
            level=level,
            name=f"{ns}/{self.get_name()}: inference",
            message=message,
            hardware_id=s.device,
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)


class AffordanceNode(AffordanceNodeMixin, Node):
    """Affordance grounding node (see the module docstring for topics and behaviour).

    Args:
        predictor_loader: Builds the predictor from the validated parameters; defaults to
            :func:`load_predictor`. Tests inject fakes here.
        **kwargs: Forwarded to ``rclpy.node.Node`` (e.g. ``cli_args``, ``parameter_overrides``).

    Raises:
        StartupError: Invalid parameters or a predictor that cannot be loaded.
    """

    def __init__(
        self, predictor_loader: Callable[[NodeSettings], Any] | None = None, **kwargs: Any
    ) -> None:
        Node.__init__(self, "affordance_node", **kwargs)
        self._init_parameters(predictor_loader)
        self._configure()
        self._activate()
        s = self.settings
        self.get_logger().info(
            f"ready: model={s.model} checkpoint={s.checkpoint} device={s.device} "
            f"transport={s.transport} vocabulary=[{', '.join(self.vocabulary)}] "
            f"actions={self._actions or 'none yet'}"
        )

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        self._stop_worker()
        super().destroy_node()


def spin_node(make_node: Callable[[], Any], args: list[str] | None) -> int:
    """Init rclpy, build a node, spin it on a multi-threaded executor; map errors to exit codes.

    Returns:
        0 after a normal shutdown, 2 when the node cannot start (one FATAL line, no traceback).
    """
    rclpy.init(args=args)
    node = None
    executor = MultiThreadedExecutor(num_threads=3)
    try:
        node = make_node()
        executor.add_node(node)
        executor.spin()
    except StartupError as exc:
        rclpy.logging.get_logger("affordance_node").fatal(str(exc))
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=5)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(args: list[str] | None = None) -> int:
    """Run the node until shutdown.

    Args:
        args: Command line (defaults to ``sys.argv``), including ``--ros-args ...``.

    Returns:
        Exit status: 0 after a normal shutdown, 2 when the node cannot start.
    """
    return spin_node(AffordanceNode, args)


if __name__ == "__main__":
    sys.exit(main())
