"""The fleet database on SQLite and a real PostgreSQL: migrations, exactly-once storage, gaps, quarantine."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest

pytest.importorskip("sqlalchemy", reason="the fleet service needs requirements/fleet.txt")

from sqlalchemy import func, inspect, select, text

from qc_cloud.fleet import db, models, rules, simulate
from qc_cloud.fleet.samples import SampleStore
from qc_cloud.fleet.store import Message, Store
from qc_contract import records

CELLS = simulate.cell_names(3)


@pytest.fixture
def engine(database_url):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def _store(engine, tmp_path) -> Store:
    return Store(engine, SampleStore(tmp_path / "samples"))


def _count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table.__table__)).scalar_one()


def _parts(cells, seqs, epoch="0badcafe"):
    return [Message(f"qc/{c}/part", records.encode(simulate.part_record(c, epoch, s))) for s in seqs for c in cells]


def test_migrations_upgrade_and_downgrade(database_url):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert set(models.Base.metadata.tables) <= tables
    if db.is_postgres(engine):
        with engine.connect() as conn:
            kind = conn.execute(text("SELECT relkind FROM pg_class WHERE relname = 'parts'")).scalar_one()
        assert kind == "p", "parts is partitioned on PostgreSQL"
    db.downgrade(engine, "base")
    assert db.current_revision(engine) is None
    assert not set(models.Base.metadata.tables) & set(inspect(engine).get_table_names())
    db.upgrade(engine)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_each_record_is_stored_once_and_redeliveries_are_counted(engine, tmp_path):
    store = _store(engine, tmp_path)
    first = store.write(_parts(CELLS, range(1, 11)) + _parts(CELLS[:1], [3]))  # a duplicate in the batch
    assert (first.stored, first.duplicates) == (30, 1)
    again = store.write(_parts(CELLS, range(5, 13)))  # redelivery of 5..10, new 11..12
    assert (again.stored, again.duplicates) == (6, 18)
    assert _count(engine, models.Part) == 36
    with engine.connect() as conn:
        streams = conn.execute(select(models.Stream.records, models.Stream.duplicates, models.Stream.max_seq)).all()
        parts_in_rollups = conn.execute(select(func.sum(models.PartRollup.parts))).scalar_one()
    assert sorted(streams) == [(12, 6, 12), (12, 6, 12), (12, 7, 12)]
    assert parts_in_rollups == 36, "the rollups count each part once"


def test_two_writers_racing_on_the_same_records_store_each_once(engine, tmp_path):
    """Two workers receiving the same messages (plain subscriptions, or a redelivery racing the first copy)."""
    messages = _parts(CELLS, range(1, 201))
    stores = [_store(engine, tmp_path), _store(engine, tmp_path)]
    results, errors = [], []

    def run(store, batch):
        try:
            for i in range(0, len(batch), 50):
                results.append(store.write(batch[i : i + 50]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(s, m)) for s, m in zip(stores, (messages, messages[::-1]), strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sum(r.stored for r in results) == 600 and sum(r.duplicates for r in results) == 600
    assert _count(engine, models.Part) == 600
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(models.PartRollup.parts))).scalar_one() == 600
        assert conn.execute(select(func.count()).select_from(models.Gap.__table__)).scalar_one() == 0


def test_gaps_are_tracked_per_stream_and_close_when_filled(engine, tmp_path):
    store = _store(engine, tmp_path)
    store.write(_parts(CELLS[:1], [1, 2, 6, 7, 10]))
    with engine.connect() as conn:
        open_ = conn.execute(select(models.Gap.first_seq, models.Gap.last_seq).order_by(models.Gap.first_seq)).all()
        assert [tuple(g) for g in open_] == [(3, 5), (8, 9)]
        assert conn.execute(select(models.Stream.missing)).scalar_one() == 5
    store.write(_parts(CELLS[:1], [4, 8, 9]))
    with engine.connect() as conn:
        open_ = conn.execute(select(models.Gap.first_seq, models.Gap.last_seq).order_by(models.Gap.first_seq)).all()
        assert [tuple(g) for g in open_] == [(3, 3), (5, 5)]
        assert conn.execute(select(models.Stream.missing)).scalar_one() == 2


def test_hostile_payloads_are_quarantined_and_the_valid_ones_around_them_stored(engine, tmp_path):
    store = _store(engine, tmp_path)
    hostile = simulate.hostile_payloads(48, CELLS)
    valid = _parts(CELLS, range(1, 17))
    mixed = []
    for i, (topic, payload, _) in enumerate(hostile):
        mixed += [valid[i], Message(topic, payload)]
    result = store.write(mixed)
    assert (result.stored, result.quarantined) == (48, 48)
    with engine.connect() as conn:
        rows = conn.execute(select(models.Quarantine.reason, models.Quarantine.size, models.Quarantine.payload)).all()
    assert len(rows) == 48 and all(reason for reason, _, _ in rows)
    assert max(len(payload) for _, _, payload in rows) <= 64 * 1024 < max(size for _, size, _ in rows)
    assert _count(engine, models.Part) == 48


def test_presence_model_and_alerts_update_the_cell(engine, tmp_path):
    store = _store(engine, tmp_path)
    cell = CELLS[0]
    online = records.status(cell=cell, state="online", stamp_ns=10**18, details={"outbox_depth": 0})
    will = records.status(cell=cell, state="offline", stamp_ns=0, reason="connection_lost")
    model = records.envelope(
        cell,
        "0badcafe",
        "model_status",
        1,
        records.model_state(
            stamp_ns=10**18, version="v7", sha256="a" * 64, backend="onnxruntime", precision="fp32", state=2, message=""
        ),
    )
    store.write(
        [
            Message(f"qc/{cell}/status", records.encode(online)),
            Message(f"qc/{cell}/model/status", records.encode(model)),
            Message(f"qc/{cell}/alert", records.encode(simulate.alert_record(cell, "0badcafe", 1))),
        ]
    )
    store.write([Message(f"qc/{cell}/status", records.encode(will))])
    with engine.connect() as conn:
        row = conn.execute(select(models.Cell).where(models.Cell.name == cell)).one()._mapping
    assert (row["presence"], row["presence_reason"], row["model_version"], row["model_state"]) == (
        "offline",
        "connection_lost",
        "v7",
        "ACTIVE",
    )
    assert row["last_alert_id"] is not None


def test_postgres_partitions_are_created_on_demand_and_dropped_by_retention(postgres_url, tmp_path):
    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    store = Store(engine, SampleStore(tmp_path), retention_days=30)
    now = rules.utcnow()
    store.write([Message(f"qc/{CELLS[0]}/part", records.encode(simulate.part_record(CELLS[0], "0badcafe", 1)))])
    ancient = simulate.part_record(CELLS[0], "0badcafe", 2, decision_ns=946_684_800 * 10**9)  # 2000-01-01
    store.write([Message(f"qc/{CELLS[0]}/part", records.encode(ancient))])
    with engine.connect() as conn:
        names = db.existing_partitions(conn)
        assert db.partition_name(now.date()) in names
        assert conn.execute(text("SELECT count(*) FROM parts_default")).scalar_one() == 1, "outside the window"
    dropped = db.apply_retention(engine, now + timedelta(days=40), retention_days=30)
    assert dropped[db.partition_name(now.date())] == 1 and dropped["parts_default"] == 1
    assert _count(engine, models.Part) == 0
    engine.dispose()


def test_a_partition_created_later_takes_its_rows_from_the_default_partition(postgres_url, tmp_path):
    engine = db.make_engine(postgres_url)
    db.upgrade(engine)
    day = datetime(2030, 6, 1, 12)
    ns = int((day - datetime(1970, 1, 1)).total_seconds()) * 10**9
    record = simulate.part_record(CELLS[0], "0badcafe", 1, decision_ns=ns)
    Store(engine, SampleStore(tmp_path)).write([Message(f"qc/{CELLS[0]}/part", records.encode(record))])
    db.ensure_partitions(engine, {day.date()})
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM parts_default")).scalar_one() == 0
        assert conn.execute(text(f"SELECT count(*) FROM {db.partition_name(day.date())}")).scalar_one() == 1
    engine.dispose()


def _sample(cell: str, seq: int, jpeg: bytes, capture_ns: int, heatmap: bytes | None = None) -> Message:
    import base64

    body = records.image_record(
        part_id=f"p-{seq}",
        verdict=2,
        defect_probability=0.9,
        reasons=["visual_defect"],
        model_version="m-1",
        capture_ns=capture_ns,
        width=8,
        height=8,
        jpeg_b64=base64.b64encode(jpeg).decode(),
        heatmap_b64=base64.b64encode(heatmap).decode() if heatmap is not None else None,
    )
    return Message(f"qc/{cell}/sample", records.encode(records.envelope(cell, "0badcafe", "sample", seq, body)))


def test_retention_deletes_sample_files_no_row_references_any_more(engine, tmp_path):
    """Content-addressed files: an expired row's file goes, unless a younger row holds the same image or the file
    was touched within the grace period (an ingest batch may be about to reference it)."""
    import hashlib
    import os

    store = _store(engine, tmp_path)
    now = rules.utcnow()
    old_ns = int((now - timedelta(days=40) - datetime(1970, 1, 1)).total_seconds()) * 10**9
    new_ns = int((now - datetime(1970, 1, 1)).total_seconds()) * 10**9
    only_old, shared, only_new, touched, old_heatmap, new_heatmap = (
        b"\xff\xd8\xff\xe0" + bytes([i]) * 64 for i in range(6)
    )
    cell = CELLS[0]
    result = store.write(
        [
            _sample(cell, 1, only_old, old_ns, heatmap=old_heatmap),
            _sample(cell, 2, shared, old_ns),
            _sample(cell, 3, shared, new_ns),
            _sample(cell, 4, only_new, new_ns, heatmap=new_heatmap),
            _sample(cell, 5, touched, old_ns),
        ]
    )
    assert result.stored == 5
    path = {
        name: store.samples.path(hashlib.sha256(data).hexdigest())
        for name, data in (
            ("only_old", only_old),
            ("shared", shared),
            ("only_new", only_new),
            ("touched", touched),
            ("old_heatmap", old_heatmap),
            ("new_heatmap", new_heatmap),
        )
    }
    an_hour_ago = now.timestamp() - 7200
    for name in ("only_old", "shared", "only_new", "old_heatmap", "new_heatmap"):
        os.utime(path[name], (an_hour_ago, an_hour_ago))
    dropped = db.apply_retention(engine, now, retention_days=30, samples=store.samples, grace_s=3600)
    assert dropped["samples"] == 3 and _count(engine, models.Sample) == 2
    assert dropped["sample_files"] == 2, dropped
    assert not path["only_old"].exists(), "no row references it: deleted"
    assert not path["old_heatmap"].exists(), "an expired row's heatmap file goes with it"
    assert path["new_heatmap"].exists(), "a heatmap a young row references stays"
    assert path["shared"].exists() and path["only_new"].exists(), "still referenced by a younger row"
    assert path["touched"].exists(), "unreferenced but written within the grace period: kept for now"
    # The daily sweep offers every file on disk: the one spared above once its grace is over, an orphan no row
    # ever referenced (a crash before its batch committed) and a writer's dead partial file; referenced ones stay.
    orphan = store.samples.put(hashlib.sha256(b"orphan").hexdigest(), b"orphan")
    partial = orphan.parent / ".tmp-dead"
    partial.write_bytes(b"half")
    for stale in (path["touched"], orphan, partial):
        os.utime(stale, (an_hour_ago, an_hour_ago))
    dropped = db.apply_retention(engine, now, retention_days=30, samples=store.samples, sweep_files=True)
    assert (dropped["sample_files"], dropped["sample_temporaries"]) == (2, 1), dropped
    assert not path["touched"].exists() and not orphan.exists() and not partial.exists()
    assert all(path[name].exists() for name in ("shared", "only_new", "new_heatmap")), "still referenced"
    # a record arriving again with a deleted image writes the file again
    store.samples.put(hashlib.sha256(only_old).hexdigest(), only_old)
    assert path["only_old"].read_bytes() == only_old


def test_reconcile_findings_are_stored_once_and_join_the_parts_story(engine, tmp_path):
    """The edge reconciler's records (issue 17): one row per (cell, id), a redelivery counted, OVERDUE findings
    queryable for the fleet's check."""
    store = _store(engine, tmp_path)
    cell = CELLS[0]
    now_ns = int((rules.utcnow() - datetime(1970, 1, 1)).total_seconds()) * 10**9

    def finding(seq: int, part_id: str, status: int, outcome: int) -> Message:
        body = records.reconcile(
            part_id=part_id, verdict=2, has_verdict=True, lane="reject", status=status, outcome=outcome,
            terminal_events=0 if outcome < 0 else 1, capture_ns=now_ns, deadline_ns=now_ns + 2 * 10**9,
        )  # fmt: skip
        return Message(
            f"qc/{cell}/reconcile", records.encode(records.envelope(cell, "0badcafe", "reconcile", seq, body))
        )

    resolved, overdue = finding(1, "p-1", 0, 0), finding(2, "p-2", 1, -1)
    assert store.write([resolved, overdue]).stored == 2
    assert store.write([overdue]).stored == 0, "a redelivered finding is counted, not stored twice"
    assert _count(engine, models.ReconcileFinding) == 2
    with engine.connect() as conn:
        rows = conn.execute(select(models.ReconcileFinding.__table__)).mappings().all()
        assert {(r["part_id"], r["status"], r["outcome"]) for r in rows} == {
            ("p-1", "RESOLVED", "DONE"),
            ("p-2", "OVERDUE", None),
        }


