"""The absence path through the real node, in its own module: no other node of the module-scoped
fixtures in test_node.py answers on the same topics while this one runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ros_helpers import Client, start_node, test_image
from test_node import expected, send_and_wait

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]


def test_blank_frame_is_absent_end_to_end(
    tmp_path: Path, node_env, rclpy_session, tiny_model_files, reference_predictor
):
    """An all-black frame through the real node: all-zero mask, ``has_grasp_point`` false, a
    heatmap not stretched to 1; with ``min_score`` 0 set live, a normal frame has a mask again.

    The checkpoint is the random test model with its score bias written here (-20: every
    score is about 0). That is the right check for the node: it must hand ``min_score`` to the
    predictor and publish the predictor's absence rule, whatever the score's value; whether a
    fitted score puts blank frames below 0.5 is the validation fit's job
    (test_evaluation.py's affordance-train --val-root test) and is measured by
    ``absence_auroc`` / ``empty_on_background``. A random model has no fitted score to rely on.
    """
    import shutil

    from affordance_core.checkpoint import update_checkpoint_config
    from affordance_ros.conversions import image_to_array

    ckpt, weights = tiny_model_files
    absent_ckpt = tmp_path / "absent.pt"
    shutil.copy(ckpt, absent_ckpt)
    update_checkpoint_config(absent_ckpt, score_bias=-20.0)
    proc = start_node(
        tmp_path,
        node_env,
        {
            "checkpoint": str(absent_ckpt),
            "weights_dir": str(weights),
            "image_qos": "reliable",
            "default_action": "hold",
            "max_frame_age": 60.0,
        },
    )
    client = Client()
    try:
        if not proc.wait_output("ready:", 60):
            pytest.fail(f"node did not start:\n{proc.output()}")
        client.wait_connected()
        black = np.zeros((48, 64, 3), np.uint8)
        _, res = send_and_wait(client, black)
        out = res[0].msg
        assert out.score < 0.5
        assert not out.has_grasp_point and "min_score" in out.grasp_point_status
        assert not (image_to_array(out.mask) > 0).any()
        assert float(image_to_array(out.heatmap).max()) == pytest.approx(out.score, abs=1e-6)

        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        srv = client.node.create_client(SetParameters, "/affordance_node/set_parameters")
        assert srv.wait_for_service(timeout_sec=10.0)
        request = SetParameters.Request(
            parameters=[Parameter("min_score", value=0.0).to_parameter_msg()]
        )
        future = srv.call_async(request)
        assert client.wait_for(future.done, 10.0) and future.result().results[0].successful
        rgb = test_image()
        _, res = send_and_wait(client, rgb)
        out = res[0].msg
        reference_predictor.min_score = 0.0
        try:
            ref = expected(reference_predictor, rgb, ["hold"])[0]
        finally:
            reference_predictor.min_score = 0.5
        mask = image_to_array(out.mask) > 0
        assert mask.any()
        np.testing.assert_array_equal(mask, ref.mask)
        assert float(image_to_array(out.heatmap).max()) == pytest.approx(1.0)
    finally:
        client.close()
        proc.stop()
