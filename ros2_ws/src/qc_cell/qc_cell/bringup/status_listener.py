"""Feed a CellStatus (qc_cell.bringup.cell_status) from the graph of one cell and hand its lines to a sink.

Subscribes on a node the caller spins: /diagnostics (only the statuses of the cell's own nodes, told apart as the
health check does) and the cell's `alerts`. The activator reports its waits through `waiting`; the caller calls
`tick` about once a second for the lines that become due with time alone. Used by the cell runner (lines on the
console) and the cell_manager node (lines in its log, which `ros2 launch` shows).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node

from qc_cell.bringup.cell_status import CellStatus, StatusLine
from qc_cell.healthcheck import level_of, owner
from qc_cell.ros import qos
from qc_interfaces.msg import Alert


class CellStatusListener:
    def __init__(
        self,
        node: Node,
        namespace: str,
        node_names: Sequence[str],
        on_line: Callable[[StatusLine], None],
        status: CellStatus | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.status = status or CellStatus()
        self._namespace = namespace.strip("/")
        self._names = list(node_names)
        self._on_line = on_line
        self._clock = clock
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.DIAGNOSTICS)
        node.create_subscription(Alert, "alerts", self._on_alert, qos.EVENTS)

    def waiting(self, key: str, what: str | None, why: str = "") -> None:
        self._emit(self.status.waiting(key, what, why, self._clock()))

    def parts(self, count: int) -> None:
        self._emit(self.status.parts(count, self._clock()))

    def tick(self) -> None:
        self._emit(self.status.tick(self._clock()))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        now = self._clock()
        for status in msg.status:
            if owner(status.name, self._namespace, self._names) is not None:
                self._emit(self.status.diagnostic(status.name, level_of(status.level), status.message, now))

    def _on_alert(self, msg: Alert) -> None:
        self._emit(self.status.alert(msg.source, msg.severity, msg.code, msg.message, self._clock()))

    def _emit(self, lines: list[StatusLine]) -> None:
        for line in lines:
            self._on_line(line)