def test_a_record_the_store_cannot_file_is_quarantined_and_its_batch_neighbours_stored(engine, tmp_path, monkeypatch):
    """A store bug on one record (it passed the rules) must not stall ingest: the worker would retry the batch
    forever. The batch is written one by one, the record at fault quarantined with the reason."""
    from qc_cloud.fleet import store as store_module

    store = _store(engine, tmp_path)
    cell = CELLS[0]
    now_ns = int((rules.utcnow() - datetime(1970, 1, 1)).total_seconds()) * 10**9
    row = store_module._row

    def faulty_row(kind, record, received):
        if record.body.get("part_id") == "p-bad":
            raise KeyError("a column the store does not know")
        return row(kind, record, received)

    monkeypatch.setattr(store_module, "_row", faulty_row)
    messages = [
        _sample(cell, seq, b"\xff\xd8\xff\xe0" + bytes([seq]) * 16, now_ns) for seq in (1, 2, 3)
    ]  # part ids p-1, p-2, p-3
    bad_body = records.image_record(
        part_id="p-bad", verdict=2, defect_probability=0.9, reasons=["visual_defect"], model_version="m-1",
        capture_ns=now_ns, width=8, height=8, jpeg_b64="/9j/4A==",
    )  # fmt: skip
    messages.insert(
        1, Message(f"qc/{cell}/sample", records.encode(records.envelope(cell, "0badcafe", "sample", 9, bad_body)))
    )
    result = store.write(messages)
    assert (result.stored, result.quarantined) == (3, 1), result
    assert any("store error: KeyError" in reason for reason in result.reasons), result.reasons
    assert _count(engine, models.Sample) == 3 and _count(engine, models.Quarantine) == 1


