"""The reject controller: verdicts in, timed actuations and one record per acted-on part out.

- Every verdict is handled once (duplicates: SKIPPED record); verdicts not in eject/divert lists pass.
- Pulse drivers: the part's command time comes from the conveyor model; the deadline scheduler switches
  the output on and off. Each lane counts its active pulses and the output is physically on while the
  count is > 0, so close parts merge into one continuous pulse (overlap_policy "merge"; pulses closer
  than min_pulse_gap_ms are bridged) or the later part is reported FAILED (overlap_policy "flag").
- Arm drivers: the part is dispatched at once with its deadline; the arm reports back.
- A part that must go out but will not (LATE, FAILED) gets a record, a CRITICAL alert and the
  configured missed_response (stop-line pulse, or the divert lane downstream).
- A cloud re-inspection verdict (quality/cloud_verdict) replaces the local one while the part's actuation has not
  begun: the pending pulse is cancelled and the part planned for the cloud verdict's lane (or let through when
  it is NORMAL). Once the output went on, or when the new lane cannot be reached in time, the local action stands.
- With a reject-confirmation sensor (confirm_window_ms > 0), an ejection is DONE only once the sensor saw the part
  within its window; otherwise UNCONFIRMED (CRITICAL, missed_response). While a station input says the station
  cannot eject (bin full, bin absent, air low), ejection is blocked (the parts FAILED) and the stop-line is held.
- Line signals: the stop-line and heartbeat outputs can live on a second, independent driver (`signals`: its own
  GPIO pins or Modbus device), so they do not share the link whose loss they report, and robot-arm set-ups (no pulse
  outputs) get them too. Its outputs replace the actuator driver's stop_line / heartbeat.
- The heartbeat output toggles every heartbeat_period_ms while the whole cell is ready (set_cell_problems) and the
  actuator itself is (armed, driver healthy, station fine, verdicts flowing); otherwise it stays off, as it does
  when the process dies: the PLC times it out and stops the line.
- Deactivation with parts still in flight (planned, awaiting a verdict or a confirmation) raises the stop-line and
  leaves it raised, also through the release of the hardware.
- With a journal (qc_cell.reject.journal), every planned ejection is written down before it is scheduled and closed
  by its terminal event. Armed again after a restart, the controller re-plans the open ones still upstream of
  their actuator and reports the others MISSED (CRITICAL, missed_response); verdicts the decision node replays
  from its history are ignored when the journal knows them, and handled (MISSED when too late) when not.
- Belt tracking (belt_source encoder / running_input, qc_cell.reject.belt, pulse drivers): each part's place on the
  belt is fixed at capture and its pulse re-planned on every tick as the belt moves; a pulse is held (its jobs
  cancelled) while the belt stands, and checked against the belt once more right before its output goes on, so it is
  never fired at a stale time. While the belt position is unknown (encoder stale, input unreadable) with parts in
  flight, the pulses stay held, the stop-line is held and a CRITICAL BELT_POSITION_UNKNOWN is raised.
- The watchdog treats a part without a verdict in time as NOT_INSPECTED (watchdog_action reject_all or
  stop_line) and raises the stop-line output while the decision stream is down (stop_line).

Time: the capture stamps that come in are wall-clock time (they are also the records' times). Each part is moved
onto the monotonic clock when it arrives (its capture stamp minus the wall - monotonic offset at that moment), and
everything that schedules (arrival, command, pulses, watchdog, confirmation windows, heartbeat) runs on the
monotonic clock, so a wall-clock step (NTP) after a part's arrival changes no ejection; its records convert back
with the part's own offset. The arm driver gets and reports wall-clock times.

Thread model: on_part/on_decision/tick come from the node's executor, edges from the scheduler thread,
arm results from the action client's callbacks. One re-entrant lock guards the bookkeeping; driver
writes happen outside it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from qc_cell.reject.belt import BeltTracker
from qc_cell.reject.config import RejectConfig
from qc_cell.reject.drivers.base import (
    ArmDriver,
    ArmJob,
    ArmOutcome,
    DriverError,
    DriverHealth,
    PulseDriver,
    RejectDriver,
)
from qc_cell.reject.journal import EjectionJournal
from qc_cell.reject.records import (
    CRITICAL,
    DIVERT,
    DONE,
    ERROR,
    FAILED,
    HEARTBEAT,
    INFO,
    LATE,
    MISSED,
    NOT_INSPECTED,
    REJECT,
    SKIPPED,
    STOP_LINE,
    UNCONFIRMED,
    WARN,
    AlertRecord,
    Decision,
    Part,
    RejectRecord,
)
from qc_cell.reject.scheduler import DeadlineScheduler, Job
from qc_cell.reject.seen import RecentIds
from qc_cell.reject.station import CONFIRM, ConfirmationTracker, ConfirmWindow, station_faults
from qc_cell.reject.timing import (
    NS_PER_MS,
    ActuatorTiming,
    ConveyorModel,
    EncoderSpeedEstimator,
    Speed,
    SpeedUnknownError,
)
from qc_cell.reject.watchdog import DecisionWatchdog
from qc_contract.vocabulary import OUTCOME_NAMES, VERDICT_NAMES

MISSED_CODES = {
    LATE: "REJECT_LATE",
    FAILED: "REJECT_FAILED",
    SKIPPED: "REJECT_SKIPPED",
    UNCONFIRMED: "REJECT_UNCONFIRMED",
    MISSED: "REJECT_MISSED",
}
# Why the stop-line output is held (it is on while any is, or while a missed-part pulse lasts).
HOLD_WATCHDOG = "watchdog"
HOLD_STATION = "station"
HOLD_BELT = "belt"
HOLD_CELL = "cell"  # the cell asked for it (set_cell_stop: e.g. a free-run camera outage)
# A tracked part's command time moving by more than this re-schedules its pulse.
REPLAN_NS = 2_000_000
# Local verdicts a cloud re-inspection verdict may still replace, remembered for this many recent parts.
REVISABLE_PARTS = 10_000


class Sink(Protocol):
    """Where records go (the node publishes them). Called from any of the controller's threads."""

    def event(self, record: RejectRecord) -> None: ...

    def alert(self, alert: AlertRecord) -> None: ...


@dataclass(eq=False)
class _Pulse:
    lane: str
    part: Part
    verdict: int
    planned_ns: int  # this part's own command time
    start_ns: int  # when the output goes on for it (earlier than planned when bridged to a previous pulse)
    end_ns: int
    note: str = ""
    on_ns: int = 0  # when it went on (0: not yet)
    counted: bool = False  # holds the lane's output on
    jobs: list[Job] = field(default_factory=list)
    target_mm: float | None = None  # belt tracking: the belt position at which the part is at its actuator
    first_planned_ns: int = 0  # belt tracking: the command time planned first (0: held from the start)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]


