"""Fleet service cores without I/O: ingest rules, sequence gaps, rollups, tokens, settings, broker accounts."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

import pytest

pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")

from qc_cloud.fleet import auth, broker_acl, gaps, rollups, rules, settings, simulate
from qc_contract import records

CELL = "plant1/line1/cell001"


def test_a_valid_part_is_accepted_with_its_decision_time():
    record = simulate.part_record(CELL, "0badcafe", 7, decision_ns=1_700_000_000_123_456_000)
    got = rules.classify(f"qc/{CELL}/part", records.encode(record))
    assert isinstance(got, rules.Record)
    assert (got.kind, got.cell, got.id) == ("part", CELL, "0badcafe-part-7")
    assert got.time == datetime(2023, 11, 14, 22, 13, 20, 123456)


def test_every_hostile_payload_is_refused_with_a_reason():
    for topic, payload, label in simulate.hostile_payloads(24, [CELL, "plant1/line1/cell002"]):
        with pytest.raises(rules.Refused) as refused:
            rules.classify(topic, payload)
        assert str(refused.value), label


def test_a_record_whose_cell_disagrees_with_its_topic_is_refused():
    record = simulate.part_record("plant1/line1/other", "0badcafe", 1)
    with pytest.raises(rules.Refused, match="published on the topic of"):
        rules.classify(f"qc/{CELL}/part", records.encode(record))


def test_the_clouds_own_topics_are_ignored_and_a_sample_keeps_its_jpeg_apart():
    assert isinstance(rules.classify(f"qc/{CELL}/model/chunk/1.0/3", b"\x00\x01"), rules.Ignored)
    jpeg = b"\xff\xd8\xff\xe0" + b"x" * 100
    body = records.image_record(
        part_id="p1",
        verdict=2,
        defect_probability=0.9,
        reasons=["visual_defect"],
        model_version="m",
        capture_ns=10**18,
        width=8,
        height=8,
        jpeg_b64=base64.b64encode(jpeg).decode(),
    )
    got = rules.classify(f"qc/{CELL}/sample", records.encode(records.envelope(CELL, "0badcafe", "sample", 1, body)))
    assert got.image == jpeg and got.extra["sha256"] == hashlib.sha256(jpeg).hexdigest()


def _verification_body(request_id: str, cell: str = CELL) -> dict:
    return records.verification(
        cell=cell, request_id=request_id, part_id="p1", verifier="w1", outcome="scored", reason="",
        verdict="NORMAL", defect_probability=0.1, local_verdict="REINSPECT", local_defect_probability=0.6,
        edge_model_version="m", model_version="c", capture_time=None, deadline=None, received_ns=10**18,
        answered_ns=10**18 + 5 * 10**6, queue_ms=1.0, service_ms=2.0, batch_size=1, image_bytes=10,
    )  # fmt: skip


def test_a_verification_is_keyed_by_its_request_not_by_a_stream():
    """The cloud verifier's record has no id/epoch/seq: its identity is the request it answers, kept apart from
    the request record's own id; one without a usable request id is keyed by a hash."""
    request_id = "0badcafe-verify_request-7"
    got = rules.classify(f"qc/{CELL}/verify/verification", records.encode(_verification_body(request_id)))
    assert (got.kind, got.id, got.sequenced) == ("verification", f"verification:{request_id}", False)
    assert got.time == datetime(2001, 9, 9, 1, 46, 40, 5000), "filed under answered_time"
    long_id, empty = "r" * 256, ""
    a = rules.classify(f"qc/{CELL}/verify/verification", records.encode(_verification_body(long_id)))
    assert a.id.startswith("verification#") and len(a.id) <= 128
    e1 = rules.classify(f"qc/{CELL}/verify/verification", records.encode(_verification_body(empty)))
    e2 = rules.classify(f"qc/{CELL}/verify/verification", records.encode(_verification_body(empty)))
    assert e1.id == e2.id and e1.id.startswith("verification#"), "the same bytes (a redelivery): the same key"
    with pytest.raises(rules.Refused, match="published on the topic of"):
        rules.classify("qc/plant1/line1/other/verify/verification", records.encode(_verification_body(request_id)))
    with pytest.raises(rules.Refused, match="type 'verification' on the part topic"):
        rules.classify(f"qc/{CELL}/part", records.encode(_verification_body(request_id)))


def test_gaps_open_shrink_split_and_close():
    top, open_ = gaps.apply(0, [], [1, 2, 5, 9])
    assert (top, open_) == (9, [(3, 4), (6, 8)])
    top, open_ = gaps.apply(top, open_, [7, 3])
    assert (top, open_) == (9, [(4, 4), (6, 6), (8, 8)])
    assert gaps.apply(top, open_, [4, 6, 8]) == (9, [])
    assert gaps.missing([(3, 4), (6, 8)]) == 5


def test_rollups_count_parts_per_cell_and_hour_in_key_order():
    t = datetime(2026, 1, 1, 10, 59, 59)
    rows = rollups.increments([("b", t, "NORMAL", 10.0), ("a", t, "DEFECTIVE", None), ("b", t, "NORMAL", 30.0)])
    assert [(r["cell"], r["parts"], r["normal"], r["defective"]) for r in rows] == [("a", 1, 0, 1), ("b", 2, 2, 0)]
    assert rows[1]["hour"] == datetime(2026, 1, 1, 10) and rows[1]["latency_sum_ms"] == 40.0


