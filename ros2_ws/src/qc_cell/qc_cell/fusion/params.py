"""Parameters of sensor_fusion and process_simulator (specs: qc_cell.params_spec) and the configs they make."""

from __future__ import annotations

import math
from typing import Any

from qc_cell.fusion.flags import SIGNALS
from qc_cell.fusion.process_fusion import FusionConfig, SignalConfig
from qc_cell.fusion.process_model import DROPOUT_SIGNALS, SCENARIOS, SimulatorConfig
from qc_cell.fusion.signal_monitor import SpecLimits
from qc_cell.fusion.trend import TrendConfig
from qc_cell.params_spec import NodeParams, Param

# signal -> (low, high) spec-limit parameters; these may change at run time, everything else of fusion is read-only.
SPEC_PARAMETERS = {
    "temperature": ("temperature_min_c", "temperature_max_c"),
    "pressure": ("pressure_min_pa", "pressure_max_pa"),
    "vibration": (None, "vibration_max_rms"),
}
NOISE_FLOOR_PARAMETERS = {
    "temperature": "temperature_noise_floor_c",
    "pressure": "pressure_noise_floor_pa",
    "vibration": "vibration_noise_floor",
}
_TIMEOUT = "silent longer -> stale, s"

SENSOR_FUSION = NodeParams(
    "sensor_fusion",
    "process signals in, process/state (flags, anomaly score) and maintenance alerts out",
    (
        Param("temperature_min_c", 35.0, "temperature spec low, degC", range=(-273.0, 2000.0), runtime=True),
        Param("temperature_max_c", 55.0, "temperature spec high, degC", range=(-273.0, 2000.0), runtime=True),
        Param("pressure_min_pa", 550_000.0, "pressure spec low, Pa", range=(0.0, 1e9), runtime=True),
        Param("pressure_max_pa", 650_000.0, "pressure spec high, Pa", range=(0.0, 1e9), runtime=True),
        Param("vibration_max_rms", 2.0, "vibration RMS spec, m/s^2", range=(1e-6, 1e4), runtime=True),
        Param("temperature_timeout_s", 2.0, _TIMEOUT, range=(0.01, 3600.0)),
        Param("pressure_timeout_s", 2.0, _TIMEOUT, range=(0.01, 3600.0)),
        Param("vibration_timeout_s", 1.0, _TIMEOUT, range=(0.01, 3600.0)),
        Param("temperature_noise_floor_c", 0.05, "smallest robust sigma, degC", range=(1e-9, 1e3)),
        Param("pressure_noise_floor_pa", 100.0, "smallest robust sigma, Pa", range=(1e-9, 1e7)),
        Param("vibration_noise_floor", 0.01, "smallest robust sigma of RMS, m/s^2", range=(1e-9, 1e3)),
        Param("trend_baseline_rms", 0.0, "healthy vibration RMS, m/s^2 (0 = learn it)", range=(0.0, 1e4)),
        Param("trend_baseline_samples", 300, "RMS values learned as baseline", range=(3, 1_000_000)),
        Param("trend_k_sigma", 0.5, "CUSUM allowance, sigmas", range=(0.0, 100.0)),
        Param("trend_h_sigma", 15.0, "CUSUM alarm threshold, sigmas", range=(0.01, 10_000.0)),
        Param("trend_min_sigma", 0.01, "smallest baseline sigma, m/s^2", range=(1e-9, 1e3)),
        Param("stats_window", 100, "samples in the median/MAD baseline", range=(3, 100_000)),
        Param("stats_min_samples", 20, "samples before anomalies are judged", range=(1, 100_000)),
        Param("anomaly_z", 6.0, "robust |z| of an anomaly", range=(0.5, 1000.0)),
        Param("vibration_window_s", 1.0, "vibration RMS window, s", range=(0.01, 600.0)),
        Param("vibration_min_samples", 5, "samples needed for an RMS", range=(2, 1_000_000)),
        Param("vibration_rms_period_s", 0.1, "RMS update period, s", range=(0.001, 60.0)),
        Param("vibration_remove_dc", True, "remove per-axis mean (gravity) before RMS"),
        Param("trend_interval_s", 1.0, "one RMS value per interval feeds the CUSUM, s", range=(0.001, 3600.0)),
        Param("publish_period_s", 0.2, "process/state period (also on change)", range=(0.01, 60.0)),
        Param("check_period_s", 0.05, "staleness/flag check period (at most publish_period_s)", range=(0.005, 10.0)),
        Param("diagnostics_period_s", 1.0, "/diagnostics period", range=(0.1, 60.0)),
    ),
)


