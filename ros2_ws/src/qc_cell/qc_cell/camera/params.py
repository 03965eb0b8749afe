"""The camera driver's parameters (spec: qc_cell.params_spec) and the source settings they make."""

from __future__ import annotations

from typing import Any

from qc_cell.camera.capture import MODES
from qc_cell.camera.sources import SOURCE_KINDS, SourceSettings
from qc_cell.camera.sources.folder import ORDERS
from qc_cell.params_spec import NodeParams, Param

CAMERA_DRIVER = NodeParams(
    "camera_driver",
    "where every part enters the cell: camera/parts and camera/frames (lifecycle node)",
    (
        Param("source", "v4l2", "image source", choices=SOURCE_KINDS),
        Param(
            "mode", "free_run", "free_run: capture at rate_hz; triggered: one capture per camera/trigger", choices=MODES
        ),
        Param(
            "rate_hz", 10.0, "free-run capture rate (parts/s); changeable at runtime", range=(0.1, 240.0), runtime=True
        ),
        Param("max_parts", 0, "stop capturing after this many parts (0 = unlimited)", range=(0, 2**31 - 1)),
        Param("frame_id", "camera", "header.frame_id of every part message"),
        Param("part_id_prefix", "", "part id prefix, unique per cell ('' = the node namespace, or 'cell')"),
        Param(
            "state_dir",
            "",
            "directory of the persistent state (part id counter part_ids_<prefix>.json; '' = $XDG_STATE_HOME/qc_cell)",
        ),
        Param("roi", [0, 0, 0, 0], "published region [x, y, width, height] in source pixels; all 0 = whole frame"),
        Param("scale", 1.0, "downscale factor applied after the ROI (1.0 = none)", range=(0.05, 1.0)),
        Param("device", "/dev/video0", "v4l2: device path (/dev/video0, /dev/v4l/by-id/...) or index"),
        Param(
            "width",
            0,
            "v4l2: requested width; aravis/pylon: sensor ROI width; synthetic: image width (0 = default / 512)",
            range=(0, 16384),
        ),
        Param(
            "height",
            0,
            "v4l2: requested height; aravis/pylon: sensor ROI height; synthetic: image height (0 = default / 512)",
            range=(0, 16384),
        ),
        Param("fps", 0.0, "v4l2, aravis/pylon: camera frame rate (0 = camera default)", range=(0.0, 1000.0)),
        Param(
            "pixel_format",
            "",
            "v4l2: FourCC (MJPG, YUYV); aravis/pylon: Mono8, Mono12, BayerRG8, RGB8, ... ('' = default)",
        ),
        Param("read_timeout_s", 2.0, "v4l2: a read blocking longer counts as a disconnect", range=(0.1, 60.0)),
        Param("pipeline", "", "gstreamer: pipeline ending in appsink (see docs/camera.md)"),
        Param("path", "", "video: file; folder: image directory (MVTec AD aware); bag: rosbag2 folder (sqlite3/MCAP)"),
        Param("loop", False, "video/folder/bag: start again at the end instead of stopping"),
        Param("folder_order", "sorted", "folder: image order", choices=ORDERS),
        Param("seed", 0, "synthetic: generator seed; folder: shuffle seed", range=(0, 2**31 - 1)),
        Param("defect_rate", 0.2, "synthetic: share of defective parts", range=(0.0, 1.0)),
        Param(
            "lighting",
            1.0,
            "synthetic: scene light / exposure gain on every part (1 = nominal; < 1 a dimmer lamp): a changed light "
            "for the drift alerts; changeable at runtime",
            range=(0.05, 4.0),
            runtime=True,
        ),
        Param("guid", "", "aravis/pylon: camera id, serial, user-defined name or IP address ('' = the first)"),
        Param("offset_x", 0, "aravis/pylon: sensor ROI left edge (OffsetX)", range=(0, 16384)),
        Param("offset_y", 0, "aravis/pylon: sensor ROI top edge (OffsetY)", range=(0, 16384)),
        Param("binning_x", 0, "aravis/pylon: horizontal binning (0 = camera default)", range=(0, 16)),
        Param("binning_y", 0, "aravis/pylon: vertical binning (0 = camera default)", range=(0, 16)),
        Param(
            "exposure", 0.0, "aravis/pylon: exposure in us, auto exposure off (0 = camera default)", range=(0.0, 1e7)
        ),
        Param(
            "gain", -1.0, "aravis/pylon: Gain (else GainRaw), auto gain off (-1 = camera default)", range=(-1.0, 1e4)
        ),
        Param(
            "trigger_source",
            "",
            "aravis/pylon: '' camera free running; 'Software' one TriggerSoftware per camera/trigger; 'Line0', ...: "
            "hardware trigger",
        ),
        Param("trigger_activation", "", "aravis/pylon: hardware trigger edge, e.g. RisingEdge ('' = camera default)"),
        Param("trigger_delay", 0.0, "aravis/pylon: hardware trigger delay in us (TriggerDelay)", range=(0.0, 1e7)),
        Param("genicam_features", [""], "aravis/pylon: further GenICam features 'Name=value', written last in order"),
        Param(
            "trigger_tolerance_s",
            0.05,
            "aravis/pylon/ros_image, triggered: the frame nearest a camera/trigger stamp within this is the part's",
            range=(0.0001, 10.0),
        ),
        Param(
            "trigger_timeout_s",
            1.0,
            "aravis/pylon/ros_image, triggered: longest wait for the frame of one trigger",
            range=(0.01, 60.0),
        ),
        Param(
            "topic",
            "",
            "ros_image: topic ('' = image_raw; .../compressed: compressed); bag: image topic ('' = the only one)",
        ),
        Param(
            "playback",
            "recorded",
            "bag: 'recorded' pace, or 'fast' (rate_hz / per trigger)",
            choices=("recorded", "fast"),
        ),
        Param("trigger_queue_depth", 8, "triggered: parts waiting for a capture", range=(1, 1000)),
        Param(
            "max_trigger_age_s",
            0.5,
            "triggered: a trigger not served within this time gets no frame (the part has moved on)",
            range=(0.01, 60.0),
        ),
        Param("reconnect_initial_s", 0.5, "first retry delay when the source is missing/lost", range=(0.01, 60.0)),
        Param("reconnect_max_s", 10.0, "longest retry delay (doubles up to this)", range=(0.01, 600.0)),
        Param(
            "frame_pool",
            True,
            "pass frames to same-host subscribers through a shared-memory pool (a handle in the PartFrame); "
            "false, or no /dev/shm: the pixels always go inline through DDS",
        ),
        Param(
            "frame_pool_slots",
            12,
            "frames the pool holds, each slot the size of one framed image, in /dev/shm; keep above the "
            "inference queue_size + max_batch (a full pool sends frames inline)",
            range=(2, 256),
        ),
        Param(
            "frame_pool_lease_s",
            2.0,
            "how long a consumer holds a frame at most; a consumer that dies frees its slots after this time",
            range=(0.05, 60.0),
        ),
        Param(
            "frame_pool_attach_wait_s",
            1.0,
            "the first frame into a new pool waits at most this long for the subscribers of camera/frames to "
            "attach (the pool is announced on camera/frame_pool first), so it goes by handle, not inline",
            range=(0.0, 30.0),
        ),
        Param("diagnostics_period_s", 1.0, "/diagnostics period (s)", range=(0.1, 60.0)),
    ),
)
SOURCE_PARAMETERS = (
    "device", "width", "height", "fps", "pixel_format", "read_timeout_s", "pipeline", "path", "loop", "seed",
    "defect_rate", "lighting", "guid", "offset_x", "offset_y", "binning_x", "binning_y", "exposure", "gain",
    "trigger_source",
    "trigger_activation", "trigger_delay", "trigger_tolerance_s", "trigger_timeout_s", "topic", "playback", "mode",
)  # fmt: skip
# CaptureSettings field -> parameter.
CAPTURE_PARAMETERS = {
    "mode": "mode",
    "rate_hz": "rate_hz",
    "max_parts": "max_parts",
    "queue_depth": "trigger_queue_depth",
    "max_trigger_age_s": "max_trigger_age_s",
    "backoff_initial_s": "reconnect_initial_s",
    "backoff_max_s": "reconnect_max_s",
}


def source_settings(values: dict[str, Any]) -> SourceSettings:
    return SourceSettings(
        kind=values["source"],
        folder_order=values["folder_order"],
        genicam_features=tuple(values["genicam_features"]),
        **{name: values[name] for name in SOURCE_PARAMETERS},
    )


def capture_fields(values: dict[str, Any]) -> dict[str, Any]:
    """CaptureSettings keyword arguments from the parameter values."""
    return {field: values[name] for field, name in CAPTURE_PARAMETERS.items()}
