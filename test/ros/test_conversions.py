"""Message <-> numpy conversions and grasp-point geometry (no ROS graph)."""
from __future__ import annotations

import numpy as np
import pytest

from affordance_ros.conversions import (
    ImageConversionError,
    array_to_image,
    compressed_to_rgb,
    depth_to_metres,
    heatmap_overlay,
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


@pytest.mark.parametrize("encoding,array", [
    ("rgb8", RGB), ("bgr8", RGB), ("rgba8", RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)),
    ("bgra8", RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)), ("mono8", RGB[:, :, 0]),
    ("mono16", RNG.integers(0, 65536, (5, 7), dtype=np.uint16)),
    ("16UC1", RNG.integers(0, 65536, (5, 7), dtype=np.uint16)),
    ("32FC1", RNG.random((5, 7), dtype=np.float32)),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_round_trip(encoding, array, pad):
    msg = padded(array_to_image(array, encoding), pad)
    np.testing.assert_array_equal(image_to_array(msg), array)
    rgb = image_to_rgb(msg)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous


def test_colour_orders():
    np.testing.assert_array_equal(image_to_rgb(array_to_image(RGB, "rgb8")), RGB)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(RGB[:, :, ::-1].copy(), "bgr8")),
                                  RGB)
    alpha = np.full((5, 7, 1), 9, np.uint8)
    rgba = np.concatenate([RGB, alpha], axis=2)
    bgra = np.concatenate([RGB[:, :, ::-1], alpha], axis=2)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(rgba, "rgba8")), RGB)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(bgra, "bgra8")), RGB)
    mono = image_to_rgb(array_to_image(RGB[:, :, 1].copy(), "mono8"))
    assert (mono == RGB[:, :, 1:2]).all()


def test_display_scaling():
    m16 = np.array([[0, 257, 65535]], np.uint16)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(m16, "mono16"))[0, :, 0],
                                  [0, 1, 255])
    depth = np.array([[500, 1000, 1500]], np.uint16)
    np.testing.assert_array_equal(image_to_rgb(array_to_image(depth, "16UC1"))[0, :, 0],
                                  [0, 128, 255])
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


@pytest.mark.parametrize("mutate,kind", [
    (lambda m: setattr(m, "encoding", "yuv422"), "encoding"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]), "truncated"),
    (lambda m: setattr(m, "step", 3), "truncated"),
    (lambda m: (setattr(m, "height", 0), setattr(m, "data", b"")), "empty"),
])
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
        array_to_image(RGB, "yuv422")
    over = heatmap_overlay(RGB, np.zeros((5, 7), np.float32), alpha=0.0)
    np.testing.assert_array_equal(over, RGB)


def test_cv_bridge_agrees_where_available():
    cv_bridge = pytest.importorskip(
        "cv_bridge", reason="cv_bridge from PyPI needs numpy<2 and is not installed; "
        "the numpy path is the one the node uses")
    bridge = cv_bridge.CvBridge()
    for enc, arr in (("rgb8", RGB), ("mono8", RGB[:, :, 0].copy()),
                     ("32FC1", RNG.random((5, 7), dtype=np.float32))):
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
