"""Sensor fusion core (no ROS): robust statistics, spec limits, staleness, vibration RMS, anomaly score,
trend detection, and the process simulator's scenarios seen through the fusion."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from qc_cell.fusion.flags import ProcessFlag
from qc_cell.fusion.process_fusion import FusionConfig, ProcessFusion, SignalConfig
from qc_cell.fusion.process_model import GRAVITY_M_S2, ProcessModel, SimulatorConfig
from qc_cell.fusion.robust_stats import RollingMedianMad
from qc_cell.fusion.signal_monitor import SignalMonitor, SpecLimits
from qc_cell.fusion.trend import CusumTrend, TrendConfig, TrendTransition
from qc_cell.fusion.vibration import VibrationWindow
from qc_contract.vocabulary import Severity

S = 1_000_000_000  # ns per second


def test_flags_and_severities_match_the_messages():
    from qc_interfaces.msg import Alert, ProcessState

    for flag in ProcessFlag:
        assert getattr(ProcessState, f"FLAG_{flag.name}") == flag.value, flag
    for severity in Severity:
        assert getattr(Alert, severity.name) == severity.value, severity


# ---- robust statistics ----------------------------------------------------------------------------------


def test_rolling_median_and_mad_match_the_definitions_over_the_window():
    stats = RollingMedianMad(window=7, min_samples=3, min_scale=1e-9)
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 100.0]
    for v in values:
        stats.add(v)
    window = values[-7:]
    median = statistics.median(window)
    mad = statistics.median(abs(v - median) for v in window)
    assert len(stats) == 7
    assert stats.median() == median
    assert stats.scale() == pytest.approx(1.4826 * mad)


def test_a_single_spike_does_not_move_the_median():
    stats = RollingMedianMad(window=50, min_samples=10, min_scale=0.01)
    rng = np.random.default_rng(1)
    for v in 20.0 + 0.1 * rng.standard_normal(49):
        stats.add(float(v))
    before = stats.median()
    assert stats.zscore(30.0) > 50  # a 10-degree spike on 0.1-degree noise
    stats.add(30.0)
    assert stats.median() == pytest.approx(before, abs=0.02)


def test_zscore_is_zero_until_enough_samples_and_scale_has_a_floor():
    stats = RollingMedianMad(window=10, min_samples=5, min_scale=0.5)
    for _ in range(4):
        stats.add(1.0)
    assert stats.zscore(100.0) == 0.0  # not enough history to judge
    stats.add(1.0)
    assert stats.scale() == 0.5  # constant signal: MAD 0, floored
    assert stats.zscore(2.0) == pytest.approx(2.0)


@pytest.mark.parametrize(("window", "min_samples", "min_scale"), [(2, 1, 1.0), (10, 11, 1.0), (10, 5, 0.0)])
def test_robust_stats_reject_bad_configuration(window, min_samples, min_scale):
    with pytest.raises(ValueError):
        RollingMedianMad(window, min_samples, min_scale)


# ---- spec limits and staleness --------------------------------------------------------------------------


def test_spec_excess_two_sided_and_one_sided():
    spec = SpecLimits(10.0, 20.0)
    assert spec.excess(15.0) == 0.0
    assert spec.excess(20.0) == 0.0  # limits are inclusive
    assert spec.excess(25.0) == pytest.approx(0.5)
    assert spec.excess(5.0) == pytest.approx(0.5)
    upper_only = SpecLimits(-math.inf, 2.0)
    assert upper_only.excess(3.0) == pytest.approx(0.5)
    assert upper_only.excess(-100.0) == 0.0
    with pytest.raises(ValueError, match="low < high"):
        SpecLimits(20.0, 10.0)


def _monitor(timeout_s: float = 1.0) -> SignalMonitor:
    stats = RollingMedianMad(window=20, min_samples=5, min_scale=0.1)
    return SignalMonitor("temperature", SpecLimits(0.0, 100.0), timeout_s, stats, anomaly_z=6.0, created_ns=0)


def test_a_signal_never_heard_is_stale_from_the_start_but_alerts_only_after_the_timeout():
    monitor = _monitor(timeout_s=1.0)
    status = monitor.status(0)
    assert status.stale and status.score >= 1.0 and math.isnan(status.value)
    assert not monitor.silent_past_grace(int(0.5 * S))  # start-up: not worth an alert yet
    assert monitor.silent_past_grace(int(1.5 * S))


def test_a_signal_silent_longer_than_its_timeout_goes_stale_and_recovers():
    monitor = _monitor(timeout_s=1.0)
    monitor.update(50.0, 0)
    assert not monitor.status(int(0.9 * S)).stale
    stale = monitor.status(int(1.1 * S))
    assert stale.stale and not stale.out_of_spec and stale.score >= 1.0
    assert stale.value == 50.0  # the last value is still reported, flagged stale
    monitor.update(50.0, int(1.2 * S))
    assert not monitor.status(int(1.3 * S)).stale


def test_invalid_samples_are_counted_and_never_keep_a_sensor_alive():
    monitor = _monitor(timeout_s=1.0)
    monitor.update(50.0, 0)
    for i in range(1, 20):
        assert not monitor.update(math.nan, i * S // 10)
    assert not monitor.update(math.inf, 2 * S)
    status = monitor.status(2 * S)
    assert status.stale and status.invalid_samples == 20 and status.value == 50.0


# ---- fusion ---------------------------------------------------------------------------------------------


def _config(**overrides) -> FusionConfig:
    base = {
        "temperature": SignalConfig(SpecLimits(35.0, 55.0), timeout_s=1.0, min_scale=0.05),
        "pressure": SignalConfig(SpecLimits(5.5e5, 6.5e5), timeout_s=1.0, min_scale=100.0),
        "vibration": SignalConfig(SpecLimits(-math.inf, 2.0), timeout_s=1.0, min_scale=0.01),
        "stats_window": 50,
        "stats_min_samples": 10,
        "trend_interval_s": 1.0,
    }
    base.update(overrides)
    return FusionConfig(**base)


def _feed(fusion: ProcessFusion, t0_s: float, seconds: float, temperature=45.0, pressure=6e5, vib_rms=0.5, seed=0):
    """Feed nominal samples: temperature/pressure at 10 Hz, vibration at 100 Hz; returns the end time (ns)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 100)
    for i in range(n):
        t = int((t0_s + i / 100) * S)
        if i % 10 == 0:
            if temperature is not None:
                fusion.add_temperature(temperature + 0.1 * rng.standard_normal(), t)
            if pressure is not None:
                fusion.add_pressure(pressure + 300 * rng.standard_normal(), t)
        if vib_rms is not None:
            ax, ay, az = rng.standard_normal(3) * vib_rms / math.sqrt(3)
            fusion.add_vibration(ax, ay, az + GRAVITY_M_S2, t)
    return int((t0_s + seconds) * S)


