"""Hourly part rollups, without I/O: the increments one batch of new parts adds per (cell, hour)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

VERDICT_COLUMNS = {
    "NORMAL": "normal",
    "REINSPECT": "reinspect",
    "DEFECTIVE": "defective",
    "NOT_INSPECTED": "not_inspected",
}


def hour_of(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def increments(parts: Iterable[tuple[str, datetime, str, float | None]]) -> list[dict[str, Any]]:
    """(cell, time, verdict, capture_to_decision_ms) per new part -> one row of increments per (cell, hour),
    sorted by key (rows are locked in that order, so concurrent workers cannot deadlock on them)."""
    rows: dict[tuple[str, datetime], dict[str, Any]] = {}
    for cell, time, verdict, latency in parts:
        key = (cell, hour_of(time))
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "cell": key[0],
                "hour": key[1],
                "parts": 0,
                "latency_sum_ms": 0.0,
                "latency_n": 0,
                "latency_max_ms": 0.0,
                **dict.fromkeys(VERDICT_COLUMNS.values(), 0),
            }
        row["parts"] += 1
        column = VERDICT_COLUMNS.get(verdict)
        if column:
            row[column] += 1
        if latency is not None:
            row["latency_sum_ms"] += latency
            row["latency_n"] += 1
            row["latency_max_ms"] = max(row["latency_max_ms"], latency)
    return [rows[k] for k in sorted(rows)]


def yield_ratio(normal: int, parts: int) -> float | None:
    """Share of inspected parts judged NORMAL; None without parts."""
    return normal / parts if parts else None
