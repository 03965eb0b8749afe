"""process_simulator node (demo and tests): simulated process/temperature, process/pressure and
process/vibration under a scenario (normal, drift, spikes, dropout), deterministic by seed.

The values come from qc_cell.fusion.process_model; sample n is taken at nominal time n / rate, so the
sequence does not depend on timer jitter. The scenario and its levels may be switched at run time
(`ros2 param set /process_simulator scenario drift`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from geometry_msgs.msg import Vector3Stamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import FluidPressure, Temperature

from qc_cell.fusion.process_model import DROPOUT_SIGNALS, SCENARIOS, ProcessModel, SimulatorConfig
from qc_cell.ros import qos
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare

# SimulatorConfig field -> (description, range); all may change at run time except the seed.
MODEL_PARAMETERS: dict[str, tuple[str, tuple[float, float] | None]] = {
    "temperature_c": ("nominal temperature, degC", (-273.0, 2000.0)),
    "temperature_noise_c": ("temperature noise sigma, degC", (0.0, 100.0)),
    "pressure_pa": ("nominal pressure, Pa", (0.0, 1e9)),
    "pressure_noise_pa": ("pressure noise sigma, Pa", (0.0, 1e8)),
    "vibration_rms": ("nominal vibration AC RMS, m/s^2 (gravity on z comes on top)", (0.0, 1e4)),
    "drift_start_s": ("drift scenario: seconds after start before drifting", (0.0, 1e6)),
    "temperature_drift_c_per_min": ("drift scenario: temperature rise, degC/min", (-1e3, 1e3)),
    "vibration_drift_per_min": ("drift scenario: vibration RMS growth, m/s^2/min", (-1e3, 1e3)),
    "spike_probability": ("spikes scenario: spike probability per sample and signal", (0.0, 1.0)),
    "spike_temperature_c": ("spikes scenario: temperature spike, degC", (-1e3, 1e3)),
    "spike_pressure_pa": ("spikes scenario: pressure spike, Pa", (-1e8, 1e8)),
    "spike_vibration_factor": ("spikes scenario: vibration spike multiplier", (0.0, 1e4)),
    "dropout_period_s": ("dropout scenario: cycle length, s", (0.01, 1e6)),
    "dropout_duration_s": ("dropout scenario: silent time at the end of each cycle, s", (0.001, 1e6)),
}
CHOICE_PARAMETERS = {"scenario": SCENARIOS, "dropout_signal": DROPOUT_SIGNALS}


class ProcessSimulatorNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("process_simulator", **kwargs)
        defaults = SimulatorConfig()
        values: dict[str, Any] = {
            "scenario": declare(self, "scenario", defaults.scenario, "operating scenario", choices=SCENARIOS),
            "dropout_signal": declare(
                self,
                "dropout_signal",
                defaults.dropout_signal,
                "dropout scenario: silent signal",
                choices=DROPOUT_SIGNALS,
            ),
            "seed": declare(
                self,
                "seed",
                defaults.seed,
                "random seed (same seed, same samples)",
                range=(0, 2**31 - 1),
                read_only=True,
            ),
        }
        for name, (description, value_range) in MODEL_PARAMETERS.items():
            values[name] = declare(self, name, float(getattr(defaults, name)), description, range=value_range)
        rate_hz = declare(
            self, "rate_hz", 10.0, "temperature and pressure sample rate", range=(0.1, 1000.0), read_only=True
        )
        vibration_rate_hz = declare(
            self, "vibration_rate_hz", 100.0, "vibration sample rate", range=(1.0, 5000.0), read_only=True
        )
        self._frame_id = declare(self, "frame_id", "process_sensors", "header.frame_id of the samples", read_only=True)
        try:
            config = SimulatorConfig(**values)
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        self._model = ProcessModel(config)
        self._rate_hz = rate_hz
        self._vibration_rate_hz = vibration_rate_hz
        self._slow_index = 0
        self._vibration_index = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # SENSOR_OUTPUT (best effort, like most sensor drivers); sensor_fusion subscribes with SENSOR_INPUT.
        self._temperature_pub = self.create_publisher(Temperature, "process/temperature", qos.SENSOR_OUTPUT)
        self._pressure_pub = self.create_publisher(FluidPressure, "process/pressure", qos.SENSOR_OUTPUT)
        self._vibration_pub = self.create_publisher(Vector3Stamped, "process/vibration", qos.SENSOR_OUTPUT)
        self.create_timer(1.0 / rate_hz, self._publish_slow)
        self.create_timer(1.0 / vibration_rate_hz, self._publish_vibration)
        self.get_logger().info(f"process simulator: scenario {config.scenario}, seed {config.seed}")

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in MODEL_PARAMETERS or p.name in CHOICE_PARAMETERS}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            config = dataclasses.replace(self._model.config, **changes)  # validates choices and ranges together
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        # The node's only on-set callback: success means accepted, so the new config applies as a whole.
        self._model.reconfigure(config)
        self.get_logger().info(f"simulator reconfigured: {changes}")
        return SetParametersResult(successful=True)

    def _header(self, msg) -> None:
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self._frame_id

    def _publish_slow(self) -> None:
        t_s = self._slow_index / self._rate_hz
        self._slow_index += 1
        cfg = self._model.config
        temperature = self._model.temperature(t_s)
        if temperature is not None:
            msg = Temperature(temperature=temperature, variance=cfg.temperature_noise_c**2)
            self._header(msg)
            self._temperature_pub.publish(msg)
        pressure = self._model.pressure(t_s)
        if pressure is not None:
            msg = FluidPressure(fluid_pressure=pressure, variance=cfg.pressure_noise_pa**2)
            self._header(msg)
            self._pressure_pub.publish(msg)

    def _publish_vibration(self) -> None:
        t_s = self._vibration_index / self._vibration_rate_hz
        self._vibration_index += 1
        sample = self._model.vibration(t_s)
        if sample is None:
            return
        msg = Vector3Stamped()
        self._header(msg)
        msg.vector.x, msg.vector.y, msg.vector.z = sample
        self._vibration_pub.publish(msg)


def main() -> int:
    return run(ProcessSimulatorNode)


if __name__ == "__main__":
    raise SystemExit(main())
