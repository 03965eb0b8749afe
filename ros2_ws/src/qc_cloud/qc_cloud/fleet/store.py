"""Writing one batch of MQTT messages in one transaction: quarantine what the rules refuse, store each record
once per (cell, id), update hourly rollups, stream counters and gaps, cell presence and state.

The caller (worker.py) acknowledges the batch's messages to the broker only after write() returned: a crash
or a database outage before that makes the broker redeliver them, and record_ids turns the redelivery into a
counted duplicate. A TransientError means: nothing was committed, retry the same batch later.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, case, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from qc_cloud.fleet import db, drift, drift_store, gaps, models, rollups, rules
from qc_cloud.fleet.samples import SampleStore

log = logging.getLogger("qc_fleet.store")


class TransientError(RuntimeError):
    """The database could not be reached or the transaction lost a race: nothing was committed, retry."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    received_at: datetime | None = None


@dataclass
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    ignored: int = 0
    status: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.quarantined += other.quarantined
        self.ignored += other.ignored
        self.status += other.status
        self.reasons += other.reasons


def _t(text: str | None) -> datetime | None:
    return rules.parse_time(text)


def _row(kind: str, r: rules.Record, received: datetime) -> dict[str, Any]:
    b = r.body
    base = {"cell": r.cell, "record_id": r.id, "time": r.time or received}
    if kind == "part":
        return dict(zip(PART_COLUMNS, _part_values(r, received), strict=True))
    if kind == "kpi":
        return {
            **base,
            "window_s": b["window_s"],
            "parts": b["parts"],
            "verdicts": b["verdicts"],
            "yield_ratio": b["yield_ratio"],
            "throughput_pps": b["throughput_pps"],
            "latency_ms": b["latency_ms"],
            "reasons": b["reasons"],
            "total_parts": b["total_parts"],
            "distributions": b.get("distributions"),
        }
    if kind == "alert":
        return {
            **base,
            "severity": b["severity"],
            "source": b["source"],
            "code": b["code"],
            "message": b["message"][:4096],
            "part_id": b["part_id"],
        }
    if kind == "reject":
        return {
            **base,
            "part_id": b["part_id"],
            "verdict": b["verdict"],
            "outcome": b["outcome"],
            "method": b["method"],
            "lane": b["lane"],
            "planned_time": _t(b["planned_time"]),
            "actual_time": _t(b["actual_time"]),
            "lateness_ms": b["lateness_ms"],
            "message": b["message"][:4096],
        }
    if kind == "process":
        return {
            **base,
            **{
                k: b[k]
                for k in (
                    "temperature_c",
                    "pressure_pa",
                    "vibration_rms",
                    "anomaly_score",
                    "flags",
                    "out_of_spec",
                    "stale",
                )
            },
        }
    if kind == "model_status":
        return {
            **base,
            "event": b["event"],
            "active_version": b["active_version"],
            "message": b["message"][:4096],
            **{k: b.get(k) for k in ("state", "version", "reason", "sha256", "backend", "precision")},
            "defect_types": b.get("defect_types"),
            **{k: b.get(k) for k in ("role", "shadow_version", "shadow_counts")},
        }
    if kind == "shadow_score":
        return {
            **base,
            **{k: b[k] for k in ("part_id", "shadow_version", "live_version", "defect_probability")},
            "latency_ms": b.get("latency_ms"),
        }
    if kind in rules.IMAGE_TYPES:
        return {
            **base,
            "kind": kind,
            "part_id": b["part_id"],
            "verdict": b["verdict"],
            "defect_probability": b["defect_probability"],
            "reasons": b["reasons"],
            "model_version": b["model_version"],
            "width": b["width"],
            "height": b["height"],
            "sha256": r.extra["sha256"],
            "size": len(r.image or b""),
            "heatmap_sha256": r.extra.get("heatmap_sha256"),
            "random_sample": bool(b.get("random_sample", False)),
        }
    if kind == "reconcile":
        return {
            **base,
            "time": _t(b["deadline_time"]) or _t(b["capture_time"]) or received,
            **{k: b[k] for k in ("part_id", "verdict", "has_verdict", "lane", "status", "outcome", "terminal_events")},
        }
    if kind == "verification":
        return {
            **base,
            **{
                k: b[k]
                for k in ("request_id", "part_id", "verifier", "outcome", "reason", "verdict", "defect_probability")
            },
            **{
                k: b.get(k)
                for k in ("local_verdict", "local_defect_probability", "queue_ms", "service_ms", "batch_size")
            },
            "edge_model_version": b.get("edge_model_version", ""),
            "model_version": b["model_version"],
            "received_time": _t(b["received_time"]),
            "deadline": _t(b.get("deadline")),
            "image_bytes": b.get("image_bytes", 0),
        }
    if kind == "verify":
        return {
            **base,
            "time": received,
            "part_id": b["part_id"],
            "request_id": b["request_id"],
            "local_verdict": b["local_verdict"],
            "cloud_verdict": b["cloud_verdict"],
            "outcome": b["outcome"],
            "rtt_ms": b["rtt_ms"],
        }
    raise ValueError(kind)


