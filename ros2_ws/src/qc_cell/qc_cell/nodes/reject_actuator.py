"""reject_actuator: lifecycle node that turns verdicts into timed ejections (qc_cell.reject does the work).

configure: build the driver and acquire the hardware; activate: arm (start the deadline scheduler and the
watchdog); deactivate: disarm (outputs off, pending parts reported); cleanup/shutdown: release the hardware.

Subscribes quality/decision and camera/parts (encoder samples, watchdog). Publishes reject/event for every
acted-on part, alerts, /diagnostics and, with the sim driver, reject/markers for RViz.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any

from action_msgs.msg import GoalStatus
from builtin_interfaces.msg import Duration
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionClient
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from visualization_msgs.msg import Marker, MarkerArray

from qc_cell.reject.config import MISSED_RESPONSES, OVERLAP_POLICIES, SPEED_SOURCES, WATCHDOG_ACTIONS, RejectConfig
from qc_cell.reject.controller import RejectController
from qc_cell.reject.drivers.base import ArmJob, DriverError
from qc_cell.reject.drivers.factory import DRIVERS, DriverSettings, build_driver
from qc_cell.reject.drivers.gpio import PIN_MODES
from qc_cell.reject.drivers.modbus import KINDS, ModbusOutput
from qc_cell.reject.records import (
    DIVERT,
    DONE,
    FAILED,
    LATE,
    REJECT,
    SKIPPED,
    STOP_LINE,
    AlertRecord,
    Decision,
    Part,
    RejectRecord,
)
from qc_cell.ros import diagnostics, qos
from qc_cell.ros.node_main import run
from qc_cell.ros.params import ParameterError, declare
from qc_cell.ros.time import from_ns, to_ns
from qc_contract.vocabulary import OUTCOME_NAMES, VERDICT_NAMES
from qc_interfaces.action import RejectPart
from qc_interfaces.msg import Alert, PartTrigger, QualityDecision, RejectEvent

GIL_SWITCH_INTERVAL_S = 0.0005
# One executor thread: every callback is short (the ejections run on the controller's own thread), and a
# MultiThreadedExecutor cost the node about twice the CPU (docs/reject.md). A Modbus heartbeat to a PLC that
# stops answering (modbus_timeout_s, 0.2 s) on the tick may hold verdicts back that long.
EXECUTOR_THREADS = 1
# Parameters that may change while running (validated in the on-set callback, applied on the next tick).
RUNTIME = (
    "reject_distance_mm",
    "divert_distance_mm",
    "belt_speed_mm_s",
    "actuator_latency_ms",
    "pulse_width_ms",
    "late_tolerance_ms",
    "min_pulse_gap_ms",
)
OUTCOME_COLOURS = {DONE: (0.1, 0.8, 0.1), LATE: (1.0, 0.55, 0.0), FAILED: (0.9, 0.1, 0.1), SKIPPED: (0.6, 0.6, 0.6)}


class _ArmGoal:
    def __init__(self) -> None:
        self.handle: Any = None
        self.cancel_requested = False


class ActionArmTransport:
    """The robot_arm driver's link to the arm: a `reject_part` action client."""

    def __init__(self, node: LifecycleNode) -> None:
        self._client = ActionClient(node, RejectPart, "reject_part")
        self._lock = threading.Lock()

    def ready(self) -> bool:
        return self._client is not None and self._client.server_is_ready()

    def send(self, job: ArmJob, on_feedback, on_result) -> _ArmGoal:
        goal = RejectPart.Goal(part_id=job.part_id, deadline=from_ns(job.deadline_ns), position_m=job.position_m)
        ref = _ArmGoal()

        def result_done(future) -> None:
            try:
                wrapped = future.result()
            except Exception as exc:
                on_result(False, f"getting the result failed: {exc}")
                return
            if wrapped.status == GoalStatus.STATUS_SUCCEEDED and wrapped.result.success:
                on_result(True, wrapped.result.message)
            else:
                on_result(False, wrapped.result.message or f"the goal ended with status {wrapped.status}")

        def goal_done(future) -> None:
            try:
                handle = future.result()
            except Exception as exc:
                on_result(False, f"sending the goal failed: {exc}")
                return
            if not handle.accepted:
                on_result(False, "the arm rejected the goal")
                return
            with self._lock:
                ref.handle = handle
                cancel = ref.cancel_requested
            if cancel:
                handle.cancel_goal_async()
            handle.get_result_async().add_done_callback(result_done)

        self._client.send_goal_async(
            goal, feedback_callback=lambda msg: on_feedback(msg.feedback.stage, msg.feedback.progress)
        ).add_done_callback(goal_done)
        return ref

    def cancel(self, handle: _ArmGoal) -> None:
        with self._lock:
            handle.cancel_requested = True
            goal = handle.handle
        if goal is not None:
            goal.cancel_goal_async()

    def close(self) -> None:
        """Idempotent: the robot_arm driver closes it on release, the node again after a failed configure."""
        client, self._client = self._client, None
        if client is not None:
            client.destroy()


