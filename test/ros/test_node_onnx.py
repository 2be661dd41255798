"""The node with ``backend:=onnxruntime`` in its own process, answering over DDS.

It exports the tiny test model into a fresh ONNX cache on startup and must publish what the
torch predictor computes in the test process (heatmap within 1e-3, same mask and peak).
"""

from __future__ import annotations

import numpy as np
import pytest
from ros_helpers import Client, make_image, stamp_key, start_node, test_image

pytestmark = [pytest.mark.ros, pytest.mark.timeout(180)]


def test_node_with_onnxruntime_backend_answers(
    tmp_path, node_env, rclpy_session, tiny_model_files, reference_predictor
):
    pytest.importorskip("onnxruntime")
    from affordance_ros.conversions import image_to_array

    ckpt, weights = tiny_model_files
    cache = tmp_path / "onnx_cache"
    env = {**node_env, "AFFORDANCE_ONNX_CACHE": str(cache)}
    proc = start_node(
        tmp_path,
        env,
        {
            "checkpoint": str(ckpt),
            "weights_dir": str(weights),
            "image_qos": "reliable",
            "backend": "onnxruntime",
            "default_action": "hold, pour",
        },
    )
    client = Client()
    try:
        assert proc.wait_output("ready:", 90), f"node did not start:\n{proc.output()}"
        metas = list(cache.glob("*-fp32/meta.json"))
        assert len(metas) == 1, f"no ONNX cache entry in {cache}:\n{proc.output()}"
        client.wait_connected()
        rgb = test_image(48, 64, seed=7)
        msg = make_image(rgb, 2_000_000_000)
        key = stamp_key(msg.header)
        got = None
        for _ in range(3):  # resend if the first frame is lost
            client.send(msg)
            got = client.wait_for(lambda: client.outputs_for("results", key), 15)
            if got:
                break
        assert got, f"no results for {key}:\n{proc.output()}"
        results = got[0].msg.results
        assert [r.action for r in results] == ["hold", "pour"]
        reference_predictor.set_image(rgb)
        for res, ref in zip(results, reference_predictor.predict(["hold", "pour"])):
            heat = image_to_array(res.heatmap)
            assert np.abs(heat - ref.heatmap).max() <= 1e-3
            np.testing.assert_array_equal(image_to_array(res.mask) == 255, ref.mask)
            assert (res.grasp_pixel.x, res.grasp_pixel.y) == tuple(map(float, ref.peak_xy))
        assert proc.alive()
    finally:
        client.close()
        proc.stop()
