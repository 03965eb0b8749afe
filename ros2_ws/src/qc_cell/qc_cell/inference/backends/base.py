"""The interface every inference backend implements, so the rest of the node never knows which runtime
scores a part. A backend runs one ONNX model on a float32 NCHW batch and returns its named outputs."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BACKEND_NAMES = ("onnxruntime", "tensorrt")
BACKEND_CHOICES = ("auto", *BACKEND_NAMES)
PRECISIONS = ("fp32", "fp16", "int8")


class BackendError(RuntimeError):
    """The backend cannot load or run the model; the message says why in words an operator can act on."""


class BackendUnavailableError(BackendError):
    """The backend's runtime (library, GPU) is not present on this machine."""


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model. Fields a backend does not use are ignored by it (e.g. threads by TensorRT)."""

    threads: int = 2  # ONNX Runtime intra-op threads
    precision: str = "fp32"  # fp32 | fp16 | int8 (fp16/int8: TensorRT only)
    max_batch: int = 1  # largest batch the backend must accept (TensorRT optimisation profile)
    engine_cache_dir: str = ""  # TensorRT engine cache; "" = no cache (build every load)
    engine_key_file: str = ""  # secret for the cached engines' HMAC; "" = <engine_cache_dir>/.engine_hmac.key
    workspace_mb: int = 1024  # TensorRT builder workspace
    int8_calibration_dir: str = ""  # images for INT8 calibration (TensorRT, precision int8)
    int8_calibration_images: int = 256  # at most this many calibration images
    device: int = 0  # CUDA device index


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]  # None or a name for a dynamic dimension
    dtype: str


class Backend(abc.ABC):
    """One loaded model on one runtime. run() may be called from any thread, one call at a time."""

    name: str = ""  # onnxruntime | tensorrt
    precision: str = "fp32"  # what the model actually runs in

    @property
    @abc.abstractmethod
    def inputs(self) -> Sequence[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> Sequence[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def max_batch(self) -> int:
        """Largest batch run() accepts (1 for a model with a fixed batch dimension of 1)."""

    @abc.abstractmethod
    def run(self, batch: np.ndarray, output_names: Sequence[str]) -> dict[str, np.ndarray]:
        """batch: float32 (N, 3, H, W) C-contiguous, N <= max_batch. Returns the requested outputs (N, ...)."""

    def close(self) -> None:  # noqa: B027 - optional hook; default: nothing to release
        """Release runtime resources. The backend must not be used afterwards."""

    def describe(self) -> str:
        return f"{self.name} {self.precision}"


def check_batch(batch: np.ndarray, expected_chw: tuple[int, int, int], max_batch: int) -> None:
    """Reject a batch the model cannot take, before it reaches the runtime (whose errors are cryptic)."""
    if batch.dtype != np.float32 or batch.ndim != 4:
        raise BackendError(f"input must be float32 NCHW, got {batch.dtype} with shape {batch.shape}")
    if tuple(batch.shape[1:]) != tuple(expected_chw):
        raise BackendError(f"input shape {tuple(batch.shape[1:])} does not match the model's {tuple(expected_chw)}")
    if not 1 <= batch.shape[0] <= max_batch:
        raise BackendError(f"batch of {batch.shape[0]} outside 1..{max_batch}")
