"""Inbound model updates, end to end, in one worker thread (never on a ROS callback or the MQTT thread):

    manifest (size, JSON, schema) -> Ed25519 signature -> target / expiry -> fetch the artifact into a
    temporary file -> size, then sha256 of what was fetched -> version monotonicity (no replay or
    downgrade unless allow_downgrade) -> safe extraction into a staging directory -> the package's own
    manifest and model hash -> atomic rename into <update_dir>/<version> -> installed into the cell's model
    store (ORIGIN_UPDATE) -> inference/load_model of the store's copy -> accepted (state persisted) | rejected
    with a reason (a version that failed to load is discarded from the store again).

The active version comes from the model store's state (what inference activated after its self-test), never
from the model/active topic, which any participant of the graph could publish.

A partial download never becomes active: it lives in a temporary file that is deleted on any failure,
and only a verified, extracted package is renamed into place and handed to load_model.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import queue
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from qc_cell.bridge.session import Log, python_log
from qc_cell.inference.model_store import ORIGIN_UPDATE, ModelStore, StoreError
from qc_contract import artifact, inbound, update_manifest
from qc_contract.inbound import InboundError
from qc_contract.model_manifest import Manifest, ManifestError
from qc_contract.update_manifest import compare_versions, version_key

STATE_FILE = "update_state.json"
QUEUE_SIZE = 64

# (path, version, sha256 of the model file) -> (success, message, active version); may block (worker thread).
LoadModel = Callable[[str, str, str], tuple[bool, str, str]]


@dataclass(frozen=True)
class UpdateSettings:
    update_dir: Path
    keys: Mapping[str, Ed25519PublicKey]
    cell_path: str  # site/line/cell, matched against the manifest's optional targets
    model_store_dir: Path  # the cell's model store (inference.model_store_dir): verified packages go there
    allow_downgrade: bool = False
    max_manifest_bytes: int = 16 * 1024
    max_artifact_bytes: int = 512 * 1024 * 1024
    fetch_timeout_s: float = 60.0
    chunk_timeout_s: float = 120.0
    keep_versions: int = 3
    https_ca_file: str = ""


@dataclass(frozen=True)
class UpdateOutcome:
    accepted: bool
    version: str  # "" when the manifest was unreadable
    reason: str  # "accepted" or the rejection code
    detail: str
    active_version: str


@dataclass
class _ChunkedUpdate:
    manifest: dict[str, Any]
    assembler: artifact.ChunkAssembler
    deadline: float  # time.monotonic()


def _comparable(a: str, b: str) -> bool:
    """Both start with a number, or with the same text (efficientnet_b0-2025... vs efficientnet_b0-2024...)."""
    ka, kb = version_key(a), version_key(b)
    return bool(ka and kb) and ka[0][0] == kb[0][0] and (ka[0][0] == 0 or ka[0] == kb[0])


def _digest(manifest: Mapping[str, Any]) -> str:
    """Identity of an exact signed manifest (content and signature)."""
    return hashlib.sha256(update_manifest.canonical_bytes(manifest) + manifest["signature"].encode()).hexdigest()


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class ModelUpdater:
    def __init__(
        self,
        settings: UpdateSettings,
        load_model: LoadModel,
        report: Callable[[UpdateOutcome], None],
        log: Log = python_log,
    ) -> None:
        self.settings = settings
        self.load_model = load_model
        self.report = report
        self.log = log
        self.counts: Counter[str] = Counter()  # "accepted", "duplicate", and one per rejection reason
        self.store = ModelStore(settings.model_store_dir)
        self.dir = Path(settings.update_dir).expanduser()
        self.partial_dir = self.dir / ".partial"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.partial_dir.iterdir():  # a download interrupted by a crash or power loss
            leftover.unlink(missing_ok=True) if leftover.is_file() else shutil.rmtree(leftover, ignore_errors=True)
        for leftover in self.dir.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        self.state = self._load_state()
        self._queue: queue.Queue[tuple[str, tuple]] = queue.Queue(maxsize=QUEUE_SIZE)
        self._chunked: _ChunkedUpdate | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-updater", daemon=True)

    # -- input (MQTT thread) ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def submit_manifest(self, payload: bytes) -> None:
        if not payload:  # the release tool cleared the retained manifest: nothing to install, nothing wrong
            self.counts["cleared"] += 1
            return
        self._submit("manifest", (payload,))

    def submit_chunk(self, version: str, index: int, payload: bytes) -> None:
        self._submit("chunk", (version, index, payload))

    def _submit(self, kind: str, args: tuple) -> None:
        try:
            self._queue.put_nowait((kind, args))
        except queue.Full:
            self._rejected("", InboundError("busy", f"update queue full ({QUEUE_SIZE}): {kind} dropped"))

    @property
    def active_version(self) -> str:
        """What inference activated last (the store's pointer; '' = none or unreadable)."""
        try:
            entry = self.store.active()
        except StoreError:
            return ""
        return entry.version if entry is not None else ""

    @property
    def installed_version(self) -> str:
        return str(self.state.get("version", ""))

    # -- worker ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, args = self._queue.get(timeout=0.25)
            except queue.Empty:
                self._check_chunk_timeout()
                continue
            try:
                if kind == "manifest":
                    self._on_manifest(*args)
                else:
                    self._on_chunk(*args)
            except Exception as exc:  # a bug here must reject the update, not kill the worker
                self.log("error", f"model update failed unexpectedly: {type(exc).__name__}: {exc}")
                self._abort_chunked(InboundError("internal_error", f"{type(exc).__name__}: {exc}"))
            self._check_chunk_timeout()
        self._abort_chunked(InboundError("shutdown", "the bridge stopped during the update"))

    def _on_manifest(self, payload: bytes) -> None:
        try:
            manifest = inbound.parse(payload, "model_update", self.settings.max_manifest_bytes)
        except InboundError as rejected:
            return self._rejected("", rejected)
        version = manifest["version"]
        if _digest(manifest) == self.state.get("manifest_digest"):
            self.counts["duplicate"] += 1  # e.g. the retained manifest, redelivered on every reconnect
            return None
        try:
            self._check_manifest(manifest)
        except InboundError as rejected:
            return self._rejected(version, rejected)
        self._abort_chunked(InboundError("superseded", f"a newer manifest ({version}) arrived"))
        temp = self.partial_dir / f"{version}.{secrets.token_hex(4)}.part"
        source = manifest["artifact"]
        if "url" in source:
            try:
                size, sha256 = artifact.fetch(
                    source["url"], temp, manifest["size"], self.settings.fetch_timeout_s, self.settings.https_ca_file
                )
                self._install(manifest, temp, size, sha256)
            except InboundError as rejected:
                self._rejected(version, rejected)
            finally:
                temp.unlink(missing_ok=True)
            return None
        chunks = source["chunks"]
        try:
            assembler = artifact.ChunkAssembler(version, chunks["count"], chunks["chunk_size"], manifest["size"], temp)
        except (InboundError, OSError) as exc:
            temp.unlink(missing_ok=True)
            rejected = exc if isinstance(exc, InboundError) else InboundError("fetch_failed", str(exc))
            return self._rejected(version, rejected)
        self._chunked = _ChunkedUpdate(manifest, assembler, time.monotonic() + self.settings.chunk_timeout_s)
        self.log("info", f"model update {version}: waiting for {chunks['count']} chunks")
        return None

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        """Signature first; then the signed constraints that need no download."""
        update_manifest.verify_signature(manifest, self.settings.keys)
        targets = manifest.get("targets")
        if targets and not any(fnmatch.fnmatchcase(self.settings.cell_path, t) for t in targets):
            raise InboundError("wrong_target", f"update is for {targets}, this cell is {self.settings.cell_path}")
        if "expires_at" in manifest and _parse_time(manifest["expires_at"]) < time.time():
            raise InboundError("expired", f"manifest expired at {manifest['expires_at']}")
        if manifest["size"] > self.settings.max_artifact_bytes:
            limit = self.settings.max_artifact_bytes
            raise InboundError("too_large", f"artifact {manifest['size']} bytes > max_artifact_bytes {limit}")

    def _on_chunk(self, version: str, index: int, payload: bytes) -> None:
        chunked = self._chunked
        if chunked is None or chunked.assembler.version != version:
            self.counts["unexpected_chunk"] += 1
            return
        try:
            chunked.assembler.add(index, payload)
        except (InboundError, OSError) as exc:
            rejected = exc if isinstance(exc, InboundError) else InboundError("fetch_failed", str(exc))
            return self._abort_chunked(rejected)
        if chunked.assembler.complete:
            self._chunked = None
            temp = chunked.assembler.dest
            try:
                self._install(chunked.manifest, temp, temp.stat().st_size, artifact.sha256_of(temp))
            except InboundError as rejected:
                self._rejected(version, rejected)
            finally:
                temp.unlink(missing_ok=True)
        return None

    def _check_chunk_timeout(self) -> None:
        chunked = self._chunked
        if chunked is not None and time.monotonic() > chunked.deadline:
            got, count = len(chunked.assembler.received), chunked.assembler.count
            self._abort_chunked(InboundError("incomplete_artifact", f"{got}/{count} chunks within the timeout"))

    def _abort_chunked(self, rejected: InboundError) -> None:
        chunked, self._chunked = self._chunked, None
        if chunked is not None:
            chunked.assembler.dest.unlink(missing_ok=True)
            self._rejected(chunked.manifest["version"], rejected)

    def _install(self, manifest: dict[str, Any], temp: Path, size: int, sha256: str) -> None:
        version = manifest["version"]
        if size != manifest["size"]:
            reason = "truncated" if size < manifest["size"] else "size_mismatch"
            raise InboundError(reason, f"artifact is {size} bytes, manifest says {manifest['size']}")
        if sha256 != manifest["sha256"]:
            raise InboundError("hash_mismatch", f"artifact sha256 {sha256} != manifest {manifest['sha256']}")
        self._check_version(version)
        staging = self.dir / f".staging-{version}-{secrets.token_hex(4)}"
        final = self.dir / version
        try:
            artifact.extract(temp, staging, max_total_bytes=4 * self.settings.max_artifact_bytes)
            try:
                package = Manifest.load(staging)
                package.verify_model_file(staging)
            except ManifestError as exc:
                raise InboundError("bad_package", str(exc).replace(str(staging), "<package>")) from None
            if package.version != version:
                raise InboundError("package_mismatch", f"package version {package.version!r} != update {version!r}")
            if final.exists():  # left by an earlier attempt that load_model refused
                shutil.rmtree(final)
            os.rename(staging, final)  # atomic: the package appears complete or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            installed = self.store.install(final, package, ORIGIN_UPDATE, _digest(manifest))
            if self.settings.allow_downgrade:  # a deliberate rollback: inference needs it authorised in the store
                self.store.authorise_rollback(version, ORIGIN_UPDATE, _digest(manifest))
        except (StoreError, ManifestError, OSError) as exc:
            shutil.rmtree(final, ignore_errors=True)
            raise InboundError("load_failed", f"cannot install into the model store: {exc}") from None
        success, message, _ = self.load_model(str(installed), version, package.sha256)
        if not success:
            shutil.rmtree(final, ignore_errors=True)
            with contextlib.suppress(StoreError, OSError):
                self.store.discard(version)
            raise InboundError("load_failed", f"inference/load_model: {message}")
        self._save_state({"version": version, "manifest_digest": _digest(manifest), "issued_at": manifest["issued_at"]})
        self.counts["accepted"] += 1
        self.log("info", f"model update {version} accepted and active ({message})")
        self.report(UpdateOutcome(True, version, "accepted", message, self.active_version or version))
        self._prune(keep={version, self.active_version})

    def _check_version(self, version: str) -> None:
        if self.settings.allow_downgrade:
            return
        installed, active = self.installed_version, self.active_version
        for base in (installed, active):
            if not base:
                continue
            if not _comparable(version, base):
                if base == installed:
                    raise InboundError(
                        "version_incomparable",
                        f"{version!r} cannot be ordered against the installed {base!r} (set allow_downgrade to force)",
                    )
                continue  # e.g. a hand-installed 'default' model: only our own history can order it
            order = compare_versions(version, base)
            if order == 0:
                raise InboundError("replay", f"version {version} is already installed")
            if order < 0:
                raise InboundError("downgrade", f"version {version} is older than {base}")

    def _rejected(self, version: str, rejected: InboundError) -> None:
        self.counts[rejected.reason] += 1
        self.log("warn", f"model update {version or '(unreadable)'} rejected: {rejected.reason}: {rejected.detail}")
        self.report(UpdateOutcome(False, version, rejected.reason, rejected.detail, self.active_version))

    # -- persistence -----------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        path = self.dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Refuse to guess: without the history, replays of older updates could not be detected.
            raise RuntimeError(f"model update state {path} is unreadable ({exc}); fix or delete it") from exc

    def _save_state(self, state: dict[str, Any]) -> None:
        path = self.dir / STATE_FILE
        temp = path.with_suffix(".tmp")
        with open(temp, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        self.state = state

    def _prune(self, keep: set[str]) -> None:
        packages = sorted(
            (p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: version_key(p.name),
        )
        for old in packages[: max(0, len(packages) - self.settings.keep_versions)]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
