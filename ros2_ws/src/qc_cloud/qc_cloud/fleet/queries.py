"""The read side of the API, without a web framework: each function takes a connection and plain values and
returns JSON-ready dicts. Every list is paginated (limit/offset, bounded by the caller) and served from an
index or the hourly rollups, never a full-table scan per request."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, desc, func, literal, or_, select
from sqlalchemy.engine import Connection

from qc_cloud.fleet import models, rollups

PART_COLUMNS = (
    "cell",
    "part_id",
    "record_id",
    "time",
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
    "epoch",
    "seq",
    "received_at",
)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="microseconds") + "Z"


def _json(row: Any) -> dict[str, Any]:
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in row._mapping.items()}


def page(items: list[dict[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    return {
        "items": items,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + limit if len(items) == limit else None,
    }


def fleet(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """Every cell: presence, model, yield and parts over the last 24 h (rollups), throughput, last alert."""
    r = models.PartRollup.__table__
    since = rollups.hour_of(now - timedelta(hours=23))
    day = (
        select(
            r.c.cell,
            func.sum(r.c.parts).label("parts"),
            func.sum(r.c.normal).label("normal"),
            func.sum(r.c.defective).label("defective"),
            func.sum(r.c.reinspect).label("reinspect"),
        )
        .where(r.c.hour >= since)
        .group_by(r.c.cell)
        .subquery()
    )
    c, a = models.Cell.__table__, models.Alert.__table__
    rows = conn.execute(
        select(
            c,
            day.c.parts,
            day.c.normal,
            day.c.defective,
            day.c.reinspect,
            a.c.time.label("alert_time"),
            a.c.severity.label("alert_severity"),
            a.c.code.label("alert_code"),
            a.c.message.label("alert_message"),
            a.c.acked_at.label("alert_acked_at"),
        )
        .outerjoin(day, day.c.cell == c.c.name)
        .outerjoin(a, a.c.id == c.c.last_alert_id)
        .order_by(c.c.name)
    )
    out = []
    for row in rows:
        m = row._mapping
        parts = int(m["parts"] or 0)
        out.append(
            {
                "cell": m["name"],
                "presence": m["presence"],
                "presence_reason": m["presence_reason"],
                "presence_time": iso(m["presence_time"]),
                "last_seen": iso(m["last_seen"]),
                "model_version": m["model_version"],
                "model_state": m["model_state"],
                "parts_24h": parts,
                "defective_24h": int(m["defective"] or 0),
                "reinspect_24h": int(m["reinspect"] or 0),
                "yield_24h": rollups.yield_ratio(int(m["normal"] or 0), parts),
                "throughput_pps": m["throughput_pps"],
                "kpi_yield_ratio": m["yield_ratio"],
                "kpi_time": iso(m["kpi_time"]),
                "last_alert": None
                if m["alert_time"] is None
                else {
                    "id": m["last_alert_id"],
                    "time": iso(m["alert_time"]),
                    "severity": m["alert_severity"],
                    "code": m["alert_code"],
                    "message": m["alert_message"],
                    "acked_at": iso(m["alert_acked_at"]),
                },
            }
        )
    return out


def cell_exists(conn: Connection, cell: str) -> bool:
    return conn.execute(select(models.Cell.name).where(models.Cell.name == cell)).first() is not None


def trend(conn: Connection, cell: str, start: datetime, end: datetime, bucket_hours: int) -> list[dict[str, Any]]:
    """Parts, verdict counts, yield and mean latency per bucket of `bucket_hours`, from the hourly rollups."""
    r = models.PartRollup.__table__
    rows = conn.execute(
        select(r).where(and_(r.c.cell == cell, r.c.hour >= rollups.hour_of(start), r.c.hour < end)).order_by(r.c.hour)
    )
    buckets: dict[datetime, dict[str, Any]] = {}
    origin = rollups.hour_of(start)
    for row in rows:
        m = row._mapping
        key = origin + timedelta(hours=((m["hour"] - origin) // timedelta(hours=1)) // bucket_hours * bucket_hours)
        b = buckets.setdefault(
            key,
            {
                "start": key,
                "parts": 0,
                "normal": 0,
                "reinspect": 0,
                "defective": 0,
                "not_inspected": 0,
                "latency_sum_ms": 0.0,
                "latency_n": 0,
                "latency_max_ms": 0.0,
            },
        )
        for k in ("parts", "normal", "reinspect", "defective", "not_inspected", "latency_sum_ms", "latency_n"):
            b[k] += m[k]
        b["latency_max_ms"] = max(b["latency_max_ms"], m["latency_max_ms"])
    out = []
    for b in buckets.values():
        n = b.pop("latency_n")
        total = b.pop("latency_sum_ms")
        out.append(
            {
                **b,
                "start": iso(b["start"]),
                "yield": rollups.yield_ratio(b["normal"], b["parts"]),
                "parts_per_s": b["parts"] / (bucket_hours * 3600),
                "latency_mean_ms": total / n if n else None,
            }
        )
    return out


def _range(column, start: datetime | None, end: datetime | None) -> list:
    clauses = []
    if start is not None:
        clauses.append(column >= start)
    if end is not None:
        clauses.append(column < end)
    return clauses


def parts(
    conn: Connection,
    *,
    cell: str | None,
    start: datetime | None,
    end: datetime | None,
    verdict: str | None,
    model_version: str | None,
    part_id: str | None,
    limit: int,
    offset: int,
    after: tuple[datetime, str, str] | None = None,
) -> list[dict]:
    """Parts newest first, in (time desc, cell, record_id) order. `after` (keyset pagination, see
    encode_cursor): only the parts after that key in this order; an index range scan however deep the page."""
    p = models.Part.__table__
    where = _range(p.c.time, start, end)
    if after is not None:
        t, c, r = after
        # time <= t bounds the index scan; the OR places the rows of the same instant
        where += [
            p.c.time <= t,
            or_(p.c.time < t, p.c.cell > c, and_(p.c.cell == c, p.c.record_id > r)),
        ]
    for column, value in (
        (p.c.cell, cell),
        (p.c.verdict, verdict),
        (p.c.model_version, model_version),
        (p.c.part_id, part_id),
    ):
        if value is not None:
            where.append(column == value)
    query = select(*[p.c[k] for k in PART_COLUMNS]).where(and_(True, *where))
    query = query.order_by(desc(p.c.time), p.c.cell, p.c.record_id).limit(limit).offset(offset)
    return [_json(row) for row in conn.execute(query)]


def encode_cursor(item: dict[str, Any]) -> str:
    """The opaque keyset cursor after a part item of parts(): its (time, cell, record_id)."""
    raw = json.dumps([item["time"], item["cell"], item["record_id"]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, str]:
    """The inverse of encode_cursor; ValueError with a reason for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        t, c, r = json.loads(raw)
        if not (isinstance(t, str) and isinstance(c, str) and isinstance(r, str) and t.endswith("Z")):
            raise ValueError
        time = datetime.fromisoformat(t[:-1])
        if time.tzinfo is not None or len(c) > 256 or len(r) > 256:
            raise ValueError
        return time, c, r
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError("cursor is not one this API returned") from None


