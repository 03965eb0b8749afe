"""sensor_msgs/Image <-> numpy, the one conversion module of the cell.

- Decode (`image_to_array`) is a zero-copy view on the message's buffer wherever the data allows it; it honours
  `step` (row padding) and `is_bigendian` (a byte swap is the only case that copies).
- Encode (`array_to_image`) does not copy a C-contiguous array: the message's `data` is a read-only byte view on
  it, and rclpy copies the bytes once, when the message is published or serialized (rosidl's C conversion reads
  any buffer). The generated `data` setter would first copy them into an `array('B')`: 0.15 ms warm, ~0.4 ms
  cold per 1280x720 frame (docs/camera.md). A non-contiguous array (e.g. a ROI view) is packed
  into an `array('B')` in one copy; never through a Python list (rclpy would check every byte in Python) or an
  intermediate `bytes`. The array must not change until the message is published.
- Encodings handled natively: bgr8, rgb8, bgra8, rgba8, mono8, mono16, bayer_* (8 and 16 bit, passed through
  as raw mosaics), and the generic OpenCV types 8UC1..64FC4 (e.g. 8UC1, 8UC3, 16UC1, 32FC1).
- For the nodes: `decode_for_model` (inference: the pixels and their channel order, as preprocessing wants them) and
  `decode_bgr8` (the cloud bridge's JPEG samples).
- cv_bridge: where it is importable (ROS installed from apt, e.g. on the Jetson), it handles encodings outside
  that table (yuv422, nv21, ...). For the table's encodings the native path is used even then: it gives the same
  arrays as cv_bridge's passthrough decode, with the copy counts above guaranteed and tested here.

Anything that does not fit (unknown encoding, wrong data length, step too small, wrong dtype/channels) raises
ImageConversionError with the reason; nothing is silently reinterpreted.
"""

from __future__ import annotations

import array
import re
import sys

import cv2
import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from qc_contract.preprocess import BAYER_CODES, PreprocessError, demosaic

try:  # optional: present where ROS comes from apt (Jetson), absent with the PyPI wheels
    from cv_bridge import CvBridge as _CvBridge
except ImportError:  # pragma: no cover - depends on the machine
    _CvBridge = None

HAVE_CV_BRIDGE = _CvBridge is not None
_NATIVE_BIG_ENDIAN = sys.byteorder == "big"


class ImageConversionError(ValueError):
    """The image message or array cannot be converted (reason in the message)."""


# encoding -> (dtype, channels)
_NAMED: dict[str, tuple[np.dtype, int]] = {
    "bgr8": (np.dtype(np.uint8), 3),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgra8": (np.dtype(np.uint8), 4),
    "rgba8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "bgr16": (np.dtype(np.uint16), 3),
    "rgb16": (np.dtype(np.uint16), 3),
}
for _pattern in ("rggb", "bggr", "gbrg", "grbg"):
    _NAMED[f"bayer_{_pattern}8"] = (np.dtype(np.uint8), 1)
    _NAMED[f"bayer_{_pattern}16"] = (np.dtype(np.uint16), 1)

_CV_TYPE = re.compile(r"^(8U|8S|16U|16S|32S|32F|64F)C([1-4])$")
_CV_DEPTH = {"8U": np.uint8, "8S": np.int8, "16U": np.uint16, "16S": np.int16, "32S": np.int32, "32F": np.float32}
_CV_DEPTH["64F"] = np.float64

# Encodings a model scores, with the channel order of their pixels (grey images have one channel; the generic
# OpenCV types follow OpenCV's BGR convention). Bayer mosaics are demosaiced to BGR first.
MODEL_CHANNEL_ORDER = {
    "bgr8": "BGR",
    "rgb8": "RGB",
    "bgra8": "BGR",
    "rgba8": "RGB",
    "mono8": "BGR",
    "mono16": "BGR",
    "bgr16": "BGR",
    "rgb16": "RGB",
    "8UC1": "BGR",
    "8UC3": "BGR",
    "8UC4": "BGR",
    "16UC1": "BGR",
}


def encoding_layout(encoding: str) -> tuple[np.dtype, int]:
    """(dtype, channels) of a natively supported encoding; ImageConversionError otherwise."""
    if encoding in _NAMED:
        return _NAMED[encoding]
    match = _CV_TYPE.match(encoding)
    if match:
        return np.dtype(_CV_DEPTH[match.group(1)]), int(match.group(2))
    raise ImageConversionError(f"unsupported image encoding {encoding!r}")


