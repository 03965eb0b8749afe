"""Plain records the reject core consumes and produces, and the short names it uses for the shared vocabulary
(qc_contract.vocabulary: verdicts, reject outcomes, alert severities; defined there, only named here)."""

from __future__ import annotations

from dataclasses import dataclass

from qc_contract.vocabulary import RejectOutcome, Severity, Verdict

NORMAL, REINSPECT, DEFECTIVE = Verdict.NORMAL, Verdict.REINSPECT, Verdict.DEFECTIVE
NOT_INSPECTED = Verdict.NOT_INSPECTED
DONE, LATE, FAILED, SKIPPED = RejectOutcome.DONE, RejectOutcome.LATE, RejectOutcome.FAILED, RejectOutcome.SKIPPED
UNCONFIRMED, MISSED = RejectOutcome.UNCONFIRMED, RejectOutcome.MISSED
INFO, WARN, ERROR, CRITICAL = Severity.INFO, Severity.WARN, Severity.ERROR, Severity.CRITICAL

# Output channels (lanes) an actuator can drive.
REJECT = "reject"
DIVERT = "divert"
STOP_LINE = "stop_line"
HEARTBEAT = "heartbeat"  # toggles while the whole cell is ready; the PLC times it out (docs/reject.md)
CHANNELS = (REJECT, DIVERT, STOP_LINE, HEARTBEAT)


@dataclass(frozen=True)
class Part:
    """A part registered at the camera (camera/parts)."""

    part_id: str
    capture_ns: int  # capture stamp, wall-clock ns
    encoder_count: int = -1  # -1: unknown
    frame_id: str = ""
    # Inside the controller capture_ns is on its monotonic clock; this is the wall - monotonic offset taken when the
    # part arrived, to report its times as wall time again (0 for a part as received: a wall-clock stamp).
    wall_offset_ns: int = 0
    # The capture on the host's steady (monotonic) clock, as the camera stamped it (0: unknown; the controller then
    # places the part on its clock by the wall stamp's age at arrival).
    steady_ns: int = 0


@dataclass(frozen=True)
class Decision:
    """The verdict on one part (quality/decision)."""

    part_id: str
    verdict: int
    capture_ns: int
    encoder_count: int = -1
    frame_id: str = ""
    steady_ns: int = 0  # the capture on the host's steady clock (0: unknown)

    @property
    def part(self) -> Part:
        return Part(self.part_id, self.capture_ns, self.encoder_count, self.frame_id, steady_ns=self.steady_ns)


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
    # False for a report that settles nothing: a duplicate verdict, or a miss on the reject lane that the divert lane
    # follows up (missed_response divert). The reconciler counts the terminal ones (exactly one per part).
    terminal: bool = True


@dataclass(frozen=True)
class AlertRecord:
    severity: int
    code: str
    message: str
    part_id: str = ""
