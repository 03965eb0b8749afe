"""The record schemas spell verdicts, severities, reject outcomes and model states exactly as the vocabulary
does (the builders in records.py name them from the vocabulary; the schemas are JSON and cannot import it)."""

from __future__ import annotations

import pytest

from qc_contract import records, schemas
from qc_contract.vocabulary import MODEL_STATE_NAMES, OUTCOME_NAMES, SEVERITY_NAMES, VERDICT_NAMES, Verdict

ALL_VERDICTS = list(VERDICT_NAMES.values())
INSPECTED_VERDICTS = [name for value, name in VERDICT_NAMES.items() if value != Verdict.NOT_INSPECTED]

# (schema, property, the names its enum must list, in the vocabulary's order)
ENUMS = [
    ("part", "verdict", ALL_VERDICTS),
    ("sample", "verdict", ALL_VERDICTS),
    ("reject", "verdict", ALL_VERDICTS),
    ("reject", "outcome", list(OUTCOME_NAMES.values())),
    ("alert", "severity", list(SEVERITY_NAMES.values())),
    ("model_status", "state", list(MODEL_STATE_NAMES.values())),
    ("verify_request", "verdict", ALL_VERDICTS),
    ("verify", "local_verdict", ALL_VERDICTS),
    ("verify", "cloud_verdict", [*INSPECTED_VERDICTS, None]),  # the cloud inspects: never NOT_INSPECTED
    ("verify_response", "verdict", INSPECTED_VERDICTS),
]


@pytest.mark.parametrize(("name", "field", "expected"), ENUMS, ids=[f"{s}.{f}" for s, f, _ in ENUMS])
def test_schema_enums_are_the_vocabulary(name: str, field: str, expected: list):
    assert schemas.schema(name)["properties"][field]["enum"] == expected


def test_kpi_counts_every_verdict_by_name():
    verdicts = schemas.schema("kpi")["properties"]["verdicts"]
    assert list(verdicts["properties"]) == ALL_VERDICTS and verdicts["required"] == ALL_VERDICTS


def test_records_name_values_from_the_vocabulary_and_unknown_values_as_such():
    body = records.alert(stamp_ns=1, severity=3, source="s", code="C", message="m", part_id="")
    assert body["severity"] == "CRITICAL"
    reject = records.reject(
        part_id="p",
        verdict=Verdict.DEFECTIVE,
        outcome=1,
        method="sim",
        lane="reject",
        capture_ns=1,
        planned_ns=2,
        actual_ns=0,
        lateness_ms=0.0,
        message="",
    )
    assert (reject["verdict"], reject["outcome"]) == ("DEFECTIVE", "LATE")
    part = records.part(
        part_id="p",
        verdict=7,
        reasons=[],
        defect_probability=0.1,
        process_anomaly_score=0.0,
        process_flags=0,
        model_version="1",
        encoder_count=-1,
        capture_ns=1,
        decision_ns=2,
        capture_to_decision_ms=1.0,
    )
    assert part["verdict"] == "UNKNOWN_7"
    errors = schemas.validator("part").iter_errors(records.envelope("site/line/cell", "0123abcd", "part", 1, part))
    assert [list(e.path) for e in errors] == [["verdict"]], "the schema refuses the unknown verdict, and only that"
