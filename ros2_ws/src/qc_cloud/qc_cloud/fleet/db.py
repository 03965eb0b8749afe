"""Engines, migrations and PostgreSQL partition upkeep (daily `parts` partitions, retention by partition)."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.engine import Connection

from qc_cloud.fleet import models
from qc_cloud.fleet.samples import SampleStore

log = logging.getLogger("qc_fleet.db")
# Serialises partition DDL between processes (any constant; pg_advisory_xact_lock).
_PARTITION_LOCK = 0x71C0F1EE7


def make_engine(url: str, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers (the API) never block the ingest writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash loses nothing committed
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def is_postgres(engine_or_conn: Engine | Connection) -> bool:
    return engine_or_conn.dialect.name == "postgresql"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "qc_cloud.fleet:migrations")
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        if is_postgres(conn):  # two processes starting at once: one migrates, the other waits
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PARTITION_LOCK + 1})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def partition_name(day: date) -> str:
    return f"parts_p{day:%Y%m%d}"


def existing_partitions(conn: Connection) -> set[str]:
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'parts'"
        )
    )
    return {r[0] for r in rows}


def ensure_partitions(engine: Engine, days: set[date], known: set[str] | None = None) -> set[str]:
    """Create the daily partitions of `parts` for these days (PostgreSQL only). Rows already in the default
    partition for such a day are moved into the new one. Returns the partitions that now exist."""
    known = set() if known is None else known
    wanted = {d for d in days if partition_name(d) not in known}
    if not wanted or not is_postgres(engine):
        return known
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PARTITION_LOCK})
        have = existing_partitions(conn)
        for day in sorted(wanted):
            name = partition_name(day)
            if name in have:
                continue
            start, end = (
                datetime.combine(day, datetime.min.time()),
                datetime.combine(day + timedelta(1), datetime.min.time()),
            )
            bounds = {"a": start, "b": end}
            conn.execute(text(f"CREATE TABLE {name} (LIKE parts INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
            conn.execute(
                text(
                    f"WITH moved AS (DELETE FROM parts_default WHERE time >= :a AND time < :b RETURNING *) "
                    f"INSERT INTO {name} SELECT * FROM moved"
                ),
                bounds,
            )
            conn.execute(text(f"ALTER TABLE parts ATTACH PARTITION {name} FOR VALUES FROM ('{start}') TO ('{end}')"))
            have.add(name)
            log.info("created partition %s", name)
        known |= have
    return known


def apply_retention(
    engine: Engine,
    now: datetime,
    retention_days: int,
    samples: SampleStore | None = None,
    grace_s: float = 3600.0,
    sweep_files: bool = False,
) -> dict[str, int]:
    """Drop what is older than the retention period: whole `parts` partitions on PostgreSQL (and rows of the
    default partition), rows by time elsewhere. With `samples`, also the image files that no row references
    any more once the expired sample rows are gone (files are content-addressed: one file may serve several
    rows, of which only some expired); with `sweep_files`, every file on disk is such a candidate (the files
    spared by an earlier pass's grace period, or orphaned by a crash) and dead partial writes go. Returns what
    was dropped."""
    cutoff = now - timedelta(days=retention_days)
    dropped: dict[str, int] = {}
    expired_images: set[str] = set()
    with engine.begin() as conn:
        if is_postgres(conn):
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PARTITION_LOCK})
            for name in sorted(existing_partitions(conn)):
                if not name.startswith("parts_p"):
                    continue
                day = datetime.strptime(name[len("parts_p") :], "%Y%m%d")
                if day + timedelta(days=1) <= cutoff:
                    conn.execute(text(f"DROP TABLE {name}"))
                    dropped[name] = 1
        else:
            dropped["parts"] = conn.execute(models.Part.__table__.delete().where(models.Part.time < cutoff)).rowcount
        if is_postgres(conn):
            dropped["parts_default"] = conn.execute(
                text("DELETE FROM parts_default WHERE time < :c"), {"c": cutoff}
            ).rowcount
        for table in (
            models.Kpi,
            models.RejectEvent,
            models.ProcessState,
            models.VerifyResult,
            models.ReconcileFinding,
            models.Verification,
        ):
            dropped[table.__tablename__] = conn.execute(table.__table__.delete().where(table.time < cutoff)).rowcount
        s = models.Sample.__table__
        gone = conn.execute(s.delete().where(s.c.time < cutoff).returning(s.c.sha256, s.c.heatmap_sha256)).all()
        dropped["samples"] = len(gone)
        expired_images.update(digest for row in gone for digest in row if digest is not None)
        dropped["part_rollups"] = conn.execute(
            models.PartRollup.__table__.delete().where(models.PartRollup.hour < cutoff)
        ).rowcount
        dropped["record_ids"] = conn.execute(
            models.RecordId.__table__.delete().where(models.RecordId.received_at < cutoff)
        ).rowcount
    if samples is not None:  # after the commit: only rows that are really gone release their files
        if sweep_files:
            expired_images |= samples.digests()
            dropped["sample_temporaries"] = samples.remove_stale_temporaries(grace_s)
        dropped["sample_files"] = collect_sample_files(engine, samples, expired_images, grace_s)
    return dropped


def collect_sample_files(engine: Engine, samples: SampleStore, candidates: set[str], grace_s: float = 3600.0) -> int:
    """Delete the files among `candidates` (SHA-256 digests) that no sample row references, as image or heatmap.
    Returns how many."""
    s = models.Sample.__table__
    wanted = sorted(candidates)
    deleted = 0
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        with engine.connect() as conn:
            referenced = set(conn.execute(select(s.c.sha256).where(s.c.sha256.in_(chunk))).scalars())
            referenced.update(conn.execute(select(s.c.heatmap_sha256).where(s.c.heatmap_sha256.in_(chunk))).scalars())
        deleted += sum(samples.discard(sha, grace_s) for sha in chunk if sha not in referenced)
    return deleted
