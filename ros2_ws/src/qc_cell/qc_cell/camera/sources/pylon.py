"""Basler cameras through pypylon (Basler's pylon SDK; GigE, USB3 and the pylon camera emulation), with the same
parameters as the aravis source (genicam.GenICamSettings).

pypylon is an extra (about 250 MB installed): `pip install -r requirements/pylon.txt`; `make setup` installs it for
the tests. Without it open() fails with a SourceConfigError saying so. `PYLON_CAMEMU=N` in the environment gives N
emulated cameras (serials 0815-0000, 0815-0001, ...) that grab test images: no hardware needed.
The camera is found by serial number, user-defined name (pylon_ros2_camera's device_user_id), full name, model or
IP address. The emulation stamps frames 0: then the host receive time is the capture time.
"""

from __future__ import annotations

from functools import lru_cache

from qc_cell.camera.sources.base import NoMatchingFrameError, SourceConfigError, SourceUnavailableError
from qc_cell.camera.sources.genicam import GenICamSource

_KINDS = {
    "EnumParameter": "enum",
    "IntegerParameter": "int",
    "FloatParameter": "float",
    "BooleanParameter": "bool",
    "CommandParameter": "command",
    "StringParameter": "string",
}
# pylon stream grabber counters (GigE) reported in /diagnostics.
STREAM_COUNTERS = {
    "Statistic_Failed_Buffer_Count": "buffer_failures",
    "Statistic_Buffer_Underrun_Count": "buffer_underruns",
    "Statistic_Failed_Packet_Count": "missing_packets",
    "Statistic_Resend_Request_Count": "resend_requests",
    "Statistic_Resend_Packet_Count": "resent_packets",
}


@lru_cache(maxsize=1)
def pylon_module():
    try:
        from pypylon import genicam, pylon
    except ImportError as exc:
        raise SourceConfigError(
            f"pypylon is not installed ({exc}): pip install -r requirements/pylon.txt (make setup does)"
        ) from exc
    return pylon, genicam


def pylon_available() -> str:
    try:
        pylon_module()
    except SourceConfigError as exc:
        return str(exc)
    return ""


def _device_keys(info) -> list[str]:
    keys = [info.GetSerialNumber(), info.GetUserDefinedName(), info.GetFullName(), info.GetModelName()]
    try:
        if info.IsIpAddressAvailable():
            keys.append(info.GetIpAddress())
    except Exception:
        pass
    return [k for k in keys if k]


