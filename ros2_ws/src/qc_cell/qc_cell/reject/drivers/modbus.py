"""PLC output over Modbus/TCP (pymodbus sync client): each channel is a coil, or a holding register
written with an on/off value. The PLC wires the coil to the valve (or latches the stop request).

Station inputs (qc_cell.reject.station) are discrete inputs, read on every poll() (the node's tick): the
confirmation sensor's rising edges are detected between two reads, so the PLC must stretch that signal to at
least two tick periods (or latch it until read). The belt: a belt_running discrete input, and/or the PLC's encoder
counter as two input registers (32 bit, high word first), read on every poll for belt tracking.

Connection handling: a write on a broken connection (PLC restarted, cable pulled) closes the socket and
retries once on a fresh connection, so the first pulse after a PLC restart is not lost; while the PLC is
unreachable, poll() reconnects with exponential back-off and a heartbeat read detects a dead link between
pulses. Every request is bounded by `timeout_s`; the scheduler thread is never blocked longer than that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.client import ModbusTcpClient

from qc_cell.reject.belt import BeltReading
from qc_cell.reject.drivers.base import DriverError, DriverHealth, PulseDriver
from qc_cell.reject.records import CHANNELS
from qc_cell.reject.station import BELT_RUNNING, CONFIRM, StationReading, check_inputs

KINDS = ("coil", "register")


class _LinkLostError(DriverError):
    """The request did not get through (connection broken or timed out)."""


@dataclass(frozen=True)
class ModbusOutput:
    kind: str  # "coil" or "register"
    address: int  # 0-based protocol address
    on_value: int = 1  # register value for on (coils: True)
    off_value: int = 0  # register value for off (coils: False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Modbus output kind {self.kind!r} must be one of {KINDS}")
        if not 0 <= self.address <= 65535:
            raise ValueError(f"Modbus address {self.address} outside 0..65535")
        if self.kind == "register" and not (0 <= self.on_value <= 65535 and 0 <= self.off_value <= 65535):
            raise ValueError(f"register values must be 0..65535: on={self.on_value} off={self.off_value}")


class ModbusDriver(PulseDriver):
    method = "modbus"

    def __init__(
        self,
        host: str,
        port: int,
        outputs: dict[str, ModbusOutput],
        device_id: int = 1,
        timeout_s: float = 0.2,
        heartbeat_s: float = 1.0,
        reconnect_max_s: float = 5.0,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        inputs: dict[str, int] | None = None,
        event_clock_ns: Callable[[], int] = time.monotonic_ns,
        encoder_address: int = -1,
    ) -> None:
        """inputs: station input name -> 0-based discrete input address. event_clock_ns stamps confirmation
        edges (the controller's monotonic clock)."""
        unknown = set(outputs) - set(CHANNELS)
        if unknown:
            raise ValueError(f"unknown Modbus channels {sorted(unknown)}; known: {list(CHANNELS)}")
        if not host:
            raise ValueError("Modbus host is empty")
        if not 0 < port < 65536:
            raise ValueError(f"Modbus port {port} outside 1..65535")
        if timeout_s <= 0:
            raise ValueError(f"Modbus timeout must be > 0 s, got {timeout_s}")
        self.host, self.port = host, port
        self._outputs = dict(outputs)
        self._inputs = dict(inputs or {})
        check_inputs(self._inputs)
        for name, address in self._inputs.items():
            if not 0 <= address <= 65535:
                raise ValueError(f"Modbus discrete input address {address} of {name} outside 0..65535")
        if not -1 <= encoder_address <= 65534:
            raise ValueError(f"Modbus encoder input register {encoder_address} outside 0..65534 (-1 = none)")
        self._encoder_address = encoder_address
        self._encoder: deque[tuple[int, int]] = deque(maxlen=1000)  # (read at, count) since the last belt_reading
        self._event_clock_ns = event_clock_ns
        self._levels: dict[str, bool] = {}
        self._confirm_level = False
        self._confirmations: list[int] = []
        # (read at, belt running) of the last read, or None: replaced whole (no lock: read before an edge)
        self._belt: tuple[int, bool] | None = None
        self._device_id = device_id
        self._timeout_s = timeout_s
        self._heartbeat_ns = int(heartbeat_s * 1e9)
        self._reconnect_max_ns = int(reconnect_max_s * 1e9)
        self._clock_ns = clock_ns
        self._client: ModbusTcpClient | None = None
        self._lock = threading.Lock()  # the scheduler thread writes, the node timer polls
        self._connected = False
        self._error = ""
        self._next_attempt_ns = 0
        self._backoff_ns = 100_000_000
        self._last_ok_ns = 0
        self.writes = 0
        self.failures = 0
        self.reconnects = 0
        if logging.getLogger("pymodbus").level == logging.NOTSET:
            # This driver reports link problems itself (diagnostics, alerts); pymodbus would log each retry.
            logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._outputs)

    @property
    def inputs(self) -> frozenset[str]:
        return frozenset(self._inputs)

    def read_inputs(self) -> StationReading:
        """The level inputs of the last read (none while the PLC is unreachable: that is a driver fault of its
        own) and the confirmation edges seen since the previous call."""
        with self._lock:
            edges, self._confirmations = tuple(self._confirmations), []
            levels = dict(self._levels) if self._connected else {}
        return StationReading(levels, edges)

    @property
    def belt_inputs(self) -> frozenset[str]:
        return super().belt_inputs | ({"encoder"} if self._encoder_address >= 0 else frozenset())

    def belt_reading(self) -> BeltReading:
        """The belt_running input as of the last poll and the encoder counts read since the previous call (no I/O);
        unreadable while the PLC does not answer."""
        counts = []
        while self._encoder:
            counts.append(self._encoder.popleft())
        belt = self._belt
        if BELT_RUNNING not in self._inputs:
            return BeltReading(encoder_counts=tuple(counts), readable=self._connected or self._encoder_address < 0)
        if belt is None or not self._connected:
            return BeltReading(encoder_counts=tuple(counts), readable=False)
        return BeltReading(running_edges=(belt,), encoder_counts=tuple(counts))

    def open(self) -> None:
        with self._lock:
            self._client = ModbusTcpClient(self.host, port=self.port, timeout=self._timeout_s, retries=0)
            # An unreachable PLC at start-up is not fatal: poll() keeps reconnecting and health() reports it.
            if self._connect():
                for channel in self._outputs:
                    try:
                        self._write(channel, False)
                    except DriverError:
                        break

    def close(self, keep: frozenset[str] = frozenset()) -> None:
        """Kept outputs stay as they are in the PLC (a raised stop-line stays raised)."""
        with self._lock:
            if self._client is None:
                return
            if self._connected:
                for channel in self._outputs:
                    if channel in keep:
                        continue
                    try:
                        self._write(channel, False)
                    except DriverError:
                        break
            self._client.close()
            self._client = None
            self._connected = False

    def set_output(self, channel: str, on: bool) -> None:
        if channel not in self._outputs:
            raise DriverError(f"no Modbus output configured for channel {channel!r}")
        with self._lock:
            if self._client is None:
                raise DriverError("Modbus driver is not open")
            for attempt in (1, 2):
                if not self._connected and not self._connect():
                    self.failures += 1
                    raise DriverError(f"PLC {self.host}:{self.port} unreachable: {self._error}")
                try:
                    self._write(channel, on)
                    return
                except _LinkLostError:
                    if attempt == 2:
                        self.failures += 1
                        raise
                    # A stale connection (PLC restarted) fails once; retry on a fresh one.
                except DriverError:
                    self.failures += 1
                    raise

    def poll(self, now_ns: int) -> None:
        with self._lock:
            if self._client is None:
                return
            now = self._clock_ns()
            if not self._connected:
                if now >= self._next_attempt_ns:
                    self._connect()
                return
            if self._inputs:
                self._read_discrete_inputs()  # also the link check
            elif now - self._last_ok_ns >= self._heartbeat_ns and self._encoder_address < 0:
                self._heartbeat()
            if self._encoder_address >= 0 and self._connected:
                self._read_encoder()

    def health(self) -> DriverHealth:
        values = {
            "plc": f"{self.host}:{self.port}",
            "connected": self._connected,
            "writes": self.writes,
            "failures": self.failures,
            "reconnects": self.reconnects,
        }
        if self._client is None:
            return DriverHealth(False, "closed", values)
        if not self._connected:
            return DriverHealth(False, f"PLC {self.host}:{self.port} not connected: {self._error}", values)
        return DriverHealth(True, f"connected to PLC {self.host}:{self.port}", values)

    # --- below: called with self._lock held ---

    def _connect(self) -> bool:
        assert self._client is not None
        self._client.close()
        try:
            ok = bool(self._client.connect())
        except Exception as exc:
            ok = False
            self._error = f"connect: {exc}"
        now = self._clock_ns()
        if ok:
            if self._last_ok_ns:  # had been connected before
                self.reconnects += 1
            self._connected = True
            self._error = ""
            self._backoff_ns = 100_000_000
            self._last_ok_ns = now
            return True
        self._connected = False
        if not self._error.startswith("connect"):
            self._error = "connection refused or timed out"
        self._next_attempt_ns = now + self._backoff_ns
        self._backoff_ns = min(self._backoff_ns * 2, self._reconnect_max_ns)
        return False

    def _write(self, channel: str, on: bool) -> None:
        assert self._client is not None
        out = self._outputs[channel]
        try:
            if out.kind == "coil":
                response = self._client.write_coil(out.address, on, device_id=self._device_id)
            else:
                value = out.on_value if on else out.off_value
                response = self._client.write_register(out.address, value, device_id=self._device_id)
        except Exception as exc:
            self._lost(f"writing {out.kind} {out.address}: {exc}")
            raise _LinkLostError(f"PLC {self.host}:{self.port}: {self._error}") from exc
        if response.isError():
            # The PLC answered: the link is fine, the request is not (wrong address, device id, ...).
            self._error = f"PLC refused writing {out.kind} {out.address}: {response}"
            raise DriverError(self._error)
        self.writes += 1
        self._last_ok_ns = self._clock_ns()

    def _heartbeat(self) -> None:
        assert self._client is not None
        channel = next(iter(self._outputs))
        out = self._outputs[channel]
        try:
            if out.kind == "coil":
                response = self._client.read_coils(out.address, count=1, device_id=self._device_id)
            else:
                response = self._client.read_holding_registers(out.address, count=1, device_id=self._device_id)
        except Exception as exc:
            self._lost(f"heartbeat read: {exc}")
            return
        if not response.isError():
            self._last_ok_ns = self._clock_ns()

    def _read_discrete_inputs(self) -> None:
        assert self._client is not None
        first = min(self._inputs.values())
        count = max(self._inputs.values()) - first + 1
        try:
            response = self._client.read_discrete_inputs(first, count=count, device_id=self._device_id)
        except Exception as exc:
            self._lost(f"reading discrete inputs {first}..{first + count - 1}: {exc}")
            return
        if response.isError():
            self._error = f"PLC refused reading discrete inputs {first}..{first + count - 1}: {response}"
            return
        self._last_ok_ns = self._clock_ns()
        levels = {name: bool(response.bits[address - first]) for name, address in self._inputs.items()}
        running = levels.pop(BELT_RUNNING, None)
        if running is not None:
            self._belt = (self._event_clock_ns(), running)
        confirm = levels.pop(CONFIRM, None)
        if confirm is not None:
            if confirm and not self._confirm_level:
                self._confirmations.append(self._event_clock_ns())
            self._confirm_level = confirm
        self._levels = levels

    def _read_encoder(self) -> None:
        assert self._client is not None
        address = self._encoder_address
        try:
            response = self._client.read_input_registers(address, count=2, device_id=self._device_id)
        except Exception as exc:
            self._lost(f"reading the encoder input registers {address}..{address + 1}: {exc}")
            return
        if response.isError():
            self._error = f"PLC refused reading the encoder input registers {address}..{address + 1}: {response}"
            return
        self._last_ok_ns = self._clock_ns()
        high, low = response.registers[:2]
        self._encoder.append((self._event_clock_ns(), (high << 16) | low))

    def _lost(self, error: str) -> None:
        assert self._client is not None
        self._client.close()
        self._connected = False
        self._error = error
        self._next_attempt_ns = self._clock_ns()
