"""affordance_ros.bag: predictor over a recorded rosbag2 (rosbags library, no ROS graph)."""

from __future__ import annotations

import numpy as np
import pytest
from ros_helpers import test_image

rosbags = pytest.importorskip("rosbags", reason="rosbags is not installed")


def _write_input_bag(path, frames):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    t = store.types
    with Writer(path, version=9) as writer:
        img = writer.add_connection("/cam/image", "sensor_msgs/msg/Image", typestore=store)
        comp = writer.add_connection(
            "/cam/image/compressed", "sensor_msgs/msg/CompressedImage", typestore=store
        )
        for i, rgb in enumerate(frames):
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](sec=i, nanosec=7), frame_id="cam"
            )
            msg = t["sensor_msgs/msg/Image"](
                header=header,
                height=rgb.shape[0],
                width=rgb.shape[1],
                encoding="rgb8",
                is_bigendian=0,
                step=rgb.shape[1] * 3,
                data=rgb.reshape(-1),
            )
            writer.write(img, i * 10**9, store.serialize_cdr(msg, msg.__msgtype__))
        bad = t["sensor_msgs/msg/CompressedImage"](
            header=header, format="jpeg", data=np.frombuffer(b"not a jpeg", np.uint8)
        )
        writer.write(comp, 99 * 10**9, store.serialize_cdr(bad, bad.__msgtype__))


def test_run_bag_writes_results(tmp_path, reference_predictor):
    from rosbags.rosbag2 import Reader

    from affordance_ros.bag import _typestore, run_bag
    from affordance_ros.conversions import image_to_array

    frames = [test_image(24, 32, seed=s) for s in range(3)]
    _write_input_bag(tmp_path / "in", frames)
    stats = run_bag(tmp_path / "in", tmp_path / "out", reference_predictor, ["hold", "pour"])
    assert stats["frames"] == 4 and stats["written"] == 3 and stats["skipped"] == {"decode": 1}
    store = _typestore()
    with Reader(tmp_path / "out") as reader:
        msgs = [
            (c.topic, store.deserialize_cdr(raw, c.msgtype)) for c, _, raw in reader.messages()
        ]
    results = [m for topic, m in msgs if topic == "/affordance/result"]
    assert [r.action for r in results] == ["hold", "pour"] * 3
    reference_predictor.set_image(frames[1])
    ref = reference_predictor.predict(["pour"])[0]
    got = results[3]
    assert got.header.stamp.sec == 1 and got.header.frame_id == "cam"
    np.testing.assert_allclose(image_to_array(got.heatmap), ref.heatmap, atol=1e-5)
    assert len([1 for topic, _ in msgs if topic == "/affordance/heatmap"]) == 3
    with pytest.raises(ValueError, match="no image topic"):
        run_bag(tmp_path / "in", tmp_path / "out2", reference_predictor, ["hold"], ["/nope"])
