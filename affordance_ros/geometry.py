"""Camera geometry for the 3D grasp point (pure numpy, no ROS)."""

from __future__ import annotations

import numpy as np


def scale_pixel(
    xy: tuple[float, float], src_hw: tuple[int, int], dst_hw: tuple[int, int]
) -> tuple[float, float]:
    """Map a pixel position between two resolutions of the same view (pixel-centre aligned).

    Args:
        xy: (x, y) pixel in the source image (x = column, y = row).
        src_hw: (H, W) of the source image.
        dst_hw: (H, W) of the destination image.

    Returns:
        (x, y) in the destination image, as floats.
    """
    sx = dst_hw[1] / src_hw[1]
    sy = dst_hw[0] / src_hw[0]
    return ((xy[0] + 0.5) * sx - 0.5, (xy[1] + 0.5) * sy - 0.5)


def backproject_pixel(
    depth_m: np.ndarray,
    xy: tuple[float, float],
    k: np.ndarray,
    window: int = 5,
) -> np.ndarray | None:
    """Back-project a pixel to a 3D point with a depth image and pinhole intrinsics.

    The depth is the median of the valid pixels in a ``window`` x ``window`` patch around the
    pixel, which tolerates holes and flying pixels at edges.

    Args:
        depth_m: (H, W) float depth in metres; NaN, 0 or negative mark invalid pixels.
        xy: (x, y) pixel in the depth image (x = column, y = row).
        k: (3, 3) camera matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (CameraInfo.k) of
            the depth image.
        window: Odd side of the median window in pixels (>= 1).

    Returns:
        (3,) float64 point (X right, Y down, Z forward) in metres in the camera optical frame,
        or None when the patch holds no valid depth, the pixel lies outside the image or the
        intrinsics are degenerate.
    """
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    if fx <= 0 or fy <= 0:
        return None
    h, w = depth_m.shape
    u, v = int(round(xy[0])), int(round(xy[1]))
    if not (0 <= u < w and 0 <= v < h):
        return None
    r = max(int(window), 1) // 2
    patch = depth_m[max(v - r, 0) : v + r + 1, max(u - r, 0) : u + r + 1].astype(np.float64)
    valid = patch[np.isfinite(patch) & (patch > 0)]
    if valid.size == 0:
        return None
    z = float(np.median(valid))
    return np.array([(xy[0] - cx) * z / fx, (xy[1] - cy) * z / fy, z])


def transform_point(
    point: np.ndarray,
    translation: tuple[float, float, float],
    rotation_xyzw: tuple[float, float, float, float],
) -> np.ndarray:
    """Apply a rigid transform (as in ``geometry_msgs/Transform``) to a 3D point.

    Args:
        point: (3,) point in the transform's child (source) frame.
        translation: (x, y, z) of the child frame's origin in the parent (target) frame.
        rotation_xyzw: Unit quaternion (x, y, z, w) rotating child axes into the parent frame.

    Returns:
        (3,) float64 point in the parent frame: ``R @ point + t``.
    """
    x, y, z, w = (float(c) for c in rotation_xyzw)
    n = x * x + y * y + z * z + w * w
    if n <= 0:
        raise ValueError("zero quaternion")
    s = 2.0 / n
    rot = np.array(
        [
            [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
            [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
            [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
        ]
    )
    return rot @ np.asarray(point, dtype=np.float64) + np.asarray(translation, dtype=np.float64)
