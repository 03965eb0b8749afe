"""Fleet service benchmark (docs/fleet.md): a real mosquitto and a throw-away PostgreSQL, started here.

    python bench/bench_fleet.py [--records 30000] [--lag-rates 1000,3000] [--lag-seconds 10] [--parts 1000000]

Figures on a machine shared with other work vary with its load: the worker's CPU time per record (printed beside
the wall-clock rate) does not.

1. Sustained ingest (records/s) of one worker process into PostgreSQL and into SQLite: a backlog of part records
   queued by the broker for the worker's persistent session is drained; the rate is taken between the first
   and the last stored record. Baseline in the same run: a plain paho subscriber (manual acks, no database)
   draining the same backlog. Then 2 worker processes on one shared subscription: the speed-up over one.
2. Ingest lag, published -> queryable, at paced rates (3,000 records/s: a 100-cell plant at 30 parts/s): a
   publisher process stamps each record's decision_time when it sends it; a poller here reads the new rows
   and takes (seen - decision_time); p50/p95/p99.
3. With --parts (1,000,000) parts stored over the last 24 h from 100 cells (bulk-loaded with COPY, rollups
   computed the way ingest keeps them): p50/p95 of the fleet overview and of one cell's 24 h trend through
   the real HTTP API (uvicorn), against /healthz (the HTTP round trip alone) as the baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ros2_ws/src" / package) for package in ("qc_contract", "qc_cell", "qc_cloud")]

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from qc_cell.bringup.local_broker import Mosquitto  # noqa: E402
from qc_cloud.fleet import db, models, rules, simulate  # noqa: E402
from qc_cloud.fleet.postgres_server import PostgresServer  # noqa: E402

BROKER_CONFIG = "max_queued_messages 0\nmax_inflight_messages 0\n"
CELLS = simulate.cell_names(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def subscribe_session(port: int, client_id: str, topic: str) -> None:
    """Create a persistent session subscribed to `topic`, then leave: the broker queues for it from now on."""
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    assert done.wait(10)
    c.disconnect()
    c.loop_stop()


def end_session(port: int, client_id: str) -> None:
    """Remove a persistent session, so the broker stops queueing for it."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    connected.wait(10)
    c.disconnect()
    c.loop_stop()


def queue_backlog(port: int, count: int, epoch: str) -> None:
    publisher = simulate.Publisher("127.0.0.1", port, inflight=1000)
    per_cell = count // len(CELLS)
    publisher.publish_all((t, p) for t, p, _ in simulate.part_stream(CELLS, per_cell, epoch=epoch))
    publisher.close()


def raw_drain(port: int, count: int) -> float:
    """Baseline: a paho subscriber acknowledging each message, nothing stored. Returns messages/s."""
    subscribe_session(port, "bench-raw", "qc/+/+/+/part")
    queue_backlog(port, count, "0000raw0")
    got, first, last = [0], [0.0], [0.0]
    done = threading.Event()

    def on_message(client, userdata, message):
        if got[0] == 0:
            first[0] = time.perf_counter()
        got[0] += 1
        client.ack(message.mid, message.qos)
        if got[0] >= count:
            last[0] = time.perf_counter()
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5, manual_ack=True)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 1000
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    done.wait(300)
    c.disconnect()
    c.loop_stop()
    end_session(port, "bench-raw")
    return count / (last[0] - first[0])


