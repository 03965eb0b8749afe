"""Plain records the reject core consumes and produces. Constants mirror qc_interfaces (QualityDecision,
RejectEvent, Alert); a node test checks that they stay equal."""

from __future__ import annotations

from dataclasses import dataclass

# QualityDecision verdicts
NORMAL = 0
REINSPECT = 1
DEFECTIVE = 2
NOT_INSPECTED = 3
VERDICT_NAMES = {NORMAL: "NORMAL", REINSPECT: "REINSPECT", DEFECTIVE: "DEFECTIVE", NOT_INSPECTED: "NOT_INSPECTED"}
VERDICTS_BY_NAME = {name: value for value, name in VERDICT_NAMES.items()}

# RejectEvent outcomes
DONE = 0
LATE = 1
FAILED = 2
SKIPPED = 3
OUTCOME_NAMES = {DONE: "DONE", LATE: "LATE", FAILED: "FAILED", SKIPPED: "SKIPPED"}

# Alert severities
INFO = 0
WARN = 1
ERROR = 2
CRITICAL = 3

# Output channels (lanes) an actuator can drive.
REJECT = "reject"
DIVERT = "divert"
STOP_LINE = "stop_line"
CHANNELS = (REJECT, DIVERT, STOP_LINE)


@dataclass(frozen=True)
class Part:
    """A part registered at the camera (camera/parts)."""

    part_id: str
    capture_ns: int  # capture stamp, wall-clock ns
    encoder_count: int = -1  # -1: unknown
    frame_id: str = ""


@dataclass(frozen=True)
class Decision:
    """The verdict on one part (quality/decision)."""

    part_id: str
    verdict: int
    capture_ns: int
    encoder_count: int = -1
    frame_id: str = ""

    @property
    def part(self) -> Part:
        return Part(self.part_id, self.capture_ns, self.encoder_count, self.frame_id)


@dataclass(frozen=True)
class RejectRecord:
    """What was done about one part (reject/event)."""

    part_id: str
    verdict: int
    outcome: int
    method: str
    lane: str
    capture_ns: int
    planned_ns: int
    actual_ns: int  # 0 when nothing was actuated
    lateness_ms: float  # actual - planned; for LATE: how late the verdict was for the planned time
    message: str = ""
    frame_id: str = ""
    position_m: float = 0.0  # where along the belt (downstream of the camera) the part was acted on


@dataclass(frozen=True)
class AlertRecord:
    severity: int
    code: str
    message: str
    part_id: str = ""
