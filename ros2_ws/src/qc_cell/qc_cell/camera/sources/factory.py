"""Build the configured FrameSource from plain settings (the camera driver's parameters)."""

from __future__ import annotations

from dataclasses import dataclass

from qc_cell.camera.sources.base import FrameSource, SourceConfigError, Warn
from qc_cell.camera.sources.folder import FolderSource
from qc_cell.camera.sources.generated import SyntheticSource
from qc_cell.camera.sources.genicam import GenICamSettings
from qc_cell.camera.sources.opencv_capture import GStreamerSource, V4l2Source, VideoFileSource

SOURCE_KINDS = ("v4l2", "gstreamer", "video", "folder", "synthetic", "aravis", "pylon", "ros_image", "bag")


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
    lighting: float = 1.0  # synthetic: scene light (qc_contract.synthetic)
    # aravis / pylon (GenICam; width, height, fps and pixel_format above are the sensor's) - see genicam.py
    guid: str = ""
    offset_x: int = 0
    offset_y: int = 0
    binning_x: int = 0
    binning_y: int = 0
    exposure: float = 0.0
    gain: float = -1.0
    trigger_source: str = ""
    trigger_activation: str = ""
    trigger_delay: float = 0.0
    genicam_features: tuple[str, ...] = ()
    # aravis / pylon / ros_image: matching frames to camera/trigger
    trigger_tolerance_s: float = 0.05
    trigger_timeout_s: float = 1.0
    # ros_image / bag
    topic: str = ""
    # bag
    playback: str = "recorded"
    # the capture mode (free_run/triggered): streaming sources behave differently in each
    mode: str = "free_run"

    def genicam(self) -> GenICamSettings:
        return GenICamSettings(
            camera=self.guid,
            pixel_format=self.pixel_format,
            width=self.width,
            height=self.height,
            offset_x=self.offset_x,
            offset_y=self.offset_y,
            binning_x=self.binning_x,
            binning_y=self.binning_y,
            exposure=self.exposure,
            gain=self.gain,
            fps=self.fps,
            trigger_source=self.trigger_source,
            trigger_activation=self.trigger_activation,
            trigger_delay=self.trigger_delay,
            trigger_tolerance_s=self.trigger_tolerance_s,
            trigger_timeout_s=self.trigger_timeout_s,
            features=tuple(f for f in self.genicam_features if f.strip()),
        )


def build_source(settings: SourceSettings, warn: Warn | None = None, node: object | None = None) -> FrameSource:
    """The source for `settings.kind`; SourceConfigError when the settings cannot work. `node` is the ROS node a
    ros_image source subscribes through (the other sources are ROS-free)."""
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
        return SyntheticSource(s.seed, s.width or 512, s.height or 512, s.defect_rate, lighting=s.lighting)
    if s.kind == "aravis":
        from qc_cell.camera.sources.aravis import AravisSource

        return AravisSource(s.genicam(), s.mode, warn)
    if s.kind == "pylon":
        from qc_cell.camera.sources.pylon import PylonSource

        return PylonSource(s.genicam(), s.mode, warn)
    if s.kind == "ros_image":
        from qc_cell.camera.sources.ros_image import RosImageSource

        return RosImageSource(
            node, s.topic or "image_raw", s.mode, s.trigger_tolerance_s, s.trigger_timeout_s, warn=warn
        )
    if s.kind == "bag":
        from qc_cell.camera.sources.bag import BagSource

        return BagSource(s.path, s.topic, s.playback, s.loop, warn)
    raise SourceConfigError(f"unknown source {s.kind!r}; one of {list(SOURCE_KINDS)}")
