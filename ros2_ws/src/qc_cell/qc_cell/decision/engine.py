"""The decision engine: parts, results and process states in; exactly one DecisionRecord per part out.

The node calls on_part / on_result / on_process_state from its subscriptions and expire() from a timer;
everything here is plain Python and deterministic given the `now_ns` it is passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from qc_cell.decision.part_ledger import Claim, PartLedger, PendingPart, Registration
from qc_cell.decision.process_history import ProcessHistory
from qc_cell.decision.verdict_rule import (
    EscalationPolicy,
    ProcessContext,
    Reason,
    Thresholds,
    decide,
    fail_safe,
    valid_probability,
)
from qc_contract.vocabulary import Verdict

NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class DecisionConfig:
    thresholds: Thresholds = field(default_factory=Thresholds)
    policy: EscalationPolicy = field(default_factory=EscalationPolicy)
    not_inspected_as: Verdict = Verdict.NOT_INSPECTED  # how fail-safe parts are published
    result_deadline_ms: float = 500.0  # capture stamp -> latest acceptable result
    process_max_age_ms: float = 1000.0  # a process state further than this from the capture does not count
    process_keep_s: float = 30.0  # process state history kept for the join
    remembered_parts: int = 20000  # decided part ids kept to recognise late/duplicate results
    registration_wait_ms: float = 0.0  # how long a result may wait for its part's registration (0: not at all)

    def __post_init__(self) -> None:
        if self.not_inspected_as not in (Verdict.NOT_INSPECTED, Verdict.DEFECTIVE, Verdict.REINSPECT):
            raise ValueError(
                f"not_inspected_as must be NOT_INSPECTED, DEFECTIVE or REINSPECT, got {self.not_inspected_as}"
            )
        if not self.result_deadline_ms > 0.0:
            raise ValueError(f"result_deadline_ms must be > 0, got {self.result_deadline_ms}")
        if not self.registration_wait_ms >= 0.0:
            raise ValueError(f"registration_wait_ms must be >= 0, got {self.registration_wait_ms}")
        if not self.process_max_age_ms > 0.0:
            raise ValueError(f"process_max_age_ms must be > 0, got {self.process_max_age_ms}")
        if not self.process_keep_s * 1000.0 >= max(self.process_max_age_ms, self.result_deadline_ms):
            raise ValueError(
                f"process_keep_s ({self.process_keep_s} s) must cover process_max_age_ms "
                f"({self.process_max_age_ms}) and result_deadline_ms ({self.result_deadline_ms})"
            )


NO_IMAGE_STATS = (math.nan, math.nan, math.nan)


class ResultInput(NamedTuple):
    """An InspectionResult, as the engine needs it (a NamedTuple: built once per part on the critical path)."""

    part_id: str
    capture_ns: int
    frame_id: str
    inspected: bool  # STATUS_OK
    reason: str  # the NOT_INSPECTED reason
    defect_probability: float
    model_version: str = ""
    ground_truth: int = 0
    defect_type: str = ""
    wall_ns: int = 0  # the capture's wall stamp when capture_ns is on the steady clock (0: capture_ns is wall time)
    image_stats: tuple[float, float, float] = NO_IMAGE_STATS  # brightness, contrast, sharpness (qc_contract.drift)


@dataclass(frozen=True)
class DecisionRecord:
    part_id: str
    capture_ns: int  # wall clock (the records' time)
    frame_id: str
    verdict: Verdict
    reasons: list[str]
    defect_probability: float  # NaN when not inspected
    process: ProcessContext
    model_version: str
    encoder_count: int
    ground_truth: int
    defect_type: str
    steady_ns: int = 0  # the capture on the steady clock the engine's deadlines ran on (0: unknown)
    image_stats: tuple[float, float, float] = NO_IMAGE_STATS  # passed through from the result (drift statistics)

    @property
    def fail_safe(self) -> bool:
        return not math.isfinite(self.defect_probability)


@dataclass
class Counters:
    parts_registered: int = 0
    trigger_registrations: int = 0  # parts first known from camera/trigger (PLC-assigned id)
    duplicate_registrations: int = 0  # camera/parts twice for one part
    registrations_after_verdict: int = 0  # camera/parts after the part's verdict
    results: int = 0
    duplicate_results: int = 0
    late_results: int = 0  # results after the part's deadline (fail-safe verdict made or made now)
    invalid_results: int = 0  # no part id: cannot be matched to any part
    invalid_parts: int = 0  # camera/parts without a part id
    invalid_probabilities: int = 0  # STATUS_OK with a probability outside [0, 1]
    deadline_expired: int = 0  # parts decided NOT_INSPECTED because no result came in time
    held_results: int = 0  # results that arrived before their part's registration and waited for it
    registration_timeouts: int = 0  # held results whose registration did not come in time
    unregistered_verdicts: int = 0  # verdicts for parts not registered (camera/parts or trigger) before: encoder -1
    process_states: int = 0


class DecisionEngine:
    def __init__(self, config: DecisionConfig) -> None:
        self.config = config
        # Per model version, bands that replace config.thresholds for the parts it scored (bands: from_model;
        # qc_cell.decision.bands). Empty: config.thresholds for every part.
        self.model_thresholds: dict[str, Thresholds] = {}
        self.counters = Counters()
        self._ledger = PartLedger(int(config.result_deadline_ms * NS_PER_MS), config.remembered_parts)
        self._history = ProcessHistory(int(config.process_max_age_ms * NS_PER_MS), int(config.process_keep_s * 1e9))

    def reconfigure(self, **changes) -> DecisionConfig:
        """Apply run-time changes (thresholds, policy, deadline, ...); validated as a whole, atomically."""
        config = replace(self.config, **changes)
        self._ledger.deadline_ns = int(config.result_deadline_ms * NS_PER_MS)  # for parts registered from now
        self._history.max_age_ns = int(config.process_max_age_ms * NS_PER_MS)
        self.config = config
        return config

    @property
    def pending_count(self) -> int:
        return self._ledger.pending_count

    def next_due_ns(self) -> int | None:
        """When expire() next has work: a part's deadline or a held result's end of wait."""
        return self._ledger.next_due_ns()

    def latest_process_stamp_ns(self) -> int | None:
        return self._history.latest_stamp_ns

    def on_process_state(self, stamp_ns: int, ctx: ProcessContext) -> None:
        self.counters.process_states += 1
        self._history.add(stamp_ns, ctx)

    def on_part(
        self,
        part_id: str,
        capture_ns: int,
        encoder_count: int,
        frame_id: str,
        now_ns: int,
        from_camera: bool = True,
        wall_ns: int = 0,
    ) -> tuple[Registration, DecisionRecord | None]:
        """Register a part from camera/parts (or from camera/trigger: from_camera False); returns the verdict
        if its result was already waiting for this registration. capture_ns and now_ns are on one clock (the node
        uses the steady clock: a wall-clock step changes no deadline); wall_ns is the capture's wall stamp for the
        records and the process-state join (0: capture_ns is wall time)."""
        if not part_id:
            self.counters.invalid_parts += 1
            raise ValueError("part registration without part_id cannot be tracked")
        outcome, part = self._ledger.register(
            part_id, capture_ns, encoder_count, frame_id, now_ns, from_camera, wall_ns
        )
        if outcome is Registration.NEW:
            self.counters.parts_registered += 1
            if not from_camera:
                self.counters.trigger_registrations += 1
        elif outcome is Registration.COMPLETES_HELD:
            self.counters.parts_registered += 1
        elif from_camera and outcome is Registration.ALREADY_PENDING:
            self.counters.duplicate_registrations += 1
        elif from_camera and outcome is Registration.ALREADY_DECIDED:
            self.counters.registrations_after_verdict += 1
        if part is None:
            return outcome, None
        return outcome, self._decide(part, part.held_result)

    def on_result(
        self, result: ResultInput, now_ns: int, registration_expected: bool = False
    ) -> tuple[Claim, DecisionRecord | None]:
        """The verdict for this result's part, or None with why (already decided, or HELD: waiting for the
        part's registration, when one is expected and registration_wait_ms > 0)."""
        if not result.part_id:
            self.counters.invalid_results += 1
            raise ValueError("inspection result without part_id cannot be matched to a part")
        self.counters.results += 1
        hold_ns = int(self.config.registration_wait_ms * NS_PER_MS) if registration_expected else 0
        claim, part = self._ledger.claim(
            result.part_id, result.capture_ns, result.frame_id, now_ns, hold_ns, result, result.wall_ns
        )
        if claim is Claim.DUPLICATE:
            self.counters.duplicate_results += 1
            return claim, None
        if claim is Claim.LATE:
            self.counters.late_results += 1
            return claim, None
        if claim is Claim.HELD:
            self.counters.held_results += 1
            return claim, None
        assert part is not None
        if claim is Claim.EXPIRED:
            self.counters.late_results += 1
            ctx = self._history.at(part.record_ns)
            verdict, reasons = fail_safe(Reason.LATE_RESULT, ctx, self.config.policy, self.config.not_inspected_as)
            return claim, self._record(part, verdict, reasons, math.nan, ctx, result)
        return claim, self._decide(part, result)

    def _decide(self, part: PendingPart, result: ResultInput) -> DecisionRecord:
        """The verdict from an in-time result: the rule, or fail safe if the result carries no valid score."""
        ctx = self._history.at(part.record_ns)
        cfg = self.config
        if not result.inspected:
            verdict, reasons = fail_safe(result.reason, ctx, cfg.policy, cfg.not_inspected_as)
            return self._record(part, verdict, reasons, math.nan, ctx, result)
        p = result.defect_probability
        if not valid_probability(p):
            self.counters.invalid_probabilities += 1
            verdict, reasons = fail_safe(Reason.INVALID_PROBABILITY, ctx, cfg.policy, cfg.not_inspected_as)
            return self._record(part, verdict, reasons, math.nan, ctx, result)
        thresholds = self.model_thresholds.get(result.model_version, cfg.thresholds)
        verdict, reasons = decide(p, ctx, thresholds, cfg.policy)
        return self._record(part, verdict, reasons, p, ctx, result)

    def expire(self, now_ns: int) -> list[DecisionRecord]:
        """Fail-safe verdicts for parts whose deadline passed without a result, and verdicts for held results
        whose registration did not come in time (encoder count unknown)."""
        records = []
        for part in self._ledger.expire(now_ns):
            if part.held_result is not None:
                self.counters.registration_timeouts += 1
                records.append(self._decide(part, part.held_result))
                continue
            self.counters.deadline_expired += 1
            ctx = self._history.at(part.record_ns)
            verdict, reasons = fail_safe(Reason.NO_RESULT, ctx, self.config.policy, self.config.not_inspected_as)
            records.append(self._record(part, verdict, reasons, math.nan, ctx, None))
        return records

    def _record(
        self,
        part: PendingPart,
        verdict: Verdict,
        reasons: list[str],
        p: float,
        ctx: ProcessContext,
        result: ResultInput | None,
    ) -> DecisionRecord:
        if not part.registered:
            self.counters.unregistered_verdicts += 1
        return DecisionRecord(
            part_id=part.part_id,
            capture_ns=part.record_ns,
            steady_ns=part.capture_ns if part.wall_ns else 0,
            frame_id=part.frame_id or (result.frame_id if result else ""),
            verdict=verdict,
            reasons=reasons,
            defect_probability=p,
            process=ctx,
            model_version=result.model_version if result else "",
            encoder_count=part.encoder_count,
            ground_truth=result.ground_truth if result else 0,
            defect_type=result.defect_type if result else "",
            image_stats=result.image_stats if result else NO_IMAGE_STATS,
        )
