"""Simulated ejector: records every output edge with its time (the demo and tests read them back; the node
turns the reject events into RViz markers). A fault can be injected to exercise the failure paths.

It simulates the station inputs too: a part pushed by the reject output crosses the confirmation sensor
`confirm_delay_ns` later, unless the pusher is jammed or the air pressure is low; the bin-full, bin-present and
air inputs are levels the fault drills set (`set_faults`). It also has a belt-running input: the drill
`belt_stopped` stops the simulated belt (a transition stamped when the drill is applied) until it is cleared."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from qc_cell.reject.belt import BeltReading
from qc_cell.reject.drivers.base import DriverError, DriverHealth, PulseDriver
from qc_cell.reject.records import CHANNELS, REJECT
from qc_cell.reject.station import AIR_OK, BIN_FULL, BIN_PRESENT, INPUTS, StationReading

# Faults a drill can inject into the simulated station (sim_faults parameter).
SIM_FAULTS = ("jammed", "bin_full", "bin_absent", "air_low", "belt_stopped")
BELT_STOPPED = "belt_stopped"


@dataclass(frozen=True)
class Edge:
    t_ns: int
    channel: str
    on: bool


def sim_faults(text: str) -> frozenset[str]:
    """The sim_faults parameter (comma-separated SIM_FAULTS) as a set; ValueError names an unknown one."""
    faults = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(faults - set(SIM_FAULTS))
    if unknown:
        raise ValueError(f"sim_faults {unknown}: known are {list(SIM_FAULTS)}")
    return faults


class SimDriver(PulseDriver):
    method = "sim"

    def __init__(
        self,
        clock_ns: Callable[[], int] = time.time_ns,
        history: int = 10_000,
        confirm_delay_ns: int = 20_000_000,
        confirm_clock_ns: Callable[[], int] = time.monotonic_ns,
        channels: tuple[str, ...] = CHANNELS,
    ) -> None:
        """clock_ns stamps the recorded edges (wall time, as the reject events); confirm_clock_ns is the controller's
        scheduling clock, on which part_at_output times come and confirmations go. channels: its outputs (a
        line-signals driver has stop_line and heartbeat only)."""
        self._channels = frozenset(channels)
        self._clock_ns = clock_ns
        self._confirm_clock_ns = confirm_clock_ns
        self._confirm_delay_ns = confirm_delay_ns
        self._faults: frozenset[str] = frozenset()
        self._confirm_due: deque[int] = deque()
        self._belt_edges: list[tuple[int, bool]] = []
        self.edges: deque[Edge] = deque(maxlen=history)
        self.state = dict.fromkeys(CHANNELS, False)
        self._fault: str | None = None
        self._open = False
        self._lock = threading.Lock()

    @property
    def channels(self) -> frozenset[str]:
        return self._channels

    @property
    def inputs(self) -> frozenset[str]:
        return frozenset(INPUTS)

    def set_faults(self, faults: frozenset[str]) -> None:
        """The station faults from now on (SIM_FAULTS, see sim_faults(); empty = a healthy station)."""
        faults = sim_faults(",".join(faults))
        with self._lock:
            stopped = BELT_STOPPED in faults
            changed = stopped != (BELT_STOPPED in self._faults)
            if changed:
                self._belt_edges.append((self._confirm_clock_ns(), not stopped))
            self._faults = faults
        listener = self.belt_listener
        if changed and listener is not None:
            listener()  # the controller re-plans at once, as with a GPIO interrupt

    def belt_reading(self) -> BeltReading:
        with self._lock:
            edges, self._belt_edges = tuple(self._belt_edges), []
        return BeltReading(running_edges=edges)

    def read_inputs(self) -> StationReading:
        now = self._confirm_clock_ns()
        with self._lock:
            edges = []
            while self._confirm_due and self._confirm_due[0] <= now:
                edges.append(self._confirm_due.popleft())
        levels = {
            BIN_FULL: "bin_full" in self._faults,
            BIN_PRESENT: "bin_absent" not in self._faults,
            AIR_OK: "air_low" not in self._faults,
        }
        return StationReading(levels, tuple(edges))

    def inject_fault(self, message: str | None) -> None:
        """From now on every set_output fails with `message` (None clears the fault)."""
        self._fault = message

    def open(self) -> None:
        self._open = True

    def close(self, keep: frozenset[str] = frozenset()) -> None:
        for channel, on in list(self.state.items()):
            if on and channel not in keep:
                self._record(channel, False)
        self._open = False

    def set_output(self, channel: str, on: bool) -> None:
        if not self._open:
            raise DriverError("sim driver is not open")
        if self._fault is not None:
            raise DriverError(self._fault)
        self._record(channel, on)

    def part_at_output(self, channel: str, t_ns: int) -> None:
        """A part meets the output while it is on: pushed into the chute, it crosses the confirmation sensor
        confirm_delay_ns later, unless the pusher is jammed or has no air."""
        with self._lock:
            if channel == REJECT and self.state[REJECT] and not self._faults & {"jammed", "air_low"}:
                self._confirm_due.append(t_ns + self._confirm_delay_ns)

    def _record(self, channel: str, on: bool) -> None:
        with self._lock:
            self.state[channel] = on
            self.edges.append(Edge(self._clock_ns(), channel, on))

    def health(self) -> DriverHealth:
        if self._fault is not None:
            return DriverHealth(False, f"injected fault: {self._fault}", {"edges": len(self.edges)})
        return DriverHealth(self._open, "simulated ejector" if self._open else "closed", {"edges": len(self.edges)})
