"""The dashboard's reads and writes, without a web framework: each function takes a connection and plain values.
Pages read the hourly rollups, the `cells` row, and index-bounded slices of the raw tables (never a
full-table scan per page view)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, and_, desc, func, select
from sqlalchemy.engine import Connection

from qc_cloud.dashboard import review
from qc_cloud.fleet import models, queries, rollups

MAX_POINTS = 300  # per chart series
PROB_SAMPLE = 5000  # newest parts of the range used for the probability histogram


def _line(cell: str) -> str:
    return cell.rsplit("/", 1)[0]


def fleet(conn: Connection, now: datetime, hours: int, only: str | None = None) -> dict[str, Any]:
    """Every cell (or `only` that one, its line's cells still deciding the line's model) with presence, model,
    rates over the window (rollups), open alerts and mismatch flags."""
    r, c, a, g = (models.PartRollup.__table__, models.Cell.__table__, models.Alert.__table__, models.Gap.__table__)
    since = rollups.hour_of(now - timedelta(hours=hours - 1))
    sums = {
        row.cell: row
        for row in conn.execute(
            select(
                r.c.cell,
                func.sum(r.c.parts).label("parts"),
                func.sum(r.c.normal).label("normal"),
                func.sum(r.c.reinspect).label("reinspect"),
                func.sum(r.c.defective).label("defective"),
                func.sum(r.c.not_inspected).label("not_inspected"),
                func.min(r.c.hour).label("first_hour"),
            )
            .where(and_(r.c.hour >= since, *([r.c.cell == only] if only else [])))
            .group_by(r.c.cell)
        )
    }
    mine = [a.c.cell == only] if only else []
    open_alerts = dict(
        conn.execute(select(a.c.cell, func.count()).where(and_(a.c.acked_at.is_(None), *mine)).group_by(a.c.cell)).all()
    )
    gaps = dict(
        conn.execute(
            select(g.c.cell, func.sum(g.c.last_seq - g.c.first_seq + 1))
            .where(and_(True, *([g.c.cell == only] if only else [])))
            .group_by(g.c.cell)
        ).all()
    )
    query = select(c).order_by(c.c.name)
    if only:
        query = query.where(c.c.name.like(_line(only).replace("_", "\\_") + "/%", escape="\\"))
    cells = [dict(row._mapping) for row in conn.execute(query)]
    line_versions: dict[str, Counter] = defaultdict(Counter)
    for cell in cells:
        if cell["model_version"]:
            line_versions[_line(cell["name"])][cell["model_version"]] += 1
    out = []
    for cell in cells:
        if only and cell["name"] != only:
            continue
        s = sums.get(cell["name"])
        parts = int(s.parts or 0) if s else 0
        # per minute over the window, or since the cell first reported when that is later
        minutes = max(1.0, min(hours * 60.0, (now - cell["first_seen"]).total_seconds() / 60.0))
        line_model = line_versions[_line(cell["name"])].most_common(1)
        flags = []
        if line_model and cell["model_version"] and cell["model_version"] != line_model[0][0]:
            flags.append(f"model {cell['model_version']} differs from its line ({line_model[0][0]})")
        missing = int(gaps.get(cell["name"]) or 0)
        if missing:
            flags.append(f"{missing} record(s) missing (sequence gaps)")

        def rate(key: str, s=s, parts=parts) -> float | None:
            return int(getattr(s, key) or 0) / parts if parts else None

        since_t = cell["presence_time"] or cell["first_seen"]
        out.append(
            {
                "cell": cell["name"],
                "presence": cell["presence"] or "unknown",
                "presence_since": since_t,
                "presence_for": _ago(now - since_t) if since_t else "",
                "presence_reason": cell["presence_reason"],
                "model_version": cell["model_version"],
                "model_state": cell["model_state"],
                "parts": parts,
                "parts_per_min": parts / minutes,
                "yield": rate("normal"),
                "defect_rate": rate("defective"),
                "reinspect_rate": rate("reinspect"),
                "not_inspected_rate": rate("not_inspected"),
                "open_alerts": int(open_alerts.get(cell["name"], 0)),
                "flags": flags,
            }
        )
    return {"cells": out, "hours": hours}


def _ago(delta: timedelta) -> str:
    s = max(0, int(delta.total_seconds()))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def _thin(rows: list, n: int = MAX_POINTS) -> list:
    step = max(1, len(rows) // n)
    return rows[::step]


def _downsampled(conn: Connection, table, cell: str, start: datetime, end: datetime, values: dict) -> list:
    """At most MAX_POINTS points of a per-cell time series: the rows of the range cut into MAX_POINTS tiles by
    the database (ntile), each tile's first time and mean values."""
    inner = (
        select(
            table.c.time.label("at"),
            *[v.label(k) for k, v in values.items()],
            func.ntile(MAX_POINTS).over(order_by=table.c.time).label("tile"),
        )
        .where(and_(table.c.cell == cell, table.c.time >= start, table.c.time < end))
        .subquery()
    )
    query = (
        select(func.min(inner.c.at).label("at"), *[func.avg(inner.c[k]).label(k) for k in values])
        .group_by(inner.c.tile)
        .order_by(inner.c.tile)
    )
    return conn.execute(query).all()