def _verification(cell: str, request_id: str, part_id: str, *, answered_ns: int, verdict="DEFECTIVE", **kw) -> Message:
    body = records.verification(
        cell=cell, request_id=request_id, part_id=part_id, verifier=kw.get("verifier", "w-1"),
        outcome=kw.get("outcome", "scored"), reason=kw.get("reason", ""), verdict=verdict,
        defect_probability=0.9 if verdict else None, local_verdict=kw.get("local_verdict", "REINSPECT"),
        local_defect_probability=0.6, edge_model_version="m-1", model_version="cloud-1", capture_time=None,
        deadline=None, received_ns=answered_ns - 5 * 10**6, answered_ns=answered_ns, queue_ms=1.0, service_ms=4.0,
        batch_size=1, image_bytes=1234,
    )  # fmt: skip
    return Message(f"qc/{cell}/verify/verification", records.encode(body))


def test_verifications_are_stored_once_per_request_and_join_the_parts_story(engine, tmp_path):
    """The cloud verifier's records (issue 21): no epoch/seq, keyed by (cell, request_id); a redelivery or a
    second answer to a redelivered request is counted, not stored; no stream or gap is made for them; the
    part's story carries the cloud's answer; retention drops old ones."""
    from qc_cloud.fleet import queries

    store = _store(engine, tmp_path)
    cell = CELLS[0]
    part = simulate.part_record(cell, "0badcafe", 1)
    assert store.write([Message(f"qc/{cell}/part", records.encode(part))]).stored == 1
    now_ns = int((rules.utcnow() - datetime(1970, 1, 1)).total_seconds()) * 10**9
    request_id = records.record_id("0badcafe", "verify_request", 1)  # the cell's request record id
    first = _verification(cell, request_id, part["part_id"], answered_ns=now_ns)
    again = _verification(cell, request_id, part["part_id"], answered_ns=now_ns + 10**6, verifier="w-2")
    other_cell = _verification(CELLS[1], request_id, part["part_id"], answered_ns=now_ns)
    result = store.write([first, first, other_cell])
    assert (result.stored, result.duplicates, result.quarantined) == (2, 1, 0), result.reasons
    result = store.write([again])  # the same request answered again (redelivered to another worker)
    assert (result.stored, result.duplicates) == (0, 1)
    assert _count(engine, models.Verification) == 2
    with engine.connect() as conn:
        kinds = conn.execute(select(models.Stream.kind)).scalars().all()
        assert "verification" not in kinds, "a verification is not a cell stream: no seq, no gaps"
        story = queries.part_story(conn, cell, part["part_id"])
    (v,) = story["verifications"]
    assert (v["request_id"], v["verifier"], v["verdict"], v["local_verdict"]) == (
        request_id,
        "w-1",
        "DEFECTIVE",
        "REINSPECT",
    )
    # a refusal of a request the verifier could not read (no request id) is stored once per record
    unreadable = _verification(cell, "", "", answered_ns=now_ns, verdict=None, outcome="refused", reason="bad_json")
    assert store.write([unreadable, unreadable]).stored == 1
    old = _verification(cell, "0badcafe-verify_request-9", "p-9", answered_ns=now_ns - 40 * 86400 * 10**9)
    assert store.write([old]).stored == 1
    dropped = db.apply_retention(engine, rules.utcnow(), retention_days=30, samples=store.samples)
    assert dropped["verifications"] == 1 and _count(engine, models.Verification) == 3


def test_a_verification_whose_cell_disagrees_with_its_topic_is_quarantined(engine, tmp_path):
    store = _store(engine, tmp_path)
    m = _verification(CELLS[0], "0badcafe-verify_request-1", "p-1", answered_ns=10**18)
    result = store.write([Message(f"qc/{CELLS[1]}/verify/verification", m.payload)])
    assert result.quarantined == 1 and "published on the topic of" in result.reasons[0]
