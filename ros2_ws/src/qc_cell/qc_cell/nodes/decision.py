"""decision node: exactly one verdict per part (quality/decision), rolling KPIs (quality/kpi), /diagnostics.

Parts come from camera/parts (and camera/trigger when it carries the part id) and from inspection/result;
the process state in force at each part's capture time comes from the node's own history of process/state
(latched), so the verdict never waits for fusion.
A real timer gives parts without a result their fail-safe verdict at `capture + result_deadline_ms`.
Deadlines and timers run on ROS steady time (the capture's steady_stamp against the host's steady clock, timers
created on a STEADY_TIME clock, which Humble's rclpy offers too): a wall-clock step (NTP) neither shortens nor
extends a part's deadline, and does not stall the timers (rclpy timers on the wall clock stall on a backward step,
ros2/rclpy#1490). Records keep the wall stamps.
The rule itself lives in qc_cell.decision; this node declares parameters and converts messages.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from std_msgs.msg import Header

from qc_cell.decision.bands import ModelBands
from qc_cell.decision.engine import Counters, DecisionEngine, DecisionRecord, ResultInput
from qc_cell.decision.kpi import RollingKpi
from qc_cell.decision.params import DECISION, build_config
from qc_cell.decision.part_ledger import Claim, Registration
from qc_cell.decision.verdict_rule import ProcessContext, Reason
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.alerts import AlertPublisher
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters, handle_parameter_changes
from qc_cell.ros.subscriptions import Subscriptions
from qc_cell.ros.time import from_ns, to_ns
from qc_contract.vocabulary import Verdict
from qc_interfaces.msg import CellKpi, InspectionResult, ModelInfo, PartTrigger, ProcessState, QualityDecision

THRESHOLD_PARAMS = ("reinspect_threshold", "defective_threshold")


class DecisionNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("decision", **kwargs)
        p = declare_parameters(self, DECISION)
        self._process_keep_s, self._remembered_parts = p["process_keep_s"], p["remembered_parts"]
        try:
            config = build_config(p, self._process_keep_s, self._remembered_parts)
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc

        # The clock of every deadline and timer (a wall-clock step changes none of them).
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        now_ns = self._now_ns()
        self._engine = DecisionEngine(config)
        # Which bands judge a part (qc_cell.decision.bands); model/active brings the bands each model proposes.
        self._bands = ModelBands(p["bands"])
        self._bands_described: str | None = None
        self._kpi = RollingKpi(p["kpi_window_s"], now_ns)
        self._verdict_totals: Counter[Verdict] = Counter()
        self._counters_at_last_diag = Counters()
        # Whether anyone publishes camera/parts (only then may a result wait for its registration): set by every
        # registration, asked of the graph (5 us) while false, re-checked by the diagnostics timer.
        self._parts_published = False
        handle_parameter_changes(self, DECISION, self._apply_parameters)

        # Verdicts keep a history for late joiners (qos.PART_RECORDS: the cloud bridge); the reject actuator
        # subscribes volatile. KPIs are EVENTS.
        self._decision_pub = self.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)
        self._kpi_pub = self.create_publisher(CellKpi, "quality/kpi", qos.EVENTS)
        self._diag_pub = diagnostics.create_publisher(self)
        # Alerts: only for publishers whose QoS cannot match a subscription of this node.
        subscriptions = Subscriptions(self, AlertPublisher(self), self._diag_pub)
        subscriptions.create(PartTrigger, "camera/parts", self._on_part, qos.EVENTS)
        # A trigger that carries the part's id (PLC-assigned) registers the part already, so it gets its verdict
        # (fail-safe) even when the camera driver is down and never registers it. Empty ids: the camera assigns.
        subscriptions.create(PartTrigger, "camera/trigger", self._on_trigger, qos.EVENTS)
        subscriptions.create(InspectionResult, "inspection/result", self._on_result, qos.EVENTS)
        # LATCHED matches sensor_fusion's publisher, so a (re)started decision node gets the current state at once.
        subscriptions.create(ProcessState, "process/state", self._on_process_state, qos.LATCHED)
        # LATCHED matches the inference node's publisher: the active model and the bands its package proposes.
        subscriptions.create(ModelInfo, "model/active", self._on_model, qos.LATCHED)
        # Runs only while parts are pending (cancelled when idle, reset on the next registration).
        self._deadline_timer = self.create_timer(
            p["deadline_check_period_ms"] / 1000.0, self._on_deadline_tick, clock=self._steady
        )
        self._deadline_timer.cancel()
        self.create_timer(p["kpi_period_s"], self._publish_kpi, clock=self._steady)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics, clock=self._steady)
        self.get_logger().info(
            f"decision ready: normal < {config.thresholds.reinspect} <= reinspect < {config.thresholds.defective} "
            f"<= defective; deadline {config.result_deadline_ms:g} ms; fail-safe parts published as "
            f"{config.not_inspected_as.name}; bands: {self._bands.describe(config.thresholds)}"
        )

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _steady_ns(self) -> int:
        return self._steady.now().nanoseconds

    def _capture(self, header_stamp, steady_stamp) -> tuple[int, int, int]:
        """(capture on the steady clock, capture wall stamp, steady now) of a message. Without a steady stamp
        (a producer that has none, e.g. a PLC trigger) the capture is placed on the steady clock by its age now."""
        steady_now, wall_now = self._steady_ns(), self._now_ns()
        wall = to_ns(header_stamp)
        steady = to_ns(steady_stamp)
        if wall <= 0:
            wall = wall_now
        if steady <= 0:
            steady = steady_now - (wall_now - wall)
        return steady, wall, steady_now

    # ---- parameters ---------------------------------------------------------------------------------------
    def _apply_parameters(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        """The new config as a whole (never half of a pair); ValueError refuses the change."""
        config = build_config(values, self._process_keep_s, self._remembered_parts)
        bands = ModelBands(values["bands"])  # checks the choice before anything changes
        self._engine.reconfigure(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
        if "bands" in changed:  # choosing the source again starts from it: from_model then uses the model's bands
            self._bands.source, self._bands.explicit = bands.source, False
        if any(name in changed for name in THRESHOLD_PARAMS):
            self._bands.explicit = True  # thresholds set at run time win over the model's
        self._use_bands()

    # ---- inputs -------------------------------------------------------------------------------------------
    def _on_part(self, msg: PartTrigger) -> None:
        self._parts_published = True
        self._register(msg, from_camera=True)

    def _on_trigger(self, msg: PartTrigger) -> None:
        if msg.part_id:
            self._register(msg, from_camera=False)

    def _register(self, msg: PartTrigger, from_camera: bool) -> None:
        topic = "camera/parts" if from_camera else "camera/trigger"
        steady, wall, steady_now = self._capture(msg.header.stamp, msg.steady_stamp)
        try:
            registration, record = self._engine.on_part(
                msg.part_id,
                steady,
                msg.encoder_count,
                msg.header.frame_id,
                steady_now,
                from_camera=from_camera,
                wall_ns=wall,
            )
        except ValueError as exc:
            self.get_logger().error(f"{topic}: {exc}", throttle_duration_sec=1.0)
            return
        if record is not None:  # its result was waiting for this registration
            self._publish(record)
        elif registration in (Registration.NEW, Registration.CONFIRMED):
            self._arm_deadline_timer()
        elif from_camera and registration is Registration.ALREADY_DECIDED:
            self.get_logger().warning(
                f"camera/parts for part {msg.part_id} came after its verdict (decided from a result that did not "
                "wait for it, or a fail-safe verdict from its trigger)",
                throttle_duration_sec=1.0,
            )

    def _arm_deadline_timer(self) -> None:
        if self._deadline_timer.is_canceled():
            self._deadline_timer.reset()

    def _on_result(self, msg: InspectionResult) -> None:
        steady, wall, steady_now = self._capture(msg.header.stamp, msg.steady_stamp)
        result = ResultInput(
            part_id=msg.part_id,
            capture_ns=steady,
            wall_ns=wall,
            frame_id=msg.header.frame_id,
            inspected=msg.status == InspectionResult.STATUS_OK,
            reason=msg.reason,
            defect_probability=msg.defect_probability,
            model_version=msg.model_version,
            ground_truth=msg.ground_truth,
            defect_type=msg.defect_type,
            image_stats=(msg.image_brightness, msg.image_contrast, msg.image_sharpness),
        )
        try:
            if not self._parts_published:
                self._parts_published = self.count_publishers("camera/parts") > 0
            claim, record = self._engine.on_result(result, steady_now, registration_expected=self._parts_published)
        except ValueError as exc:
            self.get_logger().error(f"inspection/result: {exc}", throttle_duration_sec=1.0)
            return
        if record is not None:
            self._publish(record)
        if claim is Claim.HELD:
            self._arm_deadline_timer()
        elif claim is Claim.DUPLICATE:
            self.get_logger().warning(f"duplicate result for part {msg.part_id} ignored", throttle_duration_sec=1.0)
        elif claim in (Claim.LATE, Claim.EXPIRED):
            deadline = self._engine.config.result_deadline_ms
            self.get_logger().warning(
                f"late result for part {msg.part_id} (after its {deadline:g} ms deadline): the part has its "
                "fail-safe verdict, the result is not used",
                throttle_duration_sec=1.0,
            )

    def _on_model(self, msg: ModelInfo) -> None:
        if msg.state != ModelInfo.STATE_ACTIVE or not msg.version:
            return
        problem = self._bands.on_model(msg.version, msg.reinspect_threshold, msg.defective_threshold)
        if problem:
            self.get_logger().error(problem)
        self._use_bands()

    def _use_bands(self) -> None:
        """Hand the per-model bands to the engine and say which bands now apply (when that changed)."""
        self._engine.model_thresholds = self._bands.model_thresholds()
        described = self._bands.describe(self._engine.config.thresholds)
        if described != self._bands_described:
            self._bands_described = described
            self.get_logger().info(f"decision bands: {described}")

    def _on_process_state(self, msg: ProcessState) -> None:
        ctx = ProcessContext(
            anomaly_score=msg.anomaly_score, flags=msg.flags, out_of_spec=msg.out_of_spec, stale=msg.stale
        )
        self._engine.on_process_state(to_ns(msg.header.stamp), ctx)

    def _on_deadline_tick(self) -> None:
        for record in self._engine.expire(self._steady_ns()):
            self._publish(record)
            if record.reasons[0] != Reason.NO_RESULT:
                continue  # a held result whose registration never came: decided from the result
            self.get_logger().warning(
                f"part {record.part_id}: no inspection result within "
                f"{self._engine.config.result_deadline_ms:g} ms -> {record.verdict.name} ({', '.join(record.reasons)})",
                throttle_duration_sec=1.0,
            )
        if self._engine.pending_count == 0:
            self._deadline_timer.cancel()

    # ---- outputs ------------------------------------------------------------------------------------------
    def _publish(self, record: DecisionRecord) -> None:
        now_ns = self._now_ns()
        if record.steady_ns:
            latency_ms = (self._steady_ns() - record.steady_ns) / 1e6
        else:
            latency_ms = (now_ns - record.capture_ns) / 1e6
        # One constructor call: rosidl would otherwise build every default field first and then replace it.
        msg = QualityDecision(
            header=Header(stamp=from_ns(record.capture_ns), frame_id=record.frame_id),
            steady_stamp=from_ns(record.steady_ns),
            part_id=record.part_id,
            verdict=int(record.verdict),
            reasons=record.reasons,
            defect_probability=record.defect_probability,
            process_anomaly_score=record.process.anomaly_score,
            process_flags=record.process.flags,
            model_version=record.model_version,
            encoder_count=record.encoder_count,
            capture_to_decision_ms=latency_ms,
            decision_stamp=from_ns(now_ns),
            ground_truth=record.ground_truth,
            defect_type=record.defect_type,
            image_brightness=record.image_stats[0],
            image_contrast=record.image_stats[1],
            image_sharpness=record.image_stats[2],
        )
        self._decision_pub.publish(msg)
        # Bookkeeping after the verdict is out: off the critical path.
        self._kpi.add(now_ns, record.verdict, record.reasons, latency_ms)
        self._verdict_totals[record.verdict] += 1

    def _publish_kpi(self) -> None:
        snap = self._kpi.snapshot(self._now_ns())
        msg = CellKpi()
        msg.header.stamp = from_ns(snap.stamp_ns)
        msg.window_s = snap.window_s
        msg.parts = snap.parts
        msg.normal = snap.counts[Verdict.NORMAL]
        msg.reinspect = snap.counts[Verdict.REINSPECT]
        msg.defective = snap.counts[Verdict.DEFECTIVE]
        msg.not_inspected = snap.counts[Verdict.NOT_INSPECTED]
        msg.yield_ratio = snap.yield_ratio
        msg.throughput_pps = snap.throughput_pps
        msg.latency_p50_ms = snap.latency_p50_ms
        msg.latency_p95_ms = snap.latency_p95_ms
        msg.latency_p99_ms = snap.latency_p99_ms
        msg.reason_names = list(snap.reasons)
        msg.reason_counts = list(snap.reasons.values())
        msg.total_parts = snap.total_parts
        self._kpi_pub.publish(msg)

    def _publish_diagnostics(self) -> None:
        self._parts_published = self.count_publishers("camera/parts") > 0
        now_ns = self._now_ns()
        cfg, counters = self._engine.config, self._engine.counters
        last, self._counters_at_last_diag = self._counters_at_last_diag, dataclasses.replace(counters)
        latest = self._engine.latest_process_stamp_ns()
        process_age_s = math.inf if latest is None else (now_ns - latest) / 1e9
        problems = []
        if counters.deadline_expired > last.deadline_expired:
            problems.append(f"{counters.deadline_expired - last.deadline_expired} part(s) without a result in time")
        if counters.late_results > last.late_results:
            problems.append(f"{counters.late_results - last.late_results} late result(s)")
        if counters.unregistered_verdicts > last.unregistered_verdicts:
            problems.append("verdicts for parts not registered on camera/parts in time: no encoder count")
        if process_age_s * 1000.0 > cfg.process_max_age_ms:
            problems.append("no recent process/state: parts are escalated as process_unknown")
        values = {
            "pending_parts": self._engine.pending_count,
            "process_state_age_s": f"{process_age_s:.3f}",
            "reinspect_threshold": cfg.thresholds.reinspect,
            "defective_threshold": cfg.thresholds.defective,
            "bands": self._bands.describe(cfg.thresholds),
            "result_deadline_ms": cfg.result_deadline_ms,
            **{f"total_{v.name.lower()}": self._verdict_totals[v] for v in Verdict},
            **vars(counters),
        }
        level = diagnostics.WARN if problems else diagnostics.OK
        status = diagnostics.status(f"{self.get_name()}: verdicts", level, "; ".join(problems) or "deciding", values)
        diagnostics.publish(self, self._diag_pub, [status])


def main() -> int:
    return run(DecisionNode)


if __name__ == "__main__":
    raise SystemExit(main())
