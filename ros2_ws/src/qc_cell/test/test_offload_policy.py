"""The latency-aware offloading policy (qc_cell.bridge.offload.OffloadPolicy), without ROS or MQTT: which parts go
to the cloud, as what image, and why not."""

from __future__ import annotations

import pytest

from qc_cell.bridge.offload import LinkModel, OffloadPolicy, PolicySettings
from qc_contract.vocabulary import Verdict

FRAME = (1280, 720)
ROI = (280, 0, 720, 720)


def policy(**kw) -> OffloadPolicy:
    return OffloadPolicy(PolicySettings(**{"roi": ROI, "cloud_side": 224, **kw}))


def decide(
    p: OffloadPolicy, slack_ms: float, verdict=Verdict.REINSPECT, reasons=("visual_reinspect",), backlog=0, now=0.0
):
    return p.decide(verdict, reasons, slack_ms, *FRAME, backlog, now_s=now)


def test_a_reinspect_part_is_sent_when_the_predicted_round_trip_fits_its_slack():
    p = policy(prior_rtt_ms=50, prior_bandwidth_mbps=5, margin_ms=10)
    d = decide(p, slack_ms=400)
    assert d.send and d.reason == "send_reinspect"
    # the smallest image that serves the cloud model: the ROI crop scaled to its input side, best quality first
    assert (d.plan.roi, d.plan.width, d.plan.height, d.plan.quality) == (ROI, 224, 224, 90)
    assert d.estimate_ms == pytest.approx(50 + 10 + d.plan.estimated_bytes * 8 / 5e3)
    record = d.record(p.link_figures())
    assert record["reason"] == "send_reinspect" and record["roi"] == list(ROI) and record["jpeg_quality"] == 90


def test_a_tighter_slack_lowers_the_quality_then_keeps_the_part_local():
    p = policy(prior_rtt_ms=50, prior_bandwidth_mbps=1, margin_ms=0)  # 1 Mbit/s: 8 ms per kB
    sizes = {q: p.plan(*FRAME, q).estimated_bytes for q in (90, 75, 60)}
    assert sizes[90] > sizes[75] > sizes[60]
    just_75 = 50 + sizes[75] * 8 / 1e3 + 1
    d = decide(p, just_75)
    assert d.send and d.plan.quality == 75
    too_tight = 50 + sizes[60] * 8 / 1e3 - 1
    assert decide(p, too_tight).reason == "probe"  # nothing measured yet: one goes anyway, to measure the link
    d = decide(p, too_tight)
    assert not d.send and d.reason == "slow_link"  # the base fits, the upload does not
    d = decide(p, 30)
    assert not d.send and d.reason == "no_slack"  # not even the base round trip fits


def test_only_reinspect_parts_and_under_overload_uninspected_parts_are_candidates():
    p = policy(overload_threshold=0.1)
    assert decide(p, 1000, Verdict.NORMAL, ("visual_normal",)).reason == "not_candidate"
    late = (Verdict.NOT_INSPECTED, ("late_result",))
    assert decide(p, 1000, *late).reason == "not_candidate"  # the edge keeps up: its fail-safe stands
    for i in range(20):
        p.observe_part(*((late) if i % 3 == 0 else (Verdict.NORMAL, ("visual_normal",))))
    assert p.overloaded and p.edge_load == pytest.approx(7 / 20)
    d = decide(p, 1000, *late)
    assert d.send and d.reason == "send_overload"


