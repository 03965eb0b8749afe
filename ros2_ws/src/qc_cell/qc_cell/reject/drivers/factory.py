"""Driver selection: the node's driver parameters in one record, and the driver built from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from qc_cell.reject.drivers.base import PulseDriver, RejectDriver
from qc_cell.reject.drivers.gpio import GpioDriver
from qc_cell.reject.drivers.modbus import ModbusDriver, ModbusOutput
from qc_cell.reject.drivers.robot_arm import ArmTransport, RobotArmDriver
from qc_cell.reject.drivers.sim import SimDriver
from qc_cell.reject.records import HEARTBEAT, REJECT, STOP_LINE

DRIVERS = ("sim", "gpio", "modbus", "robot_arm")
# Where the line signals (stop-line, heartbeat) go: "" = the actuator driver's own outputs, else a second driver.
SIGNAL_DRIVERS = ("", "sim", "gpio", "modbus")
SIGNAL_CHANNELS = (STOP_LINE, HEARTBEAT)


@dataclass(frozen=True)
class DriverSettings:
    driver: str = "sim"
    gpio_pins: dict[str, int] = field(default_factory=lambda: {REJECT: 12})  # channel -> header pin
    gpio_pin_mode: str = "BOARD"
    gpio_active_high: bool = True
    modbus_host: str = "127.0.0.1"
    modbus_port: int = 502
    modbus_device_id: int = 1
    modbus_timeout_s: float = 0.2
    modbus_heartbeat_s: float = 1.0
    modbus_outputs: dict[str, ModbusOutput] = field(default_factory=lambda: {REJECT: ModbusOutput("coil", 0)})
    gpio_inputs: dict[str, int] = field(default_factory=dict)  # station input -> header pin
    modbus_inputs: dict[str, int] = field(default_factory=dict)  # station input -> discrete input address
    modbus_encoder_address: int = -1  # the PLC's encoder counter: two input registers (high word first)
    arm_result_timeout_s: float = 5.0
    # line signals on a second driver (GPIO pins of the same header, or a separate Modbus device)
    signals_driver: str = ""
    signals_gpio_pins: dict[str, int] = field(default_factory=dict)  # stop_line / heartbeat -> header pin
    signals_modbus_host: str = "127.0.0.1"
    signals_modbus_port: int = 502
    signals_modbus_device_id: int = 1
    signals_modbus_outputs: dict[str, ModbusOutput] = field(default_factory=dict)

    def validate(self) -> None:
        """ValueError with the reason when the settings cannot make a working driver."""
        if self.driver not in DRIVERS:
            raise ValueError(f"driver {self.driver!r} must be one of {DRIVERS}")
        if self.signals_driver not in SIGNAL_DRIVERS:
            raise ValueError(f"signals_driver {self.signals_driver!r} must be one of {SIGNAL_DRIVERS}")
        signals = build_signals(self)
        if signals is not None and not signals.channels:
            raise ValueError(
                f"signals_driver '{self.signals_driver}' has no output: set signals_gpio_stop_line_pin / "
                "signals_modbus_stop_line_address (and the heartbeat ones)"
            )
        if self.signals_driver == "gpio" and self.driver == "gpio":
            shared = set(self.signals_gpio_pins.values()) & {*self.gpio_pins.values(), *self.gpio_inputs.values()}
            if shared:
                raise ValueError(f"line-signal GPIO pins {sorted(shared)} are also the actuator's pins")
        if self.driver == "robot_arm":
            if self.arm_result_timeout_s <= 0:
                raise ValueError(f"arm_result_timeout_s must be > 0, got {self.arm_result_timeout_s}")
            return
        driver = build_driver(self)  # the constructors check their settings and touch no hardware
        if REJECT not in driver.channels:
            raise ValueError(f"driver '{self.driver}' has no reject output configured")


def build_signals(settings: DriverSettings) -> PulseDriver | None:
    """The second driver for the stop-line and heartbeat outputs, or None (the actuator driver has them)."""
    if settings.signals_driver == "":
        return None
    if settings.signals_driver == "sim":
        return SimDriver(channels=SIGNAL_CHANNELS)
    if settings.signals_driver == "gpio":
        return GpioDriver(settings.signals_gpio_pins, settings.gpio_pin_mode, settings.gpio_active_high)
    if settings.signals_driver == "modbus":
        return ModbusDriver(
            settings.signals_modbus_host,
            settings.signals_modbus_port,
            settings.signals_modbus_outputs,
            device_id=settings.signals_modbus_device_id,
            timeout_s=settings.modbus_timeout_s,
            heartbeat_s=settings.modbus_heartbeat_s,
        )
    raise ValueError(f"signals_driver {settings.signals_driver!r} must be one of {SIGNAL_DRIVERS}")


def build_driver(settings: DriverSettings, arm_transport: ArmTransport | None = None) -> RejectDriver:
    if settings.driver == "sim":
        return SimDriver()
    if settings.driver == "gpio":
        return GpioDriver(
            settings.gpio_pins, settings.gpio_pin_mode, settings.gpio_active_high, inputs=settings.gpio_inputs
        )
    if settings.driver == "modbus":
        return ModbusDriver(
            settings.modbus_host,
            settings.modbus_port,
            settings.modbus_outputs,
            device_id=settings.modbus_device_id,
            timeout_s=settings.modbus_timeout_s,
            heartbeat_s=settings.modbus_heartbeat_s,
            inputs=settings.modbus_inputs,
            encoder_address=settings.modbus_encoder_address,
        )
    if settings.driver == "robot_arm":
        if arm_transport is None:
            raise ValueError("the robot_arm driver needs an action-client transport")
        return RobotArmDriver(arm_transport, int(settings.arm_result_timeout_s * 1e9))
    raise ValueError(f"driver {settings.driver!r} must be one of {DRIVERS}")
