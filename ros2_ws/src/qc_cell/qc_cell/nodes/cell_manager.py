"""cell_manager node: under `ros2 launch`, brings the cell's lifecycle nodes to ACTIVE in the order a line needs
and keeps them there after respawns (qc_cell.bringup.activator; the cell runner does the same in-process).

It also logs, once per change, what the cell waits for and each node's fault, from the nodes' /diagnostics and
alerts (qc_cell.bringup.cell_status, as the runner prints them): why no parts flow, on the launch console.

The launch file passes the names of the cell's nodes; which of them are lifecycle nodes and part sources comes from
qc_cell.cell_graph.
"""

from __future__ import annotations

import threading

from rclpy.node import Node

from qc_cell import cell_graph
from qc_cell.bringup.activator import WARNING_EVENTS, CellActivator
from qc_cell.bringup.cell_status import StatusLine
from qc_cell.bringup.manager_params import CELL_MANAGER
from qc_cell.bringup.status_listener import CellStatusListener
from qc_cell.healthcheck import ERROR, OK
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters
from qc_cell.ros.time import steady_timer


class CellManager(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("cell_manager", **kwargs)
        p = declare_parameters(self, CELL_MANAGER)
        try:
            specs = [cell_graph.node(name) for name in p["nodes"] if name]
        except KeyError as exc:
            raise ParameterError(f"parameter 'nodes': unknown node {exc}") from exc
        if not specs:
            raise ParameterError("parameter 'nodes' is empty: nothing to manage")
        ready_timeout_s = p["ready_timeout_s"]
        self._stop = threading.Event()
        self._status = CellStatusListener(self, self.get_namespace(), [spec.name for spec in specs], self._on_status)
        steady_timer(self, 1.0, self._status.tick)
        activator = CellActivator(
            self,
            self.get_namespace(),
            specs,
            self._on_event,
            ready_timeout_s=ready_timeout_s,
            on_waiting=self._status.waiting,
        )
        threading.Thread(target=activator.run, args=(self._stop,), name="activator", daemon=True).start()

    def _on_event(self, name: str, event: str, detail: str) -> None:
        text = f"{name}: {event} ({detail})"
        if event in WARNING_EVENTS:
            self.get_logger().warning(text)
        else:
            self.get_logger().info(text)

    def _on_status(self, line: StatusLine) -> None:
        # One call per severity: rclpy refuses a log call site whose severity changes between calls.
        if line.level == OK:
            self.get_logger().info(line.text)
        elif line.level == ERROR:
            self.get_logger().error(line.text)
        else:
            self.get_logger().warning(line.text)

    def destroy_node(self) -> None:
        self._stop.set()
        super().destroy_node()


def main() -> int:
    return run(CellManager)


if __name__ == "__main__":
    raise SystemExit(main())
