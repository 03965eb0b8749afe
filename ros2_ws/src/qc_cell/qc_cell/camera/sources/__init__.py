"""Image sources behind one interface (FrameSource): v4l2, gstreamer, video file, image folder, synthetic."""

from qc_cell.camera.sources.base import (
    EndOfStreamError,
    Frame,
    FrameSource,
    SourceConfigError,
    SourceError,
    SourceUnavailableError,
)
from qc_cell.camera.sources.factory import SOURCE_KINDS, SourceSettings, build_source

__all__ = [
    "SOURCE_KINDS",
    "EndOfStreamError",
    "Frame",
    "FrameSource",
    "SourceConfigError",
    "SourceError",
    "SourceSettings",
    "SourceUnavailableError",
    "build_source",
]
