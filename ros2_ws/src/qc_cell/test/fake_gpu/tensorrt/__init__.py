"""Fake TensorRT over ONNX Runtime, with the builder's flags and optimisation profiles recorded (see ../README.md).
Needs a CUDA context current (fake pycuda) where the real library does.

`FAKE_TENSORRT_VERSION` picks the API of a release, as its Python bindings (NVIDIA/TensorRT python/src/infer/
pyCore.cpp) define it:
- 8.4: bindings only (`num_bindings`, `set_binding_shape`, `execute_async_v2`); no named-tensor API.
- 8.5 / 8.6 (JetPack 6.0: 8.6.2): the named-tensor API *and* the deprecated bindings (calling one warns, as
  the real bindings do, and is recorded in DEPRECATED_CALLS); networks are implicit-batch unless created with
  the EXPLICIT_BATCH flag, and the ONNX parser refuses implicit-batch networks.
- 10.x (JetPack 6.1/6.2: 10.3): named tensors only (the bindings were removed); explicit batch always.
- 11 and later: no FP16/INT8 builder flags, no EXPLICIT_BATCH flag (strongly typed networks only)."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pycuda.driver as cuda

__version__ = os.environ.get("FAKE_TENSORRT_VERSION", "10.3.0")
_VERSION = tuple(int(part) for part in __version__.split(".")[:2])
_MAJOR = _VERSION[0]
BUILDS: list[dict[str, Any]] = []  # every build's settings, for the tests
DEPRECATED_CALLS: list[str] = []  # deprecated API called (8.x bindings), for the tests


def _deprecated(name: str, replacement: str) -> None:
    DEPRECATED_CALLS.append(name)
    warnings.warn(f"Use {replacement} instead.", DeprecationWarning, stacklevel=3)


class Logger:
    WARNING = 2

    def __init__(self, severity: int = WARNING) -> None:
        self.severity = severity


class BuilderFlag:
    TF32 = "TF32"


class NetworkDefinitionCreationFlag:
    pass


if _MAJOR < 11:  # TensorRT 11: strongly typed networks only, no precision flags, explicit batch only
    BuilderFlag.FP16 = "FP16"
    BuilderFlag.INT8 = "INT8"
    NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 0

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass


class MemoryPoolType:
    WORKSPACE = "WORKSPACE"


class TensorIOMode:
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class DataType:
    FLOAT = "float32"


def nptype(dtype: str) -> type:
    return np.float32


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.shape = shape


def _dims(value_info: Any) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.model_path = ""
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def parse_from_file(self, path: str) -> bool:
        if _MAJOR < 10 and not self.network.flags & 1:  # 8.x: implicit batch unless EXPLICIT_BATCH was given
            self.errors.append(
                "ModelImporter: the ONNX parser only supports networks with an explicit batch dimension: "
                "create the network with the EXPLICIT_BATCH NetworkDefinitionCreationFlag"
            )
            return False
        model = onnx.load(path)
        initializers = {i.name for i in model.graph.initializer}
        self.network.model_path = path
        self.network.inputs = [ITensor(i.name, _dims(i)) for i in model.graph.input if i.name not in initializers]
        self.network.outputs = [ITensor(o.name, _dims(o)) for o in model.graph.output]
        return True

    def get_error(self, index: int) -> str:
        return self.errors[index]


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, min: tuple, opt: tuple, max: tuple) -> None:  # TensorRT's argument names
        assert min[0] <= opt[0] <= max[0], f"profile min/opt/max out of order: {min}, {opt}, {max}"
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags = {BuilderFlag.TF32}  # TensorRT allows TF32 by default
        self.profiles: list[IOptimizationProfile] = []
        self.int8_calibrator: Any = None
        self.calibration_profile: IOptimizationProfile | None = None
        self.pool_limits: dict[str, int] = {}

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: str) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> None:
        self.calibration_profile = profile


class Builder:
    platform_has_fast_fp16 = True
    platform_has_fast_int8 = True

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        cuda.require_context()
        if config.int8_calibrator is not None:  # calibrate: every batch, then the cache
            while config.int8_calibrator.get_batch([network.inputs[0].name]) is not None:
                pass
            config.int8_calibrator.write_calibration_cache(b"fake calibration table")
        (name, (low, opt, high)) = next(iter(config.profiles[0].shapes.items()))
        description = {
            "version": __version__,
            "model": network.model_path,
            "input": [name, list(network.inputs[0].shape)],
            "outputs": [[o.name, list(o.shape)] for o in network.outputs],
            "profile": [list(low), list(opt), list(high)],
            "flags": sorted(config.flags),
            "network_flags": network.flags,
        }
        BUILDS.append(description)
        return json.dumps(description).encode()


def engine_bytes(model: str, profile: list[list[int]]) -> bytes:
    """A serialized engine of an ONNX model with one input profile (min, opt, max), as the fake trtexec writes."""
    network = INetworkDefinition(1)  # trtexec creates ONNX networks explicit-batch
    OnnxParser(network, Logger()).parse_from_file(model)
    description = {
        "version": __version__,
        "model": model,
        "input": [network.inputs[0].name, list(network.inputs[0].shape)],
        "outputs": [[o.name, list(o.shape)] for o in network.outputs],
        "profile": profile,
        "flags": [],
    }
    return json.dumps(description).encode()


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, blob: bytes) -> ICudaEngine | None:
        cuda.require_context()
        try:
            description = json.loads(bytes(blob))
        except ValueError:
            return None
        if description.get("version") != __version__:
            return None  # engines only load on the TensorRT that built them
        return ICudaEngine(description)


class ICudaEngine:
    def __init__(self, description: dict[str, Any]) -> None:
        self.description = description
        self.input_name, self.input_shape = description["input"][0], tuple(description["input"][1])
        self.output_shapes = {name: tuple(shape) for name, shape in description["outputs"]}
        self.profile = [tuple(s) for s in description["profile"]]

    @property
    def num_io_tensors(self) -> int:
        return 1 + len(self.output_shapes)

    def get_tensor_name(self, index: int) -> str:
        return [self.input_name, *self.output_shapes][index]

    def get_tensor_mode(self, name: str) -> str:
        return TensorIOMode.INPUT if name == self.input_name else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.input_shape if name == self.input_name else self.output_shapes[name]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        assert name == self.input_name and profile_index == 0
        return self.profile

    def create_execution_context(self) -> IExecutionContext:
        cuda.require_context()
        return IExecutionContext(self)

    # ---- the binding API (TensorRT 8.x; deprecated from 8.5, removed in 10) ----
    @property
    def num_bindings(self) -> int:
        return self.num_io_tensors

    @property
    def max_batch_size(self) -> int:
        return 1  # explicit-batch engines

    def get_binding_name(self, index: int) -> str:
        _deprecated("ICudaEngine.get_binding_name", "get_tensor_name")
        return [self.input_name, *self.output_shapes][index]

    def binding_is_input(self, index: int | str) -> bool:
        _deprecated("ICudaEngine.binding_is_input", "get_tensor_mode")
        name = index if isinstance(index, str) else [self.input_name, *self.output_shapes][index]
        return name == self.input_name

    def get_binding_shape(self, index: int | str) -> tuple[int, ...]:
        _deprecated("ICudaEngine.get_binding_shape", "get_tensor_shape")
        name = index if isinstance(index, str) else [self.input_name, *self.output_shapes][index]
        return self.input_shape if name == self.input_name else self.output_shapes[name]

    def get_binding_dtype(self, index: int | str) -> str:
        _deprecated("ICudaEngine.get_binding_dtype", "get_tensor_dtype")
        return DataType.FLOAT

    def get_profile_shape(self, profile_index: int, binding: int | str) -> list[tuple[int, ...]]:
        _deprecated("ICudaEngine.get_profile_shape", "get_tensor_profile_shape")
        assert binding in (0, self.input_name) and profile_index == 0
        return self.profile


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.input_shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.session = onnxruntime.InferenceSession(engine.description["model"], providers=["CPUExecutionProvider"])

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return self._set_input_shape(name, shape)

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.profile
        if name != self.engine.input_name or not low[0] <= shape[0] <= high[0] or tuple(shape[1:]) != low[1:]:
            return False
        self.input_shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._tensor_shape(name)

    def _tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self.engine.input_name:
            return self.input_shape or self.engine.input_shape
        batch = self.input_shape[0] if self.input_shape else -1
        return (batch, *self.engine.output_shapes[name][1:])

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        return self._execute()

    # ---- the binding API (TensorRT 8.x; deprecated from 8.5, removed in 10) ----
    def set_binding_shape(self, index: int, shape: tuple[int, ...]) -> bool:
        _deprecated("IExecutionContext.set_binding_shape", "set_input_shape")
        return index == 0 and self._set_input_shape(self.engine.input_name, shape)

    def get_binding_shape(self, index: int) -> tuple[int, ...]:
        _deprecated("IExecutionContext.get_binding_shape", "get_tensor_shape")
        return self._tensor_shape([self.engine.input_name, *self.engine.output_shapes][index])

    def execute_async_v2(self, bindings: list[int], stream_handle: int) -> bool:
        _deprecated("IExecutionContext.execute_async_v2", "execute_async_v3")
        for name, address in zip([self.engine.input_name, *self.engine.output_shapes], bindings, strict=True):
            self.addresses[name] = int(address)
        return self._execute()

    def _execute(self) -> bool:
        cuda.require_context()
        if self.input_shape is None:
            return False  # TensorRT: "not all input shapes are specified"
        missing = [n for n in (self.engine.input_name, *self.engine.output_shapes) if n not in self.addresses]
        if missing:
            return False  # TensorRT: "Neither address or allocator is set for output tensor"
        shape = self.input_shape
        count = int(np.prod(shape))
        raw = cuda.read_device(self.addresses[self.engine.input_name], count * 4)
        batch = np.frombuffer(raw, dtype=np.float32).reshape(shape)
        names = list(self.engine.output_shapes)
        for name, value in zip(names, self.session.run(names, {self.engine.input_name: batch}), strict=True):
            cuda.write_device(self.addresses[name], np.ascontiguousarray(value, dtype=np.float32).tobytes())
        return True


# What each release's bindings define (see the module docstring).
_NAMED_TENSOR_API = {
    ICudaEngine: (
        "num_io_tensors",
        "get_tensor_name",
        "get_tensor_mode",
        "get_tensor_dtype",
        "get_tensor_shape",
        "get_tensor_profile_shape",
    ),
    IExecutionContext: ("set_input_shape", "set_tensor_address", "get_tensor_shape", "execute_async_v3"),
}
_BINDING_API = {
    ICudaEngine: (
        "num_bindings",
        "max_batch_size",
        "get_binding_name",
        "binding_is_input",
        "get_binding_shape",
        "get_binding_dtype",
        "get_profile_shape",
    ),
    IExecutionContext: ("set_binding_shape", "get_binding_shape", "execute_async_v2"),
}
for _api, _present in ((_NAMED_TENSOR_API, _VERSION >= (8, 5)), (_BINDING_API, _MAJOR < 10)):
    if not _present:
        for _cls, _names in _api.items():
            for _name in _names:
                delattr(_cls, _name)
