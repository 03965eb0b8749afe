"""Drift alerts in the fleet database, inside the ingest transaction that stored the KPI records (store.py).

For each cell whose new KPI records carry `distributions`: grow the cell's line reference of the model (the
first `reference_parts` parts it ran the model on), pick the reference (the line one once complete, else the
model's validation reference from its manifest, cell "*"), sum the recent window, assess (drift.py) and open or
clear the cell's drift episodes. Opening an episode inserts one row in `alerts` (source fleet/drift, code
INPUT_DRIFT / SCORE_DRIFT, the evidence in drift_episodes.evidence); clearing it acknowledges that alert as
"cleared" by fleet/drift.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from qc_cloud.fleet import drift, models
from qc_contract.drift import Histograms, check_layout

SOURCE = "fleet/drift"
RECENT_RECORDS = 500  # the window is summed from at most this many newest KPI records


def put_validation_reference(conn: Connection, model_version: str, parts: int, histograms: dict, now: datetime) -> None:
    """Store (or replace) a model's validation reference (its manifest's drift_reference block), for every cell."""
    check_layout(histograms)
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    table = models.DriftReference.__table__
    values = {
        "cell": "*",
        "model_version": model_version,
        "source": "validation",
        "parts": int(parts),
        "histograms": histograms,
        "complete": True,
        "created_at": now,
        "completed_at": now,
    }
    stmt = insert(table).values(values)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["cell", "model_version", "source"],
            set_={k: stmt.excluded[k] for k in ("parts", "histograms", "completed_at")},
        )
    )


def assess_cells(conn: Connection, insert, kpis: list, now: datetime, settings: drift.DriftSettings) -> dict[str, int]:
    """The new KPI records of one batch (rules.Record, oldest first) -> {cell: id of the last alert inserted}."""
    by_cell: dict[str, list] = defaultdict(list)
    for r in kpis:
        if r.body.get("distributions"):
            by_cell[r.cell].append(r)
    alerts: dict[str, int] = {}
    for cell in sorted(by_cell):
        records = sorted(by_cell[cell], key=lambda r: (r.time or now, r.body["seq"]))
        version = records[-1].body["distributions"]["model_version"]
        line = _grow_line_reference(conn, insert, cell, version, records, now, settings)
        reference = line if line is not None and line["complete"] else _validation_reference(conn, version)
        if reference is None:
            continue
        recent = drift.window(_recent(conn, cell, version), settings.window_parts)
        about = {"source": reference["source"], "model_version": version}
        for a in drift.assess(reference["histograms"], reference["parts"], about, recent, settings):
            alert_id = _episode(conn, cell, version, reference["source"], a, now, settings)
            if alert_id is not None:
                alerts[cell] = max(alert_id, alerts.get(cell, 0))
    return alerts


def _grow_line_reference(conn, insert, cell, version, records, now, settings) -> dict[str, Any] | None:
    t = models.DriftReference.__table__
    row = (
        conn.execute(select(t).where(t.c.cell == cell, t.c.model_version == version, t.c.source == "line"))
        .mappings()
        .first()
    )
    if row is not None and row["complete"]:
        return dict(row)
    total = Histograms()
    if row is not None:
        total.merge(row["histograms"], row["parts"])
    for r in records:
        d = r.body["distributions"]
        if d["model_version"] == version and total.parts < settings.reference_parts:
            total.merge(d["histograms"], d["parts"])
    complete = total.parts >= settings.reference_parts
    values = {"parts": total.parts, "histograms": total.counts, "complete": complete}
    values["completed_at"] = now if complete else None
    if row is None:
        conn.execute(insert(t).values(cell=cell, model_version=version, source="line", created_at=now, **values))
    else:
        conn.execute(update(t).where(t.c.id == row["id"]).values(**values))
    return {"source": "line", **values}


def _validation_reference(conn, version) -> dict[str, Any] | None:
    t = models.DriftReference.__table__
    row = (
        conn.execute(select(t).where(t.c.cell == "*", t.c.model_version == version, t.c.source == "validation"))
        .mappings()
        .first()
    )
    return dict(row) if row is not None else None


def _recent(conn, cell, version):
    """(histograms, parts, time) of the cell's KPI records of `version`, newest first."""
    k = models.Kpi.__table__
    rows = conn.execute(
        select(k.c.distributions, k.c.time)
        .where(k.c.cell == cell, k.c.distributions.is_not(None))
        .order_by(k.c.time.desc(), k.c.record_id.desc())
        .limit(RECENT_RECORDS)
    )
    for distributions, time in rows:
        d = json.loads(distributions) if isinstance(distributions, str) else distributions
        if d and d.get("model_version") == version:
            yield d["histograms"], d["parts"], time.isoformat() + "Z" if time else None


def _episode(conn, cell, version, source, a: drift.Assessment, now, settings) -> int | None:
    e, alerts = models.DriftEpisode.__table__, models.Alert.__table__
    open_row = conn.execute(
        select(e.c.id, e.c.alert_id, e.c.peak_psi).where(e.c.cell == cell, e.c.code == a.code, e.c.cleared_at.is_(None))
    ).first()
    step = drift.transition(open_row is not None, a, settings)
    if step == "open":
        episode_id = conn.execute(
            e.insert()
            .values(
                cell=cell,
                code=a.code,
                model_version=version,
                opened_at=now,
                peak_psi=a.psi,
                evidence=a.evidence,
                last_evidence=a.evidence,
            )
            .returning(e.c.id)
        ).scalar_one()
        alert_id = conn.execute(
            alerts.insert()
            .values(
                cell=cell,
                record_id=f"drift-{episode_id}",
                time=now,
                severity="WARN",
                source=SOURCE,
                code=a.code,
                message=drift.message(a, version, source)[:4096],
                part_id="",
            )
            .returning(alerts.c.id)
        ).scalar_one()
        conn.execute(update(e).where(e.c.id == episode_id).values(alert_id=alert_id))
        return alert_id
    if open_row is not None and a.judged:
        values: dict[str, Any] = {"last_evidence": a.evidence, "peak_psi": max(open_row.peak_psi, a.psi)}
        if step == "clear":
            values["cleared_at"] = now
            if open_row.alert_id is not None:
                conn.execute(
                    update(alerts)
                    .where(alerts.c.id == open_row.alert_id, alerts.c.acked_at.is_(None))
                    .values(acked_at=now, acked_by=SOURCE, ack_note=f"cleared: {a.statistic} PSI {a.psi:.3f}")
                )
        conn.execute(update(e).where(e.c.id == open_row.id).values(**values))
    return None
