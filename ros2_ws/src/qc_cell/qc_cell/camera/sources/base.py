"""The FrameSource interface every image source implements, the Frame it yields, and its errors.

Error kinds decide what the capture loop does:
- SourceUnavailableError: the device/file is missing, disconnected or unreadable right now -> close, retry with backoff.
- EndOfStreamError: a finite source (folder or video without looping) has delivered everything -> stop capturing.
- SourceConfigError: the settings can never work (no GStreamer in this OpenCV, malformed pipeline) -> no retry.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Warn = Callable[[str], None]
_log = logging.getLogger("qc_cell.camera")


def default_warn(message: str) -> None:
    _log.warning(message)


class SourceError(Exception):
    """Base of the source errors; the message says which source and what went wrong."""


class SourceUnavailableError(SourceError):
    """No frame can be had now (missing/disconnected device, unreadable file); retrying may help."""


class EndOfStreamError(SourceError):
    """A finite source has no more frames."""


class SourceConfigError(SourceError):
    """The source settings cannot work on this machine; retrying does not help."""


class NoFrameYetError(SourceError):
    """A self-paced source (a camera stream, a topic) has no new frame yet: not a loss, the loop just reads again."""


class NoMatchingFrameError(SourceError):
    """No frame could be had for one trigger (none near its stamp, or the camera did not answer the software
    trigger in time): that part gets no frame, the source stays open."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # H x W x 3 uint8 (bgr8), or H x W uint8/uint16 (mono8/mono16)
    encoding: str  # sensor_msgs encoding of `image`
    origin: str  # where it came from (PartFrame.source), e.g. "folder:test/scratch/003.png"
    label: str | None = None  # ground truth "good"/"defect" (replayed/synthetic data); None on a live line
    defect_type: str | None = None  # ground-truth defect type; None when good or unknown
    stamp_ns: int = 0  # capture time on the ROS clock when the source knows it (camera timestamp); 0 = at read()


def frame_from_image(image: np.ndarray, origin: str, label: str | None = None, defect_type: str | None = None) -> Frame:
    """A Frame for an OpenCV image: 3 channels -> bgr8, 4 -> bgr8 (alpha dropped), 2-D 8/16 bit -> mono8/16."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        encoding = "bgr8"
    elif image.ndim == 2 and image.dtype == np.uint8:
        encoding = "mono8"
    elif image.ndim == 2 and image.dtype == np.uint16:
        encoding = "mono16"
    elif image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint16:
        encoding = "bgr16"
    else:
        raise SourceUnavailableError(f"{origin}: unsupported image of shape {image.shape} and dtype {image.dtype}")
    return Frame(image, encoding, origin, label, defect_type)


class FrameSource(ABC):
    """One image source. Not thread-safe: the capture loop is its only user.

    open() acquires the device/file (SourceUnavailableError/SourceConfigError when it cannot), read() returns the next
    frame (blocking up to about one frame time for live cameras), close() releases it and is idempotent.
    """

    kind: str = ""
    # Where a source that can capture straight into memory it is given puts its frames (the camera driver's
    # shared-memory pool slots, FrameSender.reserve): allocate(shape, dtype) -> a writable C-order array, or None
    # (then a fresh one). Called from the capture thread only, for the frame about to be returned by read().
    frame_allocator: Callable[[tuple[int, ...], np.dtype], np.ndarray | None] | None = None

    @property
    @abstractmethod
    def description(self) -> str:
        """Human-readable identity for logs and diagnostics, e.g. 'v4l2:/dev/video0 1280x720@30 MJPG'."""

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    def self_paced(self) -> bool:
        """True when the source delivers frames at its own pace (a camera stream, a topic, a bag at recorded speed):
        in free run every frame it delivers is a part, read back to back instead of at rate_hz."""
        return False

    def frame_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The array to capture the next frame into: a slot of the frame pool when the driver gives one, else new."""
        allocate = self.frame_allocator
        if allocate is not None:
            target = allocate(tuple(shape), np.dtype(dtype))
            if target is not None:
                return target
        return np.empty(shape, dtype)

    def read_for(self, trigger_ns: int) -> Frame:
        """The frame for a part triggered at `trigger_ns` (ROS time); sources that can match or trigger override it."""
        return self.read()

    def stats(self) -> dict[str, object]:
        """Source-specific counters for /diagnostics (e.g. skipped files)."""
        return {}
