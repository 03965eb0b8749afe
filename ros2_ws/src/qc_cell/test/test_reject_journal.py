"""Recovery after a reject_actuator restart: the durable journal of planned ejections, and the controller armed
again on it (plain pytest, sim driver, real files)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from qc_cell.reject.config import RejectConfig
from qc_cell.reject.controller import RejectController
from qc_cell.reject.drivers.sim import SimDriver
from qc_cell.reject.journal import EjectionJournal
from qc_cell.reject.recording import RecordingSink
from qc_cell.reject.records import CRITICAL, DEFECTIVE, DONE, MISSED, REJECT, STOP_LINE, Decision

MS = 1_000_000
CONFIG = RejectConfig(
    reject_distance_mm=300.0, belt_speed_mm_s=1000.0, watchdog_timeout_s=0.0, missed_response="stop_line"
)


def _controller(journal: EjectionJournal) -> tuple[RejectController, SimDriver, RecordingSink]:
    driver, sink = SimDriver(), RecordingSink()
    controller = RejectController(CONFIG, driver, sink, journal=journal)
    controller.open()
    return controller, driver, sink


def test_plans_survive_a_sigkill_and_terminal_events_close_them(tmp_path):
    path = tmp_path / "journal.jsonl"
    script = (
        "import os, sys\n"
        "from qc_cell.reject.journal import EjectionJournal\n"
        "from qc_cell.reject.records import Part\n"
        f"j = EjectionJournal({str(path)!r})\n"
        "j.planned(Part('a', 1, 5, 'camera'), 2, 'reject')\n"
        "j.planned(Part('b', 2), 3, 'reject')\n"
        "j.done('a')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    with path.open("a") as f:
        f.write('{"op": "plan", "part_id": "torn"')  # a crash mid-line
    journal = EjectionJournal(path)
    assert [(p.part.part_id, p.verdict, p.lane) for p in journal.open_plans()] == [("b", 3, "reject")]
    assert journal.handled("a") and journal.handled("b") and not journal.handled("c")
    assert journal.corrupt_lines == 1
    journal.done("b")
    journal.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert EjectionJournal(path).open_plans() == [] and len(lines) == 3, "compacted on open"


def test_a_restarted_actuator_re_plans_parts_upstream_and_reports_those_past_missed(tmp_path):
    path = tmp_path / "journal.jsonl"
    first, _, _ = _controller(EjectionJournal(path))
    first.arm()
    now = time.time_ns()
    first.on_decision(Decision("upstream", DEFECTIVE, now + 1000 * MS))  # 1.3 s to its ejector
    first.on_decision(Decision("passing", DEFECTIVE, now))  # at its ejector in 280 ms
    # SIGKILL: the process is gone, no disarm, no close; only the journal remains.
    first._scheduler.stop()
    time.sleep(0.5)  # the restart takes longer than "passing" needed to reach the ejector
    second, driver, sink = _controller(EjectionJournal(path))
    second.arm()
    try:
        assert sink.wait(lambda: len(sink.events) == 1), sink.events
        missed = sink.events[0]
        assert (missed.part_id, missed.outcome, missed.lane) == ("passing", MISSED, REJECT)
        assert "restarted while the part was in flight" in missed.message
        alert = next(a for a in sink.alerts if a.code == "REJECT_MISSED")
        assert (alert.severity, alert.part_id) == (CRITICAL, "passing")
        assert sink.wait(lambda: any(e.channel == STOP_LINE and e.on for e in driver.edges)), "stop-line raised"
        assert sink.wait(lambda: len(sink.events) == 2, timeout=3.0), sink.events
        done = sink.events[1]
        assert (done.part_id, done.outcome) == ("upstream", DONE) and "re-planned" in done.message
        assert done.planned_ns == now + 1000 * MS + (300 - 15 - 20) * MS, "at its original place on the belt"
        # The decision node replays its history to the restarted actuator: known verdicts are not acted on again.
        second.on_decision(Decision("upstream", DEFECTIVE, now + 1000 * MS), replayed=True)
        second.on_decision(Decision("passing", DEFECTIVE, now), replayed=True)
        assert second.counts["replayed_known"] == 2 and len(sink.events) == 2
        # A verdict decided while the actuator was down, for a part already past: MISSED, never silent.
        second.on_decision(Decision("unseen", DEFECTIVE, now - 2000 * MS), replayed=True)
        assert [(e.part_id, e.outcome) for e in sink.events[2:]] == [("unseen", MISSED)]
    finally:
        second.close()
    assert EjectionJournal(path).open_plans() == [], "every plan closed by its terminal event"


def test_parts_awaiting_their_verdict_are_watched_again_after_a_restart(tmp_path):
    """A part registered but not decided when the actuator died: the restarted one watches it, so without a replayed
    verdict the watchdog fails it safe (NOT_INSPECTED, ejected), and a replayed verdict is acted on."""
    from qc_cell.reject.records import NOT_INSPECTED, Part

    path = tmp_path / "journal.jsonl"
    config = RejectConfig(
        reject_distance_mm=900.0, belt_speed_mm_s=1000.0, watchdog_timeout_s=0.3, late_tolerance_ms=100.0
    )
    first = RejectController(config, SimDriver(), RecordingSink(), journal=EjectionJournal(path))
    first.open()
    first.arm()
    now = time.time_ns()
    first.on_part(Part("orphan", now))  # its verdict was lost with the decision node's process
    first.on_part(Part("decided", now))
    first.on_part(Part("normal", now))
    first.on_decision(Decision("normal", 0, now))  # NORMAL: decided, nothing to watch
    first._scheduler.stop()  # SIGKILL
    journal = EjectionJournal(path)
    assert [p.part_id for p in journal.waiting_parts()] == ["orphan", "decided"]
    driver, sink = SimDriver(), RecordingSink()
    second = RejectController(config, driver, sink, journal=journal)
    second.open()
    second.arm()
    try:
        assert second.counts["recovered_waiting"] == 2
        second.on_decision(Decision("decided", DEFECTIVE, now), replayed=True)  # from the decision node's history
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and len({e.part_id for e in sink.events if e.outcome == DONE}) < 2:
            second.tick()
            time.sleep(0.02)
        done = {e.part_id: e.verdict for e in sink.events if e.outcome == DONE}
        assert done == {"decided": DEFECTIVE, "orphan": NOT_INSPECTED}, sink.events
    finally:
        second.close()
    assert EjectionJournal(path).waiting_parts() == [], "every waiting part closed"


def test_steady_stamps_from_another_boot_are_not_trusted(tmp_path):
    from dataclasses import asdict

    from qc_cell.reject.records import Part

    path = tmp_path / "journal.jsonl"
    line = {"op": "wait", "part_id": "x", "part": asdict(Part("x", 5, steady_ns=123)), "boot": "another-boot"}
    path.write_text(json.dumps(line) + "\n")
    assert EjectionJournal(path).waiting_parts() == [Part("x", 5, steady_ns=0)]
