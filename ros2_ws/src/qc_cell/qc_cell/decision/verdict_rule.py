"""Where the verdict is decided: visual probability bands, then process escalation, never downwards.

    p < reinspect                -> NORMAL
    reinspect <= p < defective   -> REINSPECT
    p >= defective               -> DEFECTIVE

Process conditions at capture time (stale or unknown state, out of spec, anomaly; each switchable) raise a
verdict to at least `escalate_to` (REINSPECT by default). Escalation only ever raises a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qc_cell.fusion.flags import ANOMALY_FLAGS
from qc_contract.vocabulary import Verdict


class Reason:
    VISUAL_NORMAL = "visual_normal"
    VISUAL_REINSPECT = "visual_reinspect"
    VISUAL_DEFECTIVE = "visual_defective"
    PROCESS_OUT_OF_SPEC = "process_out_of_spec"
    PROCESS_STALE = "process_stale"
    PROCESS_UNKNOWN = "process_unknown"  # no process state near the capture time at all
    PROCESS_ANOMALY = "process_anomaly"
    NO_RESULT = "no_result"  # no inspection result before the part's deadline
    LATE_RESULT = "late_result"  # the result arrived, but after the part's deadline
    INVALID_PROBABILITY = "invalid_probability"  # STATUS_OK with p outside [0, 1] or NaN
    NOT_INSPECTED = "not_inspected"  # inference said NOT_INSPECTED without a reason


_VISUAL_REASONS = {
    Verdict.NORMAL: Reason.VISUAL_NORMAL,
    Verdict.REINSPECT: Reason.VISUAL_REINSPECT,
    Verdict.DEFECTIVE: Reason.VISUAL_DEFECTIVE,
}


@dataclass(frozen=True)
class Thresholds:
    reinspect: float = 0.5
    defective: float = 0.8

    def __post_init__(self) -> None:
        if not (0.0 < self.reinspect < self.defective <= 1.0):
            raise ValueError(
                "thresholds must satisfy 0 < reinspect_threshold < defective_threshold <= 1, got "
                f"reinspect_threshold={self.reinspect}, defective_threshold={self.defective}"
            )


@dataclass(frozen=True)
class ProcessContext:
    """The process state in force at a part's capture time (or the lack of one)."""

    anomaly_score: float
    flags: int
    out_of_spec: bool
    stale: bool
    known: bool = True

    @property
    def anomaly(self) -> bool:
        return bool(self.flags & ANOMALY_FLAGS)

    @classmethod
    def unknown(cls) -> ProcessContext:
        return cls(anomaly_score=math.nan, flags=0, out_of_spec=False, stale=True, known=False)


@dataclass(frozen=True)
class EscalationPolicy:
    on_stale: bool = True  # stale or unknown process state escalates
    on_out_of_spec: bool = True
    on_anomaly: bool = False  # statistical anomaly while within spec
    escalate_to: Verdict = Verdict.REINSPECT

    def __post_init__(self) -> None:
        if self.escalate_to not in (Verdict.REINSPECT, Verdict.DEFECTIVE):
            raise ValueError(f"escalate_to must be REINSPECT or DEFECTIVE, got {self.escalate_to!r}")

    def reasons(self, ctx: ProcessContext) -> list[str]:
        """The enabled process conditions that hold for this context."""
        reasons = []
        if self.on_stale and ctx.stale:
            reasons.append(Reason.PROCESS_STALE if ctx.known else Reason.PROCESS_UNKNOWN)
        if self.on_out_of_spec and ctx.out_of_spec:
            reasons.append(Reason.PROCESS_OUT_OF_SPEC)
        if self.on_anomaly and ctx.anomaly:
            reasons.append(Reason.PROCESS_ANOMALY)
        return reasons


def valid_probability(p: float) -> bool:
    return 0.0 <= p <= 1.0  # False for NaN too


def visual_verdict(p: float, thresholds: Thresholds) -> Verdict:
    if not valid_probability(p):
        raise ValueError(f"defect probability must be in [0, 1], got {p}")
    if p >= thresholds.defective:
        return Verdict.DEFECTIVE
    if p >= thresholds.reinspect:
        return Verdict.REINSPECT
    return Verdict.NORMAL


def decide(
    p: float, ctx: ProcessContext, thresholds: Thresholds, policy: EscalationPolicy
) -> tuple[Verdict, list[str]]:
    """Verdict and reasons for an inspected part: visual band, raised (never lowered) by process conditions."""
    verdict = visual_verdict(p, thresholds)
    process_reasons = policy.reasons(ctx)
    reasons = [_VISUAL_REASONS[verdict], *process_reasons]
    if process_reasons and verdict < policy.escalate_to:
        verdict = policy.escalate_to
    return verdict, reasons


def fail_safe(
    reason: str, ctx: ProcessContext, policy: EscalationPolicy, published_as: Verdict
) -> tuple[Verdict, list[str]]:
    """Verdict and reasons for a part without a valid inspection. `published_as` is NOT_INSPECTED unless the
    cell maps fail-safe parts onto DEFECTIVE or REINSPECT for consumers that know only three classes."""
    return published_as, [reason or Reason.NOT_INSPECTED, *policy.reasons(ctx)]
