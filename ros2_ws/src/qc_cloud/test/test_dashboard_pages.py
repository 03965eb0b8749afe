"""The dashboard's pages through HTTP (no browser): logged-out sees only the login page, roles, CSRF, labels
with their history, agreement figures, the data set export read back by the training loader, users CLI."""

from __future__ import annotations

import base64
import io
import re
import time

import pytest

pytest.importorskip("fastapi", reason="the dashboard needs requirements/fleet.txt")
pytest.importorskip("argon2", reason="the dashboard needs requirements/fleet.txt")

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from qc_cloud.dashboard import accounts, dataset
from qc_cloud.fleet import models, settings, simulate
from qc_cloud.fleet.service import FleetService
from qc_cloud.fleet.store import Message, Store
from qc_contract import records

CELL = simulate.cell_names(1)[0]
PASSWORD = "correct horse battery"


def _jpeg(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (shade, shade, shade)).save(out, format="JPEG")
    return out.getvalue()


def sample_messages(cell: str, n: int, epoch: str = "0badcafe", first_seq: int = 1) -> list[Message]:
    out = []
    for i in range(n):
        seq = first_seq + i
        verdict = (1, 2, 0)[i % 3]
        body = records.image_record(
            part_id=simulate.part_record(cell, epoch, seq)["part_id"],
            verdict=verdict,
            defect_probability=(0.6, 0.9, 0.1)[i % 3],
            reasons=["visual"],
            model_version="m-1",
            capture_ns=10**18 + seq,
            width=16,
            height=16,
            jpeg_b64=base64.b64encode(_jpeg(10 * i % 250)).decode(),
        )
        out.append(Message(f"qc/{cell}/sample", records.encode(records.envelope(cell, epoch, "sample", seq, body))))
    return out


@pytest.fixture
def service(tmp_path, database_url):
    url_file = tmp_path / "db-url"
    url_file.write_text(database_url + "\n")
    s = settings.load(None, env={}, data_dir=str(tmp_path / "fleet"), database_url_file=str(url_file), ingest=False)
    service = FleetService(s).start()
    messages = [Message(t, p) for t, p, _ in simulate.part_stream([CELL], 12)]
    messages += sample_messages(CELL, 6)
    messages.append(Message(f"qc/{CELL}/alert", records.encode(simulate.alert_record(CELL, "0badcafe", 1))))
    messages.append(Message(f"qc/{CELL}/kpi", records.encode(simulate.kpi_record(CELL, "0badcafe", 1))))
    Store(service.engine, service.samples).write(messages)
    with service.engine.begin() as conn:
        for role in accounts.ROLES:
            accounts.add_user(conn, role, PASSWORD, role)
    yield service
    service.stop()


def login(client: TestClient, user: str, password: str = PASSWORD):
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": token, "next": "/fleet"},
        follow_redirects=False,
    )


def csrf(client: TestClient, path: str = "/fleet") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text).group(1)


def test_logged_out_sees_only_the_login_page(service):
    client = TestClient(service.app())
    for path in ("/", "/fleet", f"/cells/{CELL}", "/review", "/alerts", "/export", "/users", "/search?part_id=x"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), (path, r.status_code)
    assert client.get("/alerts/stream", headers={"Accept": "text/event-stream"}).status_code == 401
    assert client.get("/img/" + "a" * 64, follow_redirects=False).status_code == 303
    assert login(client, "viewer", "wrong password").headers["location"].startswith("/login?error=1")
    assert login(client, "nobody").headers["location"].startswith("/login?error=1")


