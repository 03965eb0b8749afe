"""Build diagnostic_msgs/DiagnosticArray messages for /diagnostics (shown by rqt_robot_monitor)."""

from __future__ import annotations

from collections.abc import Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from qc_cell.ros import qos

OK = DiagnosticStatus.OK
WARN = DiagnosticStatus.WARN
ERROR = DiagnosticStatus.ERROR
STALE = DiagnosticStatus.STALE


def status(
    name: str, level: int | bytes, message: str, values: Mapping[str, object], hardware_id: str = ""
) -> DiagnosticStatus:
    """level: one of OK/WARN/ERROR/STALE (bytes, as the message constants are) or the plain int 0..3."""
    return DiagnosticStatus(
        level=level if isinstance(level, bytes) else bytes([level]),
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()],
    )


def create_publisher(node: Node):
    """/diagnostics is absolute on purpose: rqt_robot_monitor and the aggregator read it there."""
    return node.create_publisher(DiagnosticArray, "/diagnostics", qos.DIAGNOSTICS)


def publish(node: Node, publisher, statuses: list[DiagnosticStatus]) -> None:
    msg = DiagnosticArray()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.status = statuses
    publisher.publish(msg)
