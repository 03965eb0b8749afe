"""The HTTP API (FastAPI; OpenAPI at /docs): a thin shell over queries.py. Token auth on every /api and
/metrics route (Authorization: Bearer <token>; roles read < write; tokens stored as SHA-256 hashes);
/healthz, /readyz and the OpenAPI pages are open. Parameters are bounded: out of range is a 4xx.

No `from __future__ import annotations` here: FastAPI reads the route annotations at run time."""

import csv
import io
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import Engine, select, text
from starlette.background import BackgroundTask

from qc_cloud.fleet import auth, models, queries, rollout, rules
from qc_cloud.fleet.samples import SampleStore

NAME = r"^[A-Za-z0-9_.-]{1,64}$"
CELL = r"^[A-Za-z0-9_.-]{1,64}/[A-Za-z0-9_.-]{1,64}/[A-Za-z0-9_.-]{1,64}$"
VERDICTS = ("NORMAL", "REINSPECT", "DEFECTIVE", "NOT_INSPECTED")
SEVERITIES = ("INFO", "WARN", "ERROR", "CRITICAL")
EARLIEST, LATEST = datetime(1970, 1, 1), datetime(2200, 1, 1)
MAX_EXPORT_DAYS = 31
MAX_TREND_DAYS = 400

Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="rows to skip")]
Site = Annotated[str, Path(pattern=NAME)]


class AckBody(BaseModel):
    note: str = Field(default="", max_length=1024)


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    if not EARLIEST <= value <= LATEST:
        raise HTTPException(400, f"{name} must be between {EARLIEST:%Y} and {LATEST:%Y}")
    return value


def _window(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    start, end = _utc(start, "start"), _utc(end, "end")
    if start is not None and end is not None and start >= end:
        raise HTTPException(400, "start must be before end")
    return start, end


class TokenCache:
    """Token hash -> (role, name), cached 10 s (a revoked token stops working within that)."""

    def __init__(self, engine: Engine, ttl_s: float = 10.0) -> None:
        self.engine, self.ttl_s = engine, ttl_s
        self._cache: dict[str, tuple[float, tuple[str, str] | None]] = {}

    def lookup(self, token: str) -> tuple[str, str] | None:
        digest = auth.hash_token(token)
        hit = self._cache.get(digest)
        if hit and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        t = models.ApiToken.__table__
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.c.role, t.c.name).where(t.c.token_hash == digest, t.c.revoked_at.is_(None))
            ).first()
        value = (row.role, row.name) if row else None
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic(), value)
        return value


class _InstanceHeader:
    """Pure ASGI middleware (no per-request task, unlike @app.middleware): adds X-QC-Fleet-Instance."""

    def __init__(self, app: Any, value: bytes) -> None:
        self.app, self.value = app, value

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-qc-fleet-instance", self.value)]
            await send(message)

        await self.app(scope, receive, send_with_header)


