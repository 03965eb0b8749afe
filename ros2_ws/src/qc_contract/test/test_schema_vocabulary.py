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
    ("verify_response", "verdict", [*INSPECTED_VERDICTS, None]),  # no verdict when expired or refused
    ("verification", "verdict", [*INSPECTED_VERDICTS, None]),
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


SIMULATED_STREAMS = ["part", "reject", "process"]


@pytest.mark.parametrize("name", SIMULATED_STREAMS)
def test_simulated_names_the_vocabulary_and_stays_optional(name: str):
    from qc_contract.vocabulary import SIMULATED_INPUTS

    prop = schemas.schema(name)["properties"]["simulated"]
    assert prop["items"]["enum"] == list(SIMULATED_INPUTS)
    # Added as an optional property: schema_version 1 records written before it (without it) still validate.
    assert "simulated" not in schemas.schema(name)["required"]
    assert schemas.schema(name)["properties"]["schema_version"]["const"] == records.SCHEMA_VERSION == 1


def _process(**extra) -> dict:
    body = records.process(
        stamp_ns=1,
        temperature_c=45.0,
        pressure_pa=6e5,
        vibration_rms=0.5,
        anomaly_score=0.0,
        flags=0,
        out_of_spec=False,
        stale=False,
        **extra,
    )
    return records.envelope("site/line/cell", "0123abcd", "process", 1, body)


def test_records_from_simulated_inputs_are_marked_and_real_ones_unchanged():
    real = _process()
    assert "simulated" not in real, "a real cell's record is as before the field existed"
    assert list(schemas.validator("process").iter_errors(real)) == []
    demo = _process(simulated_inputs=["camera", "process_sensors"])
    assert demo["simulated"] == ["process_sensors", "camera"], "in vocabulary order"
    assert list(schemas.validator("process").iter_errors(demo)) == []
    with pytest.raises(ValueError, match="simulated inputs \\['plc'\\]"):
        _process(simulated_inputs=["plc"])
    forged = {**real, "simulated": ["plc"]}
    assert [list(e.path) for e in schemas.validator("process").iter_errors(forged)] == [["simulated", 0]]