def test_session_cookie_flags_and_every_page_renders(service):
    client = TestClient(service.app())
    r = login(client, "admin")
    assert r.status_code == 303 and r.headers["location"] == "/fleet"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    with service.engine.connect() as conn:  # the cookie's value is not stored, only its hash
        stored = conn.execute(select(models.Session.token_hash)).scalars().all()
    assert client.cookies["qc_session"] not in stored and accounts.token_hash(client.cookies["qc_session"]) in stored
    part_id = simulate.part_record(CELL, "0badcafe", 1)["part_id"]
    for path in (
        "/fleet",
        f"/cells/{CELL}?hours=8",
        f"/parts/{CELL}/{part_id}",
        "/review",
        "/alerts",
        "/export",
        "/users",
    ):
        page = client.get(path)
        assert page.status_code == 200, (path, page.status_code, page.text[:500])
    assert CELL in client.get("/fleet").text
    assert client.get(f"/search?part_id={part_id}").url.path == f"/parts/{CELL}/{part_id}"
    assert client.get("/static/chart.min.js").status_code == 200  # Debian's libjs-chart.js, served locally
    secure = TestClient(service.app(), base_url="https://testserver")
    assert "Secure" in login(secure, "viewer").headers["set-cookie"]


def test_roles_and_csrf(service):
    viewer = TestClient(service.app())
    login(viewer, "viewer")
    queue = viewer.get("/review").text
    first = re.search(r'href="/review/([^"?]+)\?', queue).group(1)
    token = csrf(viewer)
    assert viewer.post(f"/review/{first}", data={"answer": "good", "csrf_token": token}).status_code == 403
    assert viewer.post("/export", data={"csrf_token": token}).status_code == 403
    assert viewer.get("/export").status_code == 403 and viewer.get("/users").status_code == 403
    assert viewer.post("/alerts/1/ack", data={"csrf_token": token}).status_code == 403
    operator = TestClient(service.app())
    login(operator, "operator")
    assert operator.post(f"/review/{first}", data={"answer": "good"}).status_code == 403  # missing token
    assert operator.post(f"/review/{first}", data={"answer": "good", "csrf_token": "0" * 64}).status_code == 403
    assert (
        operator.post(f"/review/{first}", data={"answer": "good", "csrf_token": token}).status_code == 403
    )  # another session's
    assert operator.post("/export", data={"csrf_token": csrf(operator)}).status_code == 403
    with service.engine.connect() as conn:
        assert conn.execute(select(models.Label)).first() is None
    anonymous = TestClient(service.app())
    assert anonymous.post("/login", data={"username": "admin", "password": PASSWORD}).status_code == 403


def test_labels_corrections_agreement_and_export(service, tmp_path):
    client = TestClient(service.app())
    login(client, "operator")
    token = csrf(client)
    items = re.findall(r'href="/review/([^"?]+)\?', client.get("/review").text)
    assert len(items) == 6
    answers = [
        ("good", ""),
        ("defective", "crack"),
        ("defective", "scratch"),
        ("good", ""),
        ("unsure", ""),
        ("good", ""),
    ]
    for item, (answer, kind) in zip(items, answers, strict=True):
        r = client.post(f"/review/{item}", data={"answer": answer, "defect_type": kind, "csrf_token": token})
        assert r.status_code == 200, r.text[:300]
    assert "Nothing to re-inspect" in client.get("/review").text
    # a correction keeps the history
    client.post(
        f"/review/{items[0]}",
        data={"answer": "defective", "defect_type_other": "Dent", "csrf_token": token, "then": "stay"},
    )
    with service.engine.connect() as conn:
        rows = conn.execute(select(models.Label).order_by(models.Label.id)).all()
    assert len(rows) == 7 and sum(r.current for r in rows) == 6
    assert rows[-1].defect_type == "dent" and rows[-1].replaces_id == rows[0].id and rows[0].current is False
    assert {r.labelled_by for r in rows} == {"operator"}
    page = client.get(f"/review/{items[0]}").text
    assert "(corrected)" in page and "dent" in page
    assert client.post(f"/review/{items[0]}", data={"answer": "maybe", "csrf_token": token}).status_code == 400
    figures = client.get("/review").text
    assert "False-reject estimate" in figures
    # export: the generic layout the training loader reads, with provenance
    from qc_cloud.training.datasets import load_dataset

    engineer = TestClient(service.app())
    login(engineer, "engineer")
    page = engineer.post("/export", data={"csrf_token": csrf(engineer)}).text
    folder = re.search(r'id="export-folder">([^<]+)<', page).group(1)
    loaded = load_dataset(folder, progress=False)
    assert loaded.layout == "generic" and len(loaded.samples) == 5  # "cannot tell" left out
    import json
    from pathlib import Path

    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    assert manifest["images"] == 5 and all(
        i["cell"] == CELL and i["labelled_by"] == "operator" for i in manifest["items"]
    )
    assert {i["path"].split("/")[0] for i in manifest["items"]} == {"good", "crack", "scratch", "dent"}
    with pytest.raises(dataset.ExportError):
        dataset.export(service.engine, service.samples, Path(folder))
    # the same through the command line
    from qc_cloud.cli import main

    where = ["--data-dir", service.settings.data_dir, "--database-url-file", str(tmp_path / "db-url")]
    assert main(["dataset", "export", "--out", str(tmp_path / "cli-export"), *where]) == 0
    assert json.loads((tmp_path / "cli-export" / "manifest.json").read_text())["counts"] == manifest["counts"]
    assert main(["dataset", "export", "--out", str(tmp_path / "cli-export"), *where]) == 2  # not over a data set


