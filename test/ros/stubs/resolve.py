"""Turn what the stubs recorded into an rcl command line (stubbed launch semantics)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml

STUBS = Path(__file__).resolve().parent


def load_launch_file(path: Path) -> Any:
    """Import a ``*.launch.py`` against the stubs and return its LaunchDescription."""
    sys.path.insert(0, str(STUBS))
    try:
        for mod in [
            m
            for m in sys.modules
            if m == "launch"
            or m.startswith("launch.")
            or m == "launch_ros"
            or m.startswith("launch_ros.")
        ]:
            del sys.modules[mod]
        spec = importlib.util.spec_from_file_location("launch_under_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.generate_launch_description()
    finally:
        sys.path.remove(str(STUBS))


def resolve(value: Any, config: dict[str, str]) -> Any:
    from launch.substitutions import LaunchConfiguration

    if isinstance(value, LaunchConfiguration):
        return config[value.variable_name]
    if isinstance(value, (list, tuple)):
        return "".join(str(resolve(v, config)) for v in value)
    return value


def node_command(description: Any, overrides: dict[str, str], tmp: Path) -> tuple[Any, list[str]]:
    """(recorded Node, ``--ros-args`` list) with launch arguments resolved like ros2 launch."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    from launch import LaunchContext

    config = {
        e.name: e.default_value
        for e in description.entities
        if isinstance(e, DeclareLaunchArgument)
    }
    unknown = set(overrides) - set(config)
    if unknown:
        raise KeyError(f"launch file declares no arguments {unknown}")
    config.update(overrides)
    entities = []
    for e in description.entities:  # run OpaqueFunctions as launch does, with the arguments
        if isinstance(e, OpaqueFunction):
            entities += e.function(LaunchContext(config), *e.args, **e.kwargs) or []
        else:
            entities.append(e)
    nodes = [e for e in entities if isinstance(e, Node)]
    assert len(nodes) == 1, nodes
    node = nodes[0]
    args = ["--ros-args"]
    if node.name:
        args += ["-r", f"__node:={resolve(node.name, config)}"]
    ns = resolve(node.namespace, config) if node.namespace is not None else ""
    if ns:
        args += ["-r", f"__ns:={ns if ns.startswith('/') else '/' + ns}"]
    for i, p in enumerate(node.parameters):
        if isinstance(p, dict):
            inline = tmp / f"inline_params_{i}.yaml"
            inline.write_text(
                yaml.safe_dump(
                    {"/**": {"ros__parameters": {k: resolve(v, config) for k, v in p.items()}}}
                )
            )
            args += ["--params-file", str(inline)]
        else:
            args += ["--params-file", str(resolve(p, config))]
    for src, dst in node.remappings:
        args += ["-r", f"{resolve(src, config)}:={resolve(dst, config)}"]
    args += [str(resolve(a, config)) for a in node.ros_arguments]
    return node, args
