"""Helpers for the ROS graph tests: node processes and an in-process client node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STUBS = Path(__file__).resolve().parent / "stubs"


class NodeProcess:
    """A node in its own OS process, with its combined output captured to a file."""

    def __init__(
        self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(cwd or log_path.parent),
        )

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def wait_output(self, text: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.output():
                return True
            if not self.alive():
                return text in self.output()
            time.sleep(0.05)
        return False

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@dataclass
class Received:
    msg: Any
    t: float  # time.time() at reception


@dataclass
class Inbox:
    items: dict[str, list[Received]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic: str, msg: Any) -> None:
        with self.lock:
            self.items.setdefault(topic, []).append(Received(msg, time.time()))

    def get(self, topic: str) -> list[Received]:
        with self.lock:
            return list(self.items.get(topic, []))

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


def stamp_key(header: Any) -> tuple[int, int]:
    return (int(header.stamp.sec), int(header.stamp.nanosec))


class Client:
    """Test-side node: publishes images/actions, records every output of the node under test.

    Args:
        ns: Namespace of the node under test ('' or '/r1').
        image_topic: Topic the node's ``image`` is remapped to (relative to ``ns`` if relative).
        transport: The node's ``transport`` parameter (which image publisher it listens to).
    """

    def __init__(
        self,
        ns: str = "",
        image_topic: str = "image",
        transport: str = "raw",
        action_topic: str = "action",
    ) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from affordance_ros.msg import AffordanceResult, AffordanceResultArray

        self.node = rclpy.create_node(f"test_client_{os.getpid()}_{time.monotonic_ns() % 10**6}")
        self.prefix = p = (ns.rstrip("/") + "/") if ns else ""
        img = image_topic if image_topic.startswith("/") else p + image_topic
        rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.node.create_publisher(Image, img, rel)
        self.pub_compressed = self.node.create_publisher(CompressedImage, img + "/compressed", rel)
        act = action_topic if action_topic.startswith("/") else p + action_topic
        self.pub_action = self.node.create_publisher(String, act, rel)
        self._listened = self.pub_compressed if transport == "compressed" else self.pub_image
        self.inbox = Inbox()
        outs = {
            "heatmap": Image,
            "mask": Image,
            "overlay": Image,
            "result": AffordanceResult,
            "results": AffordanceResultArray,
        }
        for name, typ in outs.items():
            self.node.create_subscription(
                typ,
                p + "affordance/" + name,
                lambda m, n=name: self.inbox.add(n, m),
                QoSProfile(depth=50),
            )
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", lambda m: self.inbox.add("diagnostics", m), 10
        )
        self._String = String
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if (
                self._listened.get_subscription_count() > 0
                and self.pub_action.get_subscription_count() > 0
                and self.node.count_publishers(self._listened.topic_name) >= 1
            ):
                # also wait until our result subscriptions see the node's publishers
                if all(
                    self.node.count_publishers(s.topic_name) > 0 for s in self.node.subscriptions
                ):
                    return
            time.sleep(0.05)
        raise TimeoutError("node under test did not connect")

    def action(self, text: str) -> None:
        self.pub_action.publish(self._String(data=text))

    def send(self, msg: Any, compressed: bool = False) -> None:
        (self.pub_compressed if compressed else self.pub_image).publish(msg)

    def wait_for(self, cond: Callable[[], Any], timeout: float = 15.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = cond()
            if value:
                return value
            time.sleep(0.01)
        return cond()

    def outputs_for(self, topic: str, key: tuple[int, int]) -> list[Received]:
        return [r for r in self.inbox.get(topic) if stamp_key(r.msg.header) == key]

    def close(self) -> None:
        # Stop the spin thread before destroying the node: if the node's last handle is
        # released inside the executor's wait set, rcl_node_fini runs on the spin thread
        # with the GIL held and can deadlock against Fast DDS's listener thread.
        self.executor.shutdown(timeout_sec=10)
        self._thread.join(timeout=10)
        self.executor.remove_node(self.node)
        self.node.destroy_node()


def make_image(
    rgb: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str = "rgb8"
) -> Any:
    """An Image message from an RGB array, stamped ``stamp_ns`` nanoseconds."""
    from affordance_ros.conversions import array_to_image

    msg = array_to_image(rgb, encoding)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return msg


def test_image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB with distinct structure per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), rng.integers(0, 256, (h, w))],
        axis=2,
    )
    return img.astype(np.uint8)


test_image.__test__ = False  # type: ignore[attr-defined]


def diag_values(msg: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}


def write_params(path: Path, params: dict[str, object], node: str = "/**") -> Path:
    """Write a ROS 2 parameters YAML file for ``node`` (default: any node)."""
    import yaml

    path.write_text(yaml.safe_dump({node: {"ros__parameters": params}}))
    return path


def start_node(
    tmp: Path,
    env: dict[str, str],
    params: dict[str, object],
    extra_args: list[str] = (),
    name: str = "node",
    cmd: list[str] | None = None,
) -> NodeProcess:
    """Start ``python -m affordance_ros.node`` (or ``cmd``) with a params file and --ros-args."""
    pfile = write_params(tmp / f"{name}_params.yaml", params)
    base = cmd or [sys.executable, "-m", "affordance_ros.node"]
    argv = [*base, "--ros-args", "--params-file", str(pfile), *extra_args]
    return NodeProcess(argv, env, tmp / f"{name}.log", cwd=REPO)
