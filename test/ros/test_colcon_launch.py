"""`colcon build` of a workspace holding this repository, then the installed node and launch file.

The launch test uses *stubbed launch semantics* (ROS 2 `launch`/`launch_ros` are not
installable here): stubs under test/ros/stubs record what the installed
``affordance.launch.py`` declares, and the test starts the recorded Node itself as a real OS
process with rcl's ``--ros-args -r __ns:=... --params-file ... -r image:=...``. It checks the
argument wiring, parameter files, namespace and remaps on a live graph; it does not cover
`ros2 launch` itself, event handlers, conditions, OpaqueFunction, composable nodes or
launch_testing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ros_helpers import (
    REPO,
    STUBS,
    Client,
    NodeProcess,
    make_image,
    stamp_key,
    test_image,
    write_params,
)

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

_SKIP = {
    ".git",
    ".venv",
    "build",
    "install",
    "log",
    "runs",
    "outputs",
    ".pytest_cache",
    "__pycache__",
    ".whl",
    ".gl",
    "test",
    "bench",
    "docs",
}


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory) -> Path:
    """Install space of ``colcon build`` over a copy of the repository (code files only)."""
    if shutil.which("colcon", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("colcon is not installed in this environment (see the Makefile)")
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(
        REPO,
        ws / "src" / "affordance_ros",
        ignore=lambda d, names: [n for n in names if n in _SKIP],
    )
    venv = sys.prefix
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMENT")}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        AMENT_PREFIX_PATH=venv,
        CMAKE_PREFIX_PATH=venv,
    )
    # The wheels' exported cmake files need the include-path fix that build_msgs.sh applies.
    subprocess.run(
        ["bash", str(REPO / "scripts" / "build_msgs.sh"), str(REPO / "build" / "ros_msgs")],
        check=True,
        capture_output=True,
    )
    res = subprocess.run(
        [
            "colcon",
            "build",
            "--event-handlers",
            "console_direct-",
            "--cmake-args",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DBUILD_TESTING=OFF",
        ],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert res.returncode == 0, f"colcon build failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    install = ws / "install"
    share = install / "affordance_ros" / "share" / "affordance_ros"
    assert (share / "launch" / "affordance.launch.py").is_file()
    assert (share / "config" / "affordance.yaml").is_file()
    for exe in ("affordance_node", "affordance_lifecycle_node"):
        assert os.access(install / "affordance_ros" / "lib" / "affordance_ros" / exe, os.X_OK)
    return install


def installed_env(install: Path, iso: dict[str, str]) -> dict[str, str]:
    """The environment of ``source install/setup.bash`` (nothing from the source tree)."""
    out = subprocess.run(
        ["bash", "-c", f"source {install}/setup.bash && env -0"],
        capture_output=True,
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE")
        },
        check=True,
    ).stdout.decode()
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    env["AMENT_PREFIX_PATH"] = f"{env.get('AMENT_PREFIX_PATH', '')}:{sys.prefix}".strip(":")
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    env.update(iso)
    return env


def _serve_one(client: Client, rgb, key_ns: int, topic: str = "heatmap"):
    msg = make_image(rgb, key_ns)
    key = stamp_key(msg.header)
    for _ in range(5):  # sensor_data QoS: resend if the frame was lost
        client.send(msg)
        if client.wait_for(lambda: client.outputs_for(topic, key), 6):
            break
    return client.outputs_for(topic, key)


def test_ros2_run_installed_node(
    colcon_install, tmp_path, ros_isolation, rclpy_session, tiny_model_files, reference_predictor
):
    ckpt, weights = tiny_model_files
    env = installed_env(colcon_install, ros_isolation)
    params = write_params(
        tmp_path / "p.yaml",
        {"checkpoint": str(ckpt), "weights_dir": str(weights), "default_action": "cut_with"},
    )
    exe = colcon_install / "affordance_ros" / "lib" / "affordance_ros" / "affordance_node"
    proc = NodeProcess(
        [str(exe), "--ros-args", "--params-file", str(params), "-r", "image:=camera/color"],
        env,
        tmp_path / "node.log",
        cwd=tmp_path,
    )
    client = Client(image_topic="camera/color")
    try:
        assert proc.wait_output("ready:", 60), proc.output()
        where = subprocess.run(
            [
                sys.executable,
                "-c",
                "import affordance_ros.node as n, affordance_ros.msg as m, "
                "affordance_core as c; print(n.__file__, m.__file__, c.__file__)",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert where.stdout.count(str(colcon_install)) == 3, where
        client.wait_connected()
        rgb = test_image(48, 64, seed=7)
        outs = _serve_one(client, rgb, 5_000_000_000, topic="result")
        assert outs, f"installed node did not answer:\n{proc.output()}"
        from affordance_ros.conversions import image_to_array

        reference_predictor.set_image(rgb)
        ref = reference_predictor.predict(["cut_with"])[0]
        assert outs[0].msg.action == "cut_with"
        import numpy as np

        np.testing.assert_allclose(image_to_array(outs[0].msg.heatmap), ref.heatmap, atol=1e-4)
    finally:
        client.close()
        rc = proc.stop()
        assert rc == 0, f"exit code {rc}:\n{proc.output()}"


def test_launch_file_stubbed(
    colcon_install, tmp_path, ros_isolation, rclpy_session, tiny_model_files
):
    sys.path.insert(0, str(STUBS))
    try:
        from resolve import load_launch_file, node_command
    finally:
        sys.path.remove(str(STUBS))
    ckpt, weights = tiny_model_files
    env = installed_env(colcon_install, ros_isolation)
    share = colcon_install / "affordance_ros" / "share" / "affordance_ros"
    old = os.environ.get("AMENT_PREFIX_PATH")
    os.environ["AMENT_PREFIX_PATH"] = env["AMENT_PREFIX_PATH"]
    try:
        desc = load_launch_file(share / "launch" / "affordance.launch.py")
    finally:
        if old is None:
            os.environ.pop("AMENT_PREFIX_PATH")
        else:
            os.environ["AMENT_PREFIX_PATH"] = old
    # A robot's YAML holds checkpoint and device; the launch arguments do not name them, so
    # the node must run with the YAML's values ("cpu:0" is a device string only YAML sets).
    params = write_params(
        tmp_path / "robot.yaml",
        {
            **__import__("yaml").safe_load((share / "config" / "affordance.yaml").read_text())[
                "/**"
            ]["ros__parameters"],
            "weights_dir": str(weights),
            "default_action": "pour",
            "checkpoint": str(ckpt),
            "device": "cpu:0",
            "mask_threshold": 0.7,
        },
    )
    node, args = node_command(
        desc,
        {
            "namespace": "r1",
            "image_topic": "/cam/rgb",
            "action_topic": "/cmd/action",
            "params_file": str(params),
        },
        tmp_path,
    )
    assert (node.package, node.executable) == ("affordance_ros", "affordance_node")
    # the default params_file is the installed one
    default = [e for e in desc.entities if getattr(e, "name", "") == "params_file"][0]
    assert Path(default.default_value) == share / "config" / "affordance.yaml"
    exe = colcon_install / "affordance_ros" / "lib" / node.package / node.executable
    proc = NodeProcess([str(exe), *args], env, tmp_path / "node.log", cwd=tmp_path)
    client = Client(ns="/r1", image_topic="/cam/rgb", action_topic="/cmd/action")
    try:
        assert proc.wait_output("ready:", 60), proc.output()
        assert f"checkpoint={ckpt} device=cpu:0" in proc.output(), proc.output()
        client.wait_connected()
        names = client.node.get_node_names_and_namespaces()
        assert ("affordance_node", "/r1") in names, names
        outs = _serve_one(client, test_image(32, 40, seed=8), 6_000_000_000, topic="result")
        assert outs and outs[0].msg.action == "pour", proc.output()
        topics = dict(client.node.get_topic_names_and_types())
        assert "/r1/affordance/heatmap" in topics and "/r1/affordance/results" in topics
        # the action topic is remapped: a word on /cmd/action changes the action
        client.action("cut_with")
        assert proc.wait_output("actions set to ['cut_with']", 20), proc.output()
        outs = _serve_one(client, test_image(32, 40, seed=9), 7_000_000_000, topic="result")
        assert outs and outs[0].msg.action == "cut_with", proc.output()
    finally:
        client.close()
        proc.stop()