class _Publisher:
    """The controller's sink: RejectRecord/AlertRecord -> messages (called from the controller's threads)."""

    def __init__(self, node: RejectActuator) -> None:
        self._node = node
        self._marker_id = 0

    def event(self, record: RejectRecord) -> None:
        node = self._node
        msg = RejectEvent(
            part_id=record.part_id,
            verdict=record.verdict,
            outcome=record.outcome,
            method=record.method,
            lane=record.lane,
            planned_time=from_ns(max(record.planned_ns, 0)),
            actual_time=from_ns(max(record.actual_ns, 0)),
            lateness_ms=float(record.lateness_ms),
            message=record.message,
        )
        msg.header.stamp = from_ns(record.capture_ns)
        msg.header.frame_id = record.frame_id
        published = self._publish(node.event_pub, msg, f"part {record.part_id}: {OUTCOME_NAMES[record.outcome]}")
        if published and node.marker_pub is not None and record.lane:
            self._publish(node.marker_pub, self._markers(record), "marker")

    def alert(self, alert: AlertRecord) -> None:
        node = self._node
        msg = Alert(severity=alert.severity, source=node.get_name(), code=alert.code, message=alert.message)
        msg.part_id = alert.part_id
        msg.header.stamp = node.get_clock().now().to_msg()
        text = f"[{alert.code}] {alert.message}"
        self._publish(node.alert_pub, msg, text)
        if alert.severity >= Alert.ERROR:
            node.get_logger().error(text, throttle_duration_sec=1.0)
        elif alert.severity == Alert.WARN:
            node.get_logger().warning(text, throttle_duration_sec=1.0)
        else:
            node.get_logger().info(text)

    def _publish(self, publisher, msg, what: str) -> bool:
        """Publish; after Ctrl-C the context is gone while the controller still reports its pending parts:
        those go to the log instead of ending the process with a traceback."""
        try:
            publisher.publish(msg)
            return True
        except Exception:
            if self._node.context.ok():
                raise
            self._node.get_logger().warning(f"shutting down, not published: {what}")
            return False

    def _markers(self, record: RejectRecord) -> MarkerArray:
        """A sphere where the part was acted on (x along the belt, origin under the camera) and a label."""
        node = self._node
        stamp = from_ns(record.actual_ns or record.planned_ns or node.get_clock().now().nanoseconds)
        lifetime = Duration(sec=int(node.marker_lifetime_s), nanosec=int(node.marker_lifetime_s % 1 * 1e9))
        r, g, b = OUTCOME_COLOURS[record.outcome]
        self._marker_id = (self._marker_id + 1) % 100_000
        sphere = Marker(ns=f"reject/{record.lane}", id=self._marker_id, type=Marker.SPHERE, action=Marker.ADD)
        sphere.pose.position.x = record.position_m
        sphere.pose.orientation.w = 1.0
        sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.05
        sphere.color.r, sphere.color.g, sphere.color.b, sphere.color.a = r, g, b, 0.9
        label = Marker(ns=f"reject/{record.lane}/label", id=self._marker_id, type=Marker.TEXT_VIEW_FACING)
        label.action = Marker.ADD
        label.pose.position.x = record.position_m
        label.pose.position.z = 0.08
        label.pose.orientation.w = 1.0
        label.scale.z = 0.03
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        label.text = f"{record.part_id} {OUTCOME_NAMES[record.outcome]} {record.lateness_ms:+.1f} ms"
        for marker in (sphere, label):
            marker.header.frame_id = node.marker_frame
            marker.header.stamp = stamp
            marker.lifetime = lifetime
        return MarkerArray(markers=[sphere, label])


