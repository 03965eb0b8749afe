"""The one place that builds qc_interfaces/Alert: every node raises its alerts through an AlertPublisher.

`source` is the node's name without its namespace (`camera_driver`, `sensor_fusion`, ...), the same for every
node: the cell the alert comes from is already in the record the cloud stores (`cell` = site/line/cell,
docs/mqtt.md), and a per-cell namespace must not make the same node look like a different source.
"""

from __future__ import annotations

from rclpy.node import Node

from qc_cell.ros import qos
from qc_interfaces.msg import Alert

# The alert record's limit (schemas/alert.schema.json, `message` maxLength); longer texts are cut here.
MAX_MESSAGE_CHARS = 4096


class AlertPublisher:
    """The node's publisher on `alerts` (EVENTS: reliable, as every per-part record)."""

    def __init__(self, node: Node, *, log_throttle_s: float | None = None) -> None:
        """log_throttle_s: with send(log=True), WARN and worse are logged at most this often (None: every one)."""
        self._node = node
        self._source = node.get_name()
        self._clock = node.get_clock()
        self._publisher = node.create_publisher(Alert, "alerts", qos.EVENTS)
        self._throttle = {} if log_throttle_s is None else {"throttle_duration_sec": log_throttle_s}

    def send(self, severity: int, code: str, message: str, part_id: str = "", *, log: bool = False) -> bool:
        """Publish one alert stamped now; with `log`, also log `[code] message` at the matching level.

        Returns False when the node's context is already shut down (Ctrl-C while a thread still reports):
        the alert then goes to the log instead of ending the process with a traceback.
        """
        node = self._node
        msg = Alert(severity=severity, source=self._source, code=code, message=message[:MAX_MESSAGE_CHARS])
        msg.part_id = part_id
        msg.header.stamp = self._clock.now().to_msg()
        text = f"[{code}] {message}"
        if log:
            self._log(severity, text)
        try:
            self._publisher.publish(msg)
        except Exception:
            if node.context.ok():
                raise
            node.get_logger().warning(f"shutting down, alert not published: {text}")
            return False
        return True

    def _log(self, severity: int, text: str) -> None:
        # One call site per level: rclpy refuses to log at two severities from one line.
        logger = self._node.get_logger()
        if severity >= Alert.ERROR:
            logger.error(text, **self._throttle)
        elif severity == Alert.WARN:
            logger.warning(text, **self._throttle)
        else:
            logger.info(text)