def build_model(config: RejectConfig, previous: ConveyorModel | None = None) -> ConveyorModel:
    encoder = None
    if config.speed_source == "encoder":
        old = previous.encoder if previous is not None else None
        window_ns = int(config.encoder_window_s * 1e9)
        if old is not None and old.ticks_per_mm == config.encoder_ticks_per_mm and old.window_ns == window_ns:
            encoder = old  # keep the samples collected so far
        else:
            encoder = EncoderSpeedEstimator(config.encoder_ticks_per_mm, window_ns)
    return ConveyorModel(config.belt_speed_mm_s, encoder)


def build_belt(config: RejectConfig, now_ns: int) -> BeltTracker | None:
    if config.belt_source == "none":
        return None
    return BeltTracker(
        config.belt_source,
        config.belt_speed_mm_s,
        config.encoder_ticks_per_mm,
        int(config.belt_stale_ms * NS_PER_MS),
        start_ns=now_ns,
    )


def build_timing(config: RejectConfig, pulses: bool) -> ActuatorTiming:
    tolerance = int(config.late_tolerance_ms * NS_PER_MS)
    if not pulses:  # an arm gets the arrival time itself as its deadline
        return ActuatorTiming(late_tolerance_ns=tolerance)
    return ActuatorTiming(
        int(config.actuator_latency_ms * NS_PER_MS), int(config.pulse_width_ms * NS_PER_MS), tolerance
    )


