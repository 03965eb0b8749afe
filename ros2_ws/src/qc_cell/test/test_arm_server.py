"""robot_arm driver against the reference arm action server (real rclpy graph): the part is picked by its
deadline, and the arm's failures (gripper, reach, busy, absent) reach reject/event and alerts. Plus the
arm's motion model on its own."""

from __future__ import annotations

import time

import pytest
from rclpy.parameter import Parameter

from qc_cell.nodes.arm_server import EXECUTOR_THREADS, ArmServer
from qc_cell.nodes.reject_actuator import RejectActuator
from qc_cell.reject.arm_model import ArmPlan, ArmSpec, ReferenceArm
from qc_cell.ros import qos
from qc_cell.ros.arm_client import READY_HOLD_S, ActionArmTransport
from qc_cell.ros.time import from_ns, to_ns
from qc_cell.testing.ros import ros_graph
from qc_interfaces.msg import Alert, QualityDecision, RejectEvent

MS = 1_000_000
S = 1_000_000_000
FAST_ARM = [Parameter("approach_s", value=0.05), Parameter("pick_s", value=0.05), Parameter("place_s", value=0.05)]
# Pick point 300 mm downstream at 1000 mm/s: the arm must have the part 300 ms after capture.
ACTUATOR = [
    Parameter("driver", value="robot_arm"),
    Parameter("reject_distance_mm", value=300.0),
    Parameter("belt_speed_mm_s", value=1000.0),
    Parameter("late_tolerance_ms", value=100.0),
    Parameter("watchdog_timeout_s", value=0.0),
]


class Cell:
    def __init__(self, graph, arm: list[Parameter] | None, namespace: str = "") -> None:
        self.graph = graph
        self.arm = None
        if arm is not None:
            self.arm = graph.add(ArmServer(context=graph.context, parameter_overrides=arm, namespace=namespace))
        self.actuator = graph.add(
            RejectActuator(context=graph.context, parameter_overrides=ACTUATOR, namespace=namespace)
        )
        self.probe = graph.node("probe", namespace=namespace)
        self.decisions = self.probe.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)
        self.events: list[RejectEvent] = []
        self.alerts: list[Alert] = []
        self.probe.create_subscription(RejectEvent, "reject/event", self.events.append, qos.EVENTS)
        self.probe.create_subscription(Alert, "alerts", self.alerts.append, qos.EVENTS)
        self.actuator.trigger_configure()
        self.actuator.trigger_activate()
        assert graph.spin_until(lambda: self.decisions.get_subscription_count() >= 1, timeout=10.0)
        # Wait until the graph agrees on whether an arm server exists (a previous test's may linger briefly).
        driver = self.actuator.controller.driver
        present = self.arm is not None
        assert graph.spin_until(lambda: driver.health().ok == present, timeout=10.0), driver.health()

    def reject(self, part_id: str, capture_ns: int) -> None:
        msg = QualityDecision(part_id=part_id, verdict=QualityDecision.DEFECTIVE)
        msg.header.stamp = from_ns(capture_ns)
        self.decisions.publish(msg)

    def wait_events(self, count: int, timeout: float = 10.0) -> list[RejectEvent]:
        assert self.graph.spin_until(lambda: len(self.events) >= count, timeout=timeout), self.events
        return self.events


def test_the_arm_picks_the_part_by_its_deadline_and_can_be_made_to_fail():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        cell = Cell(graph, FAST_ARM)
        capture = time.time_ns()
        cell.reject("p1", capture)
        (event,) = cell.wait_events(1)
        assert (event.outcome, event.method, event.lane) == (RejectEvent.OUTCOME_DONE, "robot_arm", "reject")
        planned = to_ns(event.planned_time)
        assert planned == capture + 300 * MS, "deadline = arrival at the pick point"
        # The pick completes at the deadline; its feedback reaches the actuator a little later.
        assert planned - 20 * MS <= to_ns(event.actual_time) <= planned + 500 * MS
        assert event.lateness_ms == pytest.approx((to_ns(event.actual_time) - planned) / MS, abs=1e-3)
        assert "picked and placed" in event.message

        assert cell.arm.set_parameters([Parameter("force_failure", value=True)])[0].successful
        cell.reject("p2", time.time_ns())
        failed = cell.wait_events(2)[1]
        assert (failed.part_id, failed.outcome) == ("p2", RejectEvent.OUTCOME_FAILED)
        assert "pick failed: gripper fault" in failed.message
        assert failed.actual_time.sec == 0 and failed.actual_time.nanosec == 0
        assert graph.spin_until(
            lambda: any(a.code == "REJECT_FAILED" and a.part_id == "p2" for a in cell.alerts), timeout=5.0
        )
        assert next(a for a in cell.alerts if a.code == "REJECT_FAILED").severity == Alert.CRITICAL


