"""The image sample channel's budget: JPEGs of re-inspect/defective parts for retraining, within a byte
budget per sliding hour (and a minimum interval, so one bad batch does not use the whole hour)."""

from __future__ import annotations

import base64
import hashlib
from collections import deque

import cv2
import numpy as np

from qc_contract.preprocess import fit_longer_side

HOUR_NS = 3_600_000_000_000


class ByteBudget:
    def __init__(self, bytes_per_hour: int, min_interval_s: float = 0.0) -> None:
        self.bytes_per_hour = bytes_per_hour
        self.min_interval_ns = int(min_interval_s * 1e9)
        self._sent: deque[tuple[int, int]] = deque()  # (time ns, bytes)
        self._total = 0

    def _trim(self, now_ns: int) -> None:
        while self._sent and self._sent[0][0] <= now_ns - HOUR_NS:
            self._total -= self._sent.popleft()[1]

    def allows(self, size: int, now_ns: int) -> bool:
        self._trim(now_ns)
        if self._sent and now_ns - self._sent[-1][0] < self.min_interval_ns:
            return False
        return self._total + size <= self.bytes_per_hour

    def spend(self, size: int, now_ns: int) -> None:
        self._sent.append((now_ns, size))
        self._total += size

    def used(self, now_ns: int) -> int:
        self._trim(now_ns)
        return self._total


def encode_jpeg(
    image: np.ndarray, quality: int, max_side: int = 0, interpolation: int = cv2.INTER_AREA
) -> tuple[str, int, int]:
    """(base64 JPEG, width, height); downscaled so the longer side is at most max_side (0 = keep). INTER_AREA
    suits people (samples); an image for a model is downscaled as the model's own preprocessing would
    (INTER_LINEAR), as its training reduces the images it JPEG-compresses at that size (augmentation
    `jpeg_at_input`)."""
    image = fit_longer_side(image, max_side, interpolation)
    height, width = image.shape[:2]
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return base64.b64encode(data.tobytes()).decode(), width, height


def random_pick(part_id: str, rate: float) -> bool:
    """Whether a part is one of the random samples: a uniform hash of its id below `rate` (0..1). The same part
    is always picked or not (a replay samples the same parts), and the pick ignores verdict and score."""
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(part_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2**64


def encode_heatmap(heatmap: np.ndarray, width: int, height: int, quality: int) -> str:
    """Base64 greyscale JPEG of a class-activation map (uint8, or float in [0, 1]) at the sample's size."""
    if heatmap.ndim != 2:
        raise ValueError(f"a heatmap is one channel, got shape {heatmap.shape}")
    if heatmap.dtype != np.uint8:
        heatmap = (np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)
    if heatmap.shape != (height, width):
        heatmap = cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(heatmap), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return base64.b64encode(data.tobytes()).decode()
