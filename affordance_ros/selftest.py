"""Run the node for a few seconds on synthetic camera frames and report what it published.

``run_node_selftest(checkpoint)`` (used by ``affordance-demo``) starts ``affordance_node`` in
its own process and a publisher/subscriber client in another, both with the environment of
:func:`affordance_ros.env.ros_env`, on a private ROS domain id. The client sends ego views of
the synthetic world at ``rate`` Hz with action words taken in turn from the model vocabulary,
and summarises the outputs: counts per topic, encodings, value ranges, end-to-end latency
(image stamp to heatmap reception) and the node's own diagnostics.

Command line: ``python -m affordance_ros.selftest --checkpoint MODEL.pt [--seconds S]``;
the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .env import DEFAULT_MSG_PREFIX, ros_env

__all__ = ["run_node_selftest"]


def run_node_selftest(
    checkpoint: str | os.PathLike,
    seconds: float = 5.0,
    rate: float = 10.0,
    log_dir: str | os.PathLike | None = None,
    msg_prefix: str | os.PathLike = DEFAULT_MSG_PREFIX,
    weights_dir: str | os.PathLike | None = None,
    image_size: int = 160,
    node_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start node + client processes; returns the client's JSON summary.

    ``log_dir`` keeps the node's log and ``ROS_LOG_DIR``; without it they go to a temporary
    folder that is removed afterwards (a failure's message holds the log's tail).
    ``node_params`` are extra ``-p name:=value`` parameters for the node.

    Raises:
        FileNotFoundError: the messages are not built (``make msgs``).
        RuntimeError: the node or the client failed (the message holds their last output).
    """
    args = (checkpoint, seconds, rate, msg_prefix, weights_dir, image_size, node_params)
    if log_dir is not None:
        return _run_node_selftest(Path(log_dir), *args)
    with tempfile.TemporaryDirectory(prefix="affordance_selftest_") as tmp:
        return _run_node_selftest(Path(tmp), *args)


