"""A controller sink that keeps every record in memory (tests, the benchmark, offline runs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from qc_cell.reject.records import AlertRecord, RejectRecord


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[RejectRecord] = []
        self.alerts: list[AlertRecord] = []
        self._cond = threading.Condition()

    def event(self, record: RejectRecord) -> None:
        with self._cond:
            self.events.append(record)
            self._cond.notify_all()

    def alert(self, alert: AlertRecord) -> None:
        with self._cond:
            self.alerts.append(alert)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait for predicate (over the records or anything else), re-checked at least every 10 ms."""
        end = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if time.monotonic() > end:
                    return False
                self._cond.wait(0.01)
            return True

    def by_part(self) -> dict[str, RejectRecord]:
        return {e.part_id: e for e in self.events}

    def codes(self) -> list[str]:
        return [a.code for a in self.alerts]
