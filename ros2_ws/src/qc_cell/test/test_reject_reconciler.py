"""The verdict/eject reconciler core (no ROS): exactly one terminal reject event per part that must leave the line,
by its deadline; overdue parts and duplicate events are findings."""

from __future__ import annotations

from qc_cell.reject.config import RejectConfig
from qc_cell.reject.reconciler import NO_OUTCOME, Expected, Reconciler, Status, due_ns
from qc_contract.vocabulary import RejectOutcome, Verdict

MS = 1_000_000


def _part(part_id: str, due: int, has_verdict: bool = True, verdict: int = Verdict.DEFECTIVE) -> Expected:
    return Expected(part_id, "reject", verdict, has_verdict, capture_ns=0, due_ns=due)


def test_a_part_with_its_terminal_event_in_time_is_resolved_and_a_second_event_is_a_duplicate():
    r = Reconciler()
    r.expect(_part("a", 100))
    found = r.terminal_event("a", RejectOutcome.DONE)
    assert found is not None and found.status is Status.RESOLVED and found.outcome == RejectOutcome.DONE
    assert r.overdue(1000) == [], "a settled part is never overdue"
    again = r.terminal_event("a", RejectOutcome.DONE)
    assert again is not None and again.status is Status.DUPLICATE and again.terminal_events == 2


def test_a_part_without_an_event_by_its_deadline_is_overdue_once_and_named():
    r = Reconciler()
    r.expect(_part("late", 100))
    r.expect(_part("later", 200))
    assert r.overdue(100) == [], "due at 100: not overdue at 100"
    found = r.overdue(150)
    assert [(f.part.part_id, f.status, f.outcome) for f in found] == [("late", Status.OVERDUE, NO_OUTCOME)]
    assert r.overdue(150) == []
    assert r.terminal_event("late", RejectOutcome.DONE).status is Status.DUPLICATE, "an event after the alarm"


def test_a_registration_is_replaced_by_the_verdict_and_released_by_a_normal_one():
    r = Reconciler()
    r.expect(_part("n", 100, has_verdict=False, verdict=Verdict.NOT_INSPECTED))
    r.release("n")  # the verdict was NORMAL: the part passes, nothing is due
    assert r.overdue(1000) == [] and r.open_count == 0
    r.expect(_part("d", 100, has_verdict=False, verdict=Verdict.NOT_INSPECTED))
    r.expect(_part("d", 300))  # DEFECTIVE: its lane's deadline
    r.expect(_part("d", 100, has_verdict=False))  # a late registration does not undo the verdict
    assert r.overdue(200) == [] and [f.part.part_id for f in r.overdue(400)] == ["d"]
    assert r.counts["expected"] == 2


def test_events_for_parts_nobody_expected_are_counted_not_reported():
    r = Reconciler()
    assert r.terminal_event("x", RejectOutcome.DONE) is None
    assert r.counts["unexpected_events"] == 1


def test_the_oldest_part_is_reported_overdue_when_the_table_is_full_never_dropped():
    r = Reconciler(max_parts=2)
    assert r.expect(_part("a", 10)) == [] and r.expect(_part("b", 20)) == []
    made_room = r.expect(_part("c", 30))
    assert [(f.part.part_id, f.status) for f in made_room] == [("a", Status.OVERDUE)]


def test_the_deadline_is_travel_at_the_nominal_speed_plus_actuation_confirmation_and_grace():
    config = RejectConfig(
        belt_speed_mm_s=500.0,
        actuator_latency_ms=20.0,
        pulse_width_ms=40.0,
        late_tolerance_ms=10.0,
        confirm_window_ms=100.0,
    )
    assert due_ns(0, 800.0, config, 1000.0) == (1600 + 20 + 40 + 10 + 100 + 1000) * MS


def test_a_part_held_for_a_stopped_belt_is_not_overdue_and_its_deadline_moves_by_the_stop():
    r = Reconciler()
    r.expect(Expected("held", "reject", Verdict.DEFECTIVE, True, capture_ns=0, due_ns=1000))
    r.belt_stopped(False, 100)
    r.belt_stopped(True, 400)  # the belt stands from 400 ...
    assert r.overdue(5000) == [], "no deadline passes while the belt is known to stand"
    r.belt_stopped(True, 5000)
    r.belt_stopped(False, 3400)  # ... to 3400: 3000 more for the part
    assert r.overdue(3900) == []
    assert [(f.part.part_id, f.part.due_ns) for f in r.overdue(4001)] == [("held", 4000)]
    # A verdict that comes after the stop gets the stop too; a part captured mid-stop only what was left of it.
    r.expect(Expected("before", "reject", Verdict.DEFECTIVE, True, capture_ns=200, due_ns=1200))
    r.expect(Expected("during", "reject", Verdict.DEFECTIVE, True, capture_ns=3000, due_ns=4000))
    r.expect(Expected("after", "reject", Verdict.DEFECTIVE, True, capture_ns=3500, due_ns=4500))
    assert [(f.part.part_id, f.part.due_ns) for f in r.overdue(10_000)] == [
        ("before", 4200),
        ("during", 4400),
        ("after", 4500),
    ]


