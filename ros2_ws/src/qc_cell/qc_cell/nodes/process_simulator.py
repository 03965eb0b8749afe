"""process_simulator node (demo and tests): simulated process/temperature, process/pressure and
process/vibration under a scenario (normal, drift, spikes, dropout), deterministic by seed.

The values come from qc_cell.fusion.process_model; sample n is taken at nominal time n / rate, so the
sequence does not depend on timer jitter. The scenario and its levels may be switched at run time
(`ros2 param set /process_simulator scenario drift`, or `python -m qc_cell.tools.param set ...` without ros2cli).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from geometry_msgs.msg import Vector3Stamped
from rclpy.node import Node
from sensor_msgs.msg import FluidPressure, Temperature

from qc_cell.fusion.params import PROCESS_SIMULATOR, simulator_config
from qc_cell.fusion.process_model import ProcessModel
from qc_cell.ros import qos
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters, handle_parameter_changes
from qc_cell.ros.time import steady_timer


class ProcessSimulatorNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("process_simulator", **kwargs)
        p = declare_parameters(self, PROCESS_SIMULATOR)
        rate_hz, vibration_rate_hz, self._frame_id = p["rate_hz"], p["vibration_rate_hz"], p["frame_id"]
        try:
            config = simulator_config(p)
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        self._model = ProcessModel(config)
        self._rate_hz = rate_hz
        self._vibration_rate_hz = vibration_rate_hz
        self._slow_index = 0
        self._vibration_index = 0
        handle_parameter_changes(self, PROCESS_SIMULATOR, self._apply_parameters)

        # SENSOR_OUTPUT (best effort, like most sensor drivers); sensor_fusion subscribes with SENSOR_INPUT.
        self._temperature_pub = self.create_publisher(Temperature, "process/temperature", qos.SENSOR_OUTPUT)
        self._pressure_pub = self.create_publisher(FluidPressure, "process/pressure", qos.SENSOR_OUTPUT)
        self._vibration_pub = self.create_publisher(Vector3Stamped, "process/vibration", qos.SENSOR_OUTPUT)
        steady_timer(self, 1.0 / rate_hz, self._publish_slow)
        steady_timer(self, 1.0 / vibration_rate_hz, self._publish_vibration)
        self.get_logger().info(f"process simulator: scenario {config.scenario}, seed {config.seed}")

    def _apply_parameters(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        """The new model config as a whole; ValueError (e.g. a dropout longer than its period) refuses it."""
        self._model.reconfigure(dataclasses.replace(self._model.config, **changed))

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
