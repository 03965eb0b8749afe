"""reject_actuator: lifecycle node that turns verdicts into timed ejections (qc_cell.reject does the work).

configure: build the driver and acquire the hardware; activate: arm (start the deadline scheduler and the
watchdog); deactivate: disarm (outputs off, pending parts reported); cleanup/shutdown: release the hardware.

Subscribes /diagnostics (the heartbeat toggles only while the heartbeat_nodes report healthy: CellHealth),
quality/decision, quality/cloud_verdict (a cloud re-inspection verdict replaces the local one while
the part's actuation has not begun) and camera/parts (encoder samples, watchdog). Publishes reject/event for every
acted-on part, alerts, /diagnostics and, with the sim driver, reject/markers for RViz.

The verdict/eject reconciler (qc_cell.reject.reconciler) checks the actuator from its inputs and published events:
every registered part and every verdict with a lane must get exactly one terminal reject/event by its deadline;
one without is a CRITICAL alert naming it and a stop-line pulse; each settled part is published on
reject/reconciliation (the cloud bridge forwards it as a `reconcile` record).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from visualization_msgs.msg import MarkerArray

from qc_cell.reject.cell_health import CellHealth
from qc_cell.reject.config import RejectConfig
from qc_cell.reject.controller import RejectController
from qc_cell.reject.drivers.base import DriverError
from qc_cell.reject.drivers.factory import build_driver, build_signals
from qc_cell.reject.drivers.sim import SimDriver, sim_faults
from qc_cell.reject.journal import EjectionJournal
from qc_cell.reject.params import REJECT_ACTUATOR, checked_settings
from qc_cell.reject.reconciler import Expected, Finding, Reconciler, Status, due_ns
from qc_cell.reject.records import (
    NOT_INSPECTED,
    SKIPPED,
    AlertRecord,
    Decision,
    Part,
    RejectRecord,
)
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.alerts import AlertPublisher
from qc_cell.ros.arm_client import ActionArmTransport
from qc_cell.ros.lifecycle import DeviceNode
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters, handle_parameter_changes
from qc_cell.ros.reject_markers import RejectMarkers
from qc_cell.ros.subscriptions import Subscriptions
from qc_cell.ros.time import from_ns, to_ns
from qc_contract.vocabulary import OUTCOME_NAMES, VERDICT_NAMES
from qc_interfaces.msg import Alert, PartTrigger, QualityDecision, Reconciliation, RejectEvent

GIL_SWITCH_INTERVAL_S = 0.0005
# One executor thread: every callback is short (the ejections run on the controller's own thread), and a
# MultiThreadedExecutor cost the node about twice the CPU (docs/reject.md). A Modbus heartbeat to a PLC that
# stops answering (modbus_timeout_s, 0.2 s) on the tick may hold verdicts back that long.
EXECUTOR_THREADS = 1
# Verdicts held while a journalled actuator is not yet active (a restart); beyond, they are reported SKIPPED at once.
MAX_HELD = 10_000
RECOVERY_HOLD_NS = 30 * 1_000_000_000  # the reconciler waits at most this for a starting actuator to be armed


class _Publisher:
    """The controller's sink: RejectRecord/AlertRecord -> messages (called from the controller's threads)."""

    def __init__(self, node: RejectActuator) -> None:
        self._node = node

    def event(self, record: RejectRecord) -> None:
        node = self._node
        msg = RejectEvent(
            part_id=record.part_id,
            verdict=record.verdict,
            outcome=record.outcome,
            method=record.method,
            lane=record.lane,
            planned_time=from_ns(max(record.planned_ns, 0)),
            actual_time=from_ns(max(record.actual_ns, 0)),
            lateness_ms=float(record.lateness_ms),
            message=record.message,
        )
        msg.header.stamp = from_ns(record.capture_ns)
        msg.header.frame_id = record.frame_id
        published = self._publish(node.event_pub, msg, f"part {record.part_id}: {OUTCOME_NAMES[record.outcome]}")
        if record.terminal:
            node.reconcile_event(record.part_id, record.outcome)
        if published and node.marker_pub is not None and record.lane:
            markers = node.markers.build(record, node.get_clock().now().nanoseconds)
            self._publish(node.marker_pub, markers, "marker")

    def alert(self, alert: AlertRecord) -> None:
        self._node.alerts.send(alert.severity, alert.code, alert.message, alert.part_id, log=True)

    def _publish(self, publisher, msg, what: str) -> bool:
        """Publish; after Ctrl-C the context is gone while the controller still reports its pending parts:
        those go to the log instead of ending the process with a traceback."""
        try:
            publisher.publish(msg)
            return True
        except Exception:
            if self._node.context.ok():
                raise
            self._node.get_logger().warning(f"shutting down, not published: {what}")
            return False


class RejectActuator(DeviceNode):
    configure_errors = (DriverError, ValueError)

    def __init__(self, **kwargs) -> None:
        # Set before anything can fail: destroy_node() runs even when the constructor raised.
        self.controller: RejectController | None = None
        self._transport: ActionArmTransport | None = None
        super().__init__("reject_actuator", **kwargs)
        p = declare_parameters(self, REJECT_ACTUATOR)
        try:
            self.config, self.settings = checked_settings(p)
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        self.marker_frame: str = p["marker_frame"]
        self.marker_lifetime_s: float = p["marker_lifetime_s"]
        self._spin_ms: float = p["scheduler_spin_ms"]
        self._rt_priority: int = p["scheduler_rt_priority"]
        tick_s, diag_s = p["tick_period_s"], p["diagnostics_period_s"]
        self.cell_health = CellHealth(p["heartbeat_nodes"], int(p["heartbeat_stale_s"] * 1e9))
        self._reconcile_grace_ms: float = p["reconcile_grace_ms"]
        grace_ns = int(self._reconcile_grace_ms * 1e6)
        self.reconciler = Reconciler(late_grace_ns=grace_ns) if self._reconcile_grace_ms > 0 else None
        self._reconcile_lock = threading.Lock()  # events come from the controller's threads
        if self.get_parameter("use_sim_time").value:
            raise ParameterError(
                "use_sim_time must be false: the actuator fires on the wall clock of the capture stamps"
            )
        self._pending_config: RejectConfig | None = None
        try:
            self._sim_faults = sim_faults(p["sim_faults"])
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        self._publisher = _Publisher(self)
        self.markers = RejectMarkers(self.marker_frame, self.marker_lifetime_s)

        self.event_pub = self.create_publisher(RejectEvent, "reject/event", qos.EVENTS)
        self.reconciliation_pub = self.create_publisher(Reconciliation, "reject/reconciliation", qos.EVENTS)
        self.alerts = AlertPublisher(self, log_throttle_s=1.0)
        self.marker_pub = (
            self.create_publisher(MarkerArray, "reject/markers", qos.EVENTS) if self.settings.driver == "sim" else None
        )
        self._diag_pub = diagnostics.create_publisher(self)
        subscriptions = Subscriptions(self, self.alerts, self._diag_pub)
        # Verdicts and parts are handled in every state, so parts that cannot be ejected are still reported.
        # The decision node's history (PART_RECORDS, transient local) reaches this reader whenever it matches a
        # writer: a restarted decision node publishes its first verdicts before every reader has matched it (under
        # load, seconds), and a volatile reader loses those (issue 17: 10 of 200 parts around a SIGKILL of decision).
        # With a journal, the history also replays to a restarted actuator: the verdicts decided while it was down are
        # handled, the ones it already handled are known. Without one, verdicts decided before this node started are
        # old (their parts are gone) and ignored.
        self._journal_path: str = p["journal_path"]
        self._started_ns = self.get_clock().now().nanoseconds
        self._replayed: list[Decision] = []  # verdicts that came before activation (journal): handled on activate
        # A (re)starting actuator with a journal is recovering until it is first armed (at most RECOVERY_HOLD_NS):
        # the reconciler judges no deadline meanwhile, so a part that passed during the outage gets its MISSED event
        # on activation, one CRITICAL alert, and not OVERDUE, then MISSED, then DUPLICATE.
        self._recovery_until_ns = time.monotonic_ns() + RECOVERY_HOLD_NS if self._journal_path else 0
        if self.reconciler is not None and self._recovery_until_ns:
            self.reconciler.recovering(True, time.monotonic_ns())
        self._old_verdicts = 0
        subscriptions.create(QualityDecision, "quality/decision", self._on_decision, qos.PART_RECORDS)
        subscriptions.create(QualityDecision, "quality/cloud_verdict", self._on_cloud_verdict, qos.EVENTS)
        subscriptions.create(PartTrigger, "camera/parts", self._on_part, qos.EVENTS)
        # The cell's health (heartbeat) and its stop-line requests (a free-run camera outage).
        subscriptions.create(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.DIAGNOSTICS)
        # Steady time: rclpy timers on the wall clock stall on a backward step (ros2/rclpy#1490), and the watchdog,
        # the belt tracking, the reconciler and the heartbeat run on this tick.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(tick_s, self._tick, clock=steady)
        self.create_timer(diag_s, self._publish_diagnostics, clock=steady)
        handle_parameter_changes(self, REJECT_ACTUATOR, self._apply_parameters)

    # ------------------------------------------------------------ parameters

    def _apply_parameters(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        """Validated against the config in force (or the one waiting), applied on the next tick. sim_faults (a
        drill on the simulated station) applies at once."""
        changed = dict(changed)
        if "sim_faults" in changed:
            faults = sim_faults(changed.pop("sim_faults"))
            if self.settings.driver != "sim":
                raise ValueError("sim_faults only applies to the sim driver")
            self._sim_faults = faults
            controller = self.controller
            if controller is not None and isinstance(controller.driver, SimDriver):
                controller.driver.set_faults(faults)
        if not changed:
            return
        candidate = dataclasses.replace(self._pending_config or self.config, **changed)
        candidate.validate()
        self._pending_config = candidate

    # ------------------------------------------------------------ lifecycle (cleanup, shutdown, error: DeviceNode)

    def acquire(self) -> None:
        if self.settings.driver == "robot_arm":
            self._transport = ActionArmTransport(self)
        driver = build_driver(self.settings, self._transport)
        journal = EjectionJournal(self._journal_path) if self._journal_path else None
        if journal is not None and journal.corrupt_lines:
            self.get_logger().warning(f"journal {journal.path}: {journal.corrupt_lines} torn line(s) skipped")
        controller = RejectController(
            self.config,
            driver,
            self._publisher,
            spin_ns=int(self._spin_ms * 1e6),
            rt_priority=self._rt_priority,
            journal=journal,
            signals=build_signals(self.settings),
        )
        if isinstance(driver, SimDriver):
            driver.set_faults(self._sim_faults)
        controller.open()
        self.controller = controller
        self.get_logger().info(
            f"configured: driver {self.settings.driver}, reject at {self.config.reject_distance_mm} mm, "
            f"speed {self.config.speed_source}, verdicts {list(self.config.eject_verdicts)}"
        )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.controller is not None
        journal = self.controller.journal
        # Verdicts replayed before the node was configured were expected by the reconciler before the journal could
        # be asked; those the journal closed before the restart get no new event (the controller ignores them).
        done_before = [d.part_id for d in self._replayed if journal is not None and journal.is_done(d.part_id)]
        self.controller.arm()  # re-plans or reports (MISSED) what the journal left open
        replayed, self._replayed = self._replayed, []
        for decision in replayed:
            self.controller.on_decision(decision, replayed=True)
        if self.reconciler is not None:
            with self._reconcile_lock:
                for part_id in done_before:
                    self.reconciler.settled_before(part_id)
        self._end_recovery()
        realtime = self.controller.realtime
        if self._rt_priority > 0 and not realtime.startswith("SCHED_FIFO"):
            self._publisher.alert(
                AlertRecord(
                    Alert.WARN,
                    "REJECT_NOT_REALTIME",
                    f"actuation thread {realtime}: expect several ms of timing error on a busy machine",
                )
            )
        else:
            self.get_logger().info(f"armed; actuation thread: {realtime}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.controller is not None:
            self.controller.disarm()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        controller, self.controller = self.controller, None
        if controller is not None:
            controller.close()
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    # ------------------------------------------------------------ inputs

    def _on_decision(self, msg: QualityDecision) -> None:
        decision = Decision(
            msg.part_id,
            msg.verdict,
            to_ns(msg.header.stamp),
            msg.encoder_count,
            msg.header.frame_id,
            to_ns(msg.steady_stamp),
        )
        decided_before_start = 0 < to_ns(msg.decision_stamp) < self._started_ns
        if decided_before_start and not self._journal_path:
            self._old_verdicts += 1  # history from before this actuator's time, nothing to reconcile it with
            return
        replayed = bool(self._journal_path) and decided_before_start
        controller = self.controller
        self._reconcile_decision(msg, decision, replayed)
        if self._journal_path and (controller is None or not controller.armed) and len(self._replayed) < MAX_HELD:
            # A (re)starting actuator with a journal: every verdict until it is armed is handled then (ejected when
            # still in time, MISSED otherwise), not reported SKIPPED at once from a node that cannot act yet.
            self._replayed.append(decision)
            return
        if controller is not None:
            controller.on_decision(decision, replayed=replayed)
            return
        lane = self.config.lane_for(decision.verdict)
        if lane is None:
            return
        # Not configured: nothing can eject the part; say so for every one.
        self._publisher.event(
            RejectRecord(
                part_id=decision.part_id,
                verdict=decision.verdict,
                outcome=SKIPPED,
                method=self.settings.driver,
                lane=lane,
                capture_ns=decision.capture_ns,
                planned_ns=0,
                actual_ns=0,
                lateness_ms=0.0,
                message="the actuator is not configured: not ejected",
                frame_id=decision.frame_id,
                position_m=self.config.lane_distance_mm(lane) / 1000.0,
            )
        )
        verdict = VERDICT_NAMES.get(decision.verdict, str(decision.verdict))
        self._publisher.alert(
            AlertRecord(
                Alert.CRITICAL,
                "REJECT_SKIPPED",
                f"part {decision.part_id} ({verdict}) not removed: the actuator is not configured",
                decision.part_id,
            )
        )

    def _on_cloud_verdict(self, msg: QualityDecision) -> None:
        if self.controller is not None:
            self.controller.on_cloud_verdict(
                Decision(
                    msg.part_id,
                    msg.verdict,
                    to_ns(msg.header.stamp),
                    msg.encoder_count,
                    msg.header.frame_id,
                    to_ns(msg.steady_stamp),
                )
            )

    def _on_part(self, msg: PartTrigger) -> None:
        if self.config.watchdog_timeout_s > 0:  # the watchdog fails a part without a verdict safe: it must go out
            lane = self.config.lane_for(NOT_INSPECTED)
            if lane is not None:
                self._reconcile_expect(msg, NOT_INSPECTED, lane, has_verdict=False)
        if self.controller is not None:
            part = Part(
                msg.part_id,
                to_ns(msg.header.stamp),
                msg.encoder_count,
                msg.header.frame_id,
                steady_ns=to_ns(msg.steady_stamp),
            )
            self.controller.on_part(part)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = time.monotonic_ns()  # freshness: immune to wall-clock steps
        for status in msg.status:
            level = status.level if isinstance(status.level, int) else int.from_bytes(status.level, "little")
            values = {kv.key: kv.value for kv in status.values}
            self.cell_health.on_status(status.name, level, status.message, values, now)

    # ------------------------------------------------------------ reconciler

    def _steady_capture(self, msg) -> tuple[int, int]:
        """(capture on the steady clock, wall - steady offset) of a part message (its steady stamp, else its age)."""
        wall = to_ns(msg.header.stamp)
        steady = to_ns(msg.steady_stamp)
        if steady <= 0:
            steady = time.monotonic_ns() - max(0, time.time_ns() - wall)
        return steady, wall - steady

    def _reconcile_expect(self, msg, verdict: int, lane: str, has_verdict: bool) -> None:
        if self.reconciler is None:
            return
        capture, offset = self._steady_capture(msg)
        distance = self.config.lane_distance_mm(lane)
        if self.config.missed_response == "divert":  # a miss on the reject lane is settled on the divert lane
            distance = max(distance, self.config.lane_distance_mm("divert"))
        part = Expected(
            msg.part_id,
            lane,
            verdict,
            has_verdict,
            capture,
            due_ns(capture, distance, self.config, self._reconcile_grace_ms),
            offset,
            msg.header.frame_id,
        )
        with self._reconcile_lock:
            findings = self.reconciler.expect(part, now_ns=time.monotonic_ns())
        for finding in findings:
            self._report(finding)

    def _reconcile_decision(self, msg: QualityDecision, decision: Decision, replayed: bool) -> None:
        if self.reconciler is None:
            return
        controller = self.controller
        journal = controller.journal if controller is not None else None
        if replayed and journal is not None and journal.handled(decision.part_id):
            return  # settled before this actuator started (the controller ignores it too)
        lane = self.config.lane_for(decision.verdict)
        if lane is None:
            with self._reconcile_lock:
                self.reconciler.release(decision.part_id)
            return
        self._reconcile_expect(msg, decision.verdict, lane, has_verdict=True)

    def reconcile_event(self, part_id: str, outcome: int) -> None:
        """A terminal reject/event as published (any of the controller's threads)."""
        if self.reconciler is None:
            return
        with self._reconcile_lock:
            finding = self.reconciler.terminal_event(part_id, outcome)
        if finding is not None:
            self._report(finding)

    def _end_recovery(self) -> None:
        """Armed once (or held for RECOVERY_HOLD_NS): the reconciler judges deadlines again, those passed meanwhile
        from now + the grace."""
        self._recovery_until_ns = 0
        if self.reconciler is not None:
            with self._reconcile_lock:
                self.reconciler.recovering(False, time.monotonic_ns())

    def _reconcile_tick(self) -> None:
        if self.reconciler is None:
            return
        now = time.monotonic_ns()
        if self._recovery_until_ns and now >= self._recovery_until_ns:
            self._end_recovery()  # never armed: a part nobody acts on must not go unreported
        controller = self.controller
        stopped = controller is not None and controller.belt_stopped(now)
        with self._reconcile_lock:
            self.reconciler.belt_stopped(stopped, now)
            findings = self.reconciler.overdue(now)
        for finding in findings:
            self._report(finding)

    def _report(self, finding: Finding) -> None:
        part = finding.part
        msg = Reconciliation(
            part_id=part.part_id,
            verdict=int(part.verdict),
            has_verdict=part.has_verdict,
            lane=part.lane,
            status=int(finding.status),
            outcome=int(finding.outcome),
            terminal_events=finding.terminal_events,
            deadline=from_ns(part.due_ns + part.wall_offset_ns),
        )
        msg.header.stamp = from_ns(part.capture_ns + part.wall_offset_ns)
        msg.header.frame_id = part.frame_id
        self._publisher._publish(self.reconciliation_pub, msg, f"reconciliation of part {part.part_id}")
        verdict = VERDICT_NAMES.get(part.verdict, str(part.verdict)) if part.has_verdict else "no verdict"
        if finding.status is Status.OVERDUE:
            controller = self.controller
            stopped = controller is not None and controller.raise_stop_line(f"part {part.part_id} overdue")
            line = "stop-line raised" if stopped else "no stop-line could be raised (actuator not active)"
            self._publisher.alert(
                AlertRecord(
                    Alert.CRITICAL,
                    "RECONCILE_OVERDUE",
                    f"part {part.part_id} ({verdict}) had to go to the {part.lane} lane and has no reject event by its "
                    f"deadline: it may have left the line unremoved; {line}",
                    part.part_id,
                )
            )
        elif finding.status is Status.DUPLICATE:
            self._publisher.alert(
                AlertRecord(
                    Alert.ERROR,
                    "RECONCILE_DUPLICATE_EVENT",
                    f"part {part.part_id} ({verdict}): {finding.terminal_events} terminal reject events, expected one",
                    part.part_id,
                )
            )

    def _tick(self) -> None:
        self._reconcile_tick()
        controller = self.controller
        if controller is not None:
            now = time.monotonic_ns()
            controller.set_cell_problems(self.cell_health.problems(now))
            controller.set_cell_stop(self.cell_health.stop_requests(now))
        if self._pending_config is not None:
            self.config, self._pending_config = self._pending_config, None
            if controller is not None:
                try:
                    controller.reconfigure(self.config)
                except ValueError as exc:
                    self.get_logger().error(f"parameter change not applied: {exc}")
        if controller is not None:
            controller.tick()

    def _publish_diagnostics(self) -> None:
        controller = self.controller
        state = self.lifecycle_state
        values: dict[str, object] = {"state": state, "driver": self.settings.driver}
        if controller is None:
            level, message = diagnostics.WARN, f"{state}: parts are not ejected"
        else:
            health = controller.health()
            values.update(controller.snapshot())
            values["old_verdicts_ignored"] = self._old_verdicts
            if self.reconciler is not None:
                with self._reconcile_lock:
                    values["reconcile_open"] = self.reconciler.open_count
                    values.update({f"reconcile_{k}": v for k, v in sorted(self.reconciler.counts.items())})
            values.update({f"driver_{k}": v for k, v in health.values.items()})
            if not health.ok:
                level, message = diagnostics.ERROR, f"actuator fault: {health.message}"
            elif values.get("decision_stream_down"):
                level, message = diagnostics.ERROR, "no verdicts while parts are captured (watchdog tripped)"
            elif state != "active":
                level, message = diagnostics.WARN, f"{state}: parts are not ejected"
            else:
                level, message = diagnostics.OK, health.message
        status = diagnostics.status(f"{self.get_name()}: actuator", level, message, values, self.settings.driver)
        diagnostics.publish(self, self._diag_pub, [status])


def main() -> int:
    # The actuation thread shares the GIL with the executor thread. Python's default switch interval (5 ms)
    # lets a thread that was preempted while holding the GIL delay an edge by that much and more on a busy
    # machine; 0.5 ms cut the node's p99 timing error from ~20 ms to under 4 ms (bench/bench_reject.py).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return run(RejectActuator, threads=EXECUTOR_THREADS)


if __name__ == "__main__":
    raise SystemExit(main())