def test_a_part_that_passed_during_an_actuator_outage_gets_one_terminal_event_and_no_overdue_before_it():
    """Issue 17: after an actuator restart, a replayed verdict for a part that passed during the outage was OVERDUE
    (its deadline had passed before the restarted actuator could act), then its MISSED event a DUPLICATE: three
    alerts for one part. While recovering no deadline passes, and a part learnt after its deadline has the late grace
    from then: its MISSED event resolves it, one finding."""
    r = Reconciler(late_grace_ns=50 * MS)
    r.recovering(True, 0)
    r.expect(_part("gone", 100 * MS), now_ns=1000 * MS)  # replayed while not armed, due long ago
    r.expect(_part("registered", 200 * MS, has_verdict=False, verdict=Verdict.NOT_INSPECTED), now_ns=1000 * MS)
    assert r.overdue(5000 * MS) == [], "nothing is overdue while the actuator is recovering"
    r.recovering(False, 6000 * MS)  # armed: the backlog is handed to the controller
    missed = r.terminal_event("gone", RejectOutcome.MISSED)
    assert missed is not None and missed.status is Status.RESOLVED and missed.outcome == RejectOutcome.MISSED
    assert r.overdue(6040 * MS) == [], "within the late grace after arming"
    found = r.overdue(6060 * MS)
    assert [(f.part.part_id, f.status) for f in found] == [("registered", Status.OVERDUE)], (
        "a part the armed actuator does not settle within the grace is still overdue"
    )
    assert r.counts["duplicate_events"] == 0 and r.counts["overdue"] == 1


def test_a_part_learnt_after_its_deadline_by_an_armed_actuator_has_the_late_grace_and_no_more():
    r = Reconciler(late_grace_ns=50 * MS)
    r.expect(_part("late", 100 * MS), now_ns=1000 * MS)
    r.expect(_part("normal", 2000 * MS), now_ns=1000 * MS)
    assert r.overdue(1040 * MS) == []
    assert [f.part.part_id for f in r.overdue(1060 * MS)] == ["late"]
    assert r.overdue(1999 * MS) == [], "a deadline still ahead is not moved"
    assert [f.part.part_id for f in r.overdue(2001 * MS)] == ["normal"]


def test_a_late_part_keeps_its_grace_when_the_belt_restarts():
    r = Reconciler(late_grace_ns=500 * MS)
    r.belt_stopped(True, 900 * MS)
    r.expect(_part("late", 100 * MS), now_ns=1000 * MS)
    r.belt_stopped(False, 1100 * MS)
    assert r.overdue(1400 * MS) == [], "the belt restart does not take the late grace away"
    assert [f.part.part_id for f in r.overdue(1600 * MS)] == ["late"]


def test_recovery_does_not_hold_parts_whose_deadline_is_ahead():
    r = Reconciler(late_grace_ns=50 * MS)
    r.recovering(True, 0)
    r.expect(_part("ahead", 10_000 * MS), now_ns=0)
    r.recovering(False, 100 * MS)
    assert r.overdue(9_999 * MS) == []
    assert [f.part.part_id for f in r.overdue(10_001 * MS)] == ["ahead"]


def test_a_part_the_journal_closed_before_a_restart_is_no_longer_expected():
    r = Reconciler(late_grace_ns=50 * MS)
    r.recovering(True, 0)
    r.expect(_part("done_before", 100 * MS), now_ns=1000 * MS)  # replayed before the journal could be asked
    r.settled_before("done_before")
    r.settled_before("unknown")  # nothing expected: nothing happens
    r.recovering(False, 2000 * MS)
    assert r.overdue(10_000 * MS) == [], "ejected before the restart: not overdue"
    again = r.terminal_event("done_before", RejectOutcome.DONE)
    assert again is not None and again.status is Status.DUPLICATE, "a second ejection is still caught"
    assert r.counts["settled_before"] == 1 and r.counts["resolved"] == 0
