"""Message <-> numpy conversions and grasp-point geometry (no ROS graph)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affordance_core.visualize import heatmap_overlay
from affordance_ros.conversions import (
    ImageConversionError,
    array_to_image,
    compressed_to_rgb,
    depth_to_metres,
    image_to_array,
    image_to_rgb,
    rgb_to_compressed,
)
from affordance_ros.geometry import backproject_pixel, scale_pixel

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def padded(msg, extra: int):
    """The same image with ``extra`` garbage bytes appended to every row."""
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    pad = np.full((msg.height, extra), 0xAB, np.uint8)
    msg.data = np.concatenate([rows, pad], axis=1).tobytes()
    msg.step += extra
    return msg


@pytest.mark.parametrize(
    "encoding,array",
    [
        ("rgb8", RGB),
        ("bgr8", RGB),
        ("rgba8", RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)),
        ("bgra8", RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)),
        ("mono8", RGB[:, :, 0]),
        ("mono16", RNG.integers(0, 65536, (5, 7), dtype=np.uint16)),
        ("16UC1", RNG.integers(0, 65536, (5, 7), dtype=np.uint16)),
        ("32FC1", RNG.random((5, 7), dtype=np.float32)),
    ],
)
@pytest.mark.parametrize("pad", [0, 3])
def test_round_trip(encoding, array, pad):
    msg = padded(array_to_image(array, encoding), pad)
    np.testing.assert_array_equal(image_to_array(msg), array)
    rgb = image_to_rgb(msg)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous


def test_colour_orders():
    np.testing.assert_array_equal(image_to_rgb(array_to_image(RGB, "rgb8")), RGB)
    np.testing.assert_array_equal(
        image_to_rgb(array_to_image(RGB[:, :, ::-1].copy(), "bgr8")), RGB
    )
    alpha = np.full((5, 7, 1), 9, np.uint8)
    rgba = np.concatenate([RGB, alpha], axis=2)
    bgra = np.concatenate([RGB[:, :, ::-1], alpha], axis=2)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(rgba, "rgba8")), RGB)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(bgra, "bgra8")), RGB)
    mono = image_to_rgb(array_to_image(RGB[:, :, 1].copy(), "mono8"))
    assert (mono == RGB[:, :, 1:2]).all()


def test_display_scaling():
    m16 = np.array([[0, 257, 65535]], np.uint16)
    np.testing.assert_array_equal(
        image_to_rgb(array_to_image(m16, "mono16"))[0, :, 0], [0, 1, 255]
    )
    depth = np.array([[500, 1000, 1500]], np.uint16)
    np.testing.assert_array_equal(
        image_to_rgb(array_to_image(depth, "16UC1"))[0, :, 0], [0, 128, 255]
    )
    flat = np.full((2, 2), 3.0, np.float32)
    assert (image_to_rgb(array_to_image(flat, "32FC1")) == 0).all()


def test_big_endian_mono16():
    values = np.array([[1, 256, 4660], [65535, 0, 43981]], np.uint16)
    msg = array_to_image(values, "mono16")
    msg.is_bigendian = 1
    msg.data = values.astype(">u2").tobytes()
    out = image_to_array(msg)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    msg.is_bigendian = 0  # the same bytes read little-endian are byte-swapped
    np.testing.assert_array_equal(image_to_array(msg), values.byteswap())


@pytest.mark.parametrize(
    "mutate,kind",
    [
        (lambda m: setattr(m, "encoding", "yuv444_custom"), "encoding"),
        (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "truncated"),
        (lambda m: setattr(m, "step", 3), "truncated"),
        (lambda m: (setattr(m, "height", 0), setattr(m, "data", b"")), "empty"),
    ],
)
def test_bad_images(mutate, kind):
    msg = array_to_image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ImageConversionError) as err:
        image_to_rgb(msg)
    assert err.value.kind == kind


def test_nan_float_image_rejected_but_valid_depth_keeps_nan():
    arr = np.ones((3, 3), np.float32)
    arr[1, 1] = np.nan
    with pytest.raises(ImageConversionError) as err:
        image_to_rgb(array_to_image(arr, "32FC1"))
    assert err.value.kind == "nan"
    depth = depth_to_metres(array_to_image(arr, "32FC1"))
    assert np.isnan(depth[1, 1]) and depth[0, 0] == 1.0
    mm = depth_to_metres(array_to_image(np.array([[0, 1500]], np.uint16), "16UC1"))
    assert np.isnan(mm[0, 0]) and mm[0, 1] == pytest.approx(1.5)
    with pytest.raises(ImageConversionError):
        depth_to_metres(array_to_image(RGB, "rgb8"))


def test_compressed():
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, 12:] = (200, 30, 10)
    png = rgb_to_compressed(rgb, "png")
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)
    jpg = compressed_to_rgb(rgb_to_compressed(rgb, "jpeg"))
    assert jpg.shape == rgb.shape and np.abs(jpg.astype(int) - rgb).mean() < 8
    for data in (b"", b"\x89PNG not really"):
        png.data = data
        with pytest.raises(ImageConversionError):
            compressed_to_rgb(png)


def test_encode_validation_and_mask():
    mask = array_to_image(np.array([[True, False]]), "mono8")
    assert bytes(mask.data) == b"\xff\x00" and mask.step == 2
    with pytest.raises(ValueError, match="dtype"):
        array_to_image(RGB.astype(np.float32), "rgb8")
    with pytest.raises(ValueError, match="shape"):
        array_to_image(RGB, "mono8")
    with pytest.raises(ValueError, match="supported"):
        array_to_image(RGB, "hsv8")
    over = heatmap_overlay(RGB, np.zeros((5, 7), np.float32), alpha=0.0)
    np.testing.assert_array_equal(over, RGB)


def test_cv_bridge_agrees_where_available():
    cv_bridge = pytest.importorskip(
        "cv_bridge",
        reason="cv_bridge from PyPI needs numpy<2 and is not installed; "
        "the numpy path is the one the node uses",
    )
    bridge = cv_bridge.CvBridge()
    for enc, arr in (
        ("rgb8", RGB),
        ("mono8", RGB[:, :, 0].copy()),
        ("32FC1", RNG.random((5, 7), dtype=np.float32)),
    ):
        ours = array_to_image(arr, enc)
        np.testing.assert_array_equal(bridge.imgmsg_to_cv2(ours), image_to_array(ours))
        theirs = bridge.cv2_to_imgmsg(arr, enc)
        np.testing.assert_array_equal(image_to_array(theirs), arr)


def test_backprojection():
    k = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
    depth = np.full((48, 64), 2.0, np.float32)
    np.testing.assert_allclose(backproject_pixel(depth, (32, 24), k), [0, 0, 2])
    np.testing.assert_allclose(backproject_pixel(depth, (42, 14), k), [0.2, -0.2, 2.0])
    depth[10:19, 38:47] = np.nan  # hole around the pixel, but not the whole window
    depth[14, 42] = 1.0
    np.testing.assert_allclose(backproject_pixel(depth, (42, 14), k, window=3), [0.1, -0.1, 1])
    depth[:] = np.nan
    assert backproject_pixel(depth, (42, 14), k) is None
    assert backproject_pixel(np.ones((4, 4), np.float32), (9, 9), k) is None
    assert scale_pixel((0, 0), (10, 10), (20, 20)) == (0.5, 0.5)


# ---- encodings of UVC, machine-vision and phone cameras (issue 18 item 8) ----------------
COLOUR = (200, 100, 50)  # a flat colour: every demosaicing / chroma layout must give it back


def _flat(h: int = 8, w: int = 10) -> np.ndarray:
    return np.broadcast_to(np.array(COLOUR, np.uint8), (h, w, 3)).copy()


def _yuv(rgb=COLOUR):
    """BT.601 limited-range Y, U, V of an RGB colour (what OpenCV's YUV2RGB inverts)."""
    r, g, b = rgb
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return [int(round(c)) for c in (y, u, v)]


def _raw(data: np.ndarray, encoding: str, h: int, w: int, step: int):
    from sensor_msgs.msg import Image

    return Image(height=h, width=w, encoding=encoding, step=step, data=data.tobytes())


@pytest.mark.parametrize(
    "encoding,offset",
    [
        ("bayer_rggb8", (0, 0)),
        ("bayer_bggr8", (1, 1)),
        ("bayer_gbrg8", (1, 0)),
        ("bayer_grbg8", (0, 1)),
    ],
)
def test_bayer_decodes_the_colour_and_matches_opencv(encoding, offset):
    """offset: (row, col) of the red pixel in the 2x2 pattern named by the encoding."""
    h, w = 8, 10
    mosaic = np.empty((h, w), np.uint8)
    r0, c0 = offset
    yy, xx = np.mgrid[0:h, 0:w]
    red = (yy % 2 == r0) & (xx % 2 == c0)
    blue = (yy % 2 != r0) & (xx % 2 != c0)
    mosaic[:] = COLOUR[1]
    mosaic[red], mosaic[blue] = COLOUR[0], COLOUR[2]
    out = image_to_rgb(_raw(mosaic, encoding, h, w, w))
    np.testing.assert_array_equal(out[2:-2, 2:-2], _flat()[2:-2, 2:-2])
    codes = {
        "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
        "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
        "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
        "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
    }
    np.testing.assert_array_equal(out, cv2.cvtColor(mosaic, codes[encoding]))


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
def test_packed_yuv422(encoding):
    h, w = 4, 6
    y, u, v = _yuv()
    quad = [u, y, v, y] if encoding == "yuv422" else [y, u, y, v]  # UYVY / YUYV
    data = np.tile(np.array(quad, np.uint8), h * w // 2)
    out = image_to_rgb(_raw(data, encoding, h, w, w * 2))
    assert out.shape == (h, w, 3)
    assert np.abs(out.astype(int) - np.array(COLOUR)).max() <= 2, out[0, 0]
    code = cv2.COLOR_YUV2RGB_UYVY if encoding == "yuv422" else cv2.COLOR_YUV2RGB_YUY2
    np.testing.assert_array_equal(out, cv2.cvtColor(data.reshape(h, w, 2), code))


def test_nv21():
    h, w = 4, 6
    y, u, v = _yuv()
    planes = np.concatenate(
        [np.full(h * w, y, np.uint8), np.tile(np.array([v, u], np.uint8), h * w // 4)]
    )
    out = image_to_rgb(_raw(planes, "nv21", h, w, w))
    assert out.shape == (h, w, 3)
    assert np.abs(out.astype(int) - np.array(COLOUR)).max() <= 2, out[0, 0]
    with pytest.raises(ImageConversionError) as err:
        image_to_rgb(_raw(planes[:-1], "nv21", h, w, w))
    assert err.value.kind == "truncated"


@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16", "8UC3", "8UC4"])
def test_16bit_colour_and_generic_8bit(encoding):
    rgb = _flat()
    if encoding.endswith("16"):
        arr = rgb.astype(np.uint16) * 257
        if encoding.startswith("bgr"):
            arr = arr[:, :, ::-1]
        if "a" in encoding[3:]:
            arr = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 65535, np.uint16)], 2)
    else:
        arr = (
            rgb
            if encoding == "8UC3"
            else np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], 2)
        )
    msg = array_to_image(np.ascontiguousarray(arr), encoding)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
