class LaunchConfiguration:
    def __init__(self, variable_name, default=None):
        self.variable_name, self.default = variable_name, default