def part_story(conn: Connection, cell: str, part_id: str) -> dict[str, Any] | None:
    """One part's whole story: the verdict record(s), the process state at decision, what the ejector did,
    image samples and re-inspection results."""
    p = models.Part.__table__
    found = [
        _json(r)
        for r in conn.execute(
            select(*[p.c[k] for k in PART_COLUMNS])
            .where(and_(p.c.cell == cell, p.c.part_id == part_id))
            .order_by(p.c.time)
        )
    ]
    if not found:
        return None
    decided = datetime.fromisoformat(found[-1]["time"].rstrip("Z"))
    ps = models.ProcessState.__table__
    process = conn.execute(
        select(ps).where(and_(ps.c.cell == cell, ps.c.time <= decided)).order_by(desc(ps.c.time)).limit(1)
    ).first()
    rj, s, v = models.RejectEvent.__table__, models.Sample.__table__, models.VerifyResult.__table__
    rc, vf = models.ReconcileFinding.__table__, models.Verification.__table__
    return {
        "cell": cell,
        "part_id": part_id,
        "decisions": found,
        "process": _json(process) if process else None,
        "rejects": [_json(r) for r in conn.execute(select(rj).where(and_(rj.c.cell == cell, rj.c.part_id == part_id)))],
        "samples": [
            {**_json(r), "url": f"/api/v1/samples/{r.sha256}"}
            for r in conn.execute(select(s).where(and_(s.c.cell == cell, s.c.part_id == part_id)))
        ],
        "verify": [_json(r) for r in conn.execute(select(v).where(and_(v.c.cell == cell, v.c.part_id == part_id)))],
        "reconcile": [
            _json(r) for r in conn.execute(select(rc).where(and_(rc.c.cell == cell, rc.c.part_id == part_id)))
        ],
        # the cloud verifier's answers (verification records): the cloud's verdict next to the edge's
        "verifications": [
            _json(r)
            for r in conn.execute(
                select(vf).where(and_(vf.c.cell == cell, vf.c.part_id == part_id)).order_by(vf.c.time)
            )
        ],
    }


