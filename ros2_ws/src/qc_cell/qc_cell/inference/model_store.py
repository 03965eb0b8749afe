"""The model store on the edge device: the only place inference loads a model from. One directory per
version, a record of how each version got there, and an atomically replaced pointer to the active one, so a
restart (or a power cut in the middle of a model update) comes back on the last model that passed its self-test.

    <root>/
      versions/<version>/manifest.json, model.onnx, golden/...   (verified copies of the packages)
      installed.json  {"seq", "versions": {<version>: {"sha256", "origin", "reference", "seq", "installed_at",
                       "rollback": null | {"by", "reference", "granted_at"}}}}
      active.json   {"version", "sha256", "activated_at", "seq", "history": [older good versions, newest first]}
      shadow.json   {"version", "sha256", "set_at"}: the shadow model (scored beside the live one, never deciding)
      engines/      TensorRT engine cache (see backends/engine_cache.py)
      .lock         serialises writers across processes (fcntl)

Writers, each through install() with its origin: the cloud_bridge's verified update path (ORIGIN_UPDATE, after
the signature, the artifact's sha256 and the package checks), the operator's local command
(ORIGIN_OPERATOR, `python -m qc_cell.tools.model`), and inference itself for the params' `model_path` at a
start with nothing in the store (ORIGIN_PARAMS). Only inference moves the active pointer (activate(), after
the self-test).

The model policy (check_activation), enforced by inference for every inference/load_model request:
- the version must be installed here, with the sha256 it was installed with;
- the active version may be loaded again; with no active version, any installed one;
- a version with an unused rollback grant (authorise_rollback: a signed rollback manifest naming exactly that
  version, or the operator's pin) may be loaded; the grant is used up when the version becomes active;
- otherwise only a fresh install (installed after the active version was activated) that is not older than
  the active version: a version that was once superseded, or an older one, never comes back by a request alone;
- the current shadow version counts as a fresh install (a signed live update promotes it from the store copy),
  and activating it ends its shadow run (shadow.json removed).
The shadow pointer (set_shadow / clear_shadow, written by inference after the shadow's self-test, like the
active pointer) names an installed version with its sha256; it survives restarts, and the shadow version is
never pruned while it is the shadow. Installs by a signed update keep the update's artifact sha256
(`artifact_sha256`): a later signed update naming the same version and artifact (a promotion, a rollback) uses the
stored copy without downloading it again (stored_copy).
The sequence numbers (`seq`) order installs and activations without trusting the wall clock.
Plain Python, no ROS.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qc_cell.inference.backends.engine_cache import atomic_write_bytes, fsync_dir
from qc_contract.model_manifest import MANIFEST_NAME, Manifest, ManifestError
from qc_contract.update_manifest import compare_versions, version_key

ACTIVE_NAME = "active.json"
SHADOW_NAME = "shadow.json"
INSTALLED_NAME = "installed.json"
LOCK_NAME = ".lock"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

# Who installed a version (InstalledVersion.origin) or authorised a rollback to it (RollbackGrant.by).
ORIGIN_UPDATE = "update"  # cloud_bridge: a signed update manifest, verified artifact and package
ORIGIN_OPERATOR = "operator"  # python -m qc_cell.tools.model, on the device
ORIGIN_PARAMS = "params"  # inference's model_path, installed at a start with an empty store
ORIGINS = (ORIGIN_UPDATE, ORIGIN_OPERATOR, ORIGIN_PARAMS)


class StoreError(RuntimeError):
    """The store cannot take or give a model (bad version name, conflicting content, unreadable pointer)."""


class PolicyError(StoreError):
    """The model policy forbids activating this version now (not installed, superseded, older, changed)."""


@dataclass(frozen=True)
class ActiveEntry:
    version: str
    sha256: str
    activated_at: float
    history: tuple[str, ...] = ()  # previously active versions, newest first
    seq: int = 0  # store sequence number of the activation (0: written before the store kept sequence numbers)


@dataclass(frozen=True)
class RollbackGrant:
    by: str  # ORIGIN_UPDATE (a signed rollback manifest naming the version) or ORIGIN_OPERATOR (a pin)
    reference: str  # what authorised it: the signed manifest's digest, the operator's note
    granted_at: float


@dataclass(frozen=True)
class InstalledVersion:
    version: str
    sha256: str  # of the model file, as verified at install
    origin: str  # one of ORIGINS
    reference: str  # e.g. the signed update manifest's digest, or the source directory
    seq: int  # store sequence number of the install
    installed_at: float
    rollback: RollbackGrant | None = None  # an unused authorisation to activate this version although older
    artifact_sha256: str = ""  # of the signed update's artifact that installed it ("" = not from an update)


@dataclass(frozen=True)
class ShadowEntry:
    version: str
    sha256: str  # of the model file
    set_at: float


class ModelStore:
    def __init__(self, root: Path, keep: int = 5) -> None:
        self.root = Path(root).expanduser()
        self.keep = max(1, keep)
        self.versions_dir = self.root / "versions"
        self.engines_dir = self.root / "engines"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, across the processes that share the store (inference, cloud_bridge, tools)."""
        with open(self.root / LOCK_NAME, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    # ---- records ----------------------------------------------------------------------------------
    def _read_installed(self) -> dict[str, Any]:
        path = self.root / INSTALLED_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {"seq": 0, "versions": {}}
        except (OSError, ValueError) as exc:
            raise StoreError(f"model store records {path} unreadable: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("versions"), dict):
            raise StoreError(f"model store records {path} malformed")
        return data

    def _write_installed(self, data: dict[str, Any]) -> None:
        atomic_write_bytes(self.root / INSTALLED_NAME, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def records(self) -> dict[str, InstalledVersion]:
        """Every installed version's record (how it got here, whether a rollback to it is authorised)."""
        return {v: _record(v, r) for v, r in self._read_installed()["versions"].items()}

    def record(self, version: str) -> InstalledVersion | None:
        return self.records().get(version)

    def newest_installed(self, like: str = "", skip: str = "") -> str:
        """The highest version (natural order) recorded as installed and still in the store ('' = none); with
        `like`, only among the versions that can be ordered against it (comparable()): the update path's
        replay floor when its own state is missing."""
        versions = [v for v in self.records() if (not like or comparable(v, like)) and v != skip]
        return max(versions, key=version_key) if versions else ""

    # ---- packages -------------------------------------------------------------------------------
    def path(self, version: str) -> Path:
        _check_version_name(version)
        return self.versions_dir / version

    def contains(self, package_dir: Path) -> bool:
        try:
            return Path(package_dir).resolve().parent == self.versions_dir.resolve()
        except OSError:
            return False

    def versions(self) -> list[str]:
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def install(
        self, package_dir: Path, manifest: Manifest, origin: str, reference: str = "", artifact_sha256: str = ""
    ) -> Path:
        """Copy a verified package into versions/<version> (atomically: copy to a temp dir, verify the copy,
        rename) and record who installed it. Re-installing the same version with the same model is a no-op
        (its record, and so its place in the install order, stays); the same version with a different model
        is refused (versions are immutable, so a restart can trust the pointer)."""
        if origin not in ORIGINS:
            raise StoreError(f"unknown install origin {origin!r} (one of {', '.join(ORIGINS)})")
        with self._locked():
            target = self._install_files(package_dir, manifest)
            data = self._read_installed()
            if manifest.version not in data["versions"]:
                data["seq"] = int(data.get("seq", 0)) + 1
                data["versions"][manifest.version] = {
                    "sha256": manifest.sha256,
                    "origin": origin,
                    "reference": reference,
                    "seq": data["seq"],
                    "installed_at": time.time(),
                    "rollback": None,
                }
                if artifact_sha256:
                    data["versions"][manifest.version]["artifact_sha256"] = artifact_sha256.lower()
                self._write_installed(data)
            return target

    def stored_copy(self, version: str, artifact_sha256: str) -> Path | None:
        """The store's copy of `version` if a signed update installed it from exactly this artifact (sha256) and
        the copy is intact (its manifest and model file as recorded); None means: download it."""
        try:
            record = self.record(version)
        except StoreError:
            return None
        if record is None or not record.artifact_sha256 or record.artifact_sha256 != artifact_sha256.lower():
            return None
        path = self.path(version)
        manifest = _read_manifest(path)
        if manifest is None or manifest.version != version or manifest.sha256 != record.sha256:
            return None
        try:
            manifest.verify_model_file(path)
        except ManifestError:
            return None
        return path

    def _install_files(self, package_dir: Path, manifest: Manifest) -> Path:
        target = self.path(manifest.version)
        if target.exists():
            existing = _read_manifest(target)
            if existing is not None and existing.sha256 == manifest.sha256:
                try:
                    existing.verify_model_file(target)
                    return target
                except ManifestError:
                    pass  # damaged copy of the same model: replace it below
            elif existing is not None:
                raise StoreError(
                    f"version {manifest.version} is already in the store with a different model "
                    f"(sha256 {existing.sha256[:12]}..., new {manifest.sha256[:12]}...); "
                    "give the new model a new version"
                )
        staging = Path(tempfile.mkdtemp(prefix=f".incoming-{manifest.version}-", dir=self.versions_dir))
        try:
            shutil.copytree(package_dir, staging, dirs_exist_ok=True)
            copied = Manifest.load(staging)
            if copied.sha256 != manifest.sha256:
                raise StoreError(f"package {package_dir} changed while being copied into the store")
            copied.verify_model_file(staging)
            _fsync_tree(staging)
            if target.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".trash-{manifest.version}-", dir=self.versions_dir))
                os.replace(target, trash / "old")
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(staging, target)
            fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    # ---- active pointer ---------------------------------------------------------------------------
    def active(self) -> ActiveEntry | None:
        path = self.root / ACTIVE_NAME
        try:
            data = json.loads(path.read_text())
            return ActiveEntry(
                version=str(data["version"]),
                sha256=str(data["sha256"]),
                activated_at=float(data.get("activated_at", 0.0)),
                history=tuple(str(v) for v in data.get("history", ())),
                seq=int(data.get("seq", 0)),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"active model pointer {path} unreadable: {exc}") from exc

    def activate(self, manifest: Manifest) -> ActiveEntry:
        """Point the store at an installed version (after it passed its self-test and serves parts); a rollback
        grant for it is used up."""
        with self._locked():
            path = self.path(manifest.version)
            if not (path / MANIFEST_NAME).is_file():
                raise StoreError(f"version {manifest.version} is not installed in {self.versions_dir}")
            try:
                previous = self.active()
            except StoreError:
                previous = None
            history: list[str] = []
            if previous is not None:
                history = [v for v in (previous.version, *previous.history) if v != manifest.version]
            data = self._read_installed()
            if previous is not None and previous.version == manifest.version and previous.seq:
                seq = previous.seq  # the same activation again (a restart): installs waiting since stay fresh
            else:
                seq = data["seq"] = int(data.get("seq", 0)) + 1
            if manifest.version in data["versions"]:
                data["versions"][manifest.version]["rollback"] = None
            self._write_installed(data)
            entry = ActiveEntry(manifest.version, manifest.sha256, time.time(), tuple(history[: self.keep - 1]), seq)
            if self._shadow_version() == manifest.version:  # promoted: it decides now, its shadow run ends
                self._clear_shadow()
            document = {
                "version": entry.version,
                "sha256": entry.sha256,
                "activated_at": entry.activated_at,
                "seq": entry.seq,
                "history": list(entry.history),
            }
            atomic_write_bytes(self.root / ACTIVE_NAME, (json.dumps(document, indent=2) + "\n").encode())
            self._prune(entry, data)
            return entry

    # ---- shadow pointer ---------------------------------------------------------------------------
    def shadow(self) -> ShadowEntry | None:
        path = self.root / SHADOW_NAME
        try:
            data = json.loads(path.read_text())
            return ShadowEntry(str(data["version"]), str(data["sha256"]), float(data.get("set_at", 0.0)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"shadow model pointer {path} unreadable: {exc}") from exc

    def check_shadow(self, version: str, sha256: str) -> InstalledVersion:
        """The record of `version` if it may run as the shadow: installed here with this model sha256. (A shadow
        never decides, so no version order applies; the signed update path checked it like a live one.)"""
        record = self.record(version)
        if record is None:
            raise PolicyError(f"version {version} is not in the model store {self.versions_dir}: install it first")
        if record.sha256 != sha256.lower():
            raise PolicyError(
                f"version {version} in the store names model sha256 {record.sha256[:12]}..., not {sha256[:12]}..."
            )
        return record

    def set_shadow(self, manifest: Manifest) -> ShadowEntry:
        """Record the shadow model (after its self-test passed in inference)."""
        with self._locked():
            self.check_shadow(manifest.version, manifest.sha256)
            entry = ShadowEntry(manifest.version, manifest.sha256, time.time())
            document = {"version": entry.version, "sha256": entry.sha256, "set_at": entry.set_at}
            atomic_write_bytes(self.root / SHADOW_NAME, (json.dumps(document, indent=2) + "\n").encode())
            return entry

    def clear_shadow(self) -> None:
        with self._locked():
            self._clear_shadow()

    def _clear_shadow(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / SHADOW_NAME).unlink()
            fsync_dir(self.root)

    def _shadow_version(self) -> str:
        try:
            entry = self.shadow()
        except StoreError:
            return ""
        return entry.version if entry is not None else ""

    # ---- the model policy -------------------------------------------------------------------------
    def check_activation(self, version: str, sha256: str) -> InstalledVersion:
        """The record of `version` if the policy allows activating it now (module docstring), else PolicyError
        saying why. Inference calls this for every inference/load_model request."""
        record = self.record(version)
        if record is None:
            raise PolicyError(
                f"version {version} is not in the model store {self.versions_dir}: inference loads only packages "
                "installed there by a verified update or by `python -m qc_cell.tools.model install`"
            )
        if record.sha256 != sha256.lower():
            raise PolicyError(
                f"version {version} in the store now names model sha256 {sha256[:12]}..., it was installed with "
                f"{record.sha256[:12]}...: the package changed after its install"
            )
        active = self.active()
        if active is None or active.version == version or record.rollback is not None:
            return record
        pin = f"a signed rollback naming {version} or the operator's `python -m qc_cell.tools.model pin {version}`"
        if record.seq <= active.seq and version != self._shadow_version():
            raise PolicyError(
                f"version {version} was installed before the active {active.version} was activated: "
                f"going back to it needs {pin}"
            )
        if _older(version, active.version):
            raise PolicyError(f"version {version} is older than the active {active.version}: it needs {pin}")
        return record

    def authorise_rollback(self, version: str, by: str, reference: str = "") -> InstalledVersion:
        """Allow activating `version` once although older than (or superseded by) the active one: for a signed
        rollback manifest naming exactly this version (by=ORIGIN_UPDATE) or an operator's pin (ORIGIN_OPERATOR).
        The version must be installed and its copy intact (manifest and model file as recorded)."""
        if by not in (ORIGIN_UPDATE, ORIGIN_OPERATOR):
            raise StoreError(f"a rollback is authorised by {ORIGIN_UPDATE!r} or {ORIGIN_OPERATOR!r}, not {by!r}")
        with self._locked():
            data = self._read_installed()
            raw = data["versions"].get(version)
            if raw is None:
                raise PolicyError(f"version {version} is not installed in the model store: install it first")
            try:
                manifest = Manifest.load(self.path(version))
                manifest.verify_model_file(self.path(version))
            except ManifestError as exc:
                raise StoreError(f"version {version} in the store is damaged: {exc}") from exc
            if manifest.version != version or manifest.sha256 != raw["sha256"]:
                raise PolicyError(f"version {version} in the store no longer holds the model it was installed with")
            raw["rollback"] = {"by": by, "reference": reference, "granted_at": time.time()}
            self._write_installed(data)
            return _record(version, raw)

    def discard(self, version: str) -> None:
        """Remove an installed version that never served (e.g. its load failed); the active version and its
        history stay."""
        with self._locked():
            active = self.active()
            if active is not None and version in (active.version, *active.history):
                raise StoreError(f"version {version} is the active model or one of its rollbacks: not discarded")
            data = self._read_installed()
            if data["versions"].pop(version, None) is not None:
                self._write_installed(data)
            shutil.rmtree(self.path(version), ignore_errors=True)

    def candidates(self) -> list[Path]:
        """Packages to try at start-up, best first: the active version, then the earlier good ones."""
        try:
            entry = self.active()
        except StoreError:
            entry = None
        if entry is None:
            return []
        result = []
        for version in (entry.version, *entry.history):
            with contextlib.suppress(StoreError):
                if (self.path(version) / MANIFEST_NAME).is_file():
                    result.append(self.path(version))
        return result

    def _prune(self, entry: ActiveEntry, data: dict[str, Any]) -> None:
        """Drop versions no longer in the active pointer's history (disk space on the Jetson), except fresh
        installs still waiting to be loaded and versions a rollback to is authorised."""
        keep = {entry.version, *entry.history}
        if shadow := self._shadow_version():
            keep.add(shadow)
        for version, raw in data["versions"].items():
            if int(raw.get("seq", 0)) > entry.seq or raw.get("rollback"):
                keep.add(version)
        for version in self.versions():
            if version not in keep:
                shutil.rmtree(self.versions_dir / version, ignore_errors=True)
        if set(data["versions"]) - keep:
            data["versions"] = {v: r for v, r in data["versions"].items() if v in keep}
            self._write_installed(data)
        for stale in self.versions_dir.glob(".trash-*"):
            shutil.rmtree(stale, ignore_errors=True)
        kept_shas = {m.sha256[:12] for m in map(_read_manifest, (self.versions_dir / v for v in keep)) if m}
        if self.engines_dir.is_dir():
            for engine in self.engines_dir.iterdir():
                if not engine.name.startswith(".") and engine.name.split("_", 1)[0] not in kept_shas:
                    with contextlib.suppress(OSError):
                        engine.unlink()


def _check_version_name(version: str) -> None:
    if not _VERSION_RE.match(version or "") or version in (".", ".."):
        raise StoreError(
            f"model version {version!r} cannot name a store directory (letters, digits, '.', '_', '+', '-')"
        )


def _record(version: str, raw: dict[str, Any]) -> InstalledVersion:
    grant = raw.get("rollback")
    return InstalledVersion(
        version=version,
        sha256=str(raw["sha256"]),
        origin=str(raw["origin"]),
        reference=str(raw.get("reference", "")),
        seq=int(raw["seq"]),
        installed_at=float(raw.get("installed_at", 0.0)),
        rollback=RollbackGrant(str(grant["by"]), str(grant.get("reference", "")), float(grant.get("granted_at", 0)))
        if grant
        else None,
        artifact_sha256=str(raw.get("artifact_sha256", "")),
    )


def comparable(a: str, b: str) -> bool:
    """Two versions can be ordered: both start with a number, or with the same text (efficientnet_b0-2025...
    vs efficientnet_b0-2024...). Versions of different naming schemes ('demo-lite0-2' and '1.1.0') are not."""
    ka, kb = version_key(a), version_key(b)
    return bool(ka and kb) and ka[0][0] == kb[0][0] and (ka[0][0] == 0 or ka[0] == kb[0])


def _older(version: str, than: str) -> bool:
    """True when both versions can be ordered and `version` comes first; for versions of different naming
    schemes the install order alone decides (check_activation)."""
    return comparable(version, than) and compare_versions(version, than) < 0


def _read_manifest(package_dir: Path) -> Manifest | None:
    try:
        return Manifest.load(package_dir)
    except ManifestError:
        return None


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(directory)