def test_heatmap_random_samples_model_defect_types_and_the_escape_estimate(service):
    from qc_cloud.dashboard import review

    epoch, heat = "0ddba11e", _jpeg(200)
    status = records.model_state(
        stamp_ns=10**18, version="m-2", sha256="c" * 64, backend="onnxruntime", precision="fp32", state=2,
        message="", defect_types=["crack", "dent"],
    )  # fmt: skip
    messages = [
        Message(f"qc/{CELL}/model/status", records.encode(records.envelope(CELL, epoch, "model_status", 1, status)))
    ]
    for seq, (part_id, verdict, random_sample) in enumerate(
        (("rnd-1", 0, True), ("rnd-2", 0, True), ("nr-1", 0, False)), 1
    ):
        body = records.image_record(
            part_id=part_id, verdict=verdict, defect_probability=0.02, reasons=[], model_version="m-2",
            capture_ns=2 * 10**18 + seq, width=16, height=16, jpeg_b64=base64.b64encode(_jpeg(seq)).decode(),
            heatmap_b64=base64.b64encode(heat).decode() if part_id == "rnd-1" else None, random_sample=random_sample,
        )  # fmt: skip
        envelope = records.envelope(CELL, epoch, "sample", seq, body)
        messages.append(Message(f"qc/{CELL}/sample", records.encode(envelope)))
    decided = simulate.part_record(CELL, epoch, 1, model="m-2")
    decided["part_id"] = "rnd-1"  # the part page of rnd-1 needs its decision
    messages.append(Message(f"qc/{CELL}/part", records.encode(decided)))
    result = Store(service.engine, service.samples).write(messages)
    assert result.quarantined == 0, result
    client = TestClient(service.app())
    login(client, "operator")
    token = csrf(client)
    queue = client.get("/review?kind=random").text
    randoms = re.findall(r'href="/review/([^"?]+)\?', queue)
    assert len(randoms) == 2 and "random sample" in queue  # only the random ones, marked
    item = next(i for i in randoms if 'id="item-part">rnd-1<' in client.get(f"/review/{i}").text)
    page = client.get(f"/review/{item}").text
    assert 'id="item-heatmap"' in page and 'id="heat-toggle"' in page and 'id="item-random"' in page
    heat_sha = re.search(r'src="/img/([0-9a-f]{64})" alt="class-activation heatmap"', page).group(1)
    assert client.get(f"/img/{heat_sha}").content == heat  # content-addressed, like the image
    types = re.search(r'<optgroup label="known to the model" id="model-types">(.*?)</optgroup>', page).group(1)
    assert re.findall(r"<option>([^<]+)</option>", types) == ["crack", "dent"]  # offered first
    assert "<option>crack</option>" not in page.split('id="model-types"')[0]
    part_page = client.get(f"/parts/{CELL}/rnd-1").text
    assert 'class="heat-toggle"' in part_page and "random sample" in part_page
    # escape estimate: only labelled random samples of passed parts count
    other = next(i for i in randoms if i != item)
    nonrandom = next(
        i
        for i in re.findall(r'href="/review/([^"?]+)\?', client.get("/review").text)
        if "nr-1" in client.get(f"/review/{i}").text
    )
    for target, answer in ((item, "defective"), (other, "good"), (nonrandom, "defective")):
        data = {"answer": answer, "defect_type": "crack" if answer == "defective" else "", "csrf_token": token}
        assert client.post(f"/review/{target}", data=data).status_code == 200
    figures = client.get("/review").text
    assert re.search(r'id="escape-estimate">50.0 ?%<', figures) and 'id="escape-n">2<' in figures, figures[-1500:]
    low, high = review.wilson(1, 2)
    assert 0.0 < low < 0.5 < high < 1.0 and review.wilson(0, 0) is None


