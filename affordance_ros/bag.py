"""Run the predictor over a recorded rosbag2 and write the results to a new bag (no rclpy).

Reads ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` messages with the ``rosbags``
library and writes, at each input message's bag time, ``/affordance/heatmap`` (32FC1),
``/affordance/mask`` (mono8) and one ``/affordance/result`` (AffordanceResult) per action,
all carrying the input header. Frames that cannot be decoded are counted and skipped.

Usage::

    python -m affordance_ros.bag --bag IN_BAG --out OUT_BAG --checkpoint model.pt \\
        --action hold,cut_with [--topic /camera/image_raw] [--weights-dir DIR] [--device cpu]

Prints one JSON object with the counts as its last line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from affordance_ros.conversions import ImageConversionError, compressed_to_rgb, image_to_rgb

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
MSG_DIR = Path(__file__).resolve().parent.parent / "msg"


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types: dict[str, Any] = {}
    msg_dir = MSG_DIR
    if not msg_dir.is_dir():  # colcon install: rosidl installs the .msg files under share/
        from ament_index_python.packages import get_package_share_directory

        msg_dir = Path(get_package_share_directory("affordance_ros")) / "msg"
    for name in ("AffordanceResult", "AffordanceResultArray"):
        path = msg_dir / f"{name}.msg"
        if not path.is_file():
            raise FileNotFoundError(f"message definition {path} not found")
        types.update(get_types_from_msg(path.read_text(), f"affordance_ros/msg/{name}"))
    store.register(types)
    return store


def _image(store: Any, header: Any, array: np.ndarray, encoding: str) -> Any:
    image_cls = store.types["sensor_msgs/msg/Image"]
    itemsize = array.dtype.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    data = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
    return image_cls(
        header=header,
        height=array.shape[0],
        width=array.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=array.shape[1] * itemsize,
        data=data,
    )


def run_bag(
    bag: str | Path,
    out: str | Path,
    predictor: Any,
    actions: list[str],
    topics: list[str] | None = None,
) -> dict[str, Any]:
    """Predict affordances for every image message of a bag and write them to a new bag.

    Args:
        bag: Input rosbag2 directory (sqlite3 or mcap).
        out: Output rosbag2 directory (must not exist).
        predictor: An ``AffordancePredictor`` (``set_image`` / ``predict``).
        actions: Action words, all predicted on every frame.
        topics: Image topics to read; default: every Image/CompressedImage topic.

    Returns:
        Counts: ``frames``, ``written``, ``skipped`` (by kind) and mean ``predictor_ms``.

    Raises:
        ValueError: No matching image topic in the bag, or an unknown action word.
    """
    from rosbags.rosbag2 import Reader, Writer

    store = _typestore()
    point = store.types["geometry_msgs/msg/Point"]
    result_cls = store.types["affordance_ros/msg/AffordanceResult"]
    stats: dict[str, Any] = {"frames": 0, "written": 0, "skipped": {}}
    times: list[float] = []
    with Reader(bag) as reader:
        conns = [
            c
            for c in reader.connections
            if c.msgtype in IMAGE_TYPES and (topics is None or c.topic in topics)
        ]
        if not conns:
            found = sorted({(c.topic, c.msgtype) for c in reader.connections})
            raise ValueError(f"no image topic {topics or ''} in {bag}; topics: {found}")
        with Writer(out, version=9) as writer:
            w_heat = writer.add_connection(
                "/affordance/heatmap", "sensor_msgs/msg/Image", typestore=store
            )
            w_mask = writer.add_connection(
                "/affordance/mask", "sensor_msgs/msg/Image", typestore=store
            )
            w_res = writer.add_connection(
                "/affordance/result", "affordance_ros/msg/AffordanceResult", typestore=store
            )
            for conn, stamp, raw in reader.messages(connections=conns):
                stats["frames"] += 1
                msg = store.deserialize_cdr(raw, conn.msgtype)
                try:
                    rgb = (
                        compressed_to_rgb(msg)
                        if conn.msgtype.endswith("CompressedImage")
                        else image_to_rgb(msg)
                    )
                except ImageConversionError as exc:
                    stats["skipped"][exc.kind] = stats["skipped"].get(exc.kind, 0) + 1
                    continue
                t0 = time.perf_counter()
                predictor.set_image(rgb)
                preds = predictor.predict(actions)
                times.append((time.perf_counter() - t0) * 1e3)
                heat = _image(store, msg.header, preds[0].heatmap.astype(np.float32), "32FC1")
                mask = _image(store, msg.header, preds[0].mask.astype(np.uint8) * 255, "mono8")
                writer.write(w_heat, stamp, store.serialize_cdr(heat, heat.__msgtype__))
                writer.write(w_mask, stamp, store.serialize_cdr(mask, mask.__msgtype__))
                nan = point(x=float("nan"), y=float("nan"), z=float("nan"))
                for p in preds:
                    res = result_cls(
                        header=msg.header,
                        action=p.action,
                        heatmap=_image(store, msg.header, p.heatmap.astype(np.float32), "32FC1"),
                        mask=_image(store, msg.header, p.mask.astype(np.uint8) * 255, "mono8"),
                        score=float(p.score),
                        grasp_pixel=point(x=float(p.peak_xy[0]), y=float(p.peak_xy[1]), z=0.0),
                        grasp_point=nan,
                        has_grasp_point=False,
                        grasp_point_frame="",
                        grasp_point_status="no depth in the bag runner",
                    )
                    writer.write(w_res, stamp, store.serialize_cdr(res, res.__msgtype__))
                stats["written"] += 1
    stats["predictor_ms"] = round(float(np.mean(times)), 2) if times else None
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bag", required=True, help="input rosbag2 directory")
    parser.add_argument("--out", required=True, help="output rosbag2 directory (new)")
    parser.add_argument(
        "--checkpoint", required=True, help="trained model file (model.pt from affordance-train)"
    )
    parser.add_argument("--action", required=True, help="action word(s), comma-separated")
    parser.add_argument("--topic", action="append", help="image topic (repeatable)")
    parser.add_argument("--weights-dir", default=None, help="local backbone weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mask-threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    from affordance_core.predictor import AffordancePredictor

    predictor = AffordancePredictor.from_checkpoint(
        args.checkpoint,
        device=args.device,
        weights_dir=args.weights_dir,
        mask_threshold=args.mask_threshold,
    )
    actions = [a.strip() for a in args.action.split(",") if a.strip()]
    print(json.dumps(run_bag(args.bag, args.out, predictor, actions, args.topic)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
