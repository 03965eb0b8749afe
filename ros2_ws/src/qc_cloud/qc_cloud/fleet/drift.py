"""Drift rules, without I/O: is a cell's recent window of parts distributed like its model's reference?

Inputs are the fixed-bin histograms of qc_contract.drift (the KPI records' `distributions`, the references).
- Window: the newest KPI records of the cell's current model, summed until they hold `window_parts` parts.
- Measure: the population stability index of each statistic (qc_contract.drift.psi). INPUT_DRIFT looks at the
  image statistics (brightness, contrast, sharpness), SCORE_DRIFT at the defect probability; a kind's PSI is the
  largest of its statistics', and the evidence names that statistic.
- Episodes (no alert storm): an episode opens, with one alert, when a kind's PSI reaches `alert_psi` over a window
  of at least `min_parts` parts; it stays open (no new alert) until the PSI is back below `watch_psi` (hysteresis),
  then it is cleared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qc_contract.drift import BINS, IMAGE_STATS, PSI_ALERT, PSI_WATCH, SCORE_STAT, Histograms, psi

INPUT_DRIFT = "INPUT_DRIFT"
SCORE_DRIFT = "SCORE_DRIFT"
CODES = {INPUT_DRIFT: IMAGE_STATS, SCORE_DRIFT: (SCORE_STAT,)}


@dataclass(frozen=True)
class DriftSettings:
    reference_parts: int = 300  # the line reference: the first parts a cell runs a model on
    window_parts: int = 300  # the recent window compared with the reference
    min_parts: int = 150  # fewer parts in the window (or the reference): nothing is judged
    watch_psi: float = PSI_WATCH  # an open episode clears below this
    alert_psi: float = PSI_ALERT  # an episode opens at or above this

    def __post_init__(self) -> None:
        if not 1 <= self.min_parts <= self.window_parts:
            raise ValueError(f"drift min_parts {self.min_parts}: within [1, window_parts {self.window_parts}]")
        if self.reference_parts < self.min_parts:
            raise ValueError(f"drift reference_parts {self.reference_parts}: at least min_parts {self.min_parts}")
        if not 0 < self.watch_psi <= self.alert_psi:
            raise ValueError(f"drift thresholds: 0 < watch_psi {self.watch_psi} <= alert_psi {self.alert_psi}")


@dataclass(frozen=True)
class Window:
    counts: dict[str, list[int]]
    parts: int
    records: int  # KPI records summed
    first_time: str | None = None
    last_time: str | None = None


def window(records: Iterable[tuple[Mapping[str, Sequence[int]], int, str | None]], window_parts: int) -> Window:
    """Sum (histograms, parts, time) records, NEWEST FIRST, until they hold at least `window_parts` parts."""
    total = Histograms()
    n, first, last = 0, None, None
    for counts, parts, time in records:
        if total.parts >= window_parts:
            break
        total.merge(counts, parts)
        n += 1
        last = last or time
        first = time
    return Window(total.counts, total.parts, n, first, last)


@dataclass(frozen=True)
class Assessment:
    code: str
    psi: float  # the largest of the kind's statistics; NaN when not judged
    statistic: str  # the statistic with that PSI
    by_statistic: dict[str, float]
    judged: bool  # enough parts in the window and the reference
    evidence: dict[str, Any] = field(default_factory=dict)


def assess(
    reference: Mapping[str, Sequence[int]],
    reference_parts: int,
    reference_about: Mapping[str, Any],
    recent: Window,
    settings: DriftSettings,
) -> list[Assessment]:
    """One assessment per code (CODES), with the evidence an alert carries."""
    out = []
    for code, stats in CODES.items():
        by_stat = {s: psi(reference[s], recent.counts[s]) for s in stats if s in reference and s in recent.counts}
        finite = {s: v for s, v in by_stat.items() if math.isfinite(v)}
        judged = bool(finite) and recent.parts >= settings.min_parts and reference_parts >= settings.min_parts
        stat = max(finite, key=finite.__getitem__) if finite else (stats[0])
        value = finite.get(stat, math.nan)
        evidence = {
            "statistic": stat,
            "psi": _round(value),
            "psi_by_statistic": {s: _round(v) for s, v in by_stat.items()},
            "thresholds": {"watch": settings.watch_psi, "alert": settings.alert_psi, "min_parts": settings.min_parts},
            "bins": {k: getattr(BINS[stat], k) for k in ("low", "high", "count", "unit")},
            "reference": {**reference_about, "parts": int(reference_parts), "counts": list(reference.get(stat, []))},
            "recent": {
                "parts": recent.parts,
                "records": recent.records,
                "from": recent.first_time,
                "to": recent.last_time,
                "counts": list(recent.counts.get(stat, [])),
            },
        }
        out.append(Assessment(code, value, stat, by_stat, judged, evidence))
    return out


def transition(is_open: bool, a: Assessment, settings: DriftSettings) -> str | None:
    """'open' (raise the alert), 'clear' (the episode ends) or None (nothing changes)."""
    if not a.judged:
        return None
    if not is_open and a.psi >= settings.alert_psi:
        return "open"
    if is_open and a.psi < settings.watch_psi:
        return "clear"
    return None


def message(a: Assessment, model_version: str, source: str) -> str:
    e = a.evidence
    what = "input" if a.code == INPUT_DRIFT else "score"
    return (
        f"{what} drift: {a.statistic} PSI {a.psi:.2f} >= {e['thresholds']['alert']:g} over the last "
        f"{e['recent']['parts']} parts, against the {source} reference of model {model_version or '?'} "
        f"({e['reference']['parts']} parts)"
    )


def _round(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None