def _verification(part_id: str, seq: int, edge: str, cloud: str | None, outcome: str = "scored") -> Message:
    now_ns = time.time_ns()
    body = records.verification(
        cell=CELL, request_id=f"0badcafe-verify_request-{seq}", part_id=part_id, verifier="w-1", outcome=outcome,
        reason="" if outcome == "scored" else "deadline_passed", verdict=cloud,
        defect_probability=None if cloud is None else (0.93 if cloud == "DEFECTIVE" else 0.04), local_verdict=edge,
        local_defect_probability=0.62, edge_model_version="m-1", model_version="cloud-7", capture_time=None,
        deadline=None, received_ns=now_ns - 3 * 10**6, answered_ns=now_ns, queue_ms=1.5, service_ms=7.25,
        batch_size=2, image_bytes=900,
    )  # fmt: skip
    return Message(f"qc/{CELL}/verify/verification", records.encode(body))


def test_part_page_shows_the_clouds_answer_and_the_cell_page_edge_versus_cloud_agreement(service):
    """Issue 21: the verifier's verification records next to the part, and agreement per edge band over the
    chosen window (passed: the cloud also normal; rejected: the cloud also defective)."""
    part = simulate.part_record(CELL, "0badcafe", 2)["part_id"]
    others = [simulate.part_record(CELL, "0badcafe", s)["part_id"] for s in range(3, 9)]
    messages = [
        _verification(part, 1, "REINSPECT", "DEFECTIVE"),
        _verification(others[0], 2, "NORMAL", "NORMAL"),
        _verification(others[1], 3, "NORMAL", "NORMAL"),
        _verification(others[2], 4, "NORMAL", "DEFECTIVE"),
        _verification(others[3], 5, "DEFECTIVE", "DEFECTIVE"),
        _verification(others[4], 6, "REINSPECT", "NORMAL"),
        _verification(others[5], 7, "REINSPECT", None, outcome="expired"),
    ]
    result = Store(service.engine, service.samples).write(messages + messages[:1])  # one redelivered
    assert (result.stored, result.duplicates) == (7, 1), result.reasons
    client = TestClient(service.app())
    login(client, "viewer")
    page = client.get(f"/parts/{CELL}/{part}").text
    assert re.search(r'class="v-DEFECTIVE cloud-verdict">DEFECTIVE</span> P 0\.9300', page), page[-3000:]
    assert re.search(r'class="v-REINSPECT edge-verdict">REINSPECT</span> P 0\.6200', page)
    assert "cloud-7" in page and "service 7.2 ms (batch 2)" in page
    page = client.get(f"/cells/{CELL}?hours=1").text
    table = re.search(r'<table id="cloud-agreement">(.*?)</table>', page, re.S).group(1)
    rows = {
        cells[0]: cells[1:]
        for cells in (re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table))
        if cells
    }
    # band: scored, cloud normal, cloud defective, expired, refused, agreement
    assert rows["passed"] == ["3", "2", "1", "0", "0", "66.7 %"], rows
    assert rows["rejected"] == ["1", "0", "1", "0", "0", "100.0 %"], rows
    assert rows["re-inspect"] == ["2", "1", "1", "1", "0", "cloud defective 50.0 %"], rows
    assert re.search(r'id="cloud-agreement-overall">75\.0 %<', page), "3 of the 4 decided parts agree"
    with service.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(models.Verification)).scalar_one() == 7


