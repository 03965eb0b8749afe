"""cloud_bridge node: the cell's link to the cloud over MQTT (topics and schemas: docs/mqtt.md).

Outbound: per-part summaries (quality/decision), KPIs, alerts, reject events, process state and model
status become JSON records that go through the durable outbox (qc_cell.bridge.outbox) before they are
published; optional JPEG samples and re-inspection requests. Inbound: signed model updates, handed to
inference/load_model after verification (qc_cell.bridge.model_updater), and cloud re-inspection verdicts.

All MQTT and file I/O runs in the bridge's own threads; ROS callbacks only convert and store records.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path
from typing import Any

import cv2
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from qc_cell.bridge.bridge import Bridge, BridgeSettings
from qc_cell.bridge.model_updater import ModelUpdater, UpdateOutcome, UpdateSettings
from qc_cell.bridge.offload import OffloadTracker
from qc_cell.bridge.outbox import FULL_POLICIES, SYNCHRONOUS, OutboxLimits
from qc_cell.bridge.sampler import ByteBudget, encode_jpeg
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.images import image_to_array, to_bgr8
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare
from qc_cell.ros.time import from_ns, to_ns
from qc_contract import records
from qc_contract.broker import BridgeConfigError, broker_config
from qc_contract.inbound import InboundError, parse
from qc_contract.topics import CellId
from qc_contract.update_manifest import KeyFileError, trusted_keys
from qc_contract.vocabulary import VERDICT_NAMES, Verdict, name_of
from qc_interfaces.msg import Alert, CellKpi, ModelInfo, PartFrame, ProcessState, QualityDecision, RejectEvent
from qc_interfaces.srv import LoadModel

MB = 1024 * 1024
IMAGE_VERDICTS = ("REINSPECT", "DEFECTIVE")
REJECTION_REPORTS_PER_WINDOW, REJECTION_REPORT_WINDOW_S = 10, 60.0
RUNTIME_PARAMETERS = (
    "process_period_s",
    "sample_bytes_per_hour",
    "sample_min_interval_s",
    "offload_slack_ms",
    "offload_min_remaining_ms",
)


class CloudBridgeNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("cloud_bridge", **kwargs)
        self._started_ns = self.get_clock().now().nanoseconds
        p = self._declare_parameters()
        try:
            self._cell = CellId(p["site"], p["line"], p["cell"])
            broker = broker_config(
                p["broker_url"],
                p["client_id"] or f"qc-{self._cell.site}-{self._cell.line}-{self._cell.cell}",
                ca_file=p["tls_ca_file"],
                cert_file=p["tls_cert_file"],
                key_file=p["tls_key_file"],
                username=p["username"],
                password_file=p["password_file"],
                password_env=p["password_env"],
                keepalive_s=p["keepalive_s"],
                reconnect_min_s=p["reconnect_min_s"],
                reconnect_max_s=p["reconnect_max_s"],
            )
            key_files = [k.strip() for k in p["update_public_keys"].split(",") if k.strip()]
            if p["updates_enabled"] and not key_files:
                raise BridgeConfigError("updates_enabled needs at least one file in update_public_keys")
            keys = trusted_keys(key_files) if p["updates_enabled"] else {}
            unknown = set(p["sample_verdicts"]) - set(IMAGE_VERDICTS)
            if unknown:
                raise BridgeConfigError(f"sample_verdicts {sorted(unknown)}: only {IMAGE_VERDICTS} can be sampled")
            limits = OutboxLimits(
                max_records=p["outbox_max_records"],
                max_bytes=p["outbox_max_mb"] * MB,
                policy=p["outbox_full_policy"],
                stream_max_bytes={"sample": p["sample_outbox_max_mb"] * MB, "verify_request": 16 * MB},
            )
        except (BridgeConfigError, KeyFileError, ValueError) as exc:
            raise ParameterError(str(exc)) from exc
        self._p = p
        # model/update always: with updates disabled a manifest is answered with a clear rejection.
        subscriptions = [self._cell.model_update]
        if p["updates_enabled"]:
            subscriptions.append(self._cell.model_chunks)
        if p["offload_enabled"]:
            subscriptions.append(self._cell.verify_response)
        settings = BridgeSettings(
            cell=self._cell,
            broker=broker,
            outbox_path=str(Path(p["outbox_path"]).expanduser()),
            limits=limits,
            synchronous=p["outbox_synchronous"],
            inflight_window=p["inflight_window"],
            max_packet_bytes=p["max_inbound_packet_bytes"],
            subscriptions=tuple(subscriptions),
        )
        try:
            self._bridge = Bridge(settings, on_message=self._on_mqtt_message, log=self._log)
        except Exception as exc:  # unusable outbox file: fail fast, clearly
            raise ParameterError(f"outbox_path {settings.outbox_path}: {exc}") from exc
        self._inbound_counts: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._last_process: tuple[int, bool, bool] | None = None
        self._last_process_ns = 0
        self._last_model: tuple | None = None
        self._last_loss_alert = 0.0
        self._reported_refusals = 0
        self._frames: OrderedDict[str, PartFrame] = OrderedDict()
        self._stopped = False
        self._rejection_reports: deque[float] = deque()

        self._updater: ModelUpdater | None = None
        if p["updates_enabled"]:
            try:
                self._updater = ModelUpdater(
                    UpdateSettings(
                        update_dir=Path(p["update_dir"]).expanduser(),
                        keys=keys,
                        cell_path=self._cell.path,
                        allow_downgrade=p["allow_downgrade"],
                        max_manifest_bytes=p["max_manifest_bytes"],
                        max_artifact_bytes=p["max_artifact_mb"] * MB,
                        fetch_timeout_s=p["fetch_timeout_s"],
                        chunk_timeout_s=p["chunk_timeout_s"],
                        keep_versions=p["update_keep_versions"],
                        https_ca_file=p["https_ca_file"],
                    ),
                    load_model=self._load_model_blocking,
                    report=self._on_update_outcome,
                    log=self._log,
                )
            except (OSError, RuntimeError) as exc:
                self._bridge.outbox.close()
                raise ParameterError(f"update_dir {p['update_dir']}: {exc}") from exc
        self._budget = ByteBudget(p["sample_bytes_per_hour"], p["sample_min_interval_s"])
        self._offload = OffloadTracker(p["offload_slack_ms"], p["offload_min_remaining_ms"], p["offload_late_grace_s"])

        # Publishers. alerts / quality/cloud_verdict are EVENTS (reliable), like every per-part record.
        self._alert_pub = self.create_publisher(Alert, "alerts", qos.EVENTS)
        self._verdict_pub = None
        if p["offload_enabled"]:
            self._verdict_pub = self.create_publisher(QualityDecision, "quality/cloud_verdict", qos.EVENTS)
        self._diag_pub = diagnostics.create_publisher(self)
        self._load_client = self.create_client(LoadModel, "inference/load_model")
        # Subscriptions: the QoS each topic's publisher uses (qc_cell.ros.qos), so the pairs match.
        # With the publisher's history, so the first verdicts are not lost when the decision node's writer
        # matches this reader only after them, nor those decided while this bridge was down (see _on_decision).
        self.create_subscription(QualityDecision, "quality/decision", self._on_decision, qos.PART_RECORDS)
        self.create_subscription(CellKpi, "quality/kpi", self._on_kpi, qos.EVENTS)
        self.create_subscription(Alert, "alerts", self._on_alert, qos.EVENTS)
        self.create_subscription(RejectEvent, "reject/event", self._on_reject, qos.EVENTS)
        self.create_subscription(ProcessState, "process/state", self._on_process, qos.LATCHED)
        self.create_subscription(ModelInfo, "model/active", self._on_model, qos.LATCHED)
        if p["sample_enabled"] or p["offload_enabled"]:
            # Only then: every frame is an image, and the bridge must not cost the cell a copy of each.
            self.create_subscription(PartFrame, "camera/frames", self._on_frame, qos.PART_FRAMES)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
        self.create_timer(p["status_period_s"], self._bridge.session.publish_status)
        self.create_timer(0.2, self._housekeeping)

        self._bridge.start()
        if self._updater is not None:
            self._updater.start()
        self.get_logger().info(
            f"cloud bridge for {self._cell.path} -> {broker.url} (outbox {settings.outbox_path}, "
            f"{limits.policy} when full; updates {'on' if self._updater else 'off'}, "
            f"samples {'on' if p['sample_enabled'] else 'off'}, offload {'on' if p['offload_enabled'] else 'off'})"
        )

    # -- parameters ------------------------------------------------------------------------------------

    def _declare_parameters(self) -> dict[str, Any]:
        ro = {"read_only": True}
        d: dict[str, Any] = {}

        def param(name: str, default: Any, description: str, **kw: Any) -> None:
            d[name] = declare(self, name, default, description, **kw)

        param("broker_url", "mqtt://127.0.0.1:1883", "mqtt://host[:port] or mqtts://host[:port] (TLS)", **ro)
        param("tls_ca_file", "", "mqtts: CA certificate file ('' = system trust store)", **ro)
        param("tls_cert_file", "", "mqtts: client certificate for mutual TLS ('' = none)", **ro)
        param("tls_key_file", "", "mqtts: private key of tls_cert_file", **ro)
        param("username", "", "broker user name ('' = anonymous)", **ro)
        param("password_file", "", "file whose first line is the broker password (never logged)", **ro)
        param("password_env", "", "environment variable holding the broker password (never logged)", **ro)
        param("client_id", "", "MQTT client id ('' = qc-<site>-<line>-<cell>)", **ro)
        param("keepalive_s", 30, "MQTT keepalive (s)", range=(5, 3600), **ro)
        param("reconnect_min_s", 1, "first reconnect delay (s); doubles per failure", range=(1, 600), **ro)
        param("reconnect_max_s", 30, "longest reconnect delay (s)", range=(1, 3600), **ro)
        param("site", "site", "site name: topics are qc/<site>/<line>/<cell>/...", **ro)
        param("line", "line", "production line name", **ro)
        param("cell", "cell", "cell name", **ro)
        param("outbox_path", "~/.local/share/qc_cell/cloud_bridge/outbox.sqlite3", "durable outbox (SQLite, WAL)", **ro)
        param("outbox_max_records", 1_000_000, "outbox bound: records", range=(100, 100_000_000), **ro)
        param("outbox_max_mb", 512, "outbox bound: payload MiB", range=(1, 1_000_000), **ro)
        param("outbox_full_policy", "drop_oldest", "when the outbox is full", choices=FULL_POLICIES, **ro)
        param("outbox_synchronous", "FULL", "SQLite sync: FULL survives power loss", choices=SYNCHRONOUS, **ro)
        param("inflight_window", 20, "QoS 1 records awaiting PUBACK at once", range=(1, 1000), **ro)
        param("max_inbound_packet_bytes", MB + 64 * 1024, "largest inbound MQTT packet", range=(4096, 64 * MB), **ro)
        param("process_period_s", 10.0, "process/state forwarded on a flag change or this often", range=(0.0, 3600.0))
        param("status_period_s", 30.0, "retained online status refresh (s)", range=(1.0, 3600.0), **ro)
        param("diagnostics_period_s", 1.0, "/diagnostics period (s)", range=(0.1, 60.0), **ro)
        param("loss_alert_period_s", 10.0, "at most one OUTBOX_FULL alert per period (s)", range=(1.0, 3600.0), **ro)
        param("updates_enabled", False, "accept signed model updates on .../model/update", **ro)
        param("update_public_keys", "", "comma-separated Ed25519 public key PEM files trusted for updates", **ro)
        param(
            "update_dir",
            "~/.local/share/qc_cell/cloud_bridge/updates",
            "where verified update packages are extracted",
            **ro,
        )
        param("update_keep_versions", 3, "extracted packages kept", range=(1, 100), **ro)
        param("allow_downgrade", False, "accept a replayed or older model version (rollback)", **ro)
        param("max_manifest_bytes", 16 * 1024, "largest update manifest", range=(1024, MB), **ro)
        param("max_artifact_mb", 512, "largest update artifact (MiB)", range=(1, 100_000), **ro)
        param("fetch_timeout_s", 60.0, "artifact download timeout (s)", range=(1.0, 3600.0), **ro)
        param("chunk_timeout_s", 120.0, "time for all MQTT chunks of an artifact (s)", range=(1.0, 86400.0), **ro)
        param("load_timeout_s", 120.0, "inference/load_model answer timeout (s)", range=(1.0, 3600.0), **ro)
        param("https_ca_file", "", "CA file for https artifact URLs ('' = system trust store)", **ro)
        param("sample_enabled", False, "send JPEG samples of re-inspect/defective parts", **ro)
        param("sample_verdicts", list(IMAGE_VERDICTS), "verdicts whose images are sampled", **ro)
        param("sample_bytes_per_hour", 20_000_000, "sample byte budget per sliding hour", range=(0, 10**12))
        param("sample_min_interval_s", 10.0, "minimum time between two samples (s)", range=(0.0, 86400.0))
        param("sample_jpeg_quality", 85, "sample JPEG quality", range=(10, 100), **ro)
        param("sample_max_side", 0, "downscale samples to this longer side (0 = keep)", range=(0, 8192), **ro)
        param("sample_outbox_max_mb", 50, "outbox quota for samples (MiB)", range=(1, 100_000), **ro)
        param("offload_enabled", False, "send re-inspect parts to the cloud for a second opinion", **ro)
        param("offload_slack_ms", 800.0, "capture -> latest useful cloud verdict (conveyor slack)", range=(1.0, 1e6))
        param("offload_min_remaining_ms", 100.0, "skip offload when less slack remains", range=(0.0, 1e6))
        param("offload_late_grace_s", 30.0, "late answers are still measured this long (s)", range=(0.0, 3600.0), **ro)
        param("offload_jpeg_quality", 90, "offload JPEG quality", range=(10, 100), **ro)
        param("offload_max_side", 0, "downscale offloaded images to this longer side (0 = keep)", range=(0, 8192), **ro)
        param("max_verify_response_bytes", 4096, "largest verify response", range=(256, MB), **ro)
        param("frame_buffer", 16, "recent frames kept for samples/offload", range=(1, 1000), **ro)
        return d

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate and apply run-time changes (Humble has no post-set callback; ranges are checked by rclpy)."""
        changed = {p.name: p.value for p in params if p.name in RUNTIME_PARAMETERS}
        for name, value in changed.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return SetParametersResult(successful=False, reason=f"{name} must be a number")
        with self._lock:
            if "process_period_s" in changed:
                self._p["process_period_s"] = float(changed["process_period_s"])
            if "sample_bytes_per_hour" in changed:
                self._budget.bytes_per_hour = int(changed["sample_bytes_per_hour"])
            if "sample_min_interval_s" in changed:
                self._budget.min_interval_ns = int(changed["sample_min_interval_s"] * 1e9)
            if "offload_slack_ms" in changed:
                self._offload.slack_ns = int(changed["offload_slack_ms"] * 1e6)
            if "offload_min_remaining_ms" in changed:
                self._offload.min_remaining_ns = int(changed["offload_min_remaining_ms"] * 1e6)
        return SetParametersResult(successful=True)

    # -- outbound --------------------------------------------------------------------------------------

    def _on_decision(self, msg: QualityDecision) -> None:
        capture_ns, decision_ns = to_ns(msg.header.stamp), to_ns(msg.decision_stamp)
        result = self._bridge.send(
            "part",
            records.part(
                part_id=msg.part_id,
                verdict=msg.verdict,
                reasons=msg.reasons,
                defect_probability=msg.defect_probability,
                process_anomaly_score=msg.process_anomaly_score,
                process_flags=msg.process_flags,
                model_version=msg.model_version,
                encoder_count=msg.encoder_count,
                capture_ns=capture_ns,
                decision_ns=decision_ns,
                capture_to_decision_ms=msg.capture_to_decision_ms,
            ),
            # quality/decision keeps its last 1000 verdicts for late joiners: a restarted bridge gets them again. The
            # key stores each once, so those decided while no bridge ran are sent and the others are not resent.
            key=f"{msg.part_id}@{decision_ns}",
        )
        if result.reason == "duplicate":
            self._counts["parts_already_stored"] += 1
            return
        if 0 < decision_ns < self._started_ns:
            self._counts["parts_recovered"] += 1  # decided while no bridge ran: its frame and deadline are gone
            return
        verdict = name_of(VERDICT_NAMES, msg.verdict)
        frame = self._frames.pop(msg.part_id, None)
        if self._p["offload_enabled"] and msg.verdict == QualityDecision.REINSPECT:
            self._offload_part(msg, frame, capture_ns)
        if self._p["sample_enabled"] and verdict in self._p["sample_verdicts"]:
            self._sample_part(msg, frame, capture_ns)

    def _on_frame(self, msg: PartFrame) -> None:
        if msg.capture_ok:
            self._frames[msg.part_id] = msg
            while len(self._frames) > self._p["frame_buffer"]:
                self._frames.popitem(last=False)

    def _jpeg(self, frame: PartFrame | None, quality: int, max_side: int) -> tuple[str, int, int] | None:
        if frame is None:
            self._counts["image_missing"] += 1
            return None
        try:
            return encode_jpeg(to_bgr8(image_to_array(frame.image), frame.image.encoding), quality, max_side)
        except (ValueError, cv2.error) as exc:
            self._counts["image_errors"] += 1
            self.get_logger().warning(f"cannot encode the image of {frame.part_id}: {exc}", throttle_duration_sec=10.0)
            return None

    def _image_body(self, msg: QualityDecision, capture_ns: int, jpeg: tuple[str, int, int], **extra: Any) -> dict:
        data, width, height = jpeg
        return records.image_record(
            part_id=msg.part_id,
            verdict=msg.verdict,
            defect_probability=msg.defect_probability,
            reasons=msg.reasons,
            model_version=msg.model_version,
            capture_ns=capture_ns,
            width=width,
            height=height,
            jpeg_b64=data,
            **extra,
        )

    def _sample_part(self, msg: QualityDecision, frame: PartFrame | None, capture_ns: int) -> None:
        now = time.time_ns()
        if not self._budget.allows(0, now):  # check before spending CPU on the JPEG
            self._counts["samples_over_budget"] += 1
            return
        jpeg = self._jpeg(frame, self._p["sample_jpeg_quality"], self._p["sample_max_side"])
        if jpeg is None:
            return
        body = self._image_body(msg, capture_ns, jpeg)
        size = len(records.encode(body)) + 120  # + envelope
        if not self._budget.allows(size, now):
            self._counts["samples_over_budget"] += 1
            return
        result = self._bridge.send("sample", body)
        if result.accepted:
            self._budget.spend(len(result.entry.payload), now)
            self._counts["samples_sent"] += 1

    def _offload_part(self, msg: QualityDecision, frame: PartFrame | None, capture_ns: int) -> None:
        now = self.get_clock().now().nanoseconds
        jpeg = None
        if self._offload.worth_sending(capture_ns, now):
            jpeg = self._jpeg(frame, self._p["offload_jpeg_quality"], self._p["offload_max_side"])
        result = None
        if jpeg is not None:
            deadline = self._offload.deadline(capture_ns)
            body = self._image_body(msg, capture_ns, jpeg, deadline_ns=deadline)
            result = self._bridge.send("verify_request", body, expires_ns=deadline)
        if result is not None and result.accepted:
            request_id = records.record_id(self._bridge.outbox.epoch, "verify_request", result.entry.seq)
            self._offload.sent(msg.part_id, request_id, msg.verdict, capture_ns, time.monotonic_ns())
            return
        self._bridge.send(
            "verify",
            records.verify_result(
                part_id=msg.part_id,
                request_id="",
                local_verdict=msg.verdict,
                cloud_verdict=None,
                outcome="not_sent",
                rtt_ms=None,
            ),
        )

    def _on_kpi(self, msg: CellKpi) -> None:
        self._bridge.send(
            "kpi",
            records.kpi(
                stamp_ns=to_ns(msg.header.stamp),
                window_s=msg.window_s,
                parts=msg.parts,
                counts={
                    "NORMAL": msg.normal,
                    "REINSPECT": msg.reinspect,
                    "DEFECTIVE": msg.defective,
                    "NOT_INSPECTED": msg.not_inspected,
                },
                yield_ratio=msg.yield_ratio,
                throughput_pps=msg.throughput_pps,
                latency_ms={"p50": msg.latency_p50_ms, "p95": msg.latency_p95_ms, "p99": msg.latency_p99_ms},
                reasons=dict(zip(msg.reason_names, msg.reason_counts, strict=False)),
                total_parts=msg.total_parts,
            ),
        )

    def _on_alert(self, msg: Alert) -> None:
        self._bridge.send(
            "alert",
            records.alert(
                stamp_ns=to_ns(msg.header.stamp),
                severity=msg.severity,
                source=msg.source,
                code=msg.code,
                message=msg.message[:4096],
                part_id=msg.part_id,
            ),
        )

    def _on_reject(self, msg: RejectEvent) -> None:
        self._bridge.send(
            "reject",
            records.reject(
                part_id=msg.part_id,
                verdict=msg.verdict,
                outcome=msg.outcome,
                method=msg.method,
                lane=msg.lane,
                capture_ns=to_ns(msg.header.stamp),
                planned_ns=to_ns(msg.planned_time),
                actual_ns=to_ns(msg.actual_time),
                lateness_ms=msg.lateness_ms,
                message=msg.message[:4096],
            ),
        )

    def _on_process(self, msg: ProcessState) -> None:
        key = (msg.flags, msg.out_of_spec, msg.stale)
        now = time.monotonic_ns()
        if key == self._last_process and now - self._last_process_ns < self._p["process_period_s"] * 1e9:
            return
        self._last_process, self._last_process_ns = key, now
        self._bridge.send(
            "process",
            records.process(
                stamp_ns=to_ns(msg.header.stamp),
                temperature_c=msg.temperature_c,
                pressure_pa=msg.pressure_pa,
                vibration_rms=msg.vibration_rms,
                anomaly_score=msg.anomaly_score,
                flags=msg.flags,
                out_of_spec=msg.out_of_spec,
                stale=msg.stale,
            ),
        )

    def _on_model(self, msg: ModelInfo) -> None:
        if msg.state == ModelInfo.STATE_ACTIVE and self._updater is not None:
            self._updater.active_version = msg.version
        key = (msg.version, msg.sha256, msg.state, msg.message)
        if key == self._last_model:
            return
        self._last_model = key
        self._bridge.send(
            "model_status",
            records.model_state(
                stamp_ns=to_ns(msg.header.stamp),
                version=msg.version,
                sha256=msg.sha256,
                backend=msg.backend,
                precision=msg.precision,
                state=msg.state,
                message=msg.message[:4096],
            ),
            retain=True,
        )

    # -- inbound (MQTT thread: keep it short) ----------------------------------------------------------

    def _on_mqtt_message(self, topic: str, payload: bytes) -> None:
        cell = self._cell
        if topic == cell.verify_response:
            self._on_verify_response(payload)
        elif topic == cell.model_update:
            if self._updater is not None:
                self._updater.submit_manifest(payload)
            else:
                self._reject_inbound("model/update", "updates_disabled", "updates_enabled is false on this cell")
                self._on_update_outcome(
                    UpdateOutcome(False, "", "updates_disabled", "updates_enabled is false on this cell", "")
                )
        elif self._updater is not None and (chunk := cell.parse_chunk_topic(topic)) is not None:
            self._updater.submit_chunk(chunk[0], chunk[1], payload)
        else:
            self._reject_inbound(topic, "unexpected_topic", "no handler")

    def _reject_inbound(self, where: str, reason: str, detail: str) -> None:
        self._inbound_counts[reason] += 1
        self.get_logger().warning(f"inbound {where} rejected: {reason}: {detail}", throttle_duration_sec=5.0)

    def _on_verify_response(self, payload: bytes) -> None:
        try:
            data = parse(payload, "verify_response", self._p["max_verify_response_bytes"])
        except InboundError as rejected:
            self._reject_inbound("verify/response", rejected.reason, rejected.detail)
            return
        out = self._offload.response(
            data["request_id"], data["part_id"], self.get_clock().now().nanoseconds, time.monotonic_ns()
        )
        if out.pending is None:
            self._reject_inbound("verify/response", "unknown_request", f"request {data['request_id']!r} not pending")
            return
        if out.outcome == "used" and self._verdict_pub is not None:
            msg = QualityDecision()
            msg.header.stamp = from_ns(out.pending.capture_ns)
            msg.part_id = out.pending.part_id
            msg.verdict = int(Verdict[data["verdict"]])
            msg.reasons = ["cloud_verify"]
            probability = data.get("defect_probability")
            msg.defect_probability = float("nan") if probability is None else float(probability)
            msg.model_version = str(data.get("model_version", ""))
            msg.decision_stamp = self.get_clock().now().to_msg()
            self._verdict_pub.publish(msg)
        self._bridge.send(
            "verify",
            records.verify_result(
                part_id=out.pending.part_id,
                request_id=out.pending.request_id,
                local_verdict=out.pending.local_verdict,
                cloud_verdict=data["verdict"],
                outcome=out.outcome,
                rtt_ms=out.rtt_ms,
            ),
        )

    # -- model updates (updater thread) ----------------------------------------------------------------

    def _load_model_blocking(self, path: str, version: str, sha256: str) -> tuple[bool, str, str]:
        """Called from the updater's worker thread, never from a callback: waiting here blocks no callback."""
        deadline = time.monotonic() + self._p["load_timeout_s"]
        while not self._load_client.service_is_ready():
            if time.monotonic() > deadline:
                return False, "inference/load_model is not available", ""
            time.sleep(0.1)
        future = self._load_client.call_async(LoadModel.Request(path=path, version=version, sha256=sha256))
        while not future.done():
            if time.monotonic() > deadline:
                future.cancel()
                return False, f"no answer from inference/load_model within {self._p['load_timeout_s']} s", ""
            time.sleep(0.05)
        response = future.result()
        if response is None:
            return False, "inference/load_model call failed", ""
        return response.success, response.message, response.active_version

    def _on_update_outcome(self, outcome: UpdateOutcome) -> None:
        if not outcome.accepted:
            # A flood of bad manifests must not become a flood of records and alerts: counted either way.
            now = time.monotonic()
            with self._lock:
                while self._rejection_reports and now - self._rejection_reports[0] > REJECTION_REPORT_WINDOW_S:
                    self._rejection_reports.popleft()
                if len(self._rejection_reports) >= REJECTION_REPORTS_PER_WINDOW:
                    self._counts["rejection_reports_suppressed"] += 1
                    return
                self._rejection_reports.append(now)
        self._bridge.send(
            "model_status",
            records.update_outcome(
                stamp_ns=time.time_ns(),
                accepted=outcome.accepted,
                version=outcome.version,
                reason=outcome.reason,
                detail=outcome.detail[:4096],
                active_version=outcome.active_version,
            ),
            retain=True,
        )
        if outcome.accepted:
            self._alert(Alert.INFO, "MODEL_UPDATE_ACCEPTED", f"model {outcome.version} is active")
        else:
            text = f"model update {outcome.version or '(unreadable)'} rejected: {outcome.reason}: {outcome.detail}"
            self._alert(Alert.WARN, "MODEL_UPDATE_REJECTED", text[:4096])

    # -- health ----------------------------------------------------------------------------------------

    def _alert(self, severity: int, code: str, message: str) -> None:
        msg = Alert(severity=severity, source=self.get_name(), code=code, message=message)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._alert_pub.publish(msg)

    def _log(self, level: str, message: str) -> None:
        """Log sink of the bridge core's threads. Warnings (rejected input, connection trouble) are throttled:
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

    def _housekeeping(self) -> None:
        for pending in self._offload.expire(self.get_clock().now().nanoseconds):
            self._bridge.send(
                "verify",
                records.verify_result(
                    part_id=pending.part_id,
                    request_id=pending.request_id,
                    local_verdict=pending.local_verdict,
                    cloud_verdict=None,
                    outcome="no_response",
                    rtt_ms=None,
                ),
            )
        now = time.monotonic()
        if now - self._last_loss_alert < self._p["loss_alert_period_s"]:
            return
        lost = self._bridge.losses.take()
        if lost:
            self._last_loss_alert = now
            policy = self._bridge.settings.limits.policy
            text = f"outbox could not keep every record (policy {policy}): {lost}"
            self.get_logger().error(text)
            self._alert(Alert.ERROR, "OUTBOX_FULL" if "store_failed" not in lost else "OUTBOX_ERROR", text[:4096])
        refused = self._bridge.forwarder.counts["refused"]
        if refused > self._reported_refusals:
            self._last_loss_alert = now
            text = (
                f"broker refused {refused - self._reported_refusals} publish(es): "
                f"{self._bridge.forwarder.last_refusal}; records kept and retried"
            )
            self._reported_refusals = refused
            self._alert(Alert.ERROR, "BROKER_REFUSED", text)

    def health(self) -> dict[str, Any]:
        values: dict[str, Any] = dict(self._bridge.health())
        values.update({f"inbound_rejected_{k}": v for k, v in sorted(self._inbound_counts.items())})
        values.update(dict(sorted(self._counts.items())))
        if self._updater is not None:
            values["model_installed"] = self._updater.installed_version
            values["model_active"] = self._updater.active_version
            values.update({f"update_{k}": v for k, v in sorted(self._updater.counts.items())})
        if self._p["offload_enabled"]:
            values.update({f"offload_{k}": v for k, v in sorted(self._offload.counts.items())})
            values.update(self._offload.rtt_stats())
        if self._p["sample_enabled"]:
            values["sample_bytes_last_hour"] = self._budget.used(time.time_ns())
        return values

    def _publish_diagnostics(self) -> None:
        values = self.health()
        limits = self._bridge.settings.limits
        fill = max(values["outbox_depth"] / limits.max_records, values["outbox_bytes"] / limits.max_bytes)
        if values["lost_total"] or values["refused"] or fill > 0.9:
            level = diagnostics.ERROR
            message = (
                f"{values['lost_total']} records lost, {values['refused']} refused, outbox {fill:.0%} full "
                f"({limits.policy})"
            )
        elif not values["connected"]:
            level = diagnostics.WARN
            message = f"not connected ({values['last_error'] or 'connecting'}); {values['outbox_depth']} stored"
        else:
            level, message = diagnostics.OK, f"connected; {values['outbox_depth']} records pending"
        diagnostics.publish(
            self,
            self._diag_pub,
            [diagnostics.status(f"{self.get_name()}: mqtt", level, message, values, hardware_id=self._cell.path)],
        )

    def destroy_node(self) -> None:
        if not self._stopped:
            self._stopped = True
            if self._updater is not None:
                self._updater.stop()
            self._bridge.stop("shutdown")  # retained offline status, then a clean disconnect
        super().destroy_node()


def main() -> int:
    return run(CloudBridgeNode)


if __name__ == "__main__":
    raise SystemExit(main())
