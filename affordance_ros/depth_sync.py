"""Approximate-time matching of depth and camera_info to a colour image (no rclpy).

``message_filters`` is not published on PyPI for Jazzy, and its synchroniser only emits
complete triples: with a latest-frame-only node that would drop every colour frame whose depth
is late or missing. :class:`DepthSync` keeps the last few depth and camera_info messages and,
for the frame being processed, picks the depth whose stamp is nearest the image stamp and the
camera_info nearest that depth, each within ``slop`` seconds, with matching frame ids. The
frame still gets heatmap and mask when no match exists; only the 3D point is withheld, with
the reason.

Messages are duck-typed: anything with ``header.stamp.sec``, ``header.stamp.nanosec`` and
``header.frame_id`` works.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


def stamp_ns(header: Any) -> int:
    """Nanoseconds of a ``std_msgs/Header`` stamp."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@dataclass
class DepthMatch:
    """Outcome of :meth:`DepthSync.match`.

    Attributes:
        depth: The matched depth Image, or None.
        info: The matched CameraInfo, or None.
        reason: Empty when matched; otherwise why no 3D point can be computed.
    """

    depth: Any = None
    info: Any = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.depth is not None and self.info is not None and not self.reason


class DepthSync:
    """Keeps recent depth and camera_info messages and matches them to images by stamp.

    Args:
        history: How many of each message type to keep (newest last).
        depth_topic: Resolved depth topic name, for messages.
        info_topic: Resolved camera_info topic name, for messages.
    """

    def __init__(
        self, history: int = 10, depth_topic: str = "depth", info_topic: str = "camera_info"
    ) -> None:
        self._depth: deque[Any] = deque(maxlen=history)
        self._info: deque[Any] = deque(maxlen=history)
        self._cv = threading.Condition()
        self.depth_topic, self.info_topic = depth_topic, info_topic

    def add_depth(self, msg: Any) -> None:
        """Store a depth image (thread-safe)."""
        with self._cv:
            self._depth.append(msg)
            self._cv.notify_all()

    def add_info(self, msg: Any) -> None:
        """Store a camera_info (thread-safe)."""
        with self._cv:
            self._info.append(msg)
            self._cv.notify_all()

    def clear(self) -> None:
        """Forget every stored message."""
        with self._cv:
            self._depth.clear()
            self._info.clear()

    def match(
        self,
        image_header: Any,
        slop: float,
        now_ns: int | None = None,
        max_age: float = 0.0,
        wait: float = 0.0,
    ) -> DepthMatch:
        """Depth and camera_info for an image, or the reason there are none.

        Args:
            image_header: Header of the colour image.
            slop: Largest stamp difference in seconds (image-depth and depth-camera_info).
            now_ns: Node clock in nanoseconds, for ``max_age``.
            max_age: Reject depth older than this many seconds relative to ``now_ns``;
                0 disables the check.
            wait: Seconds of wall time to wait for a depth or camera_info that has not
                arrived yet (its stream's newest stamp is still older than the image's).

        Returns:
            A :class:`DepthMatch`.
        """
        t_img = stamp_ns(image_header)
        slop_ns = int(round(slop * 1e9))
        deadline = time.monotonic() + max(wait, 0.0)
        with self._cv:
            while True:
                result = self._match_locked(image_header, t_img, slop_ns)
                late = not result.ok and self._may_still_arrive(t_img, slop_ns)
                remaining = deadline - time.monotonic()
                if not late or remaining <= 0:
                    break
                self._cv.wait(remaining)
        if result.ok and max_age > 0 and now_ns is not None:
            age = (now_ns - stamp_ns(result.depth.header)) / 1e9
            if age > max_age:
                return DepthMatch(
                    reason=f"depth is {age:.3f} s old, over max_depth_age="
                    f"{max_age:g} s (node clock minus depth stamp)"
                )
        return result

    def _may_still_arrive(self, t_img: int, slop_ns: int) -> bool:
        """True while either stream's newest stamp is older than the image (a match may come)."""
        del slop_ns
        for queue in (self._depth, self._info):
            if not queue or stamp_ns(queue[-1].header) < t_img:
                return True
        return False

    def _match_locked(self, image_header: Any, t_img: int, slop_ns: int) -> DepthMatch:
        if not self._depth:
            return DepthMatch(reason=f"no depth image received on '{self.depth_topic}'")
        depth = min(self._depth, key=lambda m: abs(stamp_ns(m.header) - t_img))
        dt = abs(stamp_ns(depth.header) - t_img)
        if dt > slop_ns:
            return DepthMatch(
                reason=f"no depth within sync_slop={slop_ns / 1e9:g} s of the "
                f"image stamp (nearest is {dt / 1e9:.3f} s away)"
            )
        img_frame, d_frame = str(image_header.frame_id), str(depth.header.frame_id)
        if d_frame != img_frame:
            return DepthMatch(
                reason=f"depth frame '{d_frame}' differs from the image frame "
                f"'{img_frame}'; subscribe 'depth' to depth registered "
                "to the colour camera (e.g. aligned_depth_to_color)"
            )
        if not self._info:
            return DepthMatch(reason=f"no camera_info received on '{self.info_topic}'")
        t_d = stamp_ns(depth.header)
        info = min(self._info, key=lambda m: abs(stamp_ns(m.header) - t_d))
        di = abs(stamp_ns(info.header) - t_d)
        if di > slop_ns:
            return DepthMatch(
                reason=f"no camera_info within sync_slop={slop_ns / 1e9:g} s of "
                f"the depth stamp (nearest is {di / 1e9:.3f} s away)"
            )
        if str(info.header.frame_id) != d_frame:
            return DepthMatch(
                reason=f"camera_info frame '{info.header.frame_id}' differs "
                f"from the depth frame '{d_frame}'"
            )
        return DepthMatch(depth=depth, info=info)
