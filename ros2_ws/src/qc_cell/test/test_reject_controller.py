"""Reject controller with the sim driver (plain pytest, real time): planned times, late parts, overlaps,
duplicates, faults, the watchdog's fail-safe and the lifecycle of the hardware.

Geometry used throughout: reject actuator 100 mm downstream at 1000 mm/s (100 ms transit), latency 10 ms,
pulse 20 ms, so the command time is capture + 100 - 10 - 20/2 = capture + 80 ms. The late tolerance is
generous (100 ms) because a busy CI machine delays threads; actuation precision is the benchmark's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from qc_cell.reject.config import RejectConfig
from qc_cell.reject.controller import RejectController
from qc_cell.reject.drivers.gpio import GpioDriver
from qc_cell.reject.drivers.sim import SimDriver
from qc_cell.reject.recording import RecordingSink as Recorder
from qc_cell.reject.records import (
    CRITICAL,
    DEFECTIVE,
    DIVERT,
    DONE,
    FAILED,
    LATE,
    NORMAL,
    NOT_INSPECTED,
    REINSPECT,
    REJECT,
    SKIPPED,
    STOP_LINE,
    UNCONFIRMED,
    Decision,
    Part,
)

MS = 1_000_000
COMMAND_AFTER_CAPTURE = 80 * MS
BASE = {
    "reject_distance_mm": 100.0,
    "belt_speed_mm_s": 1000.0,
    "actuator_latency_ms": 10.0,
    "pulse_width_ms": 20.0,
    "late_tolerance_ms": 100.0,
    "min_pulse_gap_ms": 0.0,
    "watchdog_timeout_s": 0.0,
}


@pytest.fixture
def cell() -> Iterator[Callable[..., tuple[RejectController, SimDriver, Recorder]]]:
    made: list[RejectController] = []

    def make(**changes) -> tuple[RejectController, SimDriver, Recorder]:
        driver, recorder = SimDriver(), Recorder()
        controller = RejectController(RejectConfig(**{**BASE, **changes}), driver, recorder)
        controller.open()
        controller.arm()
        made.append(controller)
        return controller, driver, recorder

    yield make
    for controller in made:
        controller.close()


def edges(driver: SimDriver, channel: str = REJECT) -> list[tuple[bool, int]]:
    return [(e.on, e.t_ns) for e in driver.edges if e.channel == channel]


def test_ejects_defective_and_not_inspected_at_the_planned_time(cell):
    controller, driver, rec = cell()
    t0 = time.time_ns()
    parts = {"good": NORMAL, "unsure": REINSPECT, "bad": DEFECTIVE, "unseen": NOT_INSPECTED}
    for i, (part_id, verdict) in enumerate(parts.items()):
        controller.on_decision(Decision(part_id, verdict, t0 + i * 100 * MS, frame_id="camera"))
    assert rec.wait(lambda: len(rec.events) == 2), f"events: {rec.events}"
    time.sleep(0.05)  # nothing else may come
    events = rec.by_part()
    assert set(events) == {"bad", "unseen"}, "NORMAL and REINSPECT (no divert lane) pass"
    for part_id, capture in (("bad", t0 + 200 * MS), ("unseen", t0 + 300 * MS)):
        event = events[part_id]
        assert (event.outcome, event.lane, event.method) == (DONE, REJECT, "sim")
        assert event.planned_ns == capture + COMMAND_AFTER_CAPTURE, "command = capture + 80 ms exactly"
        assert event.actual_ns >= event.planned_ns
        assert event.lateness_ms == pytest.approx((event.actual_ns - event.planned_ns) / MS)
        assert (event.capture_ns, event.frame_id, event.position_m) == (capture, "camera", 0.1)
    assert rec.wait(lambda: len(edges(driver)) == 4)
    (on1, t_on1), (off1, t_off1), (on2, _), (off2, _) = edges(driver)
    assert (on1, off1, on2, off2) == (True, False, True, False)
    assert t_on1 >= events["bad"].planned_ns and t_off1 >= events["bad"].planned_ns + 20 * MS
    assert controller.counts["done"] == 2 and controller.counts["passed"] == 2


def test_a_verdict_after_the_part_passed_is_late_alerted_and_not_actuated(cell):
    controller, driver, rec = cell()
    capture = time.time_ns() - 1_000 * MS  # the part passed the ejector 900 ms ago
    controller.on_decision(Decision("p1", DEFECTIVE, capture))
    (event,) = rec.events
    assert (event.outcome, event.actual_ns) == (LATE, 0)
    assert event.planned_ns == capture + COMMAND_AFTER_CAPTURE
    assert event.lateness_ms >= 900.0
    assert "has passed the reject actuator" in event.message
    assert [(a.severity, a.code, a.part_id) for a in rec.alerts if not a.code.startswith("STOP_LINE_")] == [
        (CRITICAL, "REJECT_LATE", "p1")
    ]
    time.sleep(0.05)
    assert edges(driver) == [], "a late part must not be actuated"
    assert controller.counts["late"] == 1


def test_missed_response_stop_line_pulses_the_stop_output(cell):
    controller, driver, rec = cell(missed_response="stop_line", stop_line_pulse_ms=50.0)
    requested = time.time_ns()
    controller.on_decision(Decision("p1", DEFECTIVE, requested - 1_000 * MS))
    assert rec.wait(lambda: len(edges(driver, STOP_LINE)) == 2, timeout=5.0), driver.edges
    (on, t_on), (off, t_off) = edges(driver, STOP_LINE)
    assert (on, off) == (True, False)
    assert t_on >= requested and t_off >= requested + 50 * MS
    assert controller.counts["stop_line_requests"] == 1


def test_missed_response_divert_sends_a_late_part_to_the_downstream_lane(cell):
    controller, _driver, rec = cell(missed_response="divert", divert_distance_mm=600.0)
    capture = time.time_ns() - 300 * MS  # too late for the ejector at 100 mm, in time for the gate at 600 mm
    controller.on_decision(Decision("p1", DEFECTIVE, capture))
    assert rec.wait(lambda: len(rec.events) == 2), rec.events
    late, diverted = rec.events
    assert (late.outcome, late.lane) == (LATE, REJECT)
    assert (diverted.outcome, diverted.lane) == (DONE, DIVERT)
    assert diverted.planned_ns == capture + (600 - 10 - 10) * MS
    assert "divert after LATE" in diverted.message
    assert diverted.position_m == pytest.approx(0.6)


def test_reinspect_goes_to_the_divert_lane_when_configured(cell):
    controller, driver, rec = cell(divert_distance_mm=150.0, divert_verdicts=("REINSPECT",))
    capture = time.time_ns()
    controller.on_decision(Decision("p1", REINSPECT, capture))
    assert rec.wait(lambda: len(rec.events) == 1)
    assert (rec.events[0].lane, rec.events[0].outcome) == (DIVERT, DONE)
    assert rec.events[0].planned_ns == capture + (150 - 10 - 10) * MS
    assert rec.wait(lambda: len(edges(driver, DIVERT)) == 2) and edges(driver, REJECT) == []


DIVERTING = {"divert_distance_mm": 400.0, "divert_verdicts": ("REINSPECT",)}


def test_a_cloud_verdict_in_time_replaces_the_local_reinspect(cell):
    controller, driver, rec = cell(**DIVERTING)
    capture = time.time_ns()  # divert command at +380 ms, reject command at +80 ms
    controller.on_decision(Decision("bad", REINSPECT, capture))
    controller.on_decision(Decision("good", REINSPECT, capture + 30 * MS))
    controller.on_cloud_verdict(Decision("bad", DEFECTIVE, capture))
    controller.on_cloud_verdict(Decision("good", NORMAL, capture + 30 * MS))
    assert rec.wait(lambda: len(rec.events) == 2, timeout=2.0), rec.events
    time.sleep(0.45)  # past both divert commands: neither may fire
    events = rec.by_part()
    assert (events["bad"].outcome, events["bad"].lane, events["bad"].verdict) == (DONE, REJECT, DEFECTIVE)
    assert events["bad"].planned_ns == capture + COMMAND_AFTER_CAPTURE
    assert "cloud re-inspection verdict DEFECTIVE" in events["bad"].message
    assert (events["good"].outcome, events["good"].verdict) == (SKIPPED, NORMAL)
    assert "divert cancelled" in events["good"].message
    assert edges(driver, DIVERT) == [], "both divert pulses were cancelled"
    assert controller.counts["cloud_verdicts_applied"] == 2


def test_a_cloud_verdict_too_late_leaves_the_local_action(cell):
    controller, driver, rec = cell(**DIVERTING)
    capture = time.time_ns() - 250 * MS  # the reject lane's command is 170 ms past: too late for DEFECTIVE there
    controller.on_decision(Decision("p1", REINSPECT, capture))
    controller.on_cloud_verdict(Decision("p1", DEFECTIVE, capture))
    controller.on_cloud_verdict(Decision("p1", REINSPECT, capture))  # agrees with the local verdict
    controller.on_cloud_verdict(Decision("stranger", DEFECTIVE, capture))  # never decided here
    assert rec.wait(lambda: len(rec.events) == 1, timeout=2.0)
    (event,) = rec.events
    assert (event.outcome, event.lane, event.verdict) == (DONE, DIVERT, REINSPECT), "still diverted"
    counts = controller.counts
    assert (counts["cloud_verdicts_late"], counts["cloud_verdicts_agreed"], counts["cloud_verdicts_unknown"]) == (
        1,
        1,
        1,
    )
    assert rec.wait(lambda: len(edges(driver, DIVERT)) == 2) and edges(driver, REJECT) == []


def test_a_cloud_second_opinion_ejects_a_passed_part_while_it_can_reach_the_lane(cell):
    controller, driver, rec = cell(**DIVERTING)
    capture = time.time_ns()  # reject command at +80 ms
    controller.on_decision(Decision("passed", NORMAL, capture))
    controller.on_cloud_verdict(Decision("passed", DEFECTIVE, capture))  # a second opinion (offload of a NORMAL)
    late = time.time_ns() - 250 * MS  # its reject command 170 ms past
    controller.on_decision(Decision("gone", NORMAL, late))
    controller.on_cloud_verdict(Decision("gone", DEFECTIVE, late))
    assert rec.wait(lambda: len(rec.events) == 2, timeout=2.0), rec.events
    events = rec.by_part()
    assert (events["passed"].outcome, events["passed"].lane, events["passed"].verdict) == (DONE, REJECT, DEFECTIVE)
    assert "cloud re-inspection verdict DEFECTIVE" in events["passed"].message
    assert (events["gone"].outcome, events["gone"].lane) == (LATE, REJECT), "reported, not silently passed"
    assert rec.wait(lambda: len(edges(driver, REJECT)) == 2) and edges(driver, DIVERT) == []


@pytest.mark.parametrize("gap_ms", [0, 8])
def test_close_parts_merge_into_one_continuous_pulse(cell, gap_ms):
    """Parts 10 ms apart overlap (20 ms pulses); parts 25 ms apart leave a 5 ms gap, bridged when the
    valve needs 8 ms between pulses. Both parts are reported DONE and the output switches once."""
    controller, driver, rec = cell(min_pulse_gap_ms=float(gap_ms))
    spacing = 10 if gap_ms == 0 else 25
    t0 = time.time_ns() + 50 * MS
    controller.on_decision(Decision("a", DEFECTIVE, t0))
    controller.on_decision(Decision("b", DEFECTIVE, t0 + spacing * MS))
    assert rec.wait(lambda: len(rec.events) == 2 and len(edges(driver)) == 2), (rec.events, driver.edges)
    events = rec.by_part()
    assert [events[p].outcome for p in "ab"] == [DONE, DONE]
    assert events["b"].planned_ns == t0 + spacing * MS + COMMAND_AFTER_CAPTURE
    assert "merged with the pulse of part a" in events["b"].message
    (on, t_on), (off, t_off) = edges(driver)
    assert (on, off) == (True, False)
    assert t_on >= events["a"].planned_ns
    assert t_off >= events["b"].planned_ns + 20 * MS, "the output stays on until the second part's pulse ends"
    assert controller.counts["merged"] == 1


def test_overlap_policy_flag_reports_the_second_part_instead_of_losing_it(cell):
    controller, driver, rec = cell(overlap_policy="flag", missed_response="stop_line", stop_line_pulse_ms=20.0)
    t0 = time.time_ns() + 50 * MS
    controller.on_decision(Decision("a", DEFECTIVE, t0))
    controller.on_decision(Decision("b", DEFECTIVE, t0 + 10 * MS))
    assert rec.wait(lambda: len(rec.events) == 2)
    events = rec.by_part()
    assert (events["a"].outcome, events["b"].outcome) == (DONE, FAILED)
    assert "overlaps the pulse of part a" in events["b"].message
    assert "REJECT_FAILED" in rec.codes()
    assert rec.wait(lambda: len(edges(driver, STOP_LINE)) == 2), "the flagged part triggers the missed response"


def test_out_of_order_verdicts_are_planned_by_capture_time(cell):
    controller, driver, rec = cell()
    t0 = time.time_ns() + 50 * MS
    controller.on_decision(Decision("later", DEFECTIVE, t0 + 100 * MS))
    controller.on_decision(Decision("earlier", DEFECTIVE, t0))
    assert rec.wait(lambda: len(rec.events) == 2 and len(edges(driver)) == 4)
    assert [e.part_id for e in rec.events] == ["earlier", "later"]
    assert rec.by_part()["earlier"].planned_ns == t0 + COMMAND_AFTER_CAPTURE


def test_duplicate_verdicts_are_ignored_and_reported(cell):
    controller, driver, rec = cell()
    capture = time.time_ns()
    controller.on_decision(Decision("p1", DEFECTIVE, capture))
    controller.on_decision(Decision("p1", DEFECTIVE, capture))
    controller.on_decision(Decision("p1", NORMAL, capture))
    assert rec.wait(lambda: len(rec.events) == 3 and len(edges(driver)) == 2)
    outcomes = [(e.outcome, e.message) for e in rec.events]
    assert sorted(o for o, _ in outcomes) == [DONE, SKIPPED, SKIPPED]
    assert all("already handled (verdict DEFECTIVE)" in m for o, m in outcomes if o == SKIPPED)
    time.sleep(0.05)
    assert len(edges(driver)) == 2, "one pulse only"
    assert controller.counts["duplicates"] == 2


def test_actuator_faults_fail_the_part_and_raise_driver_alerts(cell):
    controller, driver, rec = cell(pulse_width_ms=400.0, reject_distance_mm=400.0)  # off-edge after the fault clears
    driver.inject_fault("valve supply lost")
    controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns()))
    assert rec.wait(lambda: len(rec.events) == 1)
    event = rec.events[0]
    assert (event.outcome, event.actual_ns) == (FAILED, 0)
    assert "actuator fault: valve supply lost" in event.message
    controller.tick()
    assert "REJECT_FAILED" in rec.codes() and "REJECT_DRIVER_FAULT" in rec.codes()
    driver.inject_fault(None)
    controller.tick()
    assert rec.codes()[-1] == "REJECT_DRIVER_RECOVERED"
    # The pulse's off-edge still runs after the failed on-edge (the output may have switched anyway).
    assert rec.wait(lambda: [on for on, _ in edges(driver)] == [False]), driver.edges


def test_encoder_samples_from_camera_parts_time_the_part(cell):
    controller, _driver, rec = cell(speed_source="encoder", belt_speed_mm_s=0.0, encoder_ticks_per_mm=4.0)
    now = time.time_ns()
    # 1000 mm/s = 4000 ticks/s; samples every 50 ms over the last 250 ms.
    for i in range(6):
        controller.on_part(Part(f"s{i}", now - (250 - 50 * i) * MS, 10_000 + 200 * i))
    capture = now - 50 * MS  # the part with count 10_800
    controller.on_decision(Decision("p", DEFECTIVE, capture, encoder_count=10_800))
    assert rec.wait(lambda: len(rec.events) == 1)
    event = rec.events[0]
    assert event.outcome == DONE
    assert abs(event.planned_ns - (capture + COMMAND_AFTER_CAPTURE)) <= 1_000, "encoder timing off by > 1 us"
    assert controller.snapshot()["speed_source"] == "encoder"


def test_runtime_reconfiguration_applies_to_the_next_part(cell):
    controller, _driver, rec = cell()
    controller.reconfigure(RejectConfig(**{**BASE, "belt_speed_mm_s": 500.0}))
    capture = time.time_ns()
    controller.on_decision(Decision("p", DEFECTIVE, capture))
    assert rec.wait(lambda: len(rec.events) == 1, timeout=5.0)
    assert rec.events[0].planned_ns == capture + (200 - 10 - 10) * MS


def _tick_until(controller: RejectController, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        controller.tick()
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_watchdog_rejects_parts_without_verdict_and_alerts_once(cell):
    controller, _driver, rec = cell(watchdog_timeout_s=0.1, reject_distance_mm=600.0)
    now = time.time_ns()
    for i in range(3):
        controller.on_part(Part(f"p{i}", now + i * 10 * MS))
    assert _tick_until(controller, lambda: len(rec.events) == 3), rec.events
    assert all(e.outcome == DONE and e.verdict == NOT_INSPECTED for e in rec.events)
    assert all("fail-safe: no verdict within watchdog_timeout_s 0.10" in e.message for e in rec.events)
    assert rec.codes().count("DECISION_STREAM_DOWN") == 1
    assert controller.snapshot()["decision_stream_down"] is True
    # The verdict finally arrives: the part was already handled; the stream is back.
    controller.on_decision(Decision("p0", DEFECTIVE, now))
    assert rec.events[-1].outcome == SKIPPED and "watchdog fail-safe" in rec.events[-1].message
    assert rec.codes()[-1] == "DECISION_STREAM_RESTORED"
    assert controller.counts["watchdog_trips"] == 1


def test_watchdog_ignores_parts_whose_verdict_arrives_in_time(cell):
    controller, _driver, rec = cell(watchdog_timeout_s=0.1)
    now = time.time_ns()
    controller.on_decision(Decision("p0", NORMAL, now))  # a verdict may overtake its camera/parts message
    controller.on_part(Part("p0", now))
    controller.on_part(Part("p1", now))
    controller.on_decision(Decision("p1", NORMAL, now))
    time.sleep(0.15)
    controller.tick()
    assert rec.events == [] and rec.alerts == []


def test_watchdog_stop_line_holds_the_stop_output_until_verdicts_return(cell):
    controller, driver, rec = cell(watchdog_timeout_s=0.1, watchdog_action="stop_line", reject_distance_mm=600.0)

    def stop_line() -> list[bool]:
        return [on for on, _ in edges(driver, STOP_LINE)]

    controller.on_part(Part("p0", time.time_ns()))
    assert _tick_until(controller, lambda: stop_line() == [True]), driver.edges
    time.sleep(0.2)
    controller.tick()
    assert stop_line() == [True], "held while the stream is down"
    controller.on_decision(Decision("p1", NORMAL, time.time_ns()))
    assert rec.wait(lambda: stop_line() == [True, False])
    assert rec.wait(lambda: len(rec.events) == 1)
    assert (rec.events[0].outcome, rec.events[0].verdict) == (DONE, NOT_INSPECTED), "p0 is still rejected"


def test_watchdog_alert_only_reports_the_part_it_lets_pass(cell):
    controller, driver, rec = cell(watchdog_timeout_s=0.05, watchdog_action="alert_only")
    controller.on_part(Part("p0", time.time_ns()))
    assert _tick_until(controller, lambda: len(rec.events) == 1)
    assert rec.events[0].outcome == SKIPPED and "alert_only" in rec.events[0].message
    assert "REJECT_SKIPPED" in rec.codes()
    assert edges(driver) == []


def test_disarm_reports_pending_parts_and_switches_outputs_off(cell):
    controller, driver, rec = cell(reject_distance_mm=2_000.0)
    capture = time.time_ns()
    controller.on_decision(Decision("pending", DEFECTIVE, capture))
    controller.disarm()
    (event,) = rec.events
    assert event.outcome == SKIPPED and "deactivated before the part reached it" in event.message
    assert "REJECT_SKIPPED" in rec.codes()
    controller.on_decision(Decision("while_inactive", DEFECTIVE, capture))
    assert rec.events[-1].outcome == SKIPPED and "not active" in rec.events[-1].message
    time.sleep(0.05)
    assert edges(driver) == []
    controller.close()
    assert not controller.opened and driver.health().ok is False


def test_a_configuration_needing_an_output_the_driver_lacks_is_refused():
    driver = GpioDriver({REJECT: 18}, gpio=object())  # never opened: construction only
    config = RejectConfig(divert_distance_mm=900.0, divert_verdicts=("REINSPECT",))
    with pytest.raises(ValueError, match=r"no output for \['divert'\]"):
        RejectController(config, driver, Recorder())


# ---- confirmation sensor and station inputs (simulated station) ---------------------------------------------------
def _tick_for(controller: RejectController, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        controller.tick()
        time.sleep(0.01)


def test_an_ejection_is_done_only_once_the_confirmation_sensor_saw_the_part(cell):
    controller, driver, rec = cell(confirm_window_ms=60.0, missed_response="stop_line", stop_line_pulse_ms=50.0)
    capture = time.time_ns()
    controller.on_decision(Decision("seen", DEFECTIVE, capture))
    assert _tick_until(controller, lambda: len(rec.events) == 1), rec.events
    (done,) = rec.events
    assert (done.outcome, done.part_id) == (DONE, "seen")
    assert "confirmed by the reject sensor 20 ms after the stroke" in done.message, done.message
    assert done.actual_ns >= capture + COMMAND_AFTER_CAPTURE
    driver.set_faults(frozenset({"jammed"}))  # the pusher strokes, nothing reaches the chute
    controller.on_decision(Decision("stuck", DEFECTIVE, time.time_ns()))
    assert _tick_until(controller, lambda: len(rec.events) == 2), rec.events
    unconfirmed = rec.events[1]
    assert (unconfirmed.outcome, unconfirmed.part_id) == (UNCONFIRMED, "stuck")
    assert unconfirmed.actual_ns > 0 and "did not see the part within 60 ms" in unconfirmed.message
    assert [(a.severity, a.code, a.part_id) for a in rec.alerts if not a.code.startswith("STOP_LINE_")] == [
        (CRITICAL, "REJECT_UNCONFIRMED", "stuck")
    ]
    assert rec.wait(lambda: len(edges(driver, STOP_LINE)) == 2), "the stop-line pulses for the unconfirmed part"
    assert controller.counts["unconfirmed"] == 1 and controller.counts["done"] == 1


def test_merged_parts_each_need_their_own_confirmation(cell):
    controller, driver, rec = cell(confirm_window_ms=60.0)
    capture = time.time_ns()
    controller.on_decision(Decision("a", DEFECTIVE, capture))
    controller.on_decision(Decision("b", DEFECTIVE, capture + 10 * MS))  # overlaps a's pulse: merged
    assert _tick_until(controller, lambda: len(rec.events) == 2), rec.events
    assert [(e.part_id, e.outcome) for e in rec.events] == [("a", DONE), ("b", DONE)]
    assert len(edges(driver)) == 2, "one continuous pulse"


@pytest.mark.parametrize(
    ("fault", "named"), [("bin_full", "reject bin full"), ("bin_absent", "reject bin absent"), ("air_low", "air")]
)
def test_a_station_fault_holds_the_stop_line_and_blocks_ejection(cell, fault, named):
    controller, driver, rec = cell(confirm_window_ms=60.0)
    driver.set_faults(frozenset({fault}))
    controller.tick()
    assert rec.wait(lambda: [on for on, _ in edges(driver, STOP_LINE)] == [True]), driver.edges
    # Every stop-line edge is an alert too (when the cell stopped the line), after the output switched.
    assert rec.wait(lambda: [a.code for a in rec.alerts if a.code.startswith("STOP_LINE_")] == ["STOP_LINE_RAISED"])
    codes = [(a.severity, a.code) for a in rec.alerts if not a.code.startswith("STOP_LINE_")]
    assert codes == [(CRITICAL, "REJECT_STATION_FAULT")]
    assert named in rec.alerts[0].message
    controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns()))
    assert _tick_until(controller, lambda: len(rec.events) == 1), rec.events
    (event,) = rec.events
    assert (event.outcome, event.actual_ns) == (FAILED, 0) and f"ejection blocked: {named}" in event.message
    assert edges(driver) == [], "no stroke into a full or missing bin, or without air"
    driver.set_faults(frozenset())
    controller.tick()
    assert rec.wait(lambda: [on for on, _ in edges(driver, STOP_LINE)] == [True, False]), "released once fine again"
    assert [a.code for a in rec.alerts if not a.code.startswith("STOP_LINE_")][-1] == "REJECT_STATION_RESTORED"
    controller.on_decision(Decision("p2", DEFECTIVE, time.time_ns()))
    assert _tick_until(controller, lambda: len(rec.events) == 2)
    assert rec.events[1].outcome == DONE


def test_a_confirmation_window_needs_a_confirmation_input():
    with pytest.raises(ValueError, match=r"confirm_window_ms 50\.0 needs a reject-confirmation input"):
        RejectController(RejectConfig(**{**BASE, "confirm_window_ms": 50.0}), GpioDriver({REJECT: 12}), Recorder())


# ---- monotonic scheduling -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("step_ms", [-300, 300])
def test_a_wall_clock_step_after_the_verdict_changes_no_ejection(step_ms):
    step = [0]
    driver = SimDriver(clock_ns=time.monotonic_ns)  # edges on the monotonic clock, to measure against it
    recorder = Recorder()
    controller = RejectController(RejectConfig(**BASE), driver, recorder, wall_ns=lambda: time.time_ns() + step[0])
    controller.open()
    controller.arm()
    try:
        captured = time.monotonic_ns()
        controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns()))
        step[0] = step_ms * MS  # NTP steps the wall clock while the part travels to the ejector
        assert recorder.wait(lambda: len(recorder.events) == 1), recorder.events
        (event,) = recorder.events
        on, t_on = edges(driver)[0]
        assert on is True
        assert abs(t_on - (captured + COMMAND_AFTER_CAPTURE)) < 50 * MS, "fired where the part is, not 300 ms off"
        assert event.outcome == DONE and abs(event.lateness_ms) < 50.0  # a loaded machine wakes late; a step is 300
    finally:
        controller.close()


def test_a_part_missed_while_still_upstream_holds_the_stop_line_until_it_has_passed(cell):
    # Captured before the belt tracking started (e.g. before a restart): it cannot be placed on the belt and is
    # reported at once, 900 ms before it reaches the ejector; the stop-line must not end before it has passed.
    capture = time.time_ns() - 100 * MS
    controller, driver, rec = cell(
        missed_response="stop_line", stop_line_pulse_ms=50.0, reject_distance_mm=1000.0, belt_source="running_input"
    )
    controller.on_decision(Decision("upstream", DEFECTIVE, capture))
    (event,) = rec.events
    assert "cannot place the part on the belt" in event.message
    assert rec.wait(lambda: len(edges(driver, STOP_LINE)) == 2, timeout=5.0), driver.edges
    (on, _), (off, t_off) = edges(driver, STOP_LINE)
    assert (on, off) == (True, False)
    passed = capture + 1000 * MS + (10 + 20) * MS  # travel + latency + pulse
    assert t_off >= passed, f"stop-line released {(passed - t_off) / MS:.0f} ms before the part passed"
