"""The reject actuator's settings (one dataclass, validated in one place; the node maps its parameters
onto it and turns ValueError into a ParameterError at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

from qc_cell.reject.belt import BELT_SOURCES
from qc_cell.reject.records import DIVERT, HEARTBEAT, REJECT, STOP_LINE
from qc_contract.vocabulary import Verdict

SPEED_SOURCES = ("parameter", "encoder")
OVERLAP_POLICIES = ("merge", "flag")
MISSED_RESPONSES = ("none", "stop_line", "divert")
WATCHDOG_ACTIONS = ("reject_all", "stop_line", "alert_only")


@dataclass(frozen=True)
class RejectConfig:
    # geometry and speed
    reject_distance_mm: float = 800.0  # camera optical axis -> reject actuator (arm: pick point)
    divert_distance_mm: float = 0.0  # camera -> divert gate; 0 = the cell has no divert lane
    speed_source: str = "parameter"  # "parameter": belt_speed_mm_s; "encoder": from encoder counts
    belt_speed_mm_s: float = 500.0  # belt speed, or the fallback while the encoder gives no estimate (0 = none)
    encoder_ticks_per_mm: float = 10.0
    encoder_window_s: float = 2.0  # encoder samples used for the speed estimate (and their max age)
    # belt tracking (qc_cell.reject.belt): each part's place follows the belt ("none": planned once, on time)
    belt_source: str = "none"
    belt_stale_ms: float = 500.0  # encoder tracking: no sample for this long = the belt position is unknown
    # actuator
    actuator_latency_ms: float = 15.0  # command -> stroke (valve + mechanics + bus)
    pulse_width_ms: float = 40.0
    late_tolerance_ms: float = 10.0  # a command this late still hits the part
    min_pulse_gap_ms: float = 10.0  # pulses closer than this on one output overlap
    overlap_policy: str = "merge"  # merge: extend the pulse over both parts; flag: the second part FAILED
    # which verdicts go where
    eject_verdicts: tuple[str, ...] = ("DEFECTIVE", "NOT_INSPECTED")
    divert_verdicts: tuple[str, ...] = ()
    # safety
    missed_response: str = "none"  # for a part that must go out but will not (late, fault, overlap)
    stop_line_pulse_ms: float = 1000.0  # stop-line output pulse for missed_response=stop_line
    watchdog_timeout_s: float = 1.0  # a part with no verdict this long after camera/parts: fail-safe (0 = off)
    watchdog_action: str = "reject_all"
    # reject-confirmation sensor: an ejection is DONE once it sees the part this long after the stroke (0 = none)
    confirm_window_ms: float = 0.0
    # heartbeat output: toggled every heartbeat_period_ms while the whole cell is ready (0 = no heartbeat output)
    heartbeat_period_ms: float = 0.0

    def validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        need(self.reject_distance_mm > 0, f"reject_distance_mm must be > 0, got {self.reject_distance_mm}")
        need(self.divert_distance_mm >= 0, f"divert_distance_mm must be >= 0, got {self.divert_distance_mm}")
        need(self.speed_source in SPEED_SOURCES, f"speed_source {self.speed_source!r} must be one of {SPEED_SOURCES}")
        need(self.belt_speed_mm_s >= 0, f"belt_speed_mm_s must be >= 0, got {self.belt_speed_mm_s}")
        need(
            self.speed_source == "encoder" or self.belt_speed_mm_s > 0,
            "belt_speed_mm_s must be > 0 when speed_source is 'parameter'",
        )
        need(self.encoder_ticks_per_mm > 0, f"encoder_ticks_per_mm must be > 0, got {self.encoder_ticks_per_mm}")
        need(self.encoder_window_s > 0, f"encoder_window_s must be > 0, got {self.encoder_window_s}")
        need(self.belt_source in BELT_SOURCES, f"belt_source {self.belt_source!r} must be one of {BELT_SOURCES}")
        need(self.belt_stale_ms > 0, f"belt_stale_ms must be > 0, got {self.belt_stale_ms}")
        need(
            self.belt_source != "running_input" or self.belt_speed_mm_s > 0,
            "belt_source 'running_input' moves parts at belt_speed_mm_s while the belt runs: it must be > 0",
        )
        for name in (
            "actuator_latency_ms",
            "late_tolerance_ms",
            "min_pulse_gap_ms",
            "watchdog_timeout_s",
            "confirm_window_ms",
            "heartbeat_period_ms",
        ):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(self.pulse_width_ms > 0, f"pulse_width_ms must be > 0, got {self.pulse_width_ms}")
        need(self.stop_line_pulse_ms > 0, f"stop_line_pulse_ms must be > 0, got {self.stop_line_pulse_ms}")
        need(
            self.overlap_policy in OVERLAP_POLICIES,
            f"overlap_policy {self.overlap_policy!r} must be one of {OVERLAP_POLICIES}",
        )
        need(
            self.missed_response in MISSED_RESPONSES,
            f"missed_response {self.missed_response!r} must be one of {MISSED_RESPONSES}",
        )
        need(
            self.watchdog_action in WATCHDOG_ACTIONS,
            f"watchdog_action {self.watchdog_action!r} must be one of {WATCHDOG_ACTIONS}",
        )
        for names, field in ((self.eject_verdicts, "eject_verdicts"), (self.divert_verdicts, "divert_verdicts")):
            bad = [n for n in names if n not in Verdict.__members__]
            need(not bad, f"{field}: unknown verdicts {bad}; known: {list(Verdict.__members__)}")
        both = set(self.eject_verdicts) & set(self.divert_verdicts)
        need(not both, f"verdicts {sorted(both)} are in both eject_verdicts and divert_verdicts")
        need(
            not self.divert_verdicts or self.divert_distance_mm > 0,
            "divert_verdicts are set but the cell has no divert lane (divert_distance_mm = 0)",
        )
        if self.missed_response == "divert":
            need(
                self.divert_distance_mm > self.reject_distance_mm,
                "missed_response 'divert' needs a divert lane downstream of the reject actuator "
                f"(divert_distance_mm {self.divert_distance_mm} > reject_distance_mm {self.reject_distance_mm})",
            )

    def lane_for(self, verdict: int) -> str | None:
        names = {Verdict[n] for n in self.eject_verdicts}, {Verdict[n] for n in self.divert_verdicts}
        if verdict in names[0]:
            return REJECT
        if verdict in names[1]:
            return DIVERT
        return None

    def lane_distance_mm(self, lane: str) -> float:
        return self.divert_distance_mm if lane == DIVERT else self.reject_distance_mm

    def required_channels(self) -> set[str]:
        channels = {REJECT}
        if self.divert_verdicts or self.missed_response == "divert":
            channels.add(DIVERT)
        if self.missed_response == "stop_line" or (self.watchdog_timeout_s > 0 and self.watchdog_action == "stop_line"):
            channels.add(STOP_LINE)
        if self.heartbeat_period_ms > 0:
            channels.add(HEARTBEAT)
        return channels
