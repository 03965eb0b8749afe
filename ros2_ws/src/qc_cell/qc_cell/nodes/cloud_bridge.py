"""cloud_bridge node: the cell's link to the cloud over MQTT (topics and schemas: docs/mqtt.md).

Outbound: per-part summaries (quality/decision), KPIs, alerts, reject events, process state and model
status become JSON records that go through the durable outbox before they are published; optional JPEG
samples and re-inspection requests. Inbound: signed model updates, handed to inference/load_model after
verification, and cloud re-inspection verdicts (quality/cloud_verdict).

What is sent, when, and what the cloud's answers mean is decided by qc_cell.bridge.cloud_link.CloudLink;
this node declares parameters, converts messages to its plain inputs and its outputs to messages, alerts
and /diagnostics. All MQTT and file I/O runs in the link's own threads; ROS callbacks only convert.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any, TypeVar

from rclpy.node import Node
from sensor_msgs.msg import Image

from qc_cell.bridge.cloud_link import CloudLink, CloudLinkError
from qc_cell.bridge.inputs import (
    AlertReport,
    Clock,
    KpiReport,
    ModelReport,
    PartImage,
    PartVerdict,
    ProcessReport,
    ReconcileReport,
    RejectReport,
    ShadowScoreReport,
    ShadowStateReport,
)
from qc_cell.bridge.outputs import CloudVerdict, LinkAlert
from qc_cell.bridge.params import CLOUD_BRIDGE
from qc_cell.bridge.settings import from_values
from qc_cell.inference.shadow_wire import live_version, parse_state
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.alerts import AlertPublisher
from qc_cell.ros.frame_transport import FrameReceiver
from qc_cell.ros.images import image_to_array
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters, handle_parameter_changes
from qc_cell.ros.subscriptions import Subscriptions
from qc_cell.ros.time import from_ns, steady_timer, to_ns
from qc_contract.vocabulary import Severity
from qc_interfaces.msg import (
    Alert,
    CellKpi,
    InspectionResult,
    ModelInfo,
    PartFrame,
    ProcessState,
    QualityDecision,
    Reconciliation,
    RejectEvent,
)
from qc_interfaces.srv import LoadModel

T = TypeVar("T")


def plain(kind: type[T], msg: Any, **converted: Any) -> T:
    """The link's plain input from a message: the fields given here, the rest copied from the message's
    fields of the same name."""
    copied = {f.name: getattr(msg, f.name) for f in fields(kind) if f.name not in converted}  # type: ignore[arg-type]
    return kind(**copied, **converted)


def _mono8(image: Image):
    """A heatmap message's pixels as (H, W) uint8; ValueError for anything else."""
    if image.encoding != "mono8":
        raise ValueError(f"heatmap encoding {image.encoding!r}, expected mono8")
    return image_to_array(image, copy=True).reshape(image.height, image.width)


class CloudBridgeNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("cloud_bridge", **kwargs)
        p = declare_parameters(self, CLOUD_BRIDGE)
        try:
            settings = from_values(p)
        except ValueError as exc:  # BridgeConfigError, KeyFileError: the message names the parameter
            raise ParameterError(str(exc)) from exc
        self._load_timeout_s = p["load_timeout_s"]
        # Publishers. alerts / quality/cloud_verdict are EVENTS (reliable), like every per-part record.
        self._alerts = AlertPublisher(self)
        self._verdict_pub = None
        if settings.offload.enabled:
            self._verdict_pub = self.create_publisher(QualityDecision, "quality/cloud_verdict", qos.EVENTS)
        self._diag_pub = diagnostics.create_publisher(self)
        self._load_client = self.create_client(LoadModel, "inference/load_model")
        self._shadow_client = self.create_client(LoadModel, "inference/load_shadow")
        try:
            self._link = CloudLink(
                settings,
                alert=self._publish_alert,
                cloud_verdict=self._publish_cloud_verdict,
                load_model=self._load_model_blocking if settings.updates is not None else None,
                load_shadow=self._load_shadow_blocking if settings.updates is not None else None,
                log=self._log,
                clock=Clock(wall_ns=lambda: self.get_clock().now().nanoseconds),  # parts are stamped by it
            )
        except CloudLinkError as exc:
            raise ParameterError(str(exc)) from exc

        # Subscriptions: the QoS each topic's publisher uses (qc_cell.ros.qos), so the pairs match.
        # With the publisher's history, so the first verdicts are not lost when the decision node's writer
        # matches this reader only after them, nor those decided while this bridge was down (CloudLink.on_part).
        # Frames by handle from the camera driver's shared-memory pool (read only for the frames it sends).
        self._frames = FrameReceiver(self.get_fully_qualified_name(), p["frame_pool"])
        subscribe = Subscriptions(self, self._alerts, self._diag_pub).create
        subscribe(QualityDecision, "quality/decision", self._on_decision, qos.PART_RECORDS)
        subscribe(CellKpi, "quality/kpi", self._on_kpi, qos.EVENTS)
        subscribe(Alert, "alerts", self._on_alert, qos.EVENTS)
        subscribe(RejectEvent, "reject/event", self._on_reject, qos.EVENTS)
        subscribe(Reconciliation, "reject/reconciliation", self._on_reconcile, qos.EVENTS)
        subscribe(ProcessState, "process/state", self._on_process, qos.LATCHED)
        subscribe(ModelInfo, "model/active", self._on_model, qos.LATCHED)
        # The shadow model's scores and state (inference/shadow.py): EVENTS and LATCHED, as inference publishes.
        subscribe(InspectionResult, "inspection/shadow", self._on_shadow_score, qos.EVENTS)
        subscribe(ModelInfo, "model/shadow", self._on_shadow_state, qos.LATCHED)
        if settings.wants_frames:
            # Only then: every frame is an image, and the bridge must not cost the cell a copy of each.
            subscribe(PartFrame, "camera/frames", self._on_frame, qos.PART_FRAMES)
            # A same-host reader of the camera driver's frame pool: the driver sends handles only while every
            # subscriber has attached; the bridge leases a frame only when it sends its pixels (few are).
            self._frames.subscribe(self)
        if settings.sample.enabled:
            # inference publishes heatmaps only while someone listens: only when samples leave the cell.
            subscribe(PartFrame, "inspection/heatmap", self._on_heatmap, qos.IMAGE_VIEW)
        handle_parameter_changes(self, CLOUD_BRIDGE, self._apply_parameters)
        steady_timer(self, p["diagnostics_period_s"], self._publish_diagnostics)
        steady_timer(self, p["status_period_s"], self._link.publish_status)
        steady_timer(self, 0.2, self._link.housekeeping)

        self._link.start()
        if settings.broker.plaintext_warning:
            self.get_logger().warning(settings.broker.plaintext_warning)
        self.get_logger().info(
            f"cloud bridge for {settings.cell.path} -> {settings.broker.url} (outbox {settings.outbox_path}, "
            f"{settings.outbox_limits.policy} when full; updates {'on' if settings.updates else 'off'}, "
            f"samples {'on' if settings.sample.enabled else 'off'}, "
            f"offload {'on' if settings.offload.enabled else 'off'})"
        )

    # -- parameters ------------------------------------------------------------------------------------

    def _apply_parameters(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        """Run-time changes (type and range already checked against the spec) go to the link."""
        self._link.retune(changed)

    # -- ROS -> link -----------------------------------------------------------------------------------

    def _on_decision(self, msg: QualityDecision) -> None:
        self._link.on_part(
            plain(
                PartVerdict,
                msg,
                reasons=tuple(msg.reasons),
                capture_ns=to_ns(msg.header.stamp),
                decision_ns=to_ns(msg.decision_stamp),
                image_stats=(msg.image_brightness, msg.image_contrast, msg.image_sharpness),
            )
        )

    def _on_frame(self, msg: PartFrame) -> None:
        self._link.on_frame(PartImage(msg.part_id, msg.capture_ok, self._frames.deferred_bgr8(msg)))

    def _on_heatmap(self, msg: PartFrame) -> None:
        image = msg.image
        self._link.on_heatmap(PartImage(msg.part_id, msg.capture_ok, lambda: _mono8(image)))

    def _on_kpi(self, msg: CellKpi) -> None:
        counts = {"NORMAL": msg.normal, "REINSPECT": msg.reinspect, "DEFECTIVE": msg.defective}
        self._link.on_kpi(
            plain(
                KpiReport,
                msg,
                stamp_ns=to_ns(msg.header.stamp),
                counts=counts | {"NOT_INSPECTED": msg.not_inspected},
                latency_ms={"p50": msg.latency_p50_ms, "p95": msg.latency_p95_ms, "p99": msg.latency_p99_ms},
                reasons=dict(zip(msg.reason_names, msg.reason_counts, strict=False)),
            )
        )

    def _on_alert(self, msg: Alert) -> None:
        self._link.on_alert(plain(AlertReport, msg, stamp_ns=to_ns(msg.header.stamp)))

    def _on_reject(self, msg: RejectEvent) -> None:
        self._link.on_reject(
            plain(
                RejectReport,
                msg,
                capture_ns=to_ns(msg.header.stamp),
                planned_ns=to_ns(msg.planned_time),
                actual_ns=to_ns(msg.actual_time),
            )
        )

    def _on_reconcile(self, msg: Reconciliation) -> None:
        self._link.on_reconcile(
            plain(ReconcileReport, msg, capture_ns=to_ns(msg.header.stamp), deadline_ns=to_ns(msg.deadline))
        )

    def _on_process(self, msg: ProcessState) -> None:
        self._link.on_process(plain(ProcessReport, msg, stamp_ns=to_ns(msg.header.stamp)))

    def _on_model(self, msg: ModelInfo) -> None:
        self._link.on_model(plain(ModelReport, msg, stamp_ns=to_ns(msg.header.stamp)))

    def _on_shadow_score(self, msg: InspectionResult) -> None:
        if msg.status != InspectionResult.STATUS_OK or not msg.model_version:
            return
        self._link.on_shadow_score(
            ShadowScoreReport(
                stamp_ns=self.get_clock().now().nanoseconds,
                part_id=msg.part_id,
                shadow_version=msg.model_version,
                live_version=live_version(msg.backend),
                defect_probability=float(msg.defect_probability),
                latency_ms=float(msg.inference_ms),
            )
        )

    def _on_shadow_state(self, msg: ModelInfo) -> None:
        counts, text = parse_state(msg.message)
        self._link.on_shadow_state(ShadowStateReport(to_ns(msg.header.stamp), msg.version, counts, text))

    # -- link -> ROS (any thread: rclpy publishers and loggers are thread-safe) -------------------------

    def _publish_cloud_verdict(self, verdict: CloudVerdict) -> None:
        msg = QualityDecision()
        msg.header.stamp = from_ns(verdict.capture_ns)
        msg.part_id = verdict.part_id
        msg.verdict = verdict.verdict
        msg.reasons = [verdict.reason]
        msg.defect_probability = verdict.defect_probability
        msg.model_version = verdict.model_version
        msg.decision_stamp = self.get_clock().now().to_msg()
        if self._verdict_pub is not None:
            self._verdict_pub.publish(msg)

    def _publish_alert(self, alert: LinkAlert) -> None:
        self._alerts.send(Severity[alert.severity], alert.code, alert.message)

    def _log(self, level: str, message: str) -> None:
        """Log sink of the link's threads. Warnings (rejected input, connection trouble) are throttled:
        their counts are in the diagnostics, and a flood of bad input must not flood the log."""
        # One call site per severity: rclpy refuses one source line logging at different severities.
        logger = self.get_logger()
        if level == "warn":
            logger.warning(message, throttle_duration_sec=1.0)
        elif level == "info":
            logger.info(message)
        elif level == "debug":
            logger.debug(message)
        else:
            logger.error(message)

    def _load_model_blocking(self, path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        return self._call_loader(self._load_client, "inference/load_model", path, version, sha256)

    def _load_shadow_blocking(self, path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        return self._call_loader(self._shadow_client, "inference/load_shadow", path, version, sha256)

    def _call_loader(self, client, name: str, path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        """Called from the updater's worker thread, never from a callback: waiting here blocks no callback."""
        deadline = time.monotonic() + self._load_timeout_s
        while not client.service_is_ready():
            if time.monotonic() > deadline:
                return False, f"{name} is not available", ""
            time.sleep(0.1)
        future = client.call_async(LoadModel.Request(path=path, version=version, sha256=sha256))
        while not future.done():
            if time.monotonic() > deadline:
                future.cancel()
                return False, f"no answer from {name} within {self._load_timeout_s} s", ""
            time.sleep(0.05)
        response = future.result()
        if response is None:
            return False, f"{name} call failed", ""
        return response.success, response.message, response.active_version

    def _publish_diagnostics(self) -> None:
        self._frames.keep_attached()  # a slow line keeps its frame-pool registration fresh
        health = self._link.health()
        name, cell = f"{self.get_name()}: mqtt", self._link.cell.path
        values = dict(health.values)
        if self._frames.by_handle or self._frames.inline:
            values.update(frames_by_handle=self._frames.by_handle, frames_inline=self._frames.inline)
            values["frames_gone_when_read"] = self._frames.gone  # overwritten before their sample/offload was sent
        status = diagnostics.status(name, int(health.level), health.message, values, hardware_id=cell)
        diagnostics.publish(self, self._diag_pub, [status])

    def destroy_node(self) -> None:
        self._link.stop("shutdown")  # retained offline status, then a clean disconnect
        self._frames.close()
        super().destroy_node()


def main() -> int:
    return run(CloudBridgeNode)


if __name__ == "__main__":
    raise SystemExit(main())
