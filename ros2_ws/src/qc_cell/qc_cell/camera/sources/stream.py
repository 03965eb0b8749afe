"""What every streaming source (GenICam cameras, ROS topics) shares: a bounded ring of stamped frames filled by a
grab thread or a subscription, matching a trigger's stamp to the nearest frame, and mapping camera clocks to ROS
time.

Clock mapping: a camera stamps each frame with its own clock (GigE Vision/USB3 Vision tick counter, started at
power-up). Each frame gives one sample `host receive time - camera time` = clock offset + transfer delay (>= 0).
The smallest sample over a sliding window is the offset estimate (the frame that crossed fastest); a camera stamp
plus that estimate is the capture time on the host clock, late by at most the fastest transfer time. The window
follows a drifting camera clock; a jump (camera reset, reconnect) larger than `reset_ns` restarts the estimate.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from qc_cell.camera.sources.base import Frame

# Camera pixel formats (GenICam PFNC names) -> (sensor_msgs encoding, numpy dtype, channels, significant bits).
PIXEL_FORMATS: dict[str, tuple[str, np.dtype, int, int]] = {
    "Mono8": ("mono8", np.dtype(np.uint8), 1, 8),
    "Mono10": ("mono16", np.dtype("<u2"), 1, 10),
    "Mono12": ("mono16", np.dtype("<u2"), 1, 12),
    "Mono16": ("mono16", np.dtype("<u2"), 1, 16),
    "RGB8": ("rgb8", np.dtype(np.uint8), 3, 8),
    "RGB8Packed": ("rgb8", np.dtype(np.uint8), 3, 8),
    "BGR8": ("bgr8", np.dtype(np.uint8), 3, 8),
    "BGR8Packed": ("bgr8", np.dtype(np.uint8), 3, 8),
}
for _pfnc, _ros in (("RG", "rggb"), ("GR", "grbg"), ("GB", "gbrg"), ("BG", "bggr")):
    PIXEL_FORMATS[f"Bayer{_pfnc}8"] = (f"bayer_{_ros}8", np.dtype(np.uint8), 1, 8)
    for _bits in (10, 12, 16):
        PIXEL_FORMATS[f"Bayer{_pfnc}{_bits}"] = (f"bayer_{_ros}16", np.dtype("<u2"), 1, _bits)


def pixels_from_buffer(
    data: bytes | memoryview | np.ndarray, width: int, height: int, pixel_format: str, *, finish: bool = True
) -> tuple[np.ndarray, str]:
    """(image, encoding) for one camera buffer in `pixel_format` (unpacked formats only). 10/12-bit data is shifted
    to the top of the 16-bit range (vectorised), so mono16/bayer_*16 mean the same scale whatever the sensor depth.
    With `finish` False the image is the buffer's raw view (no shift, no copy): finish_pixels() then completes it,
    into a frame-pool slot where the driver gives one. ValueError for a format or size the cell cannot read."""
    try:
        encoding, dtype, channels, _bits = PIXEL_FORMATS[pixel_format]
    except KeyError:
        raise ValueError(
            f"pixel format {pixel_format!r} is not supported (supported: {', '.join(sorted(PIXEL_FORMATS))})"
        ) from None
    flat = np.frombuffer(data, dtype=dtype) if not isinstance(data, np.ndarray) else data.reshape(-1).view(dtype)
    needed = width * height * channels
    if flat.size < needed:
        raise ValueError(f"{pixel_format} buffer of {flat.size} values is too small for {width}x{height}")
    shape = (height, width, channels) if channels > 1 else (height, width)
    image = flat[:needed].reshape(shape)
    return (finish_pixels(image, pixel_format) if finish else image), encoding


def finish_pixels(raw: np.ndarray, pixel_format: str, out: np.ndarray | None = None) -> np.ndarray:
    """The last step of the decode of a raw view (pixels_from_buffer(finish=False)): 10/12-bit values shifted to
    the top of 16 bits, byte order native. Into `out` when given (a frame-pool slot: the decode is the only copy of
    the frame on the host), else a new array, or the view itself where nothing is to be done (8-bit formats)."""
    _, dtype, _, bits = PIXEL_FORMATS[pixel_format]
    if out is None:
        if dtype.itemsize == 2 and bits < 16:
            return np.left_shift(raw, 16 - bits).astype(np.uint16, copy=False)
        return raw.astype(np.uint16, copy=False) if dtype.itemsize == 2 else raw
    if dtype.itemsize == 2 and bits < 16:
        np.left_shift(raw, 16 - bits, out=out, casting="unsafe")
    else:
        np.copyto(out, raw, casting="unsafe")
    return out


class ClockMapper:
    """Camera timestamps -> host (ROS system) time, by the minimum offset over a sliding window (module doc)."""

    def __init__(self, window: int = 256, reset_ns: int = 1_000_000_000) -> None:
        self.window = window
        self.reset_ns = reset_ns
        self._samples: deque[int] = deque(maxlen=window)
        self.resets = 0

    def reset(self) -> None:
        self._samples.clear()

    def map(self, camera_ns: int, host_ns: int) -> int:
        """Capture time on the host clock; the host receive time when the camera gives no timestamp (0)."""
        if camera_ns <= 0:
            return host_ns
        sample = host_ns - camera_ns
        if self._samples and abs(sample - min(self._samples)) > self.reset_ns:
            self._samples.clear()  # the camera clock jumped (reset, reconnect, another camera)
            self.resets += 1
        self._samples.append(sample)
        return camera_ns + min(self._samples)

    def stats(self) -> dict[str, object]:
        if not self._samples:
            return {"clock_offset_ms": "unknown"}
        low = min(self._samples)
        spread = sorted(self._samples)[len(self._samples) // 2] - low
        return {
            "clock_offset_ms": f"{low / 1e6:.3f}",  # camera clock -> host clock (includes the fastest transfer)
            "clock_transfer_spread_ms": f"{spread / 1e6:.3f}",  # median sample above the minimum: transfer jitter
            "clock_samples": len(self._samples),
            "clock_resets": self.resets,
        }


class FrameRing:
    """The newest `capacity` frames, oldest first; filled by one thread, read by the capture loop."""

    def __init__(self, capacity: int = 8) -> None:
        self._frames: deque[Frame] = deque()
        self.capacity = capacity
        self._cond = threading.Condition()
        self._closed = False
        self.overruns = 0  # frames pushed out unread because the reader fell behind
        self.unmatched = 0  # frames discarded by trigger matching (no trigger near them)

    def clear(self) -> int:
        with self._cond:
            n = len(self._frames)
            self._frames.clear()
            return n

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._frames.clear()

    def push(self, frame: Frame) -> None:
        with self._cond:
            if len(self._frames) >= self.capacity:
                self._frames.popleft()
                self.overruns += 1
            self._frames.append(frame)
            self._cond.notify_all()

    def pop(self, timeout_s: float) -> Frame | None:
        """The oldest unread frame, waiting up to timeout_s; None when none came (or the ring was closed)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._frames and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._frames.popleft() if self._frames else None

    def nearest(self, stamp_ns: int, tolerance_ns: int, wait_s: float, now_ns=time.time_ns) -> Frame | None:
        """The frame whose stamp is nearest `stamp_ns` within the tolerance, waiting (up to wait_s) until a frame
        later than stamp + tolerance has arrived or the host clock is past it. The chosen frame and all older ones
        leave the ring (triggers come in order: no later part can want them)."""
        deadline = time.monotonic() + wait_s
        late_edge = stamp_ns + tolerance_ns
        with self._cond:
            while not self._closed:
                if self._frames and self._frames[-1].stamp_ns > late_edge:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or now_ns() > late_edge + int(wait_s * 1e9):
                    break
                self._cond.wait(min(left, 0.05))
            best, best_i = None, -1
            for i, frame in enumerate(self._frames):
                gap = abs(frame.stamp_ns - stamp_ns)
                if gap <= tolerance_ns and (best is None or gap < abs(best.stamp_ns - stamp_ns)):
                    best, best_i = frame, i
            if best is None:
                # Frames older than the window can never match a later trigger either.
                while self._frames and self._frames[0].stamp_ns < stamp_ns - tolerance_ns:
                    self._frames.popleft()
                    self.unmatched += 1
                return None
            for _ in range(best_i):
                self._frames.popleft()
                self.unmatched += 1
            self._frames.popleft()
            return best

    def stats(self) -> dict[str, object]:
        return {"ring_overruns": self.overruns, "unmatched_frames": self.unmatched}
