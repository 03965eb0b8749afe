"""Shadow runs, fleet side (SQLite and a real PostgreSQL): shadow_score records are validated and stored once,
the shadow_state counts land in model_statuses, and /api/v1/cells/.../shadow reports per shadow version the
agreement with the live verdicts, the score histogram and the counts; bad records are quarantined."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("fastapi", reason="the fleet service needs requirements/fleet.txt")

from fastapi.testclient import TestClient

from qc_cloud.fleet import db, rules, settings
from qc_cloud.fleet.service import FleetService, read_tokens
from qc_cloud.fleet.store import Message, Store
from qc_contract import records

CELL = "plant1/line1/cell001"
EPOCH = "0badcafe"
VERDICT = {"NORMAL": 0, "REINSPECT": 1, "DEFECTIVE": 2, "NOT_INSPECTED": 3}
# (live verdict, live p, shadow p): the shadow agrees on 3 of the 4 inspected parts; one part NOT_INSPECTED live.
PARTS = [("NORMAL", 0.1, 0.15), ("DEFECTIVE", 0.9, 0.95), ("REINSPECT", 0.6, 0.2), ("NORMAL", 0.2, 0.05)]


def _part(seq: int, verdict: str, p: float) -> Message:
    now = time.time_ns()
    body = records.part(
        part_id=f"p{seq}", verdict=VERDICT[verdict], reasons=[], defect_probability=p, process_anomaly_score=0.0,
        process_flags=0, model_version="1.0.0", encoder_count=seq, capture_ns=now - 10**7, decision_ns=now,
        capture_to_decision_ms=10.0,
    )  # fmt: skip
    return Message(f"qc/{CELL}/part", records.encode(records.envelope(CELL, EPOCH, "part", seq, body)))


def _shadow(seq: int, part_id: str, p: float, version: str = "2.0.0") -> Message:
    body = records.shadow_score(
        stamp_ns=time.time_ns(), part_id=part_id, shadow_version=version, live_version="1.0.0",
        defect_probability=p, latency_ms=3.5,
    )  # fmt: skip
    return Message(f"qc/{CELL}/shadow", records.encode(records.envelope(CELL, EPOCH, "shadow_score", seq, body)))


def _state(seq: int, counts: dict) -> Message:
    body = records.shadow_state(stamp_ns=time.time_ns(), active_version="1.0.0", shadow_version="2.0.0", counts=counts)
    return Message(f"qc/{CELL}/model/status", records.encode(records.envelope(CELL, EPOCH, "model_status", seq, body)))


@pytest.fixture
def service(tmp_path, database_url):
    url_file = tmp_path / "db-url"
    url_file.write_text(database_url + "\n")
    s = settings.load(None, env={}, data_dir=str(tmp_path / "fleet"), database_url_file=str(url_file), ingest=False)
    service = FleetService(s).start()
    yield service
    service.stop()


def test_shadow_scores_are_stored_and_reported_per_version(service):
    assert db.current_revision(service.engine) == db.head_revision()
    store = Store(service.engine, service.samples)
    messages = [_part(i + 1, v, p) for i, (v, p, _) in enumerate(PARTS)]
    messages += [_shadow(i + 1, f"p{i + 1}", s) for i, (_, _, s) in enumerate(PARTS)]
    messages += [_part(5, "NOT_INSPECTED", float("nan")), _shadow(5, "p5", 0.5), _shadow(6, "p-unknown", 0.99)]
    messages += [_shadow(7, "p1", 0.3, version="3.0.0"), _state(1, {"scored": 7, "skipped_busy": 4})]
    result = store.write(messages)
    assert (result.stored, result.quarantined) == (13, 0), result.reasons
    again = store.write([_shadow(1, "p1", 0.15)])  # a redelivery: stored once
    assert (again.stored, again.duplicates) == (0, 1)
    bad = records.envelope(CELL, EPOCH, "shadow_score", 8, {**json.loads(_shadow(8, "p1", 0.1).payload)})
    bad["defect_probability"] = 1.5
    assert store.write([Message(f"qc/{CELL}/shadow", records.encode(bad))]).quarantined == 1

    client = TestClient(service.app(), raise_server_exceptions=False)
    headers = {"Authorization": f"Bearer {read_tokens(service.settings.data_dir)['read']}"}
    r = client.get("/api/v1/cells/plant1/line1/cell001/shadow", headers=headers)
    assert r.status_code == 200, r.text
    items = {i["shadow_version"]: i for i in r.json()["items"]}
    assert set(items) == {"2.0.0", "3.0.0"}
    two = items["2.0.0"]
    assert (two["scored"], two["matched_parts"], two["unmatched"]) == (6, 4, 1)
    assert two["agreement"] == pytest.approx(3 / 4)  # the REINSPECT part: the shadow says NORMAL
    assert two["band_agreement"] == pytest.approx(3 / 4)
    assert two["confusion"]["REINSPECT"] == {"NORMAL": 1, "REINSPECT": 0, "DEFECTIVE": 0}
    assert two["confusion"]["NOT_INSPECTED"]["REINSPECT"] == 1
    assert two["histogram"] == {"bins": 10, "counts": [1, 1, 1, 0, 0, 1, 0, 0, 0, 2]}
    assert two["latency_ms"]["mean"] == pytest.approx(3.5) and two["latency_ms"]["p99"] == pytest.approx(3.5)
    assert two["labels"]["labelled"] == 0 and two["labels"]["shadow"]["escape_rate"] is None
    assert two["cell_counts"] == {"scored": 7, "skipped_busy": 4}
    one = client.get(
        "/api/v1/cells/plant1/line1/cell001/shadow",
        params={"version": "3.0.0", "bins": 2, "reinspect_threshold": 0.25},
        headers=headers,
    ).json()["items"]
    assert len(one) == 1 and one[0]["agreement"] == 0.0 and one[0]["histogram"]["counts"] == [1, 0]
    assert client.get("/api/v1/cells/plant1/line1/cell001/shadow", headers={}).status_code == 401
    bad_bands = {"reinspect_threshold": 0.9, "defective_threshold": 0.5}
    assert client.get("/api/v1/cells/plant1/line1/cell001/shadow", params=bad_bands, headers=headers).status_code == 400


def test_the_shadow_record_is_a_stream_of_its_own():
    record = rules.classify(f"qc/{CELL}/shadow", _shadow(1, "p1", 0.4).payload)
    assert record.kind == "shadow_score" and record.sequenced and record.body["shadow_version"] == "2.0.0"
    with pytest.raises(rules.Refused, match="schema shadow_score"):
        body = json.loads(_shadow(2, "p1", 0.4).payload)
        del body["shadow_version"]
        rules.classify(f"qc/{CELL}/shadow", json.dumps(body).encode())
