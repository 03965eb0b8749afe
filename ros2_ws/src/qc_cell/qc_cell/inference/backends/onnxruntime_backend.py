"""ONNX Runtime on the CPU: the default backend on x86 cells and the fallback where TensorRT is unusable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qc_cell.inference.backends.base import (
    Backend,
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    TensorSpec,
    check_batch,
)
from qc_cell.inference.backends.input_shape import resolve_max_batch
from qc_contract.model_manifest import Manifest


def is_available() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return False, f"onnxruntime not importable: {exc}"
    return True, "onnxruntime importable"


def _dims(shape: Sequence[object]) -> tuple[int | str | None, ...]:
    return tuple(d if isinstance(d, (int, str)) or d is None else str(d) for d in shape)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_path: Path, manifest: Manifest, options: BackendOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(f"onnxruntime is not installed: {exc}") from exc
        if options.precision != "fp32":
            raise BackendError(f"the onnxruntime backend runs fp32 only, not {options.precision}")
        self.precision = "fp32"
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: ORT's warnings would flood the node log
        try:
            self._session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise BackendError(f"onnxruntime cannot load {Path(model_path).name}: {_first_line(exc)}") from exc
        self._inputs = tuple(TensorSpec(i.name, _dims(i.shape), i.type) for i in self._session.get_inputs())
        self._outputs = tuple(TensorSpec(o.name, _dims(o.shape), o.type) for o in self._session.get_outputs())
        input_name = manifest.input_name
        input_chw = (3, manifest.preprocessing.input_height, manifest.preprocessing.input_width)
        by_name = {spec.name: spec for spec in self._inputs}
        if input_name not in by_name:
            raise BackendError(f"model has no input '{input_name}' (inputs: {sorted(by_name)})")
        if len(self._inputs) != 1:
            raise BackendError(f"model must have exactly one input, it has {[i.name for i in self._inputs]}")
        if by_name[input_name].dtype != "tensor(float)":
            raise BackendError(f"model input '{input_name}' is {by_name[input_name].dtype}, float32 expected")
        self._input_name = input_name
        self._input_chw = tuple(input_chw)
        self._max_batch = resolve_max_batch(by_name[input_name].shape, input_name, input_chw, options.max_batch)

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        return self._outputs

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def run(self, batch: np.ndarray, output_names: Sequence[str]) -> dict[str, np.ndarray]:
        check_batch(batch, self._input_chw, self._max_batch)
        if self._session is None:
            raise BackendError("onnxruntime backend is closed")
        try:
            values = self._session.run(list(output_names), {self._input_name: batch})
        except Exception as exc:
            raise BackendError(f"onnxruntime run failed: {_first_line(exc)}") from exc
        return dict(zip(output_names, values, strict=True))

    def close(self) -> None:
        self._session = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
