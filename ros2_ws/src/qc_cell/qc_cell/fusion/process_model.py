"""Simulated process sensors for the demo and the tests: temperature, pressure and 3-axis vibration under
four scenarios. Deterministic by seed: sample n of a signal depends only on (seed, signal, n, scenario), not on
wall-clock timing, so a run can be replayed exactly.

Scenarios:
- normal: nominal values with Gaussian noise.
- drift: from `drift_start_s`, temperature rises linearly and vibration RMS grows (a wearing machine).
- spikes: like normal, with isolated spikes (probability per sample) on every signal.
- dropout: like normal, but `dropout_signal` goes silent for `dropout_duration_s` every `dropout_period_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCENARIOS: tuple[str, ...] = ("normal", "drift", "spikes", "dropout")
DROPOUT_SIGNALS: tuple[str, ...] = ("temperature", "pressure", "vibration", "all")
GRAVITY_M_S2 = 9.80665
_SIGNAL_STREAM = {"temperature": 0, "pressure": 1, "vibration": 2}


@dataclass(frozen=True)
class SimulatorConfig:
    scenario: str = "normal"
    seed: int = 0
    temperature_c: float = 45.0
    temperature_noise_c: float = 0.1
    pressure_pa: float = 600_000.0
    pressure_noise_pa: float = 500.0
    vibration_rms: float = 0.5  # AC RMS of the acceleration magnitude, m/s^2 (gravity on z comes on top)
    drift_start_s: float = 10.0
    temperature_drift_c_per_min: float = 3.0
    vibration_drift_per_min: float = 0.3  # growth of vibration RMS, m/s^2 per minute
    spike_probability: float = 0.01  # per sample and signal
    spike_temperature_c: float = 8.0
    spike_pressure_pa: float = 30_000.0
    spike_vibration_factor: float = 8.0  # a vibration spike multiplies the sample's AC part
    dropout_signal: str = "temperature"
    dropout_period_s: float = 20.0
    dropout_duration_s: float = 5.0

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario {self.scenario!r} must be one of {list(SCENARIOS)}")
        if self.dropout_signal not in DROPOUT_SIGNALS:
            raise ValueError(f"dropout_signal {self.dropout_signal!r} must be one of {list(DROPOUT_SIGNALS)}")
        if not 0.0 <= self.spike_probability <= 1.0:
            raise ValueError(f"spike_probability must be in [0, 1], got {self.spike_probability}")
        if not 0.0 < self.dropout_duration_s < self.dropout_period_s:
            raise ValueError(
                f"dropout needs 0 < dropout_duration_s ({self.dropout_duration_s}) < dropout_period_s "
                f"({self.dropout_period_s})"
            )
        for name in ("temperature_noise_c", "pressure_noise_pa", "vibration_rms", "drift_start_s"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class ProcessModel:
    """Generates sample n of each signal at nominal time t = n / rate."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._rngs = {name: np.random.default_rng([config.seed, stream]) for name, stream in _SIGNAL_STREAM.items()}

    def reconfigure(self, config: SimulatorConfig) -> None:
        """Switch scenario or levels; random streams continue (same seed -> same sequence of draws)."""
        self.config = config

    def dropped(self, signal: str, t_s: float) -> bool:
        cfg = self.config
        if cfg.scenario != "dropout" or cfg.dropout_signal not in (signal, "all"):
            return False
        return t_s % cfg.dropout_period_s >= cfg.dropout_period_s - cfg.dropout_duration_s

    def _drift_minutes(self, t_s: float) -> float:
        cfg = self.config
        return max(0.0, t_s - cfg.drift_start_s) / 60.0 if cfg.scenario == "drift" else 0.0

    def _spike(self, rng: np.random.Generator) -> bool:
        # Always draw, so the noise stream does not depend on the scenario.
        draw = rng.random()
        return self.config.scenario == "spikes" and draw < self.config.spike_probability

    def temperature(self, t_s: float) -> float | None:
        cfg, rng = self.config, self._rngs["temperature"]
        value = cfg.temperature_c + cfg.temperature_noise_c * rng.standard_normal()
        value += cfg.temperature_drift_c_per_min * self._drift_minutes(t_s)
        if self._spike(rng):
            value += cfg.spike_temperature_c
        return None if self.dropped("temperature", t_s) else float(value)

    def pressure(self, t_s: float) -> float | None:
        cfg, rng = self.config, self._rngs["pressure"]
        value = cfg.pressure_pa + cfg.pressure_noise_pa * rng.standard_normal()
        if self._spike(rng):
            value += cfg.spike_pressure_pa
        return None if self.dropped("pressure", t_s) else float(value)

    def vibration(self, t_s: float) -> tuple[float, float, float] | None:
        """Acceleration (x, y, z) in m/s^2: white noise with the configured AC RMS, gravity on z."""
        cfg, rng = self.config, self._rngs["vibration"]
        rms = cfg.vibration_rms + cfg.vibration_drift_per_min * self._drift_minutes(t_s)
        ac = rng.standard_normal(3) * (rms / math.sqrt(3.0))
        if self._spike(rng):
            ac *= cfg.spike_vibration_factor
        if self.dropped("vibration", t_s):
            return None
        return float(ac[0]), float(ac[1]), float(ac[2] + GRAVITY_M_S2)
