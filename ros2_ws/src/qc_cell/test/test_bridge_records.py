"""Outbound records against their JSON Schema files, and the validation of inbound JSON (plain pytest)."""

from __future__ import annotations

import json

import pytest
from jsonschema import ValidationError

from qc_contract import records, schemas
from qc_contract.broker import BridgeConfigError, broker_config, parse_broker_url
from qc_contract.inbound import InboundError, parse
from qc_contract.topics import CellId

NS = 1_700_000_000_123_456_789


def _wrapped(stream: str, body: dict) -> dict:
    record = records.envelope("plant1/line2/cell3", "0a1b2c3d", stream, 7, body)
    return json.loads(records.encode(record))  # what goes on the wire, parsed back


BODIES = {
    "part": records.part(
        part_id="cell3-000042",
        verdict=1,
        reasons=["visual_reinspect", "process_anomaly"],
        defect_probability=0.6123456,
        process_anomaly_score=float("nan"),
        process_flags=128,
        model_version="efficientnet_b0-20250101T000000Z",
        encoder_count=-1,
        capture_ns=NS,
        decision_ns=NS + 42_000_000,
        capture_to_decision_ms=42.0,
    ),
    "kpi": records.kpi(
        stamp_ns=NS,
        window_s=60.0,
        parts=10,
        counts={"NORMAL": 8, "DEFECTIVE": 2},
        yield_ratio=0.8,
        throughput_pps=0.17,
        latency_ms={"p50": 30.0, "p95": 50.0, "p99": float("nan")},
        reasons={"visual_normal": 8, "visual_defective": 2},
        total_parts=1234,
    ),
    "alert": records.alert(
        stamp_ns=NS, severity=3, source="reject_actuator", code="REJECT_LATE", message="late", part_id=""
    ),
    "reject": records.reject(
        part_id="p1",
        verdict=2,
        outcome=0,
        method="sim",
        lane="reject",
        capture_ns=NS,
        planned_ns=NS + 1,
        actual_ns=0,
        lateness_ms=0.3,
        message="",
    ),
    "process": records.process(
        stamp_ns=NS,
        temperature_c=21.5,
        pressure_pa=float("nan"),
        vibration_rms=0.02,
        anomaly_score=0.1,
        flags=0,
        out_of_spec=False,
        stale=True,
    ),
    "model_status": records.model_state(
        stamp_ns=NS, version="1.0.0", sha256="a" * 64, backend="onnxruntime", precision="fp32", state=2, message=""
    ),
    "sample": records.image_record(
        part_id="p1",
        verdict=2,
        defect_probability=0.9,
        reasons=["visual_defective"],
        model_version="1",
        capture_ns=NS,
        width=64,
        height=48,
        jpeg_b64="/9j/4AAQ",
    ),
    "verify_request": records.image_record(
        part_id="p1",
        verdict=1,
        defect_probability=0.6,
        reasons=["visual_reinspect"],
        model_version="1",
        capture_ns=NS,
        width=64,
        height=48,
        jpeg_b64="/9j/4AAQ",
        deadline_ns=NS + 800_000_000,
    ),
    "verify": records.verify_result(
        part_id="p1",
        request_id="0a1b2c3d-verify_request-1",
        local_verdict=1,
        cloud_verdict="NORMAL",
        outcome="used",
        rtt_ms=12.5,
    ),
}


@pytest.mark.parametrize("stream", sorted(BODIES))
def test_every_outbound_record_matches_its_schema_file(stream):
    record = _wrapped(stream, BODIES[stream])
    schemas.validator(stream).validate(record)
    assert (record["schema_version"], record["type"], record["seq"]) == (1, stream, 7)
    assert record["id"] == f"0a1b2c3d-{stream}-7"


def test_update_outcome_and_status_records_match_their_schemas():
    for accepted in (True, False):
        body = records.update_outcome(
            stamp_ns=NS, accepted=accepted, version="1.1.0", reason="x", detail="", active_version=""
        )
        schemas.validator("model_status").validate(_wrapped("model_status", body))
    for state, stamp in (("online", NS), ("offline", 0)):
        status = records.status(cell="a/b/c", state=state, stamp_ns=stamp, reason="r", details={"outbox_depth": 3})
        schemas.validator("status").validate(json.loads(records.encode(status)))


def test_part_record_content_is_exact_and_nan_becomes_null():
    record = _wrapped("part", BODIES["part"])
    assert record["verdict"] == "REINSPECT" and record["defect_probability"] == 0.6123
    assert record["process_anomaly_score"] is None
    assert record["capture_time"] == "2023-11-14T22:13:20.123456Z"
    assert record["decision_time"] == "2023-11-14T22:13:20.165456Z"


