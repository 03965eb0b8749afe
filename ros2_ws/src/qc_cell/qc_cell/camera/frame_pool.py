"""The camera driver's frame pool: camera frames in shared memory, passed between processes of one host by handle.

rclpy cannot loan messages, so a frame sent through DDS is copied four to six times (docs/camera.md); at 12 MP that
is a second per frame. Here the driver writes each frame once into a slot of a bounded pool in `/dev/shm`, and a
same-host consumer maps the pool and reads the pixels in place, given (pool, slot, generation) in the PartFrame
(the idea of Isaac ROS NITROS type adaptation and iceoryx's chunks, in plain Python, no ROS here).

Layout of the pool file (little endian, one writer, any number of readers):
- header: magic, version, slot count, slot capacity, lease time, then the reader registry: READERS entries of
  (heartbeat ns, pid, name). A reader registers under its (node) name; the driver sends handles only while every
  subscriber of its frames is a reader registered with a fresh heartbeat (the others could not map the pool).
- slot table: per slot its generation, the writer's hand-off deadline, the frame's size, and one lease deadline
  per registry entry (CLOCK_MONOTONIC ns: one clock for all processes of the host, containers included).
- the slots, page aligned.

Rules that make it safe:
- Generations are a seqlock: odd while the writer copies, the next even value once the frame is complete; a handle
  names the even generation. A reader uses the pixels only while the generation is still the handle's, and checks
  it again after use (`Lease.intact`): an overwritten or torn frame is detected, never scored.
- The writer never touches a slot with a live lease. It takes a slot with a live hand-off (the time between
  publishing the handle and the consumer's lease) only when no slot is free, the oldest first: a consumer that
  many frames behind gets frame_overwritten for it. Leases expire: a consumer that crashes holding slots leaks
  nothing, the slots come back after the lease time. A consumer slower than its lease may find its frame
  overwritten: detected, counted.
- When every slot is leased the writer gets None (the caller sends the frame inline instead): the pool is bounded.
- A new pool per writer run (the name carries pid and a random token): a restarted driver never writes into the
  pool whose handles an old consumer may still hold; that consumer keeps its mapping (the old frames stay intact)
  or, when it never mapped the pool, is told the frame is gone.
- The owner holds a shared flock on the file for its lifetime (released by the kernel when it dies, also across
  containers); a pool nobody holds belongs to a dead writer and is removed by the next writer of the same
  prefix (`remove_stale`). Readers register under a POSIX lock on one byte (rare, also released on death).
Memory ordering: the generation stores are aligned 8-byte stores, and every step runs through the interpreter,
whose lock operations are full barriers on both x86-64 and aarch64.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
MAGIC = b"QCFPOOL1"
VERSION = 1
READERS = 16  # registry entries (consumers of one camera at a time)
NAME_BYTES = 112
_HEADER_FIXED = 64  # magic(8) version(4) slots(4) slot_bytes(8) data_offset(8) lease_ns(8) owner_pid(8) pad
_REGISTRY_OFFSET = _HEADER_FIXED
_ENTRY_BYTES = 8 + 8 + NAME_BYTES
_SLOT_TABLE_OFFSET = _REGISTRY_OFFSET + READERS * _ENTRY_BYTES
_SLOT_FIELDS = 3 + READERS  # generation, handoff_until, nbytes, lease_until[READERS]
_SLOT_ENTRY_BYTES = 8 * _SLOT_FIELDS
_PAGE = mmap.PAGESIZE
MAX_SLOTS = 256
REGISTRATION_TTL_NS = 5_000_000_000  # a reader not seen for this long no longer counts as attached


class PoolError(RuntimeError):
    """The pool cannot be created or opened (reason in the message); callers fall back to inline frames."""


class FrameGoneError(RuntimeError):
    """The frame a handle names can no longer be read: overwritten, or its pool is gone (reason in `reason`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


OVERWRITTEN = "frame_overwritten"  # the slot holds another frame (the consumer was slower than its lease)
UNAVAILABLE = "frame_unavailable"  # the pool cannot be mapped (driver restarted and removed it, other host)


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _round_up(value: int, unit: int) -> int:
    return (value + unit - 1) // unit * unit


@dataclass(frozen=True)
class FrameRef:
    """A frame in a pool: what a PartFrame carries instead of the pixels (with the image's size and encoding)."""

    pool: str
    slot: int
    generation: int
    shape: tuple[int, ...]
    dtype: np.dtype


class _Mapped:
    """The mapping of one pool file and typed views on its header, registry and slot table."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self.fd, self.name = fd, name
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        magic, version, slots, slot_bytes, data_offset, lease_ns, owner_pid = struct.unpack_from(
            "<8sIIQQQQ", self.mm, 0
        )
        if magic != MAGIC or version != VERSION:
            raise PoolError(f"{name}: not a frame pool of this version (magic {magic!r}, version {version})")
        if not 0 < slots <= MAX_SLOTS or data_offset + slots * slot_bytes > size:
            raise PoolError(f"{name}: corrupt header ({slots} slots of {slot_bytes} bytes in {size} bytes)")
        self.slots, self.slot_bytes, self.data_offset = slots, slot_bytes, data_offset
        self.lease_ns, self.owner_pid = lease_ns, owner_pid
        self.table = np.ndarray((slots, _SLOT_FIELDS), np.uint64, self.mm, _SLOT_TABLE_OFFSET)
        self.heartbeats = np.ndarray(
            (READERS,), np.uint64, self.mm, _REGISTRY_OFFSET, strides=(_ENTRY_BYTES,)
        )  # first field of each entry

    def entry_name(self, index: int) -> str:
        start = _REGISTRY_OFFSET + index * _ENTRY_BYTES + 16
        return bytes(self.mm[start : start + NAME_BYTES]).rstrip(b"\0").decode("utf-8", "replace")

    def pixels(self, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.ndarray(shape, dtype, self.mm, self.data_offset + slot * self.slot_bytes)

    def close(self) -> None:
        """Close the file; the mapping itself is never unmapped here: numpy views on it (a frame being scored, a
        lease) keep the mmap object alive, and it is unmapped when the last of them is gone. (mmap.close() does
        not see numpy's views and would unmap memory they still read: a crash, not an error.)"""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# Slot table columns.
_GEN, _HANDOFF, _NBYTES, _LEASE0 = 0, 1, 2, 3


class FramePool:
    """The writer's side: owns the pool file, writes frames into free slots. One writer thread at a time."""

    def __init__(self, mapped: _Mapped, path: Path) -> None:
        self._m = mapped
        self.path = path
        self.name = mapped.name
        self._next = 0
        self.written = 0
        self.full = 0  # writes refused because every slot was leased
        self.reclaimed = 0  # frames handed off but not yet leased, overwritten because no slot was free
        self._pending: tuple[int, int, tuple[int, ...], np.dtype, np.ndarray] | None = None  # reserved, uncommitted
        self.closed = False

    @classmethod
    def create(
        cls, prefix: str, slots: int, slot_bytes: int, lease_s: float, directory: Path | None = None
    ) -> FramePool:
        """A new pool `<prefix>_<pid>_<token>` in `directory` (SHM_DIR). PoolError when shared memory cannot hold it."""
        directory = SHM_DIR if directory is None else directory
        if not 2 <= slots <= MAX_SLOTS:
            raise PoolError(f"slots {slots} must be 2..{MAX_SLOTS}")
        if slot_bytes <= 0 or lease_s <= 0:
            raise PoolError("slot_bytes and lease_s must be > 0")
        if not directory.is_dir():
            raise PoolError(f"{directory} does not exist: no shared memory on this system")
        name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
        path = directory / name
        slot_bytes = _round_up(slot_bytes, _PAGE)
        data_offset = _round_up(_SLOT_TABLE_OFFSET + slots * _SLOT_ENTRY_BYTES, _PAGE)
        size = data_offset + slots * slot_bytes
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o660)
        except OSError as exc:
            raise PoolError(f"cannot create {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # owner lock: held while this writer lives
            # Reserve the memory now: a tmpfs that cannot hold the pool fails here (ENOSPC), not with a SIGBUS on
            # the first frame written into a page it could not supply.
            os.posix_fallocate(fd, 0, size)
            header = struct.pack("<8sIIQQQQ", MAGIC, VERSION, slots, slot_bytes, data_offset, int(lease_s * 1e9),
                                 os.getpid())  # fmt: skip
            os.pwrite(fd, header, 0)
            mapped = _Mapped(fd, size, name)
        except (OSError, PoolError) as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise PoolError(f"cannot reserve {size / 1e6:.0f} MB of shared memory in {path}: {reason}") from exc
        return cls(mapped, path)

    @property
    def slots(self) -> int:
        return self._m.slots

    @property
    def slot_bytes(self) -> int:
        return self._m.slot_bytes

    @property
    def lease_s(self) -> float:
        return self._m.lease_ns / 1e9

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self._m.slot_bytes

    def _free_slot(self, now: int) -> int | None:
        """A slot nobody holds; else the oldest one still waiting for its consumer (a consumer that far behind
        would only get the frame late, and gets frame_overwritten for it instead: an inline frame would put it
        further behind); None when every slot is leased by a consumer."""
        table = self._m.table
        oldest, oldest_until = None, None
        for k in range(self._m.slots):
            slot = (self._next + k) % self._m.slots
            row = table[slot]
            if int(row[_LEASE0:].max()) > now:
                continue  # a consumer holds it: never taken
            handoff = int(row[_HANDOFF])
            if handoff <= now:
                return slot
            if oldest_until is None or handoff < oldest_until:
                oldest, oldest_until = slot, handoff
        if oldest is not None:
            self.reclaimed += 1
        return oldest

    def write(self, pixels: np.ndarray) -> FrameRef | None:
        """Copy a frame into a free slot (C order); None when every slot is leased or handed off (send inline)."""
        target = self.reserve(pixels.shape, pixels.dtype)
        if target is None:
            return None
        try:
            np.copyto(target, pixels)
        except BaseException:
            self._pending = None  # the slot stays odd (never a valid handle) until it is written again
            raise
        return self.commit()

    def reserve(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A free slot as a writable C-order array, for a source that captures straight into the pool (as a camera
        whose driver buffers are pool slots would): fill it, then commit(), or cancel() when the frame is dropped
        (a second reserve() cancels the first). None when every slot is held."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > self._m.slot_bytes:
            raise PoolError(f"frame of {nbytes} bytes does not fit a {self._m.slot_bytes}-byte slot")
        self.cancel()  # a reservation never committed (the frame was dropped): its slot is free again
        slot = self._free_slot(now_ns())
        if slot is None:
            self.full += 1
            return None
        row = self._m.table[slot]
        generation = int(row[_GEN])
        generation += 2 if generation % 2 == 0 else 1  # an odd value left by a writer that died mid-copy
        row[_GEN] = generation - 1  # odd: being written
        row[_NBYTES] = nbytes
        view = self._m.pixels(slot, tuple(shape), dtype)
        self._pending = (slot, generation, tuple(shape), dtype, view)
        return view

    def reserved(self, pixels: np.ndarray) -> bool:
        """Whether `pixels` is the slot reserve() gave (the frame was captured straight into the pool)."""
        pending = self._pending
        return pending is not None and pixels is pending[4]

    def cancel(self) -> None:
        """Give up the reserved slot (no-op without one). Its generation stays odd: the slot's old frame was
        partly overwritten, so no handle to it is valid any more; the next reserve() may take the slot."""
        self._pending = None

    def commit(self) -> FrameRef:
        """The reserved slot's frame is complete: its handle (the slot is held for the consumer for lease_s)."""
        if self._pending is None:
            raise PoolError("commit() without reserve()")
        slot, generation, shape, dtype, _ = self._pending
        self._pending = None
        row = self._m.table[slot]
        row[_HANDOFF] = now_ns() + self._m.lease_ns  # held for the consumer until it takes its lease
        row[_GEN] = generation
        self._next = (slot + 1) % self._m.slots
        self.written += 1
        return FrameRef(self.name, slot, generation, shape, dtype)

    def readers(self, now: int | None = None) -> set[str]:
        """Names of the readers attached now (heartbeat within REGISTRATION_TTL_NS)."""
        now = now_ns() if now is None else now
        return {
            self._m.entry_name(i)
            for i in range(READERS)
            if int(self._m.heartbeats[i]) > 0 and now - int(self._m.heartbeats[i]) <= REGISTRATION_TTL_NS
        }

    def leased(self, now: int | None = None) -> int:
        """Slots held now by a consumer's lease or a hand-off."""
        now = now_ns() if now is None else now
        table = self._m.table
        return int(((table[:, _HANDOFF] > now) | (table[:, _LEASE0:].max(axis=1) > now)).sum())

    def close(self) -> None:
        """Remove the pool (consumers that mapped it keep their mapping until they drop it)."""
        if self.closed:
            return
        self.closed = True
        self.path.unlink(missing_ok=True)
        self._m.close()


def remove_stale(prefix: str, directory: Path | None = None) -> list[str]:
    """Remove pools `<prefix>_*` whose writer died (its owner lock is free). Returns their names."""
    directory = SHM_DIR if directory is None else directory
    removed = []
    for path in directory.glob(f"{prefix}_*"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: a live writer
        else:
            path.unlink(missing_ok=True)
            removed.append(path.name)
        finally:
            os.close(fd)
    return removed


class Lease:
    """A consumer's hold on one frame: the pixels (a read-only view in the pool) until release()."""

    def __init__(self, reader: PoolReader, mapped: _Mapped, ref: FrameRef, entry: int) -> None:
        self._reader, self._m, self.ref, self._entry = reader, mapped, ref, entry
        self.released = False

    def intact(self) -> bool:
        """Whether the slot still holds this frame: check it after using the pixels."""
        return int(self._m.table[self.ref.slot, _GEN]) == self.ref.generation

    def pixels(self) -> np.ndarray:
        """The frame, a read-only view (no copy). FrameGoneError when it was overwritten before this call."""
        view = self._m.pixels(self.ref.slot, self.ref.shape, self.ref.dtype)
        view.flags.writeable = False
        if not self.intact():
            raise FrameGoneError(OVERWRITTEN, f"slot {self.ref.slot} of {self.ref.pool} was overwritten")
        return view

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._m.table[self.ref.slot, _LEASE0 + self._entry] = 0


class PoolReader:
    """A consumer's side: maps the pools named in handles, registers there under `name`, leases frames."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.name = name
        self._encoded = name.encode("utf-8")[:NAME_BYTES]
        self._directory = SHM_DIR if directory is None else directory
        self._pool: _Mapped | None = None
        self._entry = -1
        self._unavailable: str = ""  # the last pool name that could not be opened (not retried per frame)
        self.error = ""  # why the last pool could not be opened

    @property
    def pool(self) -> str:
        return self._pool.name if self._pool is not None else ""

    def attach(self, pool: str) -> bool:
        """Map `pool` (if not mapped already) and refresh this reader's registration there. False when the pool
        cannot be mapped (then `error` says why); the previous pool is dropped when another one is named."""
        if self._pool is not None and self._pool.name == pool:
            self._touch()
            return True
        if pool == self._unavailable:
            return False
        try:
            mapped = self._open(pool)
        except PoolError as exc:
            self._unavailable, self.error = pool, str(exc)
            return False
        old, self._pool = self._pool, mapped
        if old is not None:
            old.close()
        self._entry = self._register(mapped)
        return True

    def _open(self, pool: str) -> _Mapped:
        if "/" in pool or not pool:
            raise PoolError(f"invalid pool name {pool!r}")
        path = self._directory / pool
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise PoolError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            return _Mapped(fd, os.fstat(fd).st_size, pool)
        except (OSError, ValueError, struct.error, PoolError) as exc:
            os.close(fd)
            raise PoolError(f"cannot map {path}: {exc}") from exc

    def _register(self, mapped: _Mapped) -> int:
        """Claim the registry entry of this name, or a free or expired one (under a lock on the file's second
        byte: registrations are rare, the lock is released if this process dies)."""
        fcntl.lockf(mapped.fd, fcntl.LOCK_EX, 1, 1)
        try:
            now = now_ns()
            chosen = None
            for i in range(READERS):
                if mapped.entry_name(i) == self.name:
                    chosen = i
                    break
                beat = int(mapped.heartbeats[i])
                if chosen is None and (beat == 0 or now - beat > REGISTRATION_TTL_NS * 2):
                    chosen = i
            if chosen is None:
                raise PoolError(f"{mapped.name}: all {READERS} reader entries are in use")
            start = _REGISTRY_OFFSET + chosen * _ENTRY_BYTES
            mapped.mm[start + 8 : start + 16] = struct.pack("<Q", os.getpid())
            mapped.mm[start + 16 : start + 16 + NAME_BYTES] = self._encoded.ljust(NAME_BYTES, b"\0")
            mapped.table[:, _LEASE0 + chosen] = 0  # leases of a previous holder of the entry
            mapped.heartbeats[chosen] = now
            return chosen
        finally:
            fcntl.lockf(mapped.fd, fcntl.LOCK_UN, 1, 1)

    def _touch(self) -> None:
        assert self._pool is not None
        self._pool.heartbeats[self._entry] = now_ns()

    def lease(self, ref: FrameRef) -> Lease:
        """Hold the frame for the pool's lease time. FrameGoneError when it is overwritten already or unmappable."""
        if not self.attach(ref.pool):
            raise FrameGoneError(UNAVAILABLE, f"frame pool {ref.pool} cannot be read here: {self.error}")
        mapped = self._pool
        assert mapped is not None
        if not 0 <= ref.slot < mapped.slots:
            raise FrameGoneError(UNAVAILABLE, f"slot {ref.slot} is outside pool {ref.pool} ({mapped.slots} slots)")
        if int(np.prod(ref.shape)) * ref.dtype.itemsize > mapped.slot_bytes:
            raise FrameGoneError(UNAVAILABLE, f"a {ref.shape} {ref.dtype} frame does not fit the slots of {ref.pool}")
        row = mapped.table[ref.slot]
        row[_LEASE0 + self._entry] = now_ns() + mapped.lease_ns
        lease = Lease(self, mapped, ref, self._entry)
        # Checked after the lease is set: from here on the writer leaves the slot alone (until the lease expires).
        if not lease.intact():
            lease.release()
            raise FrameGoneError(OVERWRITTEN, f"slot {ref.slot} of {ref.pool} was overwritten before it was leased")
        row[_HANDOFF] = 0  # the lease takes over from the writer's hand-off
        return lease

    def close(self) -> None:
        if self._pool is not None:
            self._pool.heartbeats[self._entry] = 0
            self._pool.table[:, _LEASE0 + self._entry] = 0
            self._pool.close()
            self._pool = None
