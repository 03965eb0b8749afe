"""Decision watchdog: every part registered at the camera (camera/parts) must get a verdict
(quality/decision) within `timeout`. A part whose verdict does not come in time is handed back as
expired (the controller treats it as NOT_INSPECTED: fail-safe); when no verdict at all arrived for
`timeout` while such parts exist, the decision stream is considered down (TRIPPED) until the next verdict.
The caller does not report parts it already has a verdict for (a verdict can overtake its camera/parts message)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from qc_cell.reject.records import Part


@dataclass(frozen=True)
class WatchdogPoll:
    expired: list[Part]  # parts without a verdict after the timeout, oldest first
    tripped: bool  # the stream went down at this poll


class DecisionWatchdog:
    def __init__(self, timeout_ns: int, max_tracked: int = 10_000) -> None:
        if timeout_ns <= 0:
            raise ValueError(f"watchdog timeout must be > 0, got {timeout_ns} ns")
        self.timeout_ns = timeout_ns
        self.max_tracked = max_tracked
        self._waiting: OrderedDict[str, tuple[Part, int]] = OrderedDict()  # part_id -> (part, seen at)
        self._last_decision_ns: int | None = None
        self.tripped = False
        self.overflowed = 0  # parts dropped from tracking because too many were outstanding

    def part_seen(self, part: Part, now_ns: int) -> None:
        if part.part_id in self._waiting:
            return
        self._waiting[part.part_id] = (part, now_ns)
        if len(self._waiting) > self.max_tracked:
            self._waiting.popitem(last=False)
            self.overflowed += 1

    def decision_seen(self, part_id: str, now_ns: int) -> bool:
        """Record a verdict; True when this verdict ends a TRIPPED state."""
        self._waiting.pop(part_id, None)
        self._last_decision_ns = now_ns
        if self.tripped:
            self.tripped = False
            return True
        return False

    def outstanding(self) -> int:
        return len(self._waiting)

    def poll(self, now_ns: int) -> WatchdogPoll:
        expired: list[Part] = []
        while self._waiting:
            part_id, (part, seen_ns) = next(iter(self._waiting.items()))
            if now_ns - seen_ns < self.timeout_ns:
                break
            del self._waiting[part_id]
            expired.append(part)
        stream_down = self._last_decision_ns is None or now_ns - self._last_decision_ns >= self.timeout_ns
        tripped_now = bool(expired) and stream_down and not self.tripped
        if tripped_now:
            self.tripped = True
        return WatchdogPoll(expired, tripped_now)
