"""The fleet's check of the cells' verdict/eject reconciliation (SummaryStore.reconcile_findings) over stored records:
every status other than RESOLVED is a finding, and so is a RESOLVED part without its reject record."""

from __future__ import annotations

from qc_cloud.summary_store import SummaryStore
from qc_contract import records

CELL = "site/line/cell"


def _store(store: SummaryStore, stream: str, seq: int, body: dict) -> None:
    record = records.envelope(CELL, "0123abcd", stream, seq, body)
    assert store.add(f"qc/{CELL}/{stream}", records.encode(record)) == "stored"


def _reconcile(part_id: str, status: int, outcome: int) -> dict:
    return records.reconcile(
        part_id=part_id,
        verdict=2,
        has_verdict=True,
        lane="reject",
        status=status,
        outcome=outcome,
        terminal_events=0 if outcome < 0 else 1,
        capture_ns=1_700_000_000_000_000_000,
        deadline_ns=1_700_000_002_000_000_000,
    )


def _reject(part_id: str) -> dict:
    times = dict(capture_ns=1_700_000_000_000_000_000, planned_ns=0, actual_ns=0)
    return records.reject(
        part_id=part_id, verdict=2, outcome=0, method="sim", lane="reject", lateness_ms=0.0, message="", **times
    )


def test_overdue_duplicate_and_unrecorded_parts_are_findings(tmp_path):
    store = SummaryStore(tmp_path / "summary.sqlite3")
    try:
        _store(store, "reject", 1, _reject("ok"))
        _store(store, "reconcile", 1, _reconcile("ok", 0, 0))
        _store(store, "reconcile", 2, _reconcile("gone", 1, -1))
        _store(store, "reconcile", 3, _reconcile("twice", 2, 0))
        _store(store, "reconcile", 4, _reconcile("no-record", 0, 0))
        assert sorted(store.reconcile_findings()) == [
            (CELL, "gone", "OVERDUE"),
            (CELL, "no-record", "NO_REJECT_RECORD"),
            (CELL, "twice", "DUPLICATE"),
        ]
        assert store.reconcile_findings("other/line/cell") == []
    finally:
        store.close()
