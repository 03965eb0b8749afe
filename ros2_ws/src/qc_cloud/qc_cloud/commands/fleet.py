"""`qc_cloud serve` (the fleet service), `qc_cloud fleet-token` (API tokens) and `qc_cloud broker-config`
(mosquitto password file + ACL for a fleet of cells). See docs/fleet.md."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="the fleet service: MQTT ingest + database + HTTP API", description=SERVE_DOC
    )
    p.add_argument("--config", default=os.environ.get("QC_FLEET_SETTINGS_FILE"), help="YAML settings file")
    p.add_argument("--data-dir", help="SQLite file, samples, bootstrap tokens (default ./fleet-data)")
    p.add_argument("--broker", dest="broker_url", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--broker-username")
    p.add_argument("--broker-password-file")
    p.add_argument("--broker-ca-file")
    p.add_argument("--database-url-file", help="file holding the database URL (postgresql+psycopg://...)")
    p.add_argument("--host", dest="api_host")
    p.add_argument("--port", dest="api_port", type=int)
    p.add_argument("--ingest-workers", type=int)
    p.add_argument("--api-workers", type=int)
    p.add_argument("--share-group")
    p.add_argument("--client-id")
    p.add_argument("--no-api", dest="api", action="store_const", const=False, help="ingest only")
    p.add_argument("--no-ingest", dest="ingest", action="store_const", const=False, help="HTTP API only")
    p.add_argument("--retention-days", type=int)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=serve)

    t = subparsers.add_parser("fleet-token", help="create or revoke a fleet API token")
    t.add_argument("action", choices=("create", "revoke"))
    t.add_argument("--name", required=True)
    t.add_argument("--role", choices=("read", "write"), default="read")
    t.add_argument("--config", default=os.environ.get("QC_FLEET_SETTINGS_FILE"))
    t.add_argument("--data-dir")
    t.add_argument("--database-url-file")
    t.set_defaults(func=fleet_token)

    d = subparsers.add_parser(
        "fleet-drift-reference",
        help="store a model package's validation histograms (manifest drift_reference) as the fleet's drift reference",
    )
    d.add_argument("package", help="model package directory (its manifest.json)")
    d.add_argument("--config", default=os.environ.get("QC_FLEET_SETTINGS_FILE"))
    d.add_argument("--data-dir")
    d.add_argument("--database-url-file")
    d.set_defaults(func=fleet_drift_reference)

    b = subparsers.add_parser("broker-config", help="mosquitto password file + ACL: each cell only its own topics")
    b.add_argument("--cells", nargs="+", required=True, help="site/line/cell names")
    b.add_argument("--out", type=Path, required=True, help="folder: passwd, acl, mosquitto-fleet.conf, passwords/")
    b.add_argument("--service-user", default="qc-fleet")
    b.add_argument("--verifier-user", default="qc-verifier", help="the cloud verifier workers' account")
    b.add_argument("--keep-passwords", action="store_true", help="keep the passwords already in --out/passwords")
    b.set_defaults(func=broker_config_command)


SERVE_DOC = """The fleet service: MQTT ingest (exactly once per record, acknowledged after commit) into SQLite or
PostgreSQL, and the HTTP API (OpenAPI at /docs). Settings: --config YAML < QC_FLEET_* environment < these flags;
secrets from files or the environment only. Needs requirements/fleet.txt. See docs/fleet.md."""


SERVE_KEYS = (
    "data_dir",
    "broker_url",
    "broker_username",
    "broker_password_file",
    "broker_ca_file",
    "database_url_file",
    "api_host",
    "api_port",
    "ingest_workers",
    "api_workers",
    "share_group",
    "client_id",
    "api",
    "ingest",
    "retention_days",
)


def _missing_packages() -> str:
    try:
        import alembic  # noqa: F401
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"error: the fleet service needs requirements/fleet.txt ({exc})"
    return ""


def serve(args: argparse.Namespace) -> int:
    if _missing_packages():
        print(_missing_packages(), file=sys.stderr)
        return 2
    from qc_cloud.fleet import settings as settings_module
    from qc_cloud.fleet.service import FleetService

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_module.load(args.config, **{k: getattr(args, k, None) for k in SERVE_KEYS})
        service = FleetService(settings).start()
    except (settings_module.SettingsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # database unreachable at start-up, ...
        print(f"error: cannot start: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if service.tokens_file:
        print(f"[fleet] API tokens (read, write) written to {service.tokens_file}", flush=True)
    stop = threading.Event()
    try:
        if settings.api:
            import uvicorn

            url = f"http://{settings.api_host}:{settings.api_port}"
            print(
                f"[fleet] API on {url} (OpenAPI: {url}/docs), database {service.engine.url.render_as_string()}",
                flush=True,
            )
            if settings.api_workers > 1:
                # uvicorn starts the API processes itself: they read the settings this process resolved
                for name, value in dataclasses.asdict(settings).items():
                    if name != "extra":
                        os.environ[f"QC_FLEET_{name.upper()}"] = str(value)
                uvicorn.run(
                    "qc_cloud.fleet.service:app_from_environment",
                    factory=True,
                    host=settings.api_host,
                    port=settings.api_port,
                    workers=settings.api_workers,
                    log_level="warning",
                )
            else:
                uvicorn.run(service.app(), host=settings.api_host, port=settings.api_port, log_level="warning")
        else:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            print(f"[fleet] ingesting with {settings.ingest_workers} worker(s)", flush=True)
            while not stop.wait(1.0):
                pass
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
        for w in service.workers:  # one line per ingest worker: what it did in this process's life
            st = w.stats
            print(
                f"[fleet] worker {w.client_id}: received {st.received} stored {st.stored} duplicates "
                f"{st.duplicates} quarantined {st.quarantined} batches {st.batches} retries {st.retries}",
                flush=True,
            )
    return 0


def fleet_token(args: argparse.Namespace) -> int:
    if _missing_packages():
        print(_missing_packages(), file=sys.stderr)
        return 2
    from qc_cloud.fleet import db
    from qc_cloud.fleet import settings as settings_module
    from qc_cloud.fleet.service import create_token, revoke_token

    try:
        settings = settings_module.load(args.config, data_dir=args.data_dir, database_url_file=args.database_url_file)
    except settings_module.SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine = db.make_engine(settings.resolved_database_url())
    db.upgrade(engine)
    if args.action == "create":
        print(create_token(engine, args.name, args.role))
        return 0
    count = revoke_token(engine, args.name)
    print(f"revoked {count} token(s) named {args.name}")
    return 0 if count else 1


def fleet_drift_reference(args: argparse.Namespace) -> int:
    """The validation reference of a model for every cell, until a cell's line reference is complete."""
    if _missing_packages():
        print(_missing_packages(), file=sys.stderr)
        return 2
    from qc_cloud.fleet import db, drift_store, rules
    from qc_cloud.fleet import settings as settings_module
    from qc_contract.model_manifest import Manifest, ManifestError

    try:
        manifest = Manifest.load(args.package)
        settings = settings_module.load(args.config, data_dir=args.data_dir, database_url_file=args.database_url_file)
    except (ManifestError, settings_module.SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ref = manifest.drift_reference
    if ref is None:
        print(
            f"error: the manifest of {manifest.version} has no drift_reference (trained before issue 22)",
            file=sys.stderr,
        )
        return 1
    engine = db.make_engine(settings.resolved_database_url())
    db.upgrade(engine)
    with engine.begin() as conn:
        drift_store.put_validation_reference(conn, manifest.version, ref.parts, ref.histograms, rules.utcnow())
    print(f"drift reference of {manifest.version}: {ref.parts} validation images")
    return 0


def broker_config_command(args: argparse.Namespace) -> int:
    from qc_cloud.fleet import broker_acl

    try:
        written = broker_acl.write(
            args.out,
            args.cells,
            args.service_user,
            keep_passwords=args.keep_passwords,
            verifier_user=args.verifier_user,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
