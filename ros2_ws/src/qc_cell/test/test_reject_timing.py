"""Conveyor timing model and configuration (plain pytest, no ROS)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qc_cell.reject.config import RejectConfig
from qc_cell.reject.records import DEFECTIVE, DIVERT, NORMAL, NOT_INSPECTED, REINSPECT, REJECT, STOP_LINE, Part
from qc_cell.reject.timing import (
    ActuatorTiming,
    ConveyorModel,
    EncoderSpeedEstimator,
    SpeedUnknownError,
)

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S  # a realistic wall-clock stamp


def test_arrival_and_command_time_from_belt_speed_are_exact():
    model = ConveyorModel(belt_speed_mm_s=500.0)
    arrival = model.arrival(Part("p1", T0), distance_mm=800.0, now_ns=T0)
    assert arrival.ns == T0 + 1_600 * MS  # 800 mm at 500 mm/s
    assert arrival.speed.source == "parameter"
    timing = ActuatorTiming(latency_ns=15 * MS, pulse_width_ns=40 * MS, late_tolerance_ns=10 * MS)
    # The stroke is centred on the part: command = arrival - latency - width/2.
    assert timing.command_ns(arrival.ns) == T0 + (1_600 - 15 - 20) * MS


@given(
    distance=st.floats(10.0, 5_000.0),
    speed=st.floats(50.0, 5_000.0),
    latency_ms=st.integers(0, 200),
    width_ms=st.integers(1, 500),
)
def test_command_time_matches_the_formula(distance, speed, latency_ms, width_ms):
    model = ConveyorModel(speed)
    timing = ActuatorTiming(latency_ms * MS, width_ms * MS)
    arrival = model.arrival(Part("p", T0), distance, T0).ns
    expected_after_capture = distance / speed * S - latency_ms * MS - width_ms * MS / 2
    assert abs((timing.command_ns(arrival) - T0) - expected_after_capture) <= 1  # integer ns rounding only


def test_late_is_judged_against_the_tolerance():
    timing = ActuatorTiming(late_tolerance_ns=10 * MS)
    assert not timing.is_late(T0, T0 + 10 * MS)
    assert timing.is_late(T0, T0 + 10 * MS + 1)
    assert not timing.is_late(T0, T0 - S)  # early is never late


def _encoder(ticks_per_mm: float = 10.0, window_s: float = 1.0) -> EncoderSpeedEstimator:
    return EncoderSpeedEstimator(ticks_per_mm, int(window_s * S))


def test_encoder_speed_is_the_least_squares_slope():
    encoder = _encoder()
    for i in range(6):  # 500 mm/s = 5000 ticks/s, sampled every 100 ms
        encoder.add(T0 + i * 100 * MS, 123_000 + 500 * i)
    model = ConveyorModel(0.0, encoder)
    speed = model.speed(T0 + 500 * MS)
    assert speed.source == "encoder"
    assert speed.mm_s == pytest.approx(500.0, rel=1e-12)


def test_encoder_arrival_equals_the_time_based_one_at_constant_speed():
    encoder = _encoder()
    model = ConveyorModel(0.0, encoder)
    for i in range(6):
        model.add_encoder_sample(T0 + i * 100 * MS, 1_000 + 500 * i)
    # A part captured at sample 3 (count 2500), 800 mm upstream of the ejector: 8000 ticks = 1.6 s.
    arrival = model.arrival(Part("p", T0 + 300 * MS, encoder_count=2_500), 800.0, T0 + 500 * MS)
    assert arrival.ns == T0 + 300 * MS + 1_600 * MS


def test_encoder_position_corrects_for_a_speed_change_after_capture():
    """The belt slowed from 500 to 250 mm/s after the part was captured: the ejection moves later."""
    encoder = _encoder(window_s=0.35)
    model = ConveyorModel(500.0, encoder)
    model.add_encoder_sample(T0, 0)  # part captured here at count 0, 500 mm/s until T0 + 200 ms
    model.add_encoder_sample(T0 + 100 * MS, 500)
    model.add_encoder_sample(T0 + 200 * MS, 1_000)
    for i in range(1, 5):  # then 250 mm/s = 2500 ticks/s
        model.add_encoder_sample(T0 + (200 + 100 * i) * MS, 1_000 + 250 * i)
    now = T0 + 600 * MS
    speed = model.speed(now)
    assert speed.mm_s == pytest.approx(250.0, rel=1e-9)  # only samples of the last 350 ms count
    # 800 mm = 8000 ticks from count 0; at T0+600ms the encoder reads 2000: 6000 ticks left at 2500 ticks/s.
    arrival = model.arrival(Part("p", T0, encoder_count=0), 800.0, now)
    assert arrival.ns == now + 2_400 * MS
    assert arrival.ns != T0 + 1_600 * MS  # what a fixed 500 mm/s would have said


def test_encoder_reset_and_reordered_samples():
    encoder = _encoder()
    encoder.add(T0, 10_000)
    encoder.add(T0 + 100 * MS, 10_500)
    encoder.add(T0 + 50 * MS, 10_250)  # older than the newest: ignored
    assert encoder.latest() == (T0 + 100 * MS, 10_500)
    encoder.add(T0 + 200 * MS, 3)  # count went backwards: encoder reset, window cleared
    assert encoder.resets == 1
    assert encoder.ticks_per_ns(T0 + 200 * MS) is None  # a single sample gives no speed
    encoder.add(T0 + 300 * MS, 503)
    assert encoder.ticks_per_ns(T0 + 300 * MS) == pytest.approx(500 / (100 * MS))


def test_stale_encoder_falls_back_to_the_belt_speed_parameter_or_fails():
    encoder = _encoder(window_s=0.5)
    encoder.add(T0, 0)
    encoder.add(T0 + 100 * MS, 500)
    with_fallback = ConveyorModel(400.0, encoder)
    assert with_fallback.speed(T0 + 100 * MS).source == "encoder"
    stale = with_fallback.speed(T0 + 2 * S)
    assert (stale.source, stale.mm_s) == ("fallback", 400.0)
    # The fallback speed times a part from its capture stamp even if it has an encoder count.
    assert with_fallback.arrival(Part("p", T0, 0), 800.0, T0 + 2 * S).ns == T0 + 2 * S
    without = ConveyorModel(0.0, encoder)
    with pytest.raises(SpeedUnknownError, match="no fresh encoder samples"):
        without.arrival(Part("p", T0, 0), 800.0, T0 + 2 * S)


def test_stopped_belt_gives_no_encoder_speed():
    encoder = EncoderSpeedEstimator(10.0, S, min_speed_mm_s=1.0)
    for i in range(5):
        encoder.add(T0 + i * 100 * MS, 777)  # not moving
    assert encoder.ticks_per_ns(T0 + 400 * MS) is None


def test_verdict_routing_and_required_outputs():
    config = RejectConfig()
    assert [config.lane_for(v) for v in (NORMAL, REINSPECT, DEFECTIVE, NOT_INSPECTED)] == [None, None, REJECT, REJECT]
    divert = RejectConfig(divert_distance_mm=1200.0, divert_verdicts=("REINSPECT",), missed_response="stop_line")
    divert.validate()
    assert divert.lane_for(REINSPECT) == DIVERT
    assert divert.lane_distance_mm(DIVERT) == 1200.0
    assert divert.required_channels() == {REJECT, DIVERT, STOP_LINE}
    assert RejectConfig().required_channels() == {REJECT}
    assert RejectConfig(watchdog_action="stop_line").required_channels() == {REJECT, STOP_LINE}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"eject_verdicts": ("DEFECTIVE", "BROKEN")}, "unknown verdicts"),
        ({"divert_verdicts": ("REINSPECT",)}, "no divert lane"),
        ({"divert_verdicts": ("DEFECTIVE",), "divert_distance_mm": 900.0}, "in both"),
        ({"missed_response": "divert", "divert_distance_mm": 500.0}, "downstream of the reject actuator"),
        ({"belt_speed_mm_s": 0.0}, "must be > 0 when speed_source is 'parameter'"),
        ({"pulse_width_ms": 0.0}, "pulse_width_ms"),
        ({"overlap_policy": "ignore"}, "overlap_policy"),
        ({"watchdog_action": "pray"}, "watchdog_action"),
    ],
)
def test_bad_configurations_are_refused_with_the_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        RejectConfig(**changes).validate()


def test_encoder_source_without_fallback_speed_is_valid():
    RejectConfig(speed_source="encoder", belt_speed_mm_s=0.0).validate()
