"""Image -> model input tensor, driven by the manifest's Preprocessing. The inference node and the
cloud training/export tools both call this module, so there is no train/serve skew.

Steps: ROI crop, grayscale -> 3 channels, colour order, resize (or letterbox), normalise, NCHW float32.
All vectorised (OpenCV + NumPy); no per-pixel Python.

Bayer mosaics (a camera's raw frames, channel order "bayer_rggb" etc.) are demosaiced here, and only over the
ROI (plus a few pixels of margin, the phase of the pattern kept): the same pixels as demosaicing the whole frame
and cropping, so a model input from a raw frame at the edge is identical to one from the demosaiced frame saved
for training, without the full-size BGR copy of a 5-12 MP frame. Without a ROI the frame is demosaiced once, into
a buffer the thread reuses frame after frame (no 36 MB allocation per 12 MP frame), then resized as any BGR frame;
when the model input is much smaller than the frame, only the 2x2 cells the resize reads are demosaiced (the
same model input, bit for bit). Mosaics have whole 2x2 cells: odd sizes are refused.

Speed (the node runs this per part): resizing is per channel, so the colour reordering and the grey ->
3-channel expansion are done on the small resized image, while it is written out as NCHW planes; and
normalisation is a per-channel 256-entry lookup table built with the very float32 formula
`(pixel * (1/scale) - mean) * (1/std)`, so the result is bit-identical to computing that formula on the
whole image, about 5x faster for a 640x480 frame.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

from qc_contract.model_manifest import Normalization, Preprocessing

CHANNEL_ORDERS = ("BGR", "RGB")
# Bayer mosaic layouts (ROS encoding names without the bit depth) -> OpenCV demosaicing code (OpenCV names the
# pattern by the second row, as cv_bridge does). A raw mosaic's "channel order" is its layout.
BAYER_CODES = {
    "bayer_rggb": cv2.COLOR_BayerBG2BGR,
    "bayer_bggr": cv2.COLOR_BayerRG2BGR,
    "bayer_gbrg": cv2.COLOR_BayerGR2BGR,
    "bayer_grbg": cv2.COLOR_BayerGB2BGR,
}
_DEMOSAIC_MARGIN = 4  # px around a region: bilinear demosaicing reads 1 px around each pixel (even: pattern phase)


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


def _mosaic_uint8(mosaic: np.ndarray) -> np.ndarray:
    """A mosaic (or a crop of one) as uint8: 16-bit pixels scaled down to 8 bit (`>> 8`, as `_to_uint8`)."""
    if mosaic.dtype == np.uint16:
        if mosaic.flags.c_contiguous:  # the high byte of each pixel, one copy (not a 16-bit temporary as well)
            high = 1 if sys.byteorder == "little" else 0
            return np.ascontiguousarray(mosaic.view(np.uint8)[:, high::2])
        return (mosaic >> 8).astype(np.uint8)
    if mosaic.dtype != np.uint8:
        raise PreprocessError(f"unsupported bayer mosaic dtype {mosaic.dtype} (uint8 or uint16 expected)")
    return mosaic


def _check_mosaic(mosaic: np.ndarray, layout: str) -> int:
    """The OpenCV demosaicing code of `layout`; PreprocessError for an unknown layout or a mosaic that is not one
    channel of whole 2x2 cells."""
    try:
        code = BAYER_CODES[layout]
    except KeyError:
        raise PreprocessError(f"unknown bayer layout {layout!r} (known: {', '.join(BAYER_CODES)})") from None
    if not isinstance(mosaic, np.ndarray) or mosaic.ndim != 2:
        raise PreprocessError(f"a bayer mosaic has one channel, not shape {getattr(mosaic, 'shape', None)}")
    height, width = mosaic.shape
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise PreprocessError(f"a bayer mosaic is made of whole 2x2 cells: {width}x{height} has an odd side")
    if mosaic.dtype not in (np.uint8, np.uint16):
        raise PreprocessError(f"unsupported bayer mosaic dtype {mosaic.dtype} (uint8 or uint16 expected)")
    return code


def demosaic(
    mosaic: np.ndarray,
    layout: str,
    roi: tuple[int, int, int, int] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """BGR of a Bayer mosaic (H x W, uint8 or uint16: 16 bit scaled to 8 first) in `layout` (a BAYER_CODES key),
    of the whole frame or only of `roi` (x, y, width, height): identical to demosaicing the whole frame and
    cropping, at the cost of the ROI. A whole frame is written into `out` when given (H x W x 3 uint8, e.g. a
    buffer reused frame after frame: no 3-bytes-per-pixel allocation per frame). A mosaic is made of whole 2x2
    cells: odd sizes are refused."""
    code = _check_mosaic(mosaic, layout)
    height, width = mosaic.shape
    if roi is None:
        if out is not None and (out.shape != (height, width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous):
            raise PreprocessError(
                f"out must be a contiguous {height}x{width}x3 uint8 array, not {out.shape} {out.dtype}"
            )
        return cv2.cvtColor(_mosaic_uint8(mosaic), code, dst=out)
    x, y, w, h = roi
    if x < 0 or y < 0 or x + w > width or y + h > height or w <= 0 or h <= 0:
        raise PreprocessError(f"roi {roi} outside image of {width}x{height}")
    x0, y0 = max(0, x - _DEMOSAIC_MARGIN) & ~1, max(0, y - _DEMOSAIC_MARGIN) & ~1  # even: same pattern phase
    x1, y1 = min(width, x + w + _DEMOSAIC_MARGIN), min(height, y + h + _DEMOSAIC_MARGIN)
    bgr = cv2.cvtColor(np.ascontiguousarray(_mosaic_uint8(mosaic[y0:y1, x0:x1])), code)
    return bgr[y - y0 : y - y0 + h, x - x0 : x - x0 + w]


_buffers = threading.local()


def _frame_buffer(height: int, width: int) -> np.ndarray:
    """This thread's H x W x 3 uint8 buffer for whole-frame demosaicing, reused while the frame size stays (a fresh
    36 MB array per 12 MP frame costs more in page faults than the demosaicing itself: 12.5 vs 2.5 ms here)."""
    buffer = getattr(_buffers, "bgr", None)
    if buffer is None or buffer.shape != (height, width, 3):
        buffer = _buffers.bgr = np.empty((height, width, 3), dtype=np.uint8)
    return buffer


def _resize_size(height: int, width: int, spec: Preprocessing) -> tuple[int, int]:
    """(width, height) the image is resized to: the model input, or the scaled size inside the letterbox."""
    if not spec.letterbox:
        return spec.input_width, spec.input_height
    scale = min(spec.input_width / width, spec.input_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _sampled_lines(size: int, out_size: int) -> np.ndarray:
    """The source lines (rows or columns) OpenCV's INTER_LINEAR resize from `size` to `out_size` reads, computed as
    OpenCV does (cv::resize: scale = 1 / (out_size / size) in double, f = float((d + 0.5) * scale - 0.5), lines
    floor(f) and the next, clamped to the image). Sorted, unique."""
    scale = 1.0 / (out_size / size)
    centres = np.floor(((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)).astype(np.int64)
    lines = np.unique(np.concatenate([centres, centres + 1]))
    return lines[(lines >= 0) & (lines < size)] if lines[0] < 0 or lines[-1] >= size else lines


def _cell_groups(lines: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups of whole 2x2 cells around `lines` (each group starts on an even line and is of even length, so the
    groups put side by side keep the Bayer phase, and each line needed has its demosaicing neighbours in its own
    group). Returns (the source lines of the groups in order, the position of each needed line in them)."""
    starts = np.maximum(0, (lines - 1) & ~1)
    ends = np.minimum(size, lines + 2)
    ends += (ends - starts) & 1  # even length (at the frame's end the length is even already: size is even)
    groups: list[list[int]] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if groups and start <= groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], end)
        else:
            groups.append([start, end])
    source = np.concatenate([np.arange(start, end) for start, end in groups])
    position = np.searchsorted(source, lines)
    return source, position


