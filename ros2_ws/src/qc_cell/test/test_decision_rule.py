"""The verdict rule (no ROS), property-based: bands, monotonicity in p, escalation never lowers a verdict."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from qc_cell.decision.verdict_rule import (
    EscalationPolicy,
    ProcessContext,
    Reason,
    Thresholds,
    decide,
    fail_safe,
    visual_verdict,
)
from qc_cell.fusion.flags import ProcessFlag
from qc_contract.vocabulary import Verdict

probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
NOMINAL = ProcessContext(anomaly_score=0.1, flags=0, out_of_spec=False, stale=False)


@st.composite
def thresholds(draw) -> Thresholds:
    reinspect = draw(st.floats(min_value=1e-6, max_value=0.999, allow_nan=False))
    defective = draw(st.floats(min_value=reinspect, max_value=1.0, allow_nan=False))
    assume(reinspect < defective)
    return Thresholds(reinspect, defective)


@st.composite
def contexts(draw) -> ProcessContext:
    if draw(st.booleans()) and draw(st.booleans()):
        return ProcessContext.unknown()
    flags = draw(st.sampled_from([0, *ProcessFlag]))
    return ProcessContext(
        anomaly_score=draw(st.floats(min_value=0.0, max_value=10.0)),
        flags=int(flags),
        out_of_spec=draw(st.booleans()),
        stale=draw(st.booleans()),
    )


@st.composite
def policies(draw) -> EscalationPolicy:
    return EscalationPolicy(
        on_stale=draw(st.booleans()),
        on_out_of_spec=draw(st.booleans()),
        on_anomaly=draw(st.booleans()),
        escalate_to=draw(st.sampled_from([Verdict.REINSPECT, Verdict.DEFECTIVE])),
    )


@given(p=probabilities, t=thresholds())
def test_visual_verdict_follows_the_bands(p, t):
    verdict = visual_verdict(p, t)
    if p < t.reinspect:
        assert verdict is Verdict.NORMAL
    elif p < t.defective:
        assert verdict is Verdict.REINSPECT
    else:
        assert verdict is Verdict.DEFECTIVE


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.0, Verdict.NORMAL),
        (0.4999999, Verdict.NORMAL),
        (0.5, Verdict.REINSPECT),
        (0.7999999, Verdict.REINSPECT),
        (0.8, Verdict.DEFECTIVE),
        (1.0, Verdict.DEFECTIVE),
    ],
)
def test_default_bands_at_their_edges(p, expected):
    assert visual_verdict(p, Thresholds()) is expected


@given(p1=probabilities, p2=probabilities, t=thresholds(), ctx=contexts(), policy=policies())
def test_verdict_is_monotonic_in_p(p1, p2, t, ctx, policy):
    low, high = sorted((p1, p2))
    assert decide(low, ctx, t, policy)[0] <= decide(high, ctx, t, policy)[0]


@given(p=probabilities, t=thresholds(), ctx=contexts(), policy=policies())
def test_escalation_never_lowers_a_verdict_and_reaches_at_least_its_target(p, t, ctx, policy):
    visual = visual_verdict(p, t)
    verdict, reasons = decide(p, ctx, t, policy)
    assert verdict >= visual
    process_reasons = reasons[1:]
    if process_reasons:
        assert verdict == max(visual, policy.escalate_to)
    else:
        assert verdict == visual


@given(p=probabilities, t=thresholds(), ctx=contexts())
def test_without_enabled_conditions_the_process_changes_nothing(p, t, ctx):
    off = EscalationPolicy(on_stale=False, on_out_of_spec=False, on_anomaly=False)
    assert decide(p, ctx, t, off) == (visual_verdict(p, t), [decide(p, NOMINAL, t, off)[1][0]])


@given(p=probabilities, t=thresholds(), ctx=contexts(), policy=policies())
def test_reasons_start_with_the_visual_band_then_list_each_process_condition_once(p, t, ctx, policy):
    _, reasons = decide(p, ctx, t, policy)
    band = {
        Verdict.NORMAL: "visual_normal",
        Verdict.REINSPECT: "visual_reinspect",
        Verdict.DEFECTIVE: "visual_defective",
    }
    assert reasons[0] == band[visual_verdict(p, t)]
    assert len(set(reasons)) == len(reasons)
    assert (Reason.PROCESS_OUT_OF_SPEC in reasons) == (policy.on_out_of_spec and ctx.out_of_spec)
    assert (Reason.PROCESS_ANOMALY in reasons) == (policy.on_anomaly and ctx.anomaly)
    stale_reasons = {Reason.PROCESS_STALE, Reason.PROCESS_UNKNOWN} & set(reasons)
    assert bool(stale_reasons) == (policy.on_stale and ctx.stale)


def test_default_policy_escalates_normal_on_stale_unknown_and_out_of_spec_but_not_on_anomaly():
    t, policy = Thresholds(), EscalationPolicy()
    out_of_spec = ProcessContext(1.5, int(ProcessFlag.TEMPERATURE_OUT_OF_SPEC), out_of_spec=True, stale=False)
    stale = ProcessContext(1.0, int(ProcessFlag.PRESSURE_STALE), out_of_spec=False, stale=True)
    anomaly = ProcessContext(1.2, int(ProcessFlag.VIBRATION_ANOMALY), out_of_spec=False, stale=False)
    assert decide(0.1, out_of_spec, t, policy) == (Verdict.REINSPECT, ["visual_normal", "process_out_of_spec"])
    assert decide(0.1, stale, t, policy) == (Verdict.REINSPECT, ["visual_normal", "process_stale"])
    assert decide(0.1, ProcessContext.unknown(), t, policy) == (Verdict.REINSPECT, ["visual_normal", "process_unknown"])
    assert decide(0.1, anomaly, t, policy) == (Verdict.NORMAL, ["visual_normal"])
    assert decide(0.9, out_of_spec, t, policy) == (Verdict.DEFECTIVE, ["visual_defective", "process_out_of_spec"])


@given(
    reinspect=st.floats(allow_nan=True, allow_infinity=True, width=32),
    defective=st.floats(allow_nan=True, allow_infinity=True, width=32),
)
def test_thresholds_are_accepted_exactly_when_ordered_within_zero_one(reinspect, defective):
    valid = 0.0 < reinspect < defective <= 1.0
    if valid:
        assert Thresholds(reinspect, defective).reinspect == reinspect
    else:
        with pytest.raises(ValueError, match="0 < reinspect_threshold < defective_threshold <= 1"):
            Thresholds(reinspect, defective)


@pytest.mark.parametrize("p", [math.nan, -0.01, 1.01, math.inf])
def test_an_invalid_probability_is_refused_not_classified(p):
    with pytest.raises(ValueError, match="defect probability"):
        visual_verdict(p, Thresholds())


def test_fail_safe_keeps_the_inspection_reason_and_lists_process_conditions():
    ctx = ProcessContext(1.0, int(ProcessFlag.TEMPERATURE_STALE), out_of_spec=False, stale=True)
    assert fail_safe("queue_full", ctx, EscalationPolicy(), Verdict.NOT_INSPECTED) == (
        Verdict.NOT_INSPECTED,
        ["queue_full", "process_stale"],
    )
    assert fail_safe("", NOMINAL, EscalationPolicy(), Verdict.DEFECTIVE) == (Verdict.DEFECTIVE, ["not_inspected"])


def test_escalation_target_must_be_reinspect_or_defective():
    with pytest.raises(ValueError, match="escalate_to"):
        EscalationPolicy(escalate_to=Verdict.NORMAL)
