"""Decision engine (no ROS): part ledger, deadlines, late and duplicate results, the process state at capture
time, run-time reconfiguration, and exactly one verdict per part under any interleaving."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qc_cell.decision.engine import DecisionConfig, DecisionEngine, ResultInput
from qc_cell.decision.part_ledger import Claim, PartLedger, Registration
from qc_cell.decision.process_history import ProcessHistory
from qc_cell.decision.verdict_rule import EscalationPolicy, ProcessContext, Thresholds
from qc_cell.fusion.flags import ProcessFlag
from qc_contract.vocabulary import Verdict

MS = 1_000_000
NOMINAL = ProcessContext(anomaly_score=0.1, flags=0, out_of_spec=False, stale=False)
OUT_OF_SPEC = ProcessContext(1.4, int(ProcessFlag.PRESSURE_OUT_OF_SPEC), out_of_spec=True, stale=False)


def result(part_id: str, capture_ns: int, p: float = 0.1, **kwargs) -> ResultInput:
    fields = {"frame_id": "camera", "inspected": True, "reason": "", "defect_probability": p, "model_version": "m1"}
    fields.update(kwargs)
    return ResultInput(part_id=part_id, capture_ns=capture_ns, **fields)


def engine(**config) -> DecisionEngine:
    eng = DecisionEngine(DecisionConfig(**{"result_deadline_ms": 100.0, **config}))
    eng.on_process_state(0, NOMINAL)
    return eng


def test_part_then_result_in_time_gives_one_verdict_with_the_encoder_count():
    eng = engine()
    assert eng.on_part("p1", 10 * MS, 4242, "camera", now_ns=11 * MS) == (Registration.NEW, None)
    claim, record = eng.on_result(result("p1", 10 * MS, p=0.65, ground_truth=2, defect_type="crack"), now_ns=60 * MS)
    assert claim is Claim.DECIDE
    assert record.verdict is Verdict.REINSPECT and record.reasons == ["visual_reinspect"]
    assert (record.encoder_count, record.ground_truth, record.defect_type, record.model_version) == (
        4242,
        2,
        "crack",
        "m1",
    )
    assert record.defect_probability == pytest.approx(0.65)
    assert eng.pending_count == 0 and eng.expire(10_000 * MS) == []


def test_result_before_its_part_registration_is_decided_at_once_and_the_registration_ignored():
    eng = engine()
    _, record = eng.on_result(result("p1", 10 * MS, p=0.9), now_ns=20 * MS)
    assert record.verdict is Verdict.DEFECTIVE and record.encoder_count == -1
    assert eng.on_part("p1", 10 * MS, 7, "camera", now_ns=21 * MS) == (Registration.ALREADY_DECIDED, None)
    assert eng.pending_count == 0 and eng.counters.registrations_after_verdict == 1


def test_a_result_that_overtook_its_registration_waits_for_it_and_gets_the_encoder_count():
    eng = engine(registration_wait_ms=20.0)
    claim, record = eng.on_result(result("p1", 10 * MS, p=0.9), now_ns=30 * MS, registration_expected=True)
    assert (claim, record) == (Claim.HELD, None)
    assert eng.next_due_ns() == 50 * MS
    registration, record = eng.on_part("p1", 10 * MS, 4242, "camera", now_ns=31 * MS)
    assert registration is Registration.COMPLETES_HELD
    assert record.verdict is Verdict.DEFECTIVE and record.encoder_count == 4242
    assert eng.expire(10_000 * MS) == [] and eng.pending_count == 0
    assert eng.on_result(result("p1", 10 * MS), now_ns=32 * MS) == (Claim.DUPLICATE, None)
    assert eng.counters.held_results == 1 and eng.counters.unregistered_verdicts == 0


def test_a_held_result_whose_registration_never_comes_is_decided_at_the_end_of_its_wait():
    eng = engine(registration_wait_ms=20.0)
    eng.on_result(result("p1", 10 * MS, p=0.6), now_ns=30 * MS, registration_expected=True)
    assert eng.on_result(result("p1", 10 * MS, p=0.1), now_ns=35 * MS, registration_expected=True)[0] is Claim.DUPLICATE
    assert eng.expire(50 * MS) == []
    [record] = eng.expire(51 * MS)
    assert record.verdict is Verdict.REINSPECT and record.encoder_count == -1  # decided from the held result
    assert eng.counters.registration_timeouts == 1 and eng.counters.deadline_expired == 0
    assert eng.counters.unregistered_verdicts == 1
    assert eng.on_part("p1", 10 * MS, 7, "camera", now_ns=60 * MS)[0] is Registration.ALREADY_DECIDED


def test_a_held_result_never_waits_past_the_deadline_and_without_a_publisher_nothing_waits():
    eng = engine(registration_wait_ms=500.0)
    eng.on_result(result("p1", 10 * MS), now_ns=90 * MS, registration_expected=True)
    assert eng.next_due_ns() == 110 * MS  # capture + 100 ms deadline, not arrival + 500 ms
    claim, record = eng.on_result(result("p2", 10 * MS), now_ns=90 * MS, registration_expected=False)
    assert claim is Claim.DECIDE and record.encoder_count == -1


def test_a_part_known_from_its_trigger_gets_its_fail_safe_verdict_without_the_camera():
    eng = engine()
    assert eng.on_part("p1", 10 * MS, 77, "", now_ns=11 * MS, from_camera=False)[0] is Registration.NEW
    [record] = eng.expire(200 * MS)  # the camera driver never registered it, no result came
    assert record.verdict is Verdict.NOT_INSPECTED and record.reasons == ["no_result"] and record.encoder_count == 77
    assert eng.counters.trigger_registrations == 1


def test_the_camera_registration_replaces_the_trigger_and_a_late_trigger_changes_nothing():
    eng = engine()
    eng.on_part("p1", 10 * MS, 77, "", now_ns=11 * MS, from_camera=False)
    assert eng.on_part("p1", 15 * MS, 78, "camera", now_ns=16 * MS)[0] is Registration.CONFIRMED
    assert eng.next_due_ns() == 115 * MS  # deadline from the camera's capture stamp
    assert eng.on_part("p1", 10 * MS, 77, "", now_ns=17 * MS, from_camera=False)[0] is Registration.ALREADY_PENDING
    _, record = eng.on_result(result("p1", 15 * MS, p=0.2), now_ns=60 * MS)
    assert (record.verdict, record.encoder_count, record.capture_ns, record.frame_id) == (
        Verdict.NORMAL,
        78,
        15 * MS,
        "camera",
    )
    assert eng.counters.duplicate_registrations == 0 and eng.counters.unregistered_verdicts == 0
    assert eng.expire(10_000 * MS) == []


def test_part_without_result_gets_not_inspected_at_its_deadline_and_a_late_result_is_only_counted():
    eng = engine()
    eng.on_part("p1", 10 * MS, 5, "camera", now_ns=12 * MS)
    assert eng.next_due_ns() == 110 * MS
    assert eng.expire(110 * MS) == []  # not before the deadline has passed
    [record] = eng.expire(111 * MS)
    assert record.verdict is Verdict.NOT_INSPECTED and record.reasons == ["no_result"]
    assert math.isnan(record.defect_probability) and record.fail_safe and record.encoder_count == 5
    assert eng.on_result(result("p1", 10 * MS), now_ns=150 * MS) == (Claim.LATE, None)
    assert eng.counters.late_results == 1 and eng.counters.deadline_expired == 1


def test_result_after_the_deadline_but_before_the_timer_fires_is_still_fail_safe():
    eng = engine()
    eng.on_part("p1", 10 * MS, 5, "camera", now_ns=12 * MS)
    claim, record = eng.on_result(result("p1", 10 * MS, p=0.1), now_ns=111 * MS)
    assert claim is Claim.EXPIRED and record.verdict is Verdict.NOT_INSPECTED and record.reasons == ["late_result"]
    assert eng.expire(1_000 * MS) == []  # and the timer does not decide it a second time


def test_unregistered_result_after_its_deadline_is_fail_safe_too():
    eng = engine()
    claim, record = eng.on_result(result("p1", 10 * MS, p=0.1), now_ns=200 * MS)
    assert claim is Claim.EXPIRED and record.verdict is Verdict.NOT_INSPECTED


def test_duplicate_result_is_ignored_and_counted():
    eng = engine()
    eng.on_part("p1", 10 * MS, 5, "camera", now_ns=12 * MS)
    assert eng.on_result(result("p1", 10 * MS), now_ns=20 * MS)[0] is Claim.DECIDE
    assert eng.on_result(result("p1", 10 * MS, p=0.99), now_ns=21 * MS) == (Claim.DUPLICATE, None)
    assert eng.counters.duplicate_results == 1


def test_inference_not_inspected_keeps_its_reason():
    eng = engine()
    _, record = eng.on_result(
        result("p1", 10 * MS, p=math.nan, inspected=False, reason="capture_failed"), now_ns=20 * MS
    )
    assert record.verdict is Verdict.NOT_INSPECTED and record.reasons == ["capture_failed"]


@pytest.mark.parametrize("p", [math.nan, 1.5, -0.1])
def test_an_invalid_probability_fails_safe(p):
    eng = engine()
    _, record = eng.on_result(result("p1", 10 * MS, p=p), now_ns=20 * MS)
    assert record.verdict is Verdict.NOT_INSPECTED and record.reasons == ["invalid_probability"]
    assert eng.counters.invalid_probabilities == 1


def test_fail_safe_parts_can_be_published_as_defective_or_reinspect():
    eng = engine(not_inspected_as=Verdict.DEFECTIVE)
    eng.on_part("p1", 10 * MS, 5, "camera", now_ns=12 * MS)
    [record] = eng.expire(200 * MS)
    assert record.verdict is Verdict.DEFECTIVE and record.reasons == ["no_result"]
    eng.reconfigure(not_inspected_as=Verdict.REINSPECT)
    _, record = eng.on_result(result("p2", 10 * MS, inspected=False, reason="queue_full"), now_ns=20 * MS)
    assert record.verdict is Verdict.REINSPECT and record.reasons == ["queue_full"]


def test_parts_without_ids_are_refused_with_a_clear_error():
    eng = engine()
    with pytest.raises(ValueError, match="part_id"):
        eng.on_result(result("", 10 * MS), now_ns=20 * MS)
    with pytest.raises(ValueError, match="part_id"):
        eng.on_part("", 10 * MS, 1, "camera", now_ns=20 * MS)
    assert (eng.counters.invalid_results, eng.counters.invalid_parts) == (1, 1)


def test_deadline_is_counted_from_arrival_when_the_capture_stamp_lies_in_the_future():
    ledger = PartLedger(deadline_ns=100 * MS, remembered=10)
    ledger.register("p1", capture_ns=10_000 * MS, encoder_count=1, frame_id="", now_ns=50 * MS)  # clock skew
    assert ledger.next_due_ns() == 150 * MS


def test_the_ledger_remembers_a_bounded_number_of_decided_parts():
    ledger = PartLedger(deadline_ns=100 * MS, remembered=3)
    for i in range(5):
        assert ledger.claim(f"p{i}", 0, "", now_ns=1)[0] is Claim.DECIDE
    assert ledger.decided_by("p0") is None and ledger.decided_by("p4") is not None


# ---- process state at capture time ----------------------------------------------------------------------


def test_the_process_state_in_force_at_capture_time_is_joined():
    eng = DecisionEngine(DecisionConfig(result_deadline_ms=1000.0))
    eng.on_process_state(0, NOMINAL)
    eng.on_process_state(200 * MS, OUT_OF_SPEC)
    eng.on_process_state(400 * MS, NOMINAL)
    verdicts = {}
    for part_id, capture_ms in (("before", 150), ("during", 250), ("after", 450)):
        _, record = eng.on_result(result(part_id, capture_ms * MS, p=0.1), now_ns=500 * MS)
        verdicts[part_id] = (record.verdict, record.reasons, record.process.flags)
    assert verdicts["before"] == (Verdict.NORMAL, ["visual_normal"], 0)
    assert verdicts["during"] == (
        Verdict.REINSPECT,
        ["visual_normal", "process_out_of_spec"],
        int(ProcessFlag.PRESSURE_OUT_OF_SPEC),
    )
    assert verdicts["after"][0] is Verdict.NORMAL


def test_no_process_state_near_the_capture_is_unknown_and_escalates():
    eng = DecisionEngine(DecisionConfig(result_deadline_ms=1000.0, process_max_age_ms=500.0))
    eng.on_process_state(0, NOMINAL)
    _, record = eng.on_result(result("p1", 2_000 * MS, p=0.1), now_ns=2_010 * MS)  # fusion silent for 2 s
    assert record.verdict is Verdict.REINSPECT and record.reasons == ["visual_normal", "process_unknown"]
    assert math.isnan(record.process.anomaly_score)
    off = DecisionEngine(DecisionConfig(policy=EscalationPolicy(on_stale=False)))
    assert off.on_result(result("p1", 10 * MS, p=0.1), now_ns=20 * MS)[1].verdict is Verdict.NORMAL


def test_history_lookup_rules():
    history = ProcessHistory(max_age_ns=100 * MS, keep_ns=1_000 * MS)
    assert not history.at(0).known
    history.add(500 * MS, OUT_OF_SPEC)
    assert history.at(450 * MS) is OUT_OF_SPEC  # captured just before fusion's first state: nearest after
    assert not history.at(300 * MS).known
    history.add(300 * MS, NOMINAL)  # out of order arrival lands in place
    assert history.at(350 * MS) is NOMINAL and history.at(550 * MS) is OUT_OF_SPEC
    assert not history.at(700 * MS).known  # latest state too old for this capture
    history.add(5_000 * MS, NOMINAL)
    assert len(history) == 1  # older than keep_ns behind the newest: dropped


# ---- configuration --------------------------------------------------------------------------------------


def test_runtime_reconfiguration_is_validated_as_a_whole():
    eng = engine()
    eng.reconfigure(thresholds=Thresholds(0.3, 0.6))
    assert eng.on_result(result("p1", 10 * MS, p=0.4), now_ns=20 * MS)[1].verdict is Verdict.REINSPECT
    with pytest.raises(ValueError, match="result_deadline_ms"):
        eng.reconfigure(result_deadline_ms=0.0)
    assert eng.config.result_deadline_ms == 100.0  # unchanged after a refused change


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"result_deadline_ms": -1.0}, "result_deadline_ms"),
        ({"process_keep_s": 0.1}, "process_keep_s"),
        ({"not_inspected_as": Verdict.NORMAL}, "not_inspected_as"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecisionConfig(**kwargs)


# ---- exactly one verdict per part, whatever the order of events ------------------------------------------

part_plans = st.lists(
    st.fixed_dictionaries(
        {
            "registered": st.booleans(),  # camera/parts seen
            "register_delay": st.integers(0, 300),  # ms after capture
            "triggered": st.booleans(),  # camera/trigger with the part's id seen
            "trigger_delay": st.integers(0, 300),  # ms after capture
            "results": st.integers(0, 3),  # 0 = missing, >1 = duplicates
            "result_delay": st.integers(0, 300),  # ms after capture (deadline is 100 ms)
        }
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(plans=part_plans, tick_ms=st.integers(1, 50), wait_ms=st.sampled_from([0.0, 20.0]), waits=st.booleans())
def test_every_part_gets_exactly_one_verdict_under_any_interleaving(plans, tick_ms, wait_ms, waits):
    eng = engine(registration_wait_ms=wait_ms)
    events = []  # (time ms, order, kind, part)
    for i, plan in enumerate(plans):
        capture = i * 7
        if plan["registered"]:
            events.append((capture + plan["register_delay"], 0, "part", i))
        if plan["triggered"]:
            events.append((capture + plan["trigger_delay"], 0, "trigger", i))
        for k in range(plan["results"]):
            events.append((capture + plan["result_delay"] + k, 1, "result", i))
    end = max((e[0] for e in events), default=0) + 500
    events += [(t, 2, "tick", -1) for t in range(0, end, tick_ms)]
    events.append((10**9, 3, "tick", -1))  # much later: whatever is still pending must be decided
    verdicts: dict[str, list[Verdict]] = {}
    encoders: dict[str, int] = {}
    for t, _, kind, i in sorted(events):
        now = t * MS
        records = []
        if kind in ("part", "trigger"):
            records.append(eng.on_part(f"p{i}", i * 7 * MS, i, "camera", now, from_camera=kind == "part")[1])
        elif kind == "result":
            records.append(eng.on_result(result(f"p{i}", i * 7 * MS, p=0.5), now, registration_expected=waits)[1])
        else:
            records += eng.expire(now)
        for record in filter(None, records):
            verdicts.setdefault(record.part_id, []).append(record.verdict)
            encoders[record.part_id] = record.encoder_count
    expected = {f"p{i}" for i, plan in enumerate(plans) if plan["registered"] or plan["triggered"] or plan["results"]}
    assert set(verdicts) == expected
    assert all(len(v) == 1 for v in verdicts.values()), verdicts
    for i, plan in enumerate(plans):
        if plan["results"] == 0 and (plan["registered"] or plan["triggered"]):
            assert verdicts[f"p{i}"] == [Verdict.NOT_INSPECTED]
        if plan["registered"] and plan["results"] and plan["result_delay"] <= 100:
            hold_end = min(plan["result_delay"] + (wait_ms if waits else 0), 100)
            if plan["register_delay"] <= max(plan["result_delay"], hold_end):
                assert encoders[f"p{i}"] == i, plan  # registered first, or while its result waited
        if plan["results"] and plan["result_delay"] <= 100:
            assert verdicts[f"p{i}"] == [Verdict.REINSPECT], plan  # in time: decided from the result
        elif plan["results"]:
            assert verdicts[f"p{i}"] == [Verdict.NOT_INSPECTED], plan  # too late, registered or not
    assert eng.pending_count == 0


def test_deadlines_run_on_the_steady_clock_while_records_keep_the_wall_stamps():
    """The node feeds the engine steady times (capture and now) and the wall stamp apart: a wall-clock step between
    capture and result changes no deadline, and the verdict still carries the wall stamp and the steady one."""
    engine = DecisionEngine(DecisionConfig(result_deadline_ms=500.0))
    steady, wall = 10_000 * MS, 1_700_000_000_000 * MS
    engine.on_part("p", steady, 7, "cam", steady, wall_ns=wall)
    # The wall clock stepped back 300 ms meanwhile: irrelevant, the result comes 400 ms later on the steady clock.
    claim, record = engine.on_result(
        ResultInput("p", steady, "cam", True, "", 0.9, wall_ns=wall - 300 * MS), steady + 400 * MS
    )
    assert claim is Claim.DECIDE and record is not None
    assert (record.capture_ns, record.steady_ns, record.encoder_count) == (wall, steady, 7)
    engine.on_part("q", steady, -1, "cam", steady, wall_ns=wall)
    assert engine.expire(steady + 499 * MS) == []
    [late] = engine.expire(steady + 501 * MS)
    assert (late.part_id, late.verdict, late.capture_ns) == ("q", Verdict.NOT_INSPECTED, wall)
