"""Drivers: modbus against a real pymodbus Modbus/TCP server on loopback (timed coil read back, register
outputs, reconnect after the PLC restarts), gpio with a stand-in for the Jetson.GPIO module only, and the
robot_arm bookkeeping with a stand-in transport (its ROS side is tested against the reference arm server
in test_arm_server.py)."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator

import pytest
from pymodbus.client import ModbusTcpClient

from qc_cell.reject.config import RejectConfig
from qc_cell.reject.controller import RejectController
from qc_cell.reject.drivers.base import ArmJob, ArmOutcome, DriverError
from qc_cell.reject.drivers.factory import DriverSettings
from qc_cell.reject.drivers.gpio import GpioDriver
from qc_cell.reject.drivers.modbus import ModbusDriver, ModbusOutput
from qc_cell.reject.drivers.robot_arm import RobotArmDriver
from qc_cell.reject.plc_sim import SimulatedPlc, free_port
from qc_cell.reject.recording import RecordingSink as Recorder
from qc_cell.reject.records import DEFECTIVE, DIVERT, DONE, REJECT, STOP_LINE, Decision
from qc_cell.reject.station import StationReading, station_faults

MS = 1_000_000
S = 1_000_000_000


@pytest.fixture
def plc() -> Iterator[SimulatedPlc]:
    with SimulatedPlc() as server:
        yield server


def _modbus(plc: SimulatedPlc, **outputs: ModbusOutput) -> ModbusDriver:
    return ModbusDriver(plc.host, plc.port, outputs or {REJECT: ModbusOutput("coil", 0)}, timeout_s=0.5)


# ------------------------------------------------------------------ modbus


def test_the_plc_coil_toggles_at_the_planned_time_and_reads_back(plc):
    """Through the controller: the coil goes on at the planned time for the pulse width, as seen by the
    PLC's own timestamps and by a second Modbus client polling the coil."""
    driver = _modbus(plc)
    recorder = Recorder()
    config = RejectConfig(
        reject_distance_mm=300.0,
        belt_speed_mm_s=1000.0,
        actuator_latency_ms=10.0,
        pulse_width_ms=200.0,
        late_tolerance_ms=100.0,
        watchdog_timeout_s=0.0,
    )
    controller = RejectController(config, driver, recorder)
    controller.open()
    controller.arm()
    reader = ModbusTcpClient(plc.host, port=plc.port, timeout=1.0)
    assert reader.connect()
    seen: list[tuple[int, bool]] = []
    try:
        capture = time.time_ns()
        planned = capture + (300 - 10 - 100) * MS
        controller.on_decision(Decision("p1", DEFECTIVE, capture))
        while time.time_ns() < planned + 500 * MS:
            seen.append((time.time_ns(), bool(reader.read_coils(0, count=1).bits[0])))
            time.sleep(0.005)
        assert recorder.wait(lambda: len(recorder.events) == 1)
    finally:
        reader.close()
        controller.close()
    event = recorder.events[0]
    assert (event.outcome, event.planned_ns, event.method) == (DONE, planned, "modbus")
    on_times = [t for t, value in seen if value]
    assert on_times, "the second client never read the coil on"
    assert planned <= on_times[0] < planned + 150 * MS
    assert not seen[-1][1], "the coil is off again after the pulse"
    writes = [(w.value, w.t_ns) for w in plc.writes_to("coil", 0)]
    # open() writes off; on at the planned time, off after the pulse width (PLC clock); close() writes off.
    assert [v for v, _ in writes] == [0, 1, 0, 0]
    t_on, t_off = writes[1][1], writes[2][1]
    assert planned <= t_on < planned + 100 * MS, f"coil went on {(t_on - planned) / MS:.1f} ms after planned"
    assert abs((t_off - t_on) - 200 * MS) < 50 * MS, f"pulse lasted {(t_off - t_on) / MS:.1f} ms, not 200"
    assert t_on <= event.actual_ns, "actual = when the PLC acknowledged, after it stored the value"


