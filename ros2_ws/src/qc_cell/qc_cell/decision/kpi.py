"""Rolling-window KPIs of the verdicts: counts, yield, reasons, throughput, capture-to-verdict latency."""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qc_contract.vocabulary import Verdict

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class KpiSnapshot:
    stamp_ns: int
    window_s: float
    parts: int
    counts: dict[Verdict, int]
    yield_ratio: float  # normal / parts; NaN without parts
    throughput_pps: float
    latency_p50_ms: float  # NaN without parts
    latency_p95_ms: float
    latency_p99_ms: float
    reasons: dict[str, int]  # parts per reason, most frequent first
    total_parts: int

    def reason_rate(self, reason: str) -> float:
        """Fraction of the window's parts that carry `reason` (e.g. the defect rate per reason)."""
        return self.reasons.get(reason, 0) / self.parts if self.parts else math.nan


@dataclass(frozen=True)
class _Entry:
    decided_ns: int
    verdict: Verdict
    reasons: tuple[str, ...]
    latency_ms: float


class RollingKpi:
    def __init__(self, window_s: float, started_ns: int) -> None:
        if not window_s > 0.0:
            raise ValueError(f"KPI window must be > 0 s, got {window_s}")
        self.window_s = window_s
        self._window_ns = int(window_s * NS_PER_S)
        self._started_ns = started_ns
        self._entries: deque[_Entry] = deque()
        self.total_parts = 0

    def add(self, decided_ns: int, verdict: Verdict, reasons: Sequence[str], latency_ms: float) -> None:
        self._entries.append(_Entry(decided_ns, verdict, tuple(dict.fromkeys(reasons)), latency_ms))
        self.total_parts += 1
        self._prune(decided_ns)

    def _prune(self, now_ns: int) -> None:
        horizon = now_ns - self._window_ns
        while self._entries and self._entries[0].decided_ns <= horizon:
            self._entries.popleft()

    def snapshot(self, now_ns: int) -> KpiSnapshot:
        self._prune(now_ns)
        entries = self._entries
        parts = len(entries)
        counts = Counter(e.verdict for e in entries)
        reasons = Counter(r for e in entries for r in e.reasons)
        latencies = np.array([e.latency_ms for e in entries if math.isfinite(e.latency_ms)], dtype=np.float64)
        if latencies.size:
            p50, p95, p99 = (float(v) for v in np.percentile(latencies, (50, 95, 99)))
        else:
            p50 = p95 = p99 = math.nan
        # Until the node has run for a full window, the rate is over the time it has run.
        span_s = min(self._window_ns, max(now_ns - self._started_ns, 1)) / NS_PER_S
        return KpiSnapshot(
            stamp_ns=now_ns,
            window_s=self.window_s,
            parts=parts,
            counts={v: counts.get(v, 0) for v in Verdict},
            yield_ratio=counts.get(Verdict.NORMAL, 0) / parts if parts else math.nan,
            throughput_pps=parts / span_s,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            latency_p99_ms=p99,
            reasons=dict(reasons.most_common()),
            total_parts=self.total_parts,
        )