def test_part_record_is_small():
    """The bandwidth goal (< 0.1% of a 640x480x3 image per part) leaves ~900 bytes; a summary is ~500 bytes."""
    assert len(records.encode(records.envelope("plant1/line2/cell3", "0a1b2c3d", "part", 123456, BODIES["part"]))) < 600


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(extra=1),
        lambda r: r.update(verdict="MAYBE"),
        lambda r: r.update(schema_version=2),
        lambda r: r.pop("seq"),
        lambda r: r.update(capture_time="yesterday"),
    ],
)
def test_schema_rejects_what_a_consumer_must_not_accept(mutate):
    record = _wrapped("part", BODIES["part"])
    mutate(record)
    with pytest.raises(ValidationError):
        schemas.validator("part").validate(record)


VALID_RESPONSE = {
    "schema_version": 1,
    "type": "verify_response",
    "part_id": "p1",
    "request_id": "r1",
    "verdict": "NORMAL",
}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "malformed_json"),
        (b'{"a": NaN}', "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "oversized"),
        (json.dumps({**VALID_RESPONSE, "schema_version": 2}).encode(), "unsupported_schema_version"),
        (json.dumps({**VALID_RESPONSE, "admin": True}).encode(), "unknown_field"),
        (json.dumps({**VALID_RESPONSE, "verdict": "SHRUG"}).encode(), "schema_violation"),
        (json.dumps({k: v for k, v in VALID_RESPONSE.items() if k != "part_id"}).encode(), "schema_violation"),
    ],
)
def test_bad_inbound_json_is_rejected_with_a_reason(payload, reason):
    with pytest.raises(InboundError) as info:
        parse(payload, "verify_response", max_bytes=4096)
    assert info.value.reason == reason


def test_deeply_nested_json_within_the_size_limit_is_rejected_not_a_crash():
    with pytest.raises(InboundError) as info:
        parse(b"[" * 50_000 + b"]" * 50_000, "verify_response", max_bytes=1_000_000)
    assert info.value.reason == "malformed_json"


def test_valid_inbound_json_parses():
    assert parse(json.dumps(VALID_RESPONSE).encode(), "verify_response", 4096)["verdict"] == "NORMAL"


def test_broker_url_and_credentials(tmp_path, monkeypatch):
    assert parse_broker_url("mqtts://broker.example:8884") == ("broker.example", 8884, True)
    assert parse_broker_url("mqtt://10.0.0.5") == ("10.0.0.5", 1883, False)
    for bad in ("http://x", "mqtt://user:pw@host", "mqtt://host/path", "mqtt://"):
        with pytest.raises(BridgeConfigError):
            parse_broker_url(bad)
    (tmp_path / "pw").write_text("s3cret\n")
    config = broker_config("mqtt://127.0.0.1", "id", username="edge", password_file=str(tmp_path / "pw"))
    assert config.password.reveal() == "s3cret" and "s3cret" not in repr(config)
    monkeypatch.setenv("QC_TEST_PW", "from-env")
    from_env = broker_config("mqtt://localhost", "id", username="u", password_env="QC_TEST_PW")
    assert from_env.password.reveal() == "from-env"
    with pytest.raises(BridgeConfigError, match="QC_MISSING"):
        broker_config("mqtt://127.0.0.1", "id", username="u", password_env="QC_MISSING")
    with pytest.raises(BridgeConfigError, match="not mqtts"):
        broker_config("mqtt://h", "id", ca_file=str(tmp_path / "pw"))


def test_plain_mqtt_to_a_remote_broker_needs_an_explicit_setting_and_warns():
    with pytest.raises(BridgeConfigError, match="allow_plain_mqtt"):
        broker_config("mqtt://10.0.0.5", "id")
    remote = broker_config("mqtt://10.0.0.5", "id", allow_plain_remote=True)
    assert "unencrypted" in remote.plaintext_warning
    for local in ("mqtt://127.0.0.1", "mqtt://localhost", "mqtt://[::1]", "mqtts://10.0.0.5"):
        assert broker_config(local, "id").plaintext_warning == "", local


def test_topics_of_a_cell():
    cell = CellId("plant1", "line2", "cell3")
    assert cell.stream_topic("part") == "qc/plant1/line2/cell3/part"
    assert cell.stream_topic("model_status") == "qc/plant1/line2/cell3/model/status"
    assert cell.parse_chunk_topic("qc/plant1/line2/cell3/model/chunk/1.2.0/17") == ("1.2.0", 17)
    assert cell.parse_chunk_topic("qc/plant1/line2/cell3/model/chunk/1.2.0/x") is None
    with pytest.raises(BridgeConfigError):
        CellId("plant/1", "l", "c")
    with pytest.raises(BridgeConfigError):
        CellId("+", "l", "c")


def test_the_client_id_defaults_to_the_broker_user_name():
    from qc_cell.bridge.params import CLOUD_BRIDGE
    from qc_cell.bridge.settings import from_values

    values = {**CLOUD_BRIDGE.defaults(), "broker_url": "mqtt://127.0.0.1", "cell": "cell7"}
    assert from_values(values).broker.client_id == "qc-site-line-cell7"
    assert from_values({**values, "username": "cell7"}).broker.client_id == "cell7", "the broker's ACL keys on it"
    assert from_values({**values, "username": "cell7", "client_id": "x"}).broker.client_id == "x"