def test_plc_discrete_inputs_are_the_station_inputs_and_confirm_edges_are_caught_between_polls(plc):
    stamps = iter(range(1000, 2000))
    inputs = {"confirm": 10, "bin_full": 11, "bin_present": 12, "air_ok": 13}
    driver = ModbusDriver(
        plc.host,
        plc.port,
        {REJECT: ModbusOutput("coil", 0)},
        timeout_s=0.5,
        inputs=inputs,
        event_clock_ns=lambda: next(stamps),
    )
    driver.open()
    try:
        plc.set_input(12, True)
        plc.set_input(13, True)
        driver.poll(0)
        assert driver.read_inputs() == StationReading({"bin_full": False, "bin_present": True, "air_ok": True}, ())
        plc.set_input(10, True)  # the PLC holds the sensor's pulse for two polls
        driver.poll(0)
        driver.poll(0)
        plc.set_input(10, False)
        plc.set_input(13, False)
        driver.poll(0)
        reading = driver.read_inputs()
        assert reading.confirmations == (1000,), "one edge for one held pulse"
        assert station_faults(reading.levels) == ["air pressure low"]
        plc.stop()
        driver.poll(0)
        assert driver.read_inputs().levels == {}, "no levels from a PLC that does not answer (a driver fault)"
        assert not driver.health().ok
    finally:
        driver.close()


def test_register_outputs_write_the_on_and_off_values(plc):
    driver = _modbus(
        plc, **{REJECT: ModbusOutput("register", 10, on_value=3, off_value=0), STOP_LINE: ModbusOutput("coil", 7)}
    )
    driver.open()
    try:
        assert driver.channels == {REJECT, STOP_LINE}
        driver.set_output(REJECT, True)
        assert plc.register(10) == 3
        driver.set_output(STOP_LINE, True)
        assert plc.coil(7)
        driver.set_output(REJECT, False)
        assert plc.register(10) == 0
        with pytest.raises(DriverError, match="no Modbus output configured for channel 'divert'"):
            driver.set_output(DIVERT, True)
    finally:
        driver.close()
    assert not plc.coil(7), "close() switches every output off"


def test_reconnects_after_the_plc_restarts_without_losing_the_next_pulse(plc):
    driver = _modbus(plc)
    driver.open()
    try:
        driver.set_output(REJECT, True)
        plc.restart()  # drops the connection; the driver still holds the dead socket
        driver.set_output(REJECT, False)  # fails on the stale socket, succeeds on a fresh one
        assert not plc.coil(0)
        assert driver.reconnects == 1 and driver.health().ok
        assert [w.value for w in plc.writes_to("coil", 0)] == [0, 1, 0]
    finally:
        driver.close()


def test_an_unreachable_plc_fails_the_write_and_is_reconnected_by_poll(plc):
    driver = _modbus(plc)
    driver.open()
    try:
        plc.stop()
        with pytest.raises(DriverError, match="unreachable"):
            driver.set_output(REJECT, True)
        assert not driver.health().ok and "not connected" in driver.health().message
        plc.start()
        end = time.monotonic() + 10.0
        while not driver.health().ok and time.monotonic() < end:
            driver.poll(time.time_ns())
            time.sleep(0.05)
        assert driver.health().ok, driver.health().message
        driver.set_output(REJECT, True)
        assert plc.coil(0)
    finally:
        driver.close()


def test_a_plc_absent_at_start_up_is_reported_not_fatal():
    driver = ModbusDriver("127.0.0.1", free_port(), {REJECT: ModbusOutput("coil", 0)}, timeout_s=0.2)
    driver.open()  # must not raise: the PLC may boot after the cell
    try:
        health = driver.health()
        assert not health.ok and health.values["connected"] is False
        with pytest.raises(DriverError, match="unreachable"):
            driver.set_output(REJECT, True)
    finally:
        driver.close()


def test_modbus_settings_are_checked():
    with pytest.raises(ValueError, match=r"outside 1\.\.65535"):
        ModbusDriver("plc", 0, {REJECT: ModbusOutput("coil", 0)})
    with pytest.raises(ValueError, match="kind"):
        ModbusOutput("discrete", 0)
    with pytest.raises(ValueError, match="register values"):
        ModbusOutput("register", 0, on_value=70_000)
    with pytest.raises(ValueError, match="no reject output"):
        DriverSettings(driver="modbus", modbus_outputs={STOP_LINE: ModbusOutput("coil", 1)}).validate()


# ------------------------------------------------------------------ gpio


