"""`qc_cloud publish-model`: sign a model package and publish it to a cell as an update.

The package directory (manifest.json, model.onnx, ...) is checked, packed into a tar.gz artifact, described
by an update manifest (version, sha256, size, artifact location) signed with Ed25519, and published on
qc/<site>/<line>/<cell>/model/update. The artifact travels either by URL (file:// on a shared or local
path, or http(s):// where you serve --artifact-dir) or in chunks over MQTT (--chunks). See docs/mqtt.md.

Every manifest expires (--expires-in-h, default three weeks) and names the cells it is for: by default the
cell it is published to; --targets for site/line/cell patterns (each segment a glob that never crosses '/');
--all-cells, explicitly, for every cell. --rollback-from VERSION signs a rollback from that exact active
version down to this package's (older) version: the only way a cell accepts an older model.
--shadow signs the update with role "shadow": the cell verifies and installs it like a live one but runs it
beside the live model, scoring parts in spare time without deciding (docs/learning-loop.md, "Shadow runs").
Publishing the same package again without --shadow promotes it: the artifact is byte-identical (the pack is
reproducible), so the cell takes its stored copy and downloads nothing; the same holds for a --rollback-from
to a version the cell still holds.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from qc_cloud.cell_link import LinkError, add_broker_arguments, add_cell_arguments, broker_from_args, close, connect
from qc_cloud.commands.keys import add_passphrase_argument
from qc_contract import artifact, update_manifest
from qc_contract.model_manifest import Manifest, ManifestError
from qc_contract.topics import CellId

DEFAULT_EXPIRY_H = 21 * 24.0
MAX_EXPIRY_H = 366 * 24.0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish-model", help="sign a model package and publish it as an update", description=__doc__
    )
    p.add_argument("package", type=Path, help="model package directory (manifest.json, model.onnx, ...)")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (qc_cloud keys generate)")
    add_passphrase_argument(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--artifact-dir", type=Path, help="write the artifact here and reference it by URL")
    where.add_argument("--chunks", action="store_true", help="send the artifact in chunks over MQTT")
    p.add_argument("--url-base", default="", help="with --artifact-dir: http(s) base URL serving that folder")
    p.add_argument("--chunk-size", type=int, default=256 * 1024, help="chunk bytes (default 256 KiB)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--targets", nargs="+", help="site/line/cell patterns the update is for (signed; default: the addressed cell)"
    )
    scope.add_argument("--all-cells", action="store_true", help="sign the update for every cell (no targets)")
    p.add_argument(
        "--expires-in-h",
        type=float,
        default=DEFAULT_EXPIRY_H,
        help=f"manifest expiry in hours (default {DEFAULT_EXPIRY_H:g} = three weeks; max {MAX_EXPIRY_H:g})",
    )
    p.add_argument("--rollback-from", default="", help="sign a rollback from this exact active version (signed)")
    p.add_argument(
        "--shadow",
        action="store_true",
        help="sign the update with role shadow: the cell scores parts with it beside the live model, never deciding",
    )
    p.add_argument(
        "--retain",
        choices=("auto", "yes", "no"),
        default="auto",
        help="retain the manifest (auto: yes for URLs, so cells that reconnect get it; no for chunks)",
    )
    p.add_argument("--manifest-out", type=Path, help="also write the signed manifest here")
    p.add_argument("--dry-run", action="store_true", help="sign and write, do not publish")
    p.add_argument("--wait", type=float, default=0.0, help="wait this long (s) for the cell's verdict on model/status")
    add_cell_arguments(p)
    add_broker_arguments(p)
    p.set_defaults(func=publish)


def publish(args: argparse.Namespace) -> int:
    try:
        package = Manifest.load(args.package)
        package.verify_model_file(args.package)
        private_key = update_manifest.load_private_key(args.key, update_manifest.load_passphrase(args.passphrase_file))
        cell = CellId(args.site, args.line, args.cell)
        targets = _targets(args, cell)
        if not 0 < args.expires_in_h <= MAX_EXPIRY_H:
            raise ValueError(f"--expires-in-h must be within (0, {MAX_EXPIRY_H:g}]: every manifest expires")
        if args.shadow and args.rollback_from:
            raise ValueError("--shadow and --rollback-from exclude each other: a shadow update is no rollback")
        if args.rollback_from and update_manifest.compare_versions(package.version, args.rollback_from) >= 0:
            raise ValueError(f"--rollback-from {args.rollback_from}: a rollback goes to an older version")
    except (ManifestError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    with tempfile.TemporaryDirectory(prefix="qc-publish-") as tmp:
        artifact_dir = None if args.chunks else args.artifact_dir
        archive, size, sha256, source = pack_package(
            args.package, package.version, Path(tmp), artifact_dir, args.url_base, args.chunk_size
        )
        issued = time.time_ns()
        manifest = sign_update(
            package.version,
            size,
            sha256,
            source,
            private_key,
            args.expires_in_h,
            targets,
            args.rollback_from,
            issued,
            role=update_manifest.ROLE_SHADOW if args.shadow else update_manifest.ROLE_LIVE,
        )
        payload = json.dumps(manifest, sort_keys=True).encode()
        if args.manifest_out:
            args.manifest_out.write_bytes(payload + b"\n")
        print(f"model {package.version}: artifact {size} bytes sha256 {sha256[:16]}..., key {manifest['key_id']}")
        if args.dry_run:
            return 0
        retain = args.retain == "yes" or (args.retain == "auto" and not args.chunks)
        try:
            return _send(args, cell, manifest, payload, archive, retain, issued)
        except LinkError as exc:
            print(f"error: {exc}")
            return 2


def pack_package(
    package_dir: Path, version: str, tmp: Path, artifact_dir: Path | None, url_base: str = "", chunk_size: int = 0
) -> tuple[Path, int, str, dict]:
    """Pack a checked package into <tmp>/<version>.tar.gz -> (archive, size, sha256, artifact source): with
    artifact_dir, a copy there referenced by URL (url_base, else file://); without, MQTT chunks of chunk_size."""
    archive = tmp / f"{version}.tar.gz"
    size, sha256 = artifact.pack(package_dir, archive)
    if artifact_dir is None:
        source: dict = {"chunks": {"count": math.ceil(size / chunk_size), "chunk_size": chunk_size}}
    else:
        artifact_dir.mkdir(parents=True, exist_ok=True)
        stored = artifact_dir.resolve() / archive.name
        shutil.copyfile(archive, stored)
        source = {"url": f"{url_base.rstrip('/')}/{archive.name}" if url_base else stored.as_uri()}
    return archive, size, sha256, source


def sign_update(
    version: str,
    size: int,
    sha256: str,
    source: dict,
    private_key,
    expires_in_h: float = DEFAULT_EXPIRY_H,
    targets: list[str] | None = None,
    rollback_from: str = "",
    issued_ns: int = 0,
    role: str = update_manifest.ROLE_LIVE,
) -> dict:
    """One signed update manifest (the only place the cloud signs one: publish-model and rollouts)."""
    if not 0 < expires_in_h <= MAX_EXPIRY_H:
        raise ValueError(f"expiry {expires_in_h:g} h must be within (0, {MAX_EXPIRY_H:g}]: every manifest expires")
    issued = issued_ns or time.time_ns()
    return update_manifest.sign(
        update_manifest.build(
            version=version,
            sha256=sha256,
            size=size,
            artifact=source,
            issued_ns=issued,
            expires_ns=issued + int(expires_in_h * 3600e9),
            targets=targets,
            rollback_from=rollback_from,
            role=role,
        ),
        private_key,
    )


def _targets(args: argparse.Namespace, cell: CellId) -> list[str] | None:
    """None (every cell) only with --all-cells; else the patterns, each site/line/cell."""
    if args.all_cells:
        return None
    targets = args.targets or [cell.path]
    for pattern in targets:
        if len(pattern.split("/")) != 3 or not all(pattern.split("/")):
            raise ValueError(f"target {pattern!r} must be site/line/cell (globs per segment, e.g. plant1/*/*)")
    return targets


def _send(args, cell: CellId, manifest: dict, payload: bytes, archive: Path, retain: bool, issued: int) -> int:
    broker = broker_from_args(args, f"qc-cloud-publish-{cell.cell}")
    verdict: list[dict] = []
    got = threading.Event()

    def on_message(client, userdata, message) -> None:
        try:
            status = json.loads(message.payload)
        except ValueError:
            return
        if (
            status.get("event") in ("update_accepted", "update_rejected")
            and status.get("version") == manifest["version"]
            and status.get("role", update_manifest.ROLE_LIVE) == manifest.get("role", update_manifest.ROLE_LIVE)
            and _time_ns(status.get("time")) >= issued - 5_000_000_000
        ):
            verdict.append(status)
            got.set()

    status_topic = cell.stream_topic("model_status")
    client = connect(broker, subscriptions=(status_topic,) if args.wait else (), on_message=on_message)
    try:
        infos = [client.publish(cell.model_update, payload, qos=1, retain=retain)]
        infos[0].wait_for_publish(30)  # chunks only after the broker has the manifest (the cell needs it first)
        if "chunks" in manifest["artifact"]:
            chunk_size = manifest["artifact"]["chunks"]["chunk_size"]
            with open(archive, "rb") as f:
                for index in range(manifest["artifact"]["chunks"]["count"]):
                    infos.append(
                        client.publish(cell.chunk_topic(manifest["version"], index), f.read(chunk_size), qos=1)
                    )
        for info in infos:
            info.wait_for_publish(60)
        print(f"published to {cell.model_update} ({len(infos) - 1} chunks, retained: {retain})")
        if not args.wait:
            return 0
        if not got.wait(args.wait):
            print(f"no answer on {status_topic} within {args.wait} s")
            return 3
        status = verdict[0]
        print(
            f"{status['event']}: {status.get('reason')} {status.get('message', '')} (active {status['active_version']})"
        )
        return 0 if status["event"] == "update_accepted" else 1
    finally:
        close(client)


def _time_ns(text: object) -> int:
    try:
        return int(datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0
