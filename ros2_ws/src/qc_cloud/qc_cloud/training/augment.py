"""Training-time augmentation of the uint8 image, applied BEFORE qc_contract.preprocess (so the model
always sees inputs produced by the same preprocessing as the edge).

One affine warp does rotation (± rotation_deg), zoom, horizontal/vertical flips and (where the part allows)
quarter turns about the image centre; borders are filled by replicating the edge pixels (Keras'
fill_mode="nearest"). Then photometric changes suited to industrial images: brightness (gain), contrast around
the image mean, a slight Gaussian blur (focus) and sensor noise, and a JPEG re-compression, each configurable;
off in the paper's preset (PAPER_AUGMENTATION). The re-compression is there because the learning loop trains on
the cells' image samples, which travel as JPEG, while the cells score raw frames: without it a model learns JPEG
artefacts as a feature (figures in docs/training.md, `bench/bench_jpeg_samples.py`). A verifier model also gets
images the cells offload: the region already reduced to the model's input side, then JPEG-compressed, whose
artefacts at that scale it never sees when every round trip is at the source size (`jpeg_at_input`: that share of
the round trips is made on the image reduced as the cell's bridge reduces it). Every draw is determined by a
NumPy Generator, seeded per (run seed, image, draw).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augmentation:
    rotation_deg: float = 10.0  # uniform in [-rotation_deg, +rotation_deg]
    zoom: float = 0.05  # scale uniform in [1 - zoom, 1 + zoom]
    hflip: bool = True  # mirror left-right with probability 0.5
    brightness: tuple[float, float] = (0.8, 1.2)  # multiply pixel values by a uniform factor in this range
    vflip: bool = True  # mirror top-bottom with probability 0.5
    rot90: bool = True  # a random quarter turn (square inputs; parts without a fixed orientation)
    contrast: float = 0.15  # contrast factor uniform in [1 - contrast, 1 + contrast] around the image mean
    blur_sigma: float = 0.6  # with probability 0.25 a Gaussian blur of sigma uniform in (0, blur_sigma] px
    noise_std: float = 2.0  # Gaussian noise of std uniform in [0, noise_std] grey levels
    jpeg_prob: float = 0.5  # with this probability, JPEG-compressed and decoded again ...
    jpeg_quality: tuple[int, int] = (75, 95)  # ... at a quality uniform in this range (samples: 85-95)
    jpeg_at_input: float = 0.0  # share of the round trips made on the image reduced to the model's input side

    def __post_init__(self) -> None:
        lo, hi = self.brightness
        if not (0 <= self.rotation_deg <= 180 and 0 <= self.zoom < 1 and 0 < lo <= hi):
            raise ValueError(f"invalid augmentation {self}")
        if not (0 <= self.contrast < 1 and 0 <= self.blur_sigma <= 5 and 0 <= self.noise_std <= 50):
            raise ValueError(f"invalid augmentation {self}: contrast in [0, 1), blur_sigma 0..5, noise_std 0..50")
        q_lo, q_hi = self.jpeg_quality
        if not (0 <= self.jpeg_prob <= 1 and 1 <= q_lo <= q_hi <= 100):
            raise ValueError(f"invalid augmentation {self}: jpeg_prob in [0, 1], 1 <= jpeg_quality low <= high <= 100")
        if not 0 <= self.jpeg_at_input <= 1:
            raise ValueError(f"invalid augmentation {self}: jpeg_at_input in [0, 1]")

    @property
    def is_identity(self) -> bool:
        geometric = self.rotation_deg == 0 and self.zoom == 0 and not (self.hflip or self.vflip or self.rot90)
        photometric = self.brightness == (1.0, 1.0) and self.contrast == 0 and self.blur_sigma == 0
        return geometric and photometric and self.noise_std == 0 and self.jpeg_prob == 0

    def apply(
        self,
        image: np.ndarray,
        rng: np.random.Generator,
        reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """One random draw applied to an H x W (x C) uint8 image; returns a new uint8 image of the same shape, or
        of reduce's when a JPEG round trip at the input side was drawn (`jpeg_at_input`, only with `reduce`)."""
        h, w = image.shape[:2]
        angle = rng.uniform(-self.rotation_deg, self.rotation_deg)
        scale = rng.uniform(1.0 - self.zoom, 1.0 + self.zoom)
        flip = self.hflip and rng.random() < 0.5
        factor = rng.uniform(*self.brightness)
        # The draws of the paper's augmentation come first, so its preset reproduces its earlier runs exactly.
        vflip = self.vflip and rng.random() < 0.5
        turns = int(rng.integers(4)) if self.rot90 and h == w else 0
        contrast = rng.uniform(1 - self.contrast, 1 + self.contrast) if self.contrast else 1.0
        blur = rng.uniform(0, self.blur_sigma) if self.blur_sigma and rng.random() < 0.25 else 0.0
        noise = rng.uniform(0, self.noise_std) if self.noise_std else 0.0
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle + 90.0 * turns, scale)
        if flip or vflip:  # warp(x) = rotate_zoom(mirror(x)): compose the affine matrices
            sx, sy = (-1.0 if flip else 1.0), (-1.0 if vflip else 1.0)
            mirror = np.array(
                [[sx, 0.0, (w - 1.0) if flip else 0.0], [0.0, sy, (h - 1.0) if vflip else 0.0], [0, 0, 1.0]]
            )
            matrix = matrix @ mirror
        out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # Drawn last (and only when enabled), so the presets without it reproduce their earlier runs exactly.
        quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)) if self._jpeg(rng) else 0
        at_input = bool(quality and self.jpeg_at_input and rng.random() < self.jpeg_at_input and reduce is not None)
        if contrast == 1.0 and blur == 0.0 and noise == 0.0:
            out = cv2.convertScaleAbs(out, alpha=factor) if factor != 1.0 else out
            return _jpeg_round_trip(reduce(out) if at_input else out, quality) if quality else out
        img = out.astype(np.float32) * np.float32(factor)
        if contrast != 1.0:
            mean = img.mean(axis=(0, 1), keepdims=True)
            img = (img - mean) * np.float32(contrast) + mean
        if blur > 0.05:
            img = cv2.GaussianBlur(img, (0, 0), blur)
        if noise > 0:
            img += rng.normal(0.0, noise, img.shape).astype(np.float32)
        out = np.clip(img, 0, 255).astype(np.uint8)
        return _jpeg_round_trip(reduce(out) if at_input else out, quality) if quality else out

    def _jpeg(self, rng: np.random.Generator) -> bool:
        return self.jpeg_prob > 0 and rng.random() < self.jpeg_prob


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return decoded.reshape(image.shape)


NO_AUGMENTATION = Augmentation(
    rotation_deg=0.0,
    zoom=0.0,
    hflip=False,
    brightness=(1.0, 1.0),
    vflip=False,
    rot90=False,
    contrast=0.0,
    blur_sigma=0.0,
    noise_std=0.0,
    jpeg_prob=0.0,
)
# The paper's (Keras) augmentation: rotation ±20°, zoom ±10 %, horizontal flip, brightness 0.8-1.2.
PAPER_AUGMENTATION = Augmentation(
    rotation_deg=20.0,
    zoom=0.10,
    hflip=True,
    brightness=(0.8, 1.2),
    vflip=False,
    rot90=False,
    contrast=0.0,
    blur_sigma=0.0,
    noise_std=0.0,
    jpeg_prob=0.0,
)


def draw_rng(seed: int, image_index: int, draw: int) -> np.random.Generator:
    """The generator of one augmentation draw: reproducible and independent of the order images are visited."""
    return np.random.default_rng([seed, image_index, draw])
