"""The node as a robot integrates it, in its own process on a real, isolated ROS graph.

One node runs in namespace /r1 with ``transport:=compressed`` and ``use_depth:=true``; the
tests drive it with PNG frames (lossless, so the in-test reference predictor sees the same
pixels), depth images and camera_info, call its services and change its parameters.
Covers: synchronised depth (issue 18 item 1), services and vocabulary (3), live parameters
(5), one transport (6), diagnostics on /diagnostics (7), bandwidth (9), RViz outputs (12).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import VOCAB
from ros_helpers import Client, make_image, stamp_key, start_node, test_image

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]

NS = "/r1"
NODE = f"{NS}/affordance_node"
FRAME = "cam_optical"
K = (40.0, 0.0, 31.5, 0.0, 42.0, 23.5, 0.0, 0.0, 1.0)  # fx, cx, fy, cy for 64x48


class Robot:
    """Client for the robot node: frames, depth, camera_info, services and parameters."""

    def __init__(self) -> None:
        from geometry_msgs.msg import PointStamped
        from rcl_interfaces.srv import SetParameters
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from visualization_msgs.msg import Marker

        from affordance_ros.msg import AffordanceVocabulary
        from affordance_ros.srv import Query, SetActions

        self.c = Client(ns=NS, transport="compressed")
        n = self.c.node
        rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_depth = n.create_publisher(Image, f"{NS}/depth", rel)
        self.pub_info = n.create_publisher(CameraInfo, f"{NS}/camera_info", rel)
        for name, typ in (
            ("grasp_point", PointStamped),
            ("marker", Marker),
            ("camera_info", CameraInfo),
        ):
            n.create_subscription(
                typ,
                f"{NS}/affordance/{name}",
                lambda m, k=name: self.c.inbox.add(k, m),
                QoSProfile(depth=50),
            )
        self.latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.vocab_type = AffordanceVocabulary
        self.set_actions = n.create_client(SetActions, f"{NS}/affordance/set_actions")
        self.query = n.create_client(Query, f"{NS}/affordance/query")
        self.set_params = n.create_client(SetParameters, f"{NODE}/set_parameters")
        self.SetParameters = SetParameters
        self.Query, self.SetActions = Query, SetActions

    def call(self, client, request, timeout: float = 60.0):
        assert client.wait_for_service(timeout_sec=30), f"service {client.srv_name} missing"
        fut = client.call_async(request)
        assert self.c.wait_for(fut.done, timeout), f"no answer from {client.srv_name}"
        return fut.result()

    def param(self, **values):
        """Set parameters on the node; returns the SetParametersResult list."""
        from rclpy.parameter import Parameter

        req = self.SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        return self.call(self.set_params, req).results

    def info(self, stamp_ns: int, frame: str = FRAME, hw=(48, 64)):
        from sensor_msgs.msg import CameraInfo

        msg = CameraInfo(height=hw[0], width=hw[1], k=list(K))
        msg.header.frame_id = frame
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
        return msg

    def frame(self, rgb: np.ndarray, stamp_ns: int, frame: str = FRAME):
        from affordance_ros.conversions import rgb_to_compressed

        return rgb_to_compressed(rgb, "png", header=make_image(rgb, stamp_ns, frame).header)

    def send_rgbd(
        self,
        rgb,
        depth,
        encoding: str,
        stamp_ns: int,
        depth_dt: float = 0.0,
        depth_frame: str = FRAME,
        topic: str = "result",
        timeout: float = 30.0,
    ):
        """Publish camera_info + depth, then the frame; return the frame's outputs."""
        d_ns = stamp_ns + int(depth_dt * 1e9)
        self.pub_info.publish(self.info(d_ns, depth_frame))
        self.pub_depth.publish(make_image(depth, d_ns, depth_frame, encoding=encoding))
        time.sleep(0.2)  # ordering help only: the node also waits up to sync_slop for depth
        msg = self.frame(rgb, stamp_ns)
        key = stamp_key(msg.header)
        self.c.send(msg, compressed=True)
        got = self.c.wait_for(lambda: self.c.outputs_for(topic, key), timeout)
        assert got, f"no {topic} for frame {key}"
        return key, got

    def close(self) -> None:
        self.c.close()


