"""Build the configured FrameSource from plain settings (the camera driver's parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from qc_cell.camera.sources.base import FrameSource, SourceConfigError, Warn
from qc_cell.camera.sources.folder import FolderSource
from qc_cell.camera.sources.generated import SyntheticSource
from qc_cell.camera.sources.opencv_capture import GStreamerSource, V4l2Source, VideoFileSource

SOURCE_KINDS = ("v4l2", "gstreamer", "video", "folder", "synthetic")


@dataclass(frozen=True)
class SourceSettings:
    kind: str = "v4l2"
    # v4l2 (requested size, 0 = driver default) and synthetic (image size, 0 = 512)
    width: int = 0
    height: int = 0
    # v4l2
    device: str = "/dev/video0"
    fps: float = 0.0
    pixel_format: str = ""
    read_timeout_s: float = 2.0
    # gstreamer
    pipeline: str = ""
    # video / folder
    path: str = ""
    loop: bool = False
    folder_order: str = "sorted"
    # synthetic (and the folder's shuffle seed)
    seed: int = 0
    defect_rate: float = 0.2


def build_source(settings: SourceSettings, warn: Warn | None = None) -> FrameSource:
    """The source for `settings.kind`; SourceConfigError when the settings cannot work."""
    s = settings
    if s.kind == "v4l2":
        return V4l2Source(s.device, s.width, s.height, s.fps, s.pixel_format, s.read_timeout_s, warn)
    if s.kind == "gstreamer":
        return GStreamerSource(s.pipeline, warn)
    if s.kind == "video":
        return VideoFileSource(s.path, s.loop, warn)
    if s.kind == "folder":
        return FolderSource(s.path, s.loop, s.folder_order, s.seed, warn)
    if s.kind == "synthetic":
        return SyntheticSource(s.seed, s.width or 512, s.height or 512, s.defect_rate)
    raise SourceConfigError(f"unknown source {s.kind!r}; one of {list(SOURCE_KINDS)}")
