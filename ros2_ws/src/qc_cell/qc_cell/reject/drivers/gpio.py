"""Jetson GPIO pusher: each channel drives one header pin (through a relay/valve driver board, never a
solenoid directly). Jetson.GPIO is imported only when the driver is opened, so the rest of the cell runs
anywhere; where it is missing or the board is not a Jetson, open() fails with a clear DriverError.

Station inputs (qc_cell.reject.station) are input pins, active high (a PNP sensor through a level shifter or
optocoupler board, never 24 V directly): the confirmation sensor through a rising-edge interrupt
(add_event_detect), stamped when it fires; the level inputs read on each read_inputs()."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from types import ModuleType

from qc_cell.reject.belt import BeltReading
from qc_cell.reject.drivers.base import DriverError, DriverHealth, PulseDriver
from qc_cell.reject.records import CHANNELS
from qc_cell.reject.station import BELT_RUNNING, CONFIRM, StationReading, check_inputs

PIN_MODES = ("BOARD", "BCM", "CVM", "TEGRA_SOC")


def import_jetson_gpio() -> ModuleType:
    try:
        return importlib.import_module("Jetson.GPIO")
    except ImportError as exc:
        raise DriverError(
            "driver 'gpio' needs the Jetson.GPIO package, which is not installed "
            f"({exc}). On the Jetson: pip install -r requirements/edge.txt (and add the user to the gpio group); "
            "off a Jetson use driver 'sim' or 'modbus'."
        ) from exc
    except Exception as exc:  # Jetson.GPIO raises at import when the board is not a supported Jetson
        hint = ""
        if "Could not determine Jetson model" in str(exc):  # in a container /proc/device-tree is masked
            hint = (
                "; in a container set JETSON_MODEL_NAME (docker/jetson_model_name.sh prints it on the host, "
                "docs/jetson.md)"
            )
        raise DriverError(f"Jetson.GPIO could not be loaded on this machine: {exc}{hint}") from exc


class GpioDriver(PulseDriver):
    method = "gpio"

    def __init__(
        self,
        pins: dict[str, int],
        mode: str = "BOARD",
        active_high: bool = True,
        gpio: ModuleType | None = None,
        inputs: dict[str, int] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """pins: channel -> header pin number in `mode` numbering; inputs: station input -> header pin. `gpio`
        replaces Jetson.GPIO (tests); clock_ns stamps confirmation edges (the controller's monotonic clock)."""
        unknown = set(pins) - set(CHANNELS)
        if unknown:
            raise ValueError(f"unknown GPIO channels {sorted(unknown)}; known: {list(CHANNELS)}")
        inputs = dict(inputs or {})
        check_inputs(inputs)
        every = [*pins.values(), *inputs.values()]
        if len(set(every)) != len(every):
            raise ValueError(f"two channels or inputs share one pin: outputs {pins}, inputs {inputs}")
        if mode not in PIN_MODES:
            raise ValueError(f"pin mode {mode!r} must be one of {PIN_MODES}")
        self._pins = dict(pins)
        self._inputs = inputs
        self._clock_ns = clock_ns
        self._confirmations: list[int] = []
        self._mode = mode
        self._active_high = active_high
        self._module = gpio
        self._gpio: ModuleType | None = None
        self._lock = threading.Lock()
        self._error = ""
        self._writes = 0

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._pins)

    @property
    def inputs(self) -> frozenset[str]:
        return frozenset(self._inputs)

    def _confirmed(self, _channel: int) -> None:
        """Jetson.GPIO's event thread: the confirmation sensor saw a part."""
        stamp = self._clock_ns()
        with self._lock:
            self._confirmations.append(stamp)

    def read_inputs(self) -> StationReading:
        gpio = self._gpio
        with self._lock:
            edges, self._confirmations = tuple(self._confirmations), []
        if gpio is None:
            return StationReading({}, edges)
        try:
            levels = {name: gpio.input(pin) == gpio.HIGH for name, pin in self._inputs.items() if name != CONFIRM}
        except Exception as exc:
            self._error = f"reading input pins {self._inputs}: {exc}"
            return StationReading({}, edges)
        return StationReading(levels, edges)

    def belt_reading(self) -> BeltReading:
        """The belt-running pin read now (a pin read, no bus: also right before an edge), stamped now."""
        pin = self._inputs.get(BELT_RUNNING)
        gpio = self._gpio
        if pin is None or gpio is None:
            return BeltReading(readable=pin is None)
        try:
            running = gpio.input(pin) == gpio.HIGH
        except Exception:  # a pin that cannot be read: the belt position is unknown
            return BeltReading(readable=False)
        return BeltReading(running_edges=((self._clock_ns(), running),))

    def _belt_changed(self, _channel: int) -> None:
        """Jetson.GPIO's event thread: the belt started or stopped; the controller reads the pin and re-plans."""
        listener = self.belt_listener
        if listener is not None:
            listener()

    def _level(self, on: bool) -> int:
        assert self._gpio is not None
        return self._gpio.HIGH if on == self._active_high else self._gpio.LOW

    def open(self) -> None:
        gpio = self._module if self._module is not None else import_jetson_gpio()
        try:
            gpio.setwarnings(False)
            gpio.setmode(getattr(gpio, self._mode))
            self._gpio = gpio
            for pin in self._pins.values():
                gpio.setup(pin, gpio.OUT, initial=self._level(False))
            for name, pin in self._inputs.items():
                gpio.setup(pin, gpio.IN)
                if name == CONFIRM:
                    gpio.add_event_detect(pin, gpio.RISING, callback=self._confirmed)
                elif name == BELT_RUNNING and hasattr(gpio, "BOTH"):
                    gpio.add_event_detect(pin, gpio.BOTH, callback=self._belt_changed)
        except Exception as exc:
            self._gpio = None
            raise DriverError(f"GPIO set-up of pins {self._pins} ({self._mode} numbering) failed: {exc}") from exc
        self._error = ""

    def set_output(self, channel: str, on: bool) -> None:
        if self._gpio is None:
            raise DriverError("GPIO driver is not open")
        pin = self._pins.get(channel)
        if pin is None:
            raise DriverError(f"no GPIO pin configured for channel {channel!r}")
        try:
            with self._lock:
                self._gpio.output(pin, self._level(on))
                self._writes += 1
            self._error = ""
        except Exception as exc:
            self._error = f"writing pin {pin}: {exc}"
            raise DriverError(f"GPIO {self._error}") from exc

    def close(self, keep: frozenset[str] = frozenset()) -> None:
        """Kept outputs stay driven (not cleaned up) until the process ends; then the pin floats, so wire the
        stop-line so that a released pin stops the line too (docs/reject.md)."""
        gpio, self._gpio = self._gpio, None
        if gpio is None:
            return
        released = {channel: pin for channel, pin in self._pins.items() if channel not in keep}
        pins = [*released.values(), *self._inputs.values()]
        for pin in released.values():
            try:
                gpio.output(pin, gpio.HIGH if not self._active_high else gpio.LOW)
            except Exception as exc:  # keep releasing the other pins
                self._error = f"switching pin {pin} off on release: {exc}"
        try:
            gpio.cleanup(pins)
        except Exception as exc:
            self._error = f"GPIO cleanup: {exc}"

    def health(self) -> DriverHealth:
        values = {"pins": self._pins, "mode": self._mode, "writes": self._writes}
        if self._error:
            return DriverHealth(False, self._error, values)
        return DriverHealth(self._gpio is not None, "pins set up" if self._gpio is not None else "closed", values)