@pytest.fixture(scope="module")
def robot(tmp_path_factory, node_env, rclpy_session, tiny_model_files):
    ckpt, weights = tiny_model_files
    tmp = tmp_path_factory.mktemp("robot")
    proc = start_node(
        tmp,
        node_env,
        {
            "checkpoint": str(ckpt),
            "weights_dir": str(weights),
            "image_qos": "reliable",
            "transport": "compressed",
            "use_depth": True,
            "default_action": "hold",
            "diagnostics_period": 0.5,
            "stale_input_warn": 1.5,
            "stale_input_error": 3.0,
            "max_frame_age": 60.0,
            "max_depth_age": 10.0,
            "sync_slop": 0.05,
            # QoS overrides (item 11): an input and an output
            f"qos_overrides.{NS}/depth.subscription.reliability": "reliable",
            f"qos_overrides.{NS}/affordance/marker.publisher.durability": "transient_local",
        },
        extra_args=["-r", f"__ns:={NS}"],
    )
    r = Robot()
    try:
        if not proc.wait_output("ready:", 90):
            pytest.fail(f"node did not start:\n{proc.output()}")
        r.c.wait_connected(60)
        yield proc, r
    finally:
        r.close()
        rc = proc.stop()
        print(f"node exit code {rc}")


def expect(pred, rgb, actions):
    pred.set_image(rgb)
    return pred.predict(actions)


def backproject(px, py, z):
    fx, cx, fy, cy = K[0], K[2], K[4], K[5]
    return ((px - cx) * z / fx, (py - cy) * z / fy, z)


# ----------------------------------------------------------------------------- item 1: depth
def test_grasp_point_only_from_synchronised_registered_depth(robot, reference_predictor):
    proc, r = robot
    rgb = test_image(48, 64, seed=11)
    ref = expect(reference_predictor, rgb, ["hold"])[0]
    now = time.time_ns()

    # Matched 16UC1 in millimetres (depth_scale 0.001): the point is the peak at 1.5 m.
    key, res = r.send_rgbd(rgb, np.full((48, 64), 1500, np.uint16), "16UC1", now)
    out = res[0].msg
    assert out.has_grasp_point, out.grasp_point_status
    assert out.grasp_point_status == "" and out.grasp_point_frame == FRAME
    np.testing.assert_allclose(
        [out.grasp_point.x, out.grasp_point.y, out.grasp_point.z],
        backproject(*ref.peak_xy, 1.5),
        atol=1e-5,
    )
    # The same point as PointStamped, a marker there, and camera_info beside the heatmap.
    for topic in ("grasp_point", "marker", "camera_info"):
        got = r.c.wait_for(lambda t=topic: r.c.outputs_for(t, key), 10)
        assert got, f"no {topic} for the frame"
    ps = r.c.outputs_for("grasp_point", key)[0].msg
    assert ps.header.frame_id == FRAME and abs(ps.point.z - 1.5) < 1e-6
    mk = r.c.outputs_for("marker", key)[0].msg
    assert abs(mk.pose.position.z - 1.5) < 1e-6 and mk.header.frame_id == FRAME
    assert tuple(r.c.outputs_for("camera_info", key)[0].msg.k) == K

    # 32FC1 in metres.
    _, res = r.send_rgbd(rgb, np.full((48, 64), 2.0, np.float32), "32FC1", now + 10**8)
    assert res[0].msg.has_grasp_point and abs(res[0].msg.grasp_point.z - 2.0) < 1e-6

    # Depth stamped 1 s before the image (the stale-depth case): no point.
    _, res = r.send_rgbd(
        rgb, np.full((48, 64), 1000, np.uint16), "16UC1", now + 2 * 10**8, depth_dt=-1.0
    )
    out = res[0].msg
    assert not out.has_grasp_point and np.isnan(out.grasp_point.z)
    assert "sync_slop" in out.grasp_point_status, out.grasp_point_status

    # Depth with the image's stamp but another frame: no point, and the status says why.
    _, res = r.send_rgbd(
        rgb,
        np.full((48, 64), 1000, np.uint16),
        "16UC1",
        now + 3 * 10**8,
        depth_frame="some_other_depth_frame",
    )
    out = res[0].msg
    assert not out.has_grasp_point
    assert "some_other_depth_frame" in out.grasp_point_status, out.grasp_point_status

    # Image and depth both 60 s old (max_depth_age 10 s): no point.
    old = time.time_ns() - 60 * 10**9
    _, res = r.send_rgbd(rgb, np.full((48, 64), 1000, np.uint16), "16UC1", old)
    assert not res[0].msg.has_grasp_point
    assert "max_depth_age" in res[0].msg.grasp_point_status, res[0].msg.grasp_point_status
    assert proc.alive()


