"""TensorRT on the Jetson (or any NVIDIA GPU): engine built from the package's ONNX on the device, cached.

- Precision: FP16 by default (builder flag), INT8 with an entropy calibrator over a directory of images
  (preprocessed with the manifest, so calibration sees what the model sees), FP32 on request.
- Engine cache: keyed by model sha256 + TensorRT version + GPU (name, compute capability) + precision +
  batch profile, written atomically, with an HMAC under the cell's engine key checked before deserialising
  (engine_cache.py). A cached engine that fails the check, or that TensorRT refuses, is rebuilt.
- Two execution APIs: TensorRT 8.x bindings (`set_binding_shape` / `execute_async_v2`, JetPack 5 and 6.0
  with TensorRT 8.5/8.6) and TensorRT 10 named tensors (`set_input_shape` / `set_tensor_address` /
  `execute_async_v3`, JetPack 6.1+). Bindings were removed in 10, so the major version picks the API.
- CUDA contexts: ROS callbacks and our worker run in threads that are not the one which created the CUDA
  context, which is where the classic `invalid device context` / `cuMemcpyHtoDAsync failed` errors come from.
  We never import pycuda.autoinit (it binds a new context to the importing thread). Instead the device's
  primary context (the one the CUDA runtime inside TensorRT also uses) is retained once per backend and
  pushed/popped around every CUDA call, in whichever thread makes it.

No GPU on the development machine: this module is exercised by the tests marked `gpu`.
"""

from __future__ import annotations

import contextlib
import logging
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


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


class CudaContext:
    """The device's primary context, retained once, made current around each block of CUDA work."""

    def __init__(self, device_index: int) -> None:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() <= device_index:
            raise BackendUnavailableError(f"no CUDA device {device_index}")
        self.cuda = cuda
        self.device = cuda.Device(device_index)
        self._context = self.device.retain_primary_context()

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

    def release(self) -> None:
        self._context.detach()


