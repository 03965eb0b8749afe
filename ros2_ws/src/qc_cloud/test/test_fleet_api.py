"""The fleet HTTP API: token auth on every endpoint, roles, bounded parameters (4xx, never 500), the queries."""

from __future__ import annotations

import base64
import io
import itertools
from datetime import timedelta

import pytest

pytest.importorskip("fastapi", reason="the fleet service needs requirements/fleet.txt")

from fastapi.testclient import TestClient

from qc_cloud.fleet import rules, settings, simulate
from qc_cloud.fleet.service import FleetService, create_token, read_tokens
from qc_cloud.fleet.store import Message, Store
from qc_contract import records

CELLS = simulate.cell_names(2)
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256))


@pytest.fixture
def service(tmp_path, database_url):
    url_file = tmp_path / "db-url"
    url_file.write_text(database_url + "\n")
    s = settings.load(None, env={}, data_dir=str(tmp_path / "fleet"), database_url_file=str(url_file), ingest=False)
    service = FleetService(s).start()
    cell = CELLS[0]
    messages = [Message(t, p) for t, p, _ in simulate.part_stream(CELLS, 20)]
    sample = records.image_record(
        part_id=simulate.part_record(cell, "0badcafe", 3)["part_id"],
        verdict=2,
        defect_probability=0.9,
        reasons=["visual_defect"],
        model_version="m-1",
        capture_ns=10**18,
        width=8,
        height=8,
        jpeg_b64=base64.b64encode(JPEG).decode(),
    )
    reject = records.reject(
        part_id=sample["part_id"],
        verdict=2,
        outcome=0,
        method="pusher",
        lane="reject",
        capture_ns=10**18,
        planned_ns=10**18,
        actual_ns=10**18,
        lateness_ms=1.0,
        message="",
    )
    verification = records.verification(
        cell=cell, request_id="0badcafe-verify_request-1", part_id=sample["part_id"], verifier="w1",
        outcome="scored", reason="", verdict="DEFECTIVE", defect_probability=0.97, local_verdict="DEFECTIVE",
        local_defect_probability=0.9, edge_model_version="m-1", model_version="cloud-1", capture_time=None,
        deadline=None, received_ns=10**18, answered_ns=10**18 + 10**7, queue_ms=1.0, service_ms=3.0, batch_size=1,
        image_bytes=len(JPEG),
    )  # fmt: skip
    messages += [
        Message(f"qc/{cell}/sample", records.encode(records.envelope(cell, "0badcafe", "sample", 1, sample))),
        Message(f"qc/{cell}/reject", records.encode(records.envelope(cell, "0badcafe", "reject", 1, reject))),
        Message(f"qc/{cell}/alert", records.encode(simulate.alert_record(cell, "0badcafe", 1))),
        Message(f"qc/{cell}/kpi", records.encode(simulate.kpi_record(cell, "0badcafe", 1))),
        Message(f"qc/{cell}/part", b"not json"),
        Message(f"qc/{cell}/verify/verification", records.encode(verification)),
    ]
    Store(service.engine, service.samples).write(messages)
    yield service
    service.stop()


@pytest.fixture
def client(service):
    return TestClient(service.app(), raise_server_exceptions=False)


@pytest.fixture
def tokens(service):
    return {
        role: {"Authorization": f"Bearer {token}"} for role, token in read_tokens(service.settings.data_dir).items()
    }


def _routes(app):
    for route in app.routes:
        if route.path.startswith(("/api/", "/metrics")):
            for method in route.methods - {"HEAD"}:
                yield method, route.path


def _concrete(path: str) -> str:
    values = {"site": "plant1", "line": "line1", "cell": "cell001", "part_id": "x", "alert_id": "1", "sha256": "a" * 64}
    for key, value in values.items():
        path = path.replace("{" + key + "}", value)
    return path + ("?start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z" if "/export/" in path else "")


def test_every_endpoint_refuses_without_a_valid_token(client):
    routes = list(_routes(client.app))
    assert len(routes) >= 14
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer qcf_wrong"}, {"Authorization": "Basic eDp5"}):
            response = client.request(method, _concrete(path), headers=headers)
            assert response.status_code in (401, 403), (method, path, headers, response.status_code)


