"""The runner's process supervisor: restarts what dies, backs off crash loops, stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from qc_cell.bringup.supervisor import ProcessSpec, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# Exits 0 on SIGINT like an rclpy node does (KeyboardInterrupt -> clean shutdown).
POLITE = [sys.executable, "-c", "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass"]


def _wait(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_killed_process_is_restarted_and_logged(tmp_path):
    events = []
    sup = Supervisor(
        [ProcessSpec("node_a", SLEEPER, respawn_delay_s=0.1)], tmp_path, on_event=lambda *e: events.append(e)
    )
    sup.start()
    try:
        first = sup.pid("node_a")
        import os
        import signal

        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: (sup.poll(), sup.pid("node_a") not in (None, first))[1]), "not restarted"
        assert sup.restarts("node_a") == 1
        assert sup.exit_codes("node_a") == [-9]
        assert [e[1] for e in events] == ["started", "exited", "started"]
    finally:
        sup.stop()
    assert not sup.running("node_a")


def test_no_respawn_and_crash_loop_backoff(tmp_path):
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    sup = Supervisor(
        [ProcessSpec("once", crash, respawn=False), ProcessSpec("loop", crash, respawn_delay_s=0.2)], tmp_path
    )
    sup.start()
    try:
        assert _wait(lambda: (sup.poll(), sup.restarts("loop") >= 2)[1], timeout=15), "crash loop not restarted"
        assert sup.exit_codes("once") == [3] and sup.restarts("once") == 0
        # Quick exits back off exponentially: 0.2 s, 0.4 s, 0.8 s ... so within 2 s only a few restarts happen.
        time.sleep(1.0)
        sup.poll()
        assert sup.restarts("loop") <= 4, f"no backoff: {sup.restarts('loop')} restarts"
    finally:
        sup.stop()


def test_stop_sends_sigint_first(tmp_path):
    sup = Supervisor([ProcessSpec("polite", POLITE)], tmp_path)
    sup.start()
    time.sleep(0.5)  # let the interpreter install its SIGINT handler
    sup.stop(timeout_s=5)
    assert sup.exit_codes("polite") == [0], "the child should have exited cleanly on SIGINT"
    assert (tmp_path / "polite.log").exists()


def test_children_stop_when_the_runner_is_killed(tmp_path):
    """SIGKILL of the runner (no clean stop) still ends its children: no orphan keeps driving the line."""
    runner = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from qc_cell.bringup.supervisor import ProcessSpec, Supervisor\n"
        f"sup = Supervisor([ProcessSpec('node_a', {POLITE!r})], Path({str(tmp_path)!r}))\n"
        "sup.start()\n"
        "print(sup.pid('node_a'), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _alive(child), "the child did not start"
        parent.kill()
        parent.wait(5)
        assert _wait(lambda: not _alive(child), timeout=10.0), f"child {child} outlived its runner"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (its parent, init here, reaps it)


def test_hurry_kills_at_once_what_ignores_sigint(tmp_path):
    """A second Ctrl-C: the runner calls hurry() during stop(), and a child still stopping is killed at once."""
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
    ]
    sup = Supervisor([ProcessSpec("stubborn", stubborn)], tmp_path)
    sup.start()
    time.sleep(0.5)  # let it ignore SIGINT
    threading.Timer(0.5, sup.hurry).start()
    started = time.monotonic()
    sup.stop(timeout_s=30)
    assert time.monotonic() - started < 3.0, "hurry() should skip the 30 s SIGINT grace and SIGTERM"
    assert sup.exit_codes("stubborn") == [-9]


def test_a_child_that_exits_on_its_own_is_reported_with_its_last_log_line(tmp_path):
    failing = [
        sys.executable,
        "-c",
        "import sys; print('starting'); print('bad parameters: rate_hz must be > 0')\nsys.exit(2)",
    ]
    events = []
    sup = Supervisor(
        [ProcessSpec("camera_driver", failing, respawn=False)], tmp_path, on_event=lambda *e: events.append(e)
    )
    sup.start()
    try:
        assert _wait(lambda: (sup.poll(), sup.exit_codes("camera_driver"))[1]), "did not exit"
    finally:
        sup.stop()
    exited = [detail for _, event, detail in events if event == "exited"]
    assert exited == [f"code 2: bad parameters: rate_hz must be > 0; log {tmp_path / 'camera_driver.log'}"]


def test_children_stop_on_sigint_even_when_the_runner_was_started_with_sigint_ignored(tmp_path):
    """A shell's background job (`runner &`) starts with SIGINT ignored, which exec passes on to its children: they
    must still stop cleanly on the runner's SIGINT instead of waiting for SIGTERM."""
    runner = (
        "import signal, time\n"
        "from pathlib import Path\n"
        "from qc_cell.bringup.supervisor import ProcessSpec, Supervisor\n"
        f"sup = Supervisor([ProcessSpec('polite', {POLITE!r})], Path({str(tmp_path)!r}))\n"
        "sup.start()\n"
        "time.sleep(1.0)\n"
        "started = time.monotonic()\n"
        "sup.stop(timeout_s=20)\n"
        "print(sup.exit_codes('polite'), round(time.monotonic() - started))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", runner],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["[0]", "0"], f"expected a clean exit on SIGINT: {result.stdout}{result.stderr}"