def spec_from(values: dict[str, Any], signal: str) -> SpecLimits:
    low_name, high_name = SPEC_PARAMETERS[signal]
    low = values[low_name] if low_name else -math.inf
    try:
        return SpecLimits(low, values[high_name])
    except ValueError as exc:
        raise ValueError(f"{signal}: {low_name or 'lower limit'} must be below {high_name} ({exc})") from exc


def fusion_config(values: dict[str, Any]) -> FusionConfig:
    """The core's config from the parameter values (ValueError when they do not fit)."""
    signals = {
        name: SignalConfig(
            spec_from(values, name),
            values[f"{name}_timeout_s"],
            values[NOISE_FLOOR_PARAMETERS[name]],
        )
        for name in SIGNALS
    }
    baseline_rms = values["trend_baseline_rms"]
    trend = TrendConfig(
        baseline_samples=values["trend_baseline_samples"],
        k_sigma=values["trend_k_sigma"],
        h_sigma=values["trend_h_sigma"],
        min_sigma=values["trend_min_sigma"],
        baseline=baseline_rms if baseline_rms > 0.0 else math.nan,
    )
    return FusionConfig(
        **signals,
        stats_window=values["stats_window"],
        stats_min_samples=values["stats_min_samples"],
        anomaly_z=values["anomaly_z"],
        vibration_window_s=values["vibration_window_s"],
        vibration_min_samples=values["vibration_min_samples"],
        vibration_rms_period_s=values["vibration_rms_period_s"],
        vibration_remove_dc=values["vibration_remove_dc"],
        trend_interval_s=values["trend_interval_s"],
        trend=trend,
    )


_SIM = SimulatorConfig()
# SimulatorConfig fields that may change at run time (the model is reconfigured as a whole); the seed may not.
SIMULATOR_MODEL = (
    Param("scenario", _SIM.scenario, "operating scenario", choices=SCENARIOS, runtime=True),
    Param(
        "dropout_signal", _SIM.dropout_signal, "dropout scenario: silent signal", choices=DROPOUT_SIGNALS, runtime=True
    ),
    Param("seed", _SIM.seed, "random seed (same seed, same samples)", range=(0, 2**31 - 1)),
    *(
        Param(name, float(getattr(_SIM, name)), description, range=value_range, runtime=True)
        for name, description, value_range in (
            ("temperature_c", "nominal temperature, degC", (-273.0, 2000.0)),
            ("temperature_noise_c", "temperature noise sigma, degC", (0.0, 100.0)),
            ("pressure_pa", "nominal pressure, Pa", (0.0, 1e9)),
            ("pressure_noise_pa", "pressure noise sigma, Pa", (0.0, 1e8)),
            ("vibration_rms", "nominal vibration AC RMS, m/s^2 (gravity on z comes on top)", (0.0, 1e4)),
            ("drift_start_s", "drift scenario: seconds after start before drifting", (0.0, 1e6)),
            ("temperature_drift_c_per_min", "drift scenario: temperature rise, degC/min", (-1e3, 1e3)),
            ("vibration_drift_per_min", "drift scenario: vibration RMS growth, m/s^2/min", (-1e3, 1e3)),
            ("spike_probability", "spikes scenario: spike probability per sample and signal", (0.0, 1.0)),
            ("spike_temperature_c", "spikes scenario: temperature spike, degC", (-1e3, 1e3)),
            ("spike_pressure_pa", "spikes scenario: pressure spike, Pa", (-1e8, 1e8)),
            ("spike_vibration_factor", "spikes scenario: vibration spike multiplier", (0.0, 1e4)),
            ("dropout_period_s", "dropout scenario: cycle length, s", (0.01, 1e6)),
            ("dropout_duration_s", "dropout scenario: silent time at the end of each cycle, s", (0.001, 1e6)),
        )
    ),
)
PROCESS_SIMULATOR = NodeParams(
    "process_simulator",
    "simulated process signals under a scenario (demo and tests)",
    (
        *SIMULATOR_MODEL,
        Param("rate_hz", 10.0, "temperature and pressure sample rate", range=(0.1, 1000.0)),
        Param("vibration_rate_hz", 100.0, "vibration sample rate", range=(1.0, 5000.0)),
        Param("frame_id", "process_sensors", "header.frame_id of the samples"),
    ),
)


def simulator_config(values: dict[str, Any]) -> SimulatorConfig:
    """SimulatorConfig from the parameter values (ValueError when they do not fit together)."""
    return SimulatorConfig(**{p.name: values[p.name] for p in SIMULATOR_MODEL})
