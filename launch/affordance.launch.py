"""Launch the affordance grounding node with a YAML parameter file.

The params file is the single source of tuning: ``model``, ``device``, ``checkpoint``,
``weights_dir``, ``default_action`` and ``use_sim_time`` are passed to the node only when
given on the command line (their default, an empty string, means "take it from the params
file"), so a robot YAML with ``device: cuda`` is never overwritten.

Example:
    ros2 launch affordance_ros affordance.launch.py namespace:=robot1 \
        params_file:=/robot/config/affordance.yaml \
        image_topic:=/camera/color/image_raw \
        depth_topic:=/camera/aligned_depth_to_color/image_raw \
        camera_info_topic:=/camera/color/camera_info
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from launch import LaunchDescription

# Launch arguments forwarded as node parameters only when set (non-empty).
OPTIONAL_PARAMETERS = (
    "model",
    "device",
    "checkpoint",
    "weights_dir",
    "default_action",
    "use_sim_time",
)
_TRUE = ("true", "1", "yes", "on")


def _typed(name, value):
    """Launch arguments are strings; use_sim_time is a bool parameter."""
    if name == "use_sim_time":
        if value.lower() not in _TRUE + ("false", "0", "no", "off"):
            raise ValueError(f"launch argument use_sim_time:={value}: use true or false")
        return value.lower() in _TRUE
    return value


def _node(context, *args, **kwargs):
    """Build the node from the resolved launch arguments (only set ones become parameters)."""
    cfg = context.launch_configurations
    overrides = {
        name: _typed(name, cfg[name]) for name in OPTIONAL_PARAMETERS if cfg.get(name, "") != ""
    }
    image = cfg["image_topic"]
    remappings = [
        ("image", image),
        ("image/compressed", image + "/compressed"),
        ("action", cfg["action_topic"]),
        ("depth", cfg["depth_topic"]),
        ("camera_info", cfg["camera_info_topic"]),
    ]
    respawn = cfg["respawn"].lower() in _TRUE
    parameters = [cfg["params_file"]] + ([overrides] if overrides else [])
    return [
        Node(
            package="affordance_ros",
            executable=cfg["executable"],
            name=cfg["node_name"],
            namespace=cfg["namespace"],
            output="screen",
            parameters=parameters,
            remappings=remappings,
            ros_arguments=["--log-level", cfg["log_level"]],
            respawn=respawn,
            respawn_delay=float(cfg["respawn_delay"]) if respawn else None,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    """Declare the launch arguments and the node."""
    default_params = os.path.join(
        get_package_share_directory("affordance_ros"), "config", "affordance.yaml"
    )
    args = [
        DeclareLaunchArgument(
            "namespace",
            default_value="",
            description="Namespace of the node and its relative topics.",
        ),
        DeclareLaunchArgument(
            "node_name",
            default_value="affordance_node",
            description="Node name (the params file's key if not '/**').",
        ),
        DeclareLaunchArgument(
            "executable",
            default_value="affordance_node",
            description="affordance_node, or affordance_lifecycle_node for a managed node.",
        ),
        DeclareLaunchArgument(
            "params_file",
            default_value=default_params,
            description="YAML file with the node parameters (the source of "
            "tuning; the arguments below override it only when "
            "set).",
        ),
        DeclareLaunchArgument(
            "image_topic",
            default_value="image",
            description="Camera topic remapped onto the node's 'image' "
            "(and <image_topic>/compressed onto 'image/compressed').",
        ),
        DeclareLaunchArgument(
            "action_topic",
            default_value="action",
            description="Topic remapped onto the node's 'action'.",
        ),
        DeclareLaunchArgument(
            "depth_topic",
            default_value="depth",
            description="Registered depth topic remapped onto 'depth'.",
        ),
        DeclareLaunchArgument(
            "camera_info_topic",
            default_value="camera_info",
            description="CameraInfo topic remapped onto 'camera_info'.",
        ),
        DeclareLaunchArgument(
            "model", default_value="", description="paper | tiny; empty = from the params file."
        ),
        DeclareLaunchArgument(
            "device",
            default_value="",
            description="cpu | cuda | cuda:N; empty = from the params file.",
        ),
        DeclareLaunchArgument(
            "checkpoint",
            default_value="",
            description="Trained model file; empty = from the params file.",
        ),
        DeclareLaunchArgument(
            "weights_dir",
            default_value="",
            description="Backbone weights directory; empty = from the params file.",
        ),
        DeclareLaunchArgument(
            "default_action",
            default_value="",
            description="Action word(s); empty = from the params file.",
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="",
            description="true | false; empty = from the params file (default false).",
        ),
        DeclareLaunchArgument(
            "log_level", default_value="info", description="debug | info | warn | error | fatal."
        ),
        DeclareLaunchArgument(
            "respawn", default_value="false", description="Restart the node when it exits."
        ),
        DeclareLaunchArgument(
            "respawn_delay", default_value="2.0", description="Seconds before a respawn."
        ),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