def test_a_pick_point_out_of_reach_fails_with_the_reason():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        cell = Cell(graph, [*FAST_ARM, Parameter("reach_max_m", value=0.25)])
        cell.reject("p1", time.time_ns())
        (event,) = cell.wait_events(1)
        assert event.outcome == RejectEvent.OUTCOME_FAILED
        assert "outside the arm's reach" in event.message


def test_a_busy_arm_fails_the_part_it_cannot_reach_in_time():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        cell = Cell(graph, [*FAST_ARM, Parameter("place_s", value=1.0)])
        capture = time.time_ns()
        cell.reject("first", capture)
        cell.reject("second", capture + 50 * MS)  # arrives while the arm is still placing the first
        events = {e.part_id: e for e in cell.wait_events(2)}
        assert events["first"].outcome == RejectEvent.OUTCOME_DONE
        assert events["second"].outcome == RejectEvent.OUTCOME_FAILED
        assert "busy" in events["second"].message


def test_without_an_arm_server_parts_fail_and_the_fault_is_alerted():
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        # Its own namespace: an arm server of an earlier test may linger in discovery for a while.
        cell = Cell(graph, None, namespace="cell_without_arm")
        cell.reject("p1", time.time_ns())
        (event,) = cell.wait_events(1)
        assert event.outcome == RejectEvent.OUTCOME_FAILED
        assert "action server is not available" in event.message
        assert graph.spin_until(lambda: "REJECT_DRIVER_FAULT" in [a.code for a in cell.alerts], timeout=5.0)


def test_a_server_missing_for_a_moment_still_counts_until_it_has_been_gone_a_while():
    class Flickering:  # the action client's view of the graph, scripted
        def __init__(self) -> None:
            self.answers = [True, False, False, False]

        def server_is_ready(self) -> bool:
            return self.answers.pop(0)

    now = [100.0]
    with ros_graph() as graph:
        transport = ActionArmTransport(graph.node("arm_client", namespace="no_arm_here"), clock=lambda: now[0])
        assert not transport.ready(), "never seen: not ready"
        transport._client = Flickering()
        assert transport.ready()
        now[0] += 0.01
        assert transport.ready(), "missing 10 ms after it was seen: a flicker, still ready"
        now[0] += READY_HOLD_S
        assert not transport.ready(), "missing for longer: gone"


# ------------------------------------------------------------------ motion model


def test_the_pick_is_planned_to_end_at_the_deadline():
    arm = ReferenceArm(ArmSpec(approach_s=0.3, pick_s=0.1, place_s=0.5))
    plan = arm.plan(deadline_ns=10 * S, now_ns=9 * S)
    assert plan == ArmPlan(9 * S + 300 * MS, 10 * S - 100 * MS, 10 * S, 10 * S + 500 * MS)
    short = arm.plan(deadline_ns=9 * S + 350 * MS, now_ns=9 * S)
    assert short == "cannot reach the pick point in time: 50 ms short of the deadline"
    assert arm.check_goal(0.5, 10 * S, 10 * S + 1) == "deadline already passed 0.0 ms ago"
    assert arm.check_goal(0.5, 10 * S, 9 * S) is None


def test_failures_follow_the_probability_and_are_reproducible_with_a_seed():
    spec = ArmSpec(failure_probability=0.3)
    draws = [ReferenceArm(spec, seed=7).pick_fails() is not None for _ in range(1)]
    arm = ReferenceArm(spec, seed=7)
    failures = sum(arm.pick_fails() is not None for _ in range(2000))
    assert 500 <= failures <= 700, f"{failures} failures in 2000 picks at p=0.3"
    assert [ReferenceArm(spec, seed=7).pick_fails() is not None for _ in range(1)] == draws
    assert ReferenceArm(ArmSpec(force_failure=True)).pick_fails() == "gripper fault (force_failure is set)"
    with pytest.raises(ValueError, match="failure_probability"):
        ReferenceArm(ArmSpec(failure_probability=1.5))