@dataclass
class _Tensor:
    name: str
    index: int  # binding index (TensorRT 8.x API)
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
    name = "tensorrt"

    def __init__(self, model_path: Path, manifest: Manifest, options: BackendOptions) -> None:
        ok, why = is_available(options.device)
        if not ok:
            raise BackendUnavailableError(f"TensorRT backend unavailable: {why}")
        import tensorrt as trt

        self._trt = trt
        self._named_api = trt_major(trt.__version__) >= 10
        self.precision = options.precision
        spec = manifest.preprocessing
        self._input_name = manifest.input_name
        self._input_chw = (3, spec.input_height, spec.input_width)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._cuda = CudaContext(options.device)
        self._engine = self._context = self._stream = None
        self._tensors: list[_Tensor] = []
        self._static_input = False
        try:
            with self._cuda.active() as cuda:
                key = EngineKey(
                    model_sha256=manifest.sha256,
                    tensorrt_version=trt.__version__,
                    gpu_name=self._cuda.gpu_name,
                    compute_capability=self._cuda.compute_capability,
                    precision=options.precision,
                    max_batch=options.max_batch,  # the requested profile (a static batch-1 model builds as 1)
                    input_chw=self._input_chw,
                )
                self.engine_source = ""
                self._engine = self._load_or_build(model_path, manifest, options, key, cuda)
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
        self, model_path: Path, manifest: Manifest, options: BackendOptions, key: EngineKey, cuda: Any
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
        blob = self._build(model_path, manifest, options, key, cuda)
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise BackendError("TensorRT could not deserialize the engine it just built")
        if cache is not None:
            self.engine_source = f"built engine, cached as {cache.store(key, blob).name}"
        else:
            self.engine_source = "built engine (no cache directory)"
        return engine

    def _build(self, model_path: Path, manifest: Manifest, options: BackendOptions, key: EngineKey, cuda: Any) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        flags = 0 if self._named_api else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
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
            config.set_flag(trt.BuilderFlag.FP16)  # also the fallback for layers INT8 cannot run
        c, h, w = self._input_chw
        profile = builder.create_optimization_profile()
        profile.set_shape(self._input_name, (1, c, h, w), (max_batch, c, h, w), (max_batch, c, h, w))
        config.add_optimization_profile(profile)
        if options.precision == "int8":
            if not getattr(builder, "platform_has_fast_int8", True):
                _log.warning("this GPU has no fast INT8; building anyway")
            files = _calibration_files(options.int8_calibration_dir, options.int8_calibration_images)
            calibration_cache = Path(options.engine_cache_dir or Path(model_path).parent) / (
                f"{manifest.sha256[:12]}_{c}x{h}x{w}.calibration"
            )
            calibration_profile = builder.create_optimization_profile()
            calibration_profile.set_shape(self._input_name, (1, c, h, w), (1, c, h, w), (1, c, h, w))
            config.set_flag(trt.BuilderFlag.INT8)
            calibrator = _make_calibrator(trt, cuda, manifest, files, calibration_cache)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(calibration_profile)
        else:
            calibrator = None
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
        if self._named_api:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                tensors.append(_Tensor(name, i, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), ()))
        else:
            for i in range(engine.num_bindings):
                tensors.append(
                    _Tensor(
                        engine.get_binding_name(i),
                        i,
                        engine.binding_is_input(i),
                        np.dtype(trt.nptype(engine.get_binding_dtype(i))),
                        (),
                    )
                )
        return tensors

    def _profile_max_batch(self, tensor: _Tensor) -> int:
        """The engine's largest batch: a static batch dimension, or the optimisation profile's maximum."""
        engine = self._engine
        declared = engine.get_tensor_shape(tensor.name) if self._named_api else engine.get_binding_shape(tensor.index)
        self._static_input = all(int(d) > 0 for d in declared)
        if int(declared[0]) > 0:
            return int(declared[0])
        if self._named_api:
            _, _, largest = engine.get_tensor_profile_shape(tensor.name, 0)
        else:
            _, _, largest = engine.get_profile_shape(0, tensor.index)
        return int(largest[0])

    def _set_input_shape(self, tensor: _Tensor, shape: tuple[int, ...]) -> None:
        if self._static_input:
            return  # nothing to choose; check_batch() already holds the batch to the static size
        ok = (
            self._context.set_input_shape(tensor.name, shape)
            if self._named_api
            else self._context.set_binding_shape(tensor.index, shape)
        )
        if ok is False:
            raise BackendError(f"TensorRT rejected input shape {shape} for '{tensor.name}'")

    def _output_shape(self, tensor: _Tensor) -> tuple[int, ...]:
        shape = (
            self._context.get_tensor_shape(tensor.name)
            if self._named_api
            else self._context.get_binding_shape(tensor.index)
        )
        return tuple(int(d) for d in shape)

    def _allocate(self, cuda: Any) -> None:
        tensors = self._io_tensors()
        inputs = [t for t in tensors if t.is_input]
        if [t.name for t in inputs] != [self._input_name]:
            raise BackendError(f"engine inputs {[t.name for t in inputs]}; exactly '{self._input_name}' expected")
        self._input = inputs[0]
        declared = (
            self._engine.get_tensor_shape(self._input.name)
            if self._named_api
            else self._engine.get_binding_shape(self._input.index)
        )
        resolve_max_batch(list(declared), self._input_name, self._input_chw, 1)  # a stale engine is refused
        self._max_batch = self._profile_max_batch(self._input)
        self._input.shape_at_max = (self._max_batch, *self._input_chw)
        self._set_input_shape(self._input, self._input.shape_at_max)
        for t in tensors:
            if not t.is_input:
                t.shape_at_max = self._output_shape(t)
                if any(d < 0 for d in t.shape_at_max):
                    raise BackendError(f"engine output '{t.name}' has unresolved shape {t.shape_at_max}")
            t.host = cuda.pagelocked_empty(t.shape_at_max, t.dtype)
            t.device = cuda.mem_alloc(max(1, t.host.nbytes))
            if self._named_api:
                self._context.set_tensor_address(t.name, int(t.device))
        self._tensors = tensors
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
        with self._cuda.active() as cuda:
            host_in = self._input.host[:n]
            np.copyto(host_in, batch.astype(self._input.dtype, copy=False))
            cuda.memcpy_htod_async(self._input.device, host_in, self._stream)
            self._set_input_shape(self._input, batch.shape)
            if self._named_api:
                ok = self._context.execute_async_v3(stream_handle=self._stream.handle)
            else:
                bindings = [int(t.device) for t in sorted(self._tensors, key=lambda t: t.index)]
                ok = self._context.execute_async_v2(bindings=bindings, stream_handle=self._stream.handle)
            if not ok:
                raise BackendError("TensorRT execution failed (see the TensorRT log)")
            results = {}
            for name in output_names:
                t = self._outputs_by_name[name]
                shape = self._output_shape(t)
                host_out = t.host[: shape[0]]
                cuda.memcpy_dtoh_async(host_out, t.device, self._stream)
                results[name] = host_out
            self._stream.synchronize()
        # The page-locked buffers are reused by the next run: hand out float32 copies.
        return {name: np.array(value, dtype=np.float32) for name, value in results.items()}

    def close(self) -> None:
        cuda_ctx = getattr(self, "_cuda", None)
        if cuda_ctx is None:
            return
        with cuda_ctx.active():
            for t in self._tensors:
                if t.device is not None:
                    t.device.free()
            self._tensors = []
            self._context = self._engine = self._stream = None
            self._runtime = None
        cuda_ctx.release()
        self._cuda = None

    def describe(self) -> str:
        api = "named-tensor API" if self._named_api else "binding API"
        return (
            f"tensorrt {self._trt.__version__} {self.precision} on {self._cuda.gpu_name} ({api}); {self.engine_source}"
        )
