"""ROS 2 adapter for the affordance grounding core (node, message conversions, bag runner).

In a colcon install, rosidl generates this package's ``__init__.py`` and ``msg/``; this source
file is not installed. In the pip/venv route the generated ``affordance_ros.msg`` lives in a
separate prefix (``scripts/build_msgs.sh``), so the package path is extended to every
``affordance_ros`` directory on ``sys.path`` (see ``affordance_ros.env.ros_env``).
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