def test_nominal_process_has_no_flags_and_a_low_score():
    fusion = ProcessFusion(_config(), now_ns=0)
    end = _feed(fusion, 0.0, 5.0)
    snap = fusion.evaluate(end)
    assert snap.flags == 0, repr(snap.flags)
    assert not snap.stale and not snap.out_of_spec
    assert 0.0 <= snap.anomaly_score < 1.0
    assert snap.temperature_c == pytest.approx(45.0, abs=1.0)
    assert snap.vibration_rms == pytest.approx(0.5, rel=0.25)  # gravity removed


def test_no_sensors_at_all_is_stale_not_normal():
    fusion = ProcessFusion(_config(), now_ns=0)
    snap = fusion.evaluate(int(0.1 * S))
    assert snap.flags == ProcessFlag.TEMPERATURE_STALE | ProcessFlag.PRESSURE_STALE | ProcessFlag.VIBRATION_STALE
    assert snap.stale and snap.anomaly_score >= 1.0
    assert fusion.pop_events() == []  # still within the start-up grace
    fusion.evaluate(2 * S)
    events = fusion.pop_events()
    assert [e.code for e in events] == ["SENSOR_STALE"] * 3
    assert all("never heard" in e.message for e in events)


def test_silent_temperature_is_flagged_stale_with_one_alert_and_recovers():
    fusion = ProcessFusion(_config(), now_ns=0)
    end = _feed(fusion, 0.0, 3.0)
    fusion.evaluate(end)
    fusion.pop_events()
    end = _feed(fusion, 3.0, 2.0, temperature=None)  # temperature goes silent, the others keep reporting
    snap = fusion.evaluate(end)
    assert snap.flags == ProcessFlag.TEMPERATURE_STALE and snap.stale
    fusion.evaluate(end + 1)
    events = fusion.pop_events()
    assert [(e.code, e.severity) for e in events] == [("SENSOR_STALE", Severity.WARN)]
    assert "temperature" in events[0].message
    end = _feed(fusion, 5.0, 1.0)
    assert fusion.evaluate(end).flags == 0
    assert [e.code for e in fusion.pop_events()] == ["SENSOR_RECOVERED"]


def test_out_of_spec_temperature_is_flagged_and_alerted():
    fusion = ProcessFusion(_config(), now_ns=0)
    end = _feed(fusion, 0.0, 2.0)
    fusion.add_temperature(60.0, end)
    snap = fusion.evaluate(end)
    assert snap.flags == ProcessFlag.TEMPERATURE_OUT_OF_SPEC and snap.out_of_spec
    assert snap.anomaly_score >= 1.0 + 5.0 / 20.0  # at least: 5 degrees past a 20-degree span
    assert [e.code for e in fusion.pop_events()] == ["PROCESS_OUT_OF_SPEC"]
    fusion.set_spec("temperature", SpecLimits(35.0, 65.0))  # run-time limit change
    assert fusion.evaluate(end).flags == ProcessFlag.TEMPERATURE_ANOMALY  # in spec now, still far from normal
    assert [e.code for e in fusion.pop_events()] == ["PROCESS_IN_SPEC"]