def kpis(conn: Connection, cell: str, start, end, limit: int, offset: int) -> list[dict]:
    k = models.Kpi.__table__
    query = select(k).where(and_(k.c.cell == cell, *_range(k.c.time, start, end)))
    return [_json(r) for r in conn.execute(query.order_by(desc(k.c.time)).limit(limit).offset(offset))]


def alerts(conn: Connection, *, cell, severity, acked, start, end, limit: int, offset: int) -> list[dict]:
    a = models.Alert.__table__
    where = _range(a.c.time, start, end)
    if cell is not None:
        where.append(a.c.cell == cell)
    if severity is not None:
        where.append(a.c.severity == severity)
    if acked is not None:
        where.append(a.c.acked_at.isnot(None) if acked else a.c.acked_at.is_(None))
    query = select(a).where(and_(True, *where)).order_by(desc(a.c.time), desc(a.c.id)).limit(limit).offset(offset)
    return [_json(r) for r in conn.execute(query)]


def ack_alert(conn: Connection, alert_id: int, by: str, note: str, now: datetime) -> dict | None:
    a = models.Alert.__table__
    row = conn.execute(select(a).where(a.c.id == alert_id)).first()
    if row is None:
        return None
    if row.acked_at is None:
        conn.execute(a.update().where(a.c.id == alert_id).values(acked_at=now, acked_by=by, ack_note=note))
        row = conn.execute(select(a).where(a.c.id == alert_id)).first()
    return _json(row)


def gaps(conn: Connection, cell, kind, limit: int, offset: int) -> list[dict]:
    g = models.Gap.__table__
    where = [c for c in ((g.c.cell == cell) if cell else None, (g.c.kind == kind) if kind else None) if c is not None]
    query = select(g).where(and_(True, *where)).order_by(g.c.cell, g.c.kind, g.c.epoch, g.c.first_seq)
    return [
        {**_json(r), "missing": r.last_seq - r.first_seq + 1} for r in conn.execute(query.limit(limit).offset(offset))
    ]


def streams(conn: Connection, cell, limit: int, offset: int) -> list[dict]:
    st = models.Stream.__table__
    query = select(st).where(and_(True, *([st.c.cell == cell] if cell else [])))
    query = query.order_by(st.c.cell, st.c.kind, st.c.epoch).limit(limit).offset(offset)
    return [_json(r) for r in conn.execute(query)]


def quarantine(conn: Connection, limit: int, offset: int) -> list[dict]:
    q = models.Quarantine.__table__
    rows = conn.execute(select(q).order_by(desc(q.c.id)).limit(limit).offset(offset))
    return [
        {
            "id": r.id,
            "received_at": iso(r.received_at),
            "topic": r.topic,
            "reason": r.reason,
            "size": r.size,
            "head_hex": bytes(r.payload[:64]).hex(),
        }
        for r in rows
    ]


def totals(conn: Connection) -> dict[str, int]:
    st, q = models.Stream.__table__, models.Quarantine.__table__
    row = conn.execute(
        select(
            func.coalesce(func.sum(st.c.records), 0),
            func.coalesce(func.sum(st.c.duplicates), 0),
            func.coalesce(func.sum(st.c.missing), 0),
        )
    ).one()
    quarantined = conn.execute(select(func.count()).select_from(q)).scalar_one()
    return {"records": int(row[0]), "duplicates": int(row[1]), "missing": int(row[2]), "quarantined": quarantined}


