"""TensorRT on the Jetson (or any NVIDIA GPU): engine built from the package's ONNX on the device, cached.

- Precision: FP16 by default (builder flag), INT8 with an entropy calibrator over a directory of images
  (preprocessed with the manifest, so calibration sees what the model sees), FP32 on request with TF32 off
  (TensorRT allows TF32 by default, which Orin's Ampere GPU would use). TensorRT 11 has no FP16/INT8 builder
  flags (strongly typed networks): asking for them there is a clear error, before any build.
- Optimisation profile: batch 1..max_batch, tuned (opt) for batch 1, what the line runs.
- Engine cache: keyed by model sha256 + TensorRT version + GPU (name, compute capability) + precision +
  batch profile (+ the INT8 calibration images), written atomically, with an HMAC under the cell's engine key
  checked before deserialising (engine_cache.py); `engine_key` is also what qc_cloud's build_trt_engine.sh names
  its engines with. A cached engine that fails the check, or that TensorRT refuses, is rebuilt.
- One execution API: the named tensors (`set_input_shape` / `set_tensor_address` / `execute_async_v3`) of
  TensorRT 8.5+, i.e. JetPack 6.0 (TensorRT 8.6) and 6.1/6.2 (10.3); features are checked, not versions.
- CUDA contexts: ROS callbacks and our worker run in threads that are not the one which created the CUDA
  context, which is where the classic `invalid device context` / `cuMemcpyHtoDAsync failed` errors come from.
  We never import pycuda.autoinit (it binds a new context to the importing thread). Instead the device's
  primary context (the one the CUDA runtime inside TensorRT also uses) is retained once per process, shared by
  every backend and never detached, and pushed/popped around every CUDA call, in whichever thread makes it.
- close() frees the device buffers and the page-locked host buffers (physical RAM on a Jetson) at once, also
  after a load that failed half-way; a hot swap therefore leaks nothing.

No GPU on the development machine: the tests marked `gpu` run it on a device; the lifecycle logic is also tested
against a fake TensorRT and pycuda (qc_cell/test/fake_gpu).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qc_cell.inference.backends.base import (
    Backend,
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    TensorSpec,
    check_batch,
)
from qc_cell.inference.backends.engine_cache import (
    KEY_FILE_NAME,
    EngineCache,
    EngineIntegrityError,
    EngineKey,
    atomic_write_bytes,
    calibration_digest,
    engine_key,
    load_or_create_key,
)
from qc_cell.inference.backends.input_shape import resolve_max_batch
from qc_contract.model_manifest import Manifest

_log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_available(device: int = 0) -> tuple[bool, str]:
    """(usable, why): TensorRT and pycuda importable and a CUDA device present."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, f"tensorrt not importable ({exc})"
    try:
        import pycuda.driver as cuda

        cuda.init()
        count = cuda.Device.count()
    except ImportError as exc:
        return False, f"pycuda not importable ({exc})"
    except Exception as exc:  # pycuda.driver.Error: no driver, no device, ...
        return False, f"CUDA unusable ({exc})"
    if count <= device:
        return False, f"no CUDA device {device} ({count} found)"
    return True, f"TensorRT {trt.__version__} on {cuda.Device(device).name()}"


_PRIMARY_CONTEXTS: dict[int, CudaContext] = {}
_PRIMARY_CONTEXTS_LOCK = threading.Lock()


class CudaContext:
    """A device's primary context (the one the CUDA runtime inside TensorRT uses), retained once per process and
    never detached: every backend on the device shares it, and any thread makes it current around its CUDA work
    (push/pop). Detaching would only work from the thread that holds it current, and a later backend would have
    to retain it again; keeping it for the life of the process removes that whole class of error."""

    def __init__(self, cuda: Any, device: Any) -> None:
        self.cuda = cuda
        self.device = device
        self._context = device.retain_primary_context()

    @classmethod
    def for_device(cls, device_index: int) -> CudaContext:
        with _PRIMARY_CONTEXTS_LOCK:
            context = _PRIMARY_CONTEXTS.get(device_index)
            if context is None:
                import pycuda.driver as cuda

                cuda.init()
                if cuda.Device.count() <= device_index:
                    raise BackendUnavailableError(f"no CUDA device {device_index}")
                context = _PRIMARY_CONTEXTS[device_index] = cls(cuda, cuda.Device(device_index))
            return context

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        self._context.push()
        try:
            yield self.cuda
        finally:
            self.cuda.Context.pop()

    @property
    def gpu_name(self) -> str:
        return str(self.device.name())

    @property
    def compute_capability(self) -> str:
        major, minor = self.device.compute_capability()
        return f"{major}.{minor}"


