"""Loading a model package and swapping it in while parts keep flowing.

load() (inference/load_model): the package must be a version in the model store, and the store's model policy
must allow activating it now (ModelStore.check_activation: installed by a verified update or the operator, not
older than or superseded by the active version unless a rollback to exactly it is authorised). Then: read the
manifest, check the requested version/sha256, verify the model file's sha256, load it on the configured
backend, warm it up, run the golden-set self-test, swap it into the pipeline between two batches, and only then
move the store's active pointer. Any failure keeps the serving model and reports why; the new model's resources
are released. One load at a time. The caller runs load() in a thread of its own (the node: the service's
callback group).

load_initial() (start-up) is the node's own choice, not a request: the store's active version and its earlier
good ones, then the params' `model_path`, which is copied into the store (ORIGIN_PARAMS, its manifest's sha256
checked) once it passed its self-test.

load_shadow() (inference/load_shadow): a version of the store (installed with that sha256; no version order, a
shadow never decides) brought up and self-tested like a live model, then handed to the ShadowRunner and
recorded as the store's shadow pointer; an empty path and version clear the shadow. load_initial_shadow() brings
the recorded shadow back after a restart. A live load of the shadow's version (its promotion) ends the shadow run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from qc_cell.inference.backends import BackendChoice, BackendError, BackendOptions, create_backend
from qc_cell.inference.model import LoadedModel, SelfTestError
from qc_cell.inference.model_store import ORIGIN_PARAMS, ModelStore, StoreError
from qc_cell.inference.pipeline import InferencePipeline
from qc_cell.inference.shadow import ShadowRunner
from qc_contract.model_manifest import MANIFEST_NAME, Manifest, ManifestError

_log = logging.getLogger(__name__)

# ModelInfo.state values (see msg/ModelInfo.msg).
NONE, LOADING, ACTIVE, FAILED = "none", "loading", "active", "failed"


@dataclass(frozen=True)
class ModelState:
    state: str  # NONE | LOADING | ACTIVE | FAILED
    version: str = ""  # the version serving parts ("" = none)
    sha256: str = ""
    backend: str = ""
    precision: str = ""
    message: str = ""
    decision_bands: tuple[float, float] | None = None  # (reinspect, defective) its package proposes, if any


@dataclass(frozen=True)
class LoadResult:
    success: bool
    message: str
    active_version: str


class LoadError(RuntimeError):
    """A stage of loading failed; the message names the stage and the cause."""


class ModelManager:
    def __init__(
        self,
        pipeline: InferencePipeline,
        choice: BackendChoice,
        options: BackendOptions,
        store: ModelStore | None = None,
        require_golden_set: bool = False,
        on_state: Callable[[ModelState], None] = lambda state: None,
        shadow: ShadowRunner | None = None,
        on_shadow: Callable[[str, str], None] = lambda version, message: None,
    ) -> None:
        self.pipeline = pipeline
        self.choice = choice
        self.options = options
        self.store = store
        self.require_golden_set = require_golden_set
        self._on_state = on_state
        self.shadow = shadow
        self._on_shadow = on_shadow  # (shadow version, message) after every change of the shadow
        self._load_lock = threading.Lock()
        self.state = ModelState(NONE, message="no model loaded yet")

    # ---- public -----------------------------------------------------------------------------------
    def load(self, path: str, expected_version: str = "", expected_sha256: str = "") -> LoadResult:
        """A request (inference/load_model): `path` is a version directory of the store (or its manifest), or
        empty with `expected_version` naming the store's version."""
        if not self._load_lock.acquire(blocking=False):
            return LoadResult(False, "another model load is in progress; try again when it finishes", self._active())
        try:
            shown = path or (f"version {expected_version}" if expected_version else "")
            return self._load_locked(shown, lambda: self._read_from_store(path, expected_version, expected_sha256))
        finally:
            self._load_lock.release()

    def load_initial(self, model_path: str) -> LoadResult:
        """Start-up: the store's active model (the last one that passed its self-test), then its earlier good
        ones, then the configured `model_path`. Nothing usable: no model, every part NOT_INSPECTED."""
        tried = []
        with self._load_lock:
            for candidate in self.store.candidates() if self.store is not None else []:
                result = self._load_locked(str(candidate), partial(self._read, str(candidate), "", ""))
                if result.success:
                    return result
                tried.append(f"store {candidate.name}: {result.message}")
            if model_path:
                result = self._load_locked(model_path, partial(self._read, model_path, "", ""), ORIGIN_PARAMS)
                if result.success:
                    return result
                tried.append(f"{model_path}: {result.message}")
        message = "no model: " + ("; ".join(tried) if tried else "model_path is empty and the store holds none")
        message += " - every part is NOT_INSPECTED until inference/load_model succeeds"
        self._set_state(ModelState(FAILED if tried else NONE, message=message))
        return LoadResult(False, message, "")

    # ---- stages -----------------------------------------------------------------------------------
    def _load_locked(
        self, path: str, read: Callable[[], tuple[Path, Manifest]], install_origin: str = ""
    ) -> LoadResult:
        """Read (and check) the package with `read`, bring it up, swap it in, activate it; a package from outside
        the store is copied into it first when `install_origin` says by whom (start-up's model_path)."""
        current = self.pipeline.model
        self._set_state(self._serving_state(LOADING, f"loading {path}"))
        model = None
        try:
            package_dir, manifest = read()
            model, summary = self._bring_up(package_dir, manifest)
            if self.store is not None and install_origin and not self.store.contains(package_dir):
                try:
                    model.package_dir = self.store.install(package_dir, manifest, install_origin, str(package_dir))
                except (StoreError, ManifestError, OSError) as exc:
                    raise LoadError(f"cannot copy the package into the model store: {exc}") from exc
        except Exception as exc:  # whatever went wrong, the serving model stays and the caller learns why
            if model is not None:
                model.close()
            known = isinstance(exc, (LoadError, ManifestError, BackendError, SelfTestError, StoreError))
            if not known:
                _log.exception("unexpected error while loading %s", path)
            message = f"load of {path} failed: {exc if known else f'{type(exc).__name__}: {exc}'}"
            if current is not None:
                message += f"; model {current.version} keeps serving"
            self._set_state(self._serving_state(FAILED, message))
            return LoadResult(False, message, self._active())
        previous = self.pipeline.swap(model)  # between two batches; see InferencePipeline.swap
        if previous is not None:
            previous.close()
        message = f"{model.describe()}; {summary}; {self.choice.message}"
        if self.store is not None:
            try:
                self.store.activate(manifest)
            except (StoreError, OSError) as exc:
                message += f"; WARNING: active pointer not updated ({exc}), a restart would load the previous model"
                _log.error("model store: %s", exc)
        self._set_state(self._serving_state(ACTIVE, message))
        if self.shadow is not None and self.shadow.version == model.version:  # promoted: the shadow run ends
            self._replace_shadow(None, f"shadow {model.version} promoted to live")
        return LoadResult(True, message, model.version)

    # ---- shadow -------------------------------------------------------------------------------------
    def load_shadow(self, path: str, expected_version: str = "", expected_sha256: str = "") -> LoadResult:
        """inference/load_shadow: bring up a store version as the shadow model; empty path and version clear it."""
        if self.shadow is None:
            return LoadResult(False, "this inference node runs no shadow models", self._active())
        if not self._load_lock.acquire(blocking=False):
            return LoadResult(False, "another model load is in progress; try again when it finishes", self._active())
        try:
            if not path and not expected_version:
                if self.store is not None:
                    try:
                        self.store.clear_shadow()
                    except (StoreError, OSError) as exc:
                        return LoadResult(False, f"cannot clear the shadow pointer: {exc}", self._active())
                self._replace_shadow(None, "shadow model cleared")
                return LoadResult(True, "shadow model cleared", self._active())
            return self._load_shadow_locked(path, expected_version, expected_sha256)
        finally:
            self._load_lock.release()

    def load_initial_shadow(self) -> LoadResult | None:
        """Start-up: the shadow the store records (None: there is none). Failing, the pointer stays for the
        operator to see; the shadow slot stays empty."""
        if self.shadow is None or self.store is None:
            return None
        try:
            entry = self.store.shadow()
        except StoreError as exc:
            return LoadResult(False, str(exc), self._active())
        if entry is None:
            return None
        with self._load_lock:
            return self._load_shadow_locked("", entry.version, entry.sha256)

    def _load_shadow_locked(self, path: str, expected_version: str, expected_sha256: str) -> LoadResult:
        shown = path or f"version {expected_version}"
        model = None
        try:
            if self.store is None:
                raise LoadError("no model store (model_store_dir is empty): a shadow model comes from the store")
            if not path:
                path = str(self.store.path(expected_version))
            if not self.store.contains(_package_dir(path)):
                raise LoadError(f"{path} is not a package in the model store {self.store.versions_dir}")
            package_dir, manifest = self._read(path, expected_version, expected_sha256)
            if manifest.version != package_dir.name:
                raise LoadError(f"store directory {package_dir.name} holds version {manifest.version}")
            if manifest.version == self._active():
                raise LoadError(f"version {manifest.version} is the live model")
            self.store.check_shadow(manifest.version, manifest.sha256)
            model, summary = self._bring_up(package_dir, manifest)
            self.store.set_shadow(manifest)
        except Exception as exc:
            if model is not None:
                model.close()
            known = isinstance(exc, (LoadError, ManifestError, BackendError, SelfTestError, StoreError))
            if not known:
                _log.exception("unexpected error while loading shadow %s", shown)
            message = f"shadow load of {shown} failed: {exc if known else f'{type(exc).__name__}: {exc}'}"
            return LoadResult(False, message, self._active())
        message = f"shadow {model.describe()}; {summary}"
        self._replace_shadow(model, message)
        return LoadResult(True, message, self._active())

    def _replace_shadow(self, model, message: str) -> None:
        previous = self.shadow.set_model(model)
        if previous is not None:
            previous.close()
        try:
            self._on_shadow(self.shadow.version, message)
        except Exception:
            _log.exception("shadow state callback failed")

    def _read_from_store(self, path: str, expected_version: str, expected_sha256: str) -> tuple[Path, Manifest]:
        """A load request's package: a version directory of the store that the model policy allows now."""
        if self.store is None:
            raise LoadError(
                "no model store (model_store_dir is empty): inference/load_model loads only packages from the store"
            )
        if not path and expected_version:
            path = str(self.store.path(expected_version))
        if path and not self.store.contains(_package_dir(path)):
            raise LoadError(
                f"{path} is not a package in the model store {self.store.versions_dir}: inference loads only "
                "packages installed there by a verified update or by `python -m qc_cell.tools.model install`"
            )
        package_dir, manifest = self._read(path, expected_version, expected_sha256)
        if manifest.version != package_dir.name:
            raise LoadError(f"store directory {package_dir.name} holds version {manifest.version}")
        self.store.check_activation(manifest.version, manifest.sha256)
        return package_dir, manifest

    def _read(self, path: str, expected_version: str, expected_sha256: str) -> tuple[Path, Manifest]:
        if not path:
            raise LoadError("no package path given")
        package_dir = _package_dir(path)
        if not package_dir.is_dir():
            raise LoadError(f"package directory {package_dir} does not exist")
        manifest = Manifest.load(package_dir)
        if expected_version and manifest.version != expected_version:
            raise LoadError(f"package holds version {manifest.version}, {expected_version} was requested")
        if expected_sha256 and manifest.sha256 != expected_sha256.lower():
            raise LoadError(f"package model sha256 {manifest.sha256} is not the requested {expected_sha256}")
        manifest.verify_model_file(package_dir)
        return package_dir, manifest

    def _bring_up(self, package_dir: Path, manifest: Manifest) -> tuple[LoadedModel, str]:
        """Backend load, warm-up and golden-set self-test; returns the model and the self-test summary."""
        backend = create_backend(self.choice.name, package_dir / manifest.model_file, manifest, self.options)
        try:
            model = LoadedModel(package_dir, manifest, backend, self.choice.message)
            model.warm_up()
            if self.require_golden_set and not manifest.golden:
                raise SelfTestError("the package has no golden set and require_golden_set is on")
            return model, model.self_test()
        except BaseException:
            backend.close()
            raise

    # ---- state ------------------------------------------------------------------------------------
    def _active(self) -> str:
        model = self.pipeline.model
        return model.version if model is not None else ""

    def _serving_state(self, state: str, message: str) -> ModelState:
        model = self.pipeline.model
        if model is None:
            return ModelState(state, message=message)
        return ModelState(
            state,
            version=model.version,
            sha256=model.manifest.sha256,
            backend=model.backend.name,
            precision=model.backend.precision,
            message=message,
            decision_bands=(
                (bands.reinspect, bands.defective) if (bands := model.manifest.applicable_bands) is not None else None
            ),
        )

    def _set_state(self, state: ModelState) -> None:
        self.state = state
        try:
            self._on_state(state)
        except Exception:
            _log.exception("model state callback failed")


def _package_dir(path: str) -> Path:
    """The package directory a load names: the directory, or the directory of its manifest file."""
    package_dir = Path(path).expanduser()
    if package_dir.name == MANIFEST_NAME or package_dir.suffix == ".json":
        package_dir = package_dir.parent
    return package_dir
