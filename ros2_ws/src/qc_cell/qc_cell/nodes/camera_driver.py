"""camera_driver: lifecycle node where every part enters the cell (the work is done in qc_cell.camera).

configure: build the part-id allocator and acquire the source (a missing device is reported and retried with
backoff once active); activate: start capturing (free-run at rate_hz, or one frame per camera/trigger);
deactivate: stop capturing; cleanup/shutdown: release the source.

Publishes, for every part: camera/parts (PartTrigger, stamp = capture time) then camera/frames (PartFrame; without
image and with capture_ok false when no frame could be had, so downstream decides NOT_INSPECTED). camera/image_raw
and camera/camera_info only while someone subscribes. Also alerts and /diagnostics.
Triggers are answered in every state: a trigger the driver cannot serve still yields a PartFrame saying why.
Free-run mode cannot guarantee a record per part (a part that passes while no frame is taken leaves no trace): there
a camera outage or lost frames are CRITICAL alerts, and the diagnostics ask the reject actuator to hold the stop-line
(`stop_line_request`) until frames come again.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from qc_cell.camera.capture import (
    DONE,
    FINISHED,
    RETRYING,
    STREAMING,
    CaptureLoop,
    CaptureRequest,
    CaptureResult,
    CaptureSettings,
)
from qc_cell.camera.framing import Framing
from qc_cell.camera.params import CAMERA_DRIVER, capture_fields, source_settings
from qc_cell.camera.part_ids import PartIdAllocator, PartIdError, default_state_file
from qc_cell.camera.sources import SourceConfigError, build_source
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.alerts import AlertPublisher
from qc_cell.ros.frame_transport import FrameSender, PoolSettings
from qc_cell.ros.images import ImageConversionError
from qc_cell.ros.lifecycle import DeviceNode
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters, handle_parameter_changes
from qc_cell.ros.subscriptions import Subscriptions
from qc_cell.ros.time import from_ns, steady_timer, to_ns
from qc_interfaces.msg import Alert, PartFrame, PartTrigger

GROUND_TRUTH = {"good": PartFrame.LABEL_GOOD, "defect": PartFrame.LABEL_DEFECT, None: PartFrame.LABEL_UNKNOWN}
SEVERITY = {"info": Alert.INFO, "warn": Alert.WARN, "error": Alert.ERROR}
# Events that are also raised as alerts (the others are only logged): state changes an operator must see.
ALERT_CODES = {"CAMERA_UNAVAILABLE", "CAMERA_RECOVERED", "SOURCE_FINISHED", "MAX_PARTS", "PART_ID_FAILED"}
# Free run: a camera outage leaves parts without any record: CRITICAL (the first of each outage; frame losses are
# logged each and counted in the diagnostics, whose stop_line_request holds the stop-line).
FREE_RUN_CRITICAL = {"CAMERA_UNAVAILABLE"}
# Two threads: captures publish from the capture thread, and the second executor thread answers triggers while a
# lifecycle transition is stopping the capture loop.
EXECUTOR_THREADS = 2


class CameraDriver(DeviceNode):
    configure_errors = (PartIdError, SourceConfigError)

    def __init__(self, **kwargs) -> None:
        self.loop: CaptureLoop | None = None  # set before anything can fail: destroy_node() may run regardless
        super().__init__("camera_driver", **kwargs)
        p = declare_parameters(self, CAMERA_DRIVER)
        self.frame_id: str = p["frame_id"]
        self._diag_period: float = p["diagnostics_period_s"]
        try:
            self.capture = CaptureSettings(**capture_fields(p))
            self.framing = Framing.from_parameters(list(p["roi"]), p["scale"])
            self.source = build_source(source_settings(p), warn=self._warn_source, node=self)
        except (ValueError, SourceConfigError) as exc:
            raise ParameterError(str(exc)) from exc
        if p["source"] == "gstreamer" and not p["pipeline"].strip():
            raise ParameterError("source gstreamer needs the pipeline parameter (see docs/camera.md)")
        prefix = p["part_id_prefix"] or self.get_namespace().strip("/").replace("/", "_") or "cell"
        try:
            state_file = Path(p["state_dir"]).expanduser() / f"part_ids_{prefix}.json" if p["state_dir"] else None
            self.part_ids = PartIdAllocator(prefix, state_file or default_state_file(prefix))
        except (ValueError, PartIdError) as exc:
            raise ParameterError(str(exc)) from exc
        self._sequence = 0
        self._sequence_lock = threading.Lock()
        self._info_size: tuple[int, int] | None = None
        self._info_msg = CameraInfo()
        self._last_failed = 0
        self._last_lost = 0

        self.parts_pub = self.create_publisher(PartTrigger, "camera/parts", qos.EVENTS)
        self.frames_pub = self.create_publisher(PartFrame, "camera/frames", qos.PART_FRAMES)
        self.image_pub = self.create_publisher(Image, "camera/image_raw", qos.IMAGE_VIEW)
        self.info_pub = self.create_publisher(CameraInfo, "camera/camera_info", qos.IMAGE_VIEW)
        # Pixels by handle through the shared-memory frame pool to same-host subscribers, else inline.
        self.frame_sender = FrameSender(
            self,
            self.frames_pub,
            PoolSettings(
                p["frame_pool"], p["frame_pool_slots"], p["frame_pool_lease_s"], p["frame_pool_attach_wait_s"]
            ),
            f"{prefix}_{self.get_name()}",
            self._warn_source,
        )
        if p["frame_pool"] and self.framing.roi is None and self.framing.scale == 1.0:
            # Sources that can (synthetic, Aravis, pylon) capture each frame straight into a pool slot: no copy
            # in the driver. With a ROI or downscale the framed image is a new, smaller one and is copied in.
            self.source.frame_allocator = self.frame_sender.reserve
        self.alerts = AlertPublisher(self)
        self._diag_pub = diagnostics.create_publisher(self)
        if self.capture.mode == "triggered":
            # Subscribed in every lifecycle state, so a trigger is answered even when the camera is not capturing.
            Subscriptions(self, self.alerts, self._diag_pub).create(
                PartTrigger,
                "camera/trigger",
                self._on_trigger,
                qos.EVENTS,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        steady_timer(self, self._diag_period, self._publish_diagnostics)
        handle_parameter_changes(self, CAMERA_DRIVER, self._apply_parameters)

    # ------------------------------------------------------------ parameters

    def _apply_parameters(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        if "rate_hz" in changed:  # runtime parameters (rate_hz, lighting): range checked against the spec
            loop = self.loop
            if loop is not None:
                loop.set_rate(changed["rate_hz"])
            self.capture = dataclasses.replace(self.capture, rate_hz=changed["rate_hz"])
        if "lighting" in changed and hasattr(self.source, "set_lighting"):  # the synthetic source's scene light
            self.source.set_lighting(changed["lighting"])

    # ------------------------------------------------------------ lifecycle (cleanup, shutdown, error: DeviceNode)

    def acquire(self) -> None:
        self.part_ids.check_writable()
        loop = CaptureLoop(
            self.source,
            self.framing,
            self.capture,
            self._publish_result,
            lambda: self.get_clock().now().nanoseconds,
            self.part_ids.next_id,
            self._on_event,
        )
        opened = loop.open()
        self.loop = loop
        if opened:
            self.get_logger().info(f"configured: {self.source.description}, mode {self.capture.mode}")
        else:
            self.get_logger().error(
                f"configured without a camera: {loop.snapshot().get('last_error')}; retrying once active"
            )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.loop is not None
        self.loop.start()
        rate = f" at {self.capture.rate_hz:g} parts/s" if self.capture.mode == "free_run" else " on camera/trigger"
        self.get_logger().info(f"capturing{rate}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.loop is not None:
            self.loop.stop("camera driver deactivated")
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None:
            loop.close()
        sender = getattr(self, "frame_sender", None)  # absent when the constructor failed before it
        if sender is not None:
            sender.close()

    # ------------------------------------------------------------ parts

    def _on_trigger(self, msg: PartTrigger) -> None:
        now_ns = self.get_clock().now().nanoseconds
        trigger_ns = to_ns(msg.header.stamp) or now_ns
        part_id = msg.part_id
        if not part_id:
            try:
                part_id = self.part_ids.next_id()
            except PartIdError as exc:
                # Still answer the part: without a unique id it is reported under a one-off one.
                part_id = f"{self.part_ids.prefix}-unnumbered-{now_ns}"
                self._on_event("error", "PART_ID_FAILED", str(exc))
        request = CaptureRequest(part_id, trigger_ns, msg.encoder_count)
        loop = self.loop
        if loop is None or not loop.running:
            error = f"camera driver is {self.lifecycle_state}: not capturing"
            steady_ns = time.monotonic_ns()
            self._publish_result(CaptureResult(part_id, trigger_ns, msg.encoder_count, None, None, error, steady_ns))
        else:
            loop.request(request)

    def _publish_result(self, result: CaptureResult) -> None:
        """camera/parts then camera/frames for one part (called from the capture thread and the trigger callback)."""
        with self._sequence_lock:
            sequence = self._sequence
            self._sequence += 1
        header = Header(stamp=from_ns(result.stamp_ns), frame_id=self.frame_id)
        # Wall stamp for the records, steady stamp for every deadline and the ejection (msg/PartTrigger.msg).
        steady = from_ns(result.steady_ns or time.monotonic_ns())
        self.parts_pub.publish(
            PartTrigger(header=header, part_id=result.part_id, encoder_count=result.encoder_count, steady_stamp=steady)
        )
        frame = result.frame
        msg = PartFrame(
            header=header,
            part_id=result.part_id,
            sequence=sequence,
            source=frame.origin if frame is not None else self.source.description,
            encoder_count=result.encoder_count,
            steady_stamp=steady,
            capture_ok=False,
            capture_error=result.error,
        )
        if frame is not None and result.image is not None:
            try:
                self.frame_sender.fill(msg, result.image, frame.encoding, header)
                msg.capture_ok = True
            except ImageConversionError as exc:
                msg.capture_error = f"{frame.origin}: {exc}"
            msg.ground_truth = GROUND_TRUTH.get(frame.label, PartFrame.LABEL_UNKNOWN)
            msg.defect_type = frame.defect_type or ""
        self.frames_pub.publish(msg)
        if msg.capture_ok:
            if self.image_pub.get_subscription_count() > 0:
                # The PartFrame's own Image when inline (no second conversion); made for viewers when by handle.
                self.image_pub.publish(self.frame_sender.viewer_image(msg, result.image, frame.encoding))
            if self.info_pub.get_subscription_count() > 0:
                self.info_pub.publish(self._camera_info(header, msg.image))
        else:
            self.get_logger().warning(
                f"part {result.part_id}: no frame: {msg.capture_error}", throttle_duration_sec=1.0
            )

    def _camera_info(self, header: Header, image: Image) -> CameraInfo:
        """Size and frame of the published image (the driver does not carry a calibration)."""
        if self._info_size != (image.width, image.height):
            self._info_size = (image.width, image.height)
            self._info_msg = CameraInfo(width=image.width, height=image.height)
        self._info_msg.header = header
        return self._info_msg

    # ------------------------------------------------------------ events, diagnostics

    def _warn_source(self, message: str) -> None:
        self.get_logger().warning(message)

    def _on_event(self, level: str, code: str, message: str) -> None:
        text = f"[{code}] {message}"
        logger = self.get_logger()
        if level == "error":
            logger.error(text, throttle_duration_sec=1.0)
        elif level == "warn":
            logger.warning(text, throttle_duration_sec=5.0)
        else:
            logger.info(text)
        if self.capture.mode == "free_run" and code in FREE_RUN_CRITICAL:
            # Free run: parts passing now get no record at all; the line must stop (docs/camera.md).
            self.alerts.send(Alert.CRITICAL, code, f"free-run: parts pass without a record: {message}")
        elif code in ALERT_CODES and level != "warn":
            self.alerts.send(SEVERITY[level], code, message)

    def _publish_diagnostics(self) -> None:
        loop = self.loop
        state = self.lifecycle_state
        values: dict[str, object] = {"lifecycle_state": state, "source_kind": self.source.kind}
        if loop is None:
            level, message = diagnostics.WARN, f"{state}: not capturing"
        else:
            values.update(loop.snapshot())
            values.update(self.frame_sender.stats())
            failed = loop.failed_parts
            if loop.state == RETRYING:
                level, message = diagnostics.ERROR, f"camera unavailable, retrying: {values.get('last_error', '')}"
            elif state != "active":
                level, message = diagnostics.WARN, f"{state}: not capturing"
            elif loop.state in (FINISHED, DONE):
                level, message = diagnostics.OK, f"capture ended: {values.get('end_reason', '')}"
            elif failed > self._last_failed:
                level, message = (
                    diagnostics.WARN,
                    f"{failed - self._last_failed} part(s) without a frame since the last report",
                )
            elif loop.state == STREAMING:
                level, message = diagnostics.OK, f"capturing at {values['achieved_fps']} fps"
            else:
                level, message = diagnostics.WARN, str(loop.state)
            self._last_failed = failed
        if self.capture.mode == "free_run":
            values["free_run"] = True
            request = self._free_run_stop_request(loop)
            if request:
                values["stop_line_request"] = request
                level = diagnostics.ERROR
                message = f"{message}; {request}" if request not in message else message
        status = diagnostics.status(f"{self.get_name()}: camera", level, message, values, self.source.description)
        diagnostics.publish(self, self._diag_pub, [status])

    def _free_run_stop_request(self, loop: CaptureLoop | None) -> str:
        """Why the line must stop in free-run mode ('' = it need not): the camera is unavailable, or frames were
        lost since the last report (each may be a part without a record)."""
        if loop is None or self.lifecycle_state != "active":
            return ""
        lost = loop.dropped_frames
        new, self._last_lost = lost - self._last_lost, lost
        if loop.state == RETRYING:
            return "free-run camera unavailable: parts pass without a record"
        if new > 0:
            return f"free-run: {new} frame(s) lost since the last report: parts may have passed without a record"
        return ""


def main() -> int:
    return run(CameraDriver, threads=EXECUTOR_THREADS)


if __name__ == "__main__":
    raise SystemExit(main())