def test_depth_scale_and_target_frame_are_live(robot):
    proc, r = robot
    rgb = test_image(48, 64, seed=12)
    assert all(x.successful for x in r.param(depth_scale=0.0005))
    _, res = r.send_rgbd(rgb, np.full((48, 64), 3000, np.uint16), "16UC1", time.time_ns())
    assert res[0].msg.has_grasp_point and abs(res[0].msg.grasp_point.z - 1.5) < 1e-5

    # target_frame without tf2 (not on PyPI): the point stays in the camera frame, and the
    # result says that no transform was available.
    assert all(x.successful for x in r.param(target_frame="base_link", depth_scale=0.001))
    try:
        _, res = r.send_rgbd(rgb, np.full((48, 64), 1200, np.uint16), "16UC1", time.time_ns())
        out = res[0].msg
        assert out.has_grasp_point and out.grasp_point_frame == FRAME
        assert "no transform" in out.grasp_point_status and "base_link" in out.grasp_point_status
    finally:
        r.param(target_frame="")


# ------------------------------------------------------------------------- item 6: transport
def test_one_result_per_frame_with_both_transports_publishing(robot):
    _, r = robot
    assert r.c.pub_image.get_subscription_count() == 0, "raw image subscribed too"
    keys = []
    for i in range(6):
        rgb = test_image(32, 40, seed=20 + i)
        comp = r.frame(rgb, time.time_ns())
        raw = make_image(rgb, 0, FRAME)
        raw.header = comp.header
        r.c.send(raw)
        r.c.send(comp, compressed=True)
        key = stamp_key(comp.header)
        keys.append(key)
        assert r.c.wait_for(lambda k=key: r.c.outputs_for("result", k), 30), f"no result {i}"
    time.sleep(1.0)  # let any duplicate arrive before counting
    counts = [len(r.c.outputs_for("result", k)) for k in keys]
    assert counts == [1] * 6, counts


