"""A deadline scheduler for actuator edges: one dedicated thread that sleeps until shortly before the next
deadline, then spins on the clock for the last `spin_ns` so that OS wake-up jitter does not become
actuation error. (A ROS timer or threading.Timer would add the executor's and the OS's wake-up latency,
several milliseconds on a loaded machine.)

On a loaded machine the OS, not the sleep, dominates the error: a normal thread that wakes up waits for
a CPU behind other processes (measured here: p99 3-10 ms on 2 busy cores). With `rt_priority` > 0 the
thread asks for SCHED_FIFO at that priority, so its wake-up preempts ordinary processes (p99 well under
1 ms). That needs CAP_SYS_NICE or an rtprio limit (docs/reject.md); without it the thread keeps normal
scheduling and `realtime` says why.

Actions run on the scheduler thread in deadline order and must be short (a GPIO write, one Modbus
request); they receive the clock reading taken right when the deadline was reached.
"""

from __future__ import annotations

import heapq
import itertools
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PENDING, FIRING, DONE, CANCELLED = range(4)


@dataclass(order=True)
class Job:
    at_ns: int
    seq: int
    action: Callable[[int], None] = field(compare=False)
    name: str = field(default="", compare=False)
    state: int = field(default=PENDING, compare=False)


def _rtprio_hint(priority: int) -> str:
    """Why a non-root process was refused: its RLIMIT_RTPRIO (ulimit -r), which a container sets with compose
    `ulimits: rtprio` and a login with limits.conf; CAP_SYS_NICE reaches only root."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    except (AttributeError, OSError, ValueError):
        return ""
    if soft == resource.RLIM_INFINITY or soft >= priority:
        return f"; rtprio limit {soft} allows it: check the cgroup's real-time budget (cpu.rt_runtime_us)"
    return f"; rtprio limit {soft} < {priority}: raise it (compose ulimits rtprio, limits.conf; docs/reject.md)"


class DeadlineScheduler:
    def __init__(
        self,
        clock_ns: Callable[[], int] = time.time_ns,
        spin_ns: int = 2_000_000,
        on_error: Callable[[Job, Exception], None] | None = None,
        name: str = "reject-scheduler",
        rt_priority: int = 0,
    ) -> None:
        self._clock_ns = clock_ns
        self._spin_ns = spin_ns
        self._on_error = on_error
        self._name = name
        self._rt_priority = rt_priority
        self.realtime = "not requested"  # after start(): "SCHED_FIFO <prio>" or why it was not granted
        self._heap: list[Job] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        started = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(started,), name=self._name, daemon=True)
        self._thread.start()
        started.wait(5.0)

    def stop(self, timeout_s: float = 5.0) -> list[Job]:
        """Stop the thread; returns the jobs that had not fired (in deadline order), now cancelled."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._cond:
            left = sorted(job for job in self._heap if job.state == PENDING)
            self._heap.clear()
        for job in left:
            job.state = CANCELLED
        return left

    def schedule(self, at_ns: int, action: Callable[[int], None], name: str = "") -> Job:
        job = Job(at_ns, next(self._seq), action, name)
        with self._cond:
            if not self._running:
                raise RuntimeError("the scheduler is not running")
            heapq.heappush(self._heap, job)
            if self._heap[0] is job:
                self._cond.notify()
        return job

    def cancel(self, job: Job) -> bool:
        """Cancel a job that has not started firing; True when it was cancelled."""
        with self._cond:
            if job.state != PENDING:
                return False
            job.state = CANCELLED  # lazily dropped from the heap
            return True

    def _request_realtime(self) -> None:
        if self._rt_priority <= 0:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._rt_priority))  # this thread only
            self.realtime = f"SCHED_FIFO {self._rt_priority}"
        except (OSError, AttributeError) as exc:  # EPERM without CAP_SYS_NICE / rtprio limit; non-Linux
            self.realtime = f"not granted ({exc}{_rtprio_hint(self._rt_priority)}); normal scheduling"

    def _loop(self, started: threading.Event) -> None:
        self._request_realtime()
        started.set()
        while True:
            with self._cond:
                job = None
                while self._running and job is None:
                    while self._heap and self._heap[0].state == CANCELLED:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    remaining = self._heap[0].at_ns - self._clock_ns()
                    if remaining > self._spin_ns:
                        self._cond.wait((remaining - self._spin_ns) / 1e9)
                        continue
                    job = heapq.heappop(self._heap)
                    job.state = FIRING
                if job is None:  # stopped
                    return
            while (now := self._clock_ns()) < job.at_ns:
                pass  # busy-wait the last stretch (at most spin_ns)
            try:
                job.action(now)
            except Exception as exc:  # an action must never kill the scheduler thread
                if self._on_error is not None:
                    self._on_error(job, exc)
            job.state = DONE