def test_second_opinions_go_to_the_normal_parts_the_edge_was_least_sure_of():
    p = policy(second_opinion_share=0.1, max_backlog=8)
    normal = (Verdict.NORMAL, ("visual_normal",))

    def offered(probability: float, backlog: int = 0):
        p.observe_part(*normal, probability)
        return p.decide(*normal, 1000, *FRAME, backlog, now_s=0.0, probability=probability)

    # Not before SECOND_OPINION_MIN normal parts were seen (no basis for "the least sure" yet).
    assert [offered(0.001 * i).reason for i in range(49)] == ["not_candidate"] * 49
    for i in range(49, 100):
        offered(0.001 * i)  # 100 normal parts at P 0.000 .. 0.099
    assert not p.candidate(*normal, 0.05) and p.candidate(*normal, 0.095)
    d = offered(0.097)  # among the top tenth
    assert d.send and d.reason == "send_second_opinion" and d.record(p.link_figures())["reason"] == d.reason
    assert offered(0.02).reason == "not_candidate"
    assert not p.candidate(Verdict.DEFECTIVE, ("visual_defective",), 0.99)  # the edge's own rejects stay local
    # Never the link's last places: from half max_backlog on, only parts the edge could not decide are sent.
    assert offered(0.098, backlog=4).reason == "outbox_backlog"
    assert decide(p, 1000, backlog=4).send
    assert not p.candidate(*normal, float("nan"))
    # The default: none.
    q = policy()
    for i in range(100):
        q.observe_part(*normal, 0.001 * i)
    assert not q.candidate(*normal, 0.099)


def test_a_backed_up_link_sends_nothing_more():
    p = policy(max_backlog=3)
    assert decide(p, 1000, backlog=2).send
    d = decide(p, 1000, backlog=3)
    assert not d.send and d.reason == "outbox_backlog"


def test_the_link_model_learns_base_and_bandwidth_from_the_answers():
    link = LinkModel(PolicySettings(prior_rtt_ms=100, prior_bandwidth_mbps=100, spread_k=0, margin_ms=0))
    for size in (5_000, 10_000, 20_000, 40_000, 10_000, 30_000):  # 30 ms base, 2 Mbit/s = 4 ms per kB
        link.observe(size, 30 + size * 8 / 2e3)
    assert link.base_ms == pytest.approx(30, abs=0.5)
    assert link.bandwidth_mbps == pytest.approx(2.0, rel=0.02)
    assert link.predict_ms(10_000) == pytest.approx(70, abs=1)


def test_a_slow_link_stops_offloading_and_a_probe_measures_it_again_later():
    p = policy(min_bandwidth_mbps=1.0, probe_interval_s=10, prior_rtt_ms=20)
    for size in (4_000, 8_000, 16_000, 12_000):
        p.observe_answer(size, 20 + size * 8 / 0.5e3, now_s=0.0)  # 0.5 Mbit/s
    assert p.link.bandwidth_mbps < 1.0
    d = decide(p, 10_000, now=5.0)
    assert not d.send and d.reason == "slow_link"
    d = decide(p, 10_000, now=11.0)
    assert d.send and d.reason == "probe" and d.plan.quality == 60  # the smallest image
    assert not decide(p, 10_000, now=12.0).send  # one probe per interval
    assert p.counts == {"slow_link": 2, "probe": 1}


def test_jpeg_sizes_are_learnt_from_the_encoded_images():
    p = policy()
    before = p.plan(*FRAME, 90).estimated_bytes
    for _ in range(30):
        p.observe_jpeg(90, 224 * 224, 60_000)  # far bigger than the prior guess
    assert p.plan(*FRAME, 90).estimated_bytes > 2 * before


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="ROI"):
        PolicySettings(roi=(0, 0, 0, 10))
    with pytest.raises(ValueError, match="quality"):
        PolicySettings(quality_ladder=())
    with pytest.raises(ValueError, match="second opinion"):
        PolicySettings(second_opinion_share=0.8)


def test_round_trips_that_vary_for_another_reason_do_not_pass_for_a_slow_link():
    link = LinkModel(PolicySettings(prior_rtt_ms=100, prior_bandwidth_mbps=20, spread_k=0, margin_ms=0))
    queueing = [900, 150, 1200, 300, 80, 1000, 200, 700]  # the verifier's queue, unrelated to the size
    for i, q in enumerate(queueing):
        link.observe((10_000, 14_000, 8_000)[i % 3], 20 + q)
    assert link.bandwidth_mbps == pytest.approx(20)  # the prior stands
    assert link.base_ms > 300 and link.spread_ms > 200  # the delay is in the base and the spread
