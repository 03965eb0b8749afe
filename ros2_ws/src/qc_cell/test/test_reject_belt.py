"""Belt tracking (issue 17): the tracker alone (plain pytest, made-up times), then the controller with the sim driver in
real time: a belt that stops, slows or whose encoder goes silent between the verdict and the ejector.

Controller geometry: ejector 300 mm downstream at 1000 mm/s, latency 10 ms, pulse 20 ms: on a running belt the
output goes on 280 ms after capture. Real-time assertions allow 10 ms (a loaded CI machine delays threads); the
errors they guard against are hundreds of ms.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from qc_cell.reject.belt import BeltReading, BeltTracker
from qc_cell.reject.config import RejectConfig
from qc_cell.reject.controller import RejectController
from qc_cell.reject.drivers.modbus import ModbusDriver, ModbusOutput
from qc_cell.reject.drivers.sim import SimDriver
from qc_cell.reject.plc_sim import SimulatedPlc
from qc_cell.reject.recording import RecordingSink as Recorder
from qc_cell.reject.records import CRITICAL, DEFECTIVE, DONE, FAILED, REJECT, STOP_LINE, Decision, Part

MS = 1_000_000
S = 1_000_000_000
TOLERANCE = 10 * MS


# ---- the tracker --------------------------------------------------------------------------------------------------


def test_a_running_input_moves_the_belt_only_while_it_runs():
    belt = BeltTracker("running_input", belt_speed_mm_s=500.0, start_ns=0)
    belt.update(BeltReading(running_edges=((1 * S, False),)))
    belt.update(BeltReading(running_edges=((3 * S, True),)))
    now = 4 * S
    assert belt.position_at(1 * S, now) == pytest.approx(500.0)
    assert belt.position_at(2 * S, now) == pytest.approx(500.0), "no travel while stopped"
    assert belt.position_at(now, now) == pytest.approx(1000.0)
    assert belt.stops == 1
    # a part captured at 0.5 s (belt at 250 mm), ejector 800 mm further: at 1050 mm, i.e. 0.1 s from now
    target = belt.part_position(S // 2, -1, now) + 800.0
    assert belt.eta_ns(target, now) == now + 100 * MS


def test_a_stopped_belt_gives_no_arrival_time_and_a_past_target_a_past_one():
    belt = BeltTracker("running_input", belt_speed_mm_s=1000.0, start_ns=0)
    belt.running(S, False)
    assert belt.eta_ns(2000.0, 2 * S) is None, "standing belt: the part never arrives"
    assert belt.eta_ns(500.0, 2 * S) == 2 * S, "already there (or past): due now"
    belt.running(3 * S, True)
    assert belt.eta_ns(500.0, 4 * S) == 4 * S - 1500 * MS, "passed 1.5 s ago"


def test_an_unreadable_input_makes_the_position_unknown():
    belt = BeltTracker("running_input", belt_speed_mm_s=1000.0, start_ns=0)
    belt.update(BeltReading(readable=False))
    assert not belt.known(S) and belt.eta_ns(5000.0, S) is None and belt.position_at(S, S) is None
    assert "cannot be read" in belt.why_unknown(S)


def test_encoder_position_follows_counts_and_goes_stale():
    belt = BeltTracker("encoder", ticks_per_mm=10.0, stale_ns=200 * MS)
    for i in range(11):  # 1000 mm/s for 1 s: 10 ticks per ms
        belt.encoder(i * 100 * MS, i * 1000)
    assert belt.speed(S) == pytest.approx(1000.0)
    assert belt.position_at(450 * MS, S) == pytest.approx(450.0), "interpolated between samples"
    assert belt.position_at(S + 100 * MS, S + 100 * MS) == pytest.approx(1100.0), "extrapolated while fresh"
    assert belt.eta_ns(1200.0, S + 100 * MS) == S + 200 * MS
    assert not belt.known(S + 201 * MS) and belt.eta_ns(1200.0, S + 201 * MS) is None
    assert "no encoder sample for 201 ms" in belt.why_unknown(S + 201 * MS)
    assert belt.part_position(0, 2500, S) == 250.0, "a part's own count places it"


def test_encoder_speed_change_and_reset():
    belt = BeltTracker("encoder", ticks_per_mm=1.0, stale_ns=S)
    for i in range(6):
        belt.encoder(i * 100 * MS, i * 100)  # 1000 mm/s
    for i in range(1, 6):
        belt.encoder(500 * MS + i * 100 * MS, 500 + i * 25)  # 250 mm/s
    assert belt.speed(S) == pytest.approx(250.0), "the speed fit uses the newest 250 ms"
    belt.encoder(1100 * MS, 3)  # count went backwards: encoder reset
    assert belt.backwards == 1 and belt.position_at(1100 * MS, 1100 * MS) == 3.0


# ---- the controller -----------------------------------------------------------------------------------------------

BASE = {
    "reject_distance_mm": 300.0,
    "belt_speed_mm_s": 1000.0,
    "actuator_latency_ms": 10.0,
    "pulse_width_ms": 20.0,
    "late_tolerance_ms": 100.0,
    "min_pulse_gap_ms": 0.0,
    "watchdog_timeout_s": 0.0,
    "missed_response": "stop_line",
}


class Ticking:
    """A controller ticked every 10 ms (the node's timer), with the sim driver's edges on the monotonic clock."""

    def __init__(self, **changes) -> None:
        self.driver = SimDriver(clock_ns=time.monotonic_ns)
        self.rec = Recorder()
        self.controller = RejectController(RejectConfig(**{**BASE, **changes}), self.driver, self.rec)
        self.controller.open()
        self.controller.arm()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.controller.tick()

    def on_edges(self, channel: str = REJECT) -> list[int]:
        return [e.t_ns for e in self.driver.edges if e.channel == channel and e.on]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.controller.close()


@pytest.fixture
def ticking() -> Iterator[Callable[..., Ticking]]:
    made: list[Ticking] = []

    def make(**changes) -> Ticking:
        made.append(Ticking(**changes))
        return made[-1]

    yield make
    for cell in made:
        cell.close()


def test_a_belt_stop_between_verdict_and_ejector_delays_the_pulse_to_the_parts_arrival(ticking):
    cell = ticking(belt_source="running_input")
    captured = time.monotonic_ns()
    cell.controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns()))
    time.sleep(0.1)
    stopped = time.monotonic_ns()
    cell.driver.set_faults(frozenset({"belt_stopped"}))  # the part stands ~100 mm after the camera
    time.sleep(2.0)
    assert cell.on_edges() == [], "no pulse while the belt stands (the unreplanned one was due 1.7 s ago)"
    restarted = time.monotonic_ns()
    cell.driver.set_faults(frozenset())
    assert cell.rec.wait(lambda: len(cell.rec.events) == 1), cell.rec.events
    (event,) = cell.rec.events
    travelled = stopped - captured  # mm at 1000 mm/s = ns / 1e6
    due = restarted + (300 * MS - travelled) - 20 * MS  # the rest of the way, minus latency and half the pulse
    (t_on,) = cell.on_edges()
    assert abs(t_on - due) < TOLERANCE, f"fired {(t_on - due) / MS:+.1f} ms from the part's real arrival"
    assert event.outcome == DONE and "re-planned as the belt moved (+20" in event.message, event
    assert cell.controller.counts["pulses_held"] == 1


def test_a_speed_change_mid_travel_is_followed_by_the_encoder(ticking):
    cell = ticking(belt_source="encoder", encoder_ticks_per_mm=10.0, belt_stale_ms=200.0)
    start = time.monotonic_ns()
    slow_from = start + 100 * MS  # 1000 mm/s, then 500 mm/s

    def position(t: int) -> float:
        return (min(t, slow_from) - start) / MS + max(0, t - slow_from) / MS / 2

    stop = threading.Event()

    def encoder() -> None:  # the encoder as camera/parts reports it: a count per registered part, every 10 ms
        i = 0
        while not stop.wait(0.01):
            now = time.monotonic_ns()
            cell.controller.on_part(Part(f"s{i}", time.time_ns(), round(position(now) * 10)))
            i += 1

    cell.controller.on_part(Part("s-", time.time_ns() - 10 * MS, 0))
    thread = threading.Thread(target=encoder, daemon=True)
    thread.start()
    try:
        cell.controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns(), encoder_count=0))
        assert cell.rec.wait(lambda: len(cell.rec.events) == 1), cell.rec.events
    finally:
        stop.set()
        thread.join()
    # 100 mm in 100 ms, the other 200 mm at 500 mm/s: at the ejector 500 ms after capture, command 20 ms earlier
    (t_on,) = cell.on_edges()
    due = start + 480 * MS
    assert abs(t_on - due) < TOLERANCE, f"fired {(t_on - due) / MS:+.1f} ms from the part's arrival (not at 280 ms)"
    assert cell.rec.events[0].outcome == DONE


def test_a_stale_encoder_holds_the_pulse_and_the_stop_line_until_it_reports_again(ticking):
    cell = ticking(belt_source="encoder", encoder_ticks_per_mm=1.0, belt_stale_ms=100.0)
    start = time.time_ns()
    cell.controller.on_part(Part("s0", start - 20 * MS, 0))
    cell.controller.on_part(Part("s1", start, 20))  # 1000 mm/s
    cell.controller.on_decision(Decision("p1", DEFECTIVE, start, encoder_count=20))  # at 320 counts
    # the encoder falls silent: after 100 ms the position is unknown; the pulse (due at ~280 ms) must not fire
    assert cell.rec.wait(lambda: "BELT_POSITION_UNKNOWN" in cell.rec.codes()), cell.rec.codes()
    alert = next(a for a in cell.rec.alerts if a.code == "BELT_POSITION_UNKNOWN")
    assert alert.severity == CRITICAL and "no encoder sample" in alert.message
    assert cell.rec.wait(lambda: cell.driver.state[STOP_LINE]), "the stop-line is held while the belt is unknown"
    time.sleep(0.4)
    assert cell.on_edges() == [] and cell.rec.events == [], "nothing fired on a guess"
    # it reports again: the belt (really stopped meanwhile) stands at 150 counts, then runs at 1000 mm/s
    resumed = time.monotonic_ns()

    def feed() -> None:
        for i in range(60):
            cell.controller.on_part(Part(f"r{i}", time.time_ns(), 150 + (time.monotonic_ns() - resumed) // MS))
            time.sleep(0.01)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    assert cell.rec.wait(lambda: len(cell.rec.events) == 1), cell.rec.events
    thread.join()
    (t_on,) = cell.on_edges()
    due = resumed + 170 * MS - 20 * MS  # 170 mm to go at 1000 mm/s, minus latency and half the pulse
    assert abs(t_on - due) < TOLERANCE, f"fired {(t_on - due) / MS:+.1f} ms from the part's arrival"
    assert cell.rec.events[0].outcome == DONE
    assert cell.rec.wait(lambda: "BELT_POSITION_RESTORED" in cell.rec.codes())
    assert cell.rec.wait(lambda: not cell.driver.state[STOP_LINE]), "released once the belt is known again"


def test_a_part_that_passed_while_the_belt_was_unknown_is_reported_not_fired(ticking):
    cell = ticking(belt_source="encoder", encoder_ticks_per_mm=1.0, belt_stale_ms=100.0)
    start = time.time_ns()
    cell.controller.on_part(Part("s0", start - 20 * MS, 0))
    cell.controller.on_part(Part("s1", start, 20))
    cell.controller.on_decision(Decision("p1", DEFECTIVE, start, encoder_count=20))
    assert cell.rec.wait(lambda: "BELT_POSITION_UNKNOWN" in cell.rec.codes())
    now = time.time_ns()
    cell.controller.on_part(Part("r0", now - 10 * MS, 900))  # the belt ran on unseen: the part is 580 mm past
    cell.controller.on_part(Part("r1", now, 910))
    assert cell.rec.wait(lambda: len(cell.rec.events) == 1), cell.rec.events
    (event,) = cell.rec.events
    assert event.outcome == FAILED and "passed the reject actuator" in event.message, event
    assert cell.on_edges() == []
    assert any(a.code == "REJECT_FAILED" and a.part_id == "p1" and a.severity == CRITICAL for a in cell.rec.alerts)


def test_belt_tracking_needs_a_belt_input_and_a_pulse_driver():
    with pytest.raises(ValueError, match="belt-running input"):
        RejectController(RejectConfig(**BASE, belt_source="running_input"), _NoBeltDriver(), Recorder())


class _NoBeltDriver(SimDriver):
    @property
    def belt_inputs(self) -> frozenset[str]:
        return frozenset()


def test_the_modbus_driver_reads_the_belt_input_and_the_encoder_counter_of_a_real_plc_server():
    with SimulatedPlc() as plc:
        driver = ModbusDriver(
            plc.host, plc.port, {REJECT: ModbusOutput("coil", 0)}, inputs={"belt_running": 7}, encoder_address=10
        )
        driver.open()
        try:
            assert driver.belt_inputs == {"running_input", "encoder"}
            plc.set_input(7, True)
            plc.set_encoder(10, 70_000 * 10)  # above 16 bits: both registers count
            driver.poll(time.monotonic_ns())
            reading = driver.belt_reading()
            assert reading.readable and [r for _, r in reading.running_edges] == [True]
            assert [c for _, c in reading.encoder_counts] == [700_000]
            assert driver.belt_reading().encoder_counts == (), "each count is handed over once"
            plc.stop()  # the PLC dies: the belt can no longer be read
            driver.poll(time.monotonic_ns())
            assert not driver.belt_reading().readable
        finally:
            driver.close()


def test_with_an_encoder_a_restarted_actuator_ejects_a_journalled_part_still_upstream_at_its_place(tmp_path):
    """Issue 17 (recovery with belt tracking): the part's encoder count at capture is journalled, the PLC's counter
    carries on while the actuator is down, so the restarted actuator places the part by counts and ejects it where it
    is (a running-input belt cannot: docs/reject.md)."""
    from qc_cell.reject.journal import EjectionJournal

    config = RejectConfig(
        **{
            **BASE,
            "belt_speed_mm_s": 250.0,
            "belt_source": "encoder",
            "encoder_ticks_per_mm": 1.0,
            "belt_stale_ms": 200.0,
        }
    )
    start = time.monotonic_ns()

    def count(t: int) -> int:  # 250 mm/s from start, never stopped: the PLC's counter
        return round((t - start) / MS / 4)

    controllers: list[RejectController] = []  # closed at the end
    active: list[RejectController] = []  # the one the encoder feed reaches
    stop = threading.Event()

    errors: list[BaseException] = []

    def encoder() -> None:  # camera/parts counts every 10 ms, to whichever actuator runs
        i = 0
        while not stop.wait(0.01):
            current = active[0] if active else None  # the feed survives the switch (no IndexError race)
            if current is not None:
                try:
                    current.on_part(Part(f"s{i}", time.time_ns(), count(time.monotonic_ns())))
                    current.tick()
                except Exception as exc:  # reported by the test, not lost with the thread
                    errors.append(exc)
                    raise
            i += 1

    path = tmp_path / "journal.jsonl"
    first = RejectController(config, SimDriver(clock_ns=time.monotonic_ns), Recorder(), journal=EjectionJournal(path))
    first.open()
    first.arm()
    controllers.append(first)
    active.append(first)
    thread = threading.Thread(target=encoder, daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        first.on_decision(Decision("p1", DEFECTIVE, time.time_ns(), encoder_count=count(time.monotonic_ns())))
        captured = time.monotonic_ns()
        active.clear()  # SIGKILL: nothing reaches the first actuator any more, only the journal remains
        time.sleep(0.03)  # (a feed iteration that took it before the switch ends)
        first._scheduler.stop()
        time.sleep(0.3)  # down for 300 ms: the part (1.2 s to the ejector) is still upstream
        driver, rec = SimDriver(clock_ns=time.monotonic_ns), Recorder()
        second = RejectController(config, driver, rec, journal=EjectionJournal(path))
        second.open()
        controllers.append(second)
        second.arm()
        active.append(second)
        assert rec.wait(lambda: len(rec.events) == 1, timeout=5.0), (errors, rec.events, second.snapshot())
    finally:
        stop.set()
        thread.join()
        for controller in controllers:
            controller.close()
    event = rec.events[0]
    assert (event.part_id, event.outcome) == ("p1", DONE), event
    (t_on,) = [e.t_ns for e in driver.edges if e.channel == REJECT and e.on]
    due = captured + 1200 * MS - 10 * MS  # 300 mm at 250 mm/s, command 10 ms (actuator latency) earlier
    assert abs(t_on - due) < 3 * TOLERANCE, f"fired {(t_on - due) / MS:+.1f} ms from the part's arrival"
