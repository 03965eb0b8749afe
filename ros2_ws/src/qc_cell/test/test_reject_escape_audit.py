"""The verdict/eject reconciliation rule: every part removed, passed good, or alarmed; anything else is a silent
escape (plain pytest)."""

from __future__ import annotations

from qc_cell.reject.escape_audit import EventSeen, audit, summary
from qc_contract.vocabulary import RejectOutcome as O
from qc_contract.vocabulary import Verdict as V  # noqa: N817


def test_each_part_has_exactly_one_fate_and_unreported_misses_are_silent_escapes():
    verdicts = {"good": V.NORMAL, "bad": V.DEFECTIVE, "unsure": V.REINSPECT, "stuck": V.DEFECTIVE, "lost": V.DEFECTIVE}
    events = {
        "bad": [EventSeen(V.DEFECTIVE, O.DONE, "reject")],
        "unsure": [EventSeen(V.REINSPECT, O.DONE, "divert")],
        "stuck": [EventSeen(V.DEFECTIVE, O.UNCONFIRMED, "reject")],
        "lost": [EventSeen(V.DEFECTIVE, O.DONE, "")],  # a "DONE" without a lane removed nothing
        "unjudged": [EventSeen(V.NOT_INSPECTED, O.DONE, "reject")],  # the watchdog ejected it
        "cloud_ok": [EventSeen(V.NORMAL, O.SKIPPED, "")],
    }
    verdicts["cloud_ok"] = V.NORMAL
    parts = [*verdicts, "unjudged", "vanished"]
    fates = audit(parts, verdicts, events, critical_parts=["stuck"])
    assert fates == {
        "good": "passed",
        "bad": "removed",
        "unsure": "removed",
        "stuck": "alarmed",
        "lost": "silent_escape",
        "cloud_ok": "passed",
        "unjudged": "removed",
        "vanished": "silent_escape",  # registered, no verdict, no event, no alert
    }
    assert summary(fates) == {"removed": 3, "passed": 2, "alarmed": 1, "silent_escape": 2}
