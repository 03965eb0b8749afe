"""One process signal: latest value, spec limits, staleness and anomaly against its own recent behaviour."""

from __future__ import annotations

import math
from dataclasses import dataclass

from qc_cell.fusion.robust_stats import RollingMedianMad

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SpecLimits:
    """Allowed range of a signal; an open side is -inf / +inf."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if math.isnan(self.low) or math.isnan(self.high) or not self.low < self.high:
            raise ValueError(f"spec limits need low < high, got low={self.low}, high={self.high}")

    @property
    def width(self) -> float:
        """Scale for 'how far outside': the span, or the finite limit's magnitude for a one-sided spec."""
        if math.isfinite(self.low) and math.isfinite(self.high):
            return self.high - self.low
        finite = self.high if math.isfinite(self.high) else self.low
        return abs(finite) if math.isfinite(finite) and finite != 0.0 else 1.0

    def excess(self, value: float) -> float:
        """0 inside the limits, else the distance beyond the nearest limit divided by `width`."""
        if value > self.high:
            return (value - self.high) / self.width
        if value < self.low:
            return (self.low - value) / self.width
        return 0.0


@dataclass(frozen=True)
class SignalStatus:
    name: str
    value: float  # latest value (NaN if none yet)
    age_s: float  # time since the last valid sample (inf if none yet)
    stale: bool  # silent longer than the timeout, or never heard: never treated as normal
    out_of_spec: bool
    anomaly: bool  # robust |z| >= threshold while within spec
    zscore: float
    score: float  # 0 nominal; >= 1 anomalous, out of spec or stale
    invalid_samples: int  # NaN/inf samples rejected so far


class SignalMonitor:
    """Tracks one signal. Times are receive times in ns on the fusion node's clock."""

    def __init__(
        self,
        name: str,
        spec: SpecLimits,
        timeout_s: float,
        stats: RollingMedianMad,
        anomaly_z: float,
        created_ns: int,
    ) -> None:
        if not timeout_s > 0.0:
            raise ValueError(f"{name}: timeout must be > 0 s, got {timeout_s}")
        if not anomaly_z > 0.0:
            raise ValueError(f"{name}: anomaly z threshold must be > 0, got {anomaly_z}")
        self.name = name
        self.spec = spec
        self.timeout_ns = int(timeout_s * NS_PER_S)
        self.anomaly_z = anomaly_z
        self.created_ns = created_ns
        self._stats = stats
        self._value = math.nan
        self._z = 0.0
        self._last_seen_ns: int | None = None
        self.invalid_samples = 0

    @property
    def heard(self) -> bool:
        return self._last_seen_ns is not None

    def touch(self, t_ns: int) -> None:
        """The sensor is alive (a valid raw sample arrived), even if no new value is derived yet."""
        if self._last_seen_ns is None or t_ns > self._last_seen_ns:
            self._last_seen_ns = t_ns

    def reject(self) -> None:
        """A NaN/inf sample: counted, and it does not refresh liveness, so a sensor sending only garbage goes stale."""
        self.invalid_samples += 1

    def update(self, value: float, t_ns: int) -> bool:
        """A new value. Returns False (and counts it) if the value is not finite."""
        if not math.isfinite(value):
            self.reject()
            return False
        self._z = self._stats.zscore(value)  # against the baseline before this sample
        self._stats.add(value)
        self._value = value
        self.touch(t_ns)
        return True

    def is_stale(self, now_ns: int) -> bool:
        return self._last_seen_ns is None or now_ns - self._last_seen_ns > self.timeout_ns

    def silent_past_grace(self, now_ns: int) -> bool:
        """Stale, and worth an alert: never heard within one timeout after start-up is still start-up."""
        if not self.is_stale(now_ns):
            return False
        return self.heard or now_ns - self.created_ns > self.timeout_ns

    def status(self, now_ns: int) -> SignalStatus:
        stale = self.is_stale(now_ns)
        has_value = math.isfinite(self._value)
        out_of_spec = not stale and has_value and self.spec.excess(self._value) > 0.0
        z = self._z if has_value and not stale else 0.0
        anomaly = not stale and not out_of_spec and abs(z) >= self.anomaly_z
        score = abs(z) / self.anomaly_z
        if out_of_spec:
            score = max(score, 1.0 + self.spec.excess(self._value))
        if stale:
            score = max(score, 1.0)
        age_s = math.inf if self._last_seen_ns is None else (now_ns - self._last_seen_ns) / NS_PER_S
        return SignalStatus(
            name=self.name,
            value=self._value,
            age_s=age_s,
            stale=stale,
            out_of_spec=out_of_spec,
            anomaly=anomaly,
            zscore=z,
            score=score,
            invalid_samples=self.invalid_samples,
        )
