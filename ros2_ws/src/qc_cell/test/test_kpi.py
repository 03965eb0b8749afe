"""Rolling KPIs (no ROS): counts, yield, reasons, throughput and latency percentiles over the window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qc_cell.decision.kpi import RollingKpi
from qc_contract.vocabulary import Verdict

S = 1_000_000_000


def test_counts_yield_reasons_and_latency_percentiles():
    kpi = RollingKpi(window_s=60.0, started_ns=0)
    rng = np.random.default_rng(0)
    latencies = rng.uniform(5.0, 50.0, 100)
    plan = [Verdict.NORMAL] * 70 + [Verdict.REINSPECT] * 15 + [Verdict.DEFECTIVE] * 10 + [Verdict.NOT_INSPECTED] * 5
    reasons = {
        Verdict.NORMAL: ["visual_normal"],
        Verdict.REINSPECT: ["visual_normal", "process_out_of_spec"],
        Verdict.DEFECTIVE: ["visual_defective"],
        Verdict.NOT_INSPECTED: ["no_result"],
    }
    for i, (verdict, latency) in enumerate(zip(plan, latencies, strict=True)):
        kpi.add(S + i * S // 10, verdict, reasons[verdict], float(latency))
    snap = kpi.snapshot(11 * S)
    assert snap.parts == 100 and snap.total_parts == 100
    assert snap.counts == {Verdict.NORMAL: 70, Verdict.REINSPECT: 15, Verdict.DEFECTIVE: 10, Verdict.NOT_INSPECTED: 5}
    assert snap.yield_ratio == pytest.approx(0.70)
    assert snap.reasons == {"visual_normal": 85, "process_out_of_spec": 15, "visual_defective": 10, "no_result": 5}
    assert snap.reason_rate("visual_defective") == pytest.approx(0.10)
    expected = np.percentile(latencies, [50, 95, 99])
    assert [snap.latency_p50_ms, snap.latency_p95_ms, snap.latency_p99_ms] == pytest.approx(list(expected))
    assert snap.throughput_pps == pytest.approx(100 / 11.0)  # the node has run 11 s of a 60 s window


def test_the_window_rolls_and_the_total_does_not():
    kpi = RollingKpi(window_s=10.0, started_ns=0)
    for i in range(30):  # one part per second
        kpi.add(i * S, Verdict.NORMAL, ["visual_normal"], 10.0)
    snap = kpi.snapshot(30 * S)
    assert snap.parts == 9  # decided in (20 s, 30 s]
    assert snap.total_parts == 30
    assert snap.throughput_pps == pytest.approx(0.9)


def test_an_empty_window_has_nan_yield_and_latency_and_zero_throughput():
    kpi = RollingKpi(window_s=10.0, started_ns=0)
    kpi.add(S, Verdict.DEFECTIVE, ["visual_defective"], 10.0)
    snap = kpi.snapshot(100 * S)
    assert snap.parts == 0 and snap.total_parts == 1
    assert math.isnan(snap.yield_ratio) and math.isnan(snap.latency_p99_ms)
    assert snap.throughput_pps == 0.0 and snap.reasons == {}
    assert math.isnan(snap.reason_rate("visual_defective"))


def test_a_reason_counts_once_per_part():
    kpi = RollingKpi(window_s=10.0, started_ns=0)
    kpi.add(S, Verdict.REINSPECT, ["visual_normal", "process_stale", "process_stale"], 1.0)
    assert kpi.snapshot(2 * S).reasons == {"visual_normal": 1, "process_stale": 1}


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        RollingKpi(window_s=0.0, started_ns=0)
