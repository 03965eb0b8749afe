"""The cloud link's policy, without ROS: what the cell tells the cloud, and what it does with the cloud's answers.

CloudLink is the facade the cloud_bridge node wraps: settings in (qc_cell.bridge.settings), plain inputs in
(qc_cell.bridge.inputs), records to the outbox, plain outputs out (qc_cell.bridge.outputs). It decides

- which verdicts are records: each part summary is stored once (a key per part and decision time), so a restarted
  bridge sends the verdicts decided while none ran (`parts_recovered`) and skips those its predecessor stored
  (`parts_already_stored`); a recovered verdict gets no image and no offload (its frame and deadline are gone);
- which images leave the cell and which cloud verdicts count (qc_cell.bridge.part_images);
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
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any

from qc_cell.bridge.bridge import Bridge
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
from qc_cell.bridge.model_updater import LoadModel, ModelUpdater, UpdateOutcome
from qc_cell.bridge.outputs import CloudVerdict, Health, HealthLevel, LinkAlert
from qc_cell.bridge.part_images import PartImages
from qc_cell.bridge.session import Log, python_log
from qc_cell.bridge.settings import RUNTIME_SETTINGS, CloudLinkSettings
from qc_cell.inference.model_store import StoreError
from qc_contract import records
from qc_contract.drift import Histograms, ImageStats
from qc_contract.inbound import InboundError
from qc_contract.model_manifest import Manifest, ManifestError
from qc_contract.update_manifest import ROLE_SHADOW

REJECTION_REPORTS_PER_WINDOW, REJECTION_REPORT_WINDOW_S = 10, 60.0
MAX_TEXT = 4096  # longest free text (messages, details) in a record or alert


class CloudLinkError(RuntimeError):
    """The link cannot start (unusable outbox or update directory); the message names the path."""


class CloudLink:
    def __init__(
        self,
        settings: CloudLinkSettings,
        *,
        alert: Callable[[LinkAlert], None],
        cloud_verdict: Callable[[CloudVerdict], None] | None = None,
        load_model: LoadModel | None = None,
        load_shadow: LoadModel | None = None,
        log: Log = python_log,
        clock: Clock | None = None,
    ) -> None:
        if settings.updates is not None and load_model is None:
            raise ValueError("updates are enabled: a load_model function is needed")
        self.settings = settings
        self.cell = settings.cell
        self._emit_alert = alert
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
                self.updater = ModelUpdater(
                    settings.updates, load_model, report=self._report_update, log=log, load_shadow=load_shadow
                )
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
        self._last_shadow: tuple | None = None
        self._shadow_version = ""
        self._last_loss_alert_ns: int | None = None
        self._reported_refusals = 0
        self._rejection_reports: deque[int] = deque()
        self._started = self._stopped = False
        # Drift histograms of the parts since the last KPI record, of one model (a new model starts them again).
        self._drift = Histograms()
        self._drift_model = ""
        self.images = PartImages(
            settings.sample,
            settings.offload,
            settings.frame_buffer,
            send=self.bridge.send,
            epoch=self.bridge.outbox.epoch,
            cloud_verdict=cloud_verdict or (lambda _verdict: None),
            clock=clock,
            log=log,
        )

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
                self.images.budget.bytes_per_hour = int(changes["sample_bytes_per_hour"])
            if "sample_min_interval_s" in changes:
                self.images.budget.min_interval_ns = int(changes["sample_min_interval_s"] * 1e9)
            if "offload_slack_ms" in changes:
                self.images.offload.slack_ns = int(changes["offload_slack_ms"] * 1e6)
            if "offload_min_remaining_ms" in changes:
                self.images.offload.min_remaining_ns = int(changes["offload_min_remaining_ms"] * 1e6)

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
                simulated_inputs=self.settings.simulated_inputs,
            ),
            # The decision node keeps its last verdicts for late joiners: a restarted bridge gets them again. The
            # key stores each once, so those decided while no bridge ran are sent and the others are not resent.
            key=f"{part.part_id}@{part.decision_ns}",
        )
        if result.reason == "duplicate":
            self.counts["parts_already_stored"] += 1
            return
        with self._lock:
            if part.model_version != self._drift_model:
                self._drift.take()
                self._drift_model = part.model_version
            self._drift.add(ImageStats(*part.image_stats), part.defect_probability)
        if 0 < part.decision_ns < self._started_ns:
            self.counts["parts_recovered"] += 1  # decided while no bridge ran: its frame and deadline are gone
            return
        self.images.on_part(part)

    def on_frame(self, frame: PartImage) -> None:
        self.images.on_frame(frame)

    def on_heatmap(self, heatmap: PartImage) -> None:
        self.images.on_heatmap(heatmap)

    def on_kpi(self, kpi: KpiReport) -> None:
        """The KPI record, with the drift histograms of the parts since the previous one (none: no block)."""
        with self._lock:
            counts, parts = self._drift.take()
            model = self._drift_model
        distributions = records.drift_distributions(model_version=model, parts=parts, counts=counts) if parts else None
        self.bridge.send("kpi", records.kpi(**asdict(kpi), distributions=distributions))

    def on_alert(self, alert: AlertReport) -> None:
        self.bridge.send("alert", records.alert(**asdict(replace(alert, message=alert.message[:MAX_TEXT]))))

    def on_reject(self, event: RejectReport) -> None:
        body = asdict(replace(event, message=event.message[:MAX_TEXT]))
        self.bridge.send("reject", records.reject(**body, simulated_inputs=self.settings.simulated_inputs))

    def on_reconcile(self, finding: ReconcileReport) -> None:
        body = asdict(finding)
        self.bridge.send("reconcile", records.reconcile(**body, simulated_inputs=self.settings.simulated_inputs))

    def on_process(self, state: ProcessReport) -> None:
        """Forwarded on a change of flags, out_of_spec or stale, else at most once per process_period_s."""
        key = (state.flags, state.out_of_spec, state.stale)
        now = self._clock.monotonic_ns()
        if key == self._last_process and now - self._last_process_ns < self._process_period_ns:
            return
        self._last_process, self._last_process_ns = key, now
        self.bridge.send("process", records.process(**asdict(state), simulated_inputs=self.settings.simulated_inputs))

    def on_model(self, model: ModelReport) -> None:
        """Each change of the model state is one retained record. (Update versions are ordered by the model
        store's active pointer, not by this topic, which any participant of the graph could publish.)"""
        key = (model.version, model.sha256, model.state, model.message)
        if key == self._last_model:
            return
        self._last_model = key
        record = records.model_state(
            **asdict(replace(model, message=model.message[:MAX_TEXT])), defect_types=self._defect_types(model.version)
        )
        self.bridge.send("model_status", record, retain=True)

    def on_shadow_score(self, score: ShadowScoreReport) -> None:
        """One part scored by the shadow model: its own stream (shadow_score); inspection/shadow is volatile, so
        no history is replayed and no key is needed."""
        self.bridge.send("shadow_score", records.shadow_score(**asdict(score)))

    def on_shadow_state(self, state: ShadowStateReport) -> None:
        """The shadow model and its counts on model/status (shadow_state); retained only when the shadow itself
        changed, so the periodic counts do not replace the retained model_state a late subscriber reads."""
        key = (state.version, tuple(sorted(state.counts.items())))
        if key == self._last_shadow:
            return
        changed = self._last_shadow is None or self._last_shadow[0] != state.version
        self._last_shadow, self._shadow_version = key, state.version
        record = records.shadow_state(
            stamp_ns=state.stamp_ns,
            active_version=self._last_model[0] if self._last_model else "",
            shadow_version=state.version,
            counts=state.counts,
            message=state.message[:MAX_TEXT],
        )
        self.bridge.send("model_status", record, retain=changed)

    def _defect_types(self, version: str) -> tuple[str, ...]:
        """The defect types in the manifest of `version` in the cell's model store (updates on), else ()."""
        if self.updater is None or not version:
            return ()
        try:
            return Manifest.load(self.updater.store.path(version)).defect_types
        except (ManifestError, StoreError, OSError):
            return ()

    # -- inbound (MQTT thread: keep it short) ----------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        """Everything the cloud sends this cell."""
        cell = self.cell
        if topic == cell.verify_response:
            try:
                self.images.on_verify_response(payload)
            except InboundError as rejected:
                self._reject_inbound("verify/response", rejected.reason, rejected.detail)
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
                role=outcome.role if outcome.version else "",
            ),
            retain=True,
        )
        if outcome.accepted and outcome.role == ROLE_SHADOW:
            text = f"model {outcome.version} runs as the shadow model (scored beside {outcome.active_version})"
            self._emit_alert(LinkAlert("INFO", "MODEL_UPDATE_ACCEPTED", text[:MAX_TEXT]))
        elif outcome.accepted:
            how = " (from the model store, no download)" if outcome.from_store else ""
            self._emit_alert(LinkAlert("INFO", "MODEL_UPDATE_ACCEPTED", f"model {outcome.version} is active{how}"))
        else:
            text = f"model update {outcome.version or '(unreadable)'} rejected: {outcome.reason}: {outcome.detail}"
            self._emit_alert(LinkAlert("WARN", "MODEL_UPDATE_REJECTED", text[:MAX_TEXT]))

    # -- housekeeping (a short period of the caller's choosing) ----------------------------------------

    def housekeeping(self) -> None:
        """Close unanswered offloads (`no_response`), alert outbox losses and broker refusals."""
        self.images.expire()
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
        values.update(dict(sorted((self.counts + self.images.counts).items())))
        if self.updater is not None:
            values["model_installed"] = self.updater.installed_version
            values["model_active"] = self.updater.active_version
            values.update({f"update_{k}": v for k, v in sorted(self.updater.counts.items())})
        values.update(self.images.health_values())
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
