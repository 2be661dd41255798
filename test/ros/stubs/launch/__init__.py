"""Recording stand-in for ROS 2 `launch` (not installable from PyPI): only records what a
launch file declares, so a test can start the recorded nodes itself."""


class LaunchDescription:
    def __init__(self, entities=None):
        self.entities = list(entities or [])


class LaunchContext:
    """The part of launch.LaunchContext that OpaqueFunctions use: launch_configurations."""

    def __init__(self, launch_configurations=None):
        self.launch_configurations = dict(launch_configurations or {})