def export_parts(
    conn: Connection, start: datetime, end: datetime, cell: str | None, chunk: int = 5000
) -> Iterator[list]:
    """Rows of parts in [start, end), oldest first, in chunks (streamed: constant memory)."""
    p = models.Part.__table__
    where = [p.c.time >= start, p.c.time < end] + ([p.c.cell == cell] if cell else [])
    query = select(*[p.c[k] for k in PART_COLUMNS]).where(and_(*where)).order_by(p.c.time, p.c.cell, p.c.record_id)
    result = conn.execution_options(stream_results=True, yield_per=chunk).execute(query)
    for rows in result.partitions(chunk):
        yield [tuple(r) for r in rows]


SHADOW_BANDS = ("NORMAL", "REINSPECT", "DEFECTIVE")
LIVE_VERDICTS = ("NORMAL", "REINSPECT", "DEFECTIVE", "NOT_INSPECTED")


def _band(probability, reinspect: float, defective: float):
    """SQL: the verdict band a probability falls in under the given thresholds (as the decision node's)."""
    return case(
        (probability >= defective, "DEFECTIVE"),
        (probability >= reinspect, "REINSPECT"),
        else_="NORMAL",
    )


def _bucket(probability, bins: int):
    """SQL: histogram bin index 0..bins-1 of a probability in [0, 1] (no floor(): SQLite builds may lack it)."""
    whens = [(probability < (i + 1) / bins, i) for i in range(bins - 1)]
    return case(*whens, else_=bins - 1) if whens else literal(0)