@lru_cache(maxsize=8)
def _sampling_plan(height: int, width: int, resize_to: tuple[int, int]) -> tuple[np.ndarray, ...] | None:
    """For a height x width mosaic resized to `resize_to`: (source rows, source columns, positions of the needed
    rows / columns in them, flat pixel indices of the needed pixels), or None when the gathered mosaic would be more
    than 1/_SAMPLED_MAX_SHARE of the frame. Computed once per frame size and model input."""
    rows, cols = _sampled_lines(height, resize_to[1]), _sampled_lines(width, resize_to[0])
    src_rows, row_pos = _cell_groups(rows, height)
    src_cols, col_pos = _cell_groups(cols, width)
    if src_rows.size * src_cols.size * _SAMPLED_MAX_SHARE > height * width:
        return None
    flat = (rows[:, np.newaxis] * width + cols[np.newaxis, :]).ravel()
    plan = (src_rows, src_cols, row_pos, col_pos, flat)
    for array in plan:
        array.setflags(write=False)
    return plan


# The gathered mosaic must be at most this fraction of the frame (1/5), else the whole frame is demosaiced: the
# gather and put-back cost more than they save above that (bench/bench_demosaic.py: 12 MP to 224 px, 10 % of the
# frame, 8-11 ms against 12-23 ms whole; 5 MP to 224 px, 25 %, no gain).
_SAMPLED_MAX_SHARE = 5
_PIXEL = np.dtype((np.void, 3))  # one BGR pixel as a unit: flat indexing per pixel


