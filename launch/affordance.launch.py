"""Launch the affordance grounding node with a YAML parameter file.

Example:
    ros2 launch affordance_ros affordance.launch.py namespace:=robot1 \
        image_topic:=/camera/color/image_raw checkpoint:=/path/to/heads.pt
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    """Declare the launch arguments and the node.

    The ``model``, ``device`` and ``checkpoint`` arguments are always passed after the params
    file, so they take precedence over the same keys in it.
    """
    default_params = os.path.join(
        get_package_share_directory("affordance_ros"), "config", "affordance.yaml")
    args = [
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its relative topics."),
        DeclareLaunchArgument(
            "image_topic", default_value="image",
            description="Camera topic remapped onto the node's 'image' "
                        "(and <image_topic>/compressed onto 'image/compressed')."),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML file with the node parameters."),
        DeclareLaunchArgument("model", default_value="tiny", description="paper | tiny"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="Trained heads checkpoint file (required)."),
    ]
    image_topic = LaunchConfiguration("image_topic")
    node = Node(
        package="affordance_ros",
        executable="affordance_node",
        name="affordance_node",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model": LaunchConfiguration("model"),
                "device": LaunchConfiguration("device"),
                "checkpoint": LaunchConfiguration("checkpoint"),
            },
        ],
        remappings=[
            ("image", image_topic),
            ("image/compressed", [image_topic, "/compressed"]),
        ],
    )
    return LaunchDescription(args + [node])