def is_native(encoding: str) -> bool:
    try:
        encoding_layout(encoding)
    except ImageConversionError:
        return False
    return True


def image_to_array(msg: Image, *, copy: bool = False) -> np.ndarray:
    """The pixels of `msg` as an H x W (one channel) or H x W x C array in the message's encoding.

    Without `copy` the result is a view on msg.data (no pixel copy; row padding is skipped with strides),
    so it is valid as long as the message is, and writing to it writes to the message.
    """
    encoding = msg.encoding
    if not is_native(encoding):
        if _CvBridge is not None and encoding:
            try:
                return _CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough")
            except Exception as exc:  # cv_bridge raises CvBridgeError (a TypeError) and others
                raise ImageConversionError(f"cv_bridge cannot decode {encoding!r}: {exc}") from exc
        raise ImageConversionError(f"unsupported image encoding {encoding!r}" + ("" if encoding else " (empty)"))
    dtype, channels = encoding_layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(f"step {step} < {row_bytes} bytes for {width} px of {encoding}")
    data = msg.data
    if len(data) != step * height:
        raise ImageConversionError(
            f"wrong data length: {len(data)} bytes, expected step {step} x height {height} = {step * height}"
        )
    big_endian = bool(msg.is_bigendian) and dtype.itemsize > 1
    view_dtype = dtype.newbyteorder(">" if big_endian else "<") if dtype.itemsize > 1 else dtype
    buffer = data if isinstance(data, (array.array, bytes, bytearray, memoryview)) else bytes(data)
    shape = (height, width) if channels == 1 else (height, width, channels)
    strides = (step, dtype.itemsize) if channels == 1 else (step, channels * dtype.itemsize, dtype.itemsize)
    pixels = np.ndarray(shape=shape, dtype=view_dtype, buffer=buffer, strides=strides)
    if dtype.itemsize > 1 and big_endian != _NATIVE_BIG_ENDIAN:
        return pixels.astype(dtype)  # byte swap: the one case that must copy
    return pixels.copy() if copy else pixels


def array_to_image(
    pixels: np.ndarray, encoding: str, header: Header | None = None, *, frame_id: str | None = None
) -> Image:
    """A sensor_msgs/Image of `pixels` (H x W or H x W x C, dtype matching `encoding`), rows unpadded."""
    if not isinstance(pixels, np.ndarray):
        raise ImageConversionError(f"expected a numpy array, got {type(pixels).__name__}")
    if not is_native(encoding):
        if _CvBridge is not None:
            try:
                msg = _CvBridge().cv2_to_imgmsg(pixels, encoding=encoding)
            except Exception as exc:
                raise ImageConversionError(f"cv_bridge cannot encode {encoding!r}: {exc}") from exc
            _set_header(msg, header, frame_id)
            return msg
        raise ImageConversionError(f"unsupported image encoding {encoding!r}")
    dtype, channels = encoding_layout(encoding)
    if pixels.ndim == 3 and pixels.shape[2] == 1 and channels == 1:
        pixels = pixels[:, :, 0]
    actual_channels = 1 if pixels.ndim == 2 else (pixels.shape[2] if pixels.ndim == 3 else -1)
    if actual_channels != channels:
        raise ImageConversionError(f"{encoding} needs {channels} channel(s), array has shape {pixels.shape}")
    if pixels.dtype.newbyteorder("=") != dtype.newbyteorder("="):
        raise ImageConversionError(f"{encoding} needs dtype {dtype}, array has {pixels.dtype}")
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty array of shape {pixels.shape}")
    msg = Image()
    _set_header(msg, header, frame_id)
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian = int(_is_big_endian(pixels.dtype))
    msg.step = width * channels * dtype.itemsize
    # Past the generated setter, which would copy a view into an array('B').
    msg._data = _pack(pixels)
    return msg


def _is_big_endian(dtype: np.dtype) -> bool:
    return dtype.itemsize > 1 and (dtype.byteorder == ">" or (dtype.byteorder == "=" and _NATIVE_BIG_ENDIAN))


def _pack(pixels: np.ndarray) -> memoryview | array.array:
    """The message's data: a read-only byte view on a C-contiguous array, else its bytes in an array('B')."""
    if pixels.flags.c_contiguous:
        return memoryview(pixels).cast("B").toreadonly()
    data = array.array("B", [0]) * pixels.nbytes  # fast zero fill, then one strided copy
    np.frombuffer(data, dtype=pixels.dtype).reshape(pixels.shape)[...] = pixels
    return data


