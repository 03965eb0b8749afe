"""Part ids unique per cell and across restarts: `<prefix>-<counter>`, the counter persisted in a state file.

The counter is reserved in blocks: the file records the first number not yet handed out by *any* run, written
atomically (temp file, fsync, rename, fsync of the directory) before a number of the new block is used. A crash
or power cut therefore never reuses an id; it only skips the rest of the current block. One write per `block`
parts keeps the flash of an edge device from wearing out at 30 parts/s.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path

_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class PartIdError(RuntimeError):
    """The state file cannot be read or written (the reason is in the message)."""


def default_state_file(prefix: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "qc_cell" / f"part_ids_{prefix}.json"


class PartIdAllocator:
    def __init__(self, prefix: str, state_file: Path, block: int = 100, digits: int = 9) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"part id prefix {prefix!r}: 1-64 characters of letters, digits, _ . : -")
        if block < 1:
            raise ValueError(f"block {block} must be >= 1")
        self.prefix = prefix
        self.state_file = Path(state_file).expanduser()
        self.block = block
        self.digits = digits
        self._lock = threading.Lock()
        self._next = self._load()
        self._reserved_until = self._next  # nothing of the new run is reserved yet

    def _load(self) -> int:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise PartIdError(f"cannot read part id state {self.state_file}: {exc}") from exc
        try:
            state = json.loads(text)
            next_free = int(state["next_free"])
        except (ValueError, KeyError, TypeError) as exc:
            # Never guess: restarting at 0 would reuse ids that may already be in the quality records.
            raise PartIdError(
                f"part id state {self.state_file} is corrupt ({exc}); fix or remove it (ids restart at 0 then)"
            ) from exc
        if state.get("prefix", self.prefix) != self.prefix:
            raise PartIdError(f"part id state {self.state_file} belongs to prefix {state.get('prefix')!r}")
        if next_free < 0:
            raise PartIdError(f"part id state {self.state_file}: negative counter {next_free}")
        return next_free

    def _persist(self, next_free: int) -> None:
        directory = self.state_file.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.state_file.name + ".", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w") as handle:
                    json.dump({"prefix": self.prefix, "next_free": next_free}, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.state_file)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise PartIdError(f"cannot write part id state {self.state_file}: {exc}") from exc

    def check_writable(self) -> None:
        """Reserve the first block now, so a read-only or full disk shows at start-up, not at the first part."""
        with self._lock:
            if self._next >= self._reserved_until:
                self._reserve()

    def _reserve(self) -> None:
        self._persist(self._next + self.block)
        self._reserved_until = self._next + self.block

    def next_id(self) -> str:
        with self._lock:
            if self._next >= self._reserved_until:
                self._reserve()
            number = self._next
            self._next += 1
        return f"{self.prefix}-{number:0{self.digits}d}"
