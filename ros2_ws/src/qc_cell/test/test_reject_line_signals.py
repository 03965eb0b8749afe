"""Line signals on a second driver (issue 17): the stop-line and heartbeat outputs on a channel independent of the
actuator's, for pulse drivers and robot-arm set-ups (plain pytest with the sim driver and a stand-in arm transport;
and a real pymodbus server as the separate Modbus device)."""

from __future__ import annotations

import time

import pytest

from qc_cell.reject.config import RejectConfig
from qc_cell.reject.controller import RejectController
from qc_cell.reject.drivers.factory import SIGNAL_CHANNELS
from qc_cell.reject.drivers.modbus import ModbusDriver, ModbusOutput
from qc_cell.reject.drivers.robot_arm import RobotArmDriver
from qc_cell.reject.drivers.sim import SimDriver
from qc_cell.reject.params import REJECT_ACTUATOR, checked_settings
from qc_cell.reject.plc_sim import SimulatedPlc
from qc_cell.reject.recording import RecordingSink as Recorder
from qc_cell.reject.records import CRITICAL, DEFECTIVE, FAILED, HEARTBEAT, LATE, REJECT, STOP_LINE, Decision

MS = 1_000_000
BASE = {
    "reject_distance_mm": 100.0,
    "belt_speed_mm_s": 1000.0,
    "actuator_latency_ms": 10.0,
    "pulse_width_ms": 20.0,
    "late_tolerance_ms": 100.0,
    "watchdog_timeout_s": 0.0,
    "missed_response": "stop_line",
    "stop_line_pulse_ms": 200.0,
}


class _Transport:
    """The arm's action client, standing in for the ROS one: goals are accepted and never finish."""

    def ready(self) -> bool:
        return True

    def send(self, job, on_feedback, on_result) -> int:
        return 0

    def cancel(self, handle) -> None:
        pass

    def close(self) -> None:
        pass


def _controller(driver, signals, **changes) -> tuple[RejectController, Recorder]:
    rec = Recorder()
    controller = RejectController(RejectConfig(**{**BASE, **changes}), driver, rec, signals=signals)
    controller.open()
    controller.arm()
    return controller, rec


def test_a_robot_arm_set_up_stops_the_line_and_beats_through_the_second_driver():
    signals = SimDriver(channels=SIGNAL_CHANNELS)
    controller, rec = _controller(RobotArmDriver(_Transport()), signals, heartbeat_period_ms=50.0)
    try:
        controller.set_cell_problems([])
        controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns() - 1_000 * MS))  # passed the pick point
        assert rec.wait(lambda: signals.state[STOP_LINE]), "stop-line raised on the signals driver"
        (event,) = rec.events
        assert event.outcome == LATE and event.method == "robot_arm"
        assert any(a.code == "REJECT_LATE" and a.severity == CRITICAL for a in rec.alerts)
        for _ in range(30):  # the node's tick
            controller.tick()
            time.sleep(0.02)
        beats = [e for e in signals.edges if e.channel == HEARTBEAT]
        assert len(beats) >= 4, f"the heartbeat toggles on the signals driver: {beats}"
        assert rec.wait(lambda: not signals.state[STOP_LINE], timeout=2.0), "the stop-line pulse ends"
    finally:
        controller.close()


def test_the_stop_line_survives_an_actuator_fault_on_its_own_channel():
    actuator = SimDriver(channels=(REJECT,))
    signals = SimDriver(channels=SIGNAL_CHANNELS)
    controller, rec = _controller(actuator, signals)
    try:
        actuator.inject_fault("PLC link lost")
        controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns()))
        assert rec.wait(lambda: len(rec.events) == 1)
        assert rec.events[0].outcome == FAILED and "PLC link lost" in rec.events[0].message
        assert rec.wait(lambda: signals.state[STOP_LINE]), "the line is stopped although the actuator link is down"
        assert not [e for e in actuator.edges if e.channel == STOP_LINE]
    finally:
        controller.close()


def test_deactivation_with_parts_in_flight_keeps_the_signals_stop_line_raised():
    signals = SimDriver(channels=SIGNAL_CHANNELS)
    controller, _rec = _controller(SimDriver(channels=(REJECT,)), signals, reject_distance_mm=5000.0)
    controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns()))
    controller.close()
    assert signals.state[STOP_LINE], "raised on deactivation and kept through the release of the hardware"


def _params(**changes) -> dict:
    values = {p.name: p.default for p in REJECT_ACTUATOR.params}
    values.update(changes)
    return values


def test_params_select_the_second_driver_and_refuse_what_cannot_work():
    config, settings = checked_settings(
        _params(
            driver="robot_arm",
            missed_response="stop_line",
            heartbeat_period_ms=250.0,
            signals_driver="modbus",
            signals_modbus_host="10.0.0.9",
            signals_modbus_stop_line_address=4,
            signals_modbus_heartbeat_address=5,
        )
    )
    assert settings.signals_driver == "modbus" and set(settings.signals_modbus_outputs) == {STOP_LINE, HEARTBEAT}
    with pytest.raises(ValueError, match="no output for"):
        checked_settings(_params(driver="robot_arm", missed_response="stop_line"))
    with pytest.raises(ValueError, match="has no output"):
        checked_settings(_params(signals_driver="gpio"))
    with pytest.raises(ValueError, match="also the actuator's pins"):
        checked_settings(_params(driver="gpio", signals_driver="gpio", signals_gpio_stop_line_pin=12))
    with pytest.raises(ValueError, match="belt-running input"):
        checked_settings(_params(driver="gpio", belt_source="running_input"))
    with pytest.raises(ValueError, match="robot_arm"):
        checked_settings(_params(driver="robot_arm", belt_source="running_input"))
    config, settings = checked_settings(_params(driver="gpio", belt_source="running_input", gpio_belt_running_pin=22))
    assert config.belt_source == "running_input" and settings.gpio_inputs == {"belt_running": 22}


def test_a_robot_arm_set_up_stops_the_line_through_a_separate_modbus_device():
    """The line signals on their own Modbus device (a real pymodbus server): the arm's missed part raises the stop
    coil there, and the heartbeat coil toggles."""
    with SimulatedPlc() as plc:
        signals = ModbusDriver(
            plc.host, plc.port, {STOP_LINE: ModbusOutput("coil", 4), HEARTBEAT: ModbusOutput("coil", 5)}
        )
        controller, rec = _controller(RobotArmDriver(_Transport()), signals, heartbeat_period_ms=50.0)
        try:
            controller.set_cell_problems([])
            controller.on_decision(Decision("p1", DEFECTIVE, time.time_ns() - 1_000 * MS))
            assert rec.wait(lambda: plc.coil(4)), "stop coil raised on the signals device"
            for _ in range(20):
                controller.tick()
                time.sleep(0.02)
            assert len(plc.writes_to("coil", 5)) >= 3, "the heartbeat coil toggles"
        finally:
            controller.close()