def create_app(engine: Engine, samples: SampleStore, status: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    app = FastAPI(
        title="QC fleet service",
        version="1",
        description="Every cell's records: parts, KPIs, alerts, rejects, process state, models, gaps. "
        "Authorization: Bearer <token> (read or write role). See docs/fleet.md.",
    )
    tokens = TokenCache(engine)
    bearer = HTTPBearer(auto_error=False)
    # A random name of this API process (X-QC-Fleet-Instance on every response): tells the processes of
    # `serve --api-workers N` apart in logs and tests, without giving away anything about the host.
    instance = secrets.token_hex(6)
    app.add_middleware(_InstanceHeader, value=instance.encode())

    def principal(creds: HTTPAuthorizationCredentials | None, needed: str) -> str:
        if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        found = tokens.lookup(creds.credentials[:512])
        if found is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        role, name = found
        if not auth.allows(role, needed):
            raise HTTPException(403, f"this token's role ({role}) cannot {needed}")
        return name

    def reader(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        return principal(creds, "read")

    def writer(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
        return principal(creds, "write")

    Reader = Annotated[str, Depends(reader)]  # noqa: N806
    Writer = Annotated[str, Depends(writer)]  # noqa: N806

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        return JSONResponse({"detail": f"value out of range: {exc}"}, status_code=400)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", tags=["operations"])
    def readyz(response: Response) -> dict:
        problems = []
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            problems.append(f"database: {type(exc).__name__}")
        ingest = status() if status else {}
        if ingest.get("workers") and not all(w["connected"] for w in ingest["workers"]):
            problems.append("broker: an ingest worker is not connected")
        if problems:
            response.status_code = 503
        return {"ready": not problems, "problems": problems}

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    def metrics(_: Reader) -> str:
        lines = []
        for w in (status() if status else {}).get("workers", []):
            for key in ("received", "stored", "duplicates", "quarantined", "batches", "retries"):
                lines.append(f'qc_fleet_ingest_{key}_total{{worker="{w["index"]}"}} {w[key]}')
            lines.append(f'qc_fleet_ingest_connected{{worker="{w["index"]}"}} {int(w["connected"])}')
        return "\n".join(lines) + "\n"

    @app.get("/api/v1/status", tags=["operations"])
    def service_status(_: Reader) -> dict:
        with engine.connect() as conn:
            return {"totals": queries.totals(conn), "ingest": status() if status else {}}

    @app.get("/api/v1/cells", tags=["fleet"])
    def cells(_: Reader) -> dict:
        with engine.connect() as conn:
            return {"items": queries.fleet(conn, rules.utcnow())}

    def cell_of(site: str, line: str, cell: str, conn) -> str:
        name = f"{site}/{line}/{cell}"
        if not queries.cell_exists(conn, name):
            raise HTTPException(404, f"no cell {name}")
        return name

    @app.get("/api/v1/cells/{site}/{line}/{cell}/trend", tags=["fleet"])
    def cell_trend(
        _: Reader,
        site: Site,
        line: Site,
        cell: Site,
        start: datetime | None = None,
        end: datetime | None = None,
        bucket_hours: Annotated[int, Query(ge=1, le=24 * 7)] = 1,
    ) -> dict:
        start, end = _window(start, end)
        end = end or rules.utcnow()
        start = start or end - timedelta(hours=24)
        if start >= end:
            raise HTTPException(400, "start must be before end")
        if end - start > timedelta(days=MAX_TREND_DAYS):
            raise HTTPException(400, f"at most {MAX_TREND_DAYS} days per request")
        with engine.connect() as conn:
            name = cell_of(site, line, cell, conn)
            items = queries.trend(conn, name, start, end, bucket_hours)
        return {
            "cell": name,
            "start": queries.iso(start),
            "end": queries.iso(end),
            "bucket_hours": bucket_hours,
            "items": items,
        }

    @app.get("/api/v1/cells/{site}/{line}/{cell}/kpis", tags=["fleet"])
    def cell_kpis(
        _: Reader,
        site: Site,
        line: Site,
        cell: Site,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict:
        start, end = _window(start, end)
        with engine.connect() as conn:
            name = cell_of(site, line, cell, conn)
            return queries.page(queries.kpis(conn, name, start, end, limit, offset), limit, offset)

    @app.get("/api/v1/cells/{site}/{line}/{cell}/shadow", tags=["fleet"])
    def cell_shadow(
        _: Reader,
        site: Site,
        line: Site,
        cell: Site,
        version: Annotated[str | None, Query(max_length=256, description="one shadow version (default: all)")] = None,
        start: datetime | None = None,
        end: datetime | None = None,
        reinspect_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
        defective_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.8,
        bins: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> dict:
        """Shadow runs of a cell: per shadow version, its agreement with the live verdicts (the shadow's score put
        into the verdict bands given here, by default the decision node's), the score histogram and counts."""
        if reinspect_threshold > defective_threshold:
            raise HTTPException(400, "reinspect_threshold must not exceed defective_threshold")
        start, end = _window(start, end)
        with engine.connect() as conn:
            name = cell_of(site, line, cell, conn)
            items = queries.shadow_report(
                conn, name, version, start, end, reinspect_threshold, defective_threshold, bins
            )
        return {
            "cell": name,
            "thresholds": {"reinspect": reinspect_threshold, "defective": defective_threshold},
            "items": items,
        }

    @app.get("/api/v1/parts", tags=["parts"])
    def parts(
        _: Reader,
        cell: Annotated[str | None, Query(pattern=CELL)] = None,
        start: datetime | None = None,
        end: datetime | None = None,
        verdict: Annotated[str | None, Query(pattern="^(" + "|".join(VERDICTS) + ")$")] = None,
        model_version: Annotated[str | None, Query(max_length=256)] = None,
        part_id: Annotated[str | None, Query(max_length=256)] = None,
        limit: Limit = 100,
        offset: Offset = 0,
        cursor: Annotated[
            str | None,
            Query(
                max_length=512,
                description="keyset pagination: the next_cursor of the previous page (instead of offset; "
                "as fast on page 10,000 as on page 1)",
            ),
        ] = None,
    ) -> dict:
        start, end = _window(start, end)
        after = None
        if cursor is not None:
            if offset:
                raise HTTPException(400, "give either cursor or offset, not both")
            try:
                after = queries.decode_cursor(cursor)
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
            _utc(after[0], "cursor time")
        with engine.connect() as conn:
            items = queries.parts(
                conn,
                cell=cell,
                start=start,
                end=end,
                verdict=verdict,
                model_version=model_version,
                part_id=part_id,
                limit=limit,
                offset=offset,
                after=after,
            )
        result = queries.page(items, limit, offset)
        result["next_cursor"] = queries.encode_cursor(items[-1]) if len(items) == limit else None
        if after is not None:
            result["next_offset"] = None  # a cursor page continues by cursor
        return result

    @app.get("/api/v1/parts/{site}/{line}/{cell}/{part_id}", tags=["parts"])
    def part_story(
        _: Reader, site: Site, line: Site, cell: Site, part_id: Annotated[str, Path(max_length=256)]
    ) -> dict:
        with engine.connect() as conn:
            story = queries.part_story(conn, f"{site}/{line}/{cell}", part_id)
        if story is None:
            raise HTTPException(404, f"no part {part_id} of {site}/{line}/{cell}")
        return story

    @app.get("/api/v1/alerts", tags=["alerts"])
    def alerts(
        _: Reader,
        cell: Annotated[str | None, Query(pattern=CELL)] = None,
        severity: Annotated[str | None, Query(pattern="^(" + "|".join(SEVERITIES) + ")$")] = None,
        acked: bool | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict:
        start, end = _window(start, end)
        with engine.connect() as conn:
            items = queries.alerts(
                conn, cell=cell, severity=severity, acked=acked, start=start, end=end, limit=limit, offset=offset
            )
        return queries.page(items, limit, offset)

    @app.post("/api/v1/alerts/{alert_id}/ack", tags=["alerts"])
    def ack_alert(who: Writer, alert_id: Annotated[int, Path(ge=1, le=2**62)], body: AckBody | None = None) -> dict:
        with engine.begin() as conn:
            row = queries.ack_alert(conn, alert_id, who, (body or AckBody()).note, rules.utcnow())
        if row is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return row

    @app.get("/api/v1/rollouts", tags=["rollouts"])
    def rollouts(_: Reader, limit: Limit = 100) -> dict:
        with engine.connect() as conn:
            return {"rollouts": rollout.list_rollouts(conn, limit)}

    @app.get("/api/v1/rollouts/{rollout_id}", tags=["rollouts"])
    def rollout_detail(_: Reader, rollout_id: Annotated[int, Path(ge=1, le=2**62)]) -> dict:
        with engine.connect() as conn:
            found = rollout.get_rollout(conn, rollout_id)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return found

    @app.post("/api/v1/rollouts/{rollout_id}/abort", tags=["rollouts"])
    def rollout_abort(
        who: Writer, rollout_id: Annotated[int, Path(ge=1, le=2**62)], body: AckBody | None = None
    ) -> dict:
        try:
            with engine.begin() as conn:
                return rollout.request_abort(conn, rollout_id, f"token:{who}", (body or AckBody()).note)
        except LookupError:
            raise HTTPException(404, f"no rollout {rollout_id}") from None
        except rollout.RolloutError as exc:
            raise HTTPException(409, str(exc)) from None

    @app.get("/api/v1/gaps", tags=["ingest"])
    def gaps(
        _: Reader,
        cell: Annotated[str | None, Query(pattern=CELL)] = None,
        type: Annotated[str | None, Query(pattern="^(" + "|".join(rules.STREAM_TYPES) + ")$")] = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> dict:
        with engine.connect() as conn:
            return queries.page(queries.gaps(conn, cell, type, limit, offset), limit, offset)

    @app.get("/api/v1/streams", tags=["ingest"])
    def streams(
        _: Reader, cell: Annotated[str | None, Query(pattern=CELL)] = None, limit: Limit = 100, offset: Offset = 0
    ) -> dict:
        with engine.connect() as conn:
            return queries.page(queries.streams(conn, cell, limit, offset), limit, offset)

    @app.get("/api/v1/quarantine", tags=["ingest"])
    def quarantine(_: Reader, limit: Limit = 100, offset: Offset = 0) -> dict:
        with engine.connect() as conn:
            return queries.page(queries.quarantine(conn, limit, offset), limit, offset)

    @app.get("/api/v1/samples/{sha256}", tags=["parts"], response_class=Response)
    def sample(_: Reader, sha256: Annotated[str, Path(pattern="^[0-9a-f]{64}$")]) -> Response:
        data = samples.get(sha256)
        if data is None:
            raise HTTPException(404, "no such sample")
        return Response(data, media_type="image/jpeg")

    def export_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
        start, end = _window(start, end)
        if end - start > timedelta(days=MAX_EXPORT_DAYS):
            raise HTTPException(400, f"at most {MAX_EXPORT_DAYS} days per export")
        return start, end

    @app.get("/api/v1/export/parts.csv", tags=["export"], response_class=StreamingResponse)
    def export_csv(
        _: Reader, start: datetime, end: datetime, cell: Annotated[str | None, Query(pattern=CELL)] = None
    ) -> StreamingResponse:
        start, end = export_window(start, end)

        def body() -> Iterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(queries.PART_COLUMNS)
            with engine.connect() as conn:
                for chunk in queries.export_parts(conn, start, end, cell):
                    for row in chunk:
                        writer.writerow([_csv_value(v) for v in row])
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue()

        name = f"parts-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.csv"
        return StreamingResponse(
            body(), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    @app.get("/api/v1/export/parts.parquet", tags=["export"], response_class=Response)
    def export_parquet(
        _: Reader, start: datetime, end: datetime, cell: Annotated[str | None, Query(pattern=CELL)] = None
    ) -> Response:
        start, end = export_window(start, end)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise HTTPException(501, "Parquet export needs pyarrow (requirements/fleet.txt)") from None
        fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix="qc-fleet-export-")
        os.close(fd)
        schema = pa.schema([(name, PARQUET_TYPES.get(name, pa.string())) for name in queries.PART_COLUMNS])
        try:
            with pq.ParquetWriter(tmp, schema) as out, engine.connect() as conn:
                for chunk in queries.export_parts(conn, start, end, cell):
                    columns = list(zip(*chunk, strict=True))
                    out.write_table(
                        pa.table(
                            {
                                name: [_parquet_value(v) for v in values]
                                for name, values in zip(queries.PART_COLUMNS, columns, strict=True)
                            },
                            schema=schema,
                        )
                    )
        except BaseException:
            os.unlink(tmp)
            raise
        name = f"parts-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.parquet"
        return FileResponse(
            tmp, media_type="application/vnd.apache.parquet", filename=name, background=BackgroundTask(os.unlink, tmp)
        )

    return app


def _csv_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return queries.iso(value)
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return value


def _parquet_value(value: Any) -> Any:
    return ";".join(str(v) for v in value) if isinstance(value, list) else value


def _parquet_types() -> dict[str, Any]:
    try:
        import pyarrow as pa
    except ImportError:
        return {}
    ts, f, i = pa.timestamp("us"), pa.float64(), pa.int64()
    return {
        "time": ts,
        "capture_time": ts,
        "decision_time": ts,
        "received_at": ts,
        "defect_probability": f,
        "process_anomaly_score": f,
        "capture_to_decision_ms": f,
        "process_flags": i,
        "encoder_count": i,
        "seq": i,
    }


PARQUET_TYPES = _parquet_types()
