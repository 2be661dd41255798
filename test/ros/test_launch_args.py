"""What ``launch/affordance.launch.py`` hands to the node (stubbed launch semantics, no graph).

The launch file is loaded from the source tree against the recording stubs in test/ros/stubs;
its OpaqueFunction runs with the resolved arguments, as ``ros2 launch`` would run it. The
colcon test (test_colcon_launch.py) starts the resulting command line on a live graph.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from ros_helpers import REPO, STUBS


@pytest.fixture()
def launch(tmp_path, monkeypatch):
    """(description, node_command) for the source launch file, with a fake ament index."""
    prefix = tmp_path / "prefix"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "affordance_ros").touch()
    (prefix / "share" / "affordance_ros" / "config").mkdir(parents=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    sys.path.insert(0, str(STUBS))
    try:
        from resolve import load_launch_file, node_command
    finally:
        sys.path.remove(str(STUBS))
    return load_launch_file(REPO / "launch" / "affordance.launch.py"), node_command


def inline_params(args: list[str]) -> dict:
    """Parameters the launch file adds after the params file (inline dicts)."""
    files = [args[i + 1] for i, a in enumerate(args) if a == "--params-file"]
    out: dict = {}
    for f in files[1:]:
        out.update(yaml.safe_load(Path(f).read_text())["/**"]["ros__parameters"])
    return out


def test_unset_arguments_leave_the_params_file_alone(launch, tmp_path):
    desc, node_command = launch
    node, args = node_command(desc, {"params_file": "/robot/affordance.yaml"}, tmp_path)
    files = [args[i + 1] for i, a in enumerate(args) if a == "--params-file"]
    assert files == ["/robot/affordance.yaml"], args
    assert inline_params(args) == {}
    assert args[-2:] == ["--log-level", "info"]
    remaps = [args[i + 1] for i, a in enumerate(args) if a == "-r"]
    for r in (
        "image:=image",
        "image/compressed:=image/compressed",
        "action:=action",
        "depth:=depth",
        "camera_info:=camera_info",
    ):
        assert r in remaps, (r, remaps)
    assert node.respawn is False and node.executable == "affordance_node"


def test_set_arguments_override_and_are_typed(launch, tmp_path):
    desc, node_command = launch
    node, args = node_command(
        desc,
        {
            "device": "cuda:1",
            "checkpoint": "/m/model.pt",
            "use_sim_time": "true",
            "log_level": "debug",
            "respawn": "true",
            "action_topic": "/cmd/action",
            "depth_topic": "/cam/aligned_depth_to_color/image_raw",
            "camera_info_topic": "/cam/color/camera_info",
            "image_topic": "/cam/color/image_raw",
        },
        tmp_path,
    )
    assert inline_params(args) == {
        "device": "cuda:1",
        "checkpoint": "/m/model.pt",
        "use_sim_time": True,
    }
    remaps = [args[i + 1] for i, a in enumerate(args) if a == "-r"]
    for r in (
        "action:=/cmd/action",
        "depth:=/cam/aligned_depth_to_color/image_raw",
        "camera_info:=/cam/color/camera_info",
        "image:=/cam/color/image_raw",
        "image/compressed:=/cam/color/image_raw/compressed",
    ):
        assert r in remaps, (r, remaps)
    assert args[-2:] == ["--log-level", "debug"]
    assert node.respawn is True and node.respawn_delay == 2.0
    with pytest.raises(ValueError, match="use_sim_time"):
        node_command(desc, {"use_sim_time": "maybe"}, tmp_path)
