"""The cloud link's policy, without ROS: what the cell tells the cloud, and what it does with the cloud's answers.

CloudLink is the facade the cloud_bridge node wraps (settings in: qc_cell.bridge.settings; plain inputs in:
qc_cell.bridge.inputs; plain outputs out: LinkAlert, CloudVerdict, Health). It decides

- which verdicts are records: each part summary is stored once (a key per part and decision time), so a restarted
  bridge sends the verdicts decided while none ran (`parts_recovered`) and skips those its predecessor stored
  (`parts_already_stored`); a recovered verdict gets no image and no offload (its frame and deadline are gone);
- which images leave the cell: samples within the byte budget (sampler.ByteBudget), re-inspection requests while
  enough slack is left (offload.OffloadTracker), and what became of each request (`verify` records);
- which cloud verdicts count (verify responses before the part's deadline), emitted as a CloudVerdict;
- how loud it is: process state on a flag change or every process_period_s, model state on a change, at most
  REJECTION_REPORTS_PER_WINDOW update rejections reported per window (the rest counted), at most one outbox loss
  alert per loss_alert_period_s, one alert per new broker refusal;
- its health: the figures for /diagnostics and their level.

The transport (outbox, MQTT session, forwarder) is qc_cell.bridge.bridge.Bridge. Callbacks of this class run on
the caller's thread (ROS callbacks), the MQTT thread (inbound) and the updater's worker (update outcomes): the
`alert` and `cloud_verdict` sinks must be callable from any thread.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import cv2

from qc_cell.bridge import records
from qc_cell.bridge.bridge import Bridge
from qc_cell.bridge.inbound import InboundError, parse
from qc_cell.bridge.inputs import (
    AlertReport,
    KpiReport,
    ModelReport,
    PartImage,
    PartVerdict,
    ProcessReport,
    RejectReport,
)
from qc_cell.bridge.model_updater import LoadModel, ModelUpdater, UpdateOutcome
from qc_cell.bridge.offload import OffloadTracker
from qc_cell.bridge.sampler import ByteBudget, encode_jpeg
from qc_cell.bridge.session import Log, python_log
from qc_cell.bridge.settings import RUNTIME_SETTINGS, CloudLinkSettings

REJECTION_REPORTS_PER_WINDOW, REJECTION_REPORT_WINDOW_S = 10, 60.0
MAX_TEXT = 4096  # longest free text (messages, details) in a record or alert
REINSPECT = records.VERDICTS.index("REINSPECT")
ACTIVE = records.MODEL_STATES.index("ACTIVE")


class CloudLinkError(RuntimeError):
    """The link cannot start (unusable outbox or update directory); the message names the path."""


class HealthLevel(IntEnum):  # the values of diagnostic_msgs/DiagnosticStatus levels
    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class LinkAlert:
    severity: str  # a name of records.SEVERITIES
    code: str
    message: str


@dataclass(frozen=True)
class CloudVerdict:
    """The cloud's re-inspection verdict, in time to be used for the part."""

    part_id: str
    capture_ns: int
    verdict: int  # value, as records.VERDICTS orders them
    defect_probability: float  # NaN when the cloud gave none
    model_version: str
    reason: str = "cloud_verify"


@dataclass(frozen=True)
class Health:
    level: HealthLevel
    message: str
    values: dict[str, Any]


@dataclass(frozen=True)
class Clock:
    """wall_ns: the time parts are stamped in (deadlines, recovered verdicts); monotonic_ns: rates and round trips."""

    wall_ns: Callable[[], int] = time.time_ns
    monotonic_ns: Callable[[], int] = time.monotonic_ns


