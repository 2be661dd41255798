"""Managed (lifecycle) variant of the affordance node, for launch systems that sequence nodes.

Same topics, services and parameters as :mod:`affordance_ros.node`, driven by the ROS 2
lifecycle state machine (``<node>/change_state``, ``<node>/get_state``):

- configure: checks the device, loads and warms up the model, creates outputs and services;
- activate: moves the model to ``device``, subscribes the inputs, starts the worker;
- deactivate: unsubscribes, stops the worker, moves the model to the CPU and empties the CUDA
  cache (GPU memory is freed while inactive);
- cleanup: destroys outputs and services and drops the model.

``autostart:=true`` runs configure and activate at start-up. The plain node
(``affordance_node``) stays the one for ``ros2 run`` users.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from affordance_ros.node import AffordanceNodeMixin, NodeSettings, StartupError, spin_node

__all__ = ["AffordanceLifecycleNode", "main"]


class AffordanceLifecycleNode(AffordanceNodeMixin, LifecycleNode):
    """The affordance node as a managed node (see the module docstring).

    Args:
        predictor_loader: Builds the predictor from the validated parameters.
        **kwargs: Forwarded to ``rclpy.lifecycle.LifecycleNode``.

    Raises:
        StartupError: A parameter has the wrong type, range or choice.
    """

    def __init__(
        self, predictor_loader: Callable[[NodeSettings], Any] | None = None, **kwargs: Any
    ) -> None:
        LifecycleNode.__init__(self, "affordance_node", **kwargs)
        self.declare_parameter(
            "autostart",
            False,
            ParameterDescriptor(description="Configure and activate at start-up.", read_only=True),
        )
        self._init_parameters(predictor_loader)
        self._active = False
        self.get_logger().info("unconfigured: call configure, then activate")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        s = self.settings
        self.get_logger().info(
            f"configured: model={s.model} checkpoint={s.checkpoint} "
            f"device={s.device} vocabulary=[{', '.join(self.vocabulary)}]"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.predictor.to(self.settings.device)
        self._activate()
        self._active = True
        self.get_logger().info(
            f"ready: active, subscribed to '{self.resolve_topic_name(self._image_topic())}'"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._active = False
        self.predictor.to("cpu")
        self._release_device_memory()
        self.get_logger().info("deactivated: inputs unsubscribed, model moved to the CPU")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        self.get_logger().info("cleaned up: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._deactivate()
            self._active = False
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def _publish_diagnostics(self) -> None:
        if self._active:
            super()._publish_diagnostics()

    def destroy_node(self) -> None:
        """Stop the worker thread, then destroy the node."""
        self._stop_worker()
        super().destroy_node()


def _make() -> AffordanceLifecycleNode:
    node = AffordanceLifecycleNode()
    if node.get_parameter("autostart").value:
        node.trigger_configure()
        node.trigger_activate()
    return node


def main(args: list[str] | None = None) -> int:
    """Run the lifecycle node until shutdown (exit 2 on invalid parameters)."""
    return spin_node(_make, args)


if __name__ == "__main__":
    sys.exit(main())
