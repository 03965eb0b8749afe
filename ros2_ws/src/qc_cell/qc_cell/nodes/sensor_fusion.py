"""sensor_fusion node: process/temperature, process/pressure, process/vibration in; process/state (latched,
periodic and on change), alerts (maintenance trend, silent sensor, out of spec) and /diagnostics out.

Sample callbacks only feed the core; a check timer evaluates staleness and flags and publishes on change,
so a burst of vibration samples costs no more than appending to a window. The logic is in qc_cell.fusion.
"""

from __future__ import annotations

import math

from geometry_msgs.msg import Vector3Stamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import FluidPressure, Temperature

from qc_cell.fusion.flags import SIGNALS
from qc_cell.fusion.process_fusion import FusionConfig, FusionEvent, ProcessFusion, ProcessSnapshot, SignalConfig
from qc_cell.fusion.signal_monitor import SpecLimits
from qc_cell.fusion.trend import TrendConfig
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.alerts import AlertPublisher
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare
from qc_cell.ros.subscriptions import Subscriptions
from qc_cell.ros.time import from_ns
from qc_interfaces.msg import ProcessState

# Spec-limit parameters may change at run time (validated in _on_set_parameters); everything else is read-only.
SPEC_PARAMETERS = {
    "temperature": ("temperature_min_c", "temperature_max_c"),
    "pressure": ("pressure_min_pa", "pressure_max_pa"),
    "vibration": (None, "vibration_max_rms"),
}


def spec_from(values: dict[str, float], signal: str) -> SpecLimits:
    low_name, high_name = SPEC_PARAMETERS[signal]
    low = values[low_name] if low_name else -math.inf
    try:
        return SpecLimits(low, values[high_name])
    except ValueError as exc:
        raise ValueError(f"{signal}: {low_name or 'lower limit'} must be below {high_name} ({exc})") from exc


class SensorFusionNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sensor_fusion", **kwargs)
        try:
            config = self._declare_fusion_config()
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        publish_period_s = declare(
            self, "publish_period_s", 0.2, "process/state period (also on change)", range=(0.01, 60.0), read_only=True
        )
        check_period_s = declare(
            self, "check_period_s", 0.05, "staleness/flag check period", range=(0.005, 10.0), read_only=True
        )
        diag_period_s = declare(
            self, "diagnostics_period_s", 1.0, "/diagnostics period", range=(0.1, 60.0), read_only=True
        )
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
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._state_pub = self.create_publisher(ProcessState, "process/state", qos.LATCHED)
        self._alerts = AlertPublisher(self)
        self._diag_pub = diagnostics.create_publisher(self)
        subscriptions = Subscriptions(self, self._alerts, self._diag_pub)
        # SENSOR_INPUT (best effort) matches best-effort and reliable sensor drivers alike.
        subscriptions.create(Temperature, "process/temperature", self._on_temperature, qos.SENSOR_INPUT)
        subscriptions.create(FluidPressure, "process/pressure", self._on_pressure, qos.SENSOR_INPUT)
        subscriptions.create(Vector3Stamped, "process/vibration", self._on_vibration, qos.SENSOR_INPUT)
        self.create_timer(check_period_s, self._on_check)
        self.create_timer(diag_period_s, self._publish_diagnostics)
        self.get_logger().info("sensor fusion ready")

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _declare_fusion_config(self) -> FusionConfig:
        """Declare the fusion parameters and build the core's config (ValueError when they do not fit)."""
        ro = {"read_only": True}
        spec_values = {
            "temperature_min_c": declare(
                self, "temperature_min_c", 35.0, "temperature spec low, degC", range=(-273.0, 2000.0)
            ),
            "temperature_max_c": declare(
                self, "temperature_max_c", 55.0, "temperature spec high, degC", range=(-273.0, 2000.0)
            ),
            "pressure_min_pa": declare(self, "pressure_min_pa", 550_000.0, "pressure spec low, Pa", range=(0.0, 1e9)),
            "pressure_max_pa": declare(self, "pressure_max_pa", 650_000.0, "pressure spec high, Pa", range=(0.0, 1e9)),
            "vibration_max_rms": declare(
                self, "vibration_max_rms", 2.0, "vibration RMS spec, m/s^2", range=(1e-6, 1e4)
            ),
        }
        timeouts = {
            "temperature": declare(
                self, "temperature_timeout_s", 2.0, "silent longer -> stale, s", range=(0.01, 3600.0), **ro
            ),
            "pressure": declare(
                self, "pressure_timeout_s", 2.0, "silent longer -> stale, s", range=(0.01, 3600.0), **ro
            ),
            "vibration": declare(
                self, "vibration_timeout_s", 1.0, "silent longer -> stale, s", range=(0.01, 3600.0), **ro
            ),
        }
        floors = {
            "temperature": declare(
                self, "temperature_noise_floor_c", 0.05, "smallest robust sigma, degC", range=(1e-9, 1e3), **ro
            ),
            "pressure": declare(
                self, "pressure_noise_floor_pa", 100.0, "smallest robust sigma, Pa", range=(1e-9, 1e7), **ro
            ),
            "vibration": declare(
                self, "vibration_noise_floor", 0.01, "smallest robust sigma of RMS, m/s^2", range=(1e-9, 1e3), **ro
            ),
        }
        signals = {name: SignalConfig(spec_from(spec_values, name), timeouts[name], floors[name]) for name in SIGNALS}
        baseline_rms = declare(
            self, "trend_baseline_rms", 0.0, "healthy vibration RMS, m/s^2 (0 = learn it)", range=(0.0, 1e4), **ro
        )
        trend = TrendConfig(
            baseline_samples=declare(
                self, "trend_baseline_samples", 300, "RMS values learned as baseline", range=(3, 1_000_000), **ro
            ),
            k_sigma=declare(self, "trend_k_sigma", 0.5, "CUSUM allowance, sigmas", range=(0.0, 100.0), **ro),
            h_sigma=declare(self, "trend_h_sigma", 15.0, "CUSUM alarm threshold, sigmas", range=(0.01, 10_000.0), **ro),
            min_sigma=declare(self, "trend_min_sigma", 0.01, "smallest baseline sigma, m/s^2", range=(1e-9, 1e3), **ro),
            baseline=baseline_rms if baseline_rms > 0.0 else math.nan,
        )
        return FusionConfig(
            **signals,
            stats_window=declare(
                self, "stats_window", 100, "samples in the median/MAD baseline", range=(3, 100_000), **ro
            ),
            stats_min_samples=declare(
                self, "stats_min_samples", 20, "samples before anomalies are judged", range=(1, 100_000), **ro
            ),
            anomaly_z=declare(self, "anomaly_z", 6.0, "robust |z| of an anomaly", range=(0.5, 1000.0), **ro),
            vibration_window_s=declare(
                self, "vibration_window_s", 1.0, "vibration RMS window, s", range=(0.01, 600.0), **ro
            ),
            vibration_min_samples=declare(
                self, "vibration_min_samples", 5, "samples needed for an RMS", range=(2, 1_000_000), **ro
            ),
            vibration_rms_period_s=declare(
                self, "vibration_rms_period_s", 0.1, "RMS update period, s", range=(0.001, 60.0), **ro
            ),
            vibration_remove_dc=declare(
                self, "vibration_remove_dc", True, "remove per-axis mean (gravity) before RMS", **ro
            ),
            trend_interval_s=declare(
                self,
                "trend_interval_s",
                1.0,
                "one RMS value per interval feeds the CUSUM, s",
                range=(0.001, 3600.0),
                **ro,
            ),
            trend=trend,
        )

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changed = {p.name: p.value for p in params}
        names = [n for pair in SPEC_PARAMETERS.values() for n in pair if n]
        values = {n: self.get_parameter(n).value for n in names} | {k: v for k, v in changed.items() if k in names}
        try:
            specs = {signal: spec_from(values, signal) for signal in SIGNALS}
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        # Only on-set callback of this node: success means the change is accepted; apply the limits as a whole.
        for signal, spec in specs.items():
            self._fusion.set_spec(signal, spec)
        return SetParametersResult(successful=True)

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