def _set_header(msg: Image, header: Header | None, frame_id: str | None) -> None:
    if header is not None:
        msg.header = header
    if frame_id is not None:
        msg.header.frame_id = frame_id


def to_bgr8(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """A displayable/inferable 8-bit BGR image of any natively supported colour or mono encoding.

    bgr8 is returned as is (no copy); rgb8 as a channel-reversed view; 16-bit data is scaled to 8 bits;
    bayer mosaics are demosaiced.
    """
    dtype, channels = encoding_layout(encoding)
    if pixels.dtype.itemsize == 2 and dtype.kind == "u":
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ImageConversionError(f"cannot show {encoding} ({pixels.dtype}) as bgr8")
    if encoding.startswith("bayer_"):  # the preprocessing's demosaic: one implementation (odd sizes refused)
        try:
            return demosaic(pixels, encoding[:10])
        except PreprocessError as exc:
            raise ImageConversionError(f"{encoding}: {exc}") from exc
    if channels == 1:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        pixels = pixels[:, :, :3]
    return pixels[:, :, ::-1] if encoding.startswith("rgb") else pixels


def decode_for_model(image: Image) -> tuple[np.ndarray, str]:
    """PartFrame.image -> (pixels, channel order) for preprocessing, a view on the message where possible.
    ImageConversionError for anything a model cannot score (encoding, empty, data size not matching
    width/height/step)."""
    return pixels_for_model(image_to_array(image), image.encoding)


def pixels_for_model(pixels: np.ndarray, encoding: str) -> tuple[np.ndarray, str]:
    """(pixels, channel order) for preprocessing, from pixels in `encoding`, a view (no copy). Bayer mosaics stay
    raw, their "channel order" the layout ("bayer_rggb", ...): preprocessing demosaics only the model's ROI, with the
    same result as demosaicing the frame first (qc_contract.preprocess). Also for frames read from the camera
    driver's shared-memory pool."""
    if encoding.startswith("bayer_"):
        if encoding[:10] not in BAYER_CODES:
            raise ImageConversionError(f"unknown bayer encoding {encoding!r}")
        return pixels, encoding[:10]
    if encoding not in MODEL_CHANNEL_ORDER:
        raise ImageConversionError(
            f"encoding {encoding!r} cannot be scored (supported: {', '.join(MODEL_CHANNEL_ORDER)}, bayer_*)"
        )
    return pixels, MODEL_CHANNEL_ORDER[encoding]


def image_layout(image: Image) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the unpadded pixels an Image's size and encoding describe (its data is not looked at):
    how a frame in the camera driver's shared-memory pool is read. ImageConversionError when the encoding is
    not native, the image is empty or the rows are padded (pool frames never are)."""
    dtype, channels = encoding_layout(image.encoding)
    height, width = int(image.height), int(image.width)
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    if int(image.step) != width * channels * dtype.itemsize:
        raise ImageConversionError(f"step {image.step} is not {width} px of {image.encoding} (padded rows)")
    if bool(image.is_bigendian) != (_NATIVE_BIG_ENDIAN and dtype.itemsize > 1):
        raise ImageConversionError("pool frames are in the host's byte order")
    return ((height, width) if channels == 1 else (height, width, channels)), dtype


def image_description(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """An Image with the size, encoding and step of `pixels` stored unpadded, and no data: what a PartFrame
    carries when its pixels travel through the shared-memory pool. Same checks as array_to_image."""
    dtype, channels = encoding_layout(encoding)
    actual_channels = 1 if pixels.ndim == 2 else (pixels.shape[2] if pixels.ndim == 3 else -1)
    if actual_channels != channels or pixels.dtype.newbyteorder("=") != dtype.newbyteorder("="):
        raise ImageConversionError(f"{encoding} does not describe an array of shape {pixels.shape} ({pixels.dtype})")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageConversionError(f"empty array of shape {pixels.shape}")
    msg = Image()
    _set_header(msg, header, None)
    msg.height, msg.width, msg.encoding = pixels.shape[0], pixels.shape[1], encoding
    msg.is_bigendian = int(_NATIVE_BIG_ENDIAN and dtype.itemsize > 1)
    msg.step = pixels.shape[1] * channels * dtype.itemsize
    return msg


def decode_bgr8(image: Image) -> np.ndarray:
    """The message as a displayable 8-bit BGR image (see to_bgr8); ImageConversionError when it cannot be."""
    return to_bgr8(image_to_array(image), image.encoding)
