"""The node in its own OS process (pip/venv route), driven over a real, isolated ROS graph.

The node runs the real AffordancePredictor on a tiny model with random backbones; the test
process recomputes the predictor's output on the same frames to check what was published.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ros_helpers import Client, diag_values, make_image, stamp_key, start_node, test_image

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def served(tmp_path_factory, node_env, rclpy_session, tiny_model_files):
    """(node process, client) for a node with image_qos=reliable and default throttling."""
    ckpt, weights = tiny_model_files
    tmp = tmp_path_factory.mktemp("node")
    proc = start_node(
        tmp,
        node_env,
        {
            "checkpoint": str(ckpt),
            "weights_dir": str(weights),
            "image_qos": "reliable",
            "diagnostics_period": 0.5,
            "max_frame_age": 60.0,
        },
    )
    client = Client()
    try:
        if not proc.wait_output("ready:", 60):
            pytest.fail(f"node did not start:\n{proc.output()}")
        client.wait_connected()
        yield proc, client
    finally:
        client.close()
        rc = proc.stop()
        print(f"node exit code {rc}")


_stamp = [1_000_000_000]


def next_stamp() -> int:
    _stamp[0] += 1_000_000
    return _stamp[0]


def send_and_wait(
    client: Client,
    rgb: np.ndarray,
    topic: str = "result",
    n: int = 1,
    compressed: bool = False,
    timeout: float = 20.0,
):
    """Send one frame (resent if lost) and return the outputs on ``topic`` for its stamp."""
    from affordance_ros.conversions import rgb_to_compressed

    ns = next_stamp()
    msg = make_image(rgb, ns)
    if compressed:
        msg = rgb_to_compressed(rgb, "jpeg", header=msg.header)
    key = stamp_key(msg.header)
    client.send(msg, compressed)
    got = client.wait_for(lambda: len(client.outputs_for(topic, key)) >= n, timeout)
    assert got, f"no {topic} output for frame {key}"
    return key, client.outputs_for(topic, key)


def expected(pred, rgb: np.ndarray, actions: list[str]):
    pred.set_image(rgb)
    return pred.predict(actions)


def test_serves_frames_and_follows_action(served, reference_predictor):
    proc, client = served
    from affordance_ros.conversions import image_to_array

    client.action("hold")
    assert proc.wait_output("no image received yet", 10), proc.output()
    rgb = test_image(48, 64, seed=1)
    key, results = send_and_wait(client, rgb)
    hold = results[0].msg
    assert hold.action == "hold" and hold.header.frame_id == "camera"
    assert stamp_key(hold.header) == key
    heat = image_to_array(hold.heatmap)
    assert hold.heatmap.encoding == "32FC1" and heat.shape == (48, 64)
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    ref = expected(reference_predictor, rgb, ["hold"])[0]
    np.testing.assert_allclose(heat, ref.heatmap, atol=1e-4)
    mask = image_to_array(hold.mask)
    assert hold.mask.encoding == "mono8" and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, ref.mask)
    assert (hold.grasp_pixel.x, hold.grasp_pixel.y) == tuple(float(v) for v in ref.peak_xy)
    assert not hold.has_grasp_point and np.isnan(hold.grasp_point.z)

    for topic, enc, shape in (
        ("heatmap", "32FC1", (48, 64)),
        ("mask", "mono8", (48, 64)),
        ("overlay", "rgb8", (48, 64, 3)),
    ):
        outs = client.wait_for(lambda t=topic: client.outputs_for(t, key), 5)
        assert outs, f"no {topic} for {key}"
        img = outs[0].msg
        assert img.encoding == enc and image_to_array(img).shape == shape
        assert img.header.frame_id == "camera" and stamp_key(img.header) == key

    # A new action re-runs the newest frame (same stamp), with a different heatmap.
    client.action("cut_with")
    cut = client.wait_for(
        lambda: [r for r in client.outputs_for("result", key) if r.msg.action == "cut_with"], 15
    )
    assert cut, "no re-run for the new action"
    cut_heat = image_to_array(cut[0].msg.heatmap)
    ref_cut = expected(reference_predictor, rgb, ["cut_with"])[0]
    np.testing.assert_allclose(cut_heat, ref_cut.heatmap, atol=1e-4)
    assert np.abs(cut_heat - heat).max() > 1e-3, "heatmap does not follow the action word"

    # Multi-action request: one array with both, in request order, and one result each.
    client.action("pour, hold")
    time.sleep(0.5)
    rgb2 = test_image(40, 56, seed=2)
    key2, arrays = send_and_wait(client, rgb2, topic="results")
    arr = arrays[0].msg
    assert [r.action for r in arr.results] == ["pour", "hold"]
    refs = expected(reference_predictor, rgb2, ["pour", "hold"])
    for r, ref in zip(arr.results, refs):
        np.testing.assert_allclose(image_to_array(r.heatmap), ref.heatmap, atol=1e-4)
        assert stamp_key(r.header) == key2
    assert client.wait_for(lambda: len(client.outputs_for("result", key2)) == 2, 5)


def test_new_frame_right_after_action_change_answers_instead_of_a_rerun(served):
    """A streaming camera: the frame that follows an action change is what gets processed;
    the previous frame is not re-run for the new action (that would delay the new frame)."""
    _, client = served
    client.action("hold")
    old_key, _ = send_and_wait(client, test_image(48, 64, seed=3))
    client.action("pour")
    _, results = send_and_wait(client, test_image(48, 64, seed=4))
    assert [r.msg.action for r in results] == ["pour"]
    time.sleep(1.0)  # well past action_rerun_delay (0.25 s)
    stale = [r for r in client.outputs_for("result", old_key) if r.msg.action == "pour"]
    assert not stale, "the old frame was re-run although a new frame had arrived"


def _bad_frames():
    from sensor_msgs.msg import Image

    good = make_image(test_image(8, 8), 0)

    def unknown_encoding():
        m = make_image(test_image(8, 8), 0)
        m.encoding = "yuv422_odd"
        return m

    def truncated():
        m = make_image(test_image(8, 8), 0)
        m.data = bytes(m.data)[:50]
        return m

    def empty():
        m = Image(encoding="rgb8", height=0, width=0, step=0)
        return m

    def nan_float():
        arr = np.ones((8, 8), np.float32)
        arr[2, 3] = np.nan
        return make_image(arr, 0, encoding="32FC1")

    del good
    return [
        ("encoding", unknown_encoding, False),
        ("truncated", truncated, False),
        ("empty", empty, False),
        ("nan", nan_float, False),
    ]


def test_bad_inputs_are_skipped_and_node_keeps_serving(served):
    proc, client = served
    client.action("hold")
    time.sleep(0.3)
    for kind, build, compressed in _bad_frames():
        for attempt in range(2):
            bad = build()
            bad.header.stamp.sec, bad.header.stamp.nanosec = divmod(next_stamp(), 10**9)
            client.send(bad, compressed)
            if attempt == 0:
                assert proc.wait_output(f"[{kind}]", 10), f"no log for {kind}:\n{proc.output()}"
            else:
                time.sleep(0.3)
            assert not client.outputs_for("heatmap", stamp_key(bad.header)), kind
        send_and_wait(client, test_image(24, 32, seed=3))
    for words in ("fly", "hold,fly"):
        client.action(words)
    assert proc.wait_output("unknown action(s) ['fly']", 10)
    _, res = send_and_wait(client, test_image(24, 32, seed=4))
    assert res[0].msg.action == "hold", "a rejected request must keep the previous actions"
    log = proc.output()
    for kind, _, _ in _bad_frames():
        assert log.count(f"[{kind}]") == 1, f"{kind} not logged exactly once (throttle):\n{log}"
    assert proc.alive()
    # diagnostics are periodic: wait for a report that counts both rejected requests
    diag = client.wait_for(
        lambda: [
            d
            for d in client.inbox.get("diagnostics")
            if int(diag_values(d.msg).get("errors_action", 0)) >= 2
        ],
        10,
    )
    assert diag, "diagnostics do not report both rejected action requests"
    values = diag_values(diag[-1].msg)
    assert int(values["errors_nan"]) == 2


def test_flood_drops_stale_frames_and_soak_memory(served, reference_predictor):
    proc, client = served
    client.action("hold")
    time.sleep(0.3)
    frames = [test_image(48, 64, seed=s) for s in range(8)]
    send_and_wait(client, frames[0])  # warm
    client.inbox.clear()
    before = diag_values(client.wait_for(lambda: client.inbox.get("diagnostics"), 5)[-1].msg)

    # Flood: back-to-back frames, far faster than inference.
    client.inbox.clear()
    keys = []
    t0 = time.time()
    for i in range(300):
        msg = make_image(frames[i % 8], time.time_ns())
        keys.append(stamp_key(msg.header))
        client.send(msg)
    flood_s = time.time() - t0
    last = keys[-1]
    assert client.wait_for(lambda: client.outputs_for("heatmap", last), 20), (
        "the newest frame of a flood must be processed"
    )
    time.sleep(0.3)
    n_out = len(client.inbox.get("heatmap"))
    assert n_out < 300, "frames were queued instead of dropped"
    # Every flood frame the node received and did not process is counted as dropped; the rest
    # never reached it (the image subscription keeps one frame, so the middleware drops too).
    client.inbox.clear()
    reports = client.wait_for(lambda: client.inbox.get("diagnostics")[1:], 5)
    assert reports, "no diagnostics after the flood"
    after = diag_values(reports[-1].msg)
    received = int(after["frames_received"]) - int(before["frames_received"])
    dropped = int(after["frames_dropped"]) - int(before["frames_dropped"])
    processed = int(after["frames_processed"]) - int(before["frames_processed"])
    assert processed < received or received < 300, "frames were queued instead of dropped"
    assert dropped == received - processed, "dropped frames not reported in diagnostics"
    print(
        f"\nflood: 300 frames in {flood_s:.2f} s -> {received} received, {n_out} processed, "
        f"dropped (diagnostics) {dropped}"
    )

    # Soak: >= 500 frames at ~40 Hz; end-to-end latency and RSS of the node process.
    client.inbox.clear()
    rss = [proc.rss_kb()]
    sent: dict[tuple[int, int], float] = {}
    for i in range(500):
        t_send = time.time()
        msg = make_image(frames[i % 8], time.time_ns())
        sent[stamp_key(msg.header)] = t_send
        client.send(msg)
        if i % 50 == 49:
            rss.append(proc.rss_kb())
        time.sleep(max(0.0, 0.025 - (time.time() - t_send)))
    time.sleep(1.0)
    rss.append(proc.rss_kb())
    e2e = [
        (r.t - sent[stamp_key(r.msg.header)]) * 1e3
        for r in client.inbox.get("heatmap")
        if stamp_key(r.msg.header) in sent
    ]
    pred_ms = [
        float(diag_values(d.msg)["predictor_ms_mean"])
        for d in client.inbox.get("diagnostics")
        if diag_values(d.msg)["predictor_ms_mean"]
    ]
    local = []
    for rgb in frames:
        t = time.perf_counter()
        expected(reference_predictor, rgb, ["hold"])
        local.append((time.perf_counter() - t) * 1e3)
    print(
        f"soak: 500 frames sent, {len(e2e)} processed; e2e image->heatmap ms: "
        f"median {np.median(e2e):.1f} p95 {np.percentile(e2e, 95):.1f} max {max(e2e):.1f}; "
        f"node predictor ms (diag mean) {np.median(pred_ms):.1f}; "
        f"in-test predictor ms median {np.median(local):.1f}"
    )
    print(f"soak RSS kB: {rss} (growth {rss[-1] - rss[1]} kB after warm-up)")
    assert len(e2e) > 0 and proc.alive()
    assert rss[-1] - rss[1] < 150_000, f"RSS grew by {rss[-1] - rss[1]} kB over the soak"


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt"])
def test_bad_checkpoint_exits_with_clear_error(case, tmp_path: Path, node_env, ros_isolation):
    params: dict[str, object] = {}
    if case == "missing":
        params["checkpoint"] = str(tmp_path / "nope" / "model.pt")
    elif case == "corrupt":
        bad = tmp_path / "corrupt.pt"
        bad.write_bytes(b"not a checkpoint")
        params["checkpoint"] = str(bad)
    proc = start_node(tmp_path, node_env, params)
    rc = proc.proc.wait(60)
    out = proc.output()
    proc.stop()
    assert rc == 2, out
    assert "'checkpoint'" in out, out
    if case != "empty":
        assert str(params["checkpoint"]) in out, out


@pytest.mark.parametrize(
    "case",
    [
        "int_for_double_cli",
        "int_for_double_yaml",
        "bad_choice",
        "device_gpu",
        "device_cuda_missing",
    ],
)
def test_bad_parameters_exit_2_with_one_fatal_line(
    case, tmp_path: Path, node_env, ros_isolation, tiny_model_files
):
    """Type, range, choice and device errors: one FATAL line naming the parameter, exit 2,
    no traceback; the device is checked before the (slow) model load."""
    ckpt, weights = tiny_model_files
    params: dict[str, object] = {"checkpoint": str(ckpt), "weights_dir": str(weights)}
    extra: list[str] = []
    name, words = {
        "int_for_double_cli": ("max_rate", "must be a double, got integer 5"),
        "int_for_double_yaml": ("mask_threshold", "must be a double, got integer 1"),
        "bad_choice": ("transport", "use one of: raw, compressed"),
        "device_gpu": ("device", "not a torch device"),
        "device_cuda_missing": ("device", "CUDA is not available"),
    }[case]
    if case == "int_for_double_cli":
        extra = ["-p", "max_rate:=5"]
    elif case == "int_for_double_yaml":
        params["mask_threshold"] = 1
    elif case == "bad_choice":
        params["transport"] = "theora"
    elif case == "device_gpu":
        extra = ["-p", "device:=gpu"]
    else:
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        extra = ["-p", "device:=cuda"]
    proc = start_node(tmp_path, node_env, params, extra_args=extra)
    rc = proc.proc.wait(120)
    out = proc.output()
    proc.stop()
    assert rc == 2, out
    assert "Traceback" not in out, out
    fatal = [line for line in out.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and f"'{name}'" in fatal[0] and words in fatal[0], out
    assert "cannot load checkpoint" not in out


def test_console_script_finds_the_built_messages(
    tmp_path: Path, ros_isolation, msg_prefix, tiny_model_files
):
    """The venv route: `.venv/bin/affordance_node` with no PYTHONPATH or LD_LIBRARY_PATH set
    by hand finds the messages `make msgs` built in build/ros_msgs."""
    import os
    import sys

    exe = Path(sys.executable).parent / "affordance_node"
    if not exe.is_file():
        pytest.skip(f"{exe} not installed (pip install -e . installs it)")
    ckpt, weights = tiny_model_files
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "LD_LIBRARY_PATH",
            "_ROS_WHEELS_BOOTSTRAP_COMPLETE",
            "AMENT_PREFIX_PATH",
        )
    }
    env.update(ros_isolation)
    proc = start_node(
        tmp_path, env, {"checkpoint": str(ckpt), "weights_dir": str(weights)}, cmd=[str(exe)]
    )
    try:
        assert proc.wait_output("ready:", 90), proc.output()
    finally:
        rc = proc.stop()
    assert rc == 0, proc.output()
