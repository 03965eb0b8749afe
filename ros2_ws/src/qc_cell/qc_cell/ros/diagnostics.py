"""Build diagnostic_msgs/DiagnosticArray messages for /diagnostics (shown by rqt_robot_monitor).

Every node's first status also says how many publishers each of its subscriptions to its own cell's topics has
matched (`inputs_matched`): the activator releases the camera only once every node has matched the publishers the
graph shows, so that no early part is published before its consumers can receive it (qc_cell.bringup.activator).
"""

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


INPUTS_KEY = "inputs_matched"


def matched_inputs(node: Node) -> dict[str, int] | None:
    """Publishers matched by the node's subscriptions to the topics under its namespace (the least, where two
    subscriptions share a topic), or None where rclpy cannot tell (Humble's Subscription has no
    get_publisher_count)."""
    prefix = node.get_namespace().rstrip("/") + "/"
    counts: dict[str, int] = {}
    for subscription in list(node.subscriptions):
        topic = subscription.topic_name
        if not topic.startswith(prefix):
            continue
        count = getattr(subscription, "get_publisher_count", None)
        if count is None:
            return None
        counts[topic] = min(count(), counts.get(topic, 1 << 30))
    return counts


def format_inputs(counts: Mapping[str, int]) -> str:
    return ",".join(f"{topic}={count}" for topic, count in sorted(counts.items()))


def parse_inputs(text: str) -> dict[str, int]:
    """format_inputs' text back; ValueError for anything else."""
    return {topic: int(count) for topic, count in (item.split("=") for item in text.split(",") if item)}


def publish(node: Node, publisher, statuses: list[DiagnosticStatus]) -> None:
    inputs = matched_inputs(node)
    if inputs is not None and statuses:
        statuses[0].values.append(KeyValue(key=INPUTS_KEY, value=format_inputs(inputs)))
    msg = DiagnosticArray()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.status = statuses
    publisher.publish(msg)