# ---------------------------------------------------------------------------- item 3: services
def test_set_actions_service_vocabulary_and_pause(robot, reference_predictor):
    proc, r = robot
    resp = r.call(r.set_actions, r.SetActions.Request(actions=["pour", "hold"]))
    assert resp.success and list(resp.active_actions) == ["pour", "hold"]
    assert list(resp.vocabulary) == VOCAB
    bad = r.call(r.set_actions, r.SetActions.Request(actions=["fly"]))
    assert not bad.success and "fly" in bad.message
    assert list(bad.active_actions) == ["pour", "hold"], "a rejected call changed the actions"

    # The vocabulary topic is transient local: a subscriber that joins late still gets it.
    got = []
    sub = r.c.node.create_subscription(
        r.vocab_type, f"{NS}/affordance/vocabulary", got.append, r.latched
    )
    try:
        assert r.c.wait_for(lambda: got, 20), "no vocabulary for a late subscriber"
        assert list(got[-1].vocabulary) == VOCAB
        assert list(got[-1].active_actions) == ["pour", "hold"]

        rgb = test_image(32, 40, seed=30)
        msg = r.frame(rgb, time.time_ns())
        r.c.send(msg, compressed=True)
        arr = r.c.wait_for(lambda: r.c.outputs_for("results", stamp_key(msg.header)), 30)
        assert [x.action for x in arr[0].msg.results] == ["pour", "hold"]

        # An empty list pauses inference: frames get no output, the topic says so.
        resp = r.call(r.set_actions, r.SetActions.Request(actions=[]))
        assert resp.success and list(resp.active_actions) == []
        assert r.c.wait_for(lambda: got and list(got[-1].active_actions) == [], 20)
        paused = r.frame(test_image(32, 40, seed=31), time.time_ns())
        r.c.send(paused, compressed=True)
        assert proc.wait_output("inference paused", 10)

        # Query: the newest frame (received while paused), with explicit actions.
        for _ in range(40):  # until the paused frame has reached the node
            q = r.call(r.query, r.Query.Request(actions=["cut_with"]))
            assert q.success, q.message
            if stamp_key(q.results.header) == stamp_key(paused.header):
                break
            time.sleep(0.25)
        assert stamp_key(q.results.header) == stamp_key(paused.header)
        assert [x.action for x in q.results.results] == ["cut_with"]
        # Query with a given raw image.
        rgb2 = test_image(40, 56, seed=32)
        img = make_image(rgb2, 123, FRAME)
        q = r.call(r.query, r.Query.Request(image=img, actions=["pour", "hold"]))
        assert q.success, q.message
        from affordance_ros.conversions import image_to_array

        refs = expect(reference_predictor, rgb2, ["pour", "hold"])
        for res, ref in zip(q.results.results, refs):
            np.testing.assert_allclose(image_to_array(res.heatmap), ref.heatmap, atol=1e-4)
        # Query while paused without actions: refused with the reason.
        q = r.call(r.query, r.Query.Request())
        assert not q.success and "paused" in q.message
        time.sleep(0.5)
        assert not r.c.outputs_for("result", stamp_key(paused.header)), "paused node published"
    finally:
        r.c.node.destroy_subscription(sub)
        r.call(r.set_actions, r.SetActions.Request(actions=["hold"]))


# ------------------------------------------------------------------------ item 5: live params
def test_live_parameters_take_effect_on_next_frame(robot, reference_predictor):
    _, r = robot
    from affordance_ros.conversions import image_to_array

    rgb = test_image(48, 64, seed=40)
    results = r.param(mask_threshold=0.8)
    assert results[0].successful, results[0].reason
    try:
        key, res = r.send_rgbd(rgb, np.full((48, 64), 1000, np.uint16), "16UC1", time.time_ns())
        reference_predictor.mask_threshold = 0.8
        ref = expect(reference_predictor, rgb, ["hold"])[0]
        np.testing.assert_array_equal(image_to_array(res[0].msg.mask) == 255, ref.mask)
        reference_predictor.mask_threshold = 0.5
        ref5 = expect(reference_predictor, rgb, ["hold"])[0]
        assert ref5.mask.sum() > ref.mask.sum(), "test image does not separate thresholds"

        assert r.param(min_score=1.0)[0].successful
        _, res = r.send_rgbd(rgb, np.full((48, 64), 1000, np.uint16), "16UC1", time.time_ns())
        out = res[0].msg
        assert not out.has_grasp_point and "min_score" in out.grasp_point_status
        assert not (image_to_array(out.mask) > 0).any()
    finally:
        reference_predictor.mask_threshold = 0.5
        r.param(mask_threshold=0.5, min_score=0.0)

    rejected = {
        "model": ("paper", "read-only"),
        "mask_threshold": (1.5, "range"),
        "max_rate": ("fast", "type"),
        "default_action": ("fly", "unknown"),
    }
    for name, (value, why) in rejected.items():
        result = r.param(**{name: value})[0]
        assert not result.successful and why in result.reason.lower(), (name, result.reason)


