"""Sources read through cv2.VideoCapture: V4L2 cameras, GStreamer pipelines (Jetson CSI cameras) and video files."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2

from qc_cell.camera.sources.base import (
    EndOfStreamError,
    Frame,
    FrameSource,
    SourceConfigError,
    SourceUnavailableError,
    Warn,
    default_warn,
    frame_from_image,
)

# The pipeline a Jetson CSI camera (e.g. IMX219/IMX477 via nvarguscamerasrc) is read with: the ISP delivers NV12
# in NVMM memory, nvvidconv converts and scales on the VIC into BGRx in CPU memory, videoconvert drops the padding
# byte, and appsink hands the newest frame to OpenCV (drop=true max-buffers=1: never queue stale frames).
JETSON_CSI_PIPELINE = (
    "nvarguscamerasrc sensor-id=0 ! "
    "video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1,format=NV12 ! "
    "nvvidconv flip-method=0 ! video/x-raw,width=1280,height=720,format=BGRx ! "
    "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
)


@lru_cache(maxsize=1)
def opencv_has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def _fourcc_name(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00") if code > 0 else "?"


class _CaptureSource(FrameSource):
    """Shared read/close logic around one cv2.VideoCapture."""

    def __init__(self, warn: Warn | None = None) -> None:
        self._cap: cv2.VideoCapture | None = None
        self._warn = warn or default_warn

    @property
    def is_open(self) -> bool:
        return self._cap is not None

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def _grab(self) -> Frame | None:
        if self._cap is None:
            raise SourceUnavailableError(f"{self.description}: not open")
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            raise SourceUnavailableError(f"{self.description}: read failed: {exc}") from exc
        if not ok or image is None or image.size == 0:
            return None
        return frame_from_image(image, self.origin)

    @property
    def origin(self) -> str:
        return self.description


class V4l2Source(_CaptureSource):
    """A UVC/V4L2 camera through OpenCV's V4L2 backend.

    `device` is a path (/dev/video0, /dev/v4l/by-id/... - stable across reboots and USB re-plugs) or an index.
    width/height/fps 0 and pixel_format "" keep the driver's defaults. The driver buffer is kept at one frame so
    a triggered capture gets a fresh image, not one queued before the part arrived.
    """

    kind = "v4l2"

    def __init__(
        self,
        device: str,
        width: int = 0,
        height: int = 0,
        fps: float = 0.0,
        pixel_format: str = "",
        read_timeout_s: float = 2.0,
        warn: Warn | None = None,
    ) -> None:
        super().__init__(warn)
        if pixel_format and len(pixel_format) != 4:
            raise SourceConfigError(f"v4l2 pixel_format {pixel_format!r} must be a FourCC such as MJPG or YUYV")
        self.device = device.strip()
        if not self.device:
            raise SourceConfigError("v4l2 device is empty (expected e.g. /dev/video0 or 0)")
        self.width, self.height, self.fps = width, height, fps
        self.pixel_format = pixel_format.upper()
        self.read_timeout_s = read_timeout_s
        self._negotiated = ""

    @property
    def description(self) -> str:
        return f"v4l2:{self.device}" + (f" {self._negotiated}" if self._negotiated else "")

    @property
    def origin(self) -> str:
        return f"v4l2:{self.device}"

    def _target(self) -> str | int:
        if self.device.isdigit():
            return int(self.device)
        if not os.path.exists(self.device):
            raise SourceUnavailableError(f"v4l2 device {self.device} does not exist (camera unplugged or wrong path?)")
        return self.device

    def open(self) -> None:
        self.close()
        target = self._target()
        cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceUnavailableError(
                f"v4l2 device {self.device} cannot be opened (busy, no permission, or no camera)"
            )
        if self.pixel_format:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.pixel_format))
        if self.width > 0:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height > 0:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps > 0:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_s * 1000.0)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps, fourcc = cap.get(cv2.CAP_PROP_FPS), _fourcc_name(cap.get(cv2.CAP_PROP_FOURCC))
        self._negotiated = f"{w}x{h}@{fps:g} {fourcc}"
        wanted = (self.width or w, self.height or h)
        if (w, h) != wanted or (self.pixel_format and fourcc != self.pixel_format):
            self._warn(
                f"v4l2 {self.device}: asked for {wanted[0]}x{wanted[1]} {self.pixel_format or ''}".rstrip()
                + f", the camera delivers {self._negotiated}"
            )
        self._cap = cap

    def read(self) -> Frame:
        frame = self._grab()
        if frame is None:
            self.close()
            raise SourceUnavailableError(f"v4l2 {self.device}: no frame (camera disconnected or stalled)")
        return frame


class GStreamerSource(_CaptureSource):
    """A GStreamer pipeline ending in appsink, e.g. JETSON_CSI_PIPELINE for a CSI camera on a Jetson.

    Needs an OpenCV built with GStreamer (JetPack's OpenCV is; the opencv-python wheels from PyPI are not).
    """

    kind = "gstreamer"

    def __init__(self, pipeline: str, warn: Warn | None = None) -> None:
        super().__init__(warn)
        self.pipeline = " ".join(pipeline.split())
        if not self.pipeline:
            raise SourceConfigError("gstreamer pipeline is empty")
        if "appsink" not in self.pipeline:
            raise SourceConfigError(f"gstreamer pipeline must end in appsink for OpenCV: {self.pipeline!r}")

    @property
    def description(self) -> str:
        first = self.pipeline.split("!")[0].strip()
        return f"gstreamer:{first}"

    def open(self) -> None:
        if not opencv_has_gstreamer():
            raise SourceConfigError(
                "this OpenCV is built without GStreamer (the PyPI opencv-python wheels are): "
                "use the system OpenCV (JetPack's python3-opencv) for the gstreamer source"
            )
        self.close()
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise SourceUnavailableError(f"gstreamer pipeline did not start (camera missing or busy?): {self.pipeline}")
        self._cap = cap

    def read(self) -> Frame:
        frame = self._grab()
        if frame is None:
            self.close()
            raise SourceUnavailableError(f"{self.description}: pipeline delivered no frame (camera lost or EOS)")
        return frame


class VideoFileSource(_CaptureSource):
    """A recorded video, frame by frame; with `loop` it starts again at the end."""

    kind = "video"

    def __init__(self, path: str, loop: bool = False, warn: Warn | None = None) -> None:
        super().__init__(warn)
        if not path:
            raise SourceConfigError("video path is empty")
        self.path = Path(path).expanduser()
        self.loop = loop
        self._index = 0

    @property
    def description(self) -> str:
        return f"video:{self.path}"

    @property
    def origin(self) -> str:
        return f"video:{self.path.name}#{self._index}"

    def open(self) -> None:
        self.close()
        if not self.path.is_file():
            raise SourceUnavailableError(f"video file {self.path} does not exist")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceUnavailableError(f"video file {self.path} cannot be decoded (corrupt or unsupported format)")
        self._cap = cap
        self._index = 0

    def read(self) -> Frame:
        frame = self._grab()
        if frame is None and self.loop:
            if self._index == 0:
                self.close()
                raise SourceUnavailableError(f"video file {self.path} has no decodable frame (corrupt?)")
            self.open()  # rewinding by reopening works for every container, seeking does not
            frame = self._grab()
        if frame is None:
            if self._index == 0:
                self.close()
                raise SourceUnavailableError(f"video file {self.path} has no decodable frame (corrupt?)")
            raise EndOfStreamError(f"video file {self.path} ended after {self._index} frames")
        self._index += 1
        return frame
