"""Inbound model updates, end to end, in one worker thread (never on a ROS callback or the MQTT thread):

    manifest (size, JSON, schema) -> Ed25519 signature (keys reloaded when their files change, revoked keys
    refused) -> target / expiry / URL scheme / size -> version policy (newer than everything installed, or a
    signed rollback from the exact active version) -- all before any transfer is cancelled or any byte
    fetched -> fetch the artifact into a temporary file (overall deadline) -> size, then sha256 -> safe
    extraction into a staging directory -> the package's own manifest, model hash and confined paths ->
    atomic rename into <update_dir>/<version> -> installed into the cell's model store (ORIGIN_UPDATE; a signed
    rollback also authorises the rollback there) -> inference/load_model of the store's copy -> accepted (state
    persisted) | rejected with a reason (a version that failed to load is discarded from the store again).

Roles (the signed manifest's `role`, absent = live): a shadow update is verified exactly like a live one and
installed into the store, then handed to inference/load_shadow (scored beside the live model, never deciding);
it moves neither the version floor nor the active model. A later live update of the same version and artifact
promotes it, and a signed rollback to a version the store holds, from the same artifact, reuses that copy:
both skip the download (ModelStore.stored_copy checks the recorded artifact sha256 and the copy's model hash).

A partial download never becomes active: it lives in a temporary file that is deleted on any failure,
and only a verified, extracted package is renamed into place and handed to load_model.

The version floor is the newest version this cell's signed history installed (update_state.json
`high_water`). When the state file is missing it fails closed on the model store: the update must be newer
than every version recorded there that it can be ordered against.
The running model's version is the model store's active pointer (written by inference after its self-test),
never the model/active topic, which any participant on the graph could publish.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from qc_cell.bridge.session import Log, python_log
from qc_cell.inference.model_store import ORIGIN_UPDATE, ModelStore, StoreError, comparable
from qc_contract import artifact, inbound, update_manifest
from qc_contract.inbound import InboundError
from qc_contract.model_manifest import Manifest, ManifestError
from qc_contract.package_paths import check_package_paths
from qc_contract.update_manifest import ROLE_LIVE, ROLE_SHADOW, compare_versions, version_key

STATE_FILE = "update_state.json"
QUEUE_SIZE = 64

# (path, version, sha256 of the model file) -> (success, message, active version); may block (worker thread).
LoadModel = Callable[[str, str, str], tuple[bool, str, str]]


@dataclass(frozen=True)
class UpdateSettings:
    update_dir: Path
    keys: Mapping[str, Ed25519PublicKey]
    cell_path: str  # site/line/cell, matched segment by segment against the manifest's targets
    model_store_dir: Path  # the cell's model store (inference.model_store_dir): verified packages go there
    require_expiry: bool = True  # refuse manifests without expires_at
    max_manifest_bytes: int = 16 * 1024
    max_artifact_bytes: int = 512 * 1024 * 1024
    fetch: artifact.FetchPolicy = field(default_factory=artifact.FetchPolicy)
    chunk_timeout_s: float = 120.0
    keep_versions: int = 3


@dataclass(frozen=True)
class UpdateOutcome:
    accepted: bool
    version: str  # "" when the manifest was unreadable
    reason: str  # "accepted" or the rejection code
    detail: str
    active_version: str
    role: str = ROLE_LIVE  # the manifest's role (shadow: the version now runs as the cell's shadow model)
    from_store: bool = False  # installed from the model store's copy, nothing downloaded (promotion, rollback)


@dataclass
class _ChunkedUpdate:
    manifest: dict[str, Any]
    assembler: artifact.ChunkAssembler
    deadline: float  # time.monotonic()


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
        load_shadow: LoadModel | None = None,
    ) -> None:
        self.settings = settings
        self.load_model = load_model
        self.load_shadow = load_shadow  # inference/load_shadow; None: shadow updates are refused
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
        """What inference activated last (the store's pointer; '' = none or unreadable), for reports."""
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
        in_progress = self._chunked is not None and _digest(self._chunked.manifest) == _digest(manifest)
        if in_progress or _digest(manifest) in (self.state.get("manifest_digest"), self.state.get("shadow_digest")):
            self.counts["duplicate"] += 1  # e.g. the retained manifest, redelivered on every reconnect
            return None
        try:
            self._check_manifest(manifest)
        except InboundError as rejected:
            return self._rejected(version, rejected)
        self._abort_chunked(InboundError("superseded", f"a newer manifest ({version}) arrived"))
        stored = self.store.stored_copy(version, manifest["sha256"])
        if stored is not None:  # a promotion or a rollback to a version this cell holds: no download
            try:
                self._use_stored(manifest, stored)
            except InboundError as rejected:
                self._rejected(version, rejected)
            return None
        temp = self.partial_dir / f"{version}.{secrets.token_hex(4)}.part"
        source = manifest["artifact"]
        if "url" in source:
            try:
                size, sha256 = artifact.fetch(source["url"], temp, manifest["size"], self.settings.fetch)
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
        """Signature first; then every signed constraint that needs no download, the version included."""
        try:
            update_manifest.verify_signature(manifest, self.settings.keys)
        except update_manifest.KeyFileError as exc:  # a key or the revocation list became unreadable
            raise InboundError("keys_unreadable", str(exc)) from None
        targets = manifest.get("targets")
        if targets and not any(update_manifest.target_matches(t, self.settings.cell_path) for t in targets):
            raise InboundError("wrong_target", f"update is for {targets}, this cell is {self.settings.cell_path}")
        if "expires_at" not in manifest and self.settings.require_expiry:
            raise InboundError("no_expiry", "manifest has no expires_at (update_require_expiry is on)")
        if "expires_at" in manifest and _parse_time(manifest["expires_at"]) < time.time():
            raise InboundError("expired", f"manifest expired at {manifest['expires_at']}")
        if manifest["size"] > self.settings.max_artifact_bytes:
            limit = self.settings.max_artifact_bytes
            raise InboundError("too_large", f"artifact {manifest['size']} bytes > max_artifact_bytes {limit}")
        url = manifest["artifact"].get("url")
        scheme = urlsplit(url).scheme if url is not None else ""
        if url is not None and scheme not in self.settings.fetch.schemes:
            enabled = ", ".join(sorted(self.settings.fetch.schemes)) or "none"
            raise InboundError("scheme_refused", f"artifact URL scheme {scheme!r} is not enabled ({enabled})")
        if manifest.get("role", ROLE_LIVE) == ROLE_SHADOW:
            if "rollback_from" in manifest:
                raise InboundError("schema_violation", "a shadow update cannot be a rollback")
            if self.load_shadow is None:
                raise InboundError("shadow_unsupported", "this cell's inference offers no shadow model slot")
        self._check_version(manifest)

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
        self._check_version(manifest)  # again: the active model may have changed during the download
        staging = self.dir / f".staging-{version}-{secrets.token_hex(4)}"
        final = self.dir / version
        try:
            artifact.extract(temp, staging, max_total_bytes=4 * self.settings.max_artifact_bytes)
            try:
                package = Manifest.load(staging)
                check_package_paths(staging, package.model_file)  # before anything opens the model
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
        known = self._known(version)
        installed = self._install_into_store(manifest, package, final)
        self._load(manifest, installed, package, discard=final if not known else None)

    def _known(self, version: str) -> bool:
        try:
            return self.store.record(version) is not None
        except StoreError:
            return False

    def _use_stored(self, manifest: dict[str, Any], stored: Path) -> None:
        """The store already holds this version from this very artifact (a shadow being promoted, a rollback
        target): the signed manifest was checked in full; its package is the store's verified copy."""
        self.counts["from_store"] += 1
        try:
            package = Manifest.load(stored)
        except ManifestError as exc:
            raise InboundError("bad_package", f"the store's copy of {manifest['version']}: {exc}") from None
        if "rollback_from" in manifest:
            try:
                self.store.authorise_rollback(manifest["version"], ORIGIN_UPDATE, _digest(manifest))
            except (StoreError, OSError) as exc:
                raise InboundError("rollback_refused", f"the rollback could not be recorded: {exc}") from None
        self._load(manifest, stored, package, discard=None, from_store=True)

    def _load(
        self, manifest: dict[str, Any], installed: Path, package: Manifest, discard: Path | None, from_store=False
    ) -> None:
        """Hand the store's copy to inference (load_model, or load_shadow for a shadow update) and record the
        outcome. `discard`: the update directory's copy of a version installed just now, removed (with its
        store entry) if inference refuses it."""
        version = manifest["version"]
        shadow = manifest.get("role", ROLE_LIVE) == ROLE_SHADOW
        load = self.load_shadow if shadow else self.load_model
        service = "inference/load_shadow" if shadow else "inference/load_model"
        success, message, _ = load(str(installed), version, package.sha256)
        if not success:
            if discard is not None:
                shutil.rmtree(discard, ignore_errors=True)
                with contextlib.suppress(StoreError, OSError):
                    self.store.discard(version)
            raise InboundError("load_failed", f"{service}: {message}")
        if shadow:  # the floor stays: a live update of this version (its promotion) must still pass
            self._save_state({**self.state, "shadow_version": version, "shadow_digest": _digest(manifest)})
            self.counts["accepted"] += 1
            self.log("info", f"model update {version} accepted as the shadow model ({message})")
            self.report(UpdateOutcome(True, version, "accepted", message, self.active_version, ROLE_SHADOW, from_store))
            return
        # A rollback keeps the floor where it was: the version rolled back from stays refused.
        high_water = (self._high_water() or manifest["rollback_from"]) if "rollback_from" in manifest else version
        self._save_state(
            {
                "version": version,
                "high_water": high_water,
                "manifest_digest": _digest(manifest),
                "issued_at": manifest["issued_at"],
            }
        )
        self.counts["accepted"] += 1
        how = " from the model store's copy" if from_store else ""
        self.log("info", f"model update {version} accepted and active{how} ({message})")
        self.report(
            UpdateOutcome(True, version, "accepted", message, self.active_version or version, ROLE_LIVE, from_store)
        )
        self._prune(keep={version, self.active_version})

    def _install_into_store(self, manifest: Mapping[str, Any], package: Manifest, final: Path) -> Path:
        """The verified package into the model store (the only place inference loads from), recorded with the
        signed manifest's digest. A signed rollback (its `rollback_from` named the active version, checked in
        _check_rollback) becomes the store's rollback grant for exactly this version, with the same digest:
        inference's policy then lets load_model go back to it once."""
        version, reference = manifest["version"], _digest(manifest)
        try:
            known = self.store.record(version) is not None
            installed = self.store.install(final, package, ORIGIN_UPDATE, reference, manifest["sha256"])
        except (StoreError, ManifestError, OSError) as exc:
            shutil.rmtree(final, ignore_errors=True)
            raise InboundError("load_failed", f"cannot install into the model store: {exc}") from None
        if "rollback_from" in manifest:
            try:
                self.store.authorise_rollback(version, ORIGIN_UPDATE, reference)
            except (StoreError, OSError) as exc:
                shutil.rmtree(final, ignore_errors=True)
                if not known:  # installed just now for this rollback: it leaves with it
                    with contextlib.suppress(StoreError, OSError):
                        self.store.discard(version)
                raise InboundError("rollback_refused", f"the rollback could not be recorded: {exc}") from None
        return installed

    def _active_in_store(self) -> str:
        """The running model: the model store's active pointer (written by inference). Never model/active."""
        try:
            entry = self.store.active()
        except StoreError as exc:
            raise InboundError("state_unreadable", str(exc)) from None
        return entry.version if entry is not None else ""

    def _high_water(self) -> str:
        """Newest version this cell's own signed history installed ('' without a state file)."""
        return str(self.state.get("high_water") or self.state.get("version", ""))

    def _newest_in_store(self, version: str) -> str:
        """Without the state file (deleted, fresh disk) the floor fails closed on the model store: the newest
        version recorded there that `version` can be ordered against, except the current shadow model (installed
        by a signed shadow update that moved no floor; a live update of it is its promotion)."""
        try:
            shadow = self.store.shadow()
            newest = self.store.newest_installed(like=version, skip=shadow.version if shadow is not None else "")
            return newest
        except StoreError as exc:
            raise InboundError("state_unreadable", str(exc)) from None

    def _check_version(self, manifest: Mapping[str, Any]) -> None:
        version, active = manifest["version"], self._active_in_store()
        if "rollback_from" in manifest:
            return self._check_rollback(version, manifest["rollback_from"], active)
        high_water = self._high_water()
        if high_water and not comparable(version, high_water):
            raise InboundError(
                "version_incomparable", f"{version!r} cannot be ordered against the installed {high_water!r}"
            )
        # Versions that cannot be ordered against this one (a hand-installed 'default' model) are skipped: only
        # our own signed history (high_water) must be comparable.
        others = [(v, "active") for v in (active,) if v]
        if not high_water:
            others.append((self._newest_in_store(version), "newest installed"))
        for base, what in [(high_water, "newest installed"), *others]:
            if not base or not comparable(version, base):
                continue
            order = compare_versions(version, base)
            if order == 0:
                raise InboundError("replay", f"version {version} is already installed")
            if order < 0:
                raise InboundError("downgrade", f"version {version} is older than the {what} {base}")
        return None

    def _check_rollback(self, version: str, rollback_from: str, active: str) -> None:
        """A signed rollback names the version it rolls back from: it applies only while that exact version
        is running, so it cannot be replayed later (after another update) to pull the cell back."""
        current = active or self.installed_version
        if rollback_from != current:
            raise InboundError(
                "rollback_mismatch", f"rollback from {rollback_from} to {version}, but {current or 'nothing'} is active"
            )
        if not comparable(version, rollback_from) or compare_versions(version, rollback_from) >= 0:
            raise InboundError("rollback_mismatch", f"a rollback goes to an older version, not {version}")

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
