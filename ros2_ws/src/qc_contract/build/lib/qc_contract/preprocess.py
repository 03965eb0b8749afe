"""Image -> model input tensor, driven by the manifest's Preprocessing. The inference node and the
cloud training/export tools both call this module, so there is no train/serve skew.

Steps: ROI crop, grayscale -> 3 channels, colour order, resize (or letterbox), normalise, NCHW float32.
All vectorised (OpenCV + NumPy); no per-pixel Python.

Speed (the node runs this per part): resizing is per channel, so the colour reordering and the grey ->
3-channel expansion are done on the small resized image, while it is written out as NCHW planes; and
normalisation is a per-channel 256-entry lookup table built with the very float32 formula
`(pixel * (1/scale) - mean) * (1/std)`, so the result is bit-identical to computing that formula on the
whole image, about 5x faster for a 640x480 frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from qc_contract.model_manifest import Normalization, Preprocessing

CHANNEL_ORDERS = ("BGR", "RGB")


class PreprocessError(ValueError):
    """The image cannot be turned into a model input (empty, wrong shape or dtype, ROI outside the image)."""


@lru_cache(maxsize=16)
def _normalisation_lut(norm: Normalization) -> np.ndarray:
    """(3, 256) float32: the normalised value of every uint8 level, per channel in the model's order."""
    levels = np.arange(256, dtype=np.float32)
    scale = np.float32(1.0 / norm.scale)
    mean = np.asarray(norm.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(norm.std, dtype=np.float32)
    lut = (levels[np.newaxis, :] * scale - mean[:, np.newaxis]) * inv_std[:, np.newaxis]
    lut.setflags(write=False)
    return lut


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise PreprocessError("empty image")
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise PreprocessError(f"unsupported image dtype {image.dtype} (uint8 or uint16 expected)")
    return image


def _colour_planes(image: np.ndarray) -> np.ndarray:
    """H x W x {1,3} (alpha dropped) view; raises for anything else."""
    if image.ndim == 2:
        return image[:, :, np.newaxis]
    if image.ndim == 3 and image.shape[2] in (1, 3):
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return image[:, :, :3]
    raise PreprocessError(f"unsupported image shape {image.shape}")


def _resize(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """H x W x C (C = 1 or 3) -> input_height x input_width x C, stretched or letterboxed."""
    h, w, channels = spec.input_height, spec.input_width, image.shape[2]
    if not spec.letterbox:
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return resized.reshape(h, w, channels)
    scale = min(w / image.shape[1], h / image.shape[0])
    nw, nh = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, channels)
    out = np.full((h, w, channels), spec.pad_value, dtype=image.dtype)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def preprocess_into(image: np.ndarray, spec: Preprocessing, channel_order: str, out: np.ndarray) -> np.ndarray:
    """Preprocess one image into `out`, a writable float32 (3, input_height, input_width) array (e.g. one
    slot of a preallocated batch). Returns `out`."""
    if channel_order not in CHANNEL_ORDERS:
        raise PreprocessError(f"channel_order must be one of {CHANNEL_ORDERS}, not {channel_order!r}")
    image = _colour_planes(_to_uint8(image))
    if spec.roi is not None:
        x, y, w, h = spec.roi
        if x < 0 or y < 0 or x + w > image.shape[1] or y + h > image.shape[0]:
            raise PreprocessError(f"roi {spec.roi} outside image of {image.shape[1]}x{image.shape[0]}")
        image = image[y : y + h, x : x + w]
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise PreprocessError("empty image")
    resized = _resize(np.ascontiguousarray(image), spec)
    lut = _normalisation_lut(spec.normalization)
    if resized.shape[2] == 1:  # grey: the three model channels are the same plane
        sources = (0, 0, 0)
    elif channel_order == spec.color_order:
        sources = (0, 1, 2)
    else:
        sources = (2, 1, 0)
    for channel, source in enumerate(sources):
        np.take(lut[channel], resized[:, :, source], out=out[channel])
    return out


def preprocess(image: np.ndarray, spec: Preprocessing, channel_order: str = "BGR") -> np.ndarray:
    """One image (H x W, H x W x 1/3/4; uint8, or uint16 scaled down to 8 bit) -> (1, 3, h, w) float32.

    channel_order is the order of `image` ("BGR" for OpenCV-read files and bgr8 frames, "RGB" for rgb8).
    """
    out = np.zeros((1, 3, spec.input_height, spec.input_width), dtype=np.float32)
    preprocess_into(image, spec, channel_order, out[0])
    return out


def preprocess_batch(
    images: Sequence[np.ndarray], spec: Preprocessing, channel_order: str | Sequence[str] = "BGR"
) -> np.ndarray:
    """N images -> (N, 3, h, w) float32, written straight into one array. channel_order: one for all
    images, or one per image."""
    orders = [channel_order] * len(images) if isinstance(channel_order, str) else list(channel_order)
    if len(orders) != len(images):
        raise PreprocessError(f"{len(images)} images but {len(orders)} channel orders")
    out = np.zeros((len(images), 3, spec.input_height, spec.input_width), dtype=np.float32)
    for i, (image, order) in enumerate(zip(images, orders, strict=True)):
        preprocess_into(image, spec, order, out[i])
    return out