def worker_env(database_url: str, broker_url: str, client_id: str, data_dir: Path, workers: int = 1) -> dict:
    return {
        **os.environ,
        "QC_FLEET_DATABASE_URL": database_url,
        "QC_FLEET_BROKER_URL": broker_url,
        "QC_FLEET_CLIENT_ID": client_id,
        "QC_FLEET_DATA_DIR": str(data_dir),
        "QC_FLEET_BOOTSTRAP_TOKENS": "false",
        "QC_FLEET_INGEST_WORKERS": str(workers),
        "QC_FLEET_BATCH_SIZE": "1000",
        "QC_FLEET_BATCH_MS": "50",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def start_workers(env_by_id: dict[str, dict], log_dir: Path) -> list[subprocess.Popen]:
    procs = []
    for client_id, env in env_by_id.items():
        log = open(log_dir / f"{client_id}.log", "ab")  # noqa: SIM115 (lives as long as the process)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "qc_cloud.cli", "serve", "--no-api", "--log-level", "WARNING"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine since boot, all cores (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def worker_counts(log_dir: Path, client_id: str) -> int:
    """Messages a worker process received, from the line `serve` prints when it stops."""
    for line in (log_dir / f"{client_id}.log").read_text().splitlines()[::-1]:
        if line.startswith(f"[fleet] worker {client_id}-0: received "):
            return int(line.split()[4])
    return 0


def count_parts(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(models.Part.__table__)).scalar_one()


def drain(database_url: str, broker: Mosquitto, count: int, processes: int, tag: str, work: Path) -> dict:
    """`processes` worker processes (one worker each) draining a backlog of `count`: records/s (wall clock),
    worker CPU s per 1000 records (all worker processes), each worker's share of the messages, the idle share
    of the machine's CPUs and the load average during the drain. The CPU figure is load-independent: on a
    machine shared with other work the wall-clock rate drops, the CPU per record does not."""
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    group = f"bench-{tag}"
    ids = [f"{tag}-p{i}" for i in range(processes)]
    for client_id in ids:  # worker 0 of each process: <client_id>-0
        subscribe_session(broker.port, f"{client_id}-0", f"$share/{group}/qc/+/+/+/#")
    before = count_parts(engine)
    queue_backlog(broker.port, count, f"{abs(hash(tag)) % 16**8:08x}")
    env = {i: {**worker_env(database_url, broker.url, i, work / tag), "QC_FLEET_SHARE_GROUP": group} for i in ids}
    procs = start_workers(env, work)
    first = last = None
    end = time.monotonic() + 600
    try:
        while time.monotonic() < end:
            n = count_parts(engine) - before
            now = time.perf_counter()
            if n > 0 and first is None:
                first, first_n = now, n
                cpu_first = sum(cpu_seconds(p.pid) for p in procs)
                machine_first = machine_cpu()
            if n >= count:
                last = now
                cpu_last = sum(cpu_seconds(p.pid) for p in procs)
                machine_last = machine_cpu()
                load = load_average()
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        for client_id in ids:
            end_session(broker.port, f"{client_id}-0")
        engine.dispose()
    if last is None:
        raise RuntimeError(f"{tag}: only {count_parts(db.make_engine(database_url)) - before} of {count} stored")
    received = [worker_counts(work, client_id) for client_id in ids]
    busy, idle = (b - a for a, b in zip(machine_first, machine_last, strict=True))
    return {
        "rate": (count - first_n) / (last - first),
        "cpu": (cpu_last - cpu_first) / (count - first_n) * 1000,
        "shares": [r / max(1, sum(received)) for r in received],
        "idle": idle / max(1e-9, busy + idle),
        "load": load,
    }


def lag(database_url: str, broker: Mosquitto, rate: float, seconds: float, work: Path) -> list[float]:
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    subscribe_session(broker.port, "lag-0", "qc/+/+/+/#")  # one worker: a plain subscription (share_group auto)
    env = {**worker_env(database_url, broker.url, "lag", work / "lag"), "QC_FLEET_BATCH_MS": "20"}
    log = work / "lag.log"
    log_start = log.stat().st_size if log.exists() else 0  # the log of an earlier rate is in the same file
    procs = start_workers({"lag": env}, work)
    # the worker process starts and subscribes (its session existed before: nothing is missed, but what is
    # published before it runs would count its start-up as lag); on a loaded machine that takes 5-30 s
    started = time.monotonic()
    while b"[fleet] ingesting with" not in log.read_bytes()[log_start:]:
        if time.monotonic() - started > 180 or procs[0].poll() is not None:
            raise RuntimeError(f"the lag worker did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    count = int(rate * seconds)
    paced = ["--publish-paced", str(broker.port), str(rate), str(count)]
    publisher = subprocess.Popen(
        [sys.executable, __file__, "--cells", str(len(CELLS)), *paced],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    lags: list[float] = []
    seen_until = datetime(1970, 1, 1)
    p = models.Part.__table__
    deadline = time.monotonic() + seconds + 120
    try:
        with engine.connect() as conn:
            while len(lags) < count and time.monotonic() < deadline:
                # rows received since the last poll (received_at is set on arrival; a row committed later than
                # one with a newer received_at is picked up by the 2 s overlap, deduplicated by id)
                # one worker commits in the order it received: the newest received_at seen is a watermark
                rows = conn.execute(
                    select(p.c.record_id, p.c.cell, p.c.decision_time, p.c.received_at).where(
                        p.c.received_at >= seen_until
                    )
                ).all()
                conn.commit()
                seen_at = datetime.now(timezone.utc).replace(tzinfo=None)
                for record_id, cell, decided, received in rows:
                    key = (cell, record_id)
                    if key not in _seen:
                        _seen.add(key)
                        lags.append((seen_at - decided).total_seconds() * 1000)
                    seen_until = max(seen_until, received)
                time.sleep(0.02)
    finally:
        publisher.wait(60)
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        end_session(broker.port, "lag-0")
        engine.dispose()
    return lags


_seen: set = set()


def publish_paced(port: int, rate: float, count: int) -> None:
    """(Subprocess) publish `count` parts at `rate`/s, each stamped with its publish time."""
    publisher = simulate.Publisher("127.0.0.1", port, inflight=1000)
    from qc_contract import records

    start = time.monotonic()
    seqs = dict.fromkeys(CELLS, 0)
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        cell = CELLS[i % len(CELLS)]
        seqs[cell] += 1
        record = simulate.part_record(cell, f"{int(rate):08x}", seqs[cell], decision_ns=time.time_ns())
        publisher.client.publish(f"qc/{cell}/part", records.encode(record), qos=1)
    publisher.wait_acked(count, 120)
    publisher.close()


def load_parts(database_url: str, parts: int, cells: int = 100) -> tuple[list[str], datetime, int]:
    """Bulk-load `parts` parts spread over the last 24 h (COPY), with the rollups ingest would have kept."""
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    now = rules.utcnow()
    names = simulate.cell_names(cells, site="bench")
    start = now - timedelta(hours=24)
    db.ensure_partitions(engine, {(start + timedelta(hours=h)).date() for h in range(0, 26)})
    verdicts = ("NORMAL",) * 6 + ("REINSPECT", "DEFECTIVE")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = (
            "cell, record_id, time, epoch, seq, part_id, verdict, reasons, defect_probability, "
            "process_anomaly_score, process_flags, model_version, encoder_count, capture_time, decision_time, "
            "capture_to_decision_ms, received_at"
        )
        per_cell = parts // cells
        step = timedelta(hours=24) / per_cell
        with cursor.copy(f"COPY parts ({columns}) FROM STDIN") as copy:
            for seq in range(1, per_cell + 1):
                t = start + step * seq
                for cell in names:
                    copy.write_row(
                        (
                            cell,
                            f"0000b00c-part-{seq}",
                            t,
                            "0000b00c",
                            seq,
                            f"{cell[-7:]}-{seq:08d}",
                            verdicts[seq % 8],
                            '["visual_normal"]',
                            0.1,
                            0.1,
                            0,
                            "m-1",
                            seq,
                            t,
                            t,
                            40.0,
                            t,
                        )
                    )
        cursor.execute(
            "INSERT INTO part_rollups (cell, hour, parts, normal, reinspect, defective, not_inspected, latency_sum_ms,"
            " latency_n, latency_max_ms) SELECT cell, date_trunc('hour', time), count(*),"
            " count(*) FILTER (WHERE verdict = 'NORMAL'), count(*) FILTER (WHERE verdict = 'REINSPECT'),"
            " count(*) FILTER (WHERE verdict = 'DEFECTIVE'), 0, sum(capture_to_decision_ms), count(*),"
            " max(capture_to_decision_ms) FROM parts GROUP BY 1, 2"
        )
        cursor.executemany(
            "INSERT INTO cells (name, first_seen, last_seen, presence, model_version, throughput_pps) "
            "VALUES (%s, %s, %s, 'online', 'm-1', 30.0)",
            [(cell, start, now) for cell in names],
        )
        raw.commit()
        cursor.execute("ANALYZE")
        raw.commit()
    finally:
        raw.close()
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM parts")).scalar_one()
    engine.dispose()
    return names, now, stored


def api_latency(database_url: str, names: list[str], work: Path, requests: int = 200) -> dict[str, list[float]]:
    import json
    import urllib.request

    from qc_cloud.fleet.embedded import EmbeddedFleet

    fleet = EmbeddedFleet(work / "api", "mqtt://127.0.0.1:1", ingest=False, database_url=database_url)
    headers = {"Authorization": f"Bearer {fleet.tokens['read']}"}
    site, line, cell = names[17].split("/")
    paths = {
        "/healthz (baseline)": "/healthz",
        "fleet overview": "/api/v1/cells",
        "cell 24 h trend": f"/api/v1/cells/{site}/{line}/{cell}/trend",
        "cell parts, newest 100": f"/api/v1/parts?cell={site}/{line}/{cell}&limit=100",
    }
    out: dict[str, list[float]] = {}
    try:
        # a deep page of all parts: by offset, and the same page by cursor (keyset pagination)
        deep = 100_000
        with urllib.request.urlopen(
            urllib.request.Request(fleet.url + f"/api/v1/parts?limit=100&offset={deep - 100}", headers=headers)
        ) as r:
            cursor = json.loads(r.read())["next_cursor"]
        paths[f"all parts, page at {deep:,} by offset"] = f"/api/v1/parts?limit=100&offset={deep}"
        paths[f"all parts, page at {deep:,} by cursor"] = f"/api/v1/parts?limit=100&cursor={cursor}"
        for label, path in paths.items():
            times = []
            for i in range(requests + 10):
                t = time.perf_counter()
                with urllib.request.urlopen(urllib.request.Request(fleet.url + path, headers=headers)) as r:
                    body = r.read()
                if i >= 10:  # warm-up
                    times.append((time.perf_counter() - t) * 1000)
            out[label] = times
            assert body
    finally:
        fleet.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=30000, help="backlog drained per ingest measurement")
    parser.add_argument("--cells", type=int, default=100, help="simulated cells sending the backlog (a plant: 100)")
    parser.add_argument("--lag-rates", default="1000,3000", help="records/s, comma-separated")
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--parts", type=int, default=1_000_000, help="parts stored for the query latencies")
    parser.add_argument("--skip", nargs="*", default=[], choices=["ingest", "lag", "queries"])
    parser.add_argument("--publish-paced", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global CELLS
    CELLS = simulate.cell_names(args.cells)
    if args.publish_paced:
        publish_paced(int(args.publish_paced[0]), float(args.publish_paced[1]), int(args.publish_paced[2]))
        return 0
    work = Path(tempfile.mkdtemp(prefix="qc-bench-fleet-"))
    pg = PostgresServer().start()
    print(
        f"PostgreSQL {pg.bindir.parent.name} on port {pg.port}, mosquitto, work dir {work}; {os.cpu_count()} CPUs; "
        f"load average {load_average()}; {args.cells} cells"
    )
    try:
        with Mosquitto(extra_config=BROKER_CONFIG, workdir=work, persistence=False) as broker:
            if "ingest" not in args.skip:
                n = args.records // len(CELLS) * len(CELLS)  # whole rounds: every cell sends as many
                raw = raw_drain(broker.port, n)
                print(f"\n1. Sustained ingest, a backlog of {n} part records from {len(CELLS)} cells drained")
                print(f"   baseline: paho subscriber, manual acks, no database  {raw:9.0f} records/s")
                print("   (records/s wall clock; worker CPU per 1000 records -> records/s per CPU core)")
                sqlite = drain(f"sqlite:///{work}/bench.sqlite3", broker, n, 1, "sqlite1", work)
                print(
                    f"   SQLite, 1 worker                    {sqlite['rate']:7.0f} records/s "
                    f"({sqlite['rate'] / raw:.0%} of baseline); {sqlite['cpu'] * 1000:.0f} ms CPU/1000 -> "
                    f"{1000 / sqlite['cpu']:.0f} records/s per core; machine idle {sqlite['idle']:.0%}, "
                    f"load {sqlite['load']}"
                )
                pg1 = drain(pg.create_database("ingest1"), broker, n, 1, "pg1", work)
                print(
                    f"   PostgreSQL, 1 worker                {pg1['rate']:7.0f} records/s "
                    f"({pg1['rate'] / raw:.0%} of baseline); {pg1['cpu'] * 1000:.0f} ms CPU/1000 -> "
                    f"{1000 / pg1['cpu']:.0f} records/s per core (goal >= 5000, aim 10000); "
                    f"machine idle {pg1['idle']:.0%}, load {pg1['load']}"
                )
                pg2 = drain(pg.create_database("ingest2"), broker, n, 2, "pg2", work)
                print(
                    f"   PostgreSQL, 2 workers, shared sub.  {pg2['rate']:7.0f} records/s "
                    f"(x{pg2['rate'] / pg1['rate']:.2f} of 1 worker, wall clock); {pg2['cpu'] * 1000:.0f} ms "
                    f"CPU/1000 (x{pg1['cpu'] / pg2['cpu']:.2f} CPU efficiency of 1 worker); shares "
                    + " / ".join(f"{x:.0%}" for x in pg2["shares"])
                    + f"; machine idle {pg2['idle']:.0%}, load {pg2['load']}"
                )
                print(
                    "   2 workers scale with free cores: capacity = cores x 1000 / (ms CPU per 1000). A speed-up "
                    "in wall clock needs idle CPU for the second worker; with the machine idle near 0% it "
                    "cannot show, and the CPU efficiency and the shares are the figures that carry over."
                )
            if "lag" not in args.skip:
                print(
                    "\n2. Ingest lag, published -> queryable (PostgreSQL, 1 worker, poll every 20 ms), "
                    "goal p99 < 1000 ms at 3000 records/s"
                )
                for rate in [float(r) for r in args.lag_rates.split(",")]:
                    _seen.clear()
                    lags = lag(pg.create_database(f"lag{int(rate)}"), broker, rate, args.lag_seconds, work)
                    print(
                        f"   {rate:6.0f} records/s for {args.lag_seconds:.0f} s ({len(lags)} records):  "
                        f"p50 {percentile(lags, 0.5):7.1f} ms   p95 {percentile(lags, 0.95):7.1f} ms   "
                        f"p99 {percentile(lags, 0.99):7.1f} ms   max {max(lags):7.1f} ms"
                    )
        if "queries" not in args.skip:
            url = pg.create_database("queries")
            t = time.perf_counter()
            names, _, stored = load_parts(url, args.parts)
            print(
                f"\n3. Queries with {stored} parts stored (100 cells, 24 h; loaded in {time.perf_counter() - t:.0f} s),"
                " through the HTTP API (uvicorn, 1 process), 200 requests each"
            )
            for label, times in api_latency(url, names, work).items():
                print(
                    f"   {label:<36} p50 {statistics.median(times):7.2f} ms   p95 {percentile(times, 0.95):7.2f} ms"
                    + ("   (goal p95 < 100 ms)" if "trend" in label or "overview" in label else "")
                )
    finally:
        pg.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
