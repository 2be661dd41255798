class Node:
    def __init__(self, *, package, executable, name=None, namespace=None, parameters=(),
                 remappings=(), arguments=(), output=None, **kwargs):
        self.package, self.executable, self.name, self.namespace = (
            package, executable, name, namespace)
        self.parameters, self.remappings = list(parameters), list(remappings)
        self.arguments, self.kwargs = list(arguments), kwargs
