"""The driver interface. Two kinds of actuator exist on a line:

- pulse drivers (sim, gpio, modbus) switch discrete outputs (reject, divert, stop_line); the controller's
  deadline scheduler calls set_output() exactly at the planned edge times;
- arm drivers (robot_arm) receive the part ahead of time with a deadline and report back when done.

Both share open/close/poll/health, so the controller and the node handle faults the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from qc_cell.reject.belt import BeltReading
from qc_cell.reject.station import BELT_RUNNING, StationReading


class DriverError(RuntimeError):
    """The actuator failed or is unavailable; the message says why and what to do."""


@dataclass(frozen=True)
class DriverHealth:
    ok: bool
    message: str
    values: dict[str, object] = field(default_factory=dict)


class RejectDriver(ABC):
    method: ClassVar[str]

    @property
    @abstractmethod
    def channels(self) -> frozenset[str]:
        """The outputs (records.CHANNELS) this driver can drive as configured."""

    @abstractmethod
    def open(self) -> None:
        """Acquire the hardware, all outputs off. DriverError for a problem that retrying cannot fix."""

    @abstractmethod
    def close(self, keep: frozenset[str] = frozenset()) -> None:
        """All outputs off except those in `keep` (a raised stop-line stays raised), release the hardware.
        Never raises."""

    @property
    def inputs(self) -> frozenset[str]:
        """The station inputs (qc_cell.reject.station.INPUTS) this driver reads as configured; none by default."""
        return frozenset()

    def read_inputs(self) -> StationReading:
        """The level inputs now, and the confirmation edges since the previous call (node timer thread)."""
        return StationReading()

    @property
    def belt_inputs(self) -> frozenset[str]:
        """The belt inputs this driver has as configured: "running_input" (a belt_running input)."""
        return frozenset({"running_input"}) if BELT_RUNNING in self.inputs else frozenset()

    belt_listener: Callable[[], None] | None = None  # called when the belt input changes (where the driver can tell)

    def belt_reading(self) -> BeltReading:
        """Belt-running transitions and encoder samples since the previous call. No I/O (any thread, also the
        scheduler's right before an edge): drivers that poll return what their last poll() saw."""
        return BeltReading()

    def poll(self, now_ns: int) -> None:  # noqa: B027 - optional hook
        """Periodic housekeeping (reconnects, heartbeats, timeouts), called from the node's timer."""

    @abstractmethod
    def health(self) -> DriverHealth: ...


class PulseDriver(RejectDriver):
    @abstractmethod
    def set_output(self, channel: str, on: bool) -> None:
        """Switch an output now; DriverError when it could not be switched. Called on the scheduler thread."""

    def part_at_output(self, channel: str, t_ns: int) -> None:
        """A part's actuation began at t_ns on `channel` (its own, or within a pulse held on for a neighbour).
        Real hardware learns this from the part itself; the sim driver simulates the confirmation sensor."""


@dataclass(frozen=True)
class ArmJob:
    part_id: str
    deadline_ns: int  # the part must have been picked by then
    position_m: float  # where the part is (downstream of the camera) at the deadline


@dataclass(frozen=True)
class ArmOutcome:
    success: bool
    message: str
    actual_ns: int  # when the pick completed (0 when it did not)


class ArmDriver(RejectDriver):
    @abstractmethod
    def dispatch(self, job: ArmJob, done: Callable[[ArmOutcome], None]) -> None:
        """Send the part to the arm; `done` is called exactly once, from any thread."""
