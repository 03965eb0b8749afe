"""A publisher whose QoS cannot match a subscription of the cell is reported, not silently ignored: every node's
subscriptions (qc_cell.ros.subscriptions) turn the middleware's incompatible-QoS event into an alert that names the
topic and the policy, and a `<node>: subscriptions` status on /diagnostics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from qc_cell.nodes.camera_driver import CameraDriver
from qc_cell.nodes.cloud_bridge import CloudBridgeNode
from qc_cell.nodes.decision import DecisionNode
from qc_cell.nodes.inference import InferenceNode
from qc_cell.nodes.reject_actuator import RejectActuator
from qc_cell.ros import qos, subscriptions
from qc_cell.testing.ros import Graph, ros_graph
from qc_interfaces.msg import Alert, CellKpi, InspectionResult, PartFrame, PartTrigger, QualityDecision

# What a user's own node might publish with: verdicts volatile (qc_cell.ros.qos.EVENTS; the bridge asks transient
# local, for the verdicts it missed), or best effort (every per-part record of the cell is reliable).
VOLATILE = qos.EVENTS
BEST_EFFORT = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


@dataclass
class Watcher:
    """The alerts and the `subscriptions` statuses of the node under test."""

    node_name: str
    alerts: list[Alert] = field(default_factory=list)
    statuses: list[DiagnosticStatus] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.status_name = f"{self.node_name}: subscriptions"

    def attach(self, probe: Node) -> None:
        probe.create_subscription(Alert, "alerts", self.alerts.append, qos.EVENTS)
        probe.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.DIAGNOSTICS)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        self.statuses.extend(s for s in msg.status if s.name == self.status_name)

    def qos_alerts(self) -> list[Alert]:
        return [a for a in self.alerts if a.code == subscriptions.ALERT_CODE]


def _bridge(graph: Graph, tmp_path: Path) -> Node:
    params = {
        "broker_url": "mqtt://127.0.0.1:1",  # no broker: the bridge stores and retries, its subscriptions work
        "outbox_path": str(tmp_path / "outbox.sqlite3"),
        "reconnect_min_s": 1,
        "reconnect_max_s": 1,
    }
    return CloudBridgeNode(
        context=graph.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]
    )


def _reject(graph: Graph, tmp_path: Path) -> Node:
    return RejectActuator(context=graph.context, parameter_overrides=[Parameter("watchdog_timeout_s", value=0.0)])


def _decision(graph: Graph, tmp_path: Path) -> Node:
    return DecisionNode(context=graph.context)


def _inference(graph: Graph, tmp_path: Path) -> Node:
    overrides = [Parameter("backend", value="onnxruntime"), Parameter("threads", value=1)]
    return InferenceNode(context=graph.context, parameter_overrides=overrides)


def _camera(graph: Graph, tmp_path: Path) -> Node:
    params = {"source": "synthetic", "mode": "triggered", "state_dir": str(tmp_path / "state")}
    return CameraDriver(context=graph.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def _expect_alert(graph: Graph, watcher: Watcher, topic: str, policy: str) -> Alert:
    assert graph.spin_until(lambda: bool(watcher.qos_alerts()), 10.0), (
        f"no {subscriptions.ALERT_CODE} alert from {watcher.node_name}; alerts: {[a.code for a in watcher.alerts]}"
    )
    alert = watcher.qos_alerts()[0]
    assert (alert.severity, alert.source) == (Alert.ERROR, watcher.node_name)
    assert f"/{topic} " in alert.message and f"policy {policy}" in alert.message, alert.message
    return alert


def test_volatile_verdict_publisher_against_the_bridge_names_topic_policy_and_publisher(tmp_path, monkeypatch):
    monkeypatch.setattr(subscriptions, "CLEAR_AFTER_S", 0.5)
    with ros_graph() as graph:
        graph.add(_bridge(graph, tmp_path))
        watcher = Watcher("cloud_bridge")
        watcher.attach(graph.node("probe"))
        user_node = graph.node("my_decision")
        user_pub = user_node.create_publisher(QualityDecision, "quality/decision", VOLATILE)

        alert = _expect_alert(graph, watcher, "quality/decision", "DURABILITY")
        assert "asks TRANSIENT_LOCAL" in alert.message, "what the subscription wants"
        assert "/my_decision" in alert.message, "which publisher is at fault"
        assert graph.spin_until(lambda: bool(watcher.statuses), 5.0), "no subscriptions status on /diagnostics"
        status = watcher.statuses[-1]
        assert status.level == DiagnosticStatus.ERROR and "/quality/decision (DURABILITY)" in status.message

        # The offending publisher goes away: the status turns OK (once), and the alert is not repeated.
        user_node.destroy_publisher(user_pub)
        assert graph.spin_until(lambda: watcher.statuses[-1].level == DiagnosticStatus.OK, 10.0), [
            s.message for s in watcher.statuses
        ]
        assert len(watcher.qos_alerts()) == 1


def test_compatible_publishers_raise_nothing_and_a_best_effort_one_is_reported_by_the_reject_actuator(tmp_path):
    with ros_graph() as graph:
        node = graph.add(_reject(graph, tmp_path))
        watcher = Watcher("reject_actuator")
        probe = graph.node("probe")
        watcher.attach(probe)
        # The decision node's publisher (transient local) matches the actuator's volatile subscription.
        decisions = probe.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)
        parts = probe.create_publisher(PartTrigger, "camera/parts", qos.EVENTS)
        assert graph.spin_until(
            lambda: decisions.get_subscription_count() >= 1 and parts.get_subscription_count() >= 1, 10.0
        )
        graph.spin_for(0.5)
        assert watcher.qos_alerts() == [] and watcher.statuses == [], "compatible publishers: nothing to report"

        graph.node("my_decision").create_publisher(QualityDecision, "quality/decision", BEST_EFFORT)
        alert = _expect_alert(graph, watcher, "quality/decision", "RELIABILITY")
        assert "asks RELIABLE" in alert.message
        assert node.count_publishers("quality/decision") == 2, "the graph shows it; the middleware never connects it"


# Every node of the cell with a reliable subscription: a best-effort publisher on it is reported by that node.
NODES: list[tuple[str, Callable[[Graph, Path], Node], type, str]] = [
    ("decision", _decision, InspectionResult, "inspection/result"),
    ("inference", _inference, PartFrame, "camera/frames"),
    ("camera_driver", _camera, PartTrigger, "camera/trigger"),
    ("cloud_bridge", _bridge, CellKpi, "quality/kpi"),
]


@pytest.mark.parametrize(("name", "factory", "msg_type", "topic"), NODES, ids=[n[0] for n in NODES])
def test_every_node_reports_a_best_effort_publisher_on_a_reliable_topic(tmp_path, name, factory, msg_type, topic):
    with ros_graph() as graph:
        graph.add(factory(graph, tmp_path))
        watcher = Watcher(name)
        watcher.attach(graph.node("probe"))
        graph.node("my_node").create_publisher(msg_type, topic, BEST_EFFORT)
        _expect_alert(graph, watcher, topic, "RELIABILITY")