def test_writes_are_refused_with_a_read_token_and_allowed_with_a_write_token(client, tokens, service):
    writes = [(m, p) for m, p in _routes(client.app) if m != "GET"]
    assert writes
    for method, path in writes:
        assert client.request(method, _concrete(path), headers=tokens["read"]).status_code == 403
    alert_id = client.get("/api/v1/alerts", headers=tokens["read"]).json()["items"][0]["id"]
    response = client.post(f"/api/v1/alerts/{alert_id}/ack", headers=tokens["write"], json={"note": "valve cleaned"})
    assert response.status_code == 200 and response.json()["acked_by"] == "bootstrap-write"
    assert client.get("/api/v1/alerts?acked=false", headers=tokens["read"]).json()["items"] == []
    # a token made later, by name; the database holds only its hash
    token = create_token(service.engine, "dashboard", "read")
    assert client.get("/api/v1/cells", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with service.engine.connect() as conn:
        from sqlalchemy import text

        stored = [r[0] for r in conn.execute(text("SELECT token_hash FROM api_tokens"))]
    assert token not in stored and all(len(h) == 64 for h in stored)


BAD_PARAMS = [
    "limit=0",
    "limit=1001",
    "limit=-5",
    "limit=abc",
    "offset=-1",
    "offset=1000001",
    "offset=1e99",
    "start=yesterday",
    "start=9999-12-31T23:59:59Z",
    "start=0001-01-01T00:00:00Z",
    "start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",
    "end=2026-13-01T00:00:00Z",
    "bucket_hours=0",
    "bucket_hours=100000",
    "cell=../../etc",
    "cell=a/b",
    "verdict=GOOD",
    "severity=LOUD",
    "acked=maybe",
    "type=everything",
    "part_id=" + "x" * 300,
    "cursor=%%%",
    "cursor=" + "A" * 600,
    "cursor=bm90IGpzb24",
    "cursor=WyIyMDI2LTAxLTAxVDAwOjAwOjAwWiIsImEiLCJiIl0&offset=5",
    "cursor=WyIwMDAxLTAxLTAxVDAwOjAwOjAwWiIsICJhIiwgImIiXQ",
    "cursor=WyIyMDI2LTAxLTAxVDAwOjAwOjAwKzA1OjAwWiIsICJhIiwgImIiXQ",
    "cursor=WzEsIDIsIDNd",
    "cursor=eyJhIjogMX0",
    "start=2000-01-01T00:00:00Z&end=2026-01-01T00:00:00Z",
    "model_version=" + "m" * 300,
]


def test_out_of_range_parameters_give_a_4xx_never_a_500(client, tokens):
    paths = [_concrete(p).split("?")[0] for m, p in _routes(client.app) if m == "GET"]
    paths += [
        "/api/v1/cells/plant1/line1/no-such-cell/trend",
        "/api/v1/samples/zz",
        "/api/v1/parts/a/b/c/" + "p" * 300,
        "/api/v1/cells/pl*nt/line1/cell001/trend",
    ]
    for path, params in itertools.product(paths, BAD_PARAMS):
        response = client.get(f"{path}?{params}", headers=tokens["read"])
        assert response.status_code < 500, (path, params, response.text[:300])
    for path in ("/api/v1/alerts/0/ack", "/api/v1/alerts/99999999999999999999999/ack", "/api/v1/alerts/x/ack"):
        assert 400 <= client.post(path, headers=tokens["write"]).status_code < 500
    response = client.post("/api/v1/alerts/1/ack", headers=tokens["write"], json={"note": "n" * 5000})
    assert response.status_code == 422


def test_fleet_trend_parts_story_gaps_and_exports(client, tokens):
    h = tokens["read"]
    cells = client.get("/api/v1/cells", headers=h).json()["items"]
    assert [c["cell"] for c in cells] == sorted(CELLS)
    first = next(c for c in cells if c["cell"] == CELLS[0])
    assert first["parts_24h"] == 20 and first["model_version"] == "m-1" and first["last_alert"]["code"] == "DRIFT"
    assert first["throughput_pps"] == 30.0 and 0 < first["yield_24h"] < 1
    trend = client.get(f"/api/v1/cells/{CELLS[0]}/trend?bucket_hours=24", headers=h).json()["items"]
    assert sum(b["parts"] for b in trend) == 20
    page1 = client.get("/api/v1/parts?limit=15", headers=h).json()
    page2 = client.get(f"/api/v1/parts?limit=15&offset={page1['next_offset']}", headers=h).json()
    ids = [p["record_id"] + p["cell"] for p in page1["items"] + page2["items"]]
    assert len(ids) == len(set(ids)) == 30 and page2["next_offset"] == 30
    assert client.get("/api/v1/parts?limit=1000", headers=h).json()["next_offset"] is None
    defective = client.get(f"/api/v1/parts?verdict=DEFECTIVE&cell={CELLS[0]}", headers=h).json()["items"]
    assert defective and all(p["verdict"] == "DEFECTIVE" for p in defective)
    part_id = simulate.part_record(CELLS[0], "0badcafe", 3)["part_id"]
    story = client.get(f"/api/v1/parts/{CELLS[0]}/{part_id}", headers=h).json()
    assert story["decisions"][0]["part_id"] == part_id and story["rejects"][0]["outcome"] == "DONE"
    assert client.get(story["samples"][0]["url"], headers=h).content == JPEG
    assert [(v["verdict"], v["model_version"]) for v in story["verifications"]] == [("DEFECTIVE", "cloud-1")]
    assert client.get("/api/v1/quarantine", headers=h).json()["items"][0]["reason"].startswith("not JSON")
    assert client.get("/api/v1/gaps", headers=h).json()["items"] == []
    now = rules.utcnow()
    window = f"start={(now - timedelta(days=1)).isoformat()}&end={(now + timedelta(hours=1)).isoformat()}"
    csv_text = client.get(f"/api/v1/export/parts.csv?{window}", headers=h).text
    assert csv_text.count("\n") == 41 and csv_text.startswith("cell,part_id,")
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = client.get(f"/api/v1/export/parts.parquet?{window}&cell={CELLS[1]}", headers=h)
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 20
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").json()["ready"]
    assert client.get("/docs").status_code == 200 and "/api/v1/parts" in client.get("/openapi.json").json()["paths"]


def test_parts_keyset_pagination_walks_every_part_once_in_order(client, tokens, service):
    """Cursor pages give the same parts in the same order as one big page, also where many parts share one
    decision time (the tie is broken by cell, then record id); a bad cursor is a 400."""
    same_instant = 1_900_000_000 * 10**9
    messages = [
        Message(f"qc/{cell}/part", records.encode(simulate.part_record(cell, "0000feed", seq, same_instant)))
        for seq in range(1, 8)
        for cell in CELLS
    ]
    Store(service.engine, service.samples).write(messages)
    h = tokens["read"]
    everything = client.get("/api/v1/parts?limit=1000", headers=h).json()["items"]
    assert len(everything) == 40 + 14
    walked, cursor, pages = [], None, 0
    while True:
        response = client.get("/api/v1/parts?limit=6" + (f"&cursor={cursor}" if cursor else ""), headers=h).json()
        walked += response["items"]
        pages += 1
        cursor = response["next_cursor"]
        if cursor is None:
            break
        assert response["next_offset"] is None or pages == 1
    key = [(p["cell"], p["record_id"]) for p in walked]
    assert key == [(p["cell"], p["record_id"]) for p in everything] and len(set(key)) == len(key)
    assert pages == 10  # 54 parts, 6 a page: the 10th page is the short one
    one_cell = client.get(f"/api/v1/parts?limit=5&cell={CELLS[1]}", headers=h).json()
    more = client.get(f"/api/v1/parts?limit=5&cell={CELLS[1]}&cursor={one_cell['next_cursor']}", headers=h).json()
    assert {p["cell"] for p in one_cell["items"] + more["items"]} == {CELLS[1]}
    of_cell = [p["record_id"] for p in everything if p["cell"] == CELLS[1]]
    assert [p["record_id"] for p in more["items"]] == of_cell[5:10]
    assert client.get("/api/v1/parts?cursor=bm90IGpzb24", headers=h).status_code == 400


def test_serve_with_two_api_worker_processes_checks_tokens_in_each(tmp_path):
    """`qc_cloud serve --api-workers 2` (uvicorn's worker processes, settings passed by environment): both
    processes answer (told apart by X-QC-Fleet-Instance), and each refuses a missing or unknown token and a write
    with a read token, and accepts the right ones."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "fleet"
    cmd = [sys.executable, "-m", "qc_cloud.cli", "serve", "--no-ingest", "--api-workers", "2", "--port", str(port)]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (closed below)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QC_FLEET_")}
    proc = subprocess.Popen(
        [*cmd, "--data-dir", str(data), "--log-level", "WARNING"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def call(path: str, headers: dict, method: str = "GET") -> tuple[int, str]:
        request = urllib.request.Request(url + path, headers={**headers, "Connection": "close"}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.headers["X-QC-Fleet-Instance"]
        except urllib.error.HTTPError as e:
            return e.code, e.headers["X-QC-Fleet-Instance"]

    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "serve did not answer /healthz within 90 s"
            try:
                if call("/healthz", {})[0] == 200 and (data / "api-tokens.txt").exists():
                    break
            except OSError:
                pass
            time.sleep(0.3)
        tokens = read_tokens(data)
        read, write = ({"Authorization": f"Bearer {tokens[r]}"} for r in ("read", "write"))
        checks = {  # name -> (path, headers, method, expected status)
            "no token": ("/api/v1/cells", {}, "GET", 401),
            "unknown token": ("/api/v1/cells", {"Authorization": "Bearer qcf_nope"}, "GET", 401),
            "read token reads": ("/api/v1/cells", read, "GET", 200),
            "read token writes": ("/api/v1/alerts/1/ack", read, "POST", 403),
            "write token writes": ("/api/v1/alerts/1/ack", write, "POST", 404),  # authorised; no such alert
        }
        seen: dict[str, set[str]] = {name: set() for name in checks}
        with ThreadPoolExecutor(8) as pool:  # concurrent connections: the kernel spreads them over both processes
            while any(len(s) < 2 for s in seen.values()):
                assert time.monotonic() < deadline, f"not every check reached both processes: {seen}"
                names = [n for n in checks for _ in range(4)]
                for name, (status, instance) in zip(
                    names, pool.map(lambda n: call(checks[n][0], checks[n][1], checks[n][2]), names), strict=True
                ):
                    assert status == checks[name][3], (name, status)
                    seen[name].add(instance)
        assert len(set().union(*seen.values())) == 2, seen
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
