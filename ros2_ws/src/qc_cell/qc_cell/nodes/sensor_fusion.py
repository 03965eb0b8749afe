"""sensor_fusion node: process/temperature, process/pressure, process/vibration in; process/state (latched,
periodic and on change), alerts (maintenance trend, silent sensor, out of spec) and /diagnostics out.

Sample callbacks only feed the core; a check timer evaluates staleness and flags and publishes on change,
so a burst of vibration samples costs no more than appending to a window. The logic is in qc_cell.fusion.
"""

from __future__ import annotations

from typing import Any

from geometry_msgs.msg import Vector3Stamped
from rclpy.node import Node
from sensor_msgs.msg import FluidPressure, Temperature

from qc_cell.fusion.flags import SIGNALS
from qc_cell.fusion.params import SENSOR_FUSION, fusion_config, spec_from
from qc_cell.fusion.process_fusion import FusionEvent, ProcessFusion, ProcessSnapshot
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.alerts import AlertPublisher
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare_parameters, handle_parameter_changes
from qc_cell.ros.subscriptions import Subscriptions
from qc_cell.ros.time import from_ns, steady_timer
from qc_interfaces.msg import ProcessState


class SensorFusionNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sensor_fusion", **kwargs)
        p = declare_parameters(self, SENSOR_FUSION)
        try:
            config = fusion_config(p)
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        publish_period_s, check_period_s = p["publish_period_s"], p["check_period_s"]
        if check_period_s > publish_period_s:
            raise ParameterError(
                f"check_period_s ({check_period_s}) must not exceed publish_period_s ({publish_period_s})"
            )

        self._fusion = ProcessFusion(config, self._now_ns())
        # Periodic publication on the check timer's grid: half a tick early rather than a whole tick late.
        self._publish_period_ns = int((publish_period_s - check_period_s / 2) * 1e9)
        self._last_published: tuple[int, int] | None = None  # (stamp, flags)
        self._snapshot: ProcessSnapshot | None = None
        self._alerts_sent = 0
        handle_parameter_changes(self, SENSOR_FUSION, self._apply_spec_limits)

        self._state_pub = self.create_publisher(ProcessState, "process/state", qos.LATCHED)
        self._alerts = AlertPublisher(self)
        self._diag_pub = diagnostics.create_publisher(self)
        subscriptions = Subscriptions(self, self._alerts, self._diag_pub)
        # SENSOR_INPUT (best effort) matches best-effort and reliable sensor drivers alike.
        subscriptions.create(Temperature, "process/temperature", self._on_temperature, qos.SENSOR_INPUT)
        subscriptions.create(FluidPressure, "process/pressure", self._on_pressure, qos.SENSOR_INPUT)
        subscriptions.create(Vector3Stamped, "process/vibration", self._on_vibration, qos.SENSOR_INPUT)
        steady_timer(self, check_period_s, self._on_check)
        steady_timer(self, p["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info("sensor fusion ready")

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _apply_spec_limits(self, values: dict[str, Any], changed: dict[str, Any]) -> None:
        """The limits of every signal as a whole; ValueError (a minimum not below its maximum) refuses the change."""
        specs = {signal: spec_from(values, signal) for signal in SIGNALS}
        for signal, spec in specs.items():
            self._fusion.set_spec(signal, spec)

    def _on_temperature(self, msg: Temperature) -> None:
        if not self._fusion.add_temperature(msg.temperature, self._now_ns()):
            self.get_logger().warning(
                f"invalid temperature sample {msg.temperature} ignored", throttle_duration_sec=5.0
            )

    def _on_pressure(self, msg: FluidPressure) -> None:
        if not self._fusion.add_pressure(msg.fluid_pressure, self._now_ns()):
            self.get_logger().warning(
                f"invalid pressure sample {msg.fluid_pressure} ignored", throttle_duration_sec=5.0
            )

    def _on_vibration(self, msg: Vector3Stamped) -> None:
        v = msg.vector
        if not self._fusion.add_vibration(v.x, v.y, v.z, self._now_ns()):
            self.get_logger().warning(
                f"invalid vibration sample ({v.x}, {v.y}, {v.z}) ignored", throttle_duration_sec=5.0
            )

    def _on_check(self) -> None:
        now_ns = self._now_ns()
        snap = self._fusion.evaluate(now_ns)
        self._snapshot = snap
        for event in self._fusion.pop_events():
            self._raise(event)
        last = self._last_published
        if last is None or last[1] != int(snap.flags) or now_ns - last[0] >= self._publish_period_ns:
            self._publish_state(snap)

    def _publish_state(self, snap: ProcessSnapshot) -> None:
        msg = ProcessState()
        msg.header.stamp = from_ns(snap.stamp_ns)
        msg.temperature_c = snap.temperature_c
        msg.pressure_pa = snap.pressure_pa
        msg.vibration_rms = snap.vibration_rms
        msg.anomaly_score = snap.anomaly_score
        msg.flags = int(snap.flags)
        msg.out_of_spec = snap.out_of_spec
        msg.stale = snap.stale
        self._state_pub.publish(msg)
        self._last_published = (snap.stamp_ns, int(snap.flags))

    def _raise(self, event: FusionEvent) -> None:
        self._alerts.send(int(event.severity), event.code, event.message, log=True)
        self._alerts_sent += 1

    def _publish_diagnostics(self) -> None:
        snap = self._snapshot
        if snap is None:
            return
        statuses = []
        for name, sig in snap.signals.items():
            if sig.stale:
                level, message = diagnostics.STALE, "stale: no valid sample within the timeout"
            elif sig.out_of_spec:
                level, message = diagnostics.ERROR, "out of spec"
            elif sig.anomaly:
                level, message = diagnostics.WARN, f"anomalous (robust z {sig.zscore:.1f})"
            else:
                level, message = diagnostics.OK, "ok"
            values = {
                "value": f"{sig.value:.6g}",
                "age_s": f"{sig.age_s:.3f}",
                "zscore": f"{sig.zscore:.2f}",
                "score": f"{sig.score:.2f}",
                "invalid_samples": sig.invalid_samples,
            }
            statuses.append(diagnostics.status(f"{self.get_name()}: {name}", level, message, values))
        trend = snap.trend
        trend_message = (
            "vibration trend: plan maintenance" if trend.active else ("ok" if trend.ready else "learning baseline")
        )
        statuses.append(
            diagnostics.status(
                f"{self.get_name()}: vibration trend",
                diagnostics.WARN if trend.active else diagnostics.OK,
                trend_message,
                {
                    "cusum_sigma": f"{trend.cusum:.2f}",
                    "baseline_rms": f"{trend.mean:.4g}",
                    "baseline_sigma": f"{trend.sigma:.4g}",
                    "samples": trend.samples,
                    "anomaly_score": f"{snap.anomaly_score:.2f}",
                    "alerts_sent": self._alerts_sent,
                },
            )
        )
        diagnostics.publish(self, self._diag_pub, statuses)


def main() -> int:
    return run(SensorFusionNode)


if __name__ == "__main__":
    raise SystemExit(main())
