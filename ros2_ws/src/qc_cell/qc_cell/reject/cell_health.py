"""Whether the whole cell is fit to run parts: what the heartbeat output tells the PLC (plain Python, no ROS).

The reject actuator toggles its heartbeat output only while this says ready, and its own conditions hold (armed,
driver healthy, station fine, verdicts flowing). The cell is ready when every required node has reported on
/diagnostics within `stale_ns`, none of its statuses is at ERROR (e.g. inference without a model), and every
lifecycle node among them says it is active. A node that died, hung or never started stops reporting and the cell
is not ready; the process or host dying stops the toggling altogether, which the PLC times out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ERROR_LEVEL = 2  # diagnostic_msgs/DiagnosticStatus.ERROR (STALE = 3 counts as an error too)
STATE_KEYS = ("lifecycle_state", "state")  # the lifecycle state in a node's diagnostic values


@dataclass
class _Report:
    stamp_ns: int
    errors: dict[str, str]  # status name -> message, for statuses at ERROR or worse
    state: str | None


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
        state = next((values[key] for key in STATE_KEYS if key in values), None)
        if state is not None:
            report.state = state

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
