"""Training-time augmentation of the uint8 image, applied BEFORE qc_contract.preprocess (so the model
always sees inputs produced by the same preprocessing as the edge).

One affine warp does rotation (±20°), zoom (±10%) and horizontal flip about the image centre; borders are
filled by replicating the edge pixels (Keras' fill_mode="nearest"). Brightness multiplies by 0.8-1.2 with
saturation. Every draw is determined by a NumPy Generator, seeded per (run seed, image, draw).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augmentation:
    rotation_deg: float = 20.0  # uniform in [-rotation_deg, +rotation_deg]
    zoom: float = 0.10  # scale uniform in [1 - zoom, 1 + zoom]
    hflip: bool = True  # mirror left-right with probability 0.5
    brightness: tuple[float, float] = (0.8, 1.2)  # multiply pixel values by a uniform factor in this range

    def __post_init__(self) -> None:
        lo, hi = self.brightness
        if not (0 <= self.rotation_deg <= 180 and 0 <= self.zoom < 1 and 0 < lo <= hi):
            raise ValueError(f"invalid augmentation {self}")

    @property
    def is_identity(self) -> bool:
        return self.rotation_deg == 0 and self.zoom == 0 and not self.hflip and self.brightness == (1.0, 1.0)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random draw applied to an H x W (x C) uint8 image; returns a new uint8 image of the same shape."""
        h, w = image.shape[:2]
        angle = rng.uniform(-self.rotation_deg, self.rotation_deg)
        scale = rng.uniform(1.0 - self.zoom, 1.0 + self.zoom)
        flip = self.hflip and rng.random() < 0.5
        factor = rng.uniform(*self.brightness)
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
        if flip:  # warp(x) = rotate_zoom(mirror(x)): compose the affine matrices
            mirror = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            matrix = matrix @ mirror
        out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return cv2.convertScaleAbs(out, alpha=factor) if factor != 1.0 else out


NO_AUGMENTATION = Augmentation(rotation_deg=0.0, zoom=0.0, hflip=False, brightness=(1.0, 1.0))


def draw_rng(seed: int, image_index: int, draw: int) -> np.random.Generator:
    """The generator of one augmentation draw: reproducible and independent of the order images are visited."""
    return np.random.default_rng([seed, image_index, draw])
