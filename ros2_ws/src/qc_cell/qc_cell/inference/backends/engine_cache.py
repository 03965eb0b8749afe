"""TensorRT engine cache: an engine is only valid for the model, TensorRT version, GPU and build settings
it was built with, so all of them are in its key. Files are written atomically (temp file, fsync, rename),
so a power cut during a multi-minute build on the Jetson never leaves a half-written engine behind that
would be loaded at the next start.

Integrity: a serialised engine is code for the GPU runtime (plugins, kernels), and deserialising a crafted one
is not safe. So every engine is stored with an HMAC-SHA256 over its key and its bytes, under a per-cell secret
key file (created on first use, mode 0600; engine_key_file), and load() checks it before anything reaches
TensorRT: an engine written by anyone without the key (a planted file, an engine copied from another cell or
renamed to another model's key, a bit flip) is refused with EngineIntegrityError and rebuilt from the verified
ONNX model. Pure Python: testable without a GPU."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from qc_contract.model_manifest import Manifest

OPT_BATCH = 1  # profile min 1, opt 1 (what the line runs), max = max_batch


@dataclass(frozen=True)
class EngineKey:
    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str
    max_batch: int
    input_chw: tuple[int, int, int]
    compute_capability: str = ""
    opt_batch: int = OPT_BATCH  # the optimisation profile's tuned batch (the line runs batch 1)
    calibration: str = ""  # INT8: digest of the calibration images (calibration_digest); "" otherwise

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def file_name(self) -> str:
        """Readable and unique: <model sha prefix>_trt<version>_<gpu>_<precision>_b<max batch>_<key digest>."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"
        trt_version = re.sub(r"[^0-9.]+", "", self.tensorrt_version) or "unknown"
        return (
            f"{self.model_sha256[:12]}_trt{trt_version}_{gpu}_{self.precision}_b{self.max_batch}_{self.digest()}.engine"
        )


def engine_key(
    manifest: Manifest,
    precision: str,
    max_batch: int,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    calibration: str = "",
) -> EngineKey:
    """The cache key of a model package's engine: the one naming function of the inference node and of
    qc_cloud's build_trt_engine.sh (through `python -m qc_cell.inference.backends.engine_name`)."""
    spec = manifest.preprocessing
    return EngineKey(
        model_sha256=manifest.sha256,
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        precision=precision,
        max_batch=max_batch,  # the requested profile (a static batch-1 model builds as 1)
        input_chw=(3, spec.input_height, spec.input_width),
        compute_capability=compute_capability,
        calibration=calibration,
    )


def calibration_digest(files: list[Path]) -> str:
    """Identity of an INT8 calibration set: the images' names and contents, in order. Another set gives another
    calibration, so another calibration cache and another engine."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).name.encode() + b"\0")
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path so that readers see either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable (the directory entry), where the OS allows opening directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


KEY_FILE_NAME = ".engine_hmac.key"  # default key file, inside the cache directory (dot files are never pruned)
KEY_BYTES = 32


class EngineIntegrityError(RuntimeError):
    """A cached engine without a valid keyed digest: it must not be deserialised."""


def load_or_create_key(path: Path) -> bytes:
    """The cell's engine key: read it, or create it (32 random bytes, mode 0600, never replaced once written)."""
    path = Path(path).expanduser()
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created meanwhile by another process
            key = path.read_bytes()
        else:
            key = secrets.token_bytes(KEY_BYTES)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(path.parent)
    if len(key) < KEY_BYTES:
        raise EngineIntegrityError(f"engine key file {path} holds {len(key)} bytes, at least {KEY_BYTES} needed")
    return key


class EngineCache:
    def __init__(self, directory: Path, key: bytes) -> None:
        """`key`: the cell's secret (load_or_create_key) that every cached engine's digest is made with."""
        if len(key) < KEY_BYTES:
            raise ValueError(f"engine cache key must be at least {KEY_BYTES} bytes")
        self.directory = Path(directory).expanduser()
        self._key = key

    def path(self, key: EngineKey) -> Path:
        return self.directory / key.file_name()

    def digest(self, key: EngineKey, engine: bytes) -> str:
        """HMAC-SHA256 over the engine's key (what it was built for) and its bytes."""
        mac = hmac.new(self._key, json.dumps(asdict(key), sort_keys=True).encode() + b"\0", hashlib.sha256)
        mac.update(engine)
        return mac.hexdigest()

    def load(self, key: EngineKey) -> bytes | None:
        """The cached engine for `key` after its digest checked out; None when there is none. Raises
        EngineIntegrityError for an engine whose digest is missing or wrong (never hand it to TensorRT)."""
        path = self.path(key)
        try:
            engine = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            recorded = str(json.loads(path.with_suffix(".json").read_text())["hmac_sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EngineIntegrityError(f"cached engine {path.name} has no readable digest ({exc})") from exc
        if not hmac.compare_digest(recorded, self.digest(key, engine)):
            raise EngineIntegrityError(
                f"cached engine {path.name} fails its keyed digest: not written by this cell for this model"
            )
        return engine

    def store(self, key: EngineKey, engine: bytes) -> Path:
        path = self.path(key)
        atomic_write_bytes(path, engine)
        sidecar = {**asdict(key), "hmac_sha256": self.digest(key, engine)}
        atomic_write_bytes(path.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())
        return path

    def discard(self, key: EngineKey) -> None:
        """Drop an engine that the runtime refused (corrupt, or from another TensorRT build)."""
        for p in (self.path(key), self.path(key).with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