def test_a_spike_within_spec_is_an_anomaly_for_as_long_as_it_lasts():
    fusion = ProcessFusion(_config(), now_ns=0)
    end = _feed(fusion, 0.0, 5.0)
    fusion.add_pressure(6e5 + 20_000, end)  # within spec [5.5e5, 6.5e5], ~65 robust sigmas away
    snap = fusion.evaluate(end)
    assert snap.flags == ProcessFlag.PRESSURE_ANOMALY
    assert snap.anomaly_score >= 1.0 and not snap.out_of_spec
    fusion.add_pressure(6e5, end + S // 10)
    assert fusion.evaluate(end + S // 10).flags == 0


def test_vibration_rms_of_a_sinusoid_with_and_without_gravity():
    amplitude, rate = 2.0, 1000
    samples = [(i, amplitude * math.sin(2 * math.pi * 50 * i / rate)) for i in range(rate)]
    ac = VibrationWindow(window_s=1.0, min_samples=10, remove_dc=True)
    raw = VibrationWindow(window_s=1.0, min_samples=10, remove_dc=False)
    for i, a in samples:
        ac.add(i * S // rate, a, 0.0, GRAVITY_M_S2)
        raw.add(i * S // rate, a, 0.0, GRAVITY_M_S2)
    assert ac.rms() == pytest.approx(amplitude / math.sqrt(2), rel=1e-3)
    assert raw.rms() == pytest.approx(math.sqrt(GRAVITY_M_S2**2 + amplitude**2 / 2), rel=1e-3)


def test_vibration_window_keeps_only_the_last_window_and_rejects_nan():
    window = VibrationWindow(window_s=0.5, min_samples=3, remove_dc=True)
    assert math.isnan(window.rms())
    for i in range(100):
        window.add(i * S // 100, 1.0, 0.0, 0.0)
    assert len(window) == 51  # samples within [t_last - 0.5 s, t_last]
    assert not window.add(2 * S, math.nan, 0.0, 0.0)
    assert len(window) == 51


def test_vibration_out_of_spec_from_rms():
    fusion = ProcessFusion(_config(), now_ns=0)
    end = _feed(fusion, 0.0, 3.0, vib_rms=3.0)
    snap = fusion.evaluate(end)
    assert snap.flags & ProcessFlag.VIBRATION_OUT_OF_SPEC
    assert snap.vibration_rms == pytest.approx(3.0, rel=0.25)


# ---- trend detection ------------------------------------------------------------------------------------


def test_cusum_stays_quiet_on_a_stable_machine():
    rng = np.random.default_rng(7)
    trend = CusumTrend(TrendConfig(min_sigma=1e-6))  # defaults: 300-sample baseline, k 0.5, h 15
    transitions = [trend.update(float(v)) for v in 0.5 + 0.03 * rng.standard_normal(20_000)]
    assert not any(transitions), "false maintenance alarm on stationary noise"
    assert trend.status().ready and trend.status().mean == pytest.approx(0.5, abs=0.02)


def test_cusum_detects_a_one_sigma_shift_quickly_and_clears_after_recovery():
    rng = np.random.default_rng(3)
    trend = CusumTrend(TrendConfig(min_sigma=1e-6))
    for v in 0.5 + 0.03 * rng.standard_normal(600):
        assert trend.update(float(v)) is None
    raised_after = None
    for i, v in enumerate(0.53 + 0.03 * rng.standard_normal(300)):  # +1 sigma
        if trend.update(float(v)) is TrendTransition.RAISED:
            raised_after = i + 1
            break
    assert raised_after is not None and raised_after <= 80, raised_after
    assert trend.status().active
    cleared = [trend.update(float(v)) for v in 0.5 + 0.03 * rng.standard_normal(200)]
    assert TrendTransition.CLEARED in cleared and not trend.status().active


def test_cusum_with_a_fixed_baseline_alarms_on_an_already_worn_machine():
    trend = CusumTrend(TrendConfig(baseline_samples=5, baseline=0.5, min_sigma=0.05))
    values = [0.8, 0.81, 0.79, 0.8, 0.8] + [0.8] * 10
    transitions = [trend.update(v) for v in values]
    assert TrendTransition.RAISED in transitions
    assert trend.status().mean == 0.5


@pytest.mark.parametrize(
    "kwargs", [{"baseline_samples": 2}, {"k_sigma": -1.0}, {"h_sigma": 0.0}, {"min_sigma": 0.0}, {"baseline": math.inf}]
)
def test_trend_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        TrendConfig(**kwargs)


def _run_simulator(scenario: str, seconds: float, **sim_overrides):
    """Drive the fusion with the process simulator in simulated time; return (snapshots at 10 Hz, events)."""
    model = ProcessModel(SimulatorConfig(scenario=scenario, seed=11, **sim_overrides))
    config = _config(stats_window=100, stats_min_samples=20, trend=TrendConfig(baseline_samples=50))
    fusion = ProcessFusion(config, now_ns=0)
    snapshots, events = [], []
    for i in range(int(seconds * 50)):  # vibration at 50 Hz, temperature/pressure at 10 Hz
        t_s = i / 50
        t = int(t_s * S)
        if i % 5 == 0:
            if (temperature := model.temperature(t_s)) is not None:
                fusion.add_temperature(temperature, t)
            if (pressure := model.pressure(t_s)) is not None:
                fusion.add_pressure(pressure, t)
            snapshots.append(fusion.evaluate(t))
            events.extend(fusion.pop_events())
        if (vibration := model.vibration(t_s)) is not None:
            fusion.add_vibration(*vibration, t)
    return snapshots, events


def test_drift_scenario_raises_the_maintenance_trend_before_vibration_leaves_its_spec():
    snapshots, events = _run_simulator("drift", 300.0, drift_start_s=60.0, temperature_drift_c_per_min=0.0)
    trend_events = [e for e in events if e.code == "VIBRATION_TREND"]
    assert len(trend_events) == 1, [e.code for e in events]
    first_trend = next(s for s in snapshots if s.flags & ProcessFlag.VIBRATION_TREND)
    assert first_trend.stamp_ns > 60 * S, "alarm before the drift started"
    assert first_trend.vibration_rms < 2.0, "trend should warn before the spec limit is reached"
    assert not first_trend.flags & ProcessFlag.VIBRATION_OUT_OF_SPEC


def test_normal_scenario_raises_no_alert_after_start_up():
    snapshots, events = _run_simulator("normal", 300.0)
    after_start = [s for s in snapshots if s.stamp_ns > 2 * S]
    assert all(s.flags == 0 for s in after_start), {repr(s.flags) for s in after_start}
    assert events == []


def test_spikes_scenario_shows_anomalies_but_stays_in_spec():
    snapshots, _ = _run_simulator("spikes", 60.0, spike_probability=0.02)
    flagged = [s for s in snapshots if s.flags & (ProcessFlag.TEMPERATURE_ANOMALY | ProcessFlag.PRESSURE_ANOMALY)]
    assert len(flagged) >= 3
    assert not any(s.out_of_spec for s in snapshots[20:])


def test_dropout_scenario_makes_only_the_dropped_signal_stale():
    snapshots, events = _run_simulator(
        "dropout", 40.0, dropout_signal="pressure", dropout_period_s=10.0, dropout_duration_s=3.0
    )
    stale = [s for s in snapshots if s.stale]
    assert stale and all(s.flags == ProcessFlag.PRESSURE_STALE for s in stale if s.stamp_ns > S)
    codes = [e.code for e in events]
    assert codes.count("SENSOR_STALE") == 4 and codes.count("SENSOR_RECOVERED") >= 3


# ---- simulator ------------------------------------------------------------------------------------------


def _sequence(config: SimulatorConfig, n: int = 200):
    model = ProcessModel(config)
    return [(model.temperature(i / 10), model.pressure(i / 10), model.vibration(i / 10)) for i in range(n)]


def test_simulator_is_deterministic_by_seed():
    assert _sequence(SimulatorConfig(seed=5)) == _sequence(SimulatorConfig(seed=5))
    assert _sequence(SimulatorConfig(seed=5)) != _sequence(SimulatorConfig(seed=6))


def test_spikes_differ_from_normal_only_at_spike_samples():
    normal = _sequence(SimulatorConfig(seed=2))
    spikes = _sequence(SimulatorConfig(seed=2, scenario="spikes", spike_probability=0.05))
    temperature_diffs = [b[0] - a[0] for a, b in zip(normal, spikes, strict=True) if a[0] != b[0]]
    assert temperature_diffs and all(d == pytest.approx(8.0) for d in temperature_diffs)
    assert len(temperature_diffs) < 40


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scenario": "earthquake"}, "scenario"),
        ({"dropout_signal": "humidity"}, "dropout_signal"),
        ({"dropout_duration_s": 30.0, "dropout_period_s": 20.0}, "dropout_duration_s"),
        ({"spike_probability": 1.5}, "spike_probability"),
    ],
)
def test_simulator_rejects_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimulatorConfig(**kwargs)
