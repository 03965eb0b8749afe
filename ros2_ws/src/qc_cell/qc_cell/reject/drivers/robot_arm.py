"""Robot-arm reject: each part is sent as a `reject_part` goal (deadline, position) as soon as its verdict
is known, since an arm needs lead time. The pick time is taken from the arm's feedback (the first
"placing" stage = the part is in the gripper); a goal without a result by deadline + result_timeout is
cancelled and reported failed. The ROS action client is qc_cell.ros.arm_client (an ArmTransport); this class holds
the bookkeeping so that it is tested without ROS too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from qc_cell.reject.drivers.base import ArmDriver, ArmJob, ArmOutcome, DriverHealth
from qc_cell.reject.records import REJECT

PICKED_STAGE = "placing"  # feedback stage reached once the part has been picked


class ArmTransport(Protocol):
    def ready(self) -> bool:
        """The arm's action server is reachable."""

    def send(
        self,
        job: ArmJob,
        on_feedback: Callable[[str, float], None],
        on_result: Callable[[bool, str], None],
    ) -> Any:
        """Send the goal; returns a handle for cancel(). on_result is called once (also on rejection)."""

    def cancel(self, handle: Any) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Pending:
    job: ArmJob
    done: Callable[[ArmOutcome], None]
    handle: Any = None
    picked_ns: int = 0


class RobotArmDriver(ArmDriver):
    method = "robot_arm"

    def __init__(
        self,
        transport: ArmTransport,
        result_timeout_ns: int = 5_000_000_000,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._transport = transport
        self._result_timeout_ns = result_timeout_ns
        self._clock_ns = clock_ns
        self._pending: dict[int, _Pending] = {}
        self._next_key = 0
        self._lock = threading.Lock()
        self._open = False
        self.sent = 0
        self.succeeded = 0
        self.failed = 0
        self.timed_out = 0
        self._last_error = ""

    @property
    def channels(self) -> frozenset[str]:
        return frozenset({REJECT})

    def open(self) -> None:
        self._open = True

    def dispatch(self, job: ArmJob, done: Callable[[ArmOutcome], None]) -> None:
        if not self._open:
            done(ArmOutcome(False, "robot_arm driver is not open", 0))
            return
        if not self._transport.ready():
            self._finish_error(done, "the arm's reject_part action server is not available")
            return
        with self._lock:
            key = self._next_key
            self._next_key += 1
            pending = _Pending(job, done)
            self._pending[key] = pending
            self.sent += 1
        try:
            handle = self._transport.send(
                job,
                lambda stage, _progress: self._on_feedback(key, stage),
                lambda ok, message: self._on_result(key, ok, message),
            )
        except Exception as exc:
            self._on_result(key, False, f"sending the goal failed: {exc}")
            return
        with self._lock:
            if key in self._pending:
                pending.handle = handle

    def poll(self, now_ns: int) -> None:
        expired: list[tuple[int, _Pending]] = []
        with self._lock:
            for key, pending in self._pending.items():
                if now_ns > pending.job.deadline_ns + self._result_timeout_ns:
                    expired.append((key, pending))
        for key, pending in expired:
            if pending.handle is not None:
                self._transport.cancel(pending.handle)
            self.timed_out += 1
            timeout_s = self._result_timeout_ns / 1e9
            self._on_result(key, False, f"no result from the arm within {timeout_s:.1f} s after the deadline")

    def close(self, keep: frozenset[str] = frozenset()) -> None:
        with self._lock:
            pending = list(self._pending.items())
        for key, item in pending:
            if item.handle is not None:
                self._transport.cancel(item.handle)
            self._on_result(key, False, "the actuator was released before the arm finished")
        self._transport.close()
        self._open = False

    def health(self) -> DriverHealth:
        values = {
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "in_flight": len(self._pending),
            "last_failure": self._last_error,
        }
        if not self._open:
            return DriverHealth(False, "closed", values)
        if not self._transport.ready():
            return DriverHealth(False, "the arm's reject_part action server is not available", values)
        return DriverHealth(True, "arm server available", values)

    def _on_feedback(self, key: int, stage: str) -> None:
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None and stage == PICKED_STAGE and not pending.picked_ns:
                pending.picked_ns = self._clock_ns()

    def _on_result(self, key: int, success: bool, message: str) -> None:
        with self._lock:
            pending = self._pending.pop(key, None)
            if pending is None:  # already finished (timeout raced the result)
                return
            if success:
                self.succeeded += 1
            else:
                self.failed += 1
                self._last_error = message
        actual = (pending.picked_ns or self._clock_ns()) if success else 0
        pending.done(ArmOutcome(success, message, actual))

    def _finish_error(self, done: Callable[[ArmOutcome], None], message: str) -> None:
        with self._lock:
            self.failed += 1
            self._last_error = message
        done(ArmOutcome(False, message, 0))
