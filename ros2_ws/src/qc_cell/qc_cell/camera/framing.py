"""Region of interest and downscale: what the cell publishes of each frame (only what inference needs)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Framing:
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in source pixels; None = whole frame
    scale: float = 1.0  # output size / ROI size, (0, 1]

    def __post_init__(self) -> None:
        if self.roi is not None:
            x, y, w, h = self.roi
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"roi {list(self.roi)}: x, y must be >= 0 and width, height > 0")
        if not 0.0 < self.scale <= 1.0:
            raise ValueError(f"scale {self.scale} must be in (0, 1]")

    @classmethod
    def from_parameters(cls, roi: list[int], scale: float) -> Framing:
        """From the node's `roi` parameter [x, y, width, height] ([0, 0, 0, 0] = whole frame)."""
        if len(roi) != 4:
            raise ValueError(f"roi {list(roi)} must have 4 values: x, y, width, height")
        values = tuple(int(v) for v in roi)
        return cls(None if values == (0, 0, 0, 0) else values, float(scale))  # type: ignore[arg-type]

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The cropped (a view, no copy) and downscaled image; ValueError when the ROI is outside the image."""
        if self.roi is not None:
            x, y, w, h = self.roi
            height, width = image.shape[:2]
            if x + w > width or y + h > height:
                raise ValueError(f"roi {list(self.roi)} outside the {width}x{height} frame")
            image = image[y : y + h, x : x + w]
        if self.scale < 1.0:
            height, width = image.shape[:2]
            size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return image
