"""What a running cell is waiting for and what is wrong with each node, as console lines (ROS-free).

Facts come in from the ROS side (qc_cell.bringup.status_listener): the statuses the nodes publish on /diagnostics,
the alerts they raise on `alerts`, what the activator is waiting for, and (in the runner) how many parts were
decided. Lines come out only when something changed, so an engineer at the line reads why no parts flow without
a line per second:

- a node's fault: an ERROR or STALE status at once; a WARN once it has lasted `warn_after_s` (a camera that is
  still being configured, a part shed now and then, are not faults worth a line). The same fault again, with other
  numbers in its message ("3 parts", then "5 parts"), is not a change. A fault is reported cleared once its status
  has stayed OK for `clear_after_s`, so a fault that flickers with every report is one line, not one per second;
- an alert of severity WARN or above; the same code from the same node again within `alert_repeat_s` is counted
  and named with the next one, not printed each time;
- a wait of the cell's start-up (nodes joining the graph, the model to serve before the camera is released), once
  it has lasted `wait_after_s` (a normal start says nothing), then each change and its end;
- no part decided for `idle_after_s` (once per idle spell), with what is waited for and which faults stand.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from qc_cell.healthcheck import ERROR, LEVEL_NAMES, OK, STALE, WARN
from qc_contract.vocabulary import SEVERITY_NAMES, name_of

ALERT_WARN = 1  # qc_interfaces/Alert WARN: alerts below it (INFO) are not printed


@dataclass(frozen=True)
class StatusLine:
    level: int  # OK, WARN or ERROR (diagnostic levels): how loud to say it (a logger's severity)
    text: str


@dataclass
class _Fault:
    level: int
    message: str
    since: float  # first non-OK status of this spell
    reported: tuple[int, str] | None = None  # (level, shape) last printed
    ok_since: float | None = None  # first OK status after it, while not yet cleared


@dataclass
class _Wait:
    what: str
    why: str
    since: float
    reported: bool = False

    def line(self) -> str:
        return f"waiting for {self.what}" + (f": {self.why}" if self.why else "")


@dataclass
class _AlertSeen:
    printed_at: float
    suppressed: int = 0


def shape(message: str) -> str:
    """The message with its numbers masked: '3 part(s) lost' and '5 part(s) lost' are the same fault."""
    return re.sub(r"\d+(?:\.\d+)?", "#", message)


class CellStatus:
    """Turns status facts into change-only StatusLines. Thread-safe; `now` is a monotonic time in seconds."""

    def __init__(
        self,
        warn_after_s: float = 5.0,
        clear_after_s: float = 5.0,
        wait_after_s: float = 5.0,
        alert_repeat_s: float = 60.0,
        idle_after_s: float = 30.0,
    ) -> None:
        self.warn_after_s = warn_after_s
        self.clear_after_s = clear_after_s
        self.wait_after_s = wait_after_s
        self.alert_repeat_s = alert_repeat_s
        self.idle_after_s = idle_after_s
        self._lock = threading.Lock()
        self._faults: dict[str, _Fault] = {}  # by status name ("inference: model")
        self._waits: dict[str, _Wait] = {}  # by the waiter's key ("graph", "ready", ...)
        self._alerts: dict[tuple[str, str], _AlertSeen] = {}
        self._parts: int | None = None
        self._parts_since = 0.0
        self._idle_reported = False

    # -- facts -------------------------------------------------------------------------------------------
    def diagnostic(self, name: str, level: int, message: str, now: float) -> list[StatusLine]:
        """One DiagnosticStatus of one of the cell's nodes (level: OK, WARN, ERROR or STALE)."""
        with self._lock:
            fault = self._faults.get(name)
            if level == OK:
                if fault is not None:
                    fault.ok_since = now if fault.ok_since is None else fault.ok_since
                    fault.message = message  # what the node says now; printed with the all-clear
                return self._due(now)
            if fault is None:
                fault = self._faults[name] = _Fault(level, message, now)
            fault.level, fault.message, fault.ok_since = level, message, None
            return self._due(now)

    def alert(self, source: str, severity: int, code: str, message: str, now: float) -> list[StatusLine]:
        if severity < ALERT_WARN:
            return []
        with self._lock:
            seen = self._alerts.get((source, code))
            if seen is not None and now - seen.printed_at < self.alert_repeat_s:
                seen.suppressed += 1
                return []
            more = f" ({seen.suppressed} more since the last one)" if seen is not None and seen.suppressed else ""
            self._alerts[(source, code)] = _AlertSeen(now)
            text = f"alert from {source}: {name_of(SEVERITY_NAMES, severity)} {code}: {message}{more}"
            return [StatusLine(ERROR if severity > ALERT_WARN else WARN, text)]

    def waiting(self, key: str, what: str | None, why: str, now: float) -> list[StatusLine]:
        """The cell waits for `what` (None: no longer), `why` so far (may be ''). One key per waiter; a new `what`
        or `why` replaces the old (and is a change)."""
        with self._lock:
            wait = self._waits.get(key)
            if what is None:
                if wait is None:
                    return []
                del self._waits[key]
                if not wait.reported:
                    return []
                return [StatusLine(OK, f"stopped waiting after {now - wait.since:.0f} s for {wait.what}")]
            if wait is None:
                self._waits[key] = _Wait(what, why, now)
            elif (wait.what, wait.why) != (what, why):
                wait.what, wait.why = what, why
                if wait.reported:
                    return [StatusLine(WARN, wait.line())]
            return self._due(now)

    def parts(self, count: int, now: float) -> list[StatusLine]:
        """Parts decided so far (the runner's count)."""
        with self._lock:
            if count != self._parts:
                self._parts, self._parts_since, self._idle_reported = count, now, False
            return self._due(now)

    def tick(self, now: float) -> list[StatusLine]:
        """Lines that have become due with time alone (a lasting WARN, a cleared fault, a long wait)."""
        with self._lock:
            return self._due(now)

    # -- state -------------------------------------------------------------------------------------------
    def standing(self) -> list[str]:
        """What is waited for and which faults stand (those already reported), e.g. for a closing summary."""
        with self._lock:
            return self._standing()

    def _standing(self) -> list[str]:
        items = [wait.line() for wait in self._waits.values() if wait.reported]
        items += [
            f"{name}: {LEVEL_NAMES.get(f.level, f.level)} {f.message}"
            for name, f in self._faults.items()
            if f.reported is not None and f.ok_since is None
        ]
        return items

    def _due(self, now: float) -> list[StatusLine]:
        lines: list[StatusLine] = []
        for wait in self._waits.values():
            if not wait.reported and now - wait.since >= self.wait_after_s:
                wait.reported = True
                lines.append(StatusLine(WARN, wait.line()))
        for name, fault in list(self._faults.items()):
            if fault.ok_since is not None:
                if now - fault.ok_since >= self.clear_after_s:
                    del self._faults[name]
                    if fault.reported is not None:
                        lines.append(StatusLine(OK, f"{name}: OK again ({fault.message})"))
                continue
            due = fault.level in (ERROR, STALE) or now - fault.since >= self.warn_after_s
            current = (fault.level, shape(fault.message))
            if due and fault.reported != current:
                fault.reported = current
                level = ERROR if fault.level in (ERROR, STALE) else WARN
                lines.append(StatusLine(level, f"{name}: {LEVEL_NAMES.get(fault.level, fault.level)} {fault.message}"))
        if self._parts is not None and not self._idle_reported and now - self._parts_since >= self.idle_after_s:
            self._idle_reported = True
            standing = self._standing()
            idle = f"no part decided for {now - self._parts_since:.0f} s"
            if not standing:
                lines.append(StatusLine(WARN, f"{idle}; no node reports a fault and nothing is waited for"))
            else:
                lines.append(StatusLine(WARN, f"{idle}; what stands:"))
                lines += [StatusLine(WARN, f"  {item}") for item in standing]
        return lines
