"""The model store on the edge device: every model package that was ever activated, one directory per
version, plus an atomically replaced pointer to the active one, so a restart (or a power cut in the middle
of a model update) comes back on the last model that passed its self-test.

    <root>/
      versions/<version>/manifest.json, model.onnx, golden/...   (verified copies of the packages)
      active.json   {"version", "sha256", "activated_at", "history": [older good versions, newest first]}
      engines/      TensorRT engine cache (see backends/engine_cache.py)

Only the inference node writes here. Plain Python, no ROS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from qc_cell.inference.backends.engine_cache import atomic_write_bytes, fsync_dir
from qc_contract.model_manifest import MANIFEST_NAME, Manifest, ManifestError

ACTIVE_NAME = "active.json"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


class StoreError(RuntimeError):
    """The store cannot take or give a model (bad version name, conflicting content, unreadable pointer)."""


@dataclass(frozen=True)
class ActiveEntry:
    version: str
    sha256: str
    activated_at: float
    history: tuple[str, ...] = ()  # previously active versions, newest first


class ModelStore:
    def __init__(self, root: Path, keep: int = 5) -> None:
        self.root = Path(root).expanduser()
        self.keep = max(1, keep)
        self.versions_dir = self.root / "versions"
        self.engines_dir = self.root / "engines"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

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

    def install(self, package_dir: Path, manifest: Manifest) -> Path:
        """Copy a verified package into versions/<version> (atomically: copy to a temp dir, verify the copy,
        rename). Re-installing the same version with the same model is a no-op; the same version with a
        different model is refused (versions are immutable, so a restart can trust the pointer)."""
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
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"active model pointer {path} unreadable: {exc}") from exc

    def activate(self, manifest: Manifest) -> ActiveEntry:
        """Point the store at an installed version (after it passed its self-test and serves parts)."""
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
        entry = ActiveEntry(manifest.version, manifest.sha256, time.time(), tuple(history[: self.keep - 1]))
        document = {
            "version": entry.version,
            "sha256": entry.sha256,
            "activated_at": entry.activated_at,
            "history": list(entry.history),
        }
        atomic_write_bytes(self.root / ACTIVE_NAME, (json.dumps(document, indent=2) + "\n").encode())
        self._prune(keep={entry.version, *entry.history})
        return entry

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

    def _prune(self, keep: set[str]) -> None:
        """Drop versions no longer in the active pointer's history (disk space on the Jetson)."""
        for version in self.versions():
            if version not in keep:
                shutil.rmtree(self.versions_dir / version, ignore_errors=True)
        for stale in self.versions_dir.glob(".trash-*"):
            shutil.rmtree(stale, ignore_errors=True)
        kept_shas = {m.sha256[:12] for m in map(_read_manifest, (self.versions_dir / v for v in keep)) if m}
        if self.engines_dir.is_dir():
            for engine in self.engines_dir.iterdir():
                if engine.name.split("_", 1)[0] not in kept_shas:
                    with contextlib.suppress(OSError):
                        engine.unlink()


def _check_version_name(version: str) -> None:
    if not _VERSION_RE.match(version or "") or version in (".", ".."):
        raise StoreError(
            f"model version {version!r} cannot name a store directory (letters, digits, '.', '_', '+', '-')"
        )


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
