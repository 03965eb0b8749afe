"""Fuses temperature, pressure and vibration samples into one process state: values, flags, anomaly score,
plus the events (maintenance trend, sensor silent, out of spec) that deserve an alert.

Times are receive times on the fusion node's clock (ns): staleness is about when we last heard a sensor,
whatever its own clock says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qc_cell.fusion.flags import SIGNALS, ProcessFlag, signal_flags
from qc_cell.fusion.robust_stats import RollingMedianMad
from qc_cell.fusion.signal_monitor import NS_PER_S, SignalMonitor, SignalStatus, SpecLimits
from qc_cell.fusion.trend import CusumTrend, TrendConfig, TrendStatus, TrendTransition
from qc_cell.fusion.vibration import VibrationWindow
from qc_contract.vocabulary import Severity


@dataclass(frozen=True)
class SignalConfig:
    spec: SpecLimits
    timeout_s: float  # silent longer than this -> stale
    min_scale: float  # noise floor for the robust z-score, in the signal's unit


@dataclass(frozen=True)
class FusionConfig:
    temperature: SignalConfig = field(
        default_factory=lambda: SignalConfig(SpecLimits(35.0, 55.0), timeout_s=2.0, min_scale=0.05)
    )
    pressure: SignalConfig = field(
        default_factory=lambda: SignalConfig(SpecLimits(550_000.0, 650_000.0), timeout_s=2.0, min_scale=100.0)
    )
    vibration: SignalConfig = field(
        default_factory=lambda: SignalConfig(SpecLimits(-math.inf, 2.0), timeout_s=1.0, min_scale=0.01)
    )
    stats_window: int = 100  # samples in the rolling median/MAD baseline
    stats_min_samples: int = 20  # no anomaly judgement before this many samples
    anomaly_z: float = 6.0  # robust |z| at which a signal is anomalous
    vibration_window_s: float = 1.0  # RMS window
    vibration_min_samples: int = 5  # samples needed in the window for an RMS
    vibration_rms_period_s: float = 0.1  # how often a new RMS value is derived (and judged)
    vibration_remove_dc: bool = True  # remove the per-axis mean (gravity, offset) before the RMS
    trend_interval_s: float = 1.0  # one RMS value per interval feeds the trend detector
    trend: TrendConfig = field(default_factory=TrendConfig)

    def __post_init__(self) -> None:
        if not self.vibration_rms_period_s > 0.0:
            raise ValueError(f"vibration RMS period must be > 0 s, got {self.vibration_rms_period_s}")
        if not self.trend_interval_s > 0.0:
            raise ValueError(f"trend interval must be > 0 s, got {self.trend_interval_s}")

    def signal(self, name: str) -> SignalConfig:
        return getattr(self, name)


@dataclass(frozen=True)
class FusionEvent:
    """Something to raise as an Alert (code as in Alert.code)."""

    severity: Severity
    code: str
    message: str


@dataclass(frozen=True)
class ProcessSnapshot:
    stamp_ns: int
    temperature_c: float
    pressure_pa: float
    vibration_rms: float
    anomaly_score: float
    flags: ProcessFlag
    signals: dict[str, SignalStatus]
    trend: TrendStatus

    @property
    def out_of_spec(self) -> bool:
        return any(s.out_of_spec for s in self.signals.values())

    @property
    def stale(self) -> bool:
        return any(s.stale for s in self.signals.values())


class ProcessFusion:
    def __init__(self, config: FusionConfig, now_ns: int) -> None:
        self.config = config
        self._monitors = {name: self._monitor(name, now_ns) for name in SIGNALS}
        self._vibration = VibrationWindow(
            config.vibration_window_s, config.vibration_min_samples, config.vibration_remove_dc
        )
        self._trend = CusumTrend(config.trend)
        self._rms_period_ns = int(config.vibration_rms_period_s * NS_PER_S)
        self._trend_interval_ns = int(config.trend_interval_s * NS_PER_S)
        self._last_rms_ns: int | None = None
        self._last_trend_ns: int | None = None
        self._events: list[FusionEvent] = []
        self._alerting: dict[str, bool] = {}  # condition key -> currently alerted

    def _monitor(self, name: str, now_ns: int) -> SignalMonitor:
        cfg = self.config.signal(name)
        stats = RollingMedianMad(self.config.stats_window, self.config.stats_min_samples, cfg.min_scale)
        return SignalMonitor(name, cfg.spec, cfg.timeout_s, stats, self.config.anomaly_z, now_ns)

    def set_spec(self, name: str, spec: SpecLimits) -> None:
        """Change a signal's spec limits at run time (validated by SpecLimits)."""
        self._monitors[name].spec = spec

    def add_temperature(self, celsius: float, t_ns: int) -> bool:
        return self._monitors["temperature"].update(celsius, t_ns)

    def add_pressure(self, pascal: float, t_ns: int) -> bool:
        return self._monitors["pressure"].update(pascal, t_ns)

    def add_vibration(self, x: float, y: float, z: float, t_ns: int) -> bool:
        """One acceleration sample (m/s^2). A new RMS is derived at most every vibration_rms_period_s."""
        monitor = self._monitors["vibration"]
        if not self._vibration.add(t_ns, x, y, z):
            monitor.reject()
            return False
        monitor.touch(t_ns)
        if self._last_rms_ns is not None and t_ns - self._last_rms_ns < self._rms_period_ns:
            return True
        rms = self._vibration.rms()
        if math.isnan(rms):
            return True
        self._last_rms_ns = t_ns
        monitor.update(rms, t_ns)
        if self._last_trend_ns is None or t_ns - self._last_trend_ns >= self._trend_interval_ns:
            self._last_trend_ns = t_ns
            self._on_trend(self._trend.update(rms), rms)
        return True

    def _on_trend(self, transition: TrendTransition | None, rms: float) -> None:
        if transition is None:
            return
        status = self._trend.status()
        if transition is TrendTransition.RAISED:
            self._events.append(
                FusionEvent(
                    Severity.WARN,
                    "VIBRATION_TREND",
                    f"vibration RMS trending up: {rms:.3f} m/s^2 against a baseline of {status.mean:.3f} "
                    f"(sigma {status.sigma:.3f}); CUSUM {status.cusum:.1f} > {self.config.trend.h_sigma:g}: "
                    "plan maintenance",
                )
            )
        else:
            self._events.append(
                FusionEvent(Severity.INFO, "VIBRATION_TREND_CLEARED", f"vibration RMS back near baseline: {rms:.3f}")
            )

    def evaluate(self, now_ns: int) -> ProcessSnapshot:
        """The current process state; also queues alert events for conditions that started or ended."""
        statuses = {name: monitor.status(now_ns) for name, monitor in self._monitors.items()}
        trend = self._trend.status()
        flags = ProcessFlag(0)
        for name, status in statuses.items():
            out_flag, stale_flag, anomaly_flag = signal_flags(name)
            if status.out_of_spec:
                flags |= out_flag
            if status.stale:
                flags |= stale_flag
            if status.anomaly:
                flags |= anomaly_flag
            self._edge_alerts(name, status, now_ns)
        if trend.active:
            flags |= ProcessFlag.VIBRATION_TREND
        return ProcessSnapshot(
            stamp_ns=now_ns,
            temperature_c=statuses["temperature"].value,
            pressure_pa=statuses["pressure"].value,
            vibration_rms=statuses["vibration"].value,
            anomaly_score=max(s.score for s in statuses.values()),
            flags=flags,
            signals=statuses,
            trend=trend,
        )

    def _edge_alerts(self, name: str, status: SignalStatus, now_ns: int) -> None:
        monitor = self._monitors[name]
        silent = monitor.silent_past_grace(now_ns)
        if self._edge(f"{name}.stale", silent):
            if silent:
                detail = f"silent for {status.age_s:.1f} s" if monitor.heard else "never heard since start-up"
                timeout = monitor.timeout_ns / NS_PER_S
                message = f"{name} sensor {detail} (timeout {timeout:g} s): process state is stale"
                self._events.append(FusionEvent(Severity.WARN, "SENSOR_STALE", message))
            else:
                self._events.append(FusionEvent(Severity.INFO, "SENSOR_RECOVERED", f"{name} sensor reporting again"))
        if self._edge(f"{name}.spec", status.out_of_spec):
            spec = monitor.spec
            if status.out_of_spec:
                message = f"{name} {status.value:.6g} outside spec [{spec.low:g}, {spec.high:g}]"
                self._events.append(FusionEvent(Severity.WARN, "PROCESS_OUT_OF_SPEC", message))
            else:
                self._events.append(FusionEvent(Severity.INFO, "PROCESS_IN_SPEC", f"{name} back within spec"))

    def _edge(self, key: str, condition: bool) -> bool:
        """True when `condition` differs from its last evaluated value (first evaluation: only if true)."""
        previous = self._alerting.get(key, False)
        self._alerting[key] = condition
        return condition != previous

    def pop_events(self) -> list[FusionEvent]:
        events, self._events = self._events, []
        return events
