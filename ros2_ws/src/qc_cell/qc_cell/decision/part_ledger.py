"""The part ledger: every part gets exactly one verdict.

A part becomes known from camera/parts (the camera registered it), from camera/trigger when the PLC gives
the part its id (so a part still gets its fail-safe verdict when the camera driver is down), or from its
inspection result, whichever comes first; the camera's registration then replaces a trigger's. Its deadline
is `capture + deadline` (or `arrival + deadline` if the capture stamp lies in the future, so a skewed clock
cannot keep a part pending forever). Then exactly one of:
- its result arrives before the deadline -> decided from the result;
- the deadline passes first -> fail-safe verdict; a result arriving afterwards is LATE (counted, not decided);
- a second result for a decided part is a DUPLICATE (counted, not decided).

A result can overtake its own registration (two topics, one executor). If the caller expects a registration,
such a result is HELD for up to `hold_ns` (never past the part's deadline): the registration then completes
it at once with the camera's encoder count, or at the hold's end it is decided without one.
Decided part ids are remembered (bounded) so late and duplicate results are recognised.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class PendingPart:
    part_id: str
    capture_ns: int
    deadline_ns: int
    encoder_count: int  # -1 unknown
    frame_id: str
    held_result: Any = None  # a result waiting for this part's registration (opaque to the ledger)
    hold_until_ns: int = 0
    from_camera: bool = True  # False: known from its trigger only, the camera has not registered it (yet)
    registered: bool = True  # False: known from its result only (no camera/parts or trigger before the verdict)
    wall_ns: int = 0  # the capture's wall-clock stamp, for the records, when capture_ns is on a steady clock (0: same)

    @property
    def record_ns(self) -> int:
        """The capture time records carry (wall clock)."""
        return self.wall_ns or self.capture_ns

    @property
    def due_ns(self) -> int:
        return self.hold_until_ns if self.held_result is not None else self.deadline_ns


class DecidedBy(Enum):
    RESULT = "result"
    FAIL_SAFE = "fail_safe"


class Claim(Enum):
    """What to do with an arriving result."""

    DECIDE = "decide"  # in time: decide from the result
    HELD = "held"  # in time, part not registered yet: waiting briefly for the registration
    EXPIRED = "expired"  # the part's deadline has passed, no verdict yet: fail safe now (late result)
    LATE = "late"  # the part already has a fail-safe verdict: log and count, do not re-decide
    DUPLICATE = "duplicate"  # the part already has (or is about to get) a verdict from a result


class Registration(Enum):
    NEW = "new"
    CONFIRMED = "confirmed"  # the camera registered a part known from its trigger: the camera's data replace it
    COMPLETES_HELD = "completes_held"  # its result was waiting: decide now
    ALREADY_PENDING = "already_pending"  # the same part registered twice
    ALREADY_DECIDED = "already_decided"  # registration after the part's verdict


class PartLedger:
    def __init__(self, deadline_ns: int, remembered: int) -> None:
        if deadline_ns <= 0:
            raise ValueError(f"result deadline must be > 0, got {deadline_ns} ns")
        if remembered < 1:
            raise ValueError(f"must remember at least one decided part, got {remembered}")
        self.deadline_ns = deadline_ns
        self.remembered = remembered
        self._pending: dict[str, PendingPart] = {}
        self._due: list[tuple[int, str]] = []  # min-heap of (due time, part); outdated entries skipped lazily
        self._decided: OrderedDict[str, DecidedBy] = OrderedDict()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def next_due_ns(self) -> int | None:
        while self._due and not self._is_current(*self._due[0]):
            heapq.heappop(self._due)
        return self._due[0][0] if self._due else None

    def _is_current(self, due_ns: int, part_id: str) -> bool:
        part = self._pending.get(part_id)
        return part is not None and part.due_ns == due_ns

    def decided_by(self, part_id: str) -> DecidedBy | None:
        return self._decided.get(part_id)

    def register(
        self,
        part_id: str,
        capture_ns: int,
        encoder_count: int,
        frame_id: str,
        now_ns: int,
        from_camera: bool = True,
        wall_ns: int = 0,
    ) -> tuple[Registration, PendingPart | None]:
        """Register a part seen by the camera (or its trigger: from_camera False). COMPLETES_HELD returns the part
        (with its held result and the registration's encoder count), marked decided."""
        if part_id in self._decided:
            return Registration.ALREADY_DECIDED, None
        pending = self._pending.get(part_id)
        if pending is not None and pending.held_result is not None:
            del self._pending[part_id]
            self._mark(part_id, DecidedBy.RESULT)
            registered = replace(
                pending,
                encoder_count=encoder_count,
                frame_id=frame_id or pending.frame_id,
                from_camera=from_camera,
                registered=True,
                capture_ns=capture_ns,
                wall_ns=wall_ns or pending.wall_ns,
            )
            return Registration.COMPLETES_HELD, registered
        part = PendingPart(
            part_id,
            capture_ns,
            self._deadline(capture_ns, now_ns),
            encoder_count,
            frame_id,
            from_camera=from_camera,
            wall_ns=wall_ns,
        )
        if pending is None:
            self._add(part)
            return Registration.NEW, None
        if from_camera and not pending.from_camera:
            self._add(part)  # capture stamp, deadline, encoder count and frame from the camera
            return Registration.CONFIRMED, None
        return Registration.ALREADY_PENDING, None

    def _deadline(self, capture_ns: int, now_ns: int) -> int:
        return min(capture_ns, now_ns) + self.deadline_ns

    def _add(self, part: PendingPart) -> None:
        self._pending[part.part_id] = part
        heapq.heappush(self._due, (part.due_ns, part.part_id))

    def claim(
        self,
        part_id: str,
        capture_ns: int,
        frame_id: str,
        now_ns: int,
        hold_ns: int = 0,
        result: Any = None,
        wall_ns: int = 0,
    ) -> tuple[Claim, PendingPart | None]:
        """Classify an arriving result. DECIDE and EXPIRED return the part, marked decided (by RESULT or
        FAIL_SAFE). An unregistered part is decided at once (encoder count unknown) unless hold_ns > 0: then
        it is HELD with `result` until its registration or the hold's end."""
        decided = self._decided.get(part_id)
        if decided is DecidedBy.RESULT:
            return Claim.DUPLICATE, None
        if decided is DecidedBy.FAIL_SAFE:
            return Claim.LATE, None
        part = self._pending.get(part_id)
        if part is not None and part.held_result is not None:
            return Claim.DUPLICATE, None
        if part is not None:
            del self._pending[part_id]
        else:
            deadline = self._deadline(capture_ns, now_ns)
            part = PendingPart(
                part_id, capture_ns, deadline, -1, frame_id, from_camera=False, registered=False, wall_ns=wall_ns
            )
            if now_ns <= part.deadline_ns and hold_ns > 0:
                self._add(replace(part, held_result=result, hold_until_ns=min(now_ns + hold_ns, part.deadline_ns)))
                return Claim.HELD, None
        if now_ns > part.deadline_ns:
            self._mark(part_id, DecidedBy.FAIL_SAFE)
            return Claim.EXPIRED, part
        self._mark(part_id, DecidedBy.RESULT)
        return Claim.DECIDE, part

    def expire(self, now_ns: int) -> list[PendingPart]:
        """Parts due before now, in due order, marked decided: parts past their deadline without a result
        (held_result None: fail safe), and held results whose registration did not come (decide from them)."""
        due = []
        while self._due and self._due[0][0] < now_ns:
            due_ns, part_id = heapq.heappop(self._due)
            if self._is_current(due_ns, part_id):
                part = self._pending.pop(part_id)
                self._mark(part_id, DecidedBy.FAIL_SAFE if part.held_result is None else DecidedBy.RESULT)
                due.append(part)
        return due

    def _mark(self, part_id: str, by: DecidedBy) -> None:
        self._decided[part_id] = by
        if len(self._decided) > self.remembered:
            self._decided.popitem(last=False)
