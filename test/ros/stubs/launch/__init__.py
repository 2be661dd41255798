"""Recording stand-in for ROS 2 `launch` (not installable from PyPI): only records what a
launch file declares, so a test can start the recorded nodes itself."""


class LaunchDescription:
    def __init__(self, entities=None):
        self.entities = list(entities or [])