def check_named_tensor_api(trt: Any) -> None:
    """TensorRT 8.5+ (JetPack 6.0's 8.6, 6.1's 10.3) has the named-tensor API; it is the only one used here."""
    needed = {
        trt.ICudaEngine: ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_profile_shape"),
        trt.IExecutionContext: ("set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_shape"),
    }
    missing = [f"{cls.__name__}.{name}" for cls, names in needed.items() for name in names if not hasattr(cls, name)]
    if missing:
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} lacks the named-tensor API ({', '.join(missing)}): 8.5 or newer needed"
        )


def precision_flag(trt: Any, precision: str) -> Any:
    """The builder flag of a reduced precision, or a clear error where TensorRT has none (TensorRT 11 builds
    strongly typed networks only: the precision comes from the model's own types, not from a flag)."""
    name = {"fp16": "FP16", "int8": "INT8"}[precision]
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise BackendError(
            f"TensorRT {trt.__version__} has no {name} builder flag (strongly typed networks only): run this model "
            f"with precision fp32, or export it with {precision} types (FP16 weights, or Q/DQ nodes for INT8)"
        )
    return flag


def free_pinned(array: Any) -> None:
    """Release a page-locked host array now (physical RAM on a Jetson), rather than at garbage collection."""
    allocation = getattr(array, "base", None)
    if allocation is not None and hasattr(allocation, "free"):
        allocation.free()


@dataclass
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype
    shape_at_max: tuple[int, ...]
    host: Any = None  # page-locked numpy array for max batch
    device: Any = None  # pycuda DeviceAllocation


