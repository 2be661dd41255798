"""Conversions between sensor_msgs images and numpy arrays (pure numpy + OpenCV, no rclpy).

Decoding is duck-typed: any object with the ``sensor_msgs/Image`` fields (``height``,
``width``, ``encoding``, ``is_bigendian``, ``step``, ``data``) works, including the message
classes of the ``rosbags`` library. Encoding builds ``sensor_msgs.msg`` messages.

Every decoding failure raises :class:`ImageConversionError`, whose ``kind`` names the failure
class (``encoding``, ``truncated``, ``empty``, ``nan``, ``decode``) so callers can count and
throttle them per kind.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "8UC3": (np.dtype(np.uint8), 3),
    "8UC4": (np.dtype(np.uint8), 4),
    "rgb16": (np.dtype(np.uint16), 3),
    "bgr16": (np.dtype(np.uint16), 3),
    "rgba16": (np.dtype(np.uint16), 4),
    "bgra16": (np.dtype(np.uint16), 4),
    "yuv422": (np.dtype(np.uint8), 2),  # UYVY
    "yuv422_yuy2": (np.dtype(np.uint8), 2),  # YUYV (UVC cameras)
    "bayer_rggb8": (np.dtype(np.uint8), 1),
    "bayer_bggr8": (np.dtype(np.uint8), 1),
    "bayer_gbrg8": (np.dtype(np.uint8), 1),
    "bayer_grbg8": (np.dtype(np.uint8), 1),
}
# Encodings decoded by image_to_rgb only (planar layouts with more rows than the image).
PLANAR_ENCODINGS = ("nv21",)

# ROS Bayer pattern -> OpenCV code. OpenCV names a pattern by the 2x2 block starting at the
# second row and column, so ROS "rggb" is OpenCV "BG" (as in cv_bridge).
_BAYER = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}


class ImageConversionError(ValueError):
    """An image message that cannot be converted.

    Attributes:
        kind: Failure class: ``encoding``, ``truncated``, ``empty``, ``nan`` or ``decode``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def image_to_array(msg: Any) -> np.ndarray:
    """Decode an Image message into an array in native byte order, without copying channels.

    Row padding (``step`` larger than ``width * channels * itemsize``) is removed and
    big-endian data is byte-swapped.

    Args:
        msg: A ``sensor_msgs/Image`` (or an object with the same fields).

    Returns:
        (H, W) for one-channel encodings or (H, W, C) otherwise, with the encoding's dtype
        (uint8, uint16 or float32). The array may share memory with ``msg.data``.

    Raises:
        ImageConversionError: Unsupported encoding, zero size, inconsistent ``step`` or data
            shorter than ``step * height``.
    """
    enc = str(msg.encoding)
    if enc not in ENCODINGS:
        raise ImageConversionError(
            "encoding",
            f"unsupported image encoding '{enc}'; supported: "
            f"{', '.join((*ENCODINGS, *PLANAR_ENCODINGS))}",
        )
    dtype, ch = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError("empty", f"empty image ({w}x{h} pixels)")
    row = w * ch * dtype.itemsize
    if step < row:
        raise ImageConversionError(
            "truncated", f"step {step} is smaller than width*channels*bytes = {row} ({enc})"
        )
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if buf.size < step * h:
        raise ImageConversionError(
            "truncated",
            f"image data has {buf.size} bytes, expected step*height = {step}*{h} = {step * h}",
        )
    rows = buf[: step * h].reshape(h, step)[:, :row]
    order = ">" if msg.is_bigendian else "<"
    arr = np.ascontiguousarray(rows).view(dtype.newbyteorder(order))
    arr = arr.astype(dtype, copy=False)  # native byte order
    return arr.reshape(h, w, ch) if ch > 1 else arr.reshape(h, w)


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max scale finite values of a 2-D array to uint8 [0, 255] (constant -> 0)."""
    v = values.astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.round((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def image_to_rgb(msg: Any) -> np.ndarray:
    """Decode an Image message into an RGB image for the predictor.

    Colour encodings are reordered to RGB (alpha dropped); 16-bit colour (``rgb16``,
    ``bgr16``, ``rgba16``, ``bgra16``) is divided by 257. ``8UC3``/``8UC4`` are taken as RGB(A)
    (they carry no channel order). ``yuv422`` (UYVY), ``yuv422_yuy2`` (YUYV), ``nv21`` and
    ``bayer_{rggb,bggr,gbrg,grbg}8`` are converted with OpenCV using cv_bridge's code mapping.
    ``mono8`` is replicated to three channels; ``mono16`` is mapped to 8 bits by dividing by
    257 (full 16-bit intensity range); ``16UC1`` (typically depth in mm) and ``32FC1`` are
    min-max scaled for display.

    Args:
        msg: A ``sensor_msgs/Image`` (or an object with the same fields).

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous, never sharing memory with ``msg.data``.

    Raises:
        ImageConversionError: As :func:`image_to_array`, plus ``nan`` for a float image
            holding NaN or infinite values.
    """
    enc = str(msg.encoding)
    if enc == "nv21":
        return _nv21_to_rgb(msg)
    arr = image_to_array(msg)
    if enc in ("rgb8", "8UC3"):  # 8UC3 carries no channel order: taken as is, like cv_bridge
        return arr.copy()
    if enc in ("rgb16", "bgr16", "rgba16", "bgra16"):
        arr8 = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.ascontiguousarray(arr8[:, :, 2::-1] if enc.startswith("bgr") else arr8[:, :, :3])
    if enc == "8UC4":
        return np.ascontiguousarray(arr[:, :, :3])
    if enc in ("yuv422", "yuv422_yuy2"):
        if arr.shape[1] % 2:
            raise ImageConversionError(
                "truncated", f"{enc} needs an even width, got {arr.shape[1]}"
            )
        code = cv2.COLOR_YUV2RGB_UYVY if enc == "yuv422" else cv2.COLOR_YUV2RGB_YUY2
        return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(arr), code))
    if enc in _BAYER:
        return np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(arr), _BAYER[enc]))
    if enc == "rgb8":
        return arr.copy()
    if enc == "bgr8":
        return np.ascontiguousarray(arr[:, :, ::-1])
    if enc == "rgba8":
        return np.ascontiguousarray(arr[:, :, :3])
    if enc == "bgra8":
        return np.ascontiguousarray(arr[:, :, 2::-1])
    if enc in ("mono8", "8UC1"):
        gray = arr
    elif enc == "mono16":
        gray = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif enc == "16UC1":
        gray = _scale_to_uint8(arr)
    else:  # 32FC1
        if not np.isfinite(arr).all():
            raise ImageConversionError("nan", "32FC1 image contains NaN or infinite values")
        gray = _scale_to_uint8(arr)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _nv21_to_rgb(msg: Any) -> np.ndarray:
    """NV21: a full-resolution Y plane, then interleaved V/U at half resolution."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError("empty", f"empty image ({w}x{h} pixels)")
    if h % 2 or w % 2:
        raise ImageConversionError("truncated", f"nv21 needs even width and height, got {w}x{h}")
    if step < w:
        raise ImageConversionError(
            "truncated", f"step {step} is smaller than the width {w} (nv21)"
        )
    rows = h * 3 // 2
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if buf.size < step * rows:
        raise ImageConversionError(
            "truncated",
            f"nv21 data has {buf.size} bytes, expected step*height*3/2 = {step * rows}",
        )
    yuv = np.ascontiguousarray(buf[: step * rows].reshape(rows, step)[:, :w])
    return np.ascontiguousarray(cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB_NV21))


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """Decode a CompressedImage (JPEG or PNG) into an RGB image.

    Args:
        msg: A ``sensor_msgs/CompressedImage`` (or an object with ``format`` and ``data``).

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        ImageConversionError: ``empty`` for no data, ``decode`` for data OpenCV cannot decode.
    """
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if buf.size == 0:
        raise ImageConversionError("empty", "compressed image has no data")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(
            "decode", f"cannot decode compressed image (format '{msg.format}', {buf.size} bytes)"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])


