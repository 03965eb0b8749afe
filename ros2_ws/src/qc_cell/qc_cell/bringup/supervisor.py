"""Start, watch and restart the cell's node processes (ROS-free). Used by the cell runner.

Each child gets its own process group, so Ctrl-C in the terminal reaches the runner only and the
runner shuts the children down in order: SIGINT (clean rclpy shutdown), then SIGTERM, then SIGKILL; `hurry()` (the
runner's answer to a second Ctrl-C) skips to SIGKILL. Each child also gets SIGINT if the runner dies without that
(qc_cell.bringup.die_with_parent). A child that exits on its own is reported with the last line of its log, which
usually says why (a bad parameter, a missing device).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    respawn: bool = True
    respawn_delay_s: float = 1.0


@dataclass
class _Child:
    spec: ProcessSpec
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0  # monotonic time of the next (re)start, when not running
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Keeps a set of processes running. on_event(name, event, detail) reports started/exited/gave_up."""

    # A child that dies within this many seconds of its start counts as a crash loop: back off exponentially.
    QUICK_EXIT_S = 5.0
    MAX_BACKOFF_S = 30.0

    def __init__(
        self,
        specs: list[ProcessSpec],
        log_dir: Path,
        on_event: Callable[[str, str, str], None] = lambda *_: None,
        max_restarts: int = 100,
    ) -> None:
        self._children = {spec.name: _Child(spec) for spec in specs}
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._on_event = on_event
        self._max_restarts = max_restarts
        self._stopping = False
        self._hurry = False

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self) -> None:
        for child in self._children.values():
            self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        log = open(self.log_path(child.spec.name), "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "qc_cell.bringup.die_with_parent", str(os.getpid()), *child.spec.argv],
                env={**os.environ, **child.spec.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        child.started_at = time.monotonic()
        self._on_event(child.spec.name, "started", f"pid {child.process.pid}")

    def poll(self) -> list[str]:
        """Reap exited children and restart those due; returns the names (re)started in this call."""
        started = []
        now = time.monotonic()
        for child in self._children.values():
            if child.process is not None:
                code = child.process.poll()
                if code is None:
                    continue
                child.exit_codes.append(code)
                child.process = None
                last = last_line(self.log_path(child.spec.name)) if not self._stopping else ""
                reason = f": {last}" if last else ""
                self._on_event(child.spec.name, "exited", f"code {code}{reason}; log {self.log_path(child.spec.name)}")
                if self._stopping or not child.spec.respawn:
                    continue
                if child.restarts >= self._max_restarts:
                    self._on_event(child.spec.name, "gave_up", f"after {child.restarts} restarts")
                    continue
                quick = now - child.started_at < self.QUICK_EXIT_S
                delay = child.spec.respawn_delay_s * (2 ** min(child.restarts, 5) if quick else 1)
                child.next_start = now + min(delay, self.MAX_BACKOFF_S)
            elif (
                not self._stopping
                and child.spec.respawn
                and child.next_start
                and now >= child.next_start
                and child.restarts < self._max_restarts
            ):
                child.restarts += 1
                child.next_start = 0.0
                self._spawn(child)
                started.append(child.spec.name)
        return started

    def pid(self, name: str) -> int | None:
        child = self._children[name]
        return child.process.pid if child.process is not None else None

    def restarts(self, name: str) -> int:
        return self._children[name].restarts

    def running(self, name: str) -> bool:
        child = self._children[name]
        return child.process is not None and child.process.poll() is None

    def exit_codes(self, name: str) -> list[int]:
        return list(self._children[name].exit_codes)

    def hurry(self) -> None:
        """Stop now: a stop() under way (or the next one) kills what is left at once instead of waiting. Safe to
        call from a signal handler (it only sets a flag that stop() polls)."""
        self._hurry = True

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGINT every child, then SIGTERM, then SIGKILL whatever is left (at once after hurry())."""
        self._stopping = True
        for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self._hurry and sig != signal.SIGKILL:
                continue
            alive = [c for c in self._children.values() if c.process is not None and c.process.poll() is None]
            if not alive:
                break
            for child in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end and any(c.process.poll() is None for c in alive):
                if self._hurry and sig != signal.SIGKILL:
                    break
                time.sleep(0.05)
        for child in self._children.values():
            if child.process is not None:
                child.exit_codes.append(child.process.wait())
                child.process = None


def last_line(path: Path, tail_bytes: int = 4096, limit: int = 300) -> str:
    """The last non-empty line of a log file (at most `limit` characters), or '' when there is none."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - tail_bytes))
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    line = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."
