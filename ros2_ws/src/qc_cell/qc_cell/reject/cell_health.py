"""Whether the whole cell is fit to run parts: what the heartbeat output tells the PLC (plain Python, no ROS).

The reject actuator toggles its heartbeat output only while this says ready, and its own conditions hold (armed,
driver healthy, station fine, verdicts flowing). The cell is ready when every required node has reported on
/diagnostics within `stale_ns`, none of its statuses is at ERROR (e.g. inference without a model), and every
lifecycle node among them says it is active. A node that died, hung or never started stops reporting and the cell
is not ready; the process or host dying stops the toggling altogether, which the PLC times out.

A node may also ask for the stop-line (`stop_requests`): a status value `stop_line_request` (the camera in free-run
mode during an outage: parts pass without a record), or silence of a node that said it runs free (`free_run`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ERROR_LEVEL = 2  # diagnostic_msgs/DiagnosticStatus.ERROR (STALE = 3 counts as an error too)
STATE_KEYS = ("lifecycle_state", "state")  # the lifecycle state in a node's diagnostic values
STOP_KEY = "stop_line_request"  # a status value: why the node asks for the stop-line
FREE_RUN_KEY = "free_run"  # a status value: the node captures free-running (its silence is an outage)


@dataclass
class _Report:
    stamp_ns: int
    errors: dict[str, str]  # status name -> message, for statuses at ERROR or worse
    state: str | None
    stop: dict[str, str] = field(default_factory=dict)  # status name -> why it asks for the stop-line
    free_run: bool = False


class CellHealth:
    def __init__(self, nodes: Iterable[str], stale_ns: int) -> None:
        self.nodes = tuple(nodes)
        if stale_ns <= 0:
            raise ValueError(f"stale time must be > 0, got {stale_ns} ns")
        self.stale_ns = stale_ns
        self._reports: dict[str, _Report] = {}

    def on_status(self, name: str, level: int, message: str, values: Mapping[str, str], now_ns: int) -> None:
        """One DiagnosticStatus named '<node>: <what>'; statuses of other nodes are ignored."""
        node = name.split(":", 1)[0].strip()
        if node not in self.nodes:
            return
        report = self._reports.setdefault(node, _Report(now_ns, {}, None))
        report.stamp_ns = max(report.stamp_ns, now_ns)
        if level >= ERROR_LEVEL:
            report.errors[name] = message
        else:
            report.errors.pop(name, None)
        if values.get(STOP_KEY):
            report.stop[name] = values[STOP_KEY]
        else:
            report.stop.pop(name, None)
        if FREE_RUN_KEY in values:
            report.free_run = str(values[FREE_RUN_KEY]).lower() == "true"
        state = next((values[key] for key in STATE_KEYS if key in values), None)
        if state is not None:
            report.state = state

    def stop_requests(self, now_ns: int) -> list[str]:
        """Why the stop-line must be held for the cell (empty: it need not): nodes asking for it, and free-running
        nodes gone silent (a dead free-run camera leaves the parts without any record)."""
        found = []
        for node in self.nodes:
            report = self._reports.get(node)
            if report is None:
                continue
            if report.free_run and now_ns - report.stamp_ns > self.stale_ns:
                found.append(f"{node}: silent for {(now_ns - report.stamp_ns) / 1e9:.1f} s in free-run mode")
            elif report.stop:
                found.append(f"{node}: {'; '.join(report.stop.values())}")
        return found

    def problems(self, now_ns: int) -> list[str]:
        """Why the cell is not ready (empty: ready), one entry per node at fault, in the order of `nodes`."""
        found = []
        for node in self.nodes:
            report = self._reports.get(node)
            if report is None:
                found.append(f"{node}: no status yet")
            elif now_ns - report.stamp_ns > self.stale_ns:
                found.append(f"{node}: silent for {(now_ns - report.stamp_ns) / 1e9:.1f} s")
            elif report.errors:
                found.append(f"{node}: {'; '.join(report.errors.values())}")
            elif report.state is not None and report.state != "active":
                found.append(f"{node}: {report.state}")
        return found