JSON_COLUMNS = ("reasons", "simulated", "defect_types", "shadow_counts")
PART_COLUMNS = (
    "cell",
    "record_id",
    "time",
    "epoch",
    "seq",
    "part_id",
    "verdict",
    "reasons",
    "defect_probability",
    "process_anomaly_score",
    "process_flags",
    "model_version",
    "encoder_count",
    "capture_time",
    "decision_time",
    "capture_to_decision_ms",
    "simulated",
    "received_at",
)
_PART_TIME, _PART_VERDICT, _PART_LATENCY = (
    PART_COLUMNS.index(c) for c in ("time", "verdict", "capture_to_decision_ms")
)


def _part_values(r: rules.Record, received: datetime) -> tuple:
    """A part's column values in PART_COLUMNS order (the hot path: one tuple, no dict per row)."""
    b, x = r.body, r.extra
    return (
        r.cell,
        b["id"],
        r.time or received,
        b["epoch"],
        b["seq"],
        b["part_id"],
        b["verdict"],
        b["reasons"],
        b["defect_probability"],
        b["process_anomaly_score"],
        b["process_flags"],
        b["model_version"],
        b["encoder_count"],
        x["capture_time"],
        x["decision_time"],
        b["capture_to_decision_ms"],
        b.get("simulated"),
        received,
    )


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


TABLES = {
    "part": models.Part,
    "kpi": models.Kpi,
    "alert": models.Alert,
    "reject": models.RejectEvent,
    "process": models.ProcessState,
    "model_status": models.ModelStatus,
    "sample": models.Sample,
    "verify_request": models.Sample,
    "verify": models.VerifyResult,
    "reconcile": models.ReconcileFinding,
    "verification": models.Verification,
    "shadow_score": models.ShadowScore,
}


CELL_UPDATE_COLUMNS = (
    "presence",
    "presence_reason",
    "presence_time",
    "presence_details",
    "model_version",
    "model_state",
    "throughput_pps",
    "yield_ratio",
    "kpi_time",
    "last_alert_id",
)

