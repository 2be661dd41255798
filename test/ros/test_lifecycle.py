"""The managed node in its own process: lifecycle transitions release and re-acquire inputs,
outputs and the model (issue 18 item 4). GPU memory release is not observable on this CPU-only
machine; the test checks the graph side and the node's own account of each transition."""

from __future__ import annotations

import sys
import time

import pytest
from ros_helpers import Client, make_image, stamp_key, start_node, test_image

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]


def test_lifecycle_transitions_release_and_reacquire(
    tmp_path, node_env, rclpy_session, tiny_model_files
):
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    ckpt, weights = tiny_model_files
    proc = start_node(
        tmp_path,
        node_env,
        {
            "checkpoint": str(ckpt),
            "weights_dir": str(weights),
            "image_qos": "reliable",
            "default_action": "hold",
        },
        cmd=[sys.executable, "-m", "affordance_ros.lifecycle_node"],
    )
    client = Client()
    n = client.node
    change = n.create_client(ChangeState, "/affordance_node/change_state")
    get = n.create_client(GetState, "/affordance_node/get_state")

    def call(cli, req):
        assert cli.wait_for_service(timeout_sec=60), proc.output()
        fut = cli.call_async(req)
        assert client.wait_for(fut.done, 120), f"no answer from {cli.srv_name}"
        return fut.result()

    def transition(tid):
        assert call(change, ChangeState.Request(transition=Transition(id=tid))).success, (
            proc.output()
        )

    def state():
        return call(get, GetState.Request()).current_state.id

    def served(seed):
        msg = make_image(test_image(32, 40, seed=seed), time.time_ns())
        client.send(msg)
        return client.wait_for(lambda: client.outputs_for("result", stamp_key(msg.header)), 20)

    heatmap_topic, image_topic = "/affordance/heatmap", "/image"
    try:
        assert proc.wait_output("unconfigured", 60), proc.output()
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert n.count_publishers(heatmap_topic) == 0 and n.count_subscribers(image_topic) == 0
        assert "configured: model" not in proc.output(), "model loaded before configure"

        transition(Transition.TRANSITION_CONFIGURE)
        assert state() == State.PRIMARY_STATE_INACTIVE
        assert "configured: model=tiny" in proc.output()
        assert client.wait_for(lambda: n.count_publishers(heatmap_topic) == 1, 20)
        assert n.count_subscribers(image_topic) == 0, "inactive node subscribed to images"

        transition(Transition.TRANSITION_ACTIVATE)
        assert client.wait_for(lambda: n.count_subscribers(image_topic) == 1, 20)
        assert served(1), proc.output()

        transition(Transition.TRANSITION_DEACTIVATE)
        assert proc.wait_output("model moved to the CPU", 20)
        assert client.wait_for(lambda: n.count_subscribers(image_topic) == 0, 20)
        assert not served(2), "deactivated node answered a frame"

        transition(Transition.TRANSITION_ACTIVATE)  # re-acquire
        assert client.wait_for(lambda: n.count_subscribers(image_topic) == 1, 20)
        assert served(3), proc.output()

        transition(Transition.TRANSITION_DEACTIVATE)
        transition(Transition.TRANSITION_CLEANUP)
        assert proc.wait_output("cleaned up: model released", 20)
        assert state() == State.PRIMARY_STATE_UNCONFIGURED
        assert client.wait_for(lambda: n.count_publishers(heatmap_topic) == 0, 20)

        transition(Transition.TRANSITION_CONFIGURE)  # loads again after cleanup
        transition(Transition.TRANSITION_ACTIVATE)
        assert served(4), proc.output()
        assert proc.alive()
    finally:
        client.close()
        rc = proc.stop()
    assert rc == 0, proc.output()