def test_alert_ack_and_live_stream(service):
    client = TestClient(service.app())
    login(client, "operator")
    page = client.get("/alerts").text
    alert_id = int(re.search(r'id="alert-(\d+)"', page).group(1))
    r = client.post(f"/alerts/{alert_id}/ack", data={"note": "checked the sensor", "csrf_token": csrf(client)})
    assert r.status_code == 200
    with service.engine.connect() as conn:
        row = conn.execute(select(models.Alert).where(models.Alert.id == alert_id)).one()
    assert row.acked_by == "operator" and row.ack_note == "checked the sensor"
    assert f'id="alert-{alert_id}"' not in client.get("/alerts?state=open").text
    assert "checked the sensor" in client.get("/alerts?state=acked").text


def test_users_command(service, tmp_path, capsys, monkeypatch):
    from qc_cloud.cli import main

    where = ["--data-dir", service.settings.data_dir, "--database-url-file", str(tmp_path / "db-url")]
    pw = tmp_path / "pw"
    pw.write_text("another long password\n")
    assert main(["users", "add", "eve", "--role", "engineer", "--password-file", str(pw), *where]) == 0
    assert main(["users", "add", "eve", "--role", "viewer", "--password-file", str(pw), *where]) == 2
    monkeypatch.setenv("QC_DASHBOARD_PASSWORD", "short")
    assert main(["users", "passwd", "eve", *where]) == 2
    monkeypatch.setenv("QC_DASHBOARD_PASSWORD", "a new long password")
    assert main(["users", "passwd", "eve", *where]) == 0
    assert main(["users", "list", *where]) == 0
    out = capsys.readouterr().out
    assert "eve\tengineer" in out
    with service.engine.connect() as conn:
        stored = conn.execute(select(models.User.password_hash).where(models.User.username == "eve")).scalar_one()
    assert stored.startswith("$argon2id$") and "a new long password" not in stored
    client = TestClient(service.app())
    assert login(client, "eve", "a new long password").headers["location"] == "/fleet"


def test_migrations_0002_and_0003_add_and_remove_only_their_own_tables_and_columns(database_url):
    from sqlalchemy import inspect

    from qc_cloud.fleet import db

    engine = db.make_engine(database_url)
    db.upgrade(engine)
    dashboard = {"users", "sessions", "labels"}
    assert dashboard <= set(inspect(engine).get_table_names())
    db.downgrade(engine, "0001")
    tables = set(inspect(engine).get_table_names())
    assert not dashboard & tables and {"parts", "samples", "alerts"} <= tables
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()  # 0004 and 0005 came later: not pinned here
    columns = {c["name"] for c in inspect(engine).get_columns("samples")}
    assert {"heatmap_sha256", "random_sample"} <= columns and "login_failures" in inspect(engine).get_table_names()
    db.downgrade(engine, "0002")
    columns = {c["name"] for c in inspect(engine).get_columns("samples")}
    assert not {"heatmap_sha256", "random_sample"} & columns
    assert "login_failures" not in inspect(engine).get_table_names()
    assert dashboard <= set(inspect(engine).get_table_names())
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    db.downgrade(engine, "0004")  # 0005 (issue 21) removes its verifications table only
    tables = set(inspect(engine).get_table_names())
    assert "verifications" not in tables and {"reconcile_findings", "labels", "login_failures"} <= tables
    db.upgrade(engine)
    assert "verifications" in inspect(engine).get_table_names()
    engine.dispose()


def test_cell_charts_are_counted_and_downsampled_by_the_database(service):
    from datetime import timedelta

    from qc_cloud.dashboard import data
    from qc_cloud.fleet import rules

    end = rules.utcnow() + timedelta(minutes=1)
    with service.engine.connect() as conn:
        charts = data.cell_charts(conn, CELL, end - timedelta(hours=24), end)
    # P(defective) of the simulated parts 1..12 is 0.01..0.12: bins of 0.05
    assert charts["histogram"][:3] == [4, 5, 3] and sum(charts["histogram"]) == 12
    assert [round(p["p50"]) for p in charts["latency"]] == [40] and charts["latency"][0]["pps"] == 30.0
    assert sum(b["parts"] for b in charts["trend"]) == 12


