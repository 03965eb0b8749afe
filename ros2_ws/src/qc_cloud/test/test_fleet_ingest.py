"""Fleet ingest through a real mosquitto into SQLite and a real PostgreSQL: exactly once under redelivery and
several workers, a worker SIGKILLed mid-stream, PostgreSQL restarted mid-stream, hostile payloads.

Counts are small by default; QC_FLEET_FULL=1 runs the issue's figures (20,000 records from 10 cells, 1,000
hostile payloads)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")

from sqlalchemy import func, select

from qc_cell.bringup.local_broker import Mosquitto, mosquitto_binary
from qc_cloud.fleet import db, models, settings, simulate
from qc_cloud.fleet.service import FleetService
from qc_cloud.fleet.store import Store
from qc_cloud.fleet.worker import IngestWorker
from qc_contract import records

FULL = os.environ.get("QC_FLEET_FULL") == "1"
STREAM_RECORDS = 20_000 if FULL else 2_000
HOSTILE = 1_000 if FULL else 120
CELLS = simulate.cell_names(10)
# A fleet broker: persistent sessions keep every message for a worker that is down (default: 1000 only).
BROKER_CONFIG = "max_queued_messages 0\nmax_inflight_messages 0\n"

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")


@pytest.fixture
def broker(tmp_path):
    (tmp_path / "broker").mkdir()
    with Mosquitto(extra_config=BROKER_CONFIG, workdir=tmp_path / "broker", persistence=True) as broker:
        yield broker


def _settings(tmp_path, broker, database_url, **overrides):
    url_file = tmp_path / "db-url"
    url_file.write_text(database_url + "\n")
    return settings.load(
        None,
        env={},
        data_dir=str(tmp_path / "fleet"),
        database_url_file=str(url_file),
        broker_url=broker.url,
        api=False,
        bootstrap_tokens=False,
        **overrides,
    )


def _count(engine, table=models.Part) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()


def _wait(predicate, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    assert predicate(), f"timed out waiting for {what}"


def _stored_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return [f"{c}|{i}" for c, i in conn.execute(select(models.Part.cell, models.Part.record_id))]


def test_shared_subscription_spreads_the_stream_and_presence_is_kept(tmp_path, broker, database_url):
    service = FleetService(_settings(tmp_path, broker, database_url, ingest_workers=2)).start()
    try:
        publisher = simulate.Publisher("127.0.0.1", broker.port)
        stream = list(simulate.part_stream(CELLS[:4], 50))
        publisher.publish_all((t, p) for t, p, _ in stream)
        cell = CELLS[0]
        status = records.status(cell=cell, state="online", stamp_ns=time.time_ns(), details={"outbox_depth": 0})
        publisher.client.publish(f"qc/{cell}/status", records.encode(status), qos=1, retain=True)
        _wait(lambda: _count(service.engine) == 200, 60, "200 parts")
        assert all(w.stats.stored > 0 for w in service.workers), "both workers took a share"
        with service.engine.connect() as conn:
            _wait(
                lambda: conn.execute(select(models.Cell.presence).where(models.Cell.name == cell)).scalar() == "online",
                20,
                "presence",
            )
        publisher.close()
    finally:
        service.stop()


def test_plain_subscriptions_and_redeliveries_store_each_record_once(tmp_path, broker, database_url):
    """Two workers that both receive everything (no shared group), then the whole stream published again."""
    s = _settings(tmp_path, broker, database_url, share_group="")
    service = FleetService(s).prepare()
    workers = [IngestWorker(s, Store(service.engine, service.samples), i).start() for i in range(2)]
    try:
        publisher = simulate.Publisher("127.0.0.1", broker.port)
        stream = list(simulate.part_stream(CELLS[:3], 40))
        publisher.publish_all((t, p) for t, p, _ in stream)
        publisher.reset()
        publisher.publish_all((t, p) for t, p, _ in stream)  # a QoS 1 redelivery of every record
        _wait(lambda: sum(w.stats.stored + w.stats.duplicates for w in workers) == 4 * 120, 60, "4 copies seen")
        assert _count(service.engine) == 120 and sum(w.stats.stored for w in workers) == 120
        assert sorted(_stored_ids(service.engine)) == sorted(key for _, _, key in stream)
        with service.engine.connect() as conn:
            assert conn.execute(select(func.sum(models.Stream.duplicates))).scalar_one() == 360
        publisher.close()
    finally:
        for w in workers:
            w.stop()
        service.stop()


def _worker_process(tmp_path, broker, postgres_url, name: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "QC_FLEET_DATABASE_URL": postgres_url,
        "QC_FLEET_BROKER_URL": broker.url,
        "QC_FLEET_CLIENT_ID": name,
        "QC_FLEET_DATA_DIR": str(tmp_path / "fleet"),
        "QC_FLEET_BOOTSTRAP_TOKENS": "false",
        "QC_FLEET_BATCH_SIZE": "200",
        "QC_FLEET_SHARE_GROUP": "qc-fleet",  # two processes, one group
    }
    log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "qc_cloud.cli", "serve", "--no-api", "--log-level", "WARNING"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow  # worker processes start in ~5 s each on a loaded machine: ~50 s in all
def test_sigkill_of_ingest_workers_during_a_stream_loses_and_doubles_nothing(tmp_path, broker, postgres_url):
    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    names = ["fleet-a", "fleet-b"]
    procs = {n: _worker_process(tmp_path, broker, postgres_url, n) for n in names}
    # Both sessions must exist (subscribed once) before the stream: the broker queues only for known sessions.
    _wait(lambda: all("ingesting" in (tmp_path / f"{n}.log").read_text() for n in names), 60, "both workers")
    stream = list(simulate.part_stream(CELLS, STREAM_RECORDS // len(CELLS)))
    kills = 0
    done = threading.Event()

    def killer():
        nonlocal kills
        i = 0
        while not done.wait(1.5):
            name = names[i % 2]
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait()
            kills += 1
            procs[name] = _worker_process(tmp_path, broker, postgres_url, name)
            i += 1

    thread = threading.Thread(target=killer)
    publisher = simulate.Publisher("127.0.0.1", broker.port)
    try:
        thread.start()
        publisher.publish_all(((t, p) for t, p, _ in stream), rate=STREAM_RECORDS / 5)
        _wait(lambda: kills >= 2, 60, "two SIGKILLs")
        done.set()
        thread.join()
        _wait(lambda: _count(engine) >= len(stream), 120, f"{len(stream)} parts")
        time.sleep(1.0)
        ids = _stored_ids(engine)
        assert len(ids) == len(set(ids)) == len(stream), "0 lost, 0 stored twice"
        assert set(ids) == {key for _, _, key in stream}
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(models.Gap.__table__)).scalar_one() == 0
        assert kills >= 2
        print(f"\n{len(stream)} records, {kills} SIGKILLs: 0 lost, 0 stored twice")
    finally:
        done.set()
        publisher.close()
        for p in procs.values():
            p.terminate()
            p.wait(10)
        engine.dispose()


@pytest.mark.slow  # waits out a PostgreSQL stop and start: 20-30 s on a loaded machine
def test_postgres_restart_mid_stream_loses_nothing(tmp_path, broker, postgres_server, postgres_url):
    service = FleetService(_settings(tmp_path, broker, postgres_url)).start()
    publisher = simulate.Publisher("127.0.0.1", broker.port)
    try:
        stream = list(simulate.part_stream(CELLS, STREAM_RECORDS // len(CELLS)))
        half = len(stream) // 2
        publisher.publish_all((t, p) for t, p, _ in stream[:half])
        _wait(lambda: _count(service.engine) > 0, 30, "the first parts")
        postgres_server.stop("fast")
        publisher.reset()
        publisher.publish_all((t, p) for t, p, _ in stream[half:])
        _wait(lambda: service.workers[0].stats.retries > 0, 30, "a failed batch")
        postgres_server.start()
        _wait(lambda: _count(service.engine) >= len(stream), 120, "every part after the restart")
        ids = _stored_ids(service.engine)
        assert len(ids) == len(set(ids)) == len(stream)
    finally:
        publisher.close()
        service.stop()


def test_hostile_payloads_are_quarantined_while_the_service_stays_up(tmp_path, broker, database_url):
    service = FleetService(_settings(tmp_path, broker, database_url)).start()
    publisher = simulate.Publisher("127.0.0.1", broker.port)
    try:
        hostile = simulate.hostile_payloads(HOSTILE, CELLS)
        valid = list(simulate.part_stream(CELLS, HOSTILE // len(CELLS) + 1))[:HOSTILE]
        mixed = [m for pair in zip(valid, hostile, strict=True) for m in pair]
        publisher.publish_all((t, p) for t, p, _ in mixed)
        _wait(
            lambda: _count(service.engine, models.Quarantine) >= HOSTILE and _count(service.engine) >= HOSTILE,
            120,
            "every payload handled",
        )
        assert (_count(service.engine, models.Quarantine), _count(service.engine)) == (HOSTILE, HOSTILE)
        with service.engine.connect() as conn:
            reasons = [r for (r,) in conn.execute(select(models.Quarantine.reason))]
        assert all(reasons) and any("published on the topic of" in r for r in reasons)
        assert all(w.stats.connected for w in service.workers) and service.workers[0]._thread.is_alive()
    finally:
        publisher.close()
        service.stop()
