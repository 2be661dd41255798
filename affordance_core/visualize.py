"""Heat map overlays for figures, the CLI's overlays and the node's debug image."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["heatmap_overlay"]


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a heat map, coloured with OpenCV's JET map, over an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        heatmap: (h, w) float in [0, 1]; resized to (H, W) when needed.
        alpha: weight of the coloured heat map.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    h, w = image.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    heat8 = np.clip(np.nan_to_num(heat) * 255.0, 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(heat8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1.0 - alpha, colour, alpha, 0.0)
