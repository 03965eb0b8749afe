"""Inference backends behind one interface (base.Backend): onnxruntime (CPU) and tensorrt (NVIDIA GPU),
plus `auto` = TensorRT where usable, else ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qc_cell.inference.backends import onnxruntime_backend, tensorrt_backend
from qc_cell.inference.backends.base import (
    BACKEND_CHOICES,
    BACKEND_NAMES,
    PRECISIONS,
    Backend,
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    TensorSpec,
)
from qc_contract.model_manifest import Manifest

__all__ = [
    "BACKEND_CHOICES",
    "BACKEND_NAMES",
    "PRECISIONS",
    "Backend",
    "BackendChoice",
    "BackendError",
    "BackendOptions",
    "BackendUnavailableError",
    "TensorSpec",
    "availability",
    "create_backend",
    "resolve_backend",
]


def availability(name: str, device: int = 0) -> tuple[bool, str]:
    """(usable here, why) for a concrete backend name."""
    if name == "onnxruntime":
        return onnxruntime_backend.is_available()
    if name == "tensorrt":
        return tensorrt_backend.is_available(device)
    raise ValueError(f"unknown backend {name!r}; one of {BACKEND_NAMES}")


@dataclass(frozen=True)
class BackendChoice:
    name: str  # the concrete backend: onnxruntime or tensorrt
    precision: str  # what it will run in
    message: str  # why this one (for the log and ModelInfo.message)


def resolve_backend(requested: str, precision: str, device: int = 0) -> BackendChoice:
    """Turn the `backend` parameter into a concrete backend. `auto` prefers TensorRT and falls back to
    ONNX Runtime (fp32) with the reason in the message; an explicitly requested backend that is not usable
    raises BackendUnavailableError rather than silently running something else."""
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {requested!r}; one of {BACKEND_CHOICES}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {PRECISIONS}")
    if requested == "auto":
        ok, why = availability("tensorrt", device)
        if ok:
            return BackendChoice("tensorrt", precision, f"auto: TensorRT usable ({why}), {precision}")
        note = "" if precision == "fp32" else f"; {precision} requested, ONNX Runtime runs fp32"
        return BackendChoice("onnxruntime", "fp32", f"auto: ONNX Runtime on the CPU because {why}{note}")
    ok, why = availability(requested, device)
    if not ok:
        raise BackendUnavailableError(f"backend {requested} requested but unusable here: {why}")
    if requested == "onnxruntime" and precision != "fp32":
        raise BackendError(f"the onnxruntime backend runs fp32 only; precision {precision} needs tensorrt")
    return BackendChoice(requested, precision, f"{requested} as configured ({why}), {precision}")


def create_backend(name: str, model_path: Path, manifest: Manifest, options: BackendOptions) -> Backend:
    """Load the package's model on a concrete backend (see resolve_backend for `auto`)."""
    if name == "onnxruntime":
        return onnxruntime_backend.OnnxRuntimeBackend(Path(model_path), manifest, options)
    if name == "tensorrt":
        return tensorrt_backend.TensorRTBackend(Path(model_path), manifest, options)
    raise ValueError(f"unknown backend {name!r}; one of {BACKEND_NAMES}")
