"""Image -> model input tensor, driven by the manifest's Preprocessing. The inference node and the
cloud training/export tools both call this module, so there is no train/serve skew.

Steps: ROI crop, grayscale -> 3 channels, colour order, resize (or letterbox), normalise, NCHW float32.
All vectorised (OpenCV + NumPy); no per-pixel Python.
"""

from __future__ import annotations

import cv2
import numpy as np

from qc_cell.inference.manifest import Preprocessing


class PreprocessError(ValueError):
    """The image cannot be turned into a model input (empty, wrong shape or dtype, ROI outside the image)."""


def _to_three_channels(image: np.ndarray, channel_order: str, target: str) -> np.ndarray:
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        gray = image.reshape(image.shape[0], image.shape[1])
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)  # channels are equal: the order does not matter
    if image.ndim == 3 and image.shape[2] == 3:
        return image if channel_order == target else image[:, :, ::-1]
    if image.ndim == 3 and image.shape[2] == 4:
        return _to_three_channels(image[:, :, :3], channel_order, target)
    raise PreprocessError(f"unsupported image shape {image.shape}")


def _resize(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    h, w = spec.input_height, spec.input_width
    if not spec.letterbox:
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    scale = min(w / image.shape[1], h / image.shape[0])
    nw, nh = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out = np.full((h, w, 3), spec.pad_value, dtype=image.dtype)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def preprocess(image: np.ndarray, spec: Preprocessing, channel_order: str = "BGR") -> np.ndarray:
    """One image (H x W, H x W x 1/3/4; uint8, or uint16 scaled down to 8 bit) -> (1, 3, h, w) float32.

    channel_order is the order of `image` ("BGR" for OpenCV-read files and bgr8 frames, "RGB" for rgb8).
    """
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise PreprocessError("empty image")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise PreprocessError(f"unsupported image dtype {image.dtype} (uint8 or uint16 expected)")
    if spec.roi is not None:
        x, y, w, h = spec.roi
        if x < 0 or y < 0 or x + w > image.shape[1] or y + h > image.shape[0]:
            raise PreprocessError(f"roi {spec.roi} outside image of {image.shape[1]}x{image.shape[0]}")
        image = image[y : y + h, x : x + w]
    rgb_or_bgr = _to_three_channels(image, channel_order, spec.color_order)
    resized = _resize(np.ascontiguousarray(rgb_or_bgr), spec)
    norm = spec.normalization
    scale = np.float32(1.0 / norm.scale)
    mean = np.asarray(norm.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(norm.std, dtype=np.float32)
    tensor = (resized.astype(np.float32) * scale - mean) * inv_std
    return np.ascontiguousarray(tensor.transpose(2, 0, 1))[np.newaxis]


def preprocess_batch(images: list[np.ndarray], spec: Preprocessing, channel_order: str = "BGR") -> np.ndarray:
    return np.concatenate([preprocess(im, spec, channel_order) for im in images], axis=0)