class RejectActuator(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        # Set before anything can fail: destroy_node() runs even when the constructor raised.
        self.controller: RejectController | None = None
        self._transport: ActionArmTransport | None = None
        super().__init__("reject_actuator", **kwargs)
        self.config, self.settings = self._declare_parameters()
        self.marker_frame: str = declare(
            self, "marker_frame", "conveyor", "RViz frame of reject/markers: x along the belt, origin under the camera"
        )
        self.marker_lifetime_s: float = declare(
            self, "marker_lifetime_s", 5.0, "how long RViz shows each reject marker (s)", range=(0.1, 600.0)
        )
        self._spin_ms: float = declare(
            self,
            "scheduler_spin_ms",
            2.0,
            "the scheduler busy-waits this long before each deadline (precision vs. CPU)",
            range=(0.0, 20.0),
            read_only=True,
        )
        self._rt_priority: int = declare(
            self,
            "scheduler_rt_priority",
            50,
            "SCHED_FIFO priority of the actuation thread (0 = normal scheduling); needs CAP_SYS_NICE or an rtprio "
            "limit, falls back to normal scheduling with a warning",
            range=(0, 99),
            read_only=True,
        )
        tick_s = declare(self, "tick_period_s", 0.05, "watchdog and driver-health period (s)", range=(0.01, 1.0))
        diag_s = declare(self, "diagnostics_period_s", 1.0, "/diagnostics period (s)", range=(0.1, 60.0))
        if self.get_parameter("use_sim_time").value:
            raise ParameterError(
                "use_sim_time must be false: the actuator fires on the wall clock of the capture stamps"
            )
        self._pending_config: RejectConfig | None = None
        self._state = "unconfigured"
        self._publisher = _Publisher(self)

        self.event_pub = self.create_publisher(RejectEvent, "reject/event", qos.EVENTS)
        self.alert_pub = self.create_publisher(Alert, "alerts", qos.EVENTS)
        self.marker_pub = (
            self.create_publisher(MarkerArray, "reject/markers", qos.EVENTS) if self.settings.driver == "sim" else None
        )
        self._diag_pub = diagnostics.create_publisher(self)
        # Verdicts and parts are handled in every state, so parts that cannot be ejected are still reported.
        self.create_subscription(QualityDecision, "quality/decision", self._on_decision, qos.EVENTS)
        self.create_subscription(PartTrigger, "camera/parts", self._on_part, qos.EVENTS)
        self.create_timer(tick_s, self._tick)
        self.create_timer(diag_s, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------ parameters

    def _declare_parameters(self) -> tuple[RejectConfig, DriverSettings]:
        d = RejectConfig()
        ro = {"read_only": True}
        g = {
            "reject_distance_mm": declare(
                self,
                "reject_distance_mm",
                d.reject_distance_mm,
                "camera optical axis -> reject actuator along the belt, mm (robot_arm: the pick point)",
                range=(1.0, 100_000.0),
            ),
            "divert_distance_mm": declare(
                self,
                "divert_distance_mm",
                d.divert_distance_mm,
                "camera -> divert gate, mm; 0 = the cell has no divert lane",
                range=(0.0, 100_000.0),
            ),
            "speed_source": declare(
                self,
                "speed_source",
                d.speed_source,
                "belt speed from 'parameter' (belt_speed_mm_s) or 'encoder' (encoder_count on camera/parts)",
                choices=SPEED_SOURCES,
                **ro,
            ),
            "belt_speed_mm_s": declare(
                self,
                "belt_speed_mm_s",
                d.belt_speed_mm_s,
                "belt speed, mm/s; with speed_source encoder the fallback while the encoder is stale (0 = none)",
                range=(0.0, 20_000.0),
            ),
            "encoder_ticks_per_mm": declare(
                self,
                "encoder_ticks_per_mm",
                d.encoder_ticks_per_mm,
                "encoder ticks per mm of belt travel",
                range=(1e-6, 1e6),
                **ro,
            ),
            "encoder_window_s": declare(
                self,
                "encoder_window_s",
                d.encoder_window_s,
                "encoder samples used for the speed estimate (s)",
                range=(0.05, 60.0),
                **ro,
            ),
            "actuator_latency_ms": declare(
                self,
                "actuator_latency_ms",
                d.actuator_latency_ms,
                "command -> stroke of the ejector (valve, mechanics, bus, PLC scan), ms",
                range=(0.0, 5000.0),
            ),
            "pulse_width_ms": declare(
                self,
                "pulse_width_ms",
                d.pulse_width_ms,
                "ejector pulse length, ms (centred on the part)",
                range=(1.0, 10_000.0),
            ),
            "late_tolerance_ms": declare(
                self,
                "late_tolerance_ms",
                d.late_tolerance_ms,
                "a command this much after its planned time still hits the part, ms",
                range=(0.0, 5000.0),
            ),
            "min_pulse_gap_ms": declare(
                self,
                "min_pulse_gap_ms",
                d.min_pulse_gap_ms,
                "pulses closer than this on one output overlap (merged or flagged), ms",
                range=(0.0, 5000.0),
            ),
            "overlap_policy": declare(
                self,
                "overlap_policy",
                d.overlap_policy,
                "overlapping pulses: 'merge' (output held over both parts) or 'flag' (later part FAILED)",
                choices=OVERLAP_POLICIES,
                **ro,
            ),
            "eject_verdicts": list(
                declare(self, "eject_verdicts", list(d.eject_verdicts), "verdicts sent to the reject lane", **ro) or []
            ),
            "divert_verdicts": list(
                declare(
                    self,
                    "divert_verdicts",
                    Parameter.Type.STRING_ARRAY,
                    "verdicts sent to the divert lane (e.g. [REINSPECT]); unset = none",
                    **ro,
                )
                or []
            ),
            "missed_response": declare(
                self,
                "missed_response",
                d.missed_response,
                "for a part that must go out but will not (late, fault): none, stop_line (pulse) or divert",
                choices=MISSED_RESPONSES,
                **ro,
            ),
            "stop_line_pulse_ms": declare(
                self,
                "stop_line_pulse_ms",
                d.stop_line_pulse_ms,
                "stop-line output pulse length, ms",
                range=(1.0, 600_000.0),
                **ro,
            ),
            "watchdog_timeout_s": declare(
                self,
                "watchdog_timeout_s",
                d.watchdog_timeout_s,
                "a part on camera/parts with no verdict this long is handled fail-safe (0 = off), s",
                range=(0.0, 600.0),
                **ro,
            ),
            "watchdog_action": declare(
                self,
                "watchdog_action",
                d.watchdog_action,
                "reject_all (eject parts without verdict), stop_line (also hold stop-line while no verdicts) "
                "or alert_only",
                choices=WATCHDOG_ACTIONS,
                **ro,
            ),
        }
        g["eject_verdicts"] = tuple(g["eject_verdicts"])
        g["divert_verdicts"] = tuple(g["divert_verdicts"])
        config = RejectConfig(**g)

        s = DriverSettings()
        driver = declare(self, "driver", s.driver, "actuator driver", choices=DRIVERS, **ro)
        pins = {
            channel: declare(
                self,
                f"gpio_{channel}_pin",
                default,
                f"GPIO header pin of the {channel} output (-1 = none)",
                range=(-1, 1000),
                **ro,
            )
            for channel, default in ((REJECT, 12), (DIVERT, -1), (STOP_LINE, -1))
        }
        kind = declare(
            self, "modbus_output_kind", "coil", "PLC outputs are coils or holding registers", choices=KINDS, **ro
        )
        on_value = declare(self, "modbus_on_value", 1, "register value for on (registers only)", range=(0, 65535), **ro)
        off_value = declare(
            self, "modbus_off_value", 0, "register value for off (registers only)", range=(0, 65535), **ro
        )
        addresses = {
            channel: declare(
                self,
                f"modbus_{channel}_address",
                default,
                f"0-based Modbus address of the {channel} output (-1 = none)",
                range=(-1, 65535),
                **ro,
            )
            for channel, default in ((REJECT, 0), (DIVERT, -1), (STOP_LINE, -1))
        }
        settings = DriverSettings(
            driver=driver,
            gpio_pins={channel: pin for channel, pin in pins.items() if pin >= 0},
            gpio_pin_mode=declare(self, "gpio_pin_mode", "BOARD", "Jetson.GPIO pin numbering", choices=PIN_MODES, **ro),
            gpio_active_high=declare(self, "gpio_active_high", True, "true: output high = on", **ro),
            modbus_host=declare(self, "modbus_host", s.modbus_host, "PLC IP address or host name", **ro),
            modbus_port=declare(self, "modbus_port", s.modbus_port, "PLC Modbus/TCP port", range=(1, 65535), **ro),
            modbus_device_id=declare(
                self, "modbus_device_id", s.modbus_device_id, "Modbus unit/device id", range=(0, 255), **ro
            ),
            modbus_timeout_s=declare(
                self,
                "modbus_timeout_s",
                s.modbus_timeout_s,
                "timeout of one Modbus request (s)",
                range=(0.01, 10.0),
                **ro,
            ),
            modbus_heartbeat_s=declare(
                self,
                "modbus_heartbeat_s",
                s.modbus_heartbeat_s,
                "link check period between pulses (s)",
                range=(0.05, 60.0),
                **ro,
            ),
            modbus_outputs={
                channel: ModbusOutput(kind, address, on_value, off_value)
                for channel, address in addresses.items()
                if address >= 0
            },
            arm_result_timeout_s=declare(
                self,
                "arm_result_timeout_s",
                s.arm_result_timeout_s,
                "robot_arm: a goal without result this long after its deadline is cancelled and FAILED (s)",
                range=(0.1, 600.0),
                **ro,
            ),
        )
        try:
            config.validate()
            settings.validate()
            channels = frozenset({REJECT}) if driver == "robot_arm" else build_driver(settings).channels
            missing = config.required_channels() - channels
            if missing:
                raise ValueError(
                    f"driver '{driver}' has no output for {sorted(missing)}: set gpio_<channel>_pin / "
                    "modbus_<channel>_address, or change divert_verdicts / missed_response / watchdog_action"
                )
        except ValueError as exc:
            raise ParameterError(str(exc)) from exc
        return config, settings

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in RUNTIME}
        if not changes:
            return SetParametersResult(successful=True)
        base = self._pending_config or self.config
        try:
            candidate = dataclasses.replace(base, **{k: float(v) for k, v in changes.items()})
            candidate.validate()
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self._pending_config = candidate
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            if self.settings.driver == "robot_arm":
                self._transport = ActionArmTransport(self)
            driver = build_driver(self.settings, self._transport)
            controller = RejectController(
                self.config,
                driver,
                self._publisher,
                spin_ns=int(self._spin_ms * 1e6),
                rt_priority=self._rt_priority,
            )
            controller.open()
        except (DriverError, ValueError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self._release_transport()
            return TransitionCallbackReturn.FAILURE
        self.controller = controller
        self._state = "inactive"
        self.get_logger().info(
            f"configured: driver {self.settings.driver}, reject at {self.config.reject_distance_mm} mm, "
            f"speed {self.config.speed_source}, verdicts {list(self.config.eject_verdicts)}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.controller is not None
        self.controller.arm()
        self._state = "active"
        realtime = self.controller.realtime
        if self._rt_priority > 0 and not realtime.startswith("SCHED_FIFO"):
            self._publisher.alert(
                AlertRecord(
                    Alert.WARN,
                    "REJECT_NOT_REALTIME",
                    f"actuation thread {realtime}: expect several ms of timing error on a busy machine",
                )
            )
        else:
            self.get_logger().info(f"armed; actuation thread: {realtime}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.controller is not None:
            self.controller.disarm()
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._release()  # also when the process is stopped without a shutdown transition
        super().destroy_node()

    def _release(self) -> None:
        controller, self.controller = self.controller, None
        if controller is not None:
            controller.close()
        self._release_transport()

    def _release_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    # ------------------------------------------------------------ inputs

    def _on_decision(self, msg: QualityDecision) -> None:
        decision = Decision(msg.part_id, msg.verdict, to_ns(msg.header.stamp), msg.encoder_count, msg.header.frame_id)
        controller = self.controller
        if controller is not None:
            controller.on_decision(decision)
            return
        lane = self.config.lane_for(decision.verdict)
        if lane is None:
            return
        # Not configured: nothing can eject the part; say so for every one.
        self._publisher.event(
            RejectRecord(
                part_id=decision.part_id,
                verdict=decision.verdict,
                outcome=SKIPPED,
                method=self.settings.driver,
                lane=lane,
                capture_ns=decision.capture_ns,
                planned_ns=0,
                actual_ns=0,
                lateness_ms=0.0,
                message="the actuator is not configured: not ejected",
                frame_id=decision.frame_id,
                position_m=self.config.lane_distance_mm(lane) / 1000.0,
            )
        )
        verdict = VERDICT_NAMES.get(decision.verdict, str(decision.verdict))
        self._publisher.alert(
            AlertRecord(
                Alert.CRITICAL,
                "REJECT_SKIPPED",
                f"part {decision.part_id} ({verdict}) not removed: the actuator is not configured",
                decision.part_id,
            )
        )

    def _on_part(self, msg: PartTrigger) -> None:
        if self.controller is not None:
            self.controller.on_part(Part(msg.part_id, to_ns(msg.header.stamp), msg.encoder_count, msg.header.frame_id))

    def _tick(self) -> None:
        controller = self.controller
        if self._pending_config is not None:
            self.config, self._pending_config = self._pending_config, None
            if controller is not None:
                try:
                    controller.reconfigure(self.config)
                except ValueError as exc:
                    self.get_logger().error(f"parameter change not applied: {exc}")
        if controller is not None:
            controller.tick()

    def _publish_diagnostics(self) -> None:
        controller = self.controller
        values: dict[str, object] = {"state": self._state, "driver": self.settings.driver}
        if controller is None:
            level, message = diagnostics.WARN, f"{self._state}: parts are not ejected"
        else:
            health = controller.driver.health()
            values.update(controller.snapshot())
            values.update({f"driver_{k}": v for k, v in health.values.items()})
            if not health.ok:
                level, message = diagnostics.ERROR, f"actuator fault: {health.message}"
            elif values.get("decision_stream_down"):
                level, message = diagnostics.ERROR, "no verdicts while parts are captured (watchdog tripped)"
            elif self._state != "active":
                level, message = diagnostics.WARN, f"{self._state}: parts are not ejected"
            else:
                level, message = diagnostics.OK, health.message
        status = diagnostics.status(f"{self.get_name()}: actuator", level, message, values, self.settings.driver)
        diagnostics.publish(self, self._diag_pub, [status])


def main() -> int:
    # The actuation thread shares the GIL with the executor thread. Python's default switch interval (5 ms)
    # lets a thread that was preempted while holding the GIL delay an edge by that much and more on a busy
    # machine; 0.5 ms cut the node's p99 timing error from ~20 ms to under 4 ms (bench/bench_reject.py).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return run(RejectActuator, threads=EXECUTOR_THREADS)


if __name__ == "__main__":
    raise SystemExit(main())
