"""The verdict/eject reconciliation rule (plain Python, no ROS): what became of each part, and which left the line
bad or unjudged without anyone being told (a silent escape).

For every part registered at the camera, exactly one of:

- `removed`: it had to go (DEFECTIVE, NOT_INSPECTED, REINSPECT, or no verdict at all, which the watchdog ejects as
  NOT_INSPECTED) and a reject/event says DONE on the reject or divert lane (confirmed, where the station has a
  confirmation sensor);
- `passed`: its verdict was NORMAL and nothing was done (or a cloud re-inspection let it through: SKIPPED);
- `alarmed`: it was not removed, and a CRITICAL alert names it (the line was told, the stop-line is the actuator's
  missed_response);
- `silent_escape`: none of these.

Used by the fault-injection system test (tests/test_fault_injection.py), from outside the cell. Inside it, the
reject actuator's reconciler (qc_cell.reject.reconciler) checks the same promise on the edge, part by part against a
deadline, and the fleet checks the `reconcile` records it sends (docs/mqtt.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qc_contract.vocabulary import RejectOutcome, Verdict

REMOVED, PASSED, ALARMED, SILENT_ESCAPE = "removed", "passed", "alarmed", "silent_escape"


@dataclass(frozen=True)
class EventSeen:
    verdict: int
    outcome: int
    lane: str


def audit(
    parts: Iterable[str],
    verdicts: Mapping[str, int],
    events: Mapping[str, list[EventSeen]],
    critical_parts: Iterable[str],
) -> dict[str, str]:
    """part id -> removed, passed, alarmed or silent_escape (see the module)."""
    alarmed = set(critical_parts)
    fates = {}
    for part_id in parts:
        seen = events.get(part_id, [])
        verdict = verdicts.get(part_id)
        if any(e.outcome == RejectOutcome.DONE and e.lane for e in seen):
            fates[part_id] = REMOVED
        elif part_id in alarmed:
            fates[part_id] = ALARMED
        elif verdict == Verdict.NORMAL and all(e.outcome == RejectOutcome.SKIPPED for e in seen):
            fates[part_id] = PASSED
        else:
            fates[part_id] = SILENT_ESCAPE
    return fates


def summary(fates: Mapping[str, str]) -> dict[str, int]:
    counts = Counter(fates.values())
    return {fate: counts.get(fate, 0) for fate in (REMOVED, PASSED, ALARMED, SILENT_ESCAPE)}
