"""Belt tracking: where the belt is, in mm of travel, on the controller's monotonic clock (plain Python, no ROS).

A part's place on the belt is fixed when it is captured (its belt position then); it reaches an actuator when the
belt has moved `distance_mm` further: shift-register style, as a PLC tracks parts by encoder counts. So a belt that
stops or slows between the camera and the ejector delays the ejection instead of misplacing it.

Sources (`belt_source`):

- `encoder`: encoder counts, position = count / ticks_per_mm. Samples are the parts' counts at capture
  (camera/parts) and, where the driver reads the encoder, the driver's. Between samples the position is
  interpolated; after the newest one it is extrapolated at the last measured speed for at most `stale_ns`, then it is
  unknown (a stopped belt whose encoder nobody reads, or a dead encoder: the two cannot be told apart).
- `running_input`: a belt-running input (GPIO / Modbus discrete input / sim driver). The belt moves at
  `belt_speed_mm_s` while it runs and not at all while it is stopped; each transition is stamped where the driver
  can (GPIO interrupt, sim) or when it was read (Modbus: up to one tick late). While the driver cannot read the
  input (a PLC link loss) the position is unknown.

Unknown means: no pulse may be fired on a guess. The controller holds the parts' pulses and the stop-line.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass

NS_PER_S = 1_000_000_000
BELT_SOURCES = ("none", "encoder", "running_input")
# Encoder speed: the newest sample against the oldest one at most this much older (none: the previous one).
SPEED_SPAN_NS = 250_000_000


@dataclass(frozen=True)
class BeltReading:
    """What a driver knows about the belt since its previous reading (no I/O to produce it: the Modbus driver's
    values come from its last poll): running-input transitions (t_ns on the controller's clock, running),
    encoder samples (t_ns, count), and whether its inputs can be read at all."""

    running_edges: tuple[tuple[int, bool], ...] = ()
    encoder_counts: tuple[tuple[int, int], ...] = ()
    readable: bool = True


class BeltTracker:
    """Belt position over time: knots (t_ns, position_mm, speed_mm_s); linear between and after them."""

    def __init__(
        self,
        source: str,
        belt_speed_mm_s: float = 0.0,
        ticks_per_mm: float = 1.0,
        stale_ns: int = 500_000_000,
        history_ns: int = 60 * NS_PER_S,
        running: bool = True,
        start_ns: int = 0,
    ) -> None:
        if source not in BELT_SOURCES[1:]:
            raise ValueError(f"belt source {source!r} must be one of {BELT_SOURCES[1:]}")
        if source == "running_input" and belt_speed_mm_s <= 0:
            raise ValueError("belt tracking by a running input needs belt_speed_mm_s > 0")
        if ticks_per_mm <= 0 or stale_ns <= 0:
            raise ValueError(f"ticks_per_mm and stale time must be > 0, got {ticks_per_mm}, {stale_ns}")
        self.source = source
        self.speed_mm_s = belt_speed_mm_s
        self.ticks_per_mm = ticks_per_mm
        self.stale_ns = stale_ns
        self.history_ns = history_ns
        self._knots: deque[tuple[int, float, float]] = deque()
        self._times: deque[int] = deque()  # the knots' times, for bisect
        self.readable = True
        self.running_now = running
        self.stops = 0
        self.backwards = 0  # encoder counts that went backwards (reset): the history restarts
        if source == "running_input":
            self._add(start_ns, 0.0, belt_speed_mm_s if running else 0.0)

    # ------------------------------------------------------------ inputs

    def set_speed(self, mm_s: float, now_ns: int) -> None:
        """A new nominal speed (runtime parameter) from now on, for the running-input source."""
        if mm_s <= 0 or mm_s == self.speed_mm_s:
            return
        self.speed_mm_s = mm_s
        if self.source == "running_input" and self.running_now and (not self._knots or now_ns >= self._knots[-1][0]):
            self._add(now_ns, self._extrapolate(now_ns), mm_s)

    def update(self, reading: BeltReading) -> None:
        self.readable = reading.readable
        for t_ns, running in reading.running_edges:
            self.running(t_ns, running)
        for t_ns, count in reading.encoder_counts:
            self.encoder(t_ns, count)

    def running(self, t_ns: int, running: bool) -> None:
        """The belt-running input changed (or was read) at t_ns."""
        if self.source != "running_input" or (self._knots and t_ns < self._knots[-1][0]):
            return
        if running == self.running_now:
            return
        position = self._extrapolate(t_ns)
        self.running_now = running
        if not running:
            self.stops += 1
        self._add(t_ns, position, self.speed_mm_s if running else 0.0)

    def encoder(self, t_ns: int, count: int) -> None:
        """An encoder sample (count at t_ns); counts must grow with belt travel."""
        if self.source != "encoder" or count < 0:
            return
        position = count / self.ticks_per_mm
        if self._knots:
            last_t, last_pos, _ = self._knots[-1]
            if t_ns <= last_t:
                return
            if position < last_pos:  # reset or wrap: positions before it mean nothing now
                self._knots.clear()
                self._times.clear()
                self.backwards += 1
        speed = 0.0
        if self._knots:
            # the oldest sample of the last SPEED_SPAN_NS (after a gap: the previous one)
            i = min(bisect_left(self._times, t_ns - SPEED_SPAN_NS), len(self._knots) - 1)
            ref_t, ref_pos, _ = self._knots[i]
            speed = (position - ref_pos) * NS_PER_S / (t_ns - ref_t)
            if speed == 0.0 and self._knots[-1][2] > 0:
                self.stops += 1
        self._add(t_ns, position, speed)

    def _add(self, t_ns: int, position: float, speed: float) -> None:
        self._knots.append((t_ns, position, speed))
        self._times.append(t_ns)
        while len(self._knots) > 2 and self._knots[1][0] < t_ns - self.history_ns:
            self._knots.popleft()
            self._times.popleft()

    # ------------------------------------------------------------ queries

    def _extrapolate(self, t_ns: int) -> float:
        if not self._knots:
            return 0.0
        t0, p0, v0 = self._knots[-1]
        return p0 + v0 * (t_ns - t0) / NS_PER_S

    def known(self, now_ns: int) -> bool:
        """Whether the belt position now can be trusted."""
        if not self.readable or not self._knots:
            return False
        if self.source == "encoder":
            return now_ns - self._knots[-1][0] <= self.stale_ns
        return True

    def why_unknown(self, now_ns: int) -> str:
        if not self.readable:
            return "the belt input cannot be read (driver fault)"
        if not self._knots:
            return "no encoder sample yet"
        return f"no encoder sample for {(now_ns - self._knots[-1][0]) / 1e6:.0f} ms"

    def position_at(self, t_ns: int, now_ns: int) -> float | None:
        """The belt position at t_ns (past or now); None when it is not known (before the history, or stale)."""
        if not self._knots or t_ns < self._knots[0][0]:
            return None
        if t_ns >= self._knots[-1][0]:
            return self._extrapolate(t_ns) if self.known(now_ns) else None
        i = bisect_right(self._times, t_ns) - 1
        t0, p0, v0 = self._knots[i]
        if self.source == "encoder":  # between two samples: the line through them
            t1, p1, _ = self._knots[i + 1]
            return p0 + (p1 - p0) * (t_ns - t0) / (t1 - t0)
        return p0 + v0 * (t_ns - t0) / NS_PER_S

    def speed(self, now_ns: int) -> float | None:
        """Belt speed now, mm/s (0 = stopped); None when unknown."""
        if not self.known(now_ns):
            return None
        return self._knots[-1][2]

    def part_position(self, capture_ns: int, encoder_count: int, now_ns: int) -> float | None:
        """A part's place on the belt: the belt position when it was captured (its own encoder count with an
        encoder, else the tracked position at its capture time); None when that is not known."""
        if self.source == "encoder" and encoder_count >= 0:
            return encoder_count / self.ticks_per_mm
        return self.position_at(capture_ns, now_ns)

    def eta_ns(self, target_mm: float, now_ns: int) -> int | None:
        """When the belt position reaches target_mm at the current speed (in the past when it already has);
        None while the belt stands (before the target) or its position is unknown."""
        position = self.position_at(now_ns, now_ns)
        speed = self.speed(now_ns)
        if position is None or speed is None:
            return None
        remaining = target_mm - position
        if remaining <= 0:
            return now_ns + round(remaining / speed * NS_PER_S) if speed > 0 else now_ns
        if speed <= 0:
            return None
        return now_ns + round(remaining / speed * NS_PER_S)