def _calibration_files(directory: str, limit: int) -> list[Path]:
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise BackendError(f"INT8 calibration directory {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise BackendError(f"INT8 calibration directory {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _make_calibrator(trt: Any, cuda: Any, manifest: Manifest, files: list[Path], cache_path: Path) -> Any:
    """An entropy calibrator feeding one preprocessed image per batch (explicit-batch networks calibrate
    with the calibration profile's shape, batch 1 here)."""
    import cv2

    from qc_contract.preprocess import preprocess

    spec = manifest.preprocessing
    nbytes = 3 * spec.input_height * spec.input_width * 4

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._files = list(files)
            self._device = cuda.mem_alloc(nbytes)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            while self._files:
                path = self._files.pop(0)
                image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
                if image is None:
                    _log.warning("INT8 calibration: cannot read %s, skipped", path)
                    continue
                cuda.memcpy_htod(self._device, preprocess(image, spec, "BGR"))
                return [int(self._device)]
            return None

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

        def release(self) -> None:
            self._device.free()  # while the context is current (the build runs inside CudaContext.active)

    return _EntropyCalibrator()


class TensorRTBackend(Backend):
    """run() and close() may come from any thread (the node loads in one, runs in its worker, closes in a
    third on a hot swap); one lock orders them, and a closed backend refuses to run."""

    name = "tensorrt"

    def __init__(self, model_path: Path, manifest: Manifest, options: BackendOptions) -> None:
        ok, why = is_available(options.device)
        if not ok:
            raise BackendUnavailableError(f"TensorRT backend unavailable: {why}")
        import tensorrt as trt

        check_named_tensor_api(trt)
        self._trt = trt
        self.precision = options.precision
        spec = manifest.preprocessing
        self._input_name = manifest.input_name
        self._input_chw = (3, spec.input_height, spec.input_width)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._lock = threading.Lock()
        self._closed = False
        self._runtime = self._engine = self._context = self._stream = None
        self._tensors: list[_Tensor] = []
        self._static_input = False
        self._cuda = CudaContext.for_device(options.device)
        try:
            if options.precision in ("fp16", "int8"):
                precision_flag(trt, options.precision)  # before minutes of work: TensorRT 11 has none
            calibration_files: list[Path] = []
            if options.precision == "int8":
                calibration_files = _calibration_files(options.int8_calibration_dir, options.int8_calibration_images)
            with self._cuda.active() as cuda:
                key = engine_key(
                    manifest,
                    options.precision,
                    options.max_batch,
                    tensorrt_version=trt.__version__,
                    gpu_name=self._cuda.gpu_name,
                    compute_capability=self._cuda.compute_capability,
                    calibration=calibration_digest(calibration_files) if calibration_files else "",
                )
                self.engine_source = ""
                self._engine = self._load_or_build(model_path, manifest, options, key, calibration_files, cuda)
                self._context = self._engine.create_execution_context()
                if self._context is None:
                    raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
                self._stream = cuda.Stream()
                self._allocate(cuda)
        except BaseException:
            self.close()
            raise

    # ---- build / load -------------------------------------------------------------------------
    def _load_or_build(
        self,
        model_path: Path,
        manifest: Manifest,
        options: BackendOptions,
        key: EngineKey,
        calibration_files: list[Path],
        cuda: Any,
    ) -> Any:
        trt = self._trt
        runtime = trt.Runtime(self._logger)
        self._runtime = runtime  # must outlive the engine
        cache = None
        if options.engine_cache_dir:
            cache_dir = Path(options.engine_cache_dir).expanduser()
            key_file = (
                Path(options.engine_key_file).expanduser() if options.engine_key_file else cache_dir / KEY_FILE_NAME
            )
            try:
                cache = EngineCache(cache_dir, load_or_create_key(key_file))
            except (EngineIntegrityError, OSError) as exc:
                raise BackendError(f"TensorRT engine cache key unusable: {exc}") from exc
        if cache is not None:
            try:
                blob = cache.load(key)  # digest checked before TensorRT sees a byte
            except EngineIntegrityError as exc:
                _log.warning("%s; discarded, rebuilding", exc)
                cache.discard(key)
                blob = None
            if blob is not None:
                engine = runtime.deserialize_cuda_engine(blob)
                if engine is not None:
                    self.engine_source = f"cached engine {cache.path(key).name}"
                    return engine
                _log.warning("cached TensorRT engine %s rejected by the runtime; rebuilding", cache.path(key))
                cache.discard(key)
        blob = self._build(model_path, manifest, options, key, calibration_files, cuda)
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise BackendError("TensorRT could not deserialize the engine it just built")
        if cache is not None:
            self.engine_source = f"built engine, cached as {cache.store(key, blob).name}"
        else:
            self.engine_source = "built engine (no cache directory)"
        return engine

    def _build(
        self,
        model_path: Path,
        manifest: Manifest,
        options: BackendOptions,
        key: EngineKey,
        calibration_files: list[Path],
        cuda: Any,
    ) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        # Explicit batch: required by TensorRT 8.x, the only mode (flag deprecated, ignored) in 10, gone after.
        explicit_batch = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
        network = builder.create_network(0 if explicit_batch is None else 1 << int(explicit_batch))
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(str(model_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse {Path(model_path).name}: {errors or 'unknown error'}")
        inputs = [network.get_input(i) for i in range(network.num_inputs)]
        match = [t for t in inputs if t.name == self._input_name]
        if len(inputs) != 1 or not match:
            raise BackendError(f"model inputs {[t.name for t in inputs]}; exactly '{self._input_name}' expected")
        # Same input check as ONNX Runtime's, before spending minutes on a build.
        max_batch = resolve_max_batch(list(match[0].shape), self._input_name, self._input_chw, key.max_batch)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
        if options.precision in ("fp16", "int8"):
            if not getattr(builder, "platform_has_fast_fp16", True):
                _log.warning("this GPU has no fast FP16; building anyway")
            config.set_flag(precision_flag(trt, "fp16"))  # also the fallback for layers INT8 cannot run
        else:
            # fp32 means fp32: TensorRT enables TF32 by default, which Ampere (Orin) would use for convolutions
            # and matrix products (10-bit mantissas), far outside the conformance tests' tolerance.
            tf32 = getattr(trt.BuilderFlag, "TF32", None)
            if tf32 is not None:
                config.clear_flag(tf32)
        c, h, w = self._input_chw
        opt = min(key.opt_batch, max_batch)
        profile = builder.create_optimization_profile()
        profile.set_shape(self._input_name, (1, c, h, w), (opt, c, h, w), (max_batch, c, h, w))
        config.add_optimization_profile(profile)
        calibrator = None
        if options.precision == "int8":
            if not getattr(builder, "platform_has_fast_int8", True):
                _log.warning("this GPU has no fast INT8; building anyway")
            calibration_cache = Path(options.engine_cache_dir or Path(model_path).parent) / (
                f"{manifest.sha256[:12]}_{c}x{h}x{w}_{key.calibration}.calibration"
            )
            calibration_profile = builder.create_optimization_profile()
            calibration_profile.set_shape(self._input_name, (1, c, h, w), (1, c, h, w), (1, c, h, w))
            config.set_flag(precision_flag(trt, "int8"))
            calibrator = _make_calibrator(trt, cuda, manifest, calibration_files, calibration_cache)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(calibration_profile)
        _log.info("building TensorRT %s engine for %s (minutes on a Jetson)", options.precision, model_path)
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.release()
        if serialized is None:
            raise BackendError(f"TensorRT engine build failed for {Path(model_path).name} (see the TensorRT log)")
        return bytes(serialized)

    # ---- buffers and execution ------------------------------------------------------------------
    def _io_tensors(self) -> list[_Tensor]:
        trt, engine = self._trt, self._engine
        tensors = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            tensors.append(_Tensor(name, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), ()))
        return tensors

    def _profile_max_batch(self, tensor: _Tensor) -> int:
        """The engine's largest batch: a static batch dimension, or the optimisation profile's maximum."""
        declared = self._engine.get_tensor_shape(tensor.name)
        self._static_input = all(int(d) > 0 for d in declared)
        if int(declared[0]) > 0:
            return int(declared[0])
        _, _, largest = self._engine.get_tensor_profile_shape(tensor.name, 0)
        return int(largest[0])

    def _set_input_shape(self, tensor: _Tensor, shape: tuple[int, ...]) -> None:
        if self._static_input:
            return  # nothing to choose; check_batch() already holds the batch to the static size
        if self._context.set_input_shape(tensor.name, tuple(shape)) is False:
            raise BackendError(f"TensorRT rejected input shape {shape} for '{tensor.name}'")

    def _output_shape(self, tensor: _Tensor) -> tuple[int, ...]:
        return tuple(int(d) for d in self._context.get_tensor_shape(tensor.name))

    def _allocate(self, cuda: Any) -> None:
        tensors = self._io_tensors()
        inputs = [t for t in tensors if t.is_input]
        if [t.name for t in inputs] != [self._input_name]:
            raise BackendError(f"engine inputs {[t.name for t in inputs]}; exactly '{self._input_name}' expected")
        self._input = inputs[0]
        declared = self._engine.get_tensor_shape(self._input.name)
        resolve_max_batch(list(declared), self._input_name, self._input_chw, 1)  # a stale engine is refused
        self._max_batch = self._profile_max_batch(self._input)
        self._input.shape_at_max = (self._max_batch, *self._input_chw)
        self._set_input_shape(self._input, self._input.shape_at_max)
        self._tensors = tensors  # before allocating: close() frees whatever a failure half-way leaves
        for t in tensors:
            if not t.is_input:
                t.shape_at_max = self._output_shape(t)
                if any(d < 0 for d in t.shape_at_max):
                    raise BackendError(f"engine output '{t.name}' has unresolved shape {t.shape_at_max}")
            t.host = cuda.pagelocked_empty(t.shape_at_max, t.dtype)
            t.device = cuda.mem_alloc(max(1, t.host.nbytes))
            self._context.set_tensor_address(t.name, int(t.device))
        self._outputs_by_name = {t.name: t for t in tensors if not t.is_input}

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return (TensorSpec(self._input.name, self._input.shape_at_max, str(self._input.dtype)),)

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return tuple(TensorSpec(t.name, t.shape_at_max, str(t.dtype)) for t in self._outputs_by_name.values())

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def run(self, batch: np.ndarray, output_names: Sequence[str]) -> dict[str, np.ndarray]:
        check_batch(batch, self._input_chw, self._max_batch)
        missing = [n for n in output_names if n not in self._outputs_by_name]
        if missing:
            raise BackendError(f"engine has no output {missing} (outputs: {sorted(self._outputs_by_name)})")
        n = batch.shape[0]
        with self._lock:
            if self._closed:
                raise BackendError("TensorRT backend is closed")
            with self._cuda.active() as cuda:
                host_in = self._input.host[:n]
                np.copyto(host_in, batch.astype(self._input.dtype, copy=False))
                cuda.memcpy_htod_async(self._input.device, host_in, self._stream)
                self._set_input_shape(self._input, batch.shape)
                if not self._context.execute_async_v3(stream_handle=self._stream.handle):
                    raise BackendError("TensorRT execution failed (see the TensorRT log)")
                results = {}
                for name in output_names:
                    t = self._outputs_by_name[name]
                    host_out = t.host[: self._output_shape(t)[0]]
                    cuda.memcpy_dtoh_async(host_out, t.device, self._stream)
                    results[name] = host_out
                self._stream.synchronize()
                # The page-locked buffers are reused by the next run: hand out float32 copies.
                return {name: np.array(value, dtype=np.float32) for name, value in results.items()}

    def close(self) -> None:
        """Free the GPU and page-locked buffers and the TensorRT objects, in the shared primary context. Safe to
        call twice, from any thread, and after a failed load (whatever was allocated is freed)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._cuda.active():
                tensors, self._tensors = self._tensors, []
                for t in tensors:
                    if t.device is not None:
                        t.device.free()
                        t.device = None
                    if t.host is not None:
                        free_pinned(t.host)
                        t.host = None
                # Release order: execution context, engine, runtime (the runtime must outlive its engines).
                self._context = None
                self._engine = None
                self._runtime = None
                self._stream = None

    def describe(self) -> str:
        return (
            f"tensorrt {self._trt.__version__} {self.precision} on {self._cuda.gpu_name} (named-tensor API); "
            f"{self.engine_source}"
        )