def _demosaic_for_resize(mosaic: np.ndarray, layout: str, resize_to: tuple[int, int]) -> np.ndarray:
    """A whole frame's BGR for a resize to `resize_to` (width, height), in this thread's reused buffer, with only
    the pixels that resize reads demosaiced (the rest is stale): the resized image is the same as that of the whole
    frame demosaiced. A 12 MP frame resized to 224 px reads 448 of its 3000 rows and 448 of its 4096 columns:
    their 2x2 cells (with the neighbours demosaicing reads) are gathered into one small mosaic (~1100 x 1100),
    demosaiced in one call and put back in place. The whole frame is demosaiced when the resize reads much of it."""
    height, width = mosaic.shape
    buffer = _frame_buffer(height, width)
    plan = _sampling_plan(height, width, resize_to)
    if plan is None:
        return demosaic(mosaic, layout, out=buffer)
    src_rows, src_cols, row_pos, col_pos, flat = plan
    compact = np.take(np.take(mosaic, src_rows, axis=0), src_cols, axis=1)
    bgr = cv2.cvtColor(_mosaic_uint8(compact), BAYER_CODES[layout])
    needed = np.ascontiguousarray(np.take(np.take(bgr, row_pos, axis=0), col_pos, axis=1))
    buffer.reshape(-1).view(_PIXEL)[flat] = needed.reshape(-1).view(_PIXEL)
    return buffer


def _resize(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """H x W x C (C = 1 or 3) -> input_height x input_width x C, stretched or letterboxed."""
    h, w, channels = spec.input_height, spec.input_width, image.shape[2]
    if not spec.letterbox:
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return resized.reshape(h, w, channels)
    nw, nh = _resize_size(image.shape[0], image.shape[1], spec)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, channels)
    out = np.full((h, w, channels), spec.pad_value, dtype=image.dtype)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def fit_longer_side(image: np.ndarray, side: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """The image with its longer side reduced to `side` (aspect kept; unchanged when it fits or side is 0). With
    INTER_LINEAR, as _resize() scales a model's input: how an image offloaded to a verifier is reduced
    (qc_cell.bridge), and so how its training reduces the images it JPEG-compresses at that size."""
    height, width = image.shape[:2]
    if not side or max(height, width) <= side:
        return image
    scale = side / max(height, width)
    return cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=interpolation)


def preprocess_into(image: np.ndarray, spec: Preprocessing, channel_order: str, out: np.ndarray) -> np.ndarray:
    """Preprocess one image into `out`, a writable float32 (3, input_height, input_width) array (e.g. one
    slot of a preallocated batch). Returns `out`."""
    if channel_order in BAYER_CODES:  # a raw mosaic: demosaiced once, over the ROI only or into a reused buffer
        if spec.roi is None and isinstance(image, np.ndarray) and image.ndim == 2:
            _check_mosaic(image, channel_order)
            image = _demosaic_for_resize(image, channel_order, _resize_size(*image.shape, spec))
        else:
            image = demosaic(image, channel_order, spec.roi)
        channel_order, roi = "BGR", None
    elif channel_order not in CHANNEL_ORDERS:
        raise PreprocessError(
            f"channel_order must be one of {CHANNEL_ORDERS} or a bayer layout {tuple(BAYER_CODES)}, "
            f"not {channel_order!r}"
        )
    else:
        roi = spec.roi
    image = _colour_planes(_to_uint8(image))
    if roi is not None:
        x, y, w, h = roi
        if x < 0 or y < 0 or x + w > image.shape[1] or y + h > image.shape[0]:
            raise PreprocessError(f"roi {roi} outside image of {image.shape[1]}x{image.shape[0]}")
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

    channel_order is the order of `image` ("BGR" for OpenCV-read files and bgr8 frames, "RGB" for rgb8), or the
    layout of a raw Bayer mosaic ("bayer_rggb", ...: demosaiced over the ROI only).
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
