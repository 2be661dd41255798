class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description="", **kwargs):
        self.name, self.default_value, self.description = name, default_value, description


class OpaqueFunction:
    """Records the function; resolve.py calls it with a context, as launch does at run time."""

    def __init__(self, *, function, args=None, kwargs=None):
        self.function, self.args, self.kwargs = function, list(args or []), dict(kwargs or {})