def test_login_throttle_per_user_name_is_kept_in_the_database(service):
    from datetime import datetime, timedelta

    t0 = datetime(2026, 12, 6, 8, 0, 0)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    worker_a = accounts.LoginThrottle(service.engine, attempts=3, window_s=60)
    worker_b = accounts.LoginThrottle(service.engine, attempts=3, window_s=60)  # another API worker, same DB
    for t, worker in ((0, worker_a), (1, worker_b), (2, worker_a)):
        assert worker.blocked_for("eve", at(t)) == 0
        worker.failed("eve", at(t))
    assert worker_b.blocked_for("eve", at(3)) == 57 and worker_a.blocked_for("eve", at(3)) == 57
    assert worker_b.blocked_for("bob", at(3)) == 0
    assert worker_a.blocked_for("eve", at(60.5)) == 0  # the first failure left the window
    worker_b.succeeded("eve")
    assert worker_a.blocked_for("eve", at(10)) == 0
    with service.engine.connect() as conn:
        assert conn.execute(select(models.LoginFailure.id)).first() is None


def test_repeated_wrong_passwords_are_refused_for_a_while(service):
    client = TestClient(service.app())
    for _ in range(5):
        assert login(client, "viewer", "wrong password").headers["location"].startswith("/login?error=1")
    assert login(client, "viewer").status_code == 429  # even the right password, until the window passes
    assert login(client, "operator").status_code == 303
    other_worker = TestClient(service.app())  # a second app on the same database: the count is shared
    assert login(other_worker, "viewer").status_code == 429


def test_fleet_flags_a_model_mismatch_and_sequence_gaps_and_alerts_filter(tmp_path):
    s = settings.load(None, env={}, data_dir=str(tmp_path / "fleet"), ingest=False)
    service = FleetService(s).start()
    try:
        one, two, three = simulate.cell_names(9)[0], simulate.cell_names(9)[4], simulate.cell_names(9)[8]  # line1
        messages = []
        for cell, model in ((one, "m-1"), (two, "m-1"), (three, "m-2")):
            for seq in (1, 2, 5) if cell == two else (1, 2, 3):  # two misses 3 and 4
                record = simulate.part_record(cell, "0badcafe", seq, model=model)
                messages.append(Message(f"qc/{cell}/part", records.encode(record)))
            state = records.model_state(
                stamp_ns=10**18, version=model, sha256="a" * 64, backend="onnxruntime", precision="fp32", state=2,
                message="",
            )  # fmt: skip
            status = records.envelope(cell, "0badcafe", "model_status", 1, state)
            messages.append(Message(f"qc/{cell}/model/status", records.encode(status)))
        alert = simulate.alert_record(two, "0badcafe", 1)
        messages.append(Message(f"qc/{two}/alert", records.encode({**alert, "severity": "ERROR", "code": "JAM"})))
        Store(service.engine, service.samples).write(messages)
        with service.engine.begin() as conn:
            accounts.add_user(conn, "v", PASSWORD, "viewer")
        client = TestClient(service.app())
        login(client, "v")
        from qc_cloud.dashboard import data
        from qc_cloud.fleet import rules

        with service.engine.connect() as conn:
            rows = {c["cell"]: c for c in data.fleet(conn, rules.utcnow(), 24)["cells"]}
        assert rows[one]["flags"] == []
        assert rows[two]["flags"] == ["2 record(s) missing (sequence gaps)"]
        assert rows[three]["flags"] == ["model m-2 differs from its line (m-1)"]
        assert rows[two]["open_alerts"] == 1
        page = client.get("/fleet").text
        assert "differs from its line" in page and "sequence gaps" in page
        assert "<td>JAM</td>" in client.get(f"/alerts?cell={two}&severity=ERROR&code=JAM").text
        assert "<td>JAM</td>" not in client.get(f"/alerts?cell={one}").text
        assert "<td>JAM</td>" not in client.get("/alerts?severity=WARN").text
    finally:
        service.stop()