class PylonSource(GenICamSource):
    kind = "pylon"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cam = None
        self._tick_hz = 1e9
        self._counters: dict[str, int] = dict.fromkeys(STREAM_COUNTERS.values(), 0)

    def _connect(self) -> str:
        pylon, _ = pylon_module()
        factory = pylon.TlFactory.GetInstance()
        devices = list(factory.EnumerateDevices())
        wanted = self.settings.camera
        found = devices[0] if devices and not wanted else None
        for info in devices if wanted else []:
            if wanted in _device_keys(info):
                found = info
                break
        if found is None:
            seen = ", ".join(f"{d.GetFriendlyName()}" for d in devices) or "none"
            raise SourceUnavailableError(f"pylon: camera {wanted or '(any)'} not found (cameras seen: {seen})")
        try:
            cam = pylon.InstantCamera(factory.CreateDevice(found))
            cam.Open()
        except Exception as exc:  # genicam.RuntimeException: busy, unreachable
            raise SourceUnavailableError(f"pylon: cannot open {found.GetFriendlyName()}: {exc}") from exc
        self._cam = cam
        self._nodes = cam.GetNodeMap()
        tick = self._nodes.GetNode("GevTimestampTickFrequency")
        self._tick_hz = float(tick.GetValue()) if self._feature_kind("GevTimestampTickFrequency") else 1e9
        return f"{found.GetModelName()}-{found.GetSerialNumber()}"

    def _disconnect(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            self._counters = self._stream_totals(cam)
            try:
                cam.Close()
                cam.DestroyDevice()
            except Exception:
                pass

    def _feature_kind(self, name: str) -> str | None:
        _, genicam = pylon_module()
        try:
            node = self._nodes.GetNode(name)
        except Exception:
            return None
        if node is None or not hasattr(node, "GetNode") or not genicam.IsAvailable(node):
            return None
        return _KINDS.get(type(node).__name__, "string")

    def _enum_entries(self, name: str) -> list[str]:
        return list(self._nodes.GetNode(name).Symbolics)

    def _write(self, name: str, kind: str, value: object) -> None:
        node = self._nodes.GetNode(name)
        if kind == "command":
            node.Execute()
        elif kind == "int":
            node.SetValue(int(value))
        elif kind == "float":
            node.SetValue(float(value))
        elif kind == "bool":
            node.SetValue(bool(value))
        else:
            node.SetValue(str(value))

    def _read(self, name: str) -> str:
        return str(self._nodes.GetNode(name).ToString())

    def _start_stream(self) -> None:
        pylon, _ = pylon_module()
        self._cam.MaxNumBuffer.Value = self.settings.buffers
        self._cam.StartGrabbing(pylon.GrabStrategy_OneByOne)

    def _stop_stream(self) -> None:
        if self._cam is not None and self._cam.IsGrabbing():
            self._cam.StopGrabbing()

    def _ready_for_trigger(self, timeout_s: float) -> bool:
        # Right after StartGrabbing (or while the previous exposure is read out) the camera ignores a software
        # trigger: pylon's own samples wait for it first.
        pylon, _ = pylon_module()
        cam = self._cam
        try:
            return bool(cam.WaitForFrameTriggerReady(int(timeout_s * 1000), pylon.TimeoutHandling_Return))
        except Exception as exc:  # pypylon raises its own RuntimeException types
            if cam.IsCameraDeviceRemoved() or not cam.IsGrabbing():
                raise SourceUnavailableError(f"waiting for frame-trigger ready failed: {exc}") from exc
            raise NoMatchingFrameError(f"waiting for frame-trigger ready failed: {exc}") from exc

    def _grab(self, timeout_s: float):
        pylon, _ = pylon_module()
        cam = self._cam
        if cam.IsCameraDeviceRemoved():
            raise SourceUnavailableError("camera removed (cable pulled or camera off)")
        try:
            result = cam.RetrieveResult(int(timeout_s * 1000), pylon.TimeoutHandling_Return)
        except Exception as exc:
            if cam.IsCameraDeviceRemoved() or not cam.IsGrabbing():
                raise SourceUnavailableError(f"grab failed: {exc}") from exc
            raise
        if result is None or not result.IsValid():
            return None
        try:
            if not result.GrabSucceeded():
                self.lost_frames += 1
                self._last_lost_reason = f"{result.ErrorCode:#x} {result.ErrorDescription}"
                return None
            stamp = int(result.TimeStamp)
            camera_ns = stamp if self._tick_hz == 1e9 else int(stamp * 1e9 / self._tick_hz)
            return result.Array, int(result.Width), int(result.Height), camera_ns
        finally:
            result.Release()

    def _check_alive(self) -> None:
        if self._cam is None or self._cam.IsCameraDeviceRemoved():
            raise SourceUnavailableError("camera removed (cable pulled or camera off)")

    def _stream_totals(self, cam) -> dict[str, int]:
        totals = dict(self._counters)
        try:
            nodes = cam.GetStreamGrabberNodeMap()
            for node_name, key in STREAM_COUNTERS.items():
                node = nodes.GetNode(node_name)
                if node is not None and hasattr(node, "GetValue"):
                    totals[key] += int(node.GetValue())
        except Exception:
            pass
        return totals

    def _transport_stats(self) -> dict[str, object]:
        return self._stream_totals(self._cam) if self._cam is not None else dict(self._counters)