class StandInGpio:
    """Stands in for the Jetson.GPIO module (the hardware boundary): records the pin levels."""

    BOARD, BCM, CVM, TEGRA_SOC = "BOARD", "BCM", "CVM", "TEGRA_SOC"
    OUT, IN, HIGH, LOW, RISING = "out", "in", 1, 0, "rising"

    def __init__(self) -> None:
        self.mode = None
        self.levels: dict[int, int] = {}
        self.history: list[tuple[int, int, int]] = []
        self.cleaned: list[int] = []
        self.callbacks: dict[int, object] = {}

    def setwarnings(self, _flag: bool) -> None:
        pass

    def setmode(self, mode: str) -> None:
        self.mode = mode

    def setup(self, pin: int, direction: str, initial: int | None = None) -> None:
        assert direction in (self.OUT, self.IN)
        self.levels[pin] = self.LOW if initial is None else initial

    def input(self, pin: int) -> int:
        return self.levels[pin]

    def add_event_detect(self, pin: int, edge: str, callback) -> None:
        assert edge == self.RISING
        self.callbacks[pin] = callback

    def sensor(self, pin: int, level: int) -> None:
        """A sensor wired to an input pin changes its level (Jetson.GPIO's event thread calls back on a rise)."""
        rising = level == self.HIGH and self.levels[pin] == self.LOW
        self.levels[pin] = level
        if rising and pin in self.callbacks:
            self.callbacks[pin](pin)

    def output(self, pin: int, level: int) -> None:
        if pin not in self.levels:
            raise RuntimeError(f"channel {pin} not set up")
        self.levels[pin] = level
        self.history.append((time.time_ns(), pin, level))

    def cleanup(self, pins: list[int]) -> None:
        self.cleaned = list(pins)


def test_gpio_pulses_the_pin_at_the_planned_time_and_releases_it():
    gpio = StandInGpio()
    driver = GpioDriver({REJECT: 12, STOP_LINE: 16}, mode="BCM", gpio=gpio)
    recorder = Recorder()
    config = RejectConfig(
        reject_distance_mm=100.0, belt_speed_mm_s=1000.0, actuator_latency_ms=10.0, pulse_width_ms=20.0,
        late_tolerance_ms=100.0, watchdog_timeout_s=0.0,
    )  # fmt: skip
    controller = RejectController(config, driver, recorder)
    controller.open()
    assert gpio.mode == "BCM" and gpio.levels == {12: 0, 16: 0}
    controller.arm()
    capture = time.time_ns()
    controller.on_decision(Decision("p1", DEFECTIVE, capture))
    assert recorder.wait(lambda: len(gpio.history) == 2)
    controller.close()
    (t_on, pin_on, high), (t_off, pin_off, low) = gpio.history[:2]
    planned = capture + 80 * MS
    assert (pin_on, high, pin_off, low) == (12, 1, 12, 0)
    assert t_on >= planned and t_off >= planned + 20 * MS
    assert gpio.cleaned == [12, 16], "close() releases the pins"


def test_gpio_station_inputs_give_levels_and_stamped_confirmation_edges():
    gpio = StandInGpio()
    stamps = iter([111, 222])
    inputs = {"confirm": 21, "bin_full": 22, "bin_present": 23, "air_ok": 24}
    driver = GpioDriver({REJECT: 12}, gpio=gpio, inputs=inputs, clock_ns=lambda: next(stamps))
    assert driver.inputs == frozenset(inputs)
    driver.open()
    gpio.sensor(23, gpio.HIGH)
    gpio.sensor(24, gpio.HIGH)
    assert driver.read_inputs() == StationReading({"bin_full": False, "bin_present": True, "air_ok": True}, ())
    assert station_faults(driver.read_inputs().levels) == []
    gpio.sensor(21, gpio.HIGH)
    gpio.sensor(21, gpio.LOW)
    gpio.sensor(21, gpio.HIGH)
    gpio.sensor(22, gpio.HIGH)
    reading = driver.read_inputs()
    assert reading.confirmations == (111, 222), "each rising edge, stamped when it fired"
    assert station_faults(reading.levels) == ["reject bin full"]
    assert driver.read_inputs().confirmations == (), "edges are handed over once"
    driver.close()
    assert sorted(gpio.cleaned) == [12, 21, 22, 23, 24]
    with pytest.raises(ValueError, match="share one pin"):
        GpioDriver({REJECT: 12}, gpio=gpio, inputs={"confirm": 12})


def test_gpio_active_low_inverts_the_levels():
    gpio = StandInGpio()
    driver = GpioDriver({REJECT: 12}, active_high=False, gpio=gpio)
    driver.open()
    assert gpio.levels[12] == gpio.HIGH, "off = high for an active-low input"
    driver.set_output(REJECT, True)
    assert gpio.levels[12] == gpio.LOW
    driver.close()
    assert gpio.levels[12] == gpio.HIGH


