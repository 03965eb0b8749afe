"""A short history of process states, to join each part with the state in force at its capture time.

The decision node subscribes process/state itself and looks the state up here when the part's result
arrives: no waiting for another message, so sensor fusion stays off the critical path.
"""

from __future__ import annotations

import bisect

from qc_cell.decision.verdict_rule import ProcessContext


class ProcessHistory:
    def __init__(self, max_age_ns: int, keep_ns: int) -> None:
        """max_age_ns: a state further than this from the capture time does not count (fusion silent or dead).
        keep_ns: how far back states are kept (must cover the longest result delay, i.e. the deadline)."""
        if max_age_ns <= 0 or keep_ns < max_age_ns:
            raise ValueError(f"need 0 < max_age ({max_age_ns} ns) <= keep ({keep_ns} ns)")
        self.max_age_ns = max_age_ns
        self.keep_ns = keep_ns
        self._stamps: list[int] = []
        self._states: list[ProcessContext] = []

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def latest_stamp_ns(self) -> int | None:
        return self._stamps[-1] if self._stamps else None

    def add(self, stamp_ns: int, ctx: ProcessContext) -> None:
        index = bisect.bisect_right(self._stamps, stamp_ns)  # out-of-order arrivals land in place
        self._stamps.insert(index, stamp_ns)
        self._states.insert(index, ctx)
        horizon = self._stamps[-1] - self.keep_ns
        drop = bisect.bisect_left(self._stamps, horizon, hi=len(self._stamps) - 1)  # always keep the newest
        if drop:
            del self._stamps[:drop]
            del self._states[:drop]

    def at(self, capture_ns: int) -> ProcessContext:
        """The latest state stamped at or before the capture, if it is at most max_age old; else the first
        state after the capture if within max_age (the part was captured before fusion's first state);
        else unknown."""
        index = bisect.bisect_right(self._stamps, capture_ns)
        if index > 0 and capture_ns - self._stamps[index - 1] <= self.max_age_ns:
            return self._states[index - 1]
        if index < len(self._stamps) and self._stamps[index] - capture_ns <= self.max_age_ns:
            return self._states[index]
        return ProcessContext.unknown()
