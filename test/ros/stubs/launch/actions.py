class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description="", **kwargs):
        self.name, self.default_value, self.description = name, default_value, description
