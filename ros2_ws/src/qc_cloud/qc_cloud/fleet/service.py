"""`qc_cloud serve`: migrations, ingest workers, upkeep (partitions, retention) and the HTTP API in one
process, or any part of it (settings api / ingest) for a fleet of processes on PostgreSQL."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from qc_cloud.fleet import auth, db, models, rules
from qc_cloud.fleet.samples import SampleStore
from qc_cloud.fleet.settings import FleetSettings
from qc_cloud.fleet.store import Store
from qc_cloud.fleet.worker import IngestWorker

log = logging.getLogger("qc_fleet.service")
TOKENS_FILE = "api-tokens.txt"


def create_token(engine: Engine, name: str, role: str) -> str:
    """A new API token (returned once, stored hashed)."""
    if role not in auth.ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(auth.ROLES)}")
    token = auth.new_token()
    with engine.begin() as conn:
        conn.execute(
            models.ApiToken.__table__.insert().values(
                name=name[:128], role=role, token_hash=auth.hash_token(token), created_at=rules.utcnow()
            )
        )
    return token


def revoke_token(engine: Engine, name: str) -> int:
    t = models.ApiToken.__table__
    with engine.begin() as conn:
        return conn.execute(
            t.update().where(t.c.name == name, t.c.revoked_at.is_(None)).values(revoked_at=rules.utcnow())
        ).rowcount


def bootstrap_tokens(engine: Engine, data_dir: Path) -> Path | None:
    """First start without any token: a read and a write token, written to <data_dir>/api-tokens.txt (0600)."""
    with engine.connect() as conn:
        if conn.execute(select(func.count()).select_from(models.ApiToken.__table__)).scalar_one():
            return None
    path = data_dir / TOKENS_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"{role} {create_token(engine, f'bootstrap-{role}', role)}" for role in auth.ROLES]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def read_tokens(data_dir: str | Path) -> dict[str, str]:
    """role -> token from a bootstrap tokens file."""
    path = Path(data_dir) / TOKENS_FILE
    return dict(line.split(" ", 1) for line in path.read_text().split("\n") if " " in line)


class FleetService:
    """Everything but the HTTP server loop: tests and `serve` start()/stop() it and mount app()."""

    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        self.engine = db.make_engine(settings.resolved_database_url(), pool_size=max(5, settings.ingest_workers + 4))
        self.samples = SampleStore(settings.samples_dir)
        self.workers: list[IngestWorker] = []
        self._stop = threading.Event()
        self._upkeep: threading.Thread | None = None
        self.tokens_file: Path | None = None
        self.rollouts = None  # rollout_runner.RolloutRunner, in the process that ingests

    def prepare(self) -> FleetService:
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        db.upgrade(self.engine)
        if self.settings.bootstrap_tokens:
            self.tokens_file = bootstrap_tokens(self.engine, Path(self.settings.data_dir))
        return self

    def start(self) -> FleetService:
        self.prepare()
        if self.settings.ingest:
            store = Store(
                self.engine,
                self.samples,
                self.settings.quarantine_max_bytes,
                self.settings.retention_days,
                self.settings.drift_settings(),
            )
            for i in range(self.settings.ingest_workers):
                self.workers.append(IngestWorker(self.settings, store, i).start())
            self._upkeep = threading.Thread(target=self._upkeep_loop, name="fleet-upkeep", daemon=True)
            self._upkeep.start()
            if self.settings.rollout_interval_s > 0:
                from qc_cloud.fleet.rollout_runner import RolloutRunner

                self.rollouts = RolloutRunner(self.settings, self.engine).start()
        return self

    def _upkeep_loop(self) -> None:
        from datetime import timedelta

        passes = 0
        while not self._stop.is_set():
            now = rules.utcnow()
            try:
                days = {(now + timedelta(days=d)).date() for d in range(-1, self.settings.partition_days_ahead + 1)}
                db.ensure_partitions(self.engine, days)
                dropped = db.apply_retention(
                    self.engine,
                    now,
                    self.settings.retention_days,
                    self.samples,
                    sweep_files=passes % 24 == 0,  # every file on disk: once a day (a listing of the whole store)
                )
                passes += 1
                if any(dropped.values()):
                    log.info("retention (%d days): dropped %s", self.settings.retention_days, dropped)
            except Exception as exc:  # the database may be down: ingest retries on its own
                log.warning("upkeep failed: %s", exc)
            self._stop.wait(3600)

    def status(self) -> dict[str, Any]:
        return {
            "workers": [
                {
                    "index": w.index,
                    "connected": w.stats.connected,
                    "received": w.stats.received,
                    "stored": w.stats.stored,
                    "duplicates": w.stats.duplicates,
                    "quarantined": w.stats.quarantined,
                    "batches": w.stats.batches,
                    "retries": w.stats.retries,
                    "last_error": w.stats.last_error,
                }
                for w in self.workers
            ],
            "rollout_controller": None
            if self.rollouts is None
            else {"interval_s": self.rollouts.interval_s, "last_error": self.rollouts.last_error},
        }

    def app(self):
        from qc_cloud.dashboard import web
        from qc_cloud.fleet.api import create_app

        app = create_app(self.engine, self.samples, self.status)
        return web.mount(app, self.engine, self.samples, Path(self.settings.data_dir) / "exports")

    def stop(self) -> None:
        self._stop.set()
        if self.rollouts is not None:
            self.rollouts.stop()
        for worker in self.workers:
            worker.stop()
        self.engine.dispose()


def app_from_environment():
    """uvicorn factory for API worker processes (`serve --api-workers N`): settings from QC_FLEET_*."""
    from qc_cloud.fleet import settings as settings_module
    from qc_cloud.fleet.api import create_app

    s = settings_module.load(os.environ.get("QC_FLEET_SETTINGS_FILE") or None)
    from qc_cloud.dashboard import web

    engine = db.make_engine(s.resolved_database_url())
    samples = SampleStore(s.samples_dir)
    return web.mount(create_app(engine, samples), engine, samples, Path(s.data_dir) / "exports")