_CELL_TYPES = {
    "presence": "varchar",
    "presence_reason": "varchar",
    "presence_time": "timestamp",
    "presence_details": "json",
    "model_version": "varchar",
    "model_state": "varchar",
    "throughput_pps": "float8",
    "yield_ratio": "float8",
    "kpi_time": "timestamp",
    "last_alert_id": "bigint",
}
_PG_CELLS = (
    f"INSERT INTO cells (name, first_seen, last_seen, {', '.join(CELL_UPDATE_COLUMNS)}) "
    f"SELECT n, %(now)s, %(now)s, {', '.join(f'v{i}' for i in range(len(CELL_UPDATE_COLUMNS)))} FROM unnest("
    "%(name)s::varchar[], "
    + ", ".join(f"%({c})s::{_CELL_TYPES[c]}[]" for c in CELL_UPDATE_COLUMNS)
    + f") AS u(n, {', '.join(f'v{i}' for i in range(len(CELL_UPDATE_COLUMNS)))}) "
    "ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen, "
    + ", ".join(
        f"{c} = CASE WHEN excluded.presence IS NOT NULL THEN excluded.{c} ELSE cells.{c} END"
        if c == "presence_details"
        else f"{c} = COALESCE(excluded.{c}, cells.{c})"
        for c in CELL_UPDATE_COLUMNS
    )
)
_ROLLUP_COLUMNS = (
    "cell",
    "hour",
    "parts",
    "normal",
    "reinspect",
    "defective",
    "not_inspected",
    "latency_sum_ms",
    "latency_n",
    "latency_max_ms",
)
_PG_ROLLUPS = (
    f"INSERT INTO part_rollups ({', '.join(_ROLLUP_COLUMNS)}) SELECT * FROM unnest(%(cell)s::varchar[], "
    "%(hour)s::timestamp[], %(parts)s::bigint[], %(normal)s::bigint[], %(reinspect)s::bigint[], "
    "%(defective)s::bigint[], %(not_inspected)s::bigint[], %(latency_sum_ms)s::float8[], %(latency_n)s::bigint[], "
    "%(latency_max_ms)s::float8[]) ON CONFLICT (cell, hour) DO UPDATE SET "
    + ", ".join(f"{c} = part_rollups.{c} + excluded.{c}" for c in _ROLLUP_COLUMNS[2:-1])
    + ", latency_max_ms = greatest(part_rollups.latency_max_ms, excluded.latency_max_ms)"
)


