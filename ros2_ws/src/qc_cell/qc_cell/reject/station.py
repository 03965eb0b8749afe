"""The reject station's inputs and what they mean for ejection (plain Python, no ROS).

Inputs (each optional, wired per driver: sim simulates them, GPIO input pins, Modbus discrete inputs):

- `confirm`: the reject-confirmation sensor (a photocell across the reject chute). Every ejection opens a window
  (`confirm_window_ms` from the moment the output went on); a rising edge inside it confirms the ejection (DONE),
  none means the part was not seen leaving the line (UNCONFIRMED: jammed pusher, empty air line, broken valve).
- `bin_full` (active = the reject bin is full), `bin_present` (active = the bin is in place), `air_ok` (active =
  the air pressure is sufficient): while any says the station cannot eject, ejection is blocked and the stop-line is
  held, so the line stops before a part passes unejected.
- `belt_running` (active = the belt moves): read by the belt tracking (belt_source running_input), not a fault.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CONFIRM = "confirm"
BIN_FULL = "bin_full"
BIN_PRESENT = "bin_present"
AIR_OK = "air_ok"
BELT_RUNNING = "belt_running"  # not a station fault: the belt tracking's input (qc_cell.reject.belt)
INPUTS = (CONFIRM, BIN_FULL, BIN_PRESENT, AIR_OK, BELT_RUNNING)
# Level inputs -> (the level that is a fault, what the fault is called).
LEVEL_FAULTS: dict[str, tuple[bool, str]] = {
    BIN_FULL: (True, "reject bin full"),
    BIN_PRESENT: (False, "reject bin absent"),
    AIR_OK: (False, "air pressure low"),
}


@dataclass(frozen=True)
class StationReading:
    """What a driver read from the station: the level inputs it has, and the times (ns, the controller's clock)
    of the confirmation sensor's rising edges since the previous reading."""

    levels: Mapping[str, bool] = field(default_factory=dict)
    confirmations: tuple[int, ...] = ()


def station_faults(levels: Mapping[str, bool]) -> list[str]:
    """The faults the level inputs show, in a fixed order (empty: the station can eject)."""
    return [name for key, (bad, name) in LEVEL_FAULTS.items() if key in levels and levels[key] == bad]


def check_inputs(names: Iterable[str]) -> None:
    unknown = sorted(set(names) - set(INPUTS))
    if unknown:
        raise ValueError(f"unknown station inputs {unknown}; known: {list(INPUTS)}")


@dataclass(eq=False)
class ConfirmWindow:
    """One ejection waiting for its confirmation: the part's record is kept until then."""

    part_id: str
    opens_ns: int
    closes_ns: int
    payload: object  # what the controller needs to report the part (its pulse)


class ConfirmationTracker:
    """Matches confirmation edges to ejection windows, oldest window first; windows without an edge by their
    close time expire (UNCONFIRMED). One edge confirms one ejection."""

    def __init__(self) -> None:
        self._open: list[ConfirmWindow] = []

    def expect(self, window: ConfirmWindow) -> None:
        self._open.append(window)
        self._open.sort(key=lambda w: w.opens_ns)

    def settle(self, edges: Iterable[int], now_ns: int) -> tuple[list[tuple[ConfirmWindow, int]], list[ConfirmWindow]]:
        """(confirmed windows with their edge time, expired windows) after these edges, at `now_ns`."""
        confirmed: list[tuple[ConfirmWindow, int]] = []
        for edge in sorted(edges):
            window = next((w for w in self._open if w.opens_ns <= edge <= w.closes_ns), None)
            if window is not None:
                self._open.remove(window)
                confirmed.append((window, edge))
        expired = [w for w in self._open if w.closes_ns < now_ns]
        self._open = [w for w in self._open if w.closes_ns >= now_ns]
        return confirmed, expired

    def drain(self) -> list[ConfirmWindow]:
        """Every open window (the actuator is disarmed: no confirmation will be read)."""
        windows, self._open = self._open, []
        return windows

    def __len__(self) -> int:
        return len(self._open)