class RejectController:
    def __init__(
        self,
        config: RejectConfig,
        driver: RejectDriver,
        sink: Sink,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        spin_ns: int = 2_000_000,
        rt_priority: int = 0,
        journal: EjectionJournal | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        signals: PulseDriver | None = None,
    ) -> None:
        """clock_ns: the scheduling clock (monotonic); wall_ns: the clock of the capture stamps and records;
        signals: a second driver for the stop-line and heartbeat outputs (None: the actuator driver's)."""
        self.signals = signals
        self._outputs: dict[str, PulseDriver] = {}  # output channel -> the driver that switches it
        if isinstance(driver, PulseDriver):
            self._outputs.update(dict.fromkeys(driver.channels, driver))
        if signals is not None:
            self._outputs.update(dict.fromkeys(signals.channels & {STOP_LINE, HEARTBEAT}, signals))
        self._check(config, driver, frozenset(self._outputs) | driver.channels)
        self.journal = journal
        self._wall_ns = wall_ns
        self.config = config
        self.driver = driver
        self.sink = sink
        self._clock_ns = clock_ns
        # Steady stamps (msg steady_stamp: CLOCK_MONOTONIC of this host) are only comparable with that clock.
        self._steady_stamps = clock_ns is time.monotonic_ns
        self._pulses = isinstance(driver, PulseDriver)
        self.model = build_model(config)
        self.timing = build_timing(config, self._pulses)
        self.belt = build_belt(config, clock_ns())
        self._belt_lost = False
        self._scheduler = DeadlineScheduler(clock_ns, spin_ns, on_error=self._job_failed, rt_priority=rt_priority)
        self._watchdog = (
            DecisionWatchdog(int(config.watchdog_timeout_s * 1e9)) if config.watchdog_timeout_s > 0 else None
        )
        self._handled = RecentIds(50_000)
        self._revisable: OrderedDict[str, tuple[Part, str | None]] = OrderedDict()  # part -> (part, local lane)
        self._lock = threading.RLock()
        self._live: set[_Pulse] = set()
        self._active: Counter[str] = Counter()  # lane -> pulses holding its output on
        self._stop_holds: set[str] = set()
        self._stop_until_ns = 0
        self._stop_on = False
        self._driver_ok: bool | None = None
        self._confirm = ConfirmationTracker()
        self._cell_problems: list[str] = ["no cell status yet"]
        self._ready: bool | None = None
        self._beat_on = False
        self._beat_ns = 0
        self._keep_on_close: frozenset[str] = frozenset()
        self._station_faults: list[str] = []
        self._speed: Speed | None = None
        self._lateness_ms: deque[float] = deque(maxlen=2000)
        self.counts: Counter[str] = Counter()
        self.opened = False
        self.armed = False

    @staticmethod
    def _check(config: RejectConfig, driver: RejectDriver, channels: frozenset[str]) -> None:
        config.validate()
        missing = config.required_channels() - channels
        if missing:
            raise ValueError(
                f"driver '{driver.method}' has no output for {sorted(missing)}, which the configuration needs "
                "(divert_verdicts / missed_response / watchdog_action): configure that output or change those"
            )
        if config.belt_source != "none":
            if not isinstance(driver, PulseDriver):
                raise ValueError(
                    f"belt_source {config.belt_source!r}: belt tracking re-plans pulses, driver '{driver.method}' "
                    "gets one deadline per part (let the arm's own conveyor tracking follow the belt): use 'none'"
                )
            if config.belt_source == "running_input" and "running_input" not in driver.belt_inputs:
                raise ValueError(
                    f"belt_source running_input needs a belt-running input, which driver '{driver.method}' does not "
                    "have as configured (gpio_belt_running_pin / modbus_belt_running_address)"
                )
        if config.confirm_window_ms > 0 and CONFIRM not in driver.inputs:
            raise ValueError(
                f"confirm_window_ms {config.confirm_window_ms} needs a reject-confirmation input, which driver "
                f"'{driver.method}' does not have as configured (gpio_confirm_pin / modbus_confirm_address)"
            )

    def reconfigure(self, config: RejectConfig) -> None:
        """Apply new geometry/timing (runtime parameter change); parts already planned keep their times."""
        self._check(config, self.driver, frozenset(self._outputs) | self.driver.channels)
        with self._lock:
            self.config = config
            self.model = build_model(config, self.model)
            self.timing = build_timing(config, self._pulses)
            if self.belt is not None:
                self.belt.set_speed(config.belt_speed_mm_s, self._clock_ns())

    @property
    def realtime(self) -> str:
        """Scheduling of the actuation thread (SCHED_FIFO granted, or why not)."""
        return self._scheduler.realtime

    # ---------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Acquire the hardware (lifecycle configure). DriverError when it cannot be."""
        if self.signals is not None:
            self.signals.open()
        try:
            self.driver.open()
        except DriverError:
            if self.signals is not None:
                self.signals.close()
            raise
        if self.belt is not None:
            self.driver.belt_listener = self._belt_changed
        self.opened = True

    def arm(self) -> None:
        """Start acting on verdicts (lifecycle activate)."""
        if not self.opened:
            raise RuntimeError("open() the controller before arming it")
        self._scheduler.start()
        with self._lock:
            self.armed = True
            if self._station_faults:  # read while disarmed: the stop-line could not be raised then
                self._set_stop_hold(HOLD_STATION, True, self._clock_ns())
            if self._stop_holds:  # asked for while disarmed (the cell's request)
                self._schedule_stop(self._clock_ns())
            self._recover(self._clock_ns())

    def _internal(self, part: Part) -> Part:
        """A part as received (wall-clock capture stamp) on the monotonic clock, its wall offset kept: its steady
        stamp when it has one (the camera's, immune to a wall-clock step between capture and arrival) and the
        controller runs on the steady clock, else the wall stamp moved by the wall - monotonic offset now."""
        if part.steady_ns > 0 and self._steady_stamps:
            return replace(part, capture_ns=part.steady_ns, wall_offset_ns=part.capture_ns - part.steady_ns)
        offset = self._wall_ns() - self._clock_ns()
        return replace(part, capture_ns=part.capture_ns - offset, wall_offset_ns=offset)

    @staticmethod
    def _external(part: Part) -> Part:
        return replace(part, capture_ns=part.capture_ns + part.wall_offset_ns, wall_offset_ns=0)

    def _recover(self, now: int) -> None:
        """The journal's open plans (a restart while parts were in flight): re-planned while the part is still
        upstream of its actuator, MISSED once it has passed."""
        if self.journal is None:
            return
        if self._watchdog is not None:
            # Registered but not decided before the restart: watched again from their capture, so a part whose
            # verdict is not replayed is failed safe (NOT_INSPECTED) by the watchdog rather than passing unnoticed.
            for waiting in self.journal.waiting_parts():
                part = self._internal(waiting)
                if part.part_id not in self._handled:
                    self.counts["recovered_waiting"] += 1
                    self._watchdog.part_seen(part, min(part.capture_ns, now))
        for planned in self.journal.open_plans():
            part, verdict, lane = self._internal(planned.part), planned.verdict, planned.lane
            if not self._handled.add(part.part_id, "recovered from the journal"):
                continue
            self.counts["recovered"] += 1
            if self._reachable(part, lane, now):
                self._act(part, verdict, lane, now, note="re-planned after an actuator restart")
                continue
            self._missed(
                part,
                verdict,
                lane,
                MISSED,
                0,
                0,
                0.0,
                f"the actuator restarted while the part was in flight: it has passed the {lane} actuator",
                now,
            )

    def disarm(self) -> None:
        """Stop acting (lifecycle deactivate): parts planned but not yet actuated are reported SKIPPED, every
        output is switched off; while parts are in flight the stop-line is raised instead and stays raised."""
        with self._lock:
            self.armed = False
        self._scheduler.stop()
        with self._lock:
            in_flight = self._parts_in_flight()
            for pulse in sorted(self._live, key=lambda p: p.start_ns):
                if not pulse.on_ns:
                    self._missed(
                        pulse.part,
                        pulse.verdict,
                        pulse.lane,
                        SKIPPED,
                        pulse.planned_ns,
                        0,
                        0.0,
                        "the actuator was deactivated before the part reached it: not ejected",
                        self._clock_ns(),
                        respond=False,
                    )
            self._live.clear()
            for window in self._confirm.drain():
                self._unconfirmed(
                    window.payload,
                    0.0,
                    "the actuator was deactivated before the confirmation sensor saw the part",
                    self._clock_ns(),
                    respond=False,
                )
            lanes_on = [lane for lane, n in self._active.items() if n > 0]
            self._active.clear()
            if self._beat_on:
                lanes_on.append(HEARTBEAT)
            self._beat_on = False
            self._ready = None
            raise_stop = bool(in_flight) and STOP_LINE in self._outputs
            if self._stop_on and not raise_stop:
                lanes_on.append(STOP_LINE)
            self._stop_on = raise_stop
            self._stop_holds.clear()
            self._stop_until_ns = 0
            self._keep_on_close = frozenset({STOP_LINE}) if raise_stop else frozenset()
            if in_flight:
                self.counts["stopped_with_parts"] += 1
                held = "the stop-line is raised and stays raised" if raise_stop else "no stop-line output to raise"
                self._alert(
                    CRITICAL,
                    "REJECT_STOPPED_WITH_PARTS",
                    f"the actuator stopped with {in_flight} part(s) in flight: {held}",
                    "",
                )
        for lane in lanes_on:
            self._switch(lane, False, "switching the output off on deactivation")
        if raise_stop:
            self._switch(STOP_LINE, True, "raising the stop-line on deactivation")

    def close(self) -> None:
        """Release the hardware (lifecycle cleanup/shutdown). Safe to call in any state."""
        if self.armed:
            self.disarm()
        if self.opened:
            self.driver.close(keep=self._keep_on_close)
            if self.signals is not None:
                self.signals.close(keep=self._keep_on_close)
            self.opened = False
        if self.journal is not None:
            self.journal.close()

    # ---------------------------------------------------------------- inputs

    def on_part(self, part: Part) -> None:
        """A part registered at the camera: encoder sample, and the watchdog expects its verdict."""
        now = self._clock_ns()
        part = self._internal(part)
        with self._lock:
            self.model.add_encoder_sample(part.capture_ns, part.encoder_count)
            if self.belt is not None:
                self.belt.encoder(part.capture_ns, part.encoder_count)
            if self.armed and self._watchdog is not None and part.part_id not in self._handled:
                # Timed from the capture (steady clock), not from when camera/parts got here: a part delivered late
                # on a loaded host still gets its fail-safe before it reaches the ejector.
                self._watchdog.part_seen(part, min(part.capture_ns, now))
                if self.journal is not None:  # a restarted actuator watches it again (journal.waiting_parts)
                    self.journal.waiting(self._external(part))

    def on_decision(self, decision: Decision, replayed: bool = False) -> None:
        """A verdict. `replayed`: decided before this actuator started (the decision node's history after a
        restart): ignored when the journal knows the part, MISSED instead of LATE when it comes too late."""
        now = self._clock_ns()
        part = self._internal(decision.part)
        with self._lock:
            self.counts["decisions"] += 1
            if replayed and self.journal is not None and self.journal.handled(decision.part_id):
                self.counts["replayed_known"] += 1
                return
            if self.journal is not None:
                self.journal.decided(decision.part_id)
            if self._watchdog is not None and self._watchdog.decision_seen(decision.part_id, now):
                self._alert(INFO, "DECISION_STREAM_RESTORED", "verdicts are arriving again", "")
                if self.config.watchdog_action == "stop_line":
                    self._set_stop_hold(HOLD_WATCHDOG, False, now)
            verdict_name = VERDICT_NAMES.get(decision.verdict, str(decision.verdict))
            if not self._handled.add(decision.part_id, f"verdict {verdict_name}"):
                self.counts["duplicates"] += 1
                self._record(
                    part,
                    decision.verdict,
                    SKIPPED,
                    "",
                    0,
                    0,
                    0.0,
                    f"duplicate verdict ignored: the part was already handled ({self._handled.note(decision.part_id)})",
                    terminal=False,
                )
                return
            lane = self.config.lane_for(decision.verdict)
            self._revisable[decision.part_id] = (part, lane)
            if len(self._revisable) > REVISABLE_PARTS:
                self._revisable.popitem(last=False)
            if lane is None:
                self.counts["passed"] += 1
                return
            if not self.armed:
                self._missed(
                    part,
                    decision.verdict,
                    lane,
                    SKIPPED,
                    0,
                    0,
                    0.0,
                    "the actuator is not active: not ejected",
                    now,
                    respond=False,
                )
                return
            self._act(part, decision.verdict, lane, now, late_outcome=MISSED if replayed else LATE)

    def on_cloud_verdict(self, decision: Decision) -> None:
        """The cloud's re-inspection verdict on a part decided here (offload, quality/cloud_verdict): acted on
        instead of the local one while the part's actuation has not begun and the new lane is reachable in time;
        otherwise the local action stands (counted as cloud_verdicts_late)."""
        now = self._clock_ns()
        with self._lock:
            self.counts["cloud_verdicts"] += 1
            local = self._revisable.get(decision.part_id)
            if local is None:
                self.counts["cloud_verdicts_unknown"] += 1
                return
            part, old_lane = local
            new_lane = self.config.lane_for(decision.verdict)
            if new_lane == old_lane:
                self.counts["cloud_verdicts_agreed"] += 1
                return
            pending = [p for p in self._live if p.part.part_id == part.part_id and not p.on_ns and not p.counted]
            if old_lane is not None and not pending:  # fired, dispatched to an arm, or already reported
                self.counts["cloud_verdicts_late"] += 1
                return
            name = VERDICT_NAMES.get(decision.verdict, str(decision.verdict))
            note = f"cloud re-inspection verdict {name}"
            # Too late for the new lane while the local lane still removes the part: keep the local action. (A part
            # that passed locally and is too late for the new lane is reported LATE by _act.)
            if new_lane is not None and old_lane is not None and not self._reachable(part, new_lane, now):
                self.counts["cloud_verdicts_late"] += 1
                return
            if not self.armed:
                return
            for pulse in pending:
                for job in pulse.jobs:
                    self._scheduler.cancel(job)
                self._live.discard(pulse)
            self._revisable[part.part_id] = (part, new_lane)
            self.counts["cloud_verdicts_applied"] += 1
            if new_lane is None:
                self._record(part, decision.verdict, SKIPPED, "", 0, 0, 0.0, f"{note}: {old_lane} cancelled, passed")
                return
            self._act(part, decision.verdict, new_lane, now, note=note)

    def _reachable(self, part: Part, lane: str, now: int) -> bool:
        """Whether a part can still be acted on in `lane` (its command time not yet past the tolerance)."""
        if self.belt is not None:
            target = self._target_mm(part, lane, now)
            if target is None:
                return False
            eta = self.belt.eta_ns(target, now)
            return eta is None or not self.timing.is_late(self.timing.command_ns(eta), now)
        try:
            arrival = self.model.arrival(part, self.config.lane_distance_mm(lane), now)
        except SpeedUnknownError:
            return False
        planned = self.timing.command_ns(arrival.ns) if self._pulses else arrival.ns
        return not self.timing.is_late(planned, now)

    def tick(self) -> None:
        """Periodic: driver housekeeping and health alerts, watchdog (call at ~10 Hz)."""
        now = self._clock_ns()
        if self.opened:
            self.driver.poll(now)
            if self.signals is not None:
                self.signals.poll(now)
            health = self.health()
            with self._lock:
                if health.ok != self._driver_ok:
                    if not health.ok:
                        self._alert(CRITICAL, "REJECT_DRIVER_FAULT", health.message, "")
                    elif self._driver_ok is not None:
                        self._alert(INFO, "REJECT_DRIVER_RECOVERED", health.message, "")
                    self._driver_ok = health.ok
            if self.driver.inputs:
                self._read_station(now)
            if self.belt is not None:
                with self._lock:
                    self._track_belt(now)
            if self.config.heartbeat_period_ms > 0 and HEARTBEAT in self._outputs:
                self._heartbeat(now)
        with self._lock:
            if not self.armed or self._watchdog is None:
                return
            poll = self._watchdog.poll(now)
            action = self.config.watchdog_action
            timeout = self.config.watchdog_timeout_s
            if poll.tripped:
                self.counts["watchdog_trips"] += 1
                self._alert(
                    CRITICAL,
                    "DECISION_STREAM_DOWN",
                    f"no verdict for {timeout:.2f} s while parts are being captured: watchdog_action {action}",
                    "",
                )
                if action == "stop_line":
                    self._set_stop_hold(HOLD_WATCHDOG, True, now)
            for part in poll.expired:
                self._handled.add(part.part_id, "watchdog fail-safe")
                self.counts["no_verdict"] += 1
                text = f"no verdict within watchdog_timeout_s {timeout:.2f}"
                if action == "alert_only":
                    self._missed(
                        part, NOT_INSPECTED, REJECT, SKIPPED, 0, 0, 0.0, f"{text}; watchdog_action alert_only", now
                    )
                    continue
                if not self._watchdog.tripped:  # a single lost verdict; a stream outage was alerted above
                    message = f"part {part.part_id}: {text}: rejected as NOT_INSPECTED"
                    self._alert(WARN, "NO_VERDICT", message, part.part_id)
                self._act(part, NOT_INSPECTED, REJECT, now, note=f"fail-safe: {text}")

    def _parts_in_flight(self) -> int:
        """Parts between the camera and their actuation: planned pulses not yet on, parts awaiting a verdict,
        ejections awaiting their confirmation."""
        waiting = self._watchdog.outstanding() if self._watchdog is not None else 0
        return sum(1 for p in self._live if not p.on_ns) + waiting + len(self._confirm)

    # ---------------------------------------------------------------- cell health and heartbeat

    def set_cell_problems(self, problems: list[str]) -> None:
        """What keeps the rest of the cell from being ready (empty: ready), from the node's view of the graph."""
        with self._lock:
            self._cell_problems = list(problems)

    def set_cell_stop(self, reasons: list[str]) -> None:
        """The cell asks for the stop-line (e.g. a free-run camera outage: parts pass without a record); held while
        `reasons` is not empty, with a CRITICAL alert when it starts."""
        with self._lock:
            now = self._clock_ns()
            wanted = bool(reasons)
            if wanted == (HOLD_CELL in self._stop_holds):
                return
            if wanted:
                self.counts["cell_stop_requests"] += 1
                self._alert(CRITICAL, "CELL_STOP_REQUESTED", f"stop-line held: {'; '.join(reasons)}", "")
            else:
                self._alert(INFO, "CELL_STOP_RELEASED", "the cell no longer asks for the stop-line", "")
            self._set_stop_hold(HOLD_CELL, wanted, now)

    def not_ready(self) -> list[str]:
        """Why the heartbeat does not toggle (empty: it does)."""
        with self._lock:
            reasons = list(self._cell_problems)
            if not self.armed:
                reasons.append("reject_actuator: not active")
            if self._driver_ok is False:
                reasons.append(f"reject_actuator: driver fault ({self.health().message})")
            if self._station_faults:
                reasons.append(f"reject_actuator: {', '.join(self._station_faults)}")
            if self._watchdog is not None and self._watchdog.tripped:
                reasons.append("reject_actuator: no verdicts while parts are captured")
            return reasons

    def _heartbeat(self, now: int) -> None:
        """Toggle the heartbeat output once per period while ready; hold it off otherwise."""
        reasons = self.not_ready()
        ready = not reasons
        with self._lock:
            if ready != self._ready:
                if ready:
                    self._alert(INFO, "CELL_READY", "the cell is ready: heartbeat toggling", "")
                elif self._ready is not None:
                    self._alert(CRITICAL, "CELL_NOT_READY", f"heartbeat stopped: {'; '.join(reasons)}", "")
                self._ready = ready
            period = int(self.config.heartbeat_period_ms * NS_PER_MS)
            if ready and now - self._beat_ns < period:
                return
            want = not self._beat_on if ready else False
            if want == self._beat_on:
                return
            self._beat_on, self._beat_ns = want, now
        self._switch(HEARTBEAT, want, "heartbeat output")

    # ---------------------------------------------------------------- station inputs

    def _read_station(self, now: int) -> None:
        """Station faults hold the stop-line and block ejection; confirmations settle the ejection windows."""
        reading = self.driver.read_inputs()
        faults = station_faults(reading.levels)
        with self._lock:
            if faults != self._station_faults:
                if faults:
                    self.counts["station_faults"] += 1
                    text = ", ".join(faults)
                    self._alert(CRITICAL, "REJECT_STATION_FAULT", f"{text}: ejection blocked, stop-line held", "")
                else:
                    self._alert(INFO, "REJECT_STATION_RESTORED", "the reject station can eject again", "")
                self._station_faults = faults
                self._set_stop_hold(HOLD_STATION, bool(faults), now)
            if self.config.confirm_window_ms <= 0:
                return
            confirmed, expired = self._confirm.settle(reading.confirmations, now)
            window_ms = self.config.confirm_window_ms
            for window, edge in confirmed:
                pulse = window.payload
                assert isinstance(pulse, _Pulse)
                seen = f"confirmed by the reject sensor {(edge - window.opens_ns) / NS_PER_MS:.0f} ms after the stroke"
                lateness = (pulse.on_ns - pulse.planned_ns) / NS_PER_MS
                message = ", ".join(filter(None, [self._belt_note(pulse), seen]))
                self._record(
                    pulse.part, pulse.verdict, DONE, pulse.lane, pulse.planned_ns, pulse.on_ns, lateness, message
                )
            for window in expired:
                pulse = window.payload
                self._unconfirmed(
                    pulse,
                    (pulse.on_ns - pulse.planned_ns) / NS_PER_MS,
                    f"actuated, but the reject-confirmation sensor did not see the part within {window_ms:g} ms "
                    "(jammed pusher, no air, broken valve?): it may still be on the line",
                    now,
                )

    # ---------------------------------------------------------------- planning

    def _act(self, part: Part, verdict: int, lane: str, now: int, note: str = "", late_outcome: int = LATE) -> None:
        if self.journal is not None:
            self.journal.planned(self._external(part), verdict, lane)
        if self.belt is not None:
            self._act_tracked(part, verdict, lane, now, note, late_outcome)
            return
        try:
            arrival = self.model.arrival(part, self.config.lane_distance_mm(lane), now)
        except SpeedUnknownError as exc:
            self._missed(part, verdict, lane, FAILED, 0, 0, 0.0, f"cannot time the part: {exc}", now, note)
            return
        self._note_speed(arrival.speed)
        if self._pulses:
            self._plan_pulse(part, verdict, lane, self.timing.command_ns(arrival.ns), now, note, late_outcome)
        else:
            self._dispatch_arm(part, verdict, lane, arrival.ns, now, note, late_outcome)

    def _note_speed(self, speed: Speed) -> None:
        previous, self._speed = self._speed, speed
        if speed.source == "fallback" and (previous is None or previous.source != "fallback"):
            self.counts["speed_fallbacks"] += 1
            self._alert(
                WARN,
                "ENCODER_SPEED_UNAVAILABLE",
                f"no fresh encoder samples: timing parts with belt_speed_mm_s {speed.mm_s:.0f}",
                "",
            )
        elif speed.source == "encoder" and previous is not None and previous.source == "fallback":
            self._alert(INFO, "ENCODER_SPEED_RESTORED", f"belt speed from the encoder: {speed.mm_s:.0f} mm/s", "")

    def _plan_pulse(
        self,
        part: Part,
        verdict: int,
        lane: str,
        planned: int,
        now: int,
        note: str,
        late_outcome: int = LATE,
        target_mm: float | None = None,
    ) -> None:
        timing, config = self.timing, self.config
        if timing.is_late(planned, now):
            late_ms = (now - planned) / NS_PER_MS
            self._missed(
                part,
                verdict,
                lane,
                late_outcome,
                planned,
                0,
                late_ms,
                f"verdict came {late_ms:.1f} ms after the planned actuation (tolerance {config.late_tolerance_ms} ms):"
                f" the part has passed the {lane} actuator",
                now,
                note,
            )
            return
        start = max(planned, now)
        end = start + timing.pulse_width_ns
        gap = int(config.min_pulse_gap_ms * NS_PER_MS)
        neighbour = next(
            (p for p in self._live if p.lane == lane and start < p.end_ns + gap and p.start_ns < end + gap), None
        )
        if neighbour is not None:
            if config.overlap_policy == "flag":
                self.counts["overlaps_flagged"] += 1
                self._missed(
                    part,
                    verdict,
                    lane,
                    FAILED,
                    planned,
                    0,
                    0.0,
                    f"its pulse overlaps the pulse of part {neighbour.part.part_id} (closer than min_pulse_gap_ms "
                    f"{config.min_pulse_gap_ms}): not ejected separately (overlap_policy flag)",
                    now,
                    note,
                )
                return
            self.counts["merged"] += 1
            note = ", ".join(filter(None, [note, f"merged with the pulse of part {neighbour.part.part_id}"]))
            # Bridge a short gap so the output does not drop between the two pulses.
            if neighbour.end_ns <= start:
                start = max(now, neighbour.end_ns - 1)
            elif end <= neighbour.start_ns:
                end = neighbour.start_ns + 1
        pulse = _Pulse(lane, part, verdict, planned, start, end, note, target_mm=target_mm, first_planned_ns=planned)
        self._schedule_pulse(pulse)
        self._live.add(pulse)

    def _schedule_pulse(self, pulse: _Pulse) -> None:
        name = pulse.part.part_id
        pulse.jobs = [
            self._scheduler.schedule(pulse.start_ns, lambda fired: self._on_edge(pulse, fired), f"on {name}"),
            self._scheduler.schedule(pulse.end_ns, lambda fired: self._off_edge(pulse, fired), f"off {name}"),
        ]

    # ---------------------------------------------------------------- belt tracking

    def _target_mm(self, part: Part, lane: str, now: int) -> float | None:
        """The belt position at which the part is at the lane's actuator; None when its place is not known."""
        assert self.belt is not None
        place = self.belt.part_position(part.capture_ns, part.encoder_count, now)
        return None if place is None else place + self.config.lane_distance_mm(lane)

    def _act_tracked(self, part: Part, verdict: int, lane: str, now: int, note: str, late_outcome: int) -> None:
        assert self.belt is not None
        self._track_belt(now, replan=False)
        target = self._target_mm(part, lane, now)
        if target is None:
            outcome = MISSED if late_outcome == MISSED else FAILED
            why = "captured before the belt tracking started" if self.belt.known(now) else self.belt.why_unknown(now)
            self._missed(
                part, verdict, lane, outcome, 0, 0, 0.0, f"cannot place the part on the belt: {why}", now, note
            )
            return
        eta = self.belt.eta_ns(target, now)
        if eta is None:  # the belt stands or its position is unknown: held until it moves
            self.counts["held_for_belt"] += 1
            self._live.add(_Pulse(lane, part, verdict, 0, 0, 0, note, target_mm=target))
            return
        self._note_speed(Speed(self.belt.speed(now) or 0.0, self.belt.source))
        self._plan_pulse(part, verdict, lane, self.timing.command_ns(eta), now, note, late_outcome, target)

    def _track_belt(self, now: int, replan: bool = True) -> None:
        """Read what the driver saw of the belt; re-plan the tracked pulses; hold the stop-line while the belt
        position is unknown with parts in flight. Under the lock."""
        assert self.belt is not None
        self.belt.update(self.driver.belt_reading())
        if not replan:
            return
        for pulse in sorted(self._live, key=lambda p: p.start_ns):
            if pulse.target_mm is not None and not pulse.on_ns and not pulse.counted:
                self._replan(pulse, now)
        lost = self.armed and not self.belt.known(now) and self._parts_in_flight() > 0
        if lost != self._belt_lost:
            self._belt_lost = lost
            if lost:
                self.counts["belt_position_lost"] += 1
                self._alert(
                    CRITICAL,
                    "BELT_POSITION_UNKNOWN",
                    f"{self.belt.why_unknown(now)}: {self._parts_in_flight()} part(s) in flight are held, stop-line "
                    "held",
                    "",
                )
            else:
                self._alert(INFO, "BELT_POSITION_RESTORED", "the belt position is known again", "")
            self._set_stop_hold(HOLD_BELT, lost, now)

    def _belt_changed(self) -> None:
        """The driver saw the belt start or stop (interrupt, drill): re-plan now, not at the next tick, so a part
        held in front of the ejector gets its pulse in time when the belt starts again."""
        with self._lock:
            if self.armed and self.belt is not None:
                self._track_belt(self._clock_ns())

    def _replan(self, pulse: _Pulse, now: int, force: bool = False) -> None:
        """Move a tracked pulse to where its part is now: hold it (no jobs) while the belt stands or its position is
        unknown; re-schedule it when its command time moved; report it when the part has passed."""
        assert self.belt is not None and pulse.target_mm is not None
        eta = self.belt.eta_ns(pulse.target_mm, now)
        if eta is None:
            if pulse.jobs:
                self.counts["pulses_held"] += 1
                for job in pulse.jobs:
                    self._scheduler.cancel(job)
                pulse.jobs = []
            return
        planned = self.timing.command_ns(eta)
        if pulse.jobs and not force and abs(planned - pulse.planned_ns) <= REPLAN_NS:
            return
        for job in pulse.jobs:
            self._scheduler.cancel(job)
        pulse.jobs = []
        if self.timing.is_late(planned, now):
            self._live.discard(pulse)
            late_ms = (now - planned) / NS_PER_MS
            pulse.planned_ns = planned
            self._pulse_missed(
                pulse,
                FAILED,
                0,
                late_ms,
                f"the part passed the {pulse.lane} actuator {late_ms:.1f} ms ago while its pulse was held for the belt",
                now,
            )
            return
        if pulse.planned_ns and pulse.start_ns:  # keep a bridge to a neighbour: shift the whole pulse
            shift = planned - pulse.planned_ns
            start, end = pulse.start_ns + shift, pulse.end_ns + shift
        else:
            start, end = planned, planned + self.timing.pulse_width_ns
        pulse.start_ns = max(start, now)
        pulse.end_ns = max(end, pulse.start_ns + 1)
        pulse.planned_ns = planned
        pulse.first_planned_ns = pulse.first_planned_ns or planned
        self.counts["replanned"] += 1
        self._schedule_pulse(pulse)

    def _belt_note(self, pulse: _Pulse) -> str:
        """What the belt did to a tracked pulse, for its record."""
        if pulse.target_mm is None:
            return pulse.note
        moved = (pulse.planned_ns - pulse.first_planned_ns) / NS_PER_MS if pulse.first_planned_ns else None
        if moved is None:
            text = "held while the belt stood, fired when the part reached the actuator"
        elif abs(moved) >= 1.0:
            text = f"re-planned as the belt moved ({moved:+.0f} ms)"
        else:
            return pulse.note
        return ", ".join(filter(None, [pulse.note, text]))

    def _dispatch_arm(
        self, part: Part, verdict: int, lane: str, deadline: int, now: int, note: str, late_outcome: int = LATE
    ) -> None:
        if self.timing.is_late(deadline, now):
            late_ms = (now - deadline) / NS_PER_MS
            self._missed(
                part,
                verdict,
                lane,
                late_outcome,
                deadline,
                0,
                late_ms,
                f"verdict came {late_ms:.1f} ms after the part reached the arm's pick point",
                now,
                note,
            )
            return
        assert isinstance(self.driver, ArmDriver)
        position_m = self.config.lane_distance_mm(lane) / 1000.0
        self.driver.dispatch(
            ArmJob(part.part_id, deadline + part.wall_offset_ns, position_m),  # the arm works in wall time
            lambda outcome: self._arm_done(part, verdict, lane, deadline, note, outcome),
        )

    def _arm_done(self, part: Part, verdict: int, lane: str, deadline: int, note: str, outcome: ArmOutcome) -> None:
        with self._lock:
            if outcome.success:
                actual = outcome.actual_ns - part.wall_offset_ns  # the arm reports wall time
                lateness = (actual - deadline) / NS_PER_MS
                self._lateness_ms.append(lateness)
                message = ", ".join(filter(None, [note, outcome.message or "picked by the arm"]))
                self._record(part, verdict, DONE, lane, deadline, actual, lateness, message)
            else:
                self._missed(
                    part, verdict, lane, FAILED, deadline, 0, 0.0, f"arm: {outcome.message}", self._clock_ns(), note
                )

    # ---------------------------------------------------------------- edges (scheduler thread)

    def _on_edge(self, pulse: _Pulse, fired: int) -> None:
        with self._lock:
            if pulse not in self._live:  # disarmed meanwhile
                return
            if pulse.target_mm is not None and not pulse.counted and not self._still_due(pulse, fired):
                return  # re-planned or held: the part is not at the actuator yet
            if self._station_faults:  # pushing into a full or missing bin, or without air, ejects nothing
                self._live.discard(pulse)
                for job in pulse.jobs:
                    self._scheduler.cancel(job)
                self._pulse_missed(pulse, FAILED, 0, 0.0, f"ejection blocked: {', '.join(self._station_faults)}", fired)
                return
            already_on = self._active[pulse.lane] > 0
            self._active[pulse.lane] += 1
            pulse.counted = True
        error = None if already_on else self._write(pulse.lane, True)
        actual = self._clock_ns() if not already_on else fired
        with self._lock:
            pulse.on_ns = actual
            lateness = (actual - pulse.planned_ns) / NS_PER_MS
            if error is not None:
                self._active[pulse.lane] -= 1
                pulse.counted = False
                self._pulse_missed(pulse, FAILED, 0, lateness, f"actuator fault: {error}", actual)
            elif lateness > self.config.late_tolerance_ms:
                self._missed(
                    pulse.part,
                    pulse.verdict,
                    pulse.lane,
                    FAILED,
                    pulse.planned_ns,
                    actual,
                    lateness,
                    f"actuated {lateness:.1f} ms late (tolerance {self.config.late_tolerance_ms} ms):"
                    " the part may not have been ejected",
                    actual,
                    pulse.note,
                )
            else:
                self._lateness_ms.append(lateness)
                assert isinstance(self.driver, PulseDriver)
                self.driver.part_at_output(pulse.lane, actual)
                if self.config.confirm_window_ms > 0 and pulse.lane == REJECT:
                    closes = actual + int(self.config.confirm_window_ms * NS_PER_MS)
                    self._confirm.expect(ConfirmWindow(pulse.part.part_id, actual, closes, pulse))
                    return
                note = self._belt_note(pulse)
                self._record(pulse.part, pulse.verdict, DONE, pulse.lane, pulse.planned_ns, actual, lateness, note)

    def _still_due(self, pulse: _Pulse, fired: int) -> bool:
        """Right before a tracked pulse goes on: is its part where the plan said (the belt may have stopped or
        slowed since the last tick)? If not, the pulse is re-planned or held instead of fired at a stale time."""
        assert self.belt is not None and pulse.target_mm is not None
        self.belt.update(self.driver.belt_reading())
        eta = self.belt.eta_ns(pulse.target_mm, fired)
        planned = None if eta is None else self.timing.command_ns(eta)
        if planned is None or planned - pulse.planned_ns > REPLAN_NS:
            self.counts["edges_deferred"] += 1
            self._replan(pulse, fired, force=True)
            return False
        pulse.planned_ns = min(pulse.planned_ns, planned)  # earlier: its lateness counts from the part's real time
        return True

    def _off_edge(self, pulse: _Pulse, fired: int) -> None:
        with self._lock:
            if pulse not in self._live:
                return
            self._live.discard(pulse)
            if pulse.counted:
                self._active[pulse.lane] -= 1
            last = self._active[pulse.lane] == 0
        if last:  # also after a failed on-edge: the output may have switched although the write failed
            self._switch(pulse.lane, False, "switching the output off")

    def health(self) -> DriverHealth:
        """The actuator driver's health and, with line signals on a second driver, that one's too."""
        health = self.driver.health()
        message = f"{self.driver.method}: {health.message}"
        if self.signals is None:
            return replace(health, message=message)
        second = self.signals.health()
        values = {**health.values, **{f"signals_{k}": v for k, v in second.values.items()}}
        text = f"{message}; line signals {self.signals.method}: {second.message}"
        return DriverHealth(health.ok and second.ok, text, values)

    def _write(self, channel: str, on: bool) -> str | None:
        driver = self._outputs.get(channel)
        if driver is None:
            return f"no {channel} output configured"
        try:
            driver.set_output(channel, on)
        except DriverError as exc:
            return str(exc)
        return None

    def _switch(self, channel: str, on: bool, what: str) -> None:
        error = self._write(channel, on)
        if error is not None:
            with self._lock:
                self.counts["output_faults"] += 1
                code = "REJECT_OUTPUT_STUCK" if not on else "REJECT_OUTPUT_FAULT"
                self._alert(CRITICAL, code, f"{what} ({channel}) failed: {error}", "")

    def _job_failed(self, job: Job, exc: Exception) -> None:
        with self._lock:
            self.counts["internal_errors"] += 1
            self._alert(ERROR, "REJECT_INTERNAL_ERROR", f"scheduled action {job.name!r} raised {exc!r}", "")

    # ---------------------------------------------------------------- stop line

    def _stop_pulse(self, now: int, until_ns: int = 0) -> None:
        """The stop-line for stop_line_pulse_ms, and at least until `until_ns` (a missed part's passing)."""
        self.counts["stop_line_requests"] += 1
        pulse_end = now + int(self.config.stop_line_pulse_ms * NS_PER_MS)
        self._stop_until_ns = max(self._stop_until_ns, pulse_end, until_ns)
        self._schedule_stop(now)
        self._schedule_stop(self._stop_until_ns)

    def _set_stop_hold(self, reason: str, hold: bool, now: int) -> None:
        if hold:
            self._stop_holds.add(reason)
        else:
            self._stop_holds.discard(reason)
        self._schedule_stop(now)

    def _schedule_stop(self, at_ns: int) -> None:
        if self._scheduler.running and STOP_LINE in self._outputs:
            self._scheduler.schedule(at_ns, self._apply_stop_line, "stop_line")

    def _apply_stop_line(self, fired: int) -> None:
        with self._lock:
            want = bool(self._stop_holds) or fired < self._stop_until_ns
            if want == self._stop_on:
                return
            self._stop_on = want
            reasons = ", ".join(sorted(self._stop_holds)) or "missed part"
        self._switch(STOP_LINE, want, "stop-line output" + (" on" if want else " off"))
        with self._lock:  # every edge is an alert: when the cell stopped the line, and when it let it run again
            if want:
                self._alert(WARN, "STOP_LINE_RAISED", f"stop-line raised ({reasons})", "")
            else:
                self._alert(INFO, "STOP_LINE_RELEASED", "stop-line released", "")

    # ---------------------------------------------------------------- records

    def _unconfirmed(self, pulse: object, lateness_ms: float, message: str, now: int, respond: bool = True) -> None:
        """An ejection the confirmation sensor did not see: UNCONFIRMED, reported as a missed part."""
        assert isinstance(pulse, _Pulse)
        self._pulse_missed(pulse, UNCONFIRMED, pulse.on_ns, lateness_ms, message, now, respond)

    def _pulse_missed(
        self, pulse: _Pulse, outcome: int, actual: int, lateness_ms: float, message: str, now: int, respond: bool = True
    ) -> None:
        """_missed for a planned pulse: its part, verdict, lane, planned time and note."""
        self._missed(
            pulse.part,
            pulse.verdict,
            pulse.lane,
            outcome,
            pulse.planned_ns,
            actual,
            lateness_ms,
            message,
            now,
            pulse.note,
            respond=respond,
        )

    def _missed(
        self,
        part: Part,
        verdict: int,
        lane: str,
        outcome: int,
        planned: int,
        actual: int,
        lateness_ms: float,
        message: str,
        now: int,
        note: str = "",
        respond: bool = True,
    ) -> None:
        """A part that had to go out and (probably) did not: record, alert, missed_response."""
        text = ", ".join(filter(None, [note, message]))
        response = self.config.missed_response
        follow_up = respond and response == "divert" and lane == REJECT  # the divert lane's event settles the part
        self._record(part, verdict, outcome, lane, planned, actual, lateness_ms, text, terminal=not follow_up)
        verdict_name = VERDICT_NAMES.get(verdict, str(verdict))
        self._alert(
            CRITICAL,
            MISSED_CODES[outcome],
            f"part {part.part_id} ({verdict_name}) not removed on the {lane} lane: {text}",
            part.part_id,
        )
        if not respond:
            return
        if response == "stop_line":
            # Until the part has passed its lane at the nominal speed at least: a part reported missed while still
            # upstream (e.g. recovered after a restart and not placeable on the belt) must not pass a running line.
            self._stop_pulse(now, self._nominal_passed_ns(part, lane))
        elif response == "divert" and lane == REJECT:
            self._act(part, verdict, DIVERT, now, note=f"divert after {OUTCOME_NAMES[outcome]} on the reject lane")

    def _nominal_passed_ns(self, part: Part, lane: str) -> int:
        """When the part has passed its lane's actuator and confirmation at the nominal belt speed (0: unknown)."""
        speed = self.config.belt_speed_mm_s
        if speed <= 0:
            return 0
        travel_ns = int(self.config.lane_distance_mm(lane) / speed * 1e9)
        extra_ms = self.config.actuator_latency_ms + self.config.pulse_width_ms + self.config.confirm_window_ms
        return part.capture_ns + travel_ns + int(extra_ms * NS_PER_MS)

    def _record(
        self,
        part: Part,
        verdict: int,
        outcome: int,
        lane: str,
        planned: int,
        actual: int,
        lateness_ms: float,
        message: str,
        terminal: bool = True,
    ) -> None:
        """One reject/event; `terminal` False for a report that closes nothing (a duplicate verdict)."""
        self.counts[OUTCOME_NAMES[outcome].lower()] += 1
        if self.journal is not None and terminal:
            self.journal.done(part.part_id)
        distance = self.config.lane_distance_mm(lane) if lane else 0.0
        offset = part.wall_offset_ns  # back to wall time: a record's times are the capture stamps' clock
        self.sink.event(
            RejectRecord(
                part_id=part.part_id,
                verdict=verdict,
                outcome=outcome,
                method=self.driver.method,
                lane=lane,
                capture_ns=part.capture_ns + offset,
                planned_ns=planned + offset if planned else 0,
                actual_ns=actual + offset if actual else 0,
                lateness_ms=lateness_ms,
                message=message,
                frame_id=part.frame_id,
                position_m=distance / 1000.0,
                terminal=terminal,
            )
        )

    def raise_stop_line(self, reason: str) -> bool:
        """A stop-line pulse requested from outside the controller (the reconciler's overdue part); False when the
        actuator has no stop-line output or is not armed."""
        with self._lock:
            if not (self.armed and STOP_LINE in self._outputs):
                return False
            self.counts["stop_line_external"] += 1
            self._stop_pulse(self._clock_ns())
            return True

    def belt_stopped(self, now: int) -> bool:
        """Whether the belt tracking knows the belt stands now (False without belt tracking or while unknown)."""
        with self._lock:
            return self.belt is not None and self.belt.speed(now) == 0.0

    def _alert(self, severity: int, code: str, message: str, part_id: str) -> None:
        self.sink.alert(AlertRecord(severity, code, message, part_id))

    # ---------------------------------------------------------------- status

    def snapshot(self) -> dict[str, object]:
        """Counters and timing figures for diagnostics."""
        with self._lock:
            lateness = list(self._lateness_ms)
            values: dict[str, object] = dict(sorted(self.counts.items()))
            values.update(
                {
                    "armed": self.armed,
                    "pending_actuations": len(self._live),
                    "lateness_p50_ms": round(percentile(lateness, 50), 3),
                    "lateness_p99_ms": round(percentile(lateness, 99), 3),
                    "lateness_max_ms": round(max(lateness), 3) if lateness else float("nan"),
                    "belt_speed_mm_s": round(self._speed.mm_s, 1) if self._speed else float("nan"),
                    "speed_source": self._speed.source if self._speed else "",
                    "stop_line_on": self._stop_on,
                    "awaiting_confirmation": len(self._confirm),
                    "cell_ready": bool(self._ready),
                    "station_faults": ", ".join(self._station_faults),
                    "scheduler_realtime": self._scheduler.realtime,
                }
            )
            if self._watchdog is not None:
                values["decision_stream_down"] = self._watchdog.tripped
                values["awaiting_verdict"] = self._watchdog.outstanding()
                values["watchdog_overflowed"] = self._watchdog.overflowed
            if self.model.encoder is not None:
                values["encoder_resets"] = self.model.encoder.resets
            if self.belt is not None:
                now = self._clock_ns()
                speed = self.belt.speed(now)
                values["belt_source"] = self.belt.source
                values["belt_position_known"] = self.belt.known(now)
                values["belt_speed_now_mm_s"] = round(speed, 1) if speed is not None else float("nan")
                values["belt_stops"] = self.belt.stops
                values["held_for_belt"] = sum(1 for p in self._live if p.target_mm is not None and not p.jobs)
        return values
