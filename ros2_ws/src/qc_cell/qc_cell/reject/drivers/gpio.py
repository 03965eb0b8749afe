"""Jetson GPIO pusher: each channel drives one header pin (through a relay/valve driver board, never a
solenoid directly). Jetson.GPIO is imported only when the driver is opened, so the rest of the cell runs
anywhere; where it is missing or the board is not a Jetson, open() fails with a clear DriverError."""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

from qc_cell.reject.drivers.base import DriverError, DriverHealth, PulseDriver
from qc_cell.reject.records import CHANNELS

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
        self, pins: dict[str, int], mode: str = "BOARD", active_high: bool = True, gpio: ModuleType | None = None
    ) -> None:
        """pins: channel -> header pin number in `mode` numbering. `gpio` replaces Jetson.GPIO (tests)."""
        unknown = set(pins) - set(CHANNELS)
        if unknown:
            raise ValueError(f"unknown GPIO channels {sorted(unknown)}; known: {list(CHANNELS)}")
        if len(set(pins.values())) != len(pins):
            raise ValueError(f"two channels share one pin: {pins}")
        if mode not in PIN_MODES:
            raise ValueError(f"pin mode {mode!r} must be one of {PIN_MODES}")
        self._pins = dict(pins)
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

    def close(self) -> None:
        gpio, self._gpio = self._gpio, None
        if gpio is None:
            return
        pins = list(self._pins.values())
        for pin in pins:
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