def cell_charts(conn: Connection, cell: str, start: datetime, end: datetime) -> dict[str, Any]:
    hours = max(1, int((end - start).total_seconds() // 3600))
    bucket = max(1, hours // 48)
    trend = queries.trend(conn, cell, start, end, bucket)
    k, ps, rj, a, p, ms = (
        models.Kpi.__table__,
        models.ProcessState.__table__,
        models.RejectEvent.__table__,
        models.Alert.__table__,
        models.Part.__table__,
        models.ModelStatus.__table__,
    )
    kpis = _downsampled(
        conn,
        k,
        cell,
        start,
        end,
        {
            "p50": k.c.latency_ms["p50"].as_float(),  # extracted by the database, not decoded here
            "p99": k.c.latency_ms["p99"].as_float(),
            "pps": k.c.throughput_pps,
        },
    )
    latency = [{"t": queries.iso(r.at), "p50": r.p50, "p99": r.p99, "pps": r.pps} for r in kpis]
    # The defect-probability histogram is counted by the database over the newest PROB_SAMPLE parts.
    newest = (
        select(p.c.defect_probability.label("v"))
        .where(and_(p.c.cell == cell, p.c.time >= start, p.c.time < end, p.c.defect_probability.isnot(None)))
        .order_by(desc(p.c.time))
        .limit(PROB_SAMPLE)
        .subquery()
    )
    scaled = newest.c.v * 20
    bin_ = func.floor(scaled) if conn.dialect.name == "postgresql" else func.cast(scaled, Integer)
    histogram = [0] * 20
    for b, n in conn.execute(select(bin_.label("b"), func.count()).group_by("b")):
        histogram[min(19, max(0, int(b)))] += int(n)
    process = _downsampled(
        conn,
        ps,
        cell,
        start,
        end,
        {
            "temperature_c": ps.c.temperature_c,
            "pressure_pa": ps.c.pressure_pa,
            "vibration_rms": ps.c.vibration_rms,
            "anomaly": ps.c.anomaly_score,
        },
    )
    process_series = [
        {
            "t": queries.iso(r.at),
            "temperature_c": r.temperature_c,
            "pressure_kpa": None if r.pressure_pa is None else r.pressure_pa / 1000,
            "vibration_rms": r.vibration_rms,
            "anomaly": r.anomaly,
        }
        for r in process
    ]
    outcomes: dict[str, dict[str, int]] = defaultdict(Counter)
    origin = rollups.hour_of(start)
    for r in conn.execute(
        select(rj.c.time, rj.c.outcome)
        .where(and_(rj.c.cell == cell, rj.c.time >= start, rj.c.time < end))
        .order_by(desc(rj.c.time))
        .limit(20000)
    ):
        key = origin + timedelta(hours=((r.time - origin) // timedelta(hours=1)) // bucket * bucket)
        outcomes[queries.iso(key)][r.outcome] += 1
    alerts = [
        queries._json(r)
        for r in conn.execute(
            select(a.c.id, a.c.time, a.c.severity, a.c.code, a.c.message, a.c.acked_at)
            .where(and_(a.c.cell == cell, a.c.time >= start, a.c.time < end))
            .order_by(desc(a.c.time))
            .limit(200)
        )
    ]
    models_history = [
        queries._json(r)
        for r in conn.execute(
            select(ms.c.time, ms.c.event, ms.c.state, ms.c.version, ms.c.active_version, ms.c.reason)
            .where(ms.c.cell == cell)
            .order_by(desc(ms.c.time))
            .limit(50)
        )
    ]
    return {
        "bucket_hours": bucket,
        "trend": trend,
        "latency": latency,
        "histogram": histogram,
        "histogram_n": sum(histogram),
        "process": process_series,
        "rejects": [{"t": t, **counts} for t, counts in sorted(outcomes.items())],
        "alerts": alerts,
        "models": models_history,
    }


def cloud_agreement(conn: Connection, cell: str, start: datetime, end: datetime) -> dict:
    """Edge versus cloud over [start, end): the cell's verification records counted per (edge verdict, outcome,
    cloud verdict) in the database (index on cell, time), the figures by review.cloud_agreement."""
    v = models.Verification.__table__
    rows = conn.execute(
        select(v.c.local_verdict, v.c.outcome, v.c.verdict, func.count())
        .where(and_(v.c.cell == cell, v.c.time >= start, v.c.time < end))
        .group_by(v.c.local_verdict, v.c.outcome, v.c.verdict)
    ).all()
    return review.cloud_agreement(rows)


def recent_parts(conn: Connection, cell: str, limit: int = 20) -> list[dict]:
    return queries.parts(
        conn, cell=cell, start=None, end=None, verdict=None, model_version=None, part_id=None, limit=limit, offset=0
    )


def find_parts(conn: Connection, part_id: str, limit: int = 50) -> list[dict]:
    p = models.Part.__table__
    rows = conn.execute(
        select(p.c.cell, p.c.part_id, p.c.time, p.c.verdict, p.c.defect_probability)
        .where(p.c.part_id == part_id)
        .order_by(desc(p.c.time))
        .limit(limit)
    )
    return [queries._json(r) for r in rows]


# --- re-inspection ---


def _current_labels():
    lab = models.Label.__table__
    return lab, and_(lab.c.current.is_(True))


def queue(conn: Connection, order: str, kind: str | None, limit: int, offset: int) -> list[dict]:
    """Image samples without a current label: newest first, or most uncertain (P nearest 0.5) first."""
    s, lab = models.Sample.__table__, models.Label.__table__
    query = (
        select(
            s.c.cell,
            s.c.record_id,
            s.c.kind,
            s.c.time,
            s.c.part_id,
            s.c.verdict,
            s.c.defect_probability,
            s.c.model_version,
            s.c.sha256,
            s.c.random_sample,
        )
        .select_from(
            s.outerjoin(
                lab, and_(lab.c.cell == s.c.cell, lab.c.sample_record_id == s.c.record_id, lab.c.current.is_(True))
            )
        )
        .where(lab.c.id.is_(None))
    )
    if kind == "reinspect":
        query = query.where(s.c.verdict == "REINSPECT")
    elif kind == "rejected":
        query = query.where(s.c.verdict == "DEFECTIVE")
    elif kind == "random":
        query = query.where(s.c.random_sample.is_(True))
    if order == "uncertain":
        query = query.order_by(func.abs(func.coalesce(s.c.defect_probability, 0.0) - 0.5), desc(s.c.time))
    else:
        query = query.order_by(desc(s.c.time), s.c.record_id)
    return [queries._json(r) for r in conn.execute(query.limit(limit).offset(offset))]


def sample(conn: Connection, cell: str, record_id: str) -> dict | None:
    s, lab = models.Sample.__table__, models.Label.__table__
    row = conn.execute(select(s).where(and_(s.c.cell == cell, s.c.record_id == record_id))).first()
    if row is None:
        return None
    out = queries._json(row)
    history = conn.execute(
        select(lab).where(and_(lab.c.cell == cell, lab.c.sample_record_id == record_id)).order_by(desc(lab.c.id))
    ).all()
    out["labels"] = [queries._json(r) for r in history]
    out["story"] = queries.part_story(conn, cell, row.part_id)
    return out


def add_label(
    conn: Connection, cell: str, record_id: str, answer: str, defect_type: str | None, note: str, who: str, now
) -> dict | None:
    """Store an answer (a correction keeps the earlier answer as history); None if there is no such sample."""
    answer, defect_type = review.check_answer(answer, defect_type)
    s, lab = models.Sample.__table__, models.Label.__table__
    row = conn.execute(
        select(s.c.part_id, s.c.sha256).where(and_(s.c.cell == cell, s.c.record_id == record_id))
    ).first()
    if row is None:
        return None
    previous = conn.execute(
        select(lab.c.id).where(and_(lab.c.cell == cell, lab.c.sample_record_id == record_id, lab.c.current.is_(True)))
    ).first()
    if previous is not None:
        conn.execute(lab.update().where(lab.c.id == previous.id).values(current=False))
    new_id = conn.execute(
        lab.insert().values(
            cell=cell,
            sample_record_id=record_id,
            part_id=row.part_id,
            sha256=row.sha256,
            answer=answer,
            defect_type=defect_type,
            note=note[:1024],
            labelled_by=who,
            labelled_at=now,
            current=True,
            replaces_id=previous.id if previous else None,
        )
    ).inserted_primary_key[0]
    return {"id": new_id, "answer": answer, "defect_type": defect_type, "corrected": previous is not None}


def defect_types(conn: Connection) -> list[str]:
    lab = models.Label.__table__
    used = [r[0] for r in conn.execute(select(lab.c.defect_type).where(lab.c.defect_type.isnot(None)).distinct())]
    return sorted(set(review.DEFAULT_DEFECT_TYPES) | set(used))


def model_defect_types(conn: Connection, version: str) -> list[str]:
    """The defect types model `version` was trained on, as the newest model_status naming it reported them."""
    m = models.ModelStatus.__table__
    row = conn.execute(
        select(m.c.defect_types)
        .where(and_(m.c.active_version == version, m.c.defect_types.isnot(None)))
        .order_by(desc(m.c.time))
        .limit(1)
    ).first()
    types = row[0] if row else None
    return [t for t in (types or []) if isinstance(t, str) and review.DEFECT_TYPE.match(t)]


def agreement(conn: Connection) -> dict:
    s, lab = models.Sample.__table__, models.Label.__table__
    rows = conn.execute(
        select(s.c.verdict, s.c.model_version, lab.c.answer, s.c.random_sample)
        .select_from(lab.join(s, and_(s.c.cell == lab.c.cell, s.c.record_id == lab.c.sample_record_id)))
        .where(lab.c.current.is_(True))
    ).all()
    return review.agreement((r[0], r[1], r[2], bool(r[3])) for r in rows)


def labelled_samples(conn: Connection) -> list[dict]:
    s, lab = models.Sample.__table__, models.Label.__table__
    rows = conn.execute(
        select(
            lab.c.id.label("label_id"),
            lab.c.cell,
            lab.c.sample_record_id,
            lab.c.part_id,
            lab.c.sha256,
            lab.c.answer,
            lab.c.defect_type,
            lab.c.labelled_by,
            lab.c.labelled_at,
            s.c.kind,
            s.c.time.label("sample_time"),
            s.c.verdict,
            s.c.defect_probability,
            s.c.model_version,
        )
        .select_from(lab.join(s, and_(s.c.cell == lab.c.cell, s.c.record_id == lab.c.sample_record_id)))
        .where(lab.c.current.is_(True))
        .order_by(lab.c.id)
    )
    return [queries._json(r) for r in rows]


# --- drift (fleet/drift_store.py) ---


def drift_episodes(conn: Connection, cell: str, limit: int = 5) -> list[dict]:
    """The cell's latest drift episodes, newest first, with the evidence of the latest assessment."""
    e = models.DriftEpisode.__table__
    rows = conn.execute(select(e).where(e.c.cell == cell).order_by(desc(e.c.id)).limit(limit))
    out = []
    for r in rows:
        item = queries._json(r)
        for key in ("evidence", "last_evidence"):
            if isinstance(item[key], str):
                item[key] = json.loads(item[key])
        out.append(item)
    return out


# --- alerts ---


def alerts(
    conn: Connection, cell, severity, code, acked, limit: int, offset: int, after_id: int | None = None
) -> list[dict]:
    """Newest first; with after_id (the live stream) the ones after it, oldest first."""
    a = models.Alert.__table__
    where = [a.c.id > after_id] if after_id is not None else []
    for col, val in ((a.c.cell, cell), (a.c.severity, severity), (a.c.code, code)):
        if val:
            where.append(col == val)
    if acked is not None:
        where.append(a.c.acked_at.isnot(None) if acked else a.c.acked_at.is_(None))
    order = a.c.id if after_id is not None else desc(a.c.id)
    rows = conn.execute(select(a).where(and_(True, *where)).order_by(order).limit(limit).offset(offset))
    return [queries._json(r) for r in rows]


def last_alert_id(conn: Connection) -> int:
    a = models.Alert.__table__
    return int(conn.execute(select(func.coalesce(func.max(a.c.id), 0))).scalar_one())


def alert_filters(conn: Connection) -> dict[str, list[str]]:
    a, c = models.Alert.__table__, models.Cell.__table__
    return {
        "cells": [r[0] for r in conn.execute(select(c.c.name).order_by(c.c.name))],
        "codes": [r[0] for r in conn.execute(select(a.c.code).distinct().order_by(a.c.code).limit(200))],
    }
