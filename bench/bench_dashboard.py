"""Dashboard benchmark (docs/dashboard.md): a throw-away PostgreSQL with 1,000,000 parts, a real mosquitto, the
service (`qc_cloud serve` embedded: ingest + API + dashboard) and Debian's headless chromium.

    python bench/bench_dashboard.py [--parts 1000000] [--requests 100] [--alerts 20] [--labels 100]

1. Page server time with --parts parts stored (100 cells over 24 h, bulk-loaded as bench_fleet.py does, plus a
   process state, a KPI record per cell and minute, reject events of the rejected parts, 2,000 image samples):
   the fleet page and one cell's page (24 h, six charts), logged in; p50/p95 of the server time (the
   Server-Timing header the dashboard sets) and of the client round trip; baseline in the same run: /healthz.
2. A new alert to an open browser: the alerts page open in chromium, an alert published to the broker as the
   cell would; time from publish to the row in the page (the page stamps Date.now() when it inserts the row).
3. The review screen's answer: POST of a label (store + pick the next item of the queue), server time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ros2_ws/src" / package) for package in ("qc_contract", "qc_cell", "qc_cloud")]

import httpx  # noqa: E402
from sqlalchemy import text  # noqa: E402

from qc_cell.bringup.local_broker import Mosquitto  # noqa: E402
from qc_cloud.dashboard import accounts, browser  # noqa: E402
from qc_cloud.fleet import db, rules, simulate  # noqa: E402
from qc_cloud.fleet.embedded import EmbeddedFleet  # noqa: E402
from qc_cloud.fleet.postgres_server import PostgresServer  # noqa: E402
from qc_contract import records  # noqa: E402

PASSWORD = "bench-password-1"


def _bench_fleet():
    spec = importlib.util.spec_from_file_location("bench_fleet", REPO / "bench" / "bench_fleet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_context(url: str, names: list[str], samples_dir: Path, n_samples: int = 2000) -> None:
    """Process states, KPIs (one per cell and minute), reject events of the rejected parts, alerts, samples."""
    from qc_cloud.fleet.samples import SampleStore

    engine = db.make_engine(url)
    now = rules.utcnow()
    start = now - timedelta(hours=24)
    store = SampleStore(samples_dir)
    jpeg = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffdb004300") + bytes(range(64)) + b"\xff\xd9"
    import hashlib

    sha = hashlib.sha256(jpeg).hexdigest()
    store.put(sha, jpeg)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(
            "COPY process_states (cell, record_id, time, temperature_c, pressure_pa, vibration_rms, anomaly_score,"
            " flags, out_of_spec, stale) FROM STDIN"
        ) as copy:
            for m in range(24 * 60):
                t = start + timedelta(minutes=m)
                for cell in names:
                    copy.write_row((cell, f"0000b00c-process-{m + 1}", t, 60.0, 101325.0, 0.2, 0.1, 0, False, False))
        with cur.copy(
            "COPY kpis (cell, record_id, time, window_s, parts, verdicts, yield_ratio, throughput_pps, latency_ms,"
            " reasons, total_parts) FROM STDIN"
        ) as copy:
            for m in range(24 * 60):
                t = start + timedelta(minutes=m)
                for cell in names:
                    copy.write_row(
                        (cell, f"0000b00c-kpi-{m + 1}", t, 60.0, 7, '{"NORMAL": 6}', 0.86, 0.12,
                         '{"p50": 40.0, "p95": 50.0, "p99": 60.0}', "{}", m * 7)
                    )  # fmt: skip
        cur.execute(
            "INSERT INTO rejects (cell, record_id, time, part_id, verdict, outcome, method, lane, lateness_ms, message)"
            " SELECT cell, replace(record_id, 'part', 'reject'), time, part_id, verdict, 'DONE', 'pusher', 'reject',"
            " 1.0, '' FROM parts WHERE verdict = 'DEFECTIVE'"
        )
        cur.execute(
            "INSERT INTO samples (cell, record_id, kind, time, part_id, verdict, defect_probability, reasons,"
            " model_version, width, height, sha256, size) SELECT cell, replace(record_id, 'part', 'sample'),"
            f" 'sample', time, part_id, verdict, 0.65, '[]', model_version, 8, 8, '{sha}', {len(jpeg)}"
            f" FROM parts WHERE verdict <> 'NORMAL' ORDER BY time DESC LIMIT {n_samples}"
        )
        cur.execute(
            "INSERT INTO alerts (cell, record_id, time, severity, source, code, message, part_id) SELECT cell,"
            " '0000b00c-alert-' || seq, time, 'WARN', 'bench', 'DRIFT', 'process drift', '' FROM parts"
            " WHERE seq % 1000 = 0"
        )
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    engine.dispose()


def login(client: httpx.Client, user: str) -> str:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"username": user, "password": PASSWORD, "csrf_token": token, "next": "/fleet"})
    assert r.status_code == 303 and r.headers["location"] == "/fleet", r.text[:200]
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/fleet").text).group(1)


def server_ms(response: httpx.Response) -> float:
    return float(response.headers["server-timing"].split("dur=")[1])


def pages(client: httpx.Client, paths: dict[str, str], requests: int) -> dict[str, tuple[list, list]]:
    out = {}
    for label, path in paths.items():
        server, wall = [], []
        for i in range(requests + 5):
            t = time.perf_counter()
            r = client.get(path)
            elapsed = (time.perf_counter() - t) * 1000
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            if i >= 5:
                wall.append(elapsed)
                server.append(server_ms(r) if "server-timing" in r.headers else elapsed)
        out[label] = (server, wall)
    return out


def alert_latency(fleet: EmbeddedFleet, broker: Mosquitto, cell: str, n: int) -> list[float]:
    from selenium.webdriver.common.by import By

    driver = browser.chromium()
    publisher = simulate.Publisher("127.0.0.1", broker.port, client_id=f"bench-dash-{os.getpid()}")
    out = []
    try:
        driver.get(fleet.url + "/login")
        driver.find_element(By.ID, "username").send_keys("operator")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login-button").click()
        driver.get(fleet.url + "/alerts")
        end = time.monotonic() + 20
        while driver.find_element(By.ID, "live-state").text != "live" and time.monotonic() < end:
            time.sleep(0.05)
        for i in range(n):
            alert = simulate.alert_record(cell, "be0c4a1e", i + 1)
            alert["message"] = f"bench alert {i}"
            sent_ms = time.time() * 1000
            publisher.publish_all([(f"qc/{cell}/alert", records.encode(alert))])
            end = time.monotonic() + 10
            while time.monotonic() < end:
                shown = driver.execute_script(
                    "var r = document.querySelector('#alerts-body tr'); return r && r.textContent.indexOf("
                    "arguments[0]) >= 0 && window.QC_LAST_ALERT ? window.QC_LAST_ALERT.shown_at : null;",
                    f"bench alert {i}",
                )
                if shown:
                    out.append(shown - sent_ms)
                    break
                time.sleep(0.02)
            else:
                with fleet.service.engine.connect() as conn:
                    stored = conn.execute(
                        text("SELECT id FROM alerts WHERE message = :m"), {"m": f"bench alert {i}"}
                    ).all()
                    quarantined = conn.execute(text("SELECT reason FROM quarantine ORDER BY id DESC LIMIT 3")).all()
                state = driver.find_element(By.ID, "live-state").text
                raise RuntimeError(
                    f"alert {i} did not reach the browser within 10 s (stored: {stored}, quarantine: {quarantined}, "
                    f"stream: {state}, workers: {fleet.service.status()})"
                )
            time.sleep(0.3)
    finally:
        publisher.close()
        driver.quit()
    return out


def label_times(client: httpx.Client, csrf: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        queue = client.get("/review?order=uncertain").text
        item = re.search(r'href="/review/([^"?]+)\?', queue).group(1)
        r = client.post(
            f"/review/{item}",
            data={"answer": ("good", "defective", "unsure")[i % 3], "defect_type": "crack", "csrf_token": csrf},
        )
        assert r.status_code == 303, (r.status_code, r.text[:300])
        out.append(server_ms(r))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--alerts", type=int, default=20)
    parser.add_argument("--labels", type=int, default=100)
    args = parser.parse_args()
    if browser.available():
        print(f"note: {browser.available()}: the alert-to-browser figure is skipped")
    work = Path(tempfile.mkdtemp(prefix="qc-bench-dashboard-"))
    pg = PostgresServer().start()
    print(f"PostgreSQL on port {pg.port}, mosquitto, work dir {work}; {os.cpu_count()} CPUs")
    try:
        url = pg.create_database("dashboard")
        t = time.perf_counter()
        names, _, stored = _bench_fleet().load_parts(url, args.parts)
        load_context(url, names, work / "fleet" / "samples")
        print(f"loaded {stored} parts (100 cells, 24 h) and their context in {time.perf_counter() - t:.0f} s")
        with Mosquitto(workdir=work, persistence=False) as broker:
            fleet = EmbeddedFleet(work / "fleet", broker.url, database_url=url, client_id=f"bench-dash-{os.getpid()}")
            try:
                with fleet.service.engine.begin() as conn:
                    accounts.add_user(conn, "operator", PASSWORD, "operator")
                    samples = conn.execute(text("SELECT count(*) FROM samples")).scalar_one()
                client = httpx.Client(base_url=fleet.url, follow_redirects=False, timeout=60)
                csrf = login(client, "operator")
                cell = names[17]
                results = pages(
                    client,
                    {"/healthz (baseline)": "/healthz", "fleet page": "/fleet", "cell page (24 h)": f"/cells/{cell}"},
                    args.requests,
                )
                print(
                    f"\n1. Pages with {stored} parts stored, {args.requests} requests each (server time | round trip)"
                )
                for label, (server, wall) in results.items():
                    goal = "   (goal p95 < 150 ms)" if "page" in label else ""
                    print(
                        f"   {label:<20} server p50 {statistics.median(server):7.2f} ms  p95 "
                        f"{percentile(server, 0.95):7.2f} ms | round trip p50 {statistics.median(wall):7.2f} ms  "
                        f"p95 {percentile(wall, 0.95):7.2f} ms{goal}"
                    )
                if not browser.available():
                    lat = alert_latency(fleet, broker, names[3], args.alerts)
                    print(
                        f"\n2. New alert -> open browser ({len(lat)} alerts: MQTT -> ingest -> PostgreSQL -> SSE -> "
                        "page)"
                        f"\n   p50 {statistics.median(lat):7.1f} ms   p95 {percentile(lat, 0.95):7.1f} ms   "
                        f"max {max(lat):7.1f} ms   (goal < 1000 ms; the stream polls every 200 ms)"
                    )
                times = label_times(client, csrf, min(args.labels, samples))
                print(
                    f"\n3. Label answer ({len(times)} answers, {samples} samples in the queue): server p50 "
                    f"{statistics.median(times):6.2f} ms   p95 {percentile(times, 0.95):6.2f} ms   "
                    f"max {max(times):6.2f} ms   (goal < 100 ms)"
                )
            finally:
                fleet.stop()
    finally:
        pg.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