def shadow_report(
    conn: Connection,
    cell: str,
    version: str | None,
    start: datetime | None,
    end: datetime | None,
    reinspect: float,
    defective: float,
    bins: int,
) -> list[dict[str, Any]]:
    """Per shadow version of `cell` (or only `version`): how many parts it scored, its agreement with the live
    verdict of the same part (from the part record) and with the live probability's band, the confusion counts
    (live verdict x shadow band), the histogram of its scores, its latency, and the cell's last reported
    scored/skipped counts. Aggregated in SQL over the (cell, shadow_version, time) index."""
    s, p, m = models.ShadowScore.__table__, models.Part.__table__, models.ModelStatus.__table__
    where = [s.c.cell == cell]
    if version:
        where.append(s.c.shadow_version == version)
    if start is not None:
        where.append(s.c.time >= start)
    if end is not None:
        where.append(s.c.time < end)
    shadow_band = _band(s.c.defect_probability, reinspect, defective).label("shadow_band")
    live_band = _band(p.c.defect_probability, reinspect, defective)
    joined = s.outerjoin(p, and_(p.c.cell == s.c.cell, p.c.part_id == s.c.part_id))
    rows = conn.execute(
        select(
            s.c.shadow_version,
            p.c.verdict,
            shadow_band,
            func.count().label("n"),
            func.sum(case((p.c.defect_probability.is_(None), 0), (live_band == shadow_band, 1), else_=0)).label(
                "band_agree"
            ),
            func.sum(case((p.c.defect_probability.is_(None), 0), else_=1)).label("band_n"),
            func.sum(s.c.latency_ms).label("latency_sum"),
            func.max(s.c.latency_ms).label("latency_max"),
            func.min(s.c.time).label("first"),
            func.max(s.c.time).label("last"),
        )
        .select_from(joined)
        .where(*where)
        .group_by(s.c.shadow_version, p.c.verdict, shadow_band)
    ).all()
    bucket = _bucket(s.c.defect_probability, bins).label("bucket")
    histogram_rows = conn.execute(
        select(s.c.shadow_version, bucket, func.count()).where(*where).group_by(s.c.shadow_version, bucket)
    ).all()
    report: dict[str, dict[str, Any]] = {}
    for row in rows:
        r = report.setdefault(
            row.shadow_version,
            {
                "shadow_version": row.shadow_version,
                "scored": 0,
                "matched": 0,
                "agree": 0,
                "band_n": 0,
                "band_agree": 0,
                "confusion": {v: dict.fromkeys(SHADOW_BANDS, 0) for v in LIVE_VERDICTS},
                "histogram": [0] * bins,
                "latency_sum": 0.0,
                "latency_max_ms": None,
                "first": row.first,
                "last": row.last,
            },
        )
        r["scored"] += row.n
        r["band_n"] += row.band_n or 0
        r["band_agree"] += row.band_agree or 0
        r["latency_sum"] += row.latency_sum or 0.0
        if row.latency_max is not None:
            r["latency_max_ms"] = max(r["latency_max_ms"] or 0.0, row.latency_max)
        r["first"], r["last"] = min(r["first"], row.first), max(r["last"], row.last)
        if row.verdict in LIVE_VERDICTS:
            r["confusion"][row.verdict][row.shadow_band] += row.n
            if row.verdict != "NOT_INSPECTED":
                r["matched"] += row.n
                r["agree"] += row.n if row.verdict == row.shadow_band else 0
    for shadow_version, index, n in histogram_rows:
        if shadow_version in report:
            report[shadow_version]["histogram"][int(index)] += n
    latencies: dict[str, list[float]] = {}
    for shadow_version, latency in conn.execute(
        select(s.c.shadow_version, s.c.latency_ms)
        .where(*where, s.c.latency_ms.is_not(None))
        .order_by(desc(s.c.time))
        .limit(MAX_SHADOW_LATENCIES)
    ):
        latencies.setdefault(shadow_version, []).append(latency)
    labels = _shadow_label_figures(conn, where, reinspect, defective)
    items = []
    for shadow_version in sorted(report):
        r = report[shadow_version]
        last_state = conn.execute(
            select(m.c.shadow_counts, m.c.time)
            .where(m.c.cell == cell, m.c.event == "shadow_state", m.c.shadow_version == shadow_version)
            .order_by(desc(m.c.time))
            .limit(1)
        ).first()
        items.append(
            {
                "shadow_version": shadow_version,
                "scored": r["scored"],
                "matched_parts": r["matched"],  # with a live verdict other than NOT_INSPECTED
                "unmatched": r["scored"] - r["matched"] - sum(r["confusion"]["NOT_INSPECTED"].values()),
                "agreement": r["agree"] / r["matched"] if r["matched"] else None,
                "band_agreement": r["band_agree"] / r["band_n"] if r["band_n"] else None,
                "confusion": r["confusion"],  # live verdict -> shadow band -> parts
                "histogram": {"bins": bins, "counts": r["histogram"]},
                "latency_ms": {
                    "mean": round(r["latency_sum"] / r["scored"], 3) if r["scored"] else None,
                    "max": r["latency_max_ms"],
                    "p99": p99(latencies.get(shadow_version, [])),  # of the newest MAX_SHADOW_LATENCIES scores
                },
                "labels": labels.get(shadow_version, _label_block([])),
                "first": iso(r["first"]),
                "last": iso(r["last"]),
                "cell_counts": last_state.shadow_counts if last_state is not None else None,
                "cell_counts_time": iso(last_state.time) if last_state is not None else None,
            }
        )
    return items


MAX_SHADOW_LATENCIES = 100_000


