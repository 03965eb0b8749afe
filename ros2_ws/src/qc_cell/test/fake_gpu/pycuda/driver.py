"""Fake pycuda.driver: device memory as byte arrays, page-locked host arrays, primary contexts with per-thread
context stacks, and a ledger of everything alive (see ../README.md)."""

from __future__ import annotations

import itertools
import os
import threading
from dataclasses import dataclass, field

import numpy as np


class Error(Exception):
    pass


class LogicError(Error):
    pass


@dataclass
class Ledger:
    device: dict[int, bytearray] = field(default_factory=dict)  # live device allocations by address
    host: set[int] = field(default_factory=set)  # ids of live page-locked allocations
    retained: int = 0
    detached: int = 0
    pushes: dict[str, int] = field(default_factory=dict)  # thread name -> pushes
    pops: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.__init__()


LEDGER = Ledger()
_addresses = itertools.count(0x10000, 0x1000)
_stacks = threading.local()
_initialised = False


def _stack() -> list:
    if not hasattr(_stacks, "contexts"):
        _stacks.contexts = []
    return _stacks.contexts


def require_context() -> None:
    if not _stack():
        raise LogicError("cuMemcpyHtoDAsync failed: invalid device context")


def init() -> None:
    global _initialised
    _initialised = True


class Device:
    @staticmethod
    def count() -> int:
        if not _initialised:
            raise LogicError("cuInit not called")
        return int(os.environ.get("FAKE_CUDA_DEVICES", "1"))

    def __init__(self, index: int) -> None:
        self.index = index

    def name(self) -> str:
        return "Orin (nvgpu)"

    def compute_capability(self) -> tuple[int, int]:
        return (8, 7)

    def retain_primary_context(self) -> Context:
        LEDGER.retained += 1
        return Context(self)


class Context:
    def __init__(self, device: Device) -> None:
        self.device = device

    def push(self) -> None:
        _stack().append(self)
        name = threading.current_thread().name
        LEDGER.pushes[name] = LEDGER.pushes.get(name, 0) + 1

    @staticmethod
    def pop() -> None:
        if not _stack():
            raise LogicError("cuCtxPopCurrent failed: no context current in this thread")
        _stack().pop()
        name = threading.current_thread().name
        LEDGER.pops[name] = LEDGER.pops.get(name, 0) + 1

    def detach(self) -> None:
        LEDGER.detached += 1


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        require_context()
        self.address = next(_addresses)
        LEDGER.device[self.address] = bytearray(nbytes)

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        require_context()
        del LEDGER.device[self.address]


def mem_alloc(nbytes: int) -> DeviceAllocation:
    fail_after = os.environ.get("FAKE_CUDA_FAIL_ALLOC_AFTER")  # this many allocations succeed, then out of memory
    if fail_after is not None and len(LEDGER.device) >= int(fail_after):
        raise Error("cuMemAlloc failed: out of memory")
    return DeviceAllocation(nbytes)


class HostAllocation(bytearray):
    """Page-locked host memory: the base of the arrays pagelocked_empty returns, freed explicitly."""

    def free(self) -> None:
        LEDGER.host.discard(id(self))


def pagelocked_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    require_context()
    allocation = HostAllocation(max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize))
    LEDGER.host.add(id(allocation))
    return np.ndarray(shape, dtype, buffer=allocation)


class Stream:
    def __init__(self) -> None:
        require_context()
        self.handle = next(_addresses)

    def synchronize(self) -> None:
        require_context()


def memcpy_htod(device: DeviceAllocation, host: np.ndarray) -> None:
    require_context()
    data = np.ascontiguousarray(host).tobytes()
    LEDGER.device[int(device)][: len(data)] = data


def memcpy_htod_async(device: DeviceAllocation, host: np.ndarray, stream: Stream | None = None) -> None:
    memcpy_htod(device, host)


def memcpy_dtoh_async(host: np.ndarray, device: DeviceAllocation, stream: Stream | None = None) -> None:
    require_context()
    raw = LEDGER.device[int(device)][: host.nbytes]
    host[...] = np.frombuffer(bytes(raw), dtype=host.dtype).reshape(host.shape)


def read_device(address: int, nbytes: int) -> bytes:
    """For the fake TensorRT: the bytes at a device address."""
    require_context()
    return bytes(LEDGER.device[address][:nbytes])


def write_device(address: int, data: bytes) -> None:
    require_context()
    LEDGER.device[address][: len(data)] = data