def _run_node_selftest(
    log_dir: Path,
    checkpoint: str | os.PathLike,
    seconds: float,
    rate: float,
    msg_prefix: str | os.PathLike,
    weights_dir: str | os.PathLike | None,
    image_size: int,
    node_params: dict[str, Any] | None,
) -> dict[str, Any]:
    log_dir.mkdir(parents=True, exist_ok=True)
    env = ros_env(msg_prefix)
    env.update(
        ROS_DOMAIN_ID=str(100 + os.getpid() % 100),
        ROS_LOG_DIR=str(log_dir),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONUNBUFFERED="1",
    )
    fastdds = Path(__file__).resolve().parent.parent / "config" / "fastdds.xml"
    if fastdds.is_file():
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(fastdds)
    from affordance_core.checkpoint import read_checkpoint

    model_name = read_checkpoint(checkpoint)["config"]["name"]
    node_log = open(log_dir / "node.log", "w")
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "affordance_ros.node",
            "--ros-args",
            "-p",
            f"checkpoint:={Path(checkpoint).resolve()}",
            "-p",
            f"model:={model_name}",
            "-p",
            "image_qos:=reliable",
            *(["-p", f"weights_dir:={Path(weights_dir).resolve()}"] if weights_dir else []),
            *[
                arg
                for name, value in (node_params or {}).items()
                for arg in ("-p", f"{name}:={value}")
            ],
        ],
        env=env,
        stdout=node_log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = subprocess.run(
            [
                sys.executable,
                "-m",
                "affordance_ros.selftest",
                "--client",
                "--checkpoint",
                str(checkpoint),
                "--seconds",
                str(seconds),
                "--rate",
                str(rate),
                "--image-size",
                str(image_size),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()
        node_log.close()
    lines = [line for line in client.stdout.splitlines() if line.startswith("{")]
    if client.returncode != 0 or not lines:
        tail = (log_dir / "node.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"node self-test failed: {client.stderr[-800:]} | node: {tail}")
    return json.loads(lines[-1])


def _client(checkpoint: Path, seconds: float, rate: float, size: int) -> dict[str, Any]:
    import numpy as np
    import rclpy
    import torch
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from affordance_core.synthetic.world import OBJECTS, list_actions, render_scene
    from affordance_ros.msg import AffordanceResult

    from .conversions import array_to_image, image_to_array

    vocabulary = torch.load(checkpoint, map_location="cpu", weights_only=False)["vocabulary"]
    rng = np.random.default_rng(0)
    scenes = []
    for obj in OBJECTS:
        actions = [a for a in list_actions(obj) if a in vocabulary]
        if actions:
            scenes.append((render_scene(rng, obj, size=size, view="ego").image, actions[0]))

    rclpy.init()
    node = rclpy.create_node("affordance_selftest_client")
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub_image = node.create_publisher(Image, "image", reliable)
    pub_action = node.create_publisher(String, "action", reliable)
    received: dict[str, list] = {"heatmap": [], "mask": [], "overlay": [], "result": []}
    latency: list[float] = []
    diagnostics: list = []

    def on_heatmap(msg: Image) -> None:
        received["heatmap"].append(msg)
        sent = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        latency.append((time.time() - sent) * 1000.0)

    node.create_subscription(Image, "affordance/heatmap", on_heatmap, QoSProfile(depth=50))
    for name in ("mask", "overlay"):
        node.create_subscription(
            Image,
            f"affordance/{name}",
            lambda m, n=name: received[n].append(m),
            QoSProfile(depth=50),
        )
    node.create_subscription(
        AffordanceResult,
        "affordance/result",
        lambda m: received["result"].append(m),
        QoSProfile(depth=50),
    )
    node.create_subscription(DiagnosticArray, "diagnostics", diagnostics.append, 10)

    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + 60.0
    while pub_image.get_subscription_count() == 0 and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    sent = 0

    def publish_frame() -> None:
        nonlocal sent
        image, action = scenes[sent % len(scenes)]
        pub_action.publish(String(data=action))
        msg = array_to_image(image, "rgb8")
        now = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int(now % 1 * 1e9)
        msg.header.frame_id = "camera"
        pub_image.publish(msg)
        sent += 1

    # A timer drives the frames and the executor sleeps between events, so the client takes
    # as little CPU from the node as it can.
    timer = node.create_timer(1.0 / rate, publish_frame)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.1)
    node.destroy_timer(timer)
    settle = time.monotonic() + 2.0
    while time.monotonic() < settle:
        executor.spin_once(timeout_sec=0.05)

    summary: dict[str, Any] = {
        "frames_sent": sent,
        "received": {k: len(v) for k, v in received.items()},
    }
    if received["heatmap"]:
        last = received["heatmap"][-1]
        values = image_to_array(last)
        summary["heatmap"] = {
            "encoding": last.encoding,
            "size": [last.width, last.height],
            "min": round(float(values.min()), 3),
            "max": round(float(values.max()), 3),
            "frame_id": last.header.frame_id,
        }
        lat = np.array(latency)
        summary["latency_ms"] = {
            "median": round(float(np.median(lat)), 1),
            "p95": round(float(np.percentile(lat, 95)), 1),
        }
    if received["mask"]:
        summary["mask_encoding"] = received["mask"][-1].encoding
    if received["result"]:
        res = received["result"][-1]
        summary["last_result"] = {
            "action": res.action,
            "score": round(float(res.score), 3),
            "grasp_pixel": [round(res.grasp_pixel.x), round(res.grasp_pixel.y)],
        }
    reports = [{kv.key: kv.value for kv in d.status[0].values} for d in diagnostics if d.status]
    busy = [r for r in reports if r.get("predictor_ms_mean")]
    if busy or reports:
        summary["diagnostics"] = (busy or reports)[-1]
    node.destroy_node()
    rclpy.shutdown()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run affordance_node on synthetic frames.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--image-size", type=int, default=160, help="square frame side")
    parser.add_argument("--weights-dir", help="backbone weights folder for the node")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(_client(Path(args.checkpoint), args.seconds, args.rate, args.image_size)))
    else:
        print(
            json.dumps(
                run_node_selftest(
                    args.checkpoint,
                    args.seconds,
                    args.rate,
                    weights_dir=args.weights_dir,
                    image_size=args.image_size,
                )
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
