"""Conveyor timing model: when must the actuator be commanded so that it hits a given part?

Geometry (see docs/reject.md):

    arrival  = capture + distance / speed                 (the part's centre reaches the actuator)
    command  = arrival - actuator_latency - pulse_width/2 (the stroke is centred on the part)
    pulse    = [command, command + pulse_width]

Speed comes from a fixed parameter or from encoder samples (stamp, count) and ticks/mm. With an encoder
and a known encoder count at capture, the arrival is computed from belt *position* rather than elapsed
time: the part reaches the actuator when the encoder reads count_at_capture + distance * ticks_per_mm, and
that count is extrapolated from the newest encoder sample at the current speed. This corrects for speed
changes between capture and decision. All times are integer nanoseconds on the capture stamps' clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from qc_cell.reject.records import Part

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


class SpeedUnknownError(RuntimeError):
    """No usable belt speed: the part cannot be timed."""


@dataclass(frozen=True)
class Speed:
    mm_s: float
    source: str  # "parameter", "encoder" or "fallback" (encoder configured but no fresh estimate)


@dataclass(frozen=True)
class Arrival:
    ns: int  # the part's centre reaches the actuator
    speed: Speed


class EncoderSpeedEstimator:
    """Belt speed from (stamp, encoder count) samples: least-squares slope over a sliding time window.

    Counts must increase with belt travel. A count that goes backwards (encoder reset or wrap) clears the
    window; samples that are not newer than the newest one are ignored (duplicates, reordering).
    """

    def __init__(self, ticks_per_mm: float, window_ns: int, min_speed_mm_s: float = 1.0, max_samples: int = 256):
        if ticks_per_mm <= 0:
            raise ValueError(f"ticks_per_mm must be > 0, got {ticks_per_mm}")
        if window_ns <= 0:
            raise ValueError(f"window_ns must be > 0, got {window_ns}")
        self.ticks_per_mm = ticks_per_mm
        self.window_ns = window_ns
        self.min_speed_mm_s = min_speed_mm_s
        self._samples: deque[tuple[int, int]] = deque(maxlen=max_samples)
        self.resets = 0

    def add(self, stamp_ns: int, count: int) -> None:
        if count < 0:
            return
        if self._samples:
            last_stamp, last_count = self._samples[-1]
            if stamp_ns <= last_stamp:
                return
            if count < last_count:
                self._samples.clear()
                self.resets += 1
        self._samples.append((stamp_ns, count))
        while self._samples and self._samples[0][0] < stamp_ns - self.window_ns:
            self._samples.popleft()

    def latest(self) -> tuple[int, int] | None:
        return self._samples[-1] if self._samples else None

    def ticks_per_ns(self, now_ns: int) -> float | None:
        """Fitted speed in ticks/ns, or None when fewer than two fresh samples or below min speed."""
        if len(self._samples) < 2 or now_ns - self._samples[-1][0] > self.window_ns:
            return None
        t0, c0 = self._samples[0]
        n = len(self._samples)
        ts = [float(t - t0) for t, _ in self._samples]
        cs = [float(c - c0) for _, c in self._samples]
        mean_t = sum(ts) / n
        mean_c = sum(cs) / n
        var_t = sum((t - mean_t) ** 2 for t in ts)
        if var_t == 0.0:
            return None
        slope = sum((t - mean_t) * (c - mean_c) for t, c in zip(ts, cs, strict=True)) / var_t
        if slope * NS_PER_S / self.ticks_per_mm < self.min_speed_mm_s:
            return None
        return slope


class ConveyorModel:
    """Belt speed and part arrival times. `belt_speed_mm_s` is the speed (speed from parameter) or, with an
    encoder, the fallback used while the encoder gives no fresh estimate (0 = no fallback: SpeedUnknownError)."""

    def __init__(self, belt_speed_mm_s: float, encoder: EncoderSpeedEstimator | None = None) -> None:
        if belt_speed_mm_s < 0:
            raise ValueError(f"belt speed must be >= 0 mm/s, got {belt_speed_mm_s}")
        if encoder is None and belt_speed_mm_s <= 0:
            raise ValueError("without an encoder the belt speed must be > 0 mm/s")
        self.belt_speed_mm_s = belt_speed_mm_s
        self.encoder = encoder

    def add_encoder_sample(self, stamp_ns: int, count: int) -> None:
        if self.encoder is not None:
            self.encoder.add(stamp_ns, count)

    def speed(self, now_ns: int) -> Speed:
        if self.encoder is None:
            return Speed(self.belt_speed_mm_s, "parameter")
        rate = self.encoder.ticks_per_ns(now_ns)
        if rate is not None:
            return Speed(rate * NS_PER_S / self.encoder.ticks_per_mm, "encoder")
        if self.belt_speed_mm_s > 0:
            return Speed(self.belt_speed_mm_s, "fallback")
        raise SpeedUnknownError("no fresh encoder samples to estimate the belt speed and no fallback belt_speed_mm_s")

    def arrival(self, part: Part, distance_mm: float, now_ns: int) -> Arrival:
        """When the part's centre reaches a point `distance_mm` downstream of the camera."""
        speed = self.speed(now_ns)
        if speed.source == "encoder" and part.encoder_count >= 0:
            assert self.encoder is not None
            ref = self.encoder.latest()
            assert ref is not None  # a fresh estimate implies samples
            ref_ns, ref_count = ref
            ticks_per_ns = self.encoder.ticks_per_ns(now_ns)
            assert ticks_per_ns is not None
            target_count = part.encoder_count + distance_mm * self.encoder.ticks_per_mm
            return Arrival(ref_ns + round((target_count - ref_count) / ticks_per_ns), speed)
        return Arrival(part.capture_ns + round(distance_mm / speed.mm_s * NS_PER_S), speed)


@dataclass(frozen=True)
class ActuatorTiming:
    """How an actuator turns an arrival time into a command window."""

    latency_ns: int = 0  # command -> physical stroke (valve, solenoid, PLC scan, bus round trip)
    pulse_width_ns: int = 0  # how long the output stays on (0 for an arm: a single command)
    late_tolerance_ns: int = 0  # a command this much after its planned time still hits the part

    def __post_init__(self) -> None:
        if min(self.latency_ns, self.pulse_width_ns, self.late_tolerance_ns) < 0:
            raise ValueError(f"actuator timing values must be >= 0: {self}")

    def command_ns(self, arrival_ns: int) -> int:
        return arrival_ns - self.latency_ns - self.pulse_width_ns // 2

    def is_late(self, command_ns: int, now_ns: int) -> bool:
        return now_ns > command_ns + self.late_tolerance_ns