# ---------------------------------------------------------------------- item 7: diagnostics
class Streamer:
    """Publishes PNG frames at about ``rate`` Hz from a thread until stopped."""

    def __init__(self, r: Robot, rate: float = 4.0) -> None:
        self.r, self.period, self._stop = r, 1.0 / rate, threading.Event()
        self.bad_next = False
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        from sensor_msgs.msg import CompressedImage

        rgb = test_image(32, 40, seed=50)
        while not self._stop.is_set():
            if self.bad_next:
                self.bad_next = False
                bad = CompressedImage(format="png", data=b"\x89PNGgarbage" * 8)
                self.r.c.send(bad, compressed=True)
            else:
                self.r.c.send(self.r.frame(rgb, time.time_ns()), compressed=True)
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)


def test_diagnostics_on_absolute_topic_ok_warn_error_ok(robot):
    _, r = robot
    from diagnostic_msgs.msg import DiagnosticStatus

    def statuses():
        return [
            s
            for d in r.c.inbox.get("diagnostics")
            for s in d.msg.status
            if s.name.startswith(NODE)
        ]

    def seen(level, after, text=""):
        return r.c.wait_for(
            lambda: [s for s in statuses()[after:] if s.level == level and text in s.message], 40
        )

    stream = Streamer(r)
    try:
        n0 = len(statuses())
        assert seen(DiagnosticStatus.OK, n0, "processing"), [s.message for s in statuses()]
        # A rejected frame: WARN for that window only, then OK again (windowed counts).
        n1 = len(statuses())
        stream.bad_next = True
        assert seen(DiagnosticStatus.WARN, n1, "inputs rejected"), statuses()[n1:]
        n2 = len(statuses())
        assert seen(DiagnosticStatus.OK, n2, "processing"), "WARN did not clear"
    finally:
        stream.stop()
    # Stale input: WARN, then ERROR.
    n3 = len(statuses())
    assert seen(DiagnosticStatus.WARN, n3, "no image"), [s.message for s in statuses()[n3:]]
    assert seen(DiagnosticStatus.ERROR, n3, "no image"), [s.message for s in statuses()[n3:]]
    n4 = len(statuses())
    stream = Streamer(r)
    try:
        assert seen(DiagnosticStatus.OK, n4, "processing"), "did not recover from stale input"
    finally:
        stream.stop()


# ---------------------------------------------------------- item 12: warm-up, max_frame_age
def test_warm_up_before_ready_and_rerun_only_for_young_frames(robot):
    proc, r = robot
    out = proc.output()
    assert "warm-up inference done" in out and out.index("warm-up inference") < out.index("ready:")
    msg = r.frame(test_image(32, 40, seed=70), time.time_ns())
    key = stamp_key(msg.header)
    r.c.send(msg, compressed=True)
    assert r.c.wait_for(lambda: r.c.outputs_for("result", key), 30)
    assert r.param(max_frame_age=0.0)[0].successful
    try:
        assert r.call(r.set_actions, r.SetActions.Request(actions=["pour"])).success
        time.sleep(2.0)  # well past action_rerun_delay: a re-run would have arrived
        assert not [x for x in r.c.outputs_for("result", key) if x.msg.action == "pour"], (
            "a frame older than max_frame_age was re-run"
        )
        assert r.param(max_frame_age=600.0)[0].successful
        assert r.call(r.set_actions, r.SetActions.Request(actions=["cut_with"])).success
        assert r.c.wait_for(
            lambda: [x for x in r.c.outputs_for("result", key) if x.msg.action == "cut_with"], 30
        ), "no re-run of a young frame after an action change"
    finally:
        r.param(max_frame_age=60.0)
        r.call(r.set_actions, r.SetActions.Request(actions=["hold"]))