class CloudLink:
    def __init__(
        self,
        settings: CloudLinkSettings,
        *,
        alert: Callable[[LinkAlert], None],
        cloud_verdict: Callable[[CloudVerdict], None] | None = None,
        load_model: LoadModel | None = None,
        log: Log = python_log,
        clock: Clock | None = None,
    ) -> None:
        if settings.updates is not None and load_model is None:
            raise ValueError("updates are enabled: a load_model function is needed")
        self.settings = settings
        self.cell = settings.cell
        self._emit_alert = alert
        self._emit_verdict = cloud_verdict or (lambda _verdict: None)
        self._log = log
        self._clock = clock = clock or Clock()
        self._started_ns = clock.wall_ns()
        transport = settings.bridge_settings()
        try:
            self.bridge = Bridge(transport, on_message=self.on_message, log=log)
        except Exception as exc:  # unusable outbox file: fail fast, clearly
            raise CloudLinkError(f"outbox_path {transport.outbox_path}: {exc}") from exc
        self.updater: ModelUpdater | None = None
        if settings.updates is not None:
            try:
                self.updater = ModelUpdater(settings.updates, load_model, report=self._report_update, log=log)
            except (OSError, RuntimeError) as exc:
                self.bridge.outbox.close()
                raise CloudLinkError(f"update_dir {settings.updates.update_dir}: {exc}") from exc
        self.counts: Counter[str] = Counter()
        self.inbound_rejected: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._process_period_ns = int(settings.process_period_s * 1e9)
        self._last_process: tuple[int, bool, bool] | None = None
        self._last_process_ns = 0
        self._last_model: tuple | None = None
        self._last_loss_alert_ns: int | None = None
        self._reported_refusals = 0
        self._rejection_reports: deque[int] = deque()
        self._frames: OrderedDict[str, PartImage] = OrderedDict()
        self._started = self._stopped = False
        sample, offload = settings.sample, settings.offload
        self.budget = ByteBudget(sample.bytes_per_hour, sample.min_interval_s)
        self.offload = OffloadTracker(offload.slack_ms, offload.min_remaining_ms, offload.late_grace_s)

    # -- life ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self.bridge.start()
        if self.updater is not None:
            self.updater.start()

    def stop(self, reason: str = "shutdown") -> None:
        """Stop the updater, publish the retained offline status, disconnect cleanly; only close the outbox when
        the link never started. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            self.bridge.outbox.close()
            return
        if self.updater is not None:
            self.updater.stop()
        self.bridge.stop(reason)

    def publish_status(self) -> None:
        """Refresh the retained online status (a period of the caller's choosing)."""
        self.bridge.session.publish_status()

    def retune(self, changes: Mapping[str, float]) -> None:
        """Apply run-time changes of RUNTIME_SETTINGS (numbers, already range-checked by the caller)."""
        unknown = set(changes) - set(RUNTIME_SETTINGS)
        if unknown:
            raise ValueError(f"{sorted(unknown)} cannot change at run time (only {RUNTIME_SETTINGS})")
        with self._lock:
            if "process_period_s" in changes:
                self._process_period_ns = int(changes["process_period_s"] * 1e9)
            if "sample_bytes_per_hour" in changes:
                self.budget.bytes_per_hour = int(changes["sample_bytes_per_hour"])
            if "sample_min_interval_s" in changes:
                self.budget.min_interval_ns = int(changes["sample_min_interval_s"] * 1e9)
            if "offload_slack_ms" in changes:
                self.offload.slack_ns = int(changes["offload_slack_ms"] * 1e6)
            if "offload_min_remaining_ms" in changes:
                self.offload.min_remaining_ns = int(changes["offload_min_remaining_ms"] * 1e6)

    # -- outbound --------------------------------------------------------------------------------------

    def on_part(self, part: PartVerdict) -> None:
        result = self.bridge.send(
            "part",
            records.part(
                part_id=part.part_id,
                verdict=part.verdict,
                reasons=part.reasons,
                defect_probability=part.defect_probability,
                process_anomaly_score=part.process_anomaly_score,
                process_flags=part.process_flags,
                model_version=part.model_version,
                encoder_count=part.encoder_count,
                capture_ns=part.capture_ns,
                decision_ns=part.decision_ns,
                capture_to_decision_ms=part.capture_to_decision_ms,
            ),
            # The decision node keeps its last verdicts for late joiners: a restarted bridge gets them again. The
            # key stores each once, so those decided while no bridge ran are sent and the others are not resent.
            key=f"{part.part_id}@{part.decision_ns}",
        )
        if result.reason == "duplicate":
            self.counts["parts_already_stored"] += 1
            return
        if 0 < part.decision_ns < self._started_ns:
            self.counts["parts_recovered"] += 1  # decided while no bridge ran: its frame and deadline are gone
            return
        frame = self._frames.pop(part.part_id, None)
        if self.settings.offload.enabled and part.verdict == REINSPECT:
            self._offload_part(part, frame)
        sample = self.settings.sample
        if sample.enabled and records.name_of(records.VERDICTS, part.verdict) in sample.verdicts:
            self._sample_part(part, frame)

    def on_frame(self, frame: PartImage) -> None:
        if frame.captured:
            self._frames[frame.part_id] = frame
            while len(self._frames) > self.settings.frame_buffer:
                self._frames.popitem(last=False)

    def on_kpi(self, kpi: KpiReport) -> None:
        self.bridge.send(
            "kpi",
            records.kpi(
                stamp_ns=kpi.stamp_ns,
                window_s=kpi.window_s,
                parts=kpi.parts,
                counts=kpi.counts,
                yield_ratio=kpi.yield_ratio,
                throughput_pps=kpi.throughput_pps,
                latency_ms=kpi.latency_ms,
                reasons=kpi.reasons,
                total_parts=kpi.total_parts,
            ),
        )

    def on_alert(self, alert: AlertReport) -> None:
        self.bridge.send(
            "alert",
            records.alert(
                stamp_ns=alert.stamp_ns,
                severity=alert.severity,
                source=alert.source,
                code=alert.code,
                message=alert.message[:MAX_TEXT],
                part_id=alert.part_id,
            ),
        )

    def on_reject(self, event: RejectReport) -> None:
        self.bridge.send(
            "reject",
            records.reject(
                part_id=event.part_id,
                verdict=event.verdict,
                outcome=event.outcome,
                method=event.method,
                lane=event.lane,
                capture_ns=event.capture_ns,
                planned_ns=event.planned_ns,
                actual_ns=event.actual_ns,
                lateness_ms=event.lateness_ms,
                message=event.message[:MAX_TEXT],
            ),
        )

    def on_process(self, state: ProcessReport) -> None:
        """Forwarded on a change of flags, out_of_spec or stale, else at most once per process_period_s."""
        key = (state.flags, state.out_of_spec, state.stale)
        now = self._clock.monotonic_ns()
        if key == self._last_process and now - self._last_process_ns < self._process_period_ns:
            return
        self._last_process, self._last_process_ns = key, now
        self.bridge.send(
            "process",
            records.process(
                stamp_ns=state.stamp_ns,
                temperature_c=state.temperature_c,
                pressure_pa=state.pressure_pa,
                vibration_rms=state.vibration_rms,
                anomaly_score=state.anomaly_score,
                flags=state.flags,
                out_of_spec=state.out_of_spec,
                stale=state.stale,
            ),
        )

    def on_model(self, model: ModelReport) -> None:
        """The active model orders update versions; each change of the model state is one retained record."""
        if model.state == ACTIVE and self.updater is not None:
            self.updater.active_version = model.version
        key = (model.version, model.sha256, model.state, model.message)
        if key == self._last_model:
            return
        self._last_model = key
        self.bridge.send(
            "model_status",
            records.model_state(
                stamp_ns=model.stamp_ns,
                version=model.version,
                sha256=model.sha256,
                backend=model.backend,
                precision=model.precision,
                state=model.state,
                message=model.message[:MAX_TEXT],
            ),
            retain=True,
        )

    # -- part images -----------------------------------------------------------------------------------

    def _jpeg(self, frame: PartImage | None, quality: int, max_side: int) -> tuple[str, int, int] | None:
        if frame is None:
            self.counts["image_missing"] += 1
            return None
        try:
            return encode_jpeg(frame.decode(), quality, max_side)
        except (ValueError, cv2.error) as exc:
            self.counts["image_errors"] += 1
            self._log("warn", f"cannot encode the image of {frame.part_id}: {exc}")
            return None

    @staticmethod
    def _image_body(part: PartVerdict, jpeg: tuple[str, int, int], **extra: Any) -> dict[str, Any]:
        data, width, height = jpeg
        return records.image_record(
            part_id=part.part_id,
            verdict=part.verdict,
            defect_probability=part.defect_probability,
            reasons=part.reasons,
            model_version=part.model_version,
            capture_ns=part.capture_ns,
            width=width,
            height=height,
            jpeg_b64=data,
            **extra,
        )

    def _sample_part(self, part: PartVerdict, frame: PartImage | None) -> None:
        now = self._clock.monotonic_ns()
        if not self.budget.allows(0, now):  # check before spending CPU on the JPEG
            self.counts["samples_over_budget"] += 1
            return
        sample = self.settings.sample
        jpeg = self._jpeg(frame, sample.jpeg_quality, sample.max_side)
        if jpeg is None:
            return
        body = self._image_body(part, jpeg)
        size = len(records.encode(body)) + 120  # + envelope
        if not self.budget.allows(size, now):
            self.counts["samples_over_budget"] += 1
            return
        result = self.bridge.send("sample", body)
        if result.accepted:
            self.budget.spend(len(result.entry.payload), now)
            self.counts["samples_sent"] += 1

    def _offload_part(self, part: PartVerdict, frame: PartImage | None) -> None:
        """A verify request while enough slack is left (it expires unsent at the deadline), else `not_sent`."""
        jpeg = None
        if self.offload.worth_sending(part.capture_ns, self._clock.wall_ns()):
            jpeg = self._jpeg(frame, self.settings.offload.jpeg_quality, self.settings.offload.max_side)
        result = None
        if jpeg is not None:
            deadline = self.offload.deadline(part.capture_ns)
            body = self._image_body(part, jpeg, deadline_ns=deadline)
            result = self.bridge.send("verify_request", body, expires_ns=deadline)
        if result is not None and result.accepted:
            request_id = records.record_id(self.bridge.outbox.epoch, "verify_request", result.entry.seq)
            self.offload.sent(part.part_id, request_id, part.verdict, part.capture_ns, self._clock.monotonic_ns())
            return
        self._verify_result(part.part_id, "", part.verdict, None, "not_sent", None)

    def _verify_result(
        self, part_id: str, request_id: str, local: int, cloud: str | None, outcome: str, rtt_ms: float | None
    ) -> None:
        record = records.verify_result(
            part_id=part_id,
            request_id=request_id,
            local_verdict=local,
            cloud_verdict=cloud,
            outcome=outcome,
            rtt_ms=rtt_ms,
        )
        self.bridge.send("verify", record)

    # -- inbound (MQTT thread: keep it short) ----------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """Everything the cloud sends this cell."""
        cell = self.cell
        if topic == cell.verify_response:
            self._on_verify_response(payload)
        elif topic == cell.model_update:
            if self.updater is not None:
                self.updater.submit_manifest(payload)
            else:
                self._reject_inbound("model/update", "updates_disabled", "updates_enabled is false on this cell")
                self._report_update(
                    UpdateOutcome(False, "", "updates_disabled", "updates_enabled is false on this cell", "")
                )
        elif self.updater is not None and (chunk := cell.parse_chunk_topic(topic)) is not None:
            self.updater.submit_chunk(chunk[0], chunk[1], payload)
        else:
            self._reject_inbound(topic, "unexpected_topic", "no handler")

    def _reject_inbound(self, where: str, reason: str, detail: str) -> None:
        self.inbound_rejected[reason] += 1
        self._log("warn", f"inbound {where} rejected: {reason}: {detail}")

    def _on_verify_response(self, payload: bytes) -> None:
        try:
            data = parse(payload, "verify_response", self.settings.offload.max_response_bytes)
        except InboundError as rejected:
            self._reject_inbound("verify/response", rejected.reason, rejected.detail)
            return
        out = self.offload.response(
            data["request_id"], data["part_id"], self._clock.wall_ns(), self._clock.monotonic_ns()
        )
        if out.pending is None:
            self._reject_inbound("verify/response", "unknown_request", f"request {data['request_id']!r} not pending")
            return
        if out.outcome == "used":
            probability = data.get("defect_probability")
            self._emit_verdict(
                CloudVerdict(
                    part_id=out.pending.part_id,
                    capture_ns=out.pending.capture_ns,
                    verdict=records.VERDICTS.index(data["verdict"]),
                    defect_probability=float("nan") if probability is None else float(probability),
                    model_version=str(data.get("model_version", "")),
                )
            )
        pending = out.pending
        self._verify_result(
            pending.part_id, pending.request_id, pending.local_verdict, data["verdict"], out.outcome, out.rtt_ms
        )

    # -- model update outcomes (updater thread) --------------------------------------------------------

    def _report_update(self, outcome: UpdateOutcome) -> None:
        if not outcome.accepted:
            # A flood of bad manifests must not become a flood of records and alerts: counted either way.
            now = self._clock.monotonic_ns()
            with self._lock:
                window_ns = REJECTION_REPORT_WINDOW_S * 1e9
                while self._rejection_reports and now - self._rejection_reports[0] > window_ns:
                    self._rejection_reports.popleft()
                if len(self._rejection_reports) >= REJECTION_REPORTS_PER_WINDOW:
                    self.counts["rejection_reports_suppressed"] += 1
                    return
                self._rejection_reports.append(now)
        self.bridge.send(
            "model_status",
            records.update_outcome(
                stamp_ns=self._clock.wall_ns(),
                accepted=outcome.accepted,
                version=outcome.version,
                reason=outcome.reason,
                detail=outcome.detail[:MAX_TEXT],
                active_version=outcome.active_version,
            ),
            retain=True,
        )
        if outcome.accepted:
            self._emit_alert(LinkAlert("INFO", "MODEL_UPDATE_ACCEPTED", f"model {outcome.version} is active"))
        else:
            text = f"model update {outcome.version or '(unreadable)'} rejected: {outcome.reason}: {outcome.detail}"
            self._emit_alert(LinkAlert("WARN", "MODEL_UPDATE_REJECTED", text[:MAX_TEXT]))

    # -- housekeeping (a short period of the caller's choosing) ----------------------------------------

    def housekeeping(self) -> None:
        """Close unanswered offloads (`no_response`), alert outbox losses and broker refusals."""
        for pending in self.offload.expire(self._clock.wall_ns()):
            self._verify_result(pending.part_id, pending.request_id, pending.local_verdict, None, "no_response", None)
        now = self._clock.monotonic_ns()
        last = self._last_loss_alert_ns
        if last is not None and now - last < self.settings.loss_alert_period_s * 1e9:
            return
        lost = self.bridge.losses.take()
        if lost:
            self._last_loss_alert_ns = now
            text = f"outbox could not keep every record (policy {self.settings.outbox_limits.policy}): {lost}"
            self._log("error", text)
            code = "OUTBOX_FULL" if "store_failed" not in lost else "OUTBOX_ERROR"
            self._emit_alert(LinkAlert("ERROR", code, text[:MAX_TEXT]))
        forwarder = self.bridge.forwarder
        refused = forwarder.counts["refused"]
        if refused > self._reported_refusals:
            self._last_loss_alert_ns = now
            text = (
                f"broker refused {refused - self._reported_refusals} publish(es): "
                f"{forwarder.last_refusal}; records kept and retried"
            )
            self._reported_refusals = refused
            self._emit_alert(LinkAlert("ERROR", "BROKER_REFUSED", text))

    # -- health ----------------------------------------------------------------------------------------

    def health_values(self) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.bridge.health())
        values.update({f"inbound_rejected_{k}": v for k, v in sorted(self.inbound_rejected.items())})
        values.update(dict(sorted(self.counts.items())))
        if self.updater is not None:
            values["model_installed"] = self.updater.installed_version
            values["model_active"] = self.updater.active_version
            values.update({f"update_{k}": v for k, v in sorted(self.updater.counts.items())})
        if self.settings.offload.enabled:
            values.update({f"offload_{k}": v for k, v in sorted(self.offload.counts.items())})
            values.update(self.offload.rtt_stats())
        if self.settings.sample.enabled:
            values["sample_bytes_last_hour"] = self.budget.used(self._clock.monotonic_ns())
        return values

    def health(self) -> Health:
        """ERROR after a loss or a refusal or above 90 % outbox fill; WARN while disconnected; else OK."""
        values = self.health_values()
        limits = self.settings.outbox_limits
        fill = max(values["outbox_depth"] / limits.max_records, values["outbox_bytes"] / limits.max_bytes)
        if values["lost_total"] or values["refused"] or fill > 0.9:
            level = HealthLevel.ERROR
            message = (
                f"{values['lost_total']} records lost, {values['refused']} refused, outbox {fill:.0%} full "
                f"({limits.policy})"
            )
        elif not values["connected"]:
            level = HealthLevel.WARN
            message = f"not connected ({values['last_error'] or 'connecting'}); {values['outbox_depth']} stored"
        else:
            level, message = HealthLevel.OK, f"connected; {values['outbox_depth']} records pending"
        return Health(level, message, values)