def p99(values: list[float]) -> float | None:
    """The 99th percentile (nearest rank) of `values`, None for none."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)]


def _rates(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """(label answer, band or verdict) pairs -> escapes (defective called NORMAL), false rejects (good called
    DEFECTIVE) and their rates, as the promotion gate counts them (training/candidate.py)."""
    defective = [band for answer, band in pairs if answer == "defective"]
    good = [band for answer, band in pairs if answer == "good"]
    escapes, false_rejects = defective.count("NORMAL"), good.count("DEFECTIVE")
    return {
        "defective": len(defective),
        "good": len(good),
        "escapes": escapes,
        "false_rejects": false_rejects,
        "escape_rate": escapes / len(defective) if defective else None,
        "false_reject_rate": false_rejects / len(good) if good else None,
    }


def _label_block(rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    """(answer, live verdict, shadow band) per labelled part -> the shadow's and the live model's errors on them."""
    return {
        "labelled": len(rows),
        "shadow": _rates([(answer, band) for answer, _, band in rows]),
        "live": _rates([(answer, verdict) for answer, verdict, _ in rows]),
    }


def _shadow_label_figures(conn: Connection, where: list, reinspect: float, defective: float) -> dict[str, dict]:
    """Per shadow version: on the parts it scored that an operator labelled good/defective (current label) and
    the live model inspected, the shadow's escapes/false rejects (its band) next to the live verdict's."""
    s, p, lab = models.ShadowScore.__table__, models.Part.__table__, models.Label.__table__
    rows = conn.execute(
        select(s.c.shadow_version, s.c.record_id, s.c.defect_probability, p.c.verdict, lab.c.answer)
        .select_from(
            s.join(lab, and_(lab.c.cell == s.c.cell, lab.c.part_id == s.c.part_id)).join(
                p, and_(p.c.cell == s.c.cell, p.c.part_id == s.c.part_id)
            )
        )
        .where(
            *where,
            lab.c.current.is_(True),
            lab.c.answer.in_(("good", "defective")),
            p.c.verdict.in_(("NORMAL", "REINSPECT", "DEFECTIVE")),
        )
    ).all()
    seen: set[tuple[str, str]] = set()
    per_version: dict[str, list[tuple[str, str, str]]] = {}
    for version, record_id, probability, verdict, answer in rows:
        if (version, record_id) in seen:  # one shadow score counts once, however many samples were labelled
            continue
        seen.add((version, record_id))
        band = "DEFECTIVE" if probability >= defective else "REINSPECT" if probability >= reinspect else "NORMAL"
        per_version.setdefault(version, []).append((answer, verdict, band))
    return {version: _label_block(rows) for version, rows in per_version.items()}


def skip_share(counts: dict[str, int] | None) -> float | None:
    """The share of offered parts the shadow skipped, from a shadow_state's counts (scored, skipped_<reason>)."""
    if not counts:
        return None
    skipped = sum(v for k, v in counts.items() if k.startswith("skipped_"))
    offered = skipped + counts.get("scored", 0)
    return skipped / offered if offered else None


def shadow_stage_figures(
    conn: Connection, cells: list[str], version: str, start: datetime | None, reinspect: float, defective: float
) -> dict[str, Any]:
    """shadow_report of one shadow version over several cells (a rollout's shadow stage): summed counts and
    confusion, agreement over all matched parts, label errors pooled, latency p99 the worst cell's, skip share
    from the summed counts of every cell's last shadow_state. `per_cell` keeps each cell's own report."""
    per_cell = {}
    for cell in cells:
        items = shadow_report(conn, cell, version, start, None, reinspect, defective, 10)
        per_cell[cell] = items[0] if items else None
    reports = [r for r in per_cell.values() if r is not None]
    scored = sum(r["scored"] for r in reports)
    matched = sum(r["matched_parts"] for r in reports)
    agree = sum(r["confusion"][v][v] for r in reports for v in SHADOW_BANDS)  # live verdict == shadow band
    counts: dict[str, int] = {}
    for r in reports:
        for k, v in (r["cell_counts"] or {}).items():
            counts[k] = counts.get(k, 0) + int(v)
    pooled: dict[str, Any] = {"labelled": 0, "shadow": [], "live": []}
    for r in reports:
        lab = r["labels"]
        for side in ("shadow", "live"):
            pooled[side].append(lab[side])
        pooled["labelled"] += lab["labelled"]

    def pool(side: str) -> dict[str, Any]:
        blocks = pooled[side]
        total = {k: sum(b[k] for b in blocks) for k in ("defective", "good", "escapes", "false_rejects")}
        total["escape_rate"] = total["escapes"] / total["defective"] if total["defective"] else None
        total["false_reject_rate"] = total["false_rejects"] / total["good"] if total["good"] else None
        return total

    p99s = [r["latency_ms"]["p99"] for r in reports if r["latency_ms"]["p99"] is not None]
    return {
        "parts": scored,  # shadow-scored parts: what a shadow stage's min_parts counts
        "matched_parts": matched,
        "agreement": agree / matched if matched else None,
        "labels": {"labelled": pooled["labelled"], "shadow": pool("shadow"), "live": pool("live")},
        "latency_p99_ms": max(p99s) if p99s else None,
        "cell_counts": counts or None,
        "skip_share": skip_share(counts),
        "per_cell": {
            cell: None
            if r is None
            else {
                "scored": r["scored"],
                "agreement": r["agreement"],
                "latency_p99_ms": r["latency_ms"]["p99"],
                "skip_share": skip_share(r["cell_counts"]),
            }
            for cell, r in per_cell.items()
        },
    }
