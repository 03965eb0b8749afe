"""`qc_cloud rollout start|status|abort`: a staged rollout of a candidate model (shadow -> canary -> line -> fleet)
with automatic rollback, run by the fleet service (`qc_cloud serve`, see qc_cloud/fleet/rollout.py).

`start` signs here, with the private key, every manifest the plan can need: per stage the update targeted at
that stage's cells (role shadow or live), and per cell of a live stage the rollback (rollback_from = candidate)
to the version the cell runs now (its model_status / parts in the fleet database), from --previous packages.
The artifacts go to --artifact-dir (referenced by --url-base, else file://). The service only publishes these
stored manifests: the key never lives there. See docs/learning-loop.md for the plan format.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import tempfile
from pathlib import Path

from qc_cloud.commands.keys import add_passphrase_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rollout", help="staged rollout of a model with automatic rollback", description=__doc__)
    sub = p.add_subparsers(dest="rollout_action", required=True)
    start = sub.add_parser("start", help="sign every manifest of a plan and hand the rollout to the fleet service")
    start.add_argument("plan", type=Path, help="rollout plan (YAML .yaml/.yml or JSON)")
    start.add_argument("--package", type=Path, required=True, help="the candidate model package directory")
    start.add_argument(
        "--previous",
        type=Path,
        nargs="+",
        default=[],
        help="package directories of the versions the cells run now (the rollback targets)",
    )
    start.add_argument("--key", type=Path, required=True, help="Ed25519 private key (qc_cloud keys generate)")
    add_passphrase_argument(start)
    start.add_argument("--artifact-dir", type=Path, required=True, help="write the artifacts here (served by URL)")
    start.add_argument("--url-base", default="", help="http(s) base URL serving --artifact-dir (default file://)")
    start.add_argument("--by", default="", help="who starts it, for the record (default: the OS user)")
    start.add_argument("--dry-run", action="store_true", help="check and sign, print the stages, store nothing")
    status = sub.add_parser("status", help="list rollouts, or one rollout's stages, health and events")
    status.add_argument("id", type=int, nargs="?")
    status.add_argument("--json", action="store_true", help="machine-readable")
    abort = sub.add_parser("abort", help="stop a rollout: every cell on the candidate is rolled back")
    abort.add_argument("id", type=int)
    abort.add_argument("--by", default="", help="who aborts it, for the record (default: the OS user)")
    abort.add_argument("--note", default="", help="why (recorded)")
    for q in (start, status, abort):
        q.add_argument("--config", default=os.environ.get("QC_FLEET_SETTINGS_FILE"), help="fleet settings YAML")
        q.add_argument("--data-dir")
        q.add_argument("--database-url-file")
    p.set_defaults(func=main)


def _actor(args: argparse.Namespace) -> str:
    return f"user:{args.by or getpass.getuser()}"


def main(args: argparse.Namespace) -> int:
    from qc_cloud.fleet import db, rollout
    from qc_cloud.fleet import settings as settings_module
    from qc_contract.model_manifest import ManifestError
    from qc_contract.update_manifest import KeyFileError

    try:
        settings = settings_module.load(args.config, data_dir=args.data_dir, database_url_file=args.database_url_file)
        engine = db.make_engine(settings.resolved_database_url())
        db.upgrade(engine)
        try:
            if args.rollout_action == "start":
                return _start(args, engine)
            if args.rollout_action == "abort":
                with engine.begin() as conn:
                    rollout.request_abort(conn, args.id, _actor(args), args.note)
                print(f"rollout {args.id}: abort requested; the fleet service rolls back every cell on the candidate")
                return 0
            return _status(args, engine)
        finally:
            engine.dispose()
    except (settings_module.SettingsError, rollout.PlanError, rollout.RolloutError, ManifestError, KeyFileError) as exc:
        print(f"error: {exc}")
        return 2
    except (LookupError, ValueError) as exc:
        print(f"error: {exc}")
        return 2


def _start(args: argparse.Namespace, engine) -> int:
    from qc_cloud.commands.models_publish import pack_package, sign_update
    from qc_cloud.fleet import rollout
    from qc_contract import update_manifest
    from qc_contract.model_manifest import Manifest

    candidate = Manifest.load(args.package)
    candidate.verify_model_file(args.package)
    plan = rollout.load_plan(args.plan, default_name=candidate.version)
    previous: dict[str, Path] = {}
    for folder in args.previous:
        package = Manifest.load(folder)
        package.verify_model_file(folder)
        previous[package.version] = folder
    with engine.connect() as conn:
        versions = rollout.cell_versions(conn)
    stages = rollout.resolve_stages(plan, versions, candidate.version)
    live_cells = [c for s in stages if s.role == update_manifest.ROLE_LIVE for c in s.cells]
    missing = sorted({versions[c] for c in live_cells} - set(previous))
    if missing:
        raise rollout.PlanError(
            f"no --previous package for version(s) {missing}, which cells of live stages run now "
            "(their rollback target)"
        )
    private_key = update_manifest.load_private_key(args.key, update_manifest.load_passphrase(args.passphrase_file))
    with tempfile.TemporaryDirectory(prefix="qc-rollout-") as tmp:
        packed = {}
        for version, folder in [(candidate.version, args.package), *previous.items()]:
            _, size, sha256, source = pack_package(folder, version, Path(tmp), args.artifact_dir, args.url_base)
            packed[version] = (size, sha256, source)
    stage_manifests = [
        sign_update(candidate.version, *packed[candidate.version], private_key, plan.expires_in_h, s.cells, role=s.role)
        for s in stages
    ]
    rollbacks = {
        cell: sign_update(
            versions[cell],
            *packed[versions[cell]],
            private_key,
            plan.expires_in_h,
            [cell],
            rollback_from=candidate.version,
        )
        for cell in live_cells
    }
    for i, s in enumerate(stages):
        print(f"stage {i} {s.name} ({s.role}, min {s.min_parts} parts, watch {s.watch_s:g} s): {', '.join(s.cells)}")
    if args.dry_run:
        print(f"dry run: {len(stage_manifests)} stage and {len(rollbacks)} rollback manifests signed, none stored")
        return 0
    with engine.begin() as conn:
        rollout_id = rollout.create(conn, plan, candidate.version, stages, stage_manifests, rollbacks, _actor(args))
    print(f"rollout {rollout_id} of {candidate.version} started ({len(rollbacks)} rollbacks signed)")
    return 0


def _status(args: argparse.Namespace, engine) -> int:
    from qc_cloud.fleet import rollout

    with engine.connect() as conn:
        if args.id is None:
            rows = rollout.list_rollouts(conn)
            if args.json:
                print(json.dumps(rows, indent=1))
            for r in [] if args.json else rows:
                print(
                    f"{r['id']}\t{r['state']}\t{r['candidate_version']}\tstage {r['stage'] + 1}/{r['stages']}"
                    f"\t{r['created_by']}\t{r['created_at']}\t{r['reason']}"
                )
            return 0
        found = rollout.get_rollout(conn, args.id)
    if found is None:
        raise LookupError(f"no rollout {args.id}")
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    print(
        f"rollout {found['id']} ({found['name']}) of {found['candidate_version']}: {found['state']} {found['reason']}"
    )
    print(f"started by {found['created_by']} at {found['created_at']}")
    for s in found["stages"]:
        health = s["health"] or {}
        cand = health.get("candidate", {})
        broken = "; ".join(b["message"] for b in health.get("broken", []))
        print(
            f"  stage {s['idx']} {s['name']} ({s['role']}): {s['state']}, {cand.get('parts', 0)}/{s['min_parts']} "
            f"parts, cells {', '.join(s['cells'])}{'  BROKEN: ' + broken if broken else ''}"
        )
        if s["role"] == "shadow" and cand:
            print("    shadow: " + rollout.shadow_summary(cand, health.get("baseline", {})))
        if s["state"] == "watching" and health.get("waiting"):
            print("    waiting: " + "; ".join(health["waiting"]))
    for e in found["events"]:
        print(
            f"  {e['time']} {e['actor']}: {e['event']}" + (f" (stage {e['stage']})" if e["stage"] is not None else "")
        )
    return 0
