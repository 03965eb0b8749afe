"""GenICam cameras (GigE Vision, USB3 Vision): what Aravis and Basler pylon share.

One settings type, the order features are written in, the trigger modes, a grab thread that stamps frames with
the camera's own clock mapped to ROS time (stream.ClockMapper) into a ring (stream.FrameRing), and the capture
loop's read()/read_for() on top. A backend (aravis.py, pylon.py) only finds and opens the camera, reads and
writes features by GenICam name, grabs one buffer and reports its transport counters.

Trigger modes (`trigger_source`):
- '' : the camera runs free at `fps`. free_run: every frame is a part; triggered: the frame nearest each
  camera/trigger stamp within `trigger_tolerance_s`.
- 'Software': one TriggerSoftware command per camera/trigger (triggered mode only); the frame that answers it is
  the part's (none within `trigger_timeout_s`: the part gets no frame).
- a line ('Line0', 'Line1', ...): hardware trigger (a light barrier or the PLC wired to the camera), with
  `trigger_activation` and `trigger_delay`. free_run: every triggered frame is a part; triggered: the frame nearest
  each camera/trigger stamp (the same barrier also tells the PLC), as above.
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from dataclasses import dataclass, replace

import numpy as np

from qc_cell.camera.sources.base import (
    Frame,
    FrameSource,
    NoFrameYetError,
    NoMatchingFrameError,
    SourceConfigError,
    SourceUnavailableError,
    Warn,
    default_warn,
)
from qc_cell.camera.sources.stream import PIXEL_FORMATS, ClockMapper, FrameRing, finish_pixels, pixels_from_buffer


class FeatureError(SourceConfigError):
    """The camera does not have a feature, or refuses the value: a clear message naming both."""


@dataclass(frozen=True)
class GenICamSettings:
    camera: str = ""  # id, serial number, user-defined name or IP address; '' = the first camera found
    pixel_format: str = ""  # PFNC name (Mono8, Mono12, BayerRG8, RGB8, ...); '' = leave the camera's
    width: int = 0  # sensor ROI; 0 = leave
    height: int = 0
    offset_x: int = 0
    offset_y: int = 0
    binning_x: int = 0  # 0 = leave
    binning_y: int = 0
    exposure: float = 0.0  # microseconds; 0 = leave (auto exposure switched off when set)
    gain: float = -1.0  # camera units (dB on most); < 0 = leave (auto gain switched off when set)
    fps: float = 0.0  # AcquisitionFrameRate; 0 = leave
    trigger_source: str = ""  # '' free running, 'Software', or a line ('Line0', ...)
    trigger_activation: str = ""  # RisingEdge, FallingEdge, ...; '' = leave
    trigger_delay: float = 0.0  # microseconds between the line edge and exposure
    trigger_tolerance_s: float = 0.05  # a frame within this of a trigger's stamp is that part's
    trigger_timeout_s: float = 1.0  # software trigger: longest wait for the answering frame
    features: tuple[str, ...] = ()  # any other feature, "Name=value", written last in this order
    buffers: int = 8

    def __post_init__(self) -> None:
        if self.pixel_format and self.pixel_format not in PIXEL_FORMATS:
            raise SourceConfigError(
                f"pixel_format {self.pixel_format!r} cannot be read by the cell; one of {sorted(PIXEL_FORMATS)}"
            )
        for item in self.features:
            if "=" not in item or not item.split("=", 1)[0].strip():
                raise SourceConfigError(f"genicam feature {item!r} must be 'Name=value'")
        if self.trigger_tolerance_s <= 0 or self.trigger_timeout_s <= 0 or self.buffers < 2:
            raise SourceConfigError("trigger_tolerance_s > 0, trigger_timeout_s > 0 and buffers >= 2 are required")

    @property
    def software_trigger(self) -> bool:
        return self.trigger_source.lower() == "software"

    @property
    def hardware_trigger(self) -> bool:
        return bool(self.trigger_source) and not self.software_trigger


class GenICamSource(FrameSource):
    """A GenICam camera through a backend (subclass); see the module doc for the trigger modes."""

    backend = ""

    def __init__(self, settings: GenICamSettings, mode: str = "free_run", warn: Warn | None = None) -> None:
        if settings.software_trigger and mode != "triggered":
            raise SourceConfigError(
                "trigger_source 'Software' sends one trigger per camera/trigger: it needs mode 'triggered' "
                "(free run with a camera trigger: a line, e.g. 'Line0')"
            )
        self.settings = settings
        self.mode = mode
        self._warn = warn or default_warn
        self.ring = FrameRing(max(2, settings.buffers))
        self.clock = ClockMapper()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lost = ""  # why the grab thread ended (disconnect)
        self._identity = ""  # the opened camera's "vendor model serial"
        self._pixel_format = ""
        self._lock = threading.Lock()
        # Counters for /diagnostics, kept across reconnects.
        self.frames_grabbed = 0
        self.lost_frames = 0  # incomplete/failed buffers the camera sent (dropped packets, timeouts)
        self.decode_errors = 0
        self.software_triggers = 0
        self.unanswered_triggers = 0
        self._last_lost_reason = ""

    # ------------------------------------------------------------ backend

    @abstractmethod
    def _connect(self) -> str:
        """Find and open the camera (SourceUnavailableError when it is not there); return its identity."""

    @abstractmethod
    def _disconnect(self) -> None: ...

    @abstractmethod
    def _feature_kind(self, name: str) -> str | None:
        """'enum', 'int', 'float', 'bool', 'command', 'string', or None when the camera has no such feature."""

    @abstractmethod
    def _enum_entries(self, name: str) -> list[str]: ...

    @abstractmethod
    def _write(self, name: str, kind: str, value: object) -> None:
        """Write one feature (raise any error: the caller words it)."""

    @abstractmethod
    def _read(self, name: str) -> str: ...

    @abstractmethod
    def _start_stream(self) -> None: ...

    @abstractmethod
    def _stop_stream(self) -> None: ...

    @abstractmethod
    def _grab(self, timeout_s: float) -> tuple[np.ndarray | bytes, int, int, int] | None:
        """(pixels, width, height, camera timestamp ns) of the next complete frame; None after timeout_s; counts an
        incomplete frame in self.lost_frames and returns None; SourceUnavailableError when the camera is gone."""

    def _ready_for_trigger(self, timeout_s: float) -> bool:
        """Whether the camera accepts a frame trigger now (waiting up to timeout_s): a software trigger sent before
        it does is ignored, and the part gets no frame. True where the SDK cannot tell."""
        return True

    @abstractmethod
    def _check_alive(self) -> None:
        """Raise SourceUnavailableError when the camera no longer answers (called when no frame came for a while)."""

    def _transport_stats(self) -> dict[str, object]:
        return {}

    # ------------------------------------------------------------ features

    def feature(self, names: tuple[str, ...], value: object, what: str, required: bool = True) -> str | None:
        """Write `value` to the first of `names` the camera has; FeatureError naming the feature when it has none
        (required) or refuses the value. Returns the name written (None when absent and not required)."""
        for name in names:
            kind = self._feature_kind(name)
            if kind is None:
                continue
            if kind == "enum":
                entries = self._enum_entries(name)
                if str(value) not in entries:
                    raise FeatureError(
                        f"{self._identity}: {what} {value!r} is not supported by {name} (the camera offers {entries})"
                    )
            try:
                self._write(name, kind, value)
            except Exception as exc:
                raise FeatureError(f"{self._identity}: cannot set {what} ({name}) to {value!r}: {exc}") from exc
            return name
        if required:
            raise FeatureError(
                f"{self._identity}: the camera does not support {what} (no feature {' or '.join(names)})"
            )
        return None

    def _apply_features(self) -> None:
        s = self.settings
        if s.binning_x:
            self.feature(("BinningHorizontal",), s.binning_x, "binning_x")
        if s.binning_y:
            self.feature(("BinningVertical",), s.binning_y, "binning_y")
        if s.pixel_format:
            self.feature(("PixelFormat",), s.pixel_format, "pixel_format")
        if s.width or s.height or s.offset_x or s.offset_y:
            self.feature(("OffsetX",), 0, "offset_x")  # make room before the size grows
            self.feature(("OffsetY",), 0, "offset_y")
            if s.width:
                self.feature(("Width",), s.width, "width")
            if s.height:
                self.feature(("Height",), s.height, "height")
            if s.offset_x:
                self.feature(("OffsetX",), s.offset_x, "offset_x")
            if s.offset_y:
                self.feature(("OffsetY",), s.offset_y, "offset_y")
        if s.fps > 0:
            self.feature(("AcquisitionFrameRateEnable",), True, "frame rate enable", required=False)
            self.feature(("AcquisitionFrameRate", "AcquisitionFrameRateAbs"), s.fps, "fps (frame rate)")
        if s.exposure > 0:
            self.feature(("ExposureAuto",), "Off", "auto exposure off", required=False)
            self.feature(("ExposureTime", "ExposureTimeAbs"), s.exposure, "exposure (us)")
        if s.gain >= 0:
            self.feature(("GainAuto",), "Off", "auto gain off", required=False)
            self.feature(("Gain", "GainRaw"), s.gain if self._feature_kind("Gain") else int(s.gain), "gain")
        self.feature(("TriggerSelector",), "FrameStart", "trigger selector FrameStart", required=False)
        if s.trigger_source:
            self.feature(("TriggerSource",), "Software" if s.software_trigger else s.trigger_source, "trigger_source")
            if s.trigger_activation:
                self.feature(("TriggerActivation",), s.trigger_activation, "trigger_activation")
            if s.trigger_delay > 0:
                self.feature(("TriggerDelay", "TriggerDelayAbs"), s.trigger_delay, "trigger_delay (us)")
            self.feature(("TriggerMode",), "On", "trigger mode")
        else:
            self.feature(("TriggerMode",), "Off", "trigger mode", required=False)
        for item in s.features:
            name, value = (part.strip() for part in item.split("=", 1))
            kind = self._feature_kind(name)
            if kind is None:
                raise FeatureError(f"{self._identity}: the camera has no feature {name!r} (genicam_features)")
            self.feature((name,), _parse(value, kind), f"feature {name}")
        self._pixel_format = self._read("PixelFormat")
        if self._pixel_format not in PIXEL_FORMATS:
            raise FeatureError(
                f"{self._identity}: pixel format {self._pixel_format!r} cannot be read by the cell; set pixel_format "
                f"to one of {sorted(set(PIXEL_FORMATS) & set(self._enum_entries('PixelFormat')))}"
            )

    # ------------------------------------------------------------ FrameSource

    @property
    def description(self) -> str:
        s = self.settings
        trigger = f"trigger {s.trigger_source}" if s.trigger_source else "free running"
        who = self._identity or s.camera or "first camera"
        return f"{self.kind}:{who} {self._pixel_format or s.pixel_format} {trigger}".replace("  ", " ")

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    @property
    def self_paced(self) -> bool:
        return True

    def open(self) -> None:
        self.close()
        self._identity = self._connect()
        try:
            self._apply_features()
            self._start_stream()
        except BaseException:
            self._disconnect()
            raise
        self.clock.reset()
        self.ring.reopen()
        self._lost = ""
        self._stop.clear()
        self._thread = threading.Thread(target=self._grab_loop, name=f"grab-{self.kind}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self.ring.close()
        thread.join(timeout=5.0)
        if not self._lost:  # a camera known gone cannot answer: no exchange that can only time out
            try:
                self._stop_stream()
            except Exception as exc:  # the camera may be gone already
                self._warn(f"{self.description}: stopping the stream: {exc}")
        self._disconnect()

    def _down(self) -> SourceUnavailableError:
        return SourceUnavailableError(f"{self.description}: {self._lost or 'camera lost'}")

    def read(self) -> Frame:
        if self._lost:
            raise self._down()
        frame = self.ring.pop(0.2)
        if frame is None:
            if self._lost:
                raise self._down()
            raise NoFrameYetError("no frame yet")
        return self._deliver(frame)

    def _deliver(self, frame: Frame) -> Frame:
        """The ring holds raw views on the camera's buffers, decoded only for the frames that become parts: the
        decode's last step writes into the driver's frame-pool slot when it gives one (the frame's one copy on the
        host after the camera's own), else into a new array where there is anything to do (10/12-bit data)."""
        raw = frame.image
        if self.frame_allocator is not None:
            dtype = PIXEL_FORMATS[self._pixel_format][1].newbyteorder("=")
            image = finish_pixels(raw, self._pixel_format, self.frame_buffer(raw.shape, dtype))
        else:
            image = finish_pixels(raw, self._pixel_format)
        return frame if image is raw else replace(frame, image=image)

    def read_for(self, trigger_ns: int) -> Frame:
        if self._lost:
            raise self._down()
        s = self.settings
        if s.software_trigger:
            self.ring.clear()  # anything older answers no trigger of ours
            if not self._ready_for_trigger(s.trigger_timeout_s):
                self.unanswered_triggers += 1
                raise NoMatchingFrameError(f"camera not ready for a frame trigger within {s.trigger_timeout_s:g} s")
            try:
                self.feature(("TriggerSoftware",), None, "software trigger")
            except FeatureError as exc:
                raise NoMatchingFrameError(str(exc)) from exc
            self.software_triggers += 1
            frame = self.ring.pop(s.trigger_timeout_s)
            if frame is None:
                self.unanswered_triggers += 1
                if self._lost:
                    raise self._down()
                raise NoMatchingFrameError(f"no frame within {s.trigger_timeout_s:g} s of the software trigger")
            return self._deliver(frame)
        tolerance = int(s.trigger_tolerance_s * 1e9)
        frame = self.ring.nearest(trigger_ns, tolerance, s.trigger_tolerance_s + s.trigger_timeout_s)
        if frame is None:
            self.unanswered_triggers += 1
            if self._lost:
                raise self._down()
            raise NoMatchingFrameError(f"no camera frame within {s.trigger_tolerance_s * 1000:g} ms of the trigger")
        return self._deliver(frame)

    def _grab_loop(self) -> None:
        quiet_since = time.monotonic()
        while not self._stop.is_set():
            try:
                item = self._grab(0.2)
                if item is None:
                    if time.monotonic() - quiet_since > 1.0:  # no frame for a while: is the camera still there?
                        self._check_alive()
                        quiet_since = time.monotonic()
                    continue
            except SourceUnavailableError as exc:
                self._lost = str(exc)
                self.ring.close()
                return
            except Exception as exc:  # one bad buffer: count it, keep grabbing
                self.decode_errors += 1
                self._warn(f"{self.description}: frame dropped: {type(exc).__name__}: {exc}")
                continue
            host_ns = time.time_ns()
            quiet_since = time.monotonic()
            pixels, width, height, camera_ns = item
            try:
                image, encoding = pixels_from_buffer(pixels, width, height, self._pixel_format, finish=False)
            except ValueError as exc:
                self.decode_errors += 1
                self._warn(f"{self.description}: frame dropped: {exc}")
                continue
            self.frames_grabbed += 1
            stamp = self.clock.map(camera_ns, host_ns)
            origin = f"{self.kind}:{self._identity}#{self.frames_grabbed}"
            self.ring.push(Frame(image, encoding, origin, stamp_ns=stamp))

    def stats(self) -> dict[str, object]:
        values: dict[str, object] = {
            "camera": self._identity or "not open",
            "pixel_format": self._pixel_format,
            "frames_grabbed": self.frames_grabbed,
            "lost_frames": self.lost_frames,
            "decode_errors": self.decode_errors,
        }
        if self.settings.software_trigger:
            values["software_triggers"] = self.software_triggers
        if self.mode == "triggered":
            values["unanswered_triggers"] = self.unanswered_triggers
        if self._last_lost_reason:
            values["last_lost_frame"] = self._last_lost_reason
        values.update(self.ring.stats())
        values.update(self.clock.stats())
        values.update(self._transport_stats())
        return values


def _parse(value: str, kind: str) -> object:
    """A "Name=value" string as the feature's type."""
    try:
        if kind == "int":
            return int(value, 0)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
    except ValueError:
        raise SourceConfigError(f"genicam feature value {value!r} is not a valid {kind}") from None
    return value
