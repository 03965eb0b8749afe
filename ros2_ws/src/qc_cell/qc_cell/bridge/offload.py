"""Re-inspection offload: a re-inspect part's image goes to the cloud (.../verify/request); the cloud's
verdict (.../verify/response) is used only if it arrives before the part's deadline, i.e. capture time +
the slack the conveyor gives between the camera and the reject point. Otherwise the local verdict stands.

A response after the deadline is still measured (outcome "late", with its round-trip time) if it comes
within late_grace_s; a request without any answer by then is reported as "no_response".

Times: deadlines in wall-clock ns (the parts' capture stamps), round trips in monotonic ns.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class PendingVerify:
    part_id: str
    request_id: str
    local_verdict: int
    capture_ns: int  # wall clock
    deadline_ns: int  # wall clock
    sent_mono_ns: int


@dataclass(frozen=True)
class VerifyOutcome:
    pending: PendingVerify | None
    outcome: str  # used, late, unknown_request
    rtt_ms: float | None


class OffloadTracker:
    def __init__(
        self, slack_ms: float, min_remaining_ms: float = 0.0, late_grace_s: float = 30.0, rtt_window: int = 500
    ) -> None:
        self.slack_ns = int(slack_ms * 1e6)
        self.late_grace_ns = int(late_grace_s * 1e9)
        self.min_remaining_ns = int(min_remaining_ms * 1e6)
        self.counts: Counter[str] = Counter()  # sent, used, late, no_response, no_slack, unknown_request
        self._pending: dict[str, PendingVerify] = {}
        self._rtts: deque[float] = deque(maxlen=rtt_window)
        self._lock = threading.Lock()

    def deadline(self, capture_ns: int) -> int:
        return capture_ns + self.slack_ns

    def worth_sending(self, capture_ns: int, now_ns: int) -> bool:
        """False when the remaining slack is already shorter than min_remaining_ms: do not bother the cloud."""
        if self.deadline(capture_ns) - now_ns < self.min_remaining_ns:
            with self._lock:
                self.counts["no_slack"] += 1
            return False
        return True

    def sent(self, part_id: str, request_id: str, local_verdict: int, capture_ns: int, mono_ns: int) -> None:
        with self._lock:
            self._pending[request_id] = PendingVerify(
                part_id, request_id, local_verdict, capture_ns, self.deadline(capture_ns), mono_ns
            )
            self.counts["sent"] += 1

    def response(self, request_id: str, part_id: str, now_ns: int, mono_ns: int) -> VerifyOutcome:
        with self._lock:
            pending = self._pending.get(request_id)
            if pending is None or pending.part_id != part_id:
                self.counts["unknown_request"] += 1
                return VerifyOutcome(None, "unknown_request", None)
            del self._pending[request_id]
            rtt_ms = (mono_ns - pending.sent_mono_ns) / 1e6
            self._rtts.append(rtt_ms)
            outcome = "used" if now_ns <= pending.deadline_ns else "late"
            self.counts[outcome] += 1
            return VerifyOutcome(pending, outcome, rtt_ms)

    def expire(self, now_ns: int) -> list[PendingVerify]:
        """Requests without any answer by deadline + late_grace_s (the local verdict stood)."""
        with self._lock:
            gone = [p for p in self._pending.values() if p.deadline_ns + self.late_grace_ns < now_ns]
            for p in gone:
                del self._pending[p.request_id]
            self.counts["no_response"] += len(gone)
            return gone

    def rtt_stats(self) -> dict[str, float | int | None]:
        with self._lock:
            values = sorted(self._rtts)
        if not values:
            return {"rtt_count": 0, "rtt_p50_ms": None, "rtt_p95_ms": None, "rtt_max_ms": None}

        def pct(q: float) -> float:
            return round(values[min(len(values) - 1, math.ceil(q * len(values)) - 1)], 2)

        return {"rtt_count": len(values), "rtt_p50_ms": pct(0.5), "rtt_p95_ms": pct(0.95), "rtt_max_ms": pct(1.0)}

    @property
    def pending_count(self) -> int:
        return len(self._pending)
