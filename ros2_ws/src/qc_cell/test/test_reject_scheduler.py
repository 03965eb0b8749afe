"""Deadline scheduler: order, never early, cancellation, stop, errors (plain pytest)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from qc_cell.reject.scheduler import CANCELLED, DONE, DeadlineScheduler

MS = 1_000_000


def test_jobs_fire_in_deadline_order_and_never_early():
    fired: list[tuple[str, int, int]] = []
    done = threading.Event()
    scheduler = DeadlineScheduler()
    scheduler.start()
    try:
        now = time.time_ns()
        # Scheduled out of order on purpose.
        for name, offset in (("c", 60), ("a", 20), ("b", 40)):
            at = now + offset * MS
            scheduler.schedule(at, lambda t, name=name, at=at: fired.append((name, at, t)), name)
        scheduler.schedule(now + 80 * MS, lambda _t: done.set())
        assert done.wait(5.0), "the last job never fired"
    finally:
        scheduler.stop()
    assert [name for name, _, _ in fired] == ["a", "b", "c"]
    assert all(t >= at for _, at, t in fired), f"a job fired before its deadline: {fired}"


def test_cancelled_jobs_do_not_fire_and_stop_returns_the_pending_ones():
    fired: list[str] = []
    scheduler = DeadlineScheduler()
    scheduler.start()
    now = time.time_ns()
    cancelled = scheduler.schedule(now + 30 * MS, lambda _t: fired.append("cancelled"))
    kept = scheduler.schedule(now + 40 * MS, lambda _t: fired.append("kept"))
    later = scheduler.schedule(now + 60_000 * MS, lambda _t: fired.append("later"))
    assert scheduler.cancel(cancelled)
    deadline = time.monotonic() + 5.0
    while kept.state != DONE and time.monotonic() < deadline:
        time.sleep(0.01)
    left = scheduler.stop()
    assert fired == ["kept"]
    assert not scheduler.cancel(kept), "a fired job cannot be cancelled"
    assert left == [later] and later.state == CANCELLED


def test_a_failing_action_is_reported_and_does_not_stop_the_thread():
    errors: list[str] = []
    ok = threading.Event()
    scheduler = DeadlineScheduler(on_error=lambda job, exc: errors.append(f"{job.name}: {exc}"))
    scheduler.start()
    try:
        now = time.time_ns()
        scheduler.schedule(now, lambda _t: 1 / 0, "boom")
        scheduler.schedule(now + 5 * MS, lambda _t: ok.set(), "after")
        assert ok.wait(5.0), "the scheduler died with the failing action"
    finally:
        scheduler.stop()
    assert errors == ["boom: division by zero"]


def test_a_stopped_scheduler_refuses_jobs_and_can_be_restarted():
    scheduler = DeadlineScheduler()
    with pytest.raises(RuntimeError, match="not running"):
        scheduler.schedule(time.time_ns(), lambda _t: None)
    fired = threading.Event()
    scheduler.start()
    scheduler.stop()
    scheduler.start()
    try:
        scheduler.schedule(time.time_ns(), lambda _t: fired.set())
        assert fired.wait(5.0)
    finally:
        scheduler.stop()


def test_realtime_priority_is_reported_granted_or_refused_with_the_reason():
    assert DeadlineScheduler().realtime == "not requested"
    refused = DeadlineScheduler(rt_priority=500)  # outside SCHED_FIFO's 1..99: always refused
    refused.start()
    try:
        assert refused.realtime.startswith("not granted (") and refused.realtime.endswith("normal scheduling")
        fired = threading.Event()
        refused.schedule(time.time_ns(), lambda _t: fired.set())
        assert fired.wait(5.0), "the scheduler must work without real-time priority"
    finally:
        refused.stop()
    scheduler = DeadlineScheduler(rt_priority=10)  # granted where CAP_SYS_NICE / rtprio allow it
    scheduler.start()
    scheduler.stop()
    assert scheduler.realtime == "SCHED_FIFO 10" or scheduler.realtime.startswith("not granted (")


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root needs setpriv (util-linux) to drop CAP_SYS_NICE"
)
def test_refused_realtime_names_the_rtprio_limit_to_raise():
    """Without CAP_SYS_NICE (a container's non-root user) SCHED_FIFO needs an rtprio limit: the reason says so."""
    script = (
        "import resource, time\n"
        "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, resource.getrlimit(resource.RLIMIT_RTPRIO)[1]))\n"
        "from qc_cell.reject.scheduler import DeadlineScheduler\n"
        "s = DeadlineScheduler(rt_priority=50)\n"
        "s.start(); time.sleep(0.2); print(s.realtime); s.stop()\n"
    )
    drop = ["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice"] if os.geteuid() == 0 else []
    result = subprocess.run([*drop, sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "not granted" in result.stdout and "rtprio limit 0 < 50" in result.stdout, result.stdout
