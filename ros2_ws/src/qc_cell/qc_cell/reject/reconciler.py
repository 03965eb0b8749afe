"""The verdict/eject reconciler (plain Python, no ROS): does every part that had to leave the line get exactly one
terminal reject event by its deadline?

Expected: every part registered at the camera (camera/parts: without a verdict the watchdog fails it safe as
NOT_INSPECTED) and every verdict whose lane is the reject or the divert lane (DEFECTIVE, NOT_INSPECTED, REINSPECT
with the shipped params). A NORMAL verdict (a verdict without a lane) releases the part. The part's deadline is when
its terminal event must exist at the latest: capture + travel to its lane at the nominal belt speed + the actuation
and confirmation time + a grace, moved later by every time the belt was known to stand while the part was on it
(belt tracking: `belt_stopped`; a part held for a stopped belt is not overdue). Then exactly one of, per part:

- RESOLVED: a terminal reject/event came by the deadline (whatever its outcome: a part not removed is alerted, with
  the missed response, by the actuator itself when it reports it);
- OVERDUE: none by the deadline: the caller raises a CRITICAL alert naming the part and the stop-line;
- DUPLICATE (after either): a further terminal event for a part already settled (a double actuation, or a report of
  a part already called overdue).

A deadline is not judged before the actuator could act on the part: a part the reconciler learns of after its
deadline (a verdict replayed to a restarted actuator) has `late_grace_ns` from then to get its event, and while the
actuator is recovering (started, not armed yet: `recovering`) no deadline passes; when it is armed, parts whose
deadline passed meanwhile have `late_grace_ns` from then. So a part that passed during an actuator outage gets one
terminal event (MISSED, the actuator's own CRITICAL alert) and no OVERDUE before it (then a DUPLICATE): one alert,
not three. A part the armed actuator does not settle within that grace is OVERDUE as before.

A terminal event is every reject/event except the report of a duplicate verdict (it closes nothing). Times are on
one monotonic clock (the caller's steady clock); the reconciler keeps at most `max_parts` open parts (the oldest is
reported OVERDUE when it has to make room: never dropped silently).

The same rule runs in the fleet service over the `reconcile` records (docs/mqtt.md); the fault-injection test's
audit (qc_cell.reject.escape_audit) checks it from outside the cell.
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, replace
from enum import IntEnum

from qc_cell.reject.config import RejectConfig

NO_OUTCOME = -1


class Status(IntEnum):
    """Reconciliation.msg constants."""

    RESOLVED = 0
    OVERDUE = 1
    DUPLICATE = 2


@dataclass(frozen=True)
class Expected:
    part_id: str
    lane: str
    verdict: int  # NOT_INSPECTED for a part without a verdict (yet)
    has_verdict: bool
    capture_ns: int  # steady clock
    due_ns: int  # steady clock
    wall_offset_ns: int = 0  # wall - steady of the capture, to report its times as wall time
    frame_id: str = ""


@dataclass(frozen=True)
class Finding:
    part: Expected
    status: Status
    outcome: int = NO_OUTCOME  # the terminal event's outcome
    terminal_events: int = 0


class Reconciler:
    def __init__(self, max_parts: int = 20_000, remembered: int = 20_000, late_grace_ns: int = 0) -> None:
        self.max_parts = max_parts
        self.late_grace_ns = late_grace_ns
        self._recovering = False
        self._open: dict[str, Expected] = {}
        self._due: list[tuple[int, str]] = []  # (due, part) min-heap; stale entries skipped
        self._settled: OrderedDict[str, tuple[Expected, int]] = OrderedDict()  # part -> (part, terminal events)
        self._remembered = remembered
        self._released: OrderedDict[str, None] = OrderedDict()  # parts a NORMAL verdict released
        self._nominal_due: dict[str, int] = {}  # open part -> its deadline without the belt stops
        self._floor: dict[str, int] = {}  # open part -> no deadline before (learnt late, or after a recovery)
        self._stops: deque[tuple[int, int]] = deque(maxlen=1000)  # (stopped, restarted) of the belt, oldest first
        self._stopped_since: int | None = None  # the belt is known to stand since then
        self.counts: Counter[str] = Counter()

    @property
    def open_count(self) -> int:
        return len(self._open)

    def expect(self, part: Expected, now_ns: int | None = None) -> list[Finding]:
        """A part that must get a terminal event (registration, or a verdict with a lane: the verdict's lane and
        deadline replace a registration's). now_ns: when it is learnt, a deadline already passed then (or passing
        within the late grace) moves to now + late grace. Returns parts reported OVERDUE to make room (normally
        none)."""
        if part.part_id in self._settled or part.part_id in self._released:
            return []
        known = self._open.get(part.part_id)
        if known is not None and known.has_verdict and not part.has_verdict:
            return []  # a late registration after the verdict
        if known is None:
            self.counts["expected"] += 1
        self._nominal_due[part.part_id] = part.due_ns
        due = self._after_stops(part.capture_ns, part.due_ns)
        if now_ns is not None and due < now_ns + self.late_grace_ns:
            self._floor[part.part_id] = now_ns + self.late_grace_ns
        due = max(due, self._floor.get(part.part_id, due))
        part = replace(part, due_ns=due)
        self._open[part.part_id] = part
        heapq.heappush(self._due, (part.due_ns, part.part_id))
        findings = []
        while len(self._open) > self.max_parts:
            oldest = min(self._open.values(), key=lambda p: p.due_ns)
            findings.append(self._settle(oldest, Status.OVERDUE, NO_OUTCOME, 0))
        return findings

    def release(self, part_id: str) -> None:
        """A verdict that needs no action (NORMAL): the part passes and needs no event."""
        if self._open.pop(part_id, None) is not None:
            self.counts["released"] += 1
        self._nominal_due.pop(part_id, None)
        self._floor.pop(part_id, None)
        self._released[part_id] = None
        if len(self._released) > self._remembered:
            self._released.popitem(last=False)

    def settled_before(self, part_id: str) -> None:
        """A part that got its terminal event before this reconciler's time (the actuator's journal knows it, e.g. a
        verdict the decision node replays to a restarted actuator before it could look it up): no longer expected,
        and a further event for it is a DUPLICATE."""
        part = self._open.get(part_id)
        if part is not None:
            self.counts["settled_before"] += 1
            self._settle(part, Status.RESOLVED, NO_OUTCOME, 1)
            self.counts["resolved"] -= 1  # not resolved here: known from the journal

    def terminal_event(self, part_id: str, outcome: int) -> Finding | None:
        """A terminal reject/event for the part: RESOLVED the first time by the deadline, DUPLICATE after it
        was settled; None for a part nobody expected (e.g. a NORMAL part a cloud verdict sent to a lane)."""
        part = self._open.get(part_id)
        if part is not None:
            return self._settle(part, Status.RESOLVED, outcome, 1)
        settled = self._settled.get(part_id)
        if settled is None:
            self.counts["unexpected_events"] += 1
            return None
        known, events = settled
        self._settled[part_id] = (known, events + 1)
        self.counts["duplicate_events"] += 1
        return Finding(known, Status.DUPLICATE, outcome, events + 1)

    def belt_stopped(self, stopped: bool, now_ns: int) -> None:
        """Whether the belt is known to stand now (belt tracking). While it stands no deadline passes; when it runs
        again every open part's deadline moves by the time it stood with the part on it."""
        if stopped and self._stopped_since is None:
            self._stopped_since = now_ns
            self.counts["belt_stops"] += 1
        elif not stopped and self._stopped_since is not None:
            self._stops.append((self._stopped_since, now_ns))
            self._stopped_since = None
            for part_id, part in list(self._open.items()):
                due = self._after_stops(part.capture_ns, self._nominal_due[part_id])
                due = max(due, self._floor.get(part_id, due))
                if due != part.due_ns:
                    self._open[part_id] = replace(part, due_ns=due)
                    heapq.heappush(self._due, (due, part_id))

    def recovering(self, recovering: bool, now_ns: int) -> None:
        """Whether the actuator is recovering (started, not armed yet): no deadline passes meanwhile; when it ends,
        open parts whose deadline passed (or passes within the late grace) have the late grace from now."""
        if recovering == self._recovering:
            return
        self._recovering = recovering
        if recovering:
            return
        floor = now_ns + self.late_grace_ns
        for part_id, part in list(self._open.items()):
            if part.due_ns < floor:
                self._floor[part_id] = floor
                self._open[part_id] = replace(part, due_ns=floor)
                heapq.heappush(self._due, (floor, part_id))
                self.counts["deadline_after_recovery"] += 1

    def _after_stops(self, capture_ns: int, due_ns: int) -> int:
        """A nominal deadline moved by the belt stops between the capture and it (the deadline grows with each)."""
        for stopped, restarted in self._stops:
            if restarted <= capture_ns:
                continue
            if stopped >= due_ns:
                break
            due_ns += restarted - max(stopped, capture_ns)
        return due_ns

    def overdue(self, now_ns: int) -> list[Finding]:
        """Parts whose deadline passed without a terminal event, oldest first (settled OVERDUE). None while the belt
        is known to stand, and while the actuator is recovering."""
        if self._recovering:
            return []
        if self._stopped_since is not None:
            now_ns = min(now_ns, self._stopped_since)
        findings = []
        while self._due and self._due[0][0] < now_ns:
            due_ns, part_id = heapq.heappop(self._due)
            part = self._open.get(part_id)
            if part is not None and part.due_ns == due_ns:
                findings.append(self._settle(part, Status.OVERDUE, NO_OUTCOME, 0))
        return findings

    def _settle(self, part: Expected, status: Status, outcome: int, events: int) -> Finding:
        del self._open[part.part_id]
        self._nominal_due.pop(part.part_id, None)
        self._floor.pop(part.part_id, None)
        self._settled[part.part_id] = (part, events)
        if len(self._settled) > self._remembered:
            self._settled.popitem(last=False)
        self.counts[status.name.lower()] += 1
        return Finding(part, status, outcome, events)


def due_ns(capture_ns: int, distance_mm: float, config: RejectConfig, grace_ms: float) -> int:
    """When a part's terminal event is due at the latest: capture + travel to the lane at the nominal belt speed
    (the watchdog's timeout where no nominal speed is set) + actuation, pulse, late tolerance and confirmation window
    + grace. Belt stops are added by the Reconciler (belt_stopped); a belt slower than nominal (encoder tracking)
    needs a grace that covers it."""
    speed = config.belt_speed_mm_s
    travel_ms = distance_mm / speed * 1000.0 if speed > 0 else config.watchdog_timeout_s * 1000.0
    extra_ms = config.actuator_latency_ms + config.pulse_width_ms + config.late_tolerance_ms
    extra_ms += config.confirm_window_ms + grace_ms
    return capture_ns + int((travel_ms + extra_ms) * 1e6)
