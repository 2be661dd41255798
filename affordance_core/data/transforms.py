"""Image decoding and augmentation on HxWx3 uint8 RGB numpy arrays.

Images stay uint8 until :func:`to_tensor`, which gives float32 (3, H, W) in [0, 1]. No
mean/std normalisation happens here: each backbone normalises with its own statistics.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = [
    "center_resize",
    "load_gray",
    "load_rgb",
    "random_crop",
    "random_hflip",
    "resize",
    "resize_shorter_side",
    "to_tensor",
    "train_augment",
]

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def _read_bytes(path: str | Path) -> np.ndarray | None:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    return data if data.size else None


def _jpeg_is_truncated(data: np.ndarray) -> bool:
    """True for a JPEG stream whose end-of-image marker is missing.

    libjpeg decodes a truncated file into a partly grey image with only a console warning, so
    the marker is checked here. Streams with bytes after the marker (padding, appended
    trailers) are verified by a full Pillow decode, which stops at the marker.
    """
    raw = data.tobytes()
    if not raw.startswith(_JPEG_SOI):
        return False
    if raw.rstrip(b"\x00\r\n ").endswith(_JPEG_EOI):
        return False
    try:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(raw)) as im:
            im.load()
    except Exception:  # noqa: BLE001 - any decoder failure means the file is unusable
        return True
    return False


def load_rgb(path: str | Path) -> np.ndarray | None:
    """Decodes an image file to RGB.

    Args:
        path: image file (any format OpenCV reads; EXIF orientation applied).

    Returns:
        (H, W, 3) uint8 RGB array, or None when the file is missing, unreadable, truncated or
        empty.
    """
    data = _read_bytes(path)
    if data is None or _jpeg_is_truncated(data):
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None or image.size == 0 or image.ndim != 3:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_gray(path: str | Path) -> np.ndarray | None:
    """Decodes an image file to one 8-bit channel (the GT heat-map format).

    Returns:
        (H, W) uint8 array, or None when the file cannot be decoded.
    """
    data = _read_bytes(path)
    if data is None or _jpeg_is_truncated(data):
        return None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if image is None or image.size == 0:
        return None
    return image


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes to ``size`` = (H, W): area averaging when shrinking, bilinear when enlarging.

    Args:
        image: (h, w, C) or (h, w) uint8 array.
        size: target (H, W).

    Returns:
        The resized array, same dtype and channel count.
    """
    h, w = image.shape[:2]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return image
    shrink = out_h <= h and out_w <= w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (out_w, out_h), interpolation=interp)


def resize_shorter_side(image: np.ndarray, side: int) -> np.ndarray:
    """Resizes so that the shorter side equals ``side``, keeping the aspect ratio.

    Args:
        image: (h, w, C) uint8 array.
        side: target length of the shorter side in pixels.

    Returns:
        (H, W, C) array with ``min(H, W) == side``.
    """
    h, w = image.shape[:2]
    if h <= w:
        size = (side, max(side, round(w * side / h)))
    else:
        size = (max(side, round(h * side / w)), side)
    return resize(image, size)


def center_resize(image: np.ndarray, side: int) -> np.ndarray:
    """Resizes to exactly ``side`` x ``side`` (no crop; the test-time transform)."""
    return resize(image, (side, side))


def random_crop(image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """Crops a random ``side`` x ``side`` window (the image must be at least that large)."""
    h, w = image.shape[:2]
    if h < side or w < side:
        raise ValueError(f"cannot crop {side}x{side} from a {h}x{w} image; resize it first")
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    return image[top : top + side, left : left + side]


def random_hflip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirrors the image left-right with probability ``p``."""
    return image[:, ::-1] if rng.random() < p else image


def train_augment(image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """The LOCATE training transform, scaled to ``side``.

    Shorter side to ``round(side * 256 / 224)``, random ``side`` x ``side`` crop, horizontal
    flip with p = 0.5.

    Args:
        image: (h, w, 3) uint8 RGB.
        side: output size S.
        rng: source of randomness.

    Returns:
        (S, S, 3) uint8 RGB (possibly a non-contiguous view).
    """
    image = resize_shorter_side(image, round(side * 256 / 224))
    return random_hflip(random_crop(image, side, rng), rng)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 tensor in [0, 1]."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(chw).to(torch.float32).div_(255.0)
