"""GigE Vision and USB3 Vision cameras through Aravis (vendor-neutral, open source), via PyGObject.

Needs Debian's gir1.2-aravis-0.8 and PyGObject in the venv (scripts/setup.sh installs both); without them
open() fails with a SourceConfigError saying what to install. The camera is found by id
("Vendor-Model-Serial", as `arv-tool-0.8` lists it), serial number, IP address or physical (MAC) address.
A cable pull shows as Aravis's control-lost signal (the GVCP heartbeat failed) or a feature read that fails
while no frame comes: the source reports it gone and the capture loop re-opens it with backoff.
"""

from __future__ import annotations

import contextlib
import threading
from functools import lru_cache

import numpy as np

from qc_cell.camera.sources.base import SourceConfigError, SourceUnavailableError
from qc_cell.camera.sources.genicam import GenICamSource

# GenICam node classes in Aravis -> feature kind.
_KINDS = {
    "GcEnumeration": "enum",
    "GcIntegerNode": "int",
    "GcIntReg": "int",
    "GcMaskedIntReg": "int",
    "GcIntSwissKnife": "int",
    "GcIntConverter": "int",
    "GcFloatNode": "float",
    "GcFloatReg": "float",
    "GcSwissKnife": "float",
    "GcConverter": "float",
    "GcBoolean": "bool",
    "GcCommand": "command",
    "GcStringNode": "string",
    "GcStringReg": "string",
}
# Aravis stream counters reported in /diagnostics (resends and losses on the wire).
STREAM_COUNTERS = (
    "n_completed_buffers",
    "n_failures",
    "n_underruns",
    "n_timeouts",
    "n_missing_frames",
    "n_missing_packets",
    "n_resend_requests",
    "n_resent_packets",
)
_aravis_lock = threading.Lock()  # Aravis's device list is global


