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
        Param("width", 0, "v4l2: requested width; synthetic: image width (0 = driver default / 512)", range=(0, 16384)),
        Param(
            "height", 0, "v4l2: requested height; synthetic: image height (0 = driver default / 512)", range=(0, 16384)
        ),
        Param("fps", 0.0, "v4l2: requested camera frame rate (0 = driver default)", range=(0.0, 1000.0)),
        Param("pixel_format", "", "v4l2: FourCC such as MJPG or YUYV ('' = driver default)"),
        Param("read_timeout_s", 2.0, "v4l2: a read blocking longer counts as a disconnect", range=(0.1, 60.0)),
        Param("pipeline", "", "gstreamer: pipeline ending in appsink (see docs/camera.md)"),
        Param("path", "", "video: file; folder: image directory (MVTec AD layout aware)"),
        Param("loop", False, "video/folder: start again at the end instead of stopping"),
        Param("folder_order", "sorted", "folder: image order", choices=ORDERS),
        Param("seed", 0, "synthetic: generator seed; folder: shuffle seed", range=(0, 2**31 - 1)),
        Param("defect_rate", 0.2, "synthetic: share of defective parts", range=(0.0, 1.0)),
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
        Param("diagnostics_period_s", 1.0, "/diagnostics period (s)", range=(0.1, 60.0)),
    ),
)
SOURCE_PARAMETERS = (
    "device", "width", "height", "fps", "pixel_format", "read_timeout_s", "pipeline", "path", "loop", "seed",
    "defect_rate",
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
        **{name: values[name] for name in SOURCE_PARAMETERS},
    )


def capture_fields(values: dict[str, Any]) -> dict[str, Any]:
    """CaptureSettings keyword arguments from the parameter values."""
    return {field: values[name] for field, name in CAPTURE_PARAMETERS.items()}
