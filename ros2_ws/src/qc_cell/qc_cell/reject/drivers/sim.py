"""Simulated ejector: records every output edge with its time (the demo and tests read them back; the node
turns the reject events into RViz markers). A fault can be injected to exercise the failure paths."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from qc_cell.reject.drivers.base import DriverError, DriverHealth, PulseDriver
from qc_cell.reject.records import CHANNELS


@dataclass(frozen=True)
class Edge:
    t_ns: int
    channel: str
    on: bool


class SimDriver(PulseDriver):
    method = "sim"

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns, history: int = 10_000) -> None:
        self._clock_ns = clock_ns
        self.edges: deque[Edge] = deque(maxlen=history)
        self.state = dict.fromkeys(CHANNELS, False)
        self._fault: str | None = None
        self._open = False
        self._lock = threading.Lock()

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(CHANNELS)

    def inject_fault(self, message: str | None) -> None:
        """From now on every set_output fails with `message` (None clears the fault)."""
        self._fault = message

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        for channel, on in list(self.state.items()):
            if on:
                self._record(channel, False)
        self._open = False

    def set_output(self, channel: str, on: bool) -> None:
        if not self._open:
            raise DriverError("sim driver is not open")
        if self._fault is not None:
            raise DriverError(self._fault)
        self._record(channel, on)

    def _record(self, channel: str, on: bool) -> None:
        with self._lock:
            self.state[channel] = on
            self.edges.append(Edge(self._clock_ns(), channel, on))

    def health(self) -> DriverHealth:
        if self._fault is not None:
            return DriverHealth(False, f"injected fault: {self._fault}", {"edges": len(self.edges)})
        return DriverHealth(self._open, "simulated ejector" if self._open else "closed", {"edges": len(self.edges)})
