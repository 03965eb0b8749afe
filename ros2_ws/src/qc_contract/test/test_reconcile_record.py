"""The `reconcile` record (schemas/reconcile.schema.json): the edge reconciler's finding on one part, which the fleet
checks. A new stream of schema_version 1: the records of the other streams, written before it existed, still
validate unchanged."""

from __future__ import annotations

import pytest

from qc_contract import records, schemas, topics
from qc_contract.vocabulary import OUTCOME_NAMES, RejectOutcome, Verdict

CELL, EPOCH = "site/line/cell", "0123abcd"


def _reconcile(**changes) -> dict:
    body = dict(
        part_id="p-1",
        verdict=Verdict.DEFECTIVE,
        has_verdict=True,
        lane="reject",
        status=0,
        outcome=RejectOutcome.DONE,
        terminal_events=1,
        capture_ns=1_700_000_000_000_000_000,
        deadline_ns=1_700_000_002_000_000_000,
    )
    body.update(changes)
    return records.envelope(CELL, EPOCH, "reconcile", 1, records.reconcile(**body))


def test_a_resolved_and_an_overdue_part_validate_and_read_by_name():
    resolved = _reconcile()
    assert resolved["status"] == "RESOLVED" and resolved["outcome"] == "DONE" and resolved["type"] == "reconcile"
    assert list(schemas.validator("reconcile").iter_errors(resolved)) == []
    overdue = _reconcile(status=1, outcome=-1, terminal_events=0, has_verdict=False, verdict=Verdict.NOT_INSPECTED)
    assert overdue["status"] == "OVERDUE" and overdue["outcome"] is None
    assert list(schemas.validator("reconcile").iter_errors(overdue)) == []


def test_the_schema_refuses_an_unknown_status_and_a_missing_field():
    bad = {**_reconcile(), "status": "LOST"}
    assert [list(e.path) for e in schemas.validator("reconcile").iter_errors(bad)] == [["status"]]
    missing = _reconcile()
    del missing["terminal_events"]
    assert [e.validator for e in schemas.validator("reconcile").iter_errors(missing)] == ["required"]


def test_outcomes_are_the_vocabulary_and_the_stream_has_a_topic():
    assert schemas.schema("reconcile")["properties"]["outcome"]["enum"] == [*OUTCOME_NAMES.values(), None]
    assert topics.CellId("s", "l", "c").stream_topic("reconcile") == "qc/s/l/c/reconcile"
    assert schemas.schema("reconcile")["properties"]["schema_version"]["const"] == records.SCHEMA_VERSION == 1


# Records as schema_version 1 wrote them before the reconcile stream (and the steady stamps) existed.
OLD_RECORDS = {
    "reject": {
        "part_id": "p-1",
        "verdict": "DEFECTIVE",
        "outcome": "DONE",
        "method": "gpio",
        "lane": "reject",
        "capture_time": "2026-01-01T00:00:00.000000Z",
        "planned_time": "2026-01-01T00:00:01.600000Z",
        "actual_time": "2026-01-01T00:00:01.600400Z",
        "lateness_ms": 0.4,
        "message": "",
    },
    "part": {
        "part_id": "p-1",
        "verdict": "NORMAL",
        "reasons": ["visual_normal"],
        "defect_probability": 0.1,
        "process_anomaly_score": None,
        "process_flags": 0,
        "model_version": "m1",
        "encoder_count": -1,
        "capture_time": "2026-01-01T00:00:00.000000Z",
        "decision_time": "2026-01-01T00:00:00.050000Z",
        "capture_to_decision_ms": 50.0,
    },
}


@pytest.mark.parametrize("stream", sorted(OLD_RECORDS))
def test_records_written_before_the_reconcile_stream_still_validate(stream: str):
    record = records.envelope(CELL, EPOCH, stream, 7, OLD_RECORDS[stream])
    assert list(schemas.validator(stream).iter_errors(record)) == []