# ------------------------------------------------------------- item 8: large and non-square
def test_large_frames_are_downscaled_and_non_square_frames_can_be_padded(
    robot, reference_predictor
):
    _, r = robot
    import cv2

    from affordance_ros.conversions import image_to_array

    rgb = test_image(48, 64, seed=60)
    depth = np.full((48, 64), 1000, np.uint16)
    assert r.param(max_image_side=32)[0].successful
    try:
        _, res = r.send_rgbd(rgb, depth, "16UC1", time.time_ns())
        heat = image_to_array(res[0].msg.heatmap)
        assert heat.shape == (24, 32), "a frame over max_image_side was not downscaled"
        small = cv2.resize(rgb, (32, 24), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(
            heat, expect(reference_predictor, small, ["hold"])[0].heatmap, atol=1e-4
        )
        # the grasp point still comes from the full-size depth (pixel scaled between sizes)
        assert res[0].msg.has_grasp_point, res[0].msg.grasp_point_status
    finally:
        r.param(max_image_side=2048)
    assert r.param(pad_to_square=True)[0].successful
    try:
        _, res = r.send_rgbd(rgb, depth, "16UC1", time.time_ns())
        heat = image_to_array(res[0].msg.heatmap)
        padded = np.zeros((64, 64, 3), np.uint8)
        padded[:48] = rgb
        ref = expect(reference_predictor, padded, ["hold"])[0].heatmap[:48]
        assert heat.shape == (48, 64)
        np.testing.assert_allclose(heat, ref, atol=1e-4)
        stretched = expect(reference_predictor, rgb, ["hold"])[0].heatmap
        assert np.abs(stretched - ref).max() > 1e-3, "padding and stretching do not differ"
    finally:
        r.param(pad_to_square=False)


# ------------------------------------------------------------------------ item 11: QoS overrides
def test_qos_of_inputs_and_outputs_can_be_overridden(robot):
    _, r = robot
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    n = r.c.node
    subs = r.c.wait_for(lambda: n.get_subscriptions_info_by_topic(f"{NS}/depth"), 20)
    assert subs and subs[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE
    pubs = r.c.wait_for(lambda: n.get_publishers_info_by_topic(f"{NS}/affordance/marker"), 20)
    assert pubs and pubs[0].qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
    # an output without an override keeps the default (volatile)
    mask = n.get_publishers_info_by_topic(f"{NS}/affordance/mask")
    assert mask and mask[0].qos_profile.durability == DurabilityPolicy.VOLATILE


# ------------------------------------------- item 9: bandwidth (last: it drops subscriptions)
def test_publishes_only_to_subscribed_topics_and_results_without_images(robot):
    _, r = robot

    def window_values(after):
        return [
            {kv.key: kv.value for kv in s.values}
            for d in r.c.inbox.get("diagnostics")[after:]
            for s in d.msg.status
            if s.name.startswith(NODE)
        ]

    assert r.param(results_include_images=False)[0].successful
    keep = {f"{NS}/affordance/results", "/diagnostics"}
    for sub in list(r.c.node.subscriptions):
        if sub.topic_name not in keep:
            r.c.node.destroy_subscription(sub)
    stream = Streamer(r)
    try:
        r.c.inbox.clear()
        arr = r.c.wait_for(lambda: r.c.inbox.get("results"), 30)
        assert arr, "no results"
        time.sleep(1.5)  # discovery of the removed subscriptions reaches the node
        n = len(r.c.inbox.get("diagnostics"))
        quiet = r.c.wait_for(
            lambda: [
                v
                for v in window_values(n)
                if float(v["rate_hz"]) > 0 and int(v["published_bytes_per_s"]) == 0
            ],
            30,
        )
        assert quiet, window_values(n)
        res = r.c.inbox.get("results")[-1].msg.results[0]
        assert res.heatmap.width == 0 and len(res.heatmap.data) == 0
        assert res.header.frame_id == FRAME
        assert r.param(results_include_images=True)[0].successful
        n = len(r.c.inbox.get("diagnostics"))
        loud = r.c.wait_for(
            lambda: [v for v in window_values(n) if int(v["published_bytes_per_s"]) > 0], 30
        )
        assert loud, window_values(n)
        assert r.c.wait_for(
            lambda: r.c.inbox.get("results")[-1].msg.results[0].heatmap.width == 40, 20
        )
    finally:
        stream.stop()