def test_gpio_write_errors_become_driver_errors():
    gpio = StandInGpio()
    driver = GpioDriver({REJECT: 12}, gpio=gpio)
    driver.open()
    gpio.levels.clear()  # the pin vanished under us (board reset)
    with pytest.raises(DriverError, match="writing pin 12"):
        driver.set_output(REJECT, True)
    assert not driver.health().ok


@pytest.mark.skipif(importlib.util.find_spec("Jetson") is not None, reason="Jetson.GPIO is installed here")
def test_gpio_without_jetson_gpio_fails_with_a_clear_message():
    driver = GpioDriver({REJECT: 18})
    with pytest.raises(DriverError, match=r"needs the Jetson\.GPIO package.*use driver 'sim' or 'modbus'"):
        driver.open()


def test_gpio_settings_are_checked():
    with pytest.raises(ValueError, match="share one pin"):
        GpioDriver({REJECT: 12, DIVERT: 12})
    with pytest.raises(ValueError, match="pin mode"):
        GpioDriver({REJECT: 12}, mode="WIRINGPI")


# ------------------------------------------------------------------ robot_arm bookkeeping


class StandInTransport:
    def __init__(self, ready: bool = True) -> None:
        self.is_ready = ready
        self.sent: list[tuple[ArmJob, object, object]] = []
        self.cancelled: list[int] = []
        self.closed = False

    def ready(self) -> bool:
        return self.is_ready

    def send(self, job, on_feedback, on_result) -> int:
        self.sent.append((job, on_feedback, on_result))
        return len(self.sent) - 1

    def cancel(self, handle: int) -> None:
        self.cancelled.append(handle)

    def close(self) -> None:
        self.closed = True


def _arm(transport: StandInTransport, clock: list[int]) -> RobotArmDriver:
    driver = RobotArmDriver(transport, result_timeout_ns=2 * S, clock_ns=lambda: clock[0])
    driver.open()
    return driver


def test_arm_pick_time_comes_from_the_placing_feedback():
    clock = [100 * S]
    transport = StandInTransport()
    driver = _arm(transport, clock)
    outcomes: list[ArmOutcome] = []
    driver.dispatch(ArmJob("p1", 101 * S, 0.8), outcomes.append)
    _, on_feedback, on_result = transport.sent[0]
    clock[0] = 100 * S + 500 * MS
    on_feedback("moving", 0.5)
    clock[0] = 101 * S + 3 * MS
    on_feedback("placing", 0.0)
    clock[0] = 101 * S + 600 * MS
    on_feedback("placing", 1.0)
    on_result(True, "placed")
    assert outcomes == [ArmOutcome(True, "placed", 101 * S + 3 * MS)]


def test_arm_without_result_is_cancelled_and_failed_after_the_timeout():
    clock = [100 * S]
    transport = StandInTransport()
    driver = _arm(transport, clock)
    outcomes: list[ArmOutcome] = []
    driver.dispatch(ArmJob("p1", 101 * S, 0.8), outcomes.append)
    driver.poll(103 * S)  # deadline + timeout not yet passed
    assert outcomes == []
    driver.poll(103 * S + 1)
    assert transport.cancelled == [0]
    assert not outcomes[0].success and "no result from the arm within 2.0 s" in outcomes[0].message
    transport.sent[0][2](True, "too late")  # a result after the timeout is ignored
    assert len(outcomes) == 1 and driver.health().values["timed_out"] == 1


def test_arm_unavailable_and_release_fail_the_parts():
    clock = [100 * S]
    transport = StandInTransport(ready=False)
    driver = _arm(transport, clock)
    outcomes: list[ArmOutcome] = []
    driver.dispatch(ArmJob("p1", 101 * S, 0.8), outcomes.append)
    assert outcomes[0].message == "the arm's reject_part action server is not available"
    transport.is_ready = True
    driver.dispatch(ArmJob("p2", 101 * S, 0.8), outcomes.append)
    driver.close()
    assert outcomes[1].message == "the actuator was released before the arm finished"
    assert transport.cancelled == [0] and transport.closed


def test_arm_results_from_another_thread_are_delivered_once():
    clock = [100 * S]
    transport = StandInTransport()
    driver = _arm(transport, clock)
    outcomes: list[ArmOutcome] = []
    driver.dispatch(ArmJob("p1", 101 * S, 0.8), outcomes.append)
    on_result = transport.sent[0][2]
    threads = [threading.Thread(target=on_result, args=(True, "ok")) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 1
