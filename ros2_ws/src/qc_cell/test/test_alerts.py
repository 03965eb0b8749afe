"""qc_cell.ros.alerts: every node's alerts are built one way, named after the node (not its namespace)."""

from __future__ import annotations

import rclpy
from rclpy.context import Context

from qc_cell.ros import qos
from qc_cell.ros.alerts import MAX_MESSAGE_CHARS, AlertPublisher
from qc_cell.ros.time import to_ns
from qc_cell.testing.ros import ros_graph
from qc_interfaces.msg import Alert


def test_an_alert_carries_the_node_name_as_source_whatever_the_namespace():
    with ros_graph() as graph:
        node = graph.node("sensor_fusion", namespace="/plant1/cell3")
        alerts = AlertPublisher(node)
        received: list[Alert] = []
        graph.node("probe", namespace="/plant1/cell3").create_subscription(Alert, "alerts", received.append, qos.EVENTS)
        assert graph.spin_until(lambda: node.count_subscribers("alerts") > 0, 5.0)
        before_ns = node.get_clock().now().nanoseconds
        assert alerts.send(Alert.WARN, "SENSOR_STALE", "temperature silent", "p-7", log=True)
        assert alerts.send(Alert.INFO, "LONG", "x" * (MAX_MESSAGE_CHARS + 100))
        assert graph.spin_until(lambda: len(received) == 2, 5.0)
    stale, long = received
    assert (stale.source, stale.severity, stale.code, stale.message, stale.part_id) == (
        "sensor_fusion",
        Alert.WARN,
        "SENSOR_STALE",
        "temperature silent",
        "p-7",
    )
    assert to_ns(stale.header.stamp) >= before_ns
    assert len(long.message) == MAX_MESSAGE_CHARS, "cut to the cloud record's limit (alert.schema.json)"


def test_an_alert_after_shutdown_is_logged_not_raised():
    """A controller thread still reporting after Ctrl-C must not end the process with a traceback."""
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("reject_actuator", context=context)
    try:
        alerts = AlertPublisher(node)
        rclpy.try_shutdown(context=context)
        assert alerts.send(Alert.CRITICAL, "REJECT_SKIPPED", "part p-1 not removed", "p-1", log=True) is False
    finally:
        node.destroy_node()
