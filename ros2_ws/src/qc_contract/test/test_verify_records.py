"""The verify_response outcome (scored / expired / refused), read the same by old and new cells, and the verifier's
verification record."""

from __future__ import annotations

import pytest

from qc_contract import records, schemas
from qc_contract.inbound import InboundError, parse

OLD_ANSWER = {"schema_version": 1, "type": "verify_response", "part_id": "p1", "request_id": "r1", "verdict": "NORMAL"}


def _parse(body: dict) -> dict:
    return parse(records.encode(body), "verify_response", 4096)


def test_an_answer_without_outcome_is_a_scored_one_and_still_needs_its_verdict():
    assert _parse(OLD_ANSWER)["verdict"] == "NORMAL"
    with pytest.raises(InboundError) as err:
        _parse({**OLD_ANSWER, "verdict": None})
    assert err.value.reason == "schema_violation"
    with pytest.raises(InboundError):
        _parse({k: v for k, v in OLD_ANSWER.items() if k != "verdict"})


def test_expired_and_refused_answers_carry_no_verdict_and_scored_ones_must():
    expired = records.verify_response(part_id="p1", request_id="r1", outcome="expired", reason="deadline_passed")
    assert _parse(expired)["verdict"] is None
    refused = records.verify_response(part_id="", request_id="", outcome="refused", reason="malformed_json")
    assert _parse(refused)["reason"] == "malformed_json"
    with pytest.raises(InboundError):
        _parse(records.verify_response(part_id="p1", request_id="r1", outcome="scored"))
    scored = records.verify_response(part_id="p1", request_id="r1", verdict="DEFECTIVE", defect_probability=0.91234)
    assert _parse(scored)["defect_probability"] == 0.9123


def test_the_verification_record_validates_and_keeps_its_identity():
    record = records.verification(
        cell="plant1/line2/cell3", request_id="0badc0de-verify_request-7", part_id="p7", verifier="w1",
        outcome="scored", reason="", verdict="NORMAL", defect_probability=0.1, local_verdict="REINSPECT",
        local_defect_probability=0.6, edge_model_version="edge-1", model_version="cloud-1",
        capture_time="2026-01-01T00:00:00.000000Z", deadline="2026-01-01T00:00:00.400000Z",
        received_ns=1_767_225_600_050_000_000, answered_ns=1_767_225_600_090_000_000, queue_ms=3.2, service_ms=31.0,
        batch_size=4, image_bytes=12345,
    )  # fmt: skip
    schemas.validator("verification").validate(record)
    assert (record["cell"], record["request_id"]) == ("plant1/line2/cell3", "0badc0de-verify_request-7")
    assert record["received_time"] == "2026-01-01T00:00:00.050000Z"
    with pytest.raises(Exception, match="Additional properties"):
        schemas.validator("verification").validate({**record, "extra": 1})