class Store:
    def __init__(
        self,
        engine: Engine,
        samples: SampleStore,
        quarantine_max_bytes: int = 64 * 1024,
        retention_days: int = 365,
        drift_settings: drift.DriftSettings | None = None,
    ) -> None:
        self.engine = engine
        self.drift = drift_settings or drift.DriftSettings()
        self.samples = samples
        self.quarantine_max_bytes = quarantine_max_bytes
        self.retention_days = retention_days
        self.postgres = db.is_postgres(engine)
        self._insert = postgresql.insert if self.postgres else sqlite.insert
        self._partitions: set[str] = set()

    # ---- the batch -------------------------------------------------------------------------------------
    def write(self, messages: list[Message]) -> BatchResult:
        now = rules.utcnow()
        result = BatchResult()
        accepted: list[tuple[rules.Record, datetime]] = []
        refused: list[tuple[Message, str, datetime]] = []
        for m in messages:
            received = m.received_at or now
            try:
                outcome = rules.classify(m.topic, m.payload)
            except rules.Refused as exc:
                refused.append((m, str(exc), received))
                continue
            if isinstance(outcome, rules.Ignored):
                result.ignored += 1
                continue
            accepted.append((outcome, received))
        for record, _ in accepted:
            if record.image is not None:
                self.samples.put(record.extra["sha256"], record.image)
            if record.heatmap is not None:
                self.samples.put(record.extra["heatmap_sha256"], record.heatmap)
        self._ensure_partitions([r for r, _ in accepted if r.kind == "part"], now)
        try:
            with self.engine.begin() as conn:
                self._write(conn, accepted, refused, now, result)
        except OperationalError as exc:
            raise TransientError(f"database: {str(exc.orig or exc).splitlines()[0][:300]}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated or _is_retryable(exc):
                raise TransientError(f"database: {str(exc.orig or exc).splitlines()[0][:300]}") from exc
            return self._one_by_one(messages, f"database refused: {str(exc.orig or exc).splitlines()[0][:300]}", now)
        except Exception as exc:  # a record the rules passed but the store cannot file (a bug): never stall ingest
            log.exception("batch of %d: store error", len(messages))
            return self._one_by_one(messages, f"store error: {type(exc).__name__}: {str(exc)[:300]}", now)
        return result

    def _one_by_one(self, messages: list[Message], reason: str, now: datetime) -> BatchResult:
        """A batch the store could not write for a non-transient reason: the one record at fault is quarantined
        with the reason, and the records around it are stored."""
        if len(messages) == 1:
            m = messages[0]
            with self.engine.begin() as conn:
                self._quarantine(conn, [(m, reason, m.received_at or now)])
            return BatchResult(quarantined=1, reasons=[reason])
        log.warning("batch of %d not written (%s): writing one by one", len(messages), reason)
        total = BatchResult()
        for m in messages:
            total.add(self.write([Message(m.topic, m.payload, m.received_at or now)]))
        return total

    def _write(self, conn: Connection, accepted, refused, now: datetime, result: BatchResult) -> None:
        if refused:
            self._quarantine(conn, refused)
            result.quarantined += len(refused)
            result.reasons += [reason for _, reason, _ in refused]
        statuses = [(r, t) for r, t in accepted if r.kind == "status"]
        records = [(r, t) for r, t in accepted if r.kind != "status"]
        # One copy per (cell, id) within the batch, in key order (the lock order of the unique index).
        # Duplicates of a cell stream are counted per stream (cell, kind, epoch); the cloud's own records
        # (verifications) have no stream: theirs are counted in the batch result only.
        unique: dict[tuple[str, str], tuple[rules.Record, datetime]] = {}
        dup_counts: dict[tuple[str, str, str], int] = defaultdict(int)
        unsequenced_dups = 0
        for r, t in records:
            key = (r.cell, r.id)
            if key not in unique:
                unique[key] = (r, t)
            elif r.sequenced:
                dup_counts[(r.cell, r.kind, r.body["epoch"])] += 1
            else:
                unsequenced_dups += 1
        keys = sorted(unique)
        new: set[tuple[str, str]] = set()
        if keys and self.postgres:  # one statement with array parameters: no per-row work in SQLAlchemy
            rows = conn.exec_driver_sql(
                "INSERT INTO record_ids (cell, id, kind, received_at) SELECT * FROM unnest("
                "%(c)s::varchar[], %(i)s::varchar[], %(k)s::varchar[], %(t)s::timestamp[]) "
                "ON CONFLICT DO NOTHING RETURNING cell, id",
                {
                    "c": [c for c, _ in keys],
                    "i": [i for _, i in keys],
                    "k": [unique[key][0].kind for key in keys],
                    "t": [unique[key][1] for key in keys],
                },
            )
            new = {(c, i) for c, i in rows}
        elif keys:
            stmt = self._insert(models.RecordId).on_conflict_do_nothing(index_elements=["cell", "id"])
            rows = conn.execute(
                stmt.returning(models.RecordId.cell, models.RecordId.id),
                [
                    {"cell": c, "id": i, "kind": unique[(c, i)][0].kind, "received_at": unique[(c, i)][1]}
                    for c, i in keys
                ],
            )
            new = {(c, i) for c, i in rows}
        for key in keys:
            if key not in new:
                r = unique[key][0]
                if r.sequenced:
                    dup_counts[(r.cell, r.kind, r.body["epoch"])] += 1
                else:
                    unsequenced_dups += 1
        fresh = [unique[k] for k in keys if k in new]
        result.stored += len(fresh)
        result.duplicates += sum(dup_counts.values()) + unsequenced_dups
        parts: list[tuple] = []
        by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r, t in fresh:
            if r.kind == "part":
                parts.append(_part_values(r, t))
            else:
                by_kind[r.kind].append(_row(r.kind, r, t))
        if parts:
            if self.postgres:
                self._copy_parts(conn, parts)
            else:
                rows = [dict(zip(PART_COLUMNS, p, strict=True)) for p in parts]
                conn.execute(self._insert(models.Part.__table__), rows)
        alert_ids: dict[str, int] = {}
        for kind, rows in sorted(by_kind.items()):
            table = TABLES[kind]
            if kind == "alert":
                for alert_id, cell in conn.execute(self._insert(table).returning(table.id, table.cell), rows):
                    alert_ids[cell] = max(alert_id, alert_ids.get(cell, 0))
            else:
                conn.execute(self._insert(table), rows)
        kpis = [r for r, _ in fresh if r.kind == "kpi"]
        if kpis:  # drift episodes of the cells whose KPI records carry histograms (drift_store.py)
            for cell, alert_id in drift_store.assess_cells(conn, self._insert, kpis, now, self.drift).items():
                alert_ids[cell] = max(alert_id, alert_ids.get(cell, 0))
        self._rollups(conn, parts)
        self._streams(conn, [(r, t) for r, t in fresh if r.sequenced], dup_counts, now)
        self._cells(conn, fresh, statuses, alert_ids, now)
        result.status += len(statuses)

    # ---- pieces ----------------------------------------------------------------------------------------
    def _quarantine(self, conn: Connection, refused) -> None:
        conn.execute(
            self._insert(models.Quarantine),
            [
                {
                    "received_at": t,
                    "topic": m.topic[:1024].replace("\x00", ""),
                    "reason": reason[:1024].replace("\x00", ""),
                    "size": len(m.payload),
                    "payload": m.payload[: self.quarantine_max_bytes],
                }
                for m, reason, t in refused
            ],
        )

    def _copy_parts(self, conn: Connection, parts: list[tuple]) -> None:
        """PostgreSQL: COPY the new parts (record_ids made them unique: no conflict possible) in this transaction."""
        reasons, simulated = PART_COLUMNS.index("reasons"), PART_COLUMNS.index("simulated")
        cursor = conn.connection.driver_connection.cursor()
        with cursor.copy(f"COPY parts ({', '.join(PART_COLUMNS)}) FROM STDIN") as copy:
            write = copy.write_row
            for p in parts:
                row = list(p)
                row[reasons] = _json_text(row[reasons])
                if row[simulated] is not None:
                    row[simulated] = _json_text(row[simulated])
                write(row)

    def _rollups(self, conn: Connection, parts: list[tuple]) -> None:
        increments = rollups.increments((p[0], p[_PART_TIME], p[_PART_VERDICT], p[_PART_LATENCY]) for p in parts)
        if not increments:
            return
        if self.postgres:  # one statement with array parameters
            conn.exec_driver_sql(_PG_ROLLUPS, {c: [row[c] for row in increments] for c in _ROLLUP_COLUMNS})
            return
        t = models.PartRollup.__table__
        stmt = self._insert(t)
        columns = ["parts", "normal", "reinspect", "defective", "not_inspected", "latency_sum_ms", "latency_n"]
        update_set = {c: t.c[c] + stmt.excluded[c] for c in columns}
        greatest = func.greatest if self.postgres else func.max  # SQLite's two-argument max() is a scalar
        update_set["latency_max_ms"] = greatest(t.c.latency_max_ms, stmt.excluded.latency_max_ms)
        # one statement (executemany becomes one multi-row INSERT): distinct (cell, hour) keys in key order
        conn.execute(stmt.on_conflict_do_update(index_elements=["cell", "hour"], set_=update_set), increments)

    def _streams(self, conn: Connection, fresh, dup_counts, now: datetime) -> None:
        """Stream counters and gaps of every (cell, type, epoch) in the batch in a fixed number of statements:
        one SELECT ... FOR UPDATE of the rows (in key order: the lock order), an INSERT for streams not seen
        before, one executemany UPDATE; gap rows only where a gap opens or closes."""
        seqs: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for r, _ in fresh:
            seqs[(r.cell, r.kind, r.body["epoch"])].append(r.body["seq"])
        keys = sorted(set(seqs) | set(dup_counts))
        if not keys:
            return
        streams = models.Stream.__table__
        c = streams.c
        key_columns = tuple_(c.cell, c.kind, c.epoch)

        def load(wanted: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], tuple[int, int]]:
            if self.postgres:  # array parameters: one cached plan whatever the number of streams
                rows = conn.exec_driver_sql(
                    "SELECT cell, kind, epoch, max_seq, missing FROM streams WHERE (cell, kind, epoch) IN "
                    "(SELECT * FROM unnest(%(c)s::varchar[], %(k)s::varchar[], %(e)s::varchar[])) "
                    "ORDER BY cell, kind, epoch FOR UPDATE",
                    {"c": [w[0] for w in wanted], "k": [w[1] for w in wanted], "e": [w[2] for w in wanted]},
                )
                return {(cell, kind, epoch): (m, g) for cell, kind, epoch, m, g in rows}
            query = (
                select(c.cell, c.kind, c.epoch, c.max_seq, c.missing)
                .where(key_columns.in_(wanted))
                .order_by(c.cell, c.kind, c.epoch)
            )
            rows = conn.execute(query.with_for_update() if self.postgres else query)
            return {(cell, kind, epoch): (m, g) for cell, kind, epoch, m, g in rows}

        state = load(keys)
        unseen = [k for k in keys if k not in state]
        if unseen:
            conn.execute(
                self._insert(streams).on_conflict_do_nothing(index_elements=["cell", "kind", "epoch"]),
                [
                    {
                        "cell": cell,
                        "kind": kind,
                        "epoch": epoch,
                        "max_seq": 0,
                        "records": 0,
                        "duplicates": 0,
                        "missing": 0,
                        "last_received": now,
                    }
                    for cell, kind, epoch in unseen
                ],
            )
            state.update(load(unseen))
        g = models.Gap.__table__
        updates = []
        for key in keys:
            cell, kind, epoch = key
            max_seq, missing = state[key]
            new_seqs = seqs.get(key, [])
            new_max = max_seq
            if new_seqs:
                old: list[tuple[int, int]] = []
                if min(new_seqs) <= max_seq and missing:  # a late record may close a gap: load the stream's gaps
                    gwhere = and_(g.c.cell == cell, g.c.kind == kind, g.c.epoch == epoch)
                    old = [(a, b) for a, b in conn.execute(select(g.c.first_seq, g.c.last_seq).where(gwhere))]
                new_max, new_gaps = gaps.apply(max_seq, old, new_seqs)
                if new_gaps != sorted(old):
                    changed_old = set(old) - set(new_gaps)
                    added = [x for x in new_gaps if x not in set(old)]
                    for a, b in changed_old:
                        conn.execute(g.delete().where(and_(gwhere, g.c.first_seq == a, g.c.last_seq == b)))
                    if added:
                        conn.execute(
                            g.insert(),
                            [
                                {
                                    "cell": cell,
                                    "kind": kind,
                                    "epoch": epoch,
                                    "first_seq": a,
                                    "last_seq": b,
                                    "opened_at": now,
                                }
                                for a, b in added
                            ],
                        )
                    # old holds every gap of the stream when loaded; else only new ones opened
                    missing = gaps.missing(new_gaps) if old else missing + gaps.missing(added)
            updates.append(
                {
                    "k_cell": cell,
                    "k_kind": kind,
                    "k_epoch": epoch,
                    "v_max": new_max,
                    "v_missing": missing,
                    "v_records": len(new_seqs),
                    "v_duplicates": dup_counts.get(key, 0),
                    "v_now": now,
                }
            )
        if self.postgres:  # one statement with array parameters (an executemany would be one per stream)
            conn.exec_driver_sql(
                "UPDATE streams s SET max_seq = v.max_seq, missing = v.missing, records = s.records + v.records, "
                "duplicates = s.duplicates + v.duplicates, last_received = %(now)s FROM unnest(%(c)s::varchar[], "
                "%(k)s::varchar[], %(e)s::varchar[], %(m)s::bigint[], %(g)s::bigint[], %(r)s::bigint[], "
                "%(d)s::bigint[]) AS v(cell, kind, epoch, max_seq, missing, records, duplicates) "
                "WHERE s.cell = v.cell AND s.kind = v.kind AND s.epoch = v.epoch",
                {
                    "now": now,
                    **{
                        name: [u[field] for u in updates]
                        for name, field in (
                            ("c", "k_cell"),
                            ("k", "k_kind"),
                            ("e", "k_epoch"),
                            ("m", "v_max"),
                            ("g", "v_missing"),
                            ("r", "v_records"),
                            ("d", "v_duplicates"),
                        )
                    },
                },
            )
            return
        stmt = (
            update(streams)
            .where(and_(c.cell == bindparam("k_cell"), c.kind == bindparam("k_kind"), c.epoch == bindparam("k_epoch")))
            .values(
                max_seq=bindparam("v_max"),
                missing=bindparam("v_missing"),
                records=c.records + bindparam("v_records"),
                duplicates=c.duplicates + bindparam("v_duplicates"),
                last_received=bindparam("v_now"),
            )
        )
        conn.execute(stmt, updates)  # executemany: psycopg 3 sends it as one pipeline

    def _cells(self, conn: Connection, fresh, statuses, alert_ids: dict[str, int], now: datetime) -> None:
        updates: dict[str, dict[str, Any]] = defaultdict(dict)
        for r, _ in fresh:
            u, b = updates[r.cell], r.body
            if r.kind == "model_status":
                u["model_version"] = b["active_version"] or u.get("model_version")
                if b.get("state"):
                    u["model_state"] = b["state"]
            elif r.kind == "part" and "model_version" not in u:
                u["model_version"] = b["model_version"] or None
            elif r.kind == "kpi":
                u.update(throughput_pps=b["throughput_pps"], yield_ratio=b["yield_ratio"], kpi_time=r.time)
        for r, t in statuses:
            updates[r.cell].update(
                presence=r.body["state"],
                presence_reason=r.body.get("reason", ""),
                presence_time=t,
                presence_details=r.body.get("details"),
            )
        for cell, alert_id in alert_ids.items():
            updates[cell]["last_alert_id"] = alert_id
        if not updates:
            return
        # One upsert for every cell of the batch, in name order (the lock order): a column a cell's update does
        # not carry is None and keeps its stored value (COALESCE); presence_details changes with presence only.
        if self.postgres:  # one statement with array parameters
            names = sorted(updates)
            params = {"name": names, "now": now}
            for column in CELL_UPDATE_COLUMNS:
                values = [updates[n].get(column) for n in names]
                params[column] = [_json_text(v) for v in values] if column == "presence_details" else values
            conn.exec_driver_sql(_PG_CELLS, params)
            return
        cells = models.Cell.__table__
        stmt = self._insert(cells)
        set_: dict[str, Any] = {"last_seen": stmt.excluded.last_seen}
        for column in CELL_UPDATE_COLUMNS:
            if column == "presence_details":
                set_[column] = case(
                    (stmt.excluded.presence.is_not(None), stmt.excluded.presence_details), else_=cells.c[column]
                )
            else:
                set_[column] = func.coalesce(stmt.excluded[column], cells.c[column])
        rows = []
        for cell in sorted(updates):
            u = updates[cell]
            rows.append(
                {"name": cell, "first_seen": now, "last_seen": now, **{k: u.get(k) for k in CELL_UPDATE_COLUMNS}}
            )
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=set_), rows)

    def _ensure_partitions(self, parts: list[rules.Record], now: datetime) -> None:
        if not self.postgres or not parts:
            return
        low, high = (now - timedelta(days=self.retention_days)).date(), (now + timedelta(days=31)).date()
        days: set[date] = set()
        for r in parts:
            day = (r.time or now).date()
            if low <= day <= high:  # outside: the default partition (a cell's clock far off)
                days.add(day)
        if days - {d for d in days if db.partition_name(d) in self._partitions}:
            try:
                self._partitions = db.ensure_partitions(self.engine, days, self._partitions)
            except OperationalError as exc:
                raise TransientError(f"database: {str(exc.orig or exc).splitlines()[0][:300]}") from exc


def _is_retryable(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    # serialization failure, deadlock, lock timeout, admin shutdown, connection errors (class 08)
    return bool(code) and (code in ("40001", "40P01", "55P03", "57P01", "57P02", "57P03") or code.startswith("08"))
