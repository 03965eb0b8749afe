"""Live progress of a running cell (ROS-free): parts decided, verdict counts, parts/s, latency."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from qc_contract.vocabulary import VERDICT_NAMES


@dataclass
class CellProgress:
    started: float = field(default_factory=time.monotonic)
    verdicts: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    part_ids: set[str] = field(default_factory=set)
    duplicates: int = 0
    first_decision: float | None = None
    last_decision: float | None = None

    def add(self, part_id: str, verdict: int, latency_ms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if part_id in self.part_ids:
            self.duplicates += 1
            return
        self.part_ids.add(part_id)
        self.verdicts[VERDICT_NAMES.get(verdict, str(verdict))] += 1
        self.latencies_ms.append(latency_ms)
        self.first_decision = self.first_decision or now
        self.last_decision = now

    @property
    def parts(self) -> int:
        return len(self.part_ids)

    def parts_per_s(self) -> float:
        if self.first_decision is None or self.last_decision is None or self.parts < 2:
            return 0.0
        return (self.parts - 1) / max(self.last_decision - self.first_decision, 1e-9)

    def latency_percentiles(self, recent: int = 500) -> tuple[float, float, float]:
        if not self.latencies_ms:
            return (float("nan"),) * 3
        p50, p95, p99 = np.percentile(np.asarray(self.latencies_ms[-recent:]), [50, 95, 99])
        return float(p50), float(p95), float(p99)

    def line(self) -> str:
        p50, p95, _ = self.latency_percentiles()
        counts = " ".join(f"{name.lower()}={self.verdicts.get(name, 0)}" for name in VERDICT_NAMES.values())
        return (
            f"parts={self.parts} {counts} rate={self.parts_per_s():.1f}/s "
            f"latency p50={p50:.1f}ms p95={p95:.1f}ms dup={self.duplicates}"
        )
