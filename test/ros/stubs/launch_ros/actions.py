"""Recording stand-in for `launch_ros`."""


class Node:
    def __init__(
        self,
        *,
        package,
        executable,
        name=None,
        namespace=None,
        parameters=(),
        remappings=(),
        arguments=(),
        ros_arguments=(),
        output=None,
        respawn=False,
        respawn_delay=None,
        **kwargs,
    ):
        self.package, self.executable, self.name, self.namespace = (
            package,
            executable,
            name,
            namespace,
        )
        self.parameters, self.remappings = list(parameters), list(remappings)
        self.arguments, self.ros_arguments = list(arguments), list(ros_arguments)
        self.respawn, self.respawn_delay, self.kwargs = respawn, respawn_delay, kwargs