def test_tokens_are_random_and_roles_ordered():
    a, b = auth.new_token(), auth.new_token()
    assert a != b and len(a) > 40 and auth.hash_token(a) != a
    assert auth.allows("write", "read") and auth.allows("read", "read") and not auth.allows("read", "write")
    assert not auth.allows("admin", "read")


def test_settings_from_file_and_environment_with_one_line_errors(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("ingest_workers: 2\nshare_group: g1\n")
    s = settings.load(path, env={"QC_FLEET_API_PORT": "9000", "QC_FLEET_API": "false"})
    assert (s.ingest_workers, s.share_group, s.api_port, s.api) == (2, "g1", 9000, False)
    assert s.resolved_database_url().startswith("sqlite:///")
    with pytest.raises(settings.SettingsError, match="ingest_workers 0"):
        settings.load(None, env={}, ingest_workers=0)
    with pytest.raises(settings.SettingsError, match="unknown setting"):
        settings.load(None, env={}, database_password="x")
    with pytest.raises(settings.SettingsError, match="expected int"):
        settings.load(None, env={"QC_FLEET_BATCH_SIZE": "many"})
    with pytest.raises(settings.SettingsError, match="share_group"):
        settings.load(None, env={}, ingest_workers=2, share_group="")


def test_mosquitto_password_hash_format_and_acl_scope(tmp_path):
    digest = broker_acl.password_hash("secret", salt=b"0123456789ab")
    kind, iterations, salt, value = digest.split("$")[1:]
    assert (kind, iterations, base64.b64decode(salt)) == ("7", "101", b"0123456789ab")
    assert base64.b64decode(value) == hashlib.pbkdf2_hmac("sha512", b"secret", b"0123456789ab", 101)
    acl = broker_acl.acl_text([broker_acl.parse_cell(CELL)], "qc-fleet")
    assert f"user {CELL}\ntopic write qc/{CELL}/part\n" in acl and "topic write qc/#" not in acl
    with pytest.raises(ValueError, match="site/line/cell"):
        broker_acl.parse_cell("plant1/cell")


def _every_stream_record() -> list[tuple[str, dict]]:
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0" + b"x" * 10).decode()
    image = records.image_record(
        part_id="p",
        verdict=1,
        defect_probability=0.5,
        reasons=["visual_reinspect"],
        model_version="m",
        capture_ns=10**18,
        width=4,
        height=4,
        jpeg_b64=jpeg,
    )
    bodies = {
        "part": simulate.part_record(CELL, "0badcafe", 1),
        "kpi": simulate.kpi_record(CELL, "0badcafe", 1),
        "alert": simulate.alert_record(CELL, "0badcafe", 1),
        "reject": records.envelope(
            CELL,
            "0badcafe",
            "reject",
            1,
            records.reject(
                part_id="p",
                verdict=2,
                outcome=0,
                method="pusher",
                lane="reject",
                capture_ns=10**18,
                planned_ns=0,
                actual_ns=10**18,
                lateness_ms=1.0,
                message="",
                simulated_inputs=["ejector"],
            ),
        ),
        "process": records.envelope(
            CELL,
            "0badcafe",
            "process",
            1,
            records.process(
                stamp_ns=10**18,
                temperature_c=20.0,
                pressure_pa=1e5,
                vibration_rms=0.1,
                anomaly_score=0.2,
                flags=0,
                out_of_spec=False,
                stale=False,
            ),
        ),
        "sample": records.envelope(CELL, "0badcafe", "sample", 1, image),
        "verify_request": records.envelope(CELL, "0badcafe", "verify_request", 1, {**image, "deadline": None}),
        "verify": records.envelope(
            CELL,
            "0badcafe",
            "verify",
            1,
            records.verify_result(
                part_id="p", request_id="r", local_verdict=1, cloud_verdict="NORMAL", outcome="used", rtt_ms=5.0
            ),
        ),
        "status": records.status(cell=CELL, state="online", stamp_ns=10**18, details={"outbox_depth": 1}),
    }
    return list(bodies.items())


def test_the_compiled_schema_check_agrees_with_jsonschema():
    from qc_contract import schema_check, schemas

    wrong = [
        None,
        "x",
        "",
        1,
        -1,
        1.5,
        1.0,
        True,
        False,
        [],
        ["x"],
        {},
        {"a": 1},
        10**20,
        "NORMAL",
        "2025-01-01T00:00:00Z",
    ]
    checked = 0
    for kind, body in _every_stream_record():
        assert schema_check.checker(kind) is not None, f"{kind} is not compiled"
        assert schema_check.is_valid(kind, body) and schemas.validator(kind).is_valid(body), kind
        variants = [{k: v for k, v in body.items() if k != key} for key in body]  # each field missing
        variants += [{**body, key: value} for key in body for value in wrong]  # each field wrong
        variants += [{**body, "extra": 1}]
        for variant in variants:
            assert schema_check.is_valid(kind, variant) == schemas.validator(kind).is_valid(variant), (kind, variant)
            checked += 1
    assert checked > 1000


def test_serve_refuses_bad_settings_with_one_line_and_tokens_are_managed_by_name(tmp_path, capsys):
    from qc_cloud import cli

    assert cli.main(["serve", "--ingest-workers", "0", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: ingest_workers 0: within [1, 64]"]
    assert cli.main(["fleet-token", "create", "--name", "grafana", "--role", "read", "--data-dir", str(tmp_path)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith(auth.PREFIX)
    assert cli.main(["fleet-token", "revoke", "--name", "grafana", "--data-dir", str(tmp_path)]) == 0
    assert cli.main(["fleet-token", "revoke", "--name", "grafana", "--data-dir", str(tmp_path)]) == 1