def depth_to_metres(msg: Any, scale: float = 1e-3) -> np.ndarray:
    """Decode a depth image into metres.

    Args:
        msg: ``sensor_msgs/Image`` with encoding ``16UC1`` (integer units of ``scale`` metres)
            or ``32FC1`` (metres).
        scale: Metres per unit of a ``16UC1`` image (0.001 = millimetres, the REP 118
            convention); ignored for ``32FC1``.

    Returns:
        (H, W) float32 metres; invalid pixels (0, negative, NaN, inf) are NaN.

    Raises:
        ImageConversionError: Other encodings, or as :func:`image_to_array`.
    """
    if msg.encoding not in ("16UC1", "32FC1"):
        raise ImageConversionError(
            "encoding",
            f"depth encoding '{msg.encoding}' unsupported; use 16UC1 (depth_scale metres per "
            "unit) or 32FC1 (metres)",
        )
    arr = image_to_array(msg)
    depth = arr.astype(np.float32) * np.float32(scale if msg.encoding == "16UC1" else 1.0)
    depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


def array_to_image(array: np.ndarray, encoding: str, header: Any = None) -> Image:
    """Encode an array as a ``sensor_msgs/Image`` (little-endian, no row padding).

    Args:
        array: (H, W) or (H, W, C) array matching ``encoding``: uint8 for ``rgb8``/``bgr8``/
            ``rgba8``/``bgra8``/``mono8``, uint16 for ``mono16``/``16UC1``, float32 for
            ``32FC1``. A bool array is accepted for ``mono8`` and becomes 0/255.
        encoding: One of :data:`ENCODINGS`.
        header: Optional ``std_msgs/Header`` to copy into the message.

    Returns:
        The Image message.

    Raises:
        ValueError: Unknown encoding, or an array whose shape or dtype does not match it.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding '{encoding}'; supported: {', '.join(ENCODINGS)}")
    dtype, ch = ENCODINGS[encoding]
    arr = np.asarray(array)
    if arr.dtype == np.bool_ and encoding in ("mono8", "8UC1"):
        arr = arr.astype(np.uint8) * np.uint8(255)
    expected_ndim = 2 if ch == 1 else 3
    if arr.ndim != expected_ndim or (ch > 1 and arr.shape[2] != ch) or arr.size == 0:
        raise ValueError(
            f"{encoding} needs a non-empty {'(H, W)' if ch == 1 else f'(H, W, {ch})'} array, "
            f"got shape {arr.shape}"
        )
    if arr.dtype != dtype:
        raise ValueError(f"{encoding} needs dtype {dtype}, got {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<"))
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * ch * dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", header: Any = None) -> CompressedImage:
    """Encode an RGB image as a ``sensor_msgs/CompressedImage``.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        fmt: ``jpeg`` or ``png``.
        header: Optional ``std_msgs/Header`` to copy.

    Returns:
        The CompressedImage message.

    Raises:
        ValueError: Unknown format or an image OpenCV cannot encode.
    """
    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt)
    if ext is None:
        raise ValueError(f"unsupported compressed format '{fmt}'; use jpeg or png")
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = "jpeg" if ext == ".jpg" else "png"
    msg.data = buf.tobytes()
    return msg
