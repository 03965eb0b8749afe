"""reject_actuator node on a real rclpy graph: lifecycle (through the lifecycle services, as the runner
does it, and through transitions), verdict -> reject/event with planned times, markers, alerts,
diagnostics, the watchdog, parameters."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from visualization_msgs.msg import MarkerArray

from qc_cell.bringup import params_file
from qc_cell.bringup.lifecycle_driver import bring_to_active
from qc_cell.nodes.arm_server import ArmServer
from qc_cell.nodes.reject_actuator import EXECUTOR_THREADS, RejectActuator
from qc_cell.reject import records
from qc_cell.reject.journal import EjectionJournal
from qc_cell.reject.records import Part
from qc_cell.ros import qos
from qc_cell.ros.params import ParameterError
from qc_cell.ros.time import from_ns, to_ns
from qc_cell.testing.ros import ros_graph
from qc_interfaces.msg import Alert, PartTrigger, QualityDecision, Reconciliation, RejectEvent

MS = 1_000_000
REPO = Path(__file__).resolve().parents[4]
# 100 mm at 1000 mm/s, latency 10 ms, pulse 20 ms: command = capture + 80 ms.
GEOMETRY = [
    Parameter("reject_distance_mm", value=100.0),
    Parameter("belt_speed_mm_s", value=1000.0),
    Parameter("actuator_latency_ms", value=10.0),
    Parameter("pulse_width_ms", value=20.0),
    Parameter("late_tolerance_ms", value=200.0),
    Parameter("watchdog_timeout_s", value=0.0),
]


class Probe:
    def __init__(self, graph, namespace: str = "") -> None:
        self.node = graph.node("probe", namespace=namespace)
        self.decisions = self.node.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)
        self.parts = self.node.create_publisher(PartTrigger, "camera/parts", qos.EVENTS)
        self.events: list[RejectEvent] = []
        self.alerts: list[Alert] = []
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(RejectEvent, "reject/event", self.events.append, qos.EVENTS)
        self.node.create_subscription(Alert, "alerts", self.alerts.append, qos.EVENTS)
        self.node.create_subscription(MarkerArray, "reject/markers", self.markers.append, qos.EVENTS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, qos.DIAGNOSTICS)

    def decide(self, part_id: str, verdict: int, capture_ns: int, encoder: int = -1, decided_ns: int = 0) -> None:
        msg = QualityDecision(part_id=part_id, verdict=verdict, encoder_count=encoder)
        msg.header.stamp = from_ns(capture_ns)
        msg.decision_stamp = from_ns(decided_ns)
        msg.header.frame_id = "camera"
        self.decisions.publish(msg)

    def part(self, part_id: str, capture_ns: int, encoder: int = -1) -> None:
        msg = PartTrigger(part_id=part_id, encoder_count=encoder)
        msg.header.stamp = from_ns(capture_ns)
        self.parts.publish(msg)

    def codes(self) -> list[str]:
        return [a.code for a in self.alerts]


def _actuator(graph, *overrides: Parameter, namespace: str = "") -> RejectActuator:
    node = RejectActuator(context=graph.context, parameter_overrides=[*GEOMETRY, *overrides], namespace=namespace)
    return graph.add(node)


def _connected(graph, probe: Probe) -> None:
    assert graph.spin_until(
        lambda: probe.decisions.get_subscription_count() >= 1 and probe.parts.get_subscription_count() >= 1,
        timeout=10.0,
    ), "the actuator never subscribed"


def test_core_constants_mirror_the_messages():
    assert (records.NORMAL, records.REINSPECT, records.DEFECTIVE, records.NOT_INSPECTED) == (
        QualityDecision.NORMAL,
        QualityDecision.REINSPECT,
        QualityDecision.DEFECTIVE,
        QualityDecision.NOT_INSPECTED,
    )
    assert (records.DONE, records.LATE, records.FAILED, records.SKIPPED, records.UNCONFIRMED, records.MISSED) == (
        RejectEvent.OUTCOME_DONE,
        RejectEvent.OUTCOME_LATE,
        RejectEvent.OUTCOME_FAILED,
        RejectEvent.OUTCOME_SKIPPED,
        RejectEvent.OUTCOME_UNCONFIRMED,
        RejectEvent.OUTCOME_MISSED,
    )
    assert (records.INFO, records.WARN, records.ERROR, records.CRITICAL) == (
        Alert.INFO,
        Alert.WARN,
        Alert.ERROR,
        Alert.CRITICAL,
    )


def test_activated_through_lifecycle_services_it_ejects_and_shows_markers():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(graph, namespace="services_test")  # no clash with nodes of other tests
        probe = Probe(graph, namespace="services_test")
        spinning = threading.Event()
        spinning.set()

        def spin() -> None:  # bring_to_active blocks on service calls: the graph spins in a thread meanwhile
            while spinning.is_set():
                graph.executor.spin_once(timeout_sec=0.05)

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        try:
            bring_to_active(probe.node, "/services_test/reject_actuator", timeout_s=20.0)
            deadline = time.monotonic() + 10.0
            while probe.decisions.get_subscription_count() < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            capture = time.time_ns()
            probe.decide("bad", QualityDecision.DEFECTIVE, capture)
            probe.decide("good", QualityDecision.NORMAL, capture)
            probe.decide("bad", QualityDecision.DEFECTIVE, capture)  # duplicate
            deadline = time.monotonic() + 10.0
            while (len(probe.events) < 2 or not probe.markers) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            spinning.clear()
            spinner.join(5.0)
        assert node.controller is not None and node.controller.armed
        events = sorted(probe.events, key=lambda e: e.outcome)
        assert [(e.part_id, e.outcome) for e in events] == [
            ("bad", RejectEvent.OUTCOME_DONE),
            ("bad", RejectEvent.OUTCOME_SKIPPED),
        ], "one ejection, one duplicate, nothing for the good part"
        done = events[0]
        assert to_ns(done.planned_time) == capture + 80 * MS
        assert to_ns(done.actual_time) >= to_ns(done.planned_time)
        assert (done.method, done.lane, done.header.frame_id, to_ns(done.header.stamp)) == (
            "sim",
            "reject",
            "camera",
            capture,
        )
        sphere, label = probe.markers[0].markers
        assert sphere.header.frame_id == "conveyor" and sphere.pose.position.x == pytest.approx(0.1)
        assert "bad DONE" in label.text


def test_lifecycle_transitions_acquire_arm_disarm_and_release():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(graph)
        probe = Probe(graph)
        _connected(graph, probe)
        # Unconfigured: an ejectable part is reported, not silently dropped.
        probe.decide("early", QualityDecision.DEFECTIVE, time.time_ns())
        assert graph.spin_until(lambda: len(probe.events) == 1, timeout=5.0)
        assert probe.events[0].outcome == RejectEvent.OUTCOME_SKIPPED
        assert "not configured" in probe.events[0].message
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        driver = node.controller.driver
        assert driver.health().ok, "configure opens the driver"
        probe.decide("inactive", QualityDecision.NOT_INSPECTED, time.time_ns())
        assert graph.spin_until(lambda: len(probe.events) == 2, timeout=5.0)
        assert "not active" in probe.events[1].message
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        probe.decide("far", QualityDecision.DEFECTIVE, time.time_ns() + 5_000 * MS)  # pending when deactivated
        assert graph.spin_until(lambda: node.controller.snapshot()["pending_actuations"] == 1, timeout=5.0)
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert graph.spin_until(lambda: len(probe.events) == 3, timeout=5.0)
        assert "deactivated before the part reached it" in probe.events[2].message
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.controller is None and not driver.health().ok, "cleanup releases the driver"
        assert graph.spin_until(lambda: probe.codes().count("REJECT_SKIPPED") == 3, timeout=5.0), probe.codes()
        assert all(a.severity == Alert.CRITICAL for a in probe.alerts if a.code == "REJECT_SKIPPED")


def test_a_cloud_verdict_on_quality_cloud_verdict_moves_a_diverted_part_to_the_reject_lane():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(
            graph,
            Parameter("divert_distance_mm", value=600.0),
            Parameter("divert_verdicts", value=["REINSPECT"]),
        )
        probe = Probe(graph)
        cloud = probe.node.create_publisher(QualityDecision, "quality/cloud_verdict", qos.EVENTS)
        _connected(graph, probe)
        assert graph.spin_until(lambda: cloud.get_subscription_count() >= 1, timeout=10.0), "no cloud_verdict sub"
        node.trigger_configure()
        node.trigger_activate()
        capture = time.time_ns() + 300 * MS  # reject command at +380 ms, divert command at +880 ms
        probe.decide("p1", QualityDecision.REINSPECT, capture)
        assert graph.spin_until(lambda: node.controller.snapshot()["pending_actuations"] == 1, timeout=5.0)
        msg = QualityDecision(part_id="p1", verdict=QualityDecision.DEFECTIVE, reasons=["cloud_verify"])
        msg.header.stamp = from_ns(capture)
        cloud.publish(msg)
        assert graph.spin_until(lambda: len(probe.events) == 1, timeout=5.0), probe.events
        (event,) = probe.events
        assert (event.outcome, event.lane, event.verdict) == (
            RejectEvent.OUTCOME_DONE,
            "reject",
            QualityDecision.DEFECTIVE,
        )
        assert to_ns(event.planned_time) == capture + 80 * MS
        time.sleep(0.7)
        graph.spin_until(lambda: False, timeout=0.2)
        assert len(probe.events) == 1, "the divert pulse was cancelled: no second event"
        assert node.controller.snapshot()["cloud_verdicts_applied"] == 1


def test_a_jammed_pusher_drill_gives_unconfirmed_a_critical_alert_and_the_stop_line():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(
            graph,
            Parameter("confirm_window_ms", value=60.0),
            Parameter("missed_response", value="stop_line"),
            Parameter("tick_period_s", value=0.02),
        )
        probe = Probe(graph)
        _connected(graph, probe)
        node.trigger_configure()
        node.trigger_activate()
        probe.decide("seen", QualityDecision.DEFECTIVE, time.time_ns())
        assert graph.spin_until(lambda: len(probe.events) == 1, timeout=5.0), probe.events
        assert probe.events[0].outcome == RejectEvent.OUTCOME_DONE and "confirmed" in probe.events[0].message
        assert node.set_parameters([Parameter("sim_faults", value="jammed")])[0].successful
        probe.decide("stuck", QualityDecision.DEFECTIVE, time.time_ns())
        assert graph.spin_until(lambda: len(probe.events) == 2, timeout=5.0), probe.events
        assert (probe.events[1].part_id, probe.events[1].outcome) == ("stuck", RejectEvent.OUTCOME_UNCONFIRMED)
        assert graph.spin_until(lambda: "REJECT_UNCONFIRMED" in probe.codes(), timeout=5.0), probe.codes()
        alert = next(a for a in probe.alerts if a.code == "REJECT_UNCONFIRMED")
        assert (alert.severity, alert.part_id) == (Alert.CRITICAL, "stuck")

        # The controller thread raises the stop-line right after it publishes the alert: wait for the edge.
        def stop_edges() -> list:
            return [e for e in node.controller.driver.edges if e.channel == records.STOP_LINE]

        assert graph.spin_until(lambda: bool(stop_edges()), timeout=5.0), "the stop-line was raised"
        assert stop_edges()[0].on, "the stop-line's first edge raises it"
        refused = node.set_parameters([Parameter("sim_faults", value="gremlins")])[0]
        assert not refused.successful and "gremlins" in refused.reason


def test_a_restarting_journalled_actuator_holds_verdicts_until_active_then_ejects_or_reports_missed(tmp_path):
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(
            graph,
            Parameter("journal_path", value=str(tmp_path / "journal.jsonl")),
            Parameter("missed_response", value="stop_line"),
        )
        probe = Probe(graph)
        # The decision node's publisher (PART_RECORDS: transient local, what a journalled actuator subscribes).
        probe.decisions = probe.node.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)
        findings: list[Reconciliation] = []
        probe.node.create_subscription(Reconciliation, "reject/reconciliation", findings.append, qos.EVENTS)
        _connected(graph, probe)
        now = time.time_ns()
        probe.decide("in_time", QualityDecision.DEFECTIVE, now + 2_000 * MS)  # its command is 2.08 s away
        probe.decide("gone", QualityDecision.DEFECTIVE, now - 1_000 * MS)  # passed while the actuator was down
        graph.spin_until(lambda: False, timeout=0.5)
        assert probe.events == [], "held, not reported SKIPPED by an actuator that cannot act yet"
        node.trigger_configure()
        node.trigger_activate()
        assert graph.spin_until(lambda: len(probe.events) == 1, timeout=5.0), probe.events
        assert (probe.events[0].part_id, probe.events[0].outcome) == ("gone", RejectEvent.OUTCOME_MISSED)
        assert graph.spin_until(lambda: "REJECT_MISSED" in probe.codes(), timeout=5.0), probe.codes()
        assert graph.spin_until(lambda: len(probe.events) == 2, timeout=5.0), probe.events
        assert (probe.events[1].part_id, probe.events[1].outcome) == ("in_time", RejectEvent.OUTCOME_DONE)
        # One CRITICAL for the part that passed during the outage (its MISSED), not RECONCILE_OVERDUE before it (its
        # deadline had passed before the actuator could act) and a RECONCILE_DUPLICATE_EVENT after.
        assert graph.spin_until(lambda: {"gone", "in_time"} <= {f.part_id for f in findings}, timeout=5.0), findings
        graph.spin_until(lambda: False, timeout=0.3)
        assert [(f.part_id, f.status, f.outcome) for f in findings if f.part_id == "gone"] == [
            ("gone", Reconciliation.RESOLVED, RejectEvent.OUTCOME_MISSED)
        ]
        gone_alerts = [(a.code, a.severity) for a in probe.alerts if a.part_id == "gone"]
        assert gone_alerts == [("REJECT_MISSED", Alert.CRITICAL)], gone_alerts


def test_a_verdict_replayed_for_a_part_ejected_before_the_restart_is_neither_acted_on_nor_overdue(tmp_path):
    """The decision node replays its history to a restarted actuator before it is configured (no journal to ask
    yet): the reconciler must not call a part the journal closed before the restart overdue."""
    journal_path = tmp_path / "journal.jsonl"
    before = time.time_ns() - 2_000 * MS
    journal = EjectionJournal(journal_path)
    journal.planned(Part("old", before, -1, "camera"), QualityDecision.DEFECTIVE, "reject")
    journal.done("old")
    journal.close()
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(
            graph,
            Parameter("journal_path", value=str(journal_path)),
            Parameter("reconcile_grace_ms", value=100.0),
        )
        probe = Probe(graph)
        probe.decisions = probe.node.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)
        findings: list[Reconciliation] = []
        probe.node.create_subscription(Reconciliation, "reject/reconciliation", findings.append, qos.EVENTS)
        _connected(graph, probe)
        probe.decide("old", QualityDecision.DEFECTIVE, before, decided_ns=before + 50 * MS)
        probe.decide("gone", QualityDecision.DEFECTIVE, before + 100 * MS, decided_ns=before + 150 * MS)
        graph.spin_until(lambda: False, timeout=0.5)
        node.trigger_configure()
        node.trigger_activate()
        assert graph.spin_until(lambda: any(f.part_id == "gone" for f in findings), timeout=5.0), findings
        graph.spin_until(lambda: False, timeout=0.6)  # the grace after arming (0.1 s) passes
        assert [e.part_id for e in probe.events] == ["gone"], "the part ejected before the restart is not acted on"
        assert [(f.part_id, f.status) for f in findings] == [("gone", Reconciliation.RESOLVED)], findings
        assert not [a for a in probe.alerts if a.part_id == "old"], [(a.code, a.part_id) for a in probe.alerts]
        assert node.reconciler is not None and node.reconciler.counts["settled_before"] == 1


def test_gpio_driver_without_jetson_gpio_fails_configure_cleanly():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(graph, Parameter("driver", value="gpio"))
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.controller is None


def test_watchdog_fail_safe_and_diagnostics():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(
            graph,
            Parameter("watchdog_timeout_s", value=0.15),
            Parameter("reject_distance_mm", value=800.0),
            Parameter("diagnostics_period_s", value=0.2),
        )
        probe = Probe(graph)
        _connected(graph, probe)
        node.trigger_configure()
        node.trigger_activate()
        capture = time.time_ns()
        probe.part("lost", capture)  # the decision node never answers for it
        assert graph.spin_until(lambda: len(probe.events) == 1, timeout=5.0), probe.events
        event = probe.events[0]
        assert (event.part_id, event.verdict, event.outcome) == (
            "lost",
            QualityDecision.NOT_INSPECTED,
            RejectEvent.OUTCOME_DONE,
        )
        assert to_ns(event.planned_time) == capture + (800 - 10 - 10) * MS
        assert "DECISION_STREAM_DOWN" in probe.codes()

        def stream_down_reported() -> bool:
            return any(
                status.name == "reject_actuator: actuator"
                and status.level == bytes([2])
                and {"decision_stream_down": "True", "done": "1"}.items()
                <= {v.key: v.value for v in status.values}.items()
                for array in probe.diagnostics
                for status in array.status
            )

        assert graph.spin_until(stream_down_reported, timeout=5.0), "diagnostics never showed the tripped watchdog"


def test_runtime_parameter_changes_are_validated_and_applied():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(graph)
        probe = Probe(graph)
        _connected(graph, probe)
        node.trigger_configure()
        node.trigger_activate()
        result = node.set_parameters([Parameter("belt_speed_mm_s", value=500.0)])[0]
        assert result.successful
        refused = node.set_parameters([Parameter("driver", value="modbus")])[0]
        assert not refused.successful, "the driver is read-only"
        graph.spin_for(0.2)  # the change is applied on the next tick
        capture = time.time_ns()
        probe.decide("p", QualityDecision.DEFECTIVE, capture)
        assert graph.spin_until(lambda: len(probe.events) == 1, timeout=5.0)
        assert to_ns(probe.events[0].planned_time) == capture + (200 - 10 - 10) * MS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([Parameter("divert_verdicts", value=["REINSPECT"])], "no divert lane"),
        (
            [
                Parameter("driver", value="gpio"),
                Parameter("divert_distance_mm", value=900.0),
                Parameter("divert_verdicts", value=["REINSPECT"]),
            ],
            r"no output for \['divert'\]",
        ),
        ([Parameter("eject_verdicts", value=["DEFECTIVE", "SCRATCHED"])], "unknown verdicts"),
        ([Parameter("driver", value="plc")], "must be one of"),
        ([Parameter("modbus_reject_address", value=-1), Parameter("driver", value="modbus")], "no reject output"),
        ([Parameter("use_sim_time", value=True)], "use_sim_time"),
    ],
)
def test_bad_parameters_fail_fast_with_a_clear_message(overrides, message):
    with ros_graph(threads=EXECUTOR_THREADS) as graph, pytest.raises(ParameterError, match=message):
        RejectActuator(context=graph.context, parameter_overrides=[*GEOMETRY, *overrides])


@pytest.mark.parametrize("name", ["demo.yaml", "jetson.yaml", "cell.yaml"])
def test_shipped_params_files_build_the_reject_nodes(name):
    """Every reject_actuator and arm_server value in the params files is declared and valid (no hardware used)."""
    params = params_file.load(REPO / "params" / name)

    def overrides(node_name: str) -> list[Parameter]:
        return [Parameter(key, value=value) for key, value in params[node_name].items()]

    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        nodes = {
            "reject_actuator": graph.add(
                RejectActuator(context=graph.context, parameter_overrides=overrides("reject_actuator"))
            ),
            "arm_server": graph.add(ArmServer(context=graph.context, parameter_overrides=overrides("arm_server"))),
        }
        for node_name, node in nodes.items():
            undeclared = [k for k in params[node_name] if not node.has_parameter(k)]
            assert not undeclared, f"{name}: {node_name} does not declare {undeclared}"
        expected = {"demo.yaml": "sim", "jetson.yaml": "gpio", "cell.yaml": "modbus"}[name]
        assert nodes["reject_actuator"].settings.driver == expected


def test_the_reconciler_reports_each_part_and_alerts_a_part_without_its_reject_event():

    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = _actuator(
            graph, Parameter("watchdog_timeout_s", value=0.1), Parameter("reconcile_grace_ms", value=100.0)
        )
        probe = Probe(graph)
        findings: list[Reconciliation] = []
        probe.node.create_subscription(Reconciliation, "reject/reconciliation", findings.append, qos.EVENTS)
        _connected(graph, probe)
        # Registered while the actuator is not configured: nothing will act on it, and nobody said so yet.
        capture = time.time_ns()
        probe.part("orphan", capture)
        assert graph.spin_until(lambda: "RECONCILE_OVERDUE" in probe.codes(), timeout=5.0), probe.codes()
        alert = next(a for a in probe.alerts if a.code == "RECONCILE_OVERDUE")
        assert (alert.severity, alert.part_id) == (Alert.CRITICAL, "orphan")
        assert graph.spin_until(lambda: len(findings) == 1, timeout=5.0)
        overdue = findings[0]
        assert (overdue.part_id, overdue.status, overdue.outcome, overdue.has_verdict) == (
            "orphan",
            Reconciliation.OVERDUE,
            -1,
            False,
        )
        # Due at capture + travel (100 ms) + latency, pulse, late tolerance (10 + 20 + 200 ms) + grace (100 ms).
        assert to_ns(overdue.deadline) - capture == pytest.approx(430 * MS, abs=5 * MS)
        node.trigger_configure()
        node.trigger_activate()
        probe.decide("bad", QualityDecision.DEFECTIVE, time.time_ns())
        probe.decide("good", QualityDecision.NORMAL, time.time_ns())
        assert graph.spin_until(lambda: len(findings) == 2, timeout=5.0), findings
        resolved = findings[1]
        assert (resolved.part_id, resolved.status, resolved.outcome, resolved.terminal_events) == (
            "bad",
            Reconciliation.RESOLVED,
            RejectEvent.OUTCOME_DONE,
            1,
        )
        graph.spin_until(lambda: False, timeout=0.6)  # the NORMAL part needs nothing: never reported overdue
        assert [f.part_id for f in findings] == ["orphan", "bad"]
        assert node.reconciler is not None and node.reconciler.counts["released"] == 0