@lru_cache(maxsize=1)
def aravis_module():
    """The Aravis GI module; SourceConfigError saying what to install when it is missing."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ImportError, ValueError) as exc:
        raise SourceConfigError(
            f"Aravis is not available ({exc}): install Debian's gir1.2-aravis-0.8 and PyGObject in the venv "
            "(bash scripts/setup.sh does both)"
        ) from exc
    return Aravis


def aravis_available() -> str:
    """'' when Aravis can be used here, else why not."""
    try:
        aravis_module()
    except SourceConfigError as exc:
        return str(exc)
    return ""


def list_cameras() -> list[dict[str, str]]:
    """Every camera Aravis sees: id, serial, address, physical id, model, vendor, protocol."""
    arv = aravis_module()
    with _aravis_lock:
        arv.update_device_list()
        return [
            {
                "id": arv.get_device_id(i) or "",
                "serial": arv.get_device_serial_nbr(i) or "",
                "address": arv.get_device_address(i) or "",
                "physical_id": arv.get_device_physical_id(i) or "",
                "model": arv.get_device_model(i) or "",
                "vendor": arv.get_device_vendor(i) or "",
                "protocol": arv.get_device_protocol(i) or "",
            }
            for i in range(arv.get_n_devices())
        ]


def select_camera(cameras: list[dict[str, str]], wanted: str) -> dict[str, str] | None:
    """The camera `wanted` names (id, serial, address or physical id, exact); the first one when wanted is ''."""
    if not wanted:
        return cameras[0] if cameras else None
    for key in ("id", "serial", "address", "physical_id"):
        for camera in cameras:
            if camera[key] and camera[key] == wanted:
                return camera
    return None


class AravisSource(GenICamSource):
    kind = "aravis"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._camera = None
        self._device = None
        self._stream = None
        self._control_lost = threading.Event()
        self._counters = dict.fromkeys(STREAM_COUNTERS, 0)  # totals of the streams already closed

    # ------------------------------------------------------------ connection

    def _connect(self) -> str:
        arv = aravis_module()
        cameras = list_cameras()
        found = select_camera(cameras, self.settings.camera)
        if found is None:
            seen = ", ".join(f"{c['id']} ({c['address']})" for c in cameras) or "none"
            raise SourceUnavailableError(
                f"aravis: camera {self.settings.camera or '(any)'} not found (cameras seen: {seen}); "
                "check the cable/power, or list them with arv-tool-0.8"
            )
        try:
            with _aravis_lock:
                camera = arv.Camera.new(found["id"])
        except Exception as exc:  # GLib.GError: busy (another controller), unreachable
            raise SourceUnavailableError(f"aravis: cannot open {found['id']}: {exc}") from exc
        self._camera, self._device = camera, camera.get_device()
        self._control_lost.clear()
        self._device.connect("control-lost", lambda _device: self._control_lost.set())
        return found["id"]

    def _disconnect(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            for name in STREAM_COUNTERS:
                with contextlib.suppress(Exception):
                    self._counters[name] += stream.get_info_uint64_by_name(name)
        device, camera = self._device, self._camera
        self._camera = self._device = None
        if device is not None and hasattr(device, "leave_control") and not self._lost:
            with contextlib.suppress(Exception):  # hand control back now, not when Python frees the object
                device.leave_control()
        elif device is not None:
            # The camera is gone: freeing the objects runs Aravis's own goodbye to it (GVCP writes that can only
            # time out, seconds on a loaded machine). Free them on a thread of their own, so the loss is reported
            # and the reconnect starts at once.
            doomed = [stream, camera, device]
            del stream, camera, device
            threading.Thread(target=doomed.clear, name="aravis-release", daemon=True).start()

    # ------------------------------------------------------------ features

    def _feature_kind(self, name: str) -> str | None:
        node = self._device.get_feature(name)
        if node is None:
            return None
        if not self._device.is_feature_available(name):
            return None
        return _KINDS.get(type(node).__name__, "string")

    def _enum_entries(self, name: str) -> list[str]:
        return list(self._device.dup_available_enumeration_feature_values_as_strings(name) or [])

    def _write(self, name: str, kind: str, value: object) -> None:
        d = self._device
        if kind == "command":
            d.execute_command(name)
        elif kind == "enum" or kind == "string":
            d.set_string_feature_value(name, str(value))
        elif kind == "int":
            d.set_integer_feature_value(name, int(value))
        elif kind == "float":
            d.set_float_feature_value(name, float(value))
        elif kind == "bool":
            d.set_boolean_feature_value(name, bool(value))

    def _read(self, name: str) -> str:
        return self._device.get_string_feature_value(name)

    # ------------------------------------------------------------ stream

    def _start_stream(self) -> None:
        arv = aravis_module()
        camera = self._camera
        if camera.is_gv_device():
            try:
                camera.gv_auto_packet_size()  # the largest packet the path carries (jumbo frames where set up)
            except Exception as exc:
                self._warn(f"{self._identity}: packet size negotiation failed ({exc}); keeping the camera's")
        stream = camera.create_stream(None, None)
        if stream is None:
            raise SourceUnavailableError(f"aravis: {self._identity}: cannot create a stream")
        if hasattr(stream.props, "packet_resend"):
            stream.set_property("packet-resend", arv.GvStreamPacketResend.ALWAYS)
        payload = camera.get_payload()
        for _ in range(self.settings.buffers):
            stream.push_buffer(arv.Buffer.new_allocate(payload))
        camera.set_acquisition_mode(arv.AcquisitionMode.CONTINUOUS)
        camera.start_acquisition()
        self._stream = stream

    def _stop_stream(self) -> None:
        if self._camera is not None:
            self._camera.stop_acquisition()

    def _grab(self, timeout_s: float):
        if self._control_lost.is_set():
            raise SourceUnavailableError("control lost (no GVCP heartbeat answer: cable pulled or camera off)")
        arv = aravis_module()
        buffer = self._stream.timeout_pop_buffer(int(timeout_s * 1e6))
        if buffer is None:
            return None
        try:
            status = buffer.get_status()
            if status != arv.BufferStatus.SUCCESS:
                self.lost_frames += 1
                self._last_lost_reason = status.value_nick
                return None
            data = buffer.get_data()  # a copy (bytes): the buffer goes straight back to the stream
            return (
                np.frombuffer(data, np.uint8),
                buffer.get_image_width(),
                buffer.get_image_height(),
                buffer.get_timestamp(),
            )
        finally:
            self._stream.push_buffer(buffer)

    def _check_alive(self) -> None:
        if self._control_lost.is_set():
            raise SourceUnavailableError("control lost (no GVCP heartbeat answer: cable pulled or camera off)")
        try:
            self._device.get_integer_feature_value("Width")
        except Exception as exc:
            raise SourceUnavailableError(f"camera does not answer ({exc})") from exc

    def _transport_stats(self) -> dict[str, object]:
        totals = dict(self._counters)
        stream = self._stream
        if stream is not None:
            for name in STREAM_COUNTERS:
                with contextlib.suppress(Exception):
                    totals[name] += stream.get_info_uint64_by_name(name)
        return {
            "resend_requests": totals["n_resend_requests"],
            "resent_packets": totals["n_resent_packets"],
            "missing_packets": totals["n_missing_packets"],
            "missing_frames": totals["n_missing_frames"],
            "buffer_failures": totals["n_failures"],
            "buffer_underruns": totals["n_underruns"],
        }
