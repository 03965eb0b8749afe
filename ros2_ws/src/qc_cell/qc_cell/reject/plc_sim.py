"""A simulated PLC: a real pymodbus Modbus/TCP server on loopback, in a background thread, that
timestamps every coil and holding-register write, and has discrete inputs and input registers a test sets (the
station's sensors and the belt encoder's counter wired to the PLC). The modbus driver's tests, the benchmark and the
demo talk to it exactly as to a PLC; it can be stopped and restarted on the same port."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer


@dataclass(frozen=True)
class Write:
    t_ns: int  # server-side time the value was stored
    kind: str  # "coil" or "register"
    address: int  # Modbus protocol address (0-based)
    value: int


class _RecordingBlock(ModbusSequentialDataBlock):
    def __init__(self, kind: str, size: int, on_write: Callable[[Write], None], clock_ns: Callable[[], int]):
        super().__init__(0, [False] * (size + 1) if kind == "coil" else [0] * (size + 1))
        self._kind = kind
        self._on_write = on_write
        self._clock_ns = clock_ns

    def setValues(self, address, values):  # noqa: N802 - pymodbus API
        t_ns = self._clock_ns()
        result = super().setValues(address, values)
        # ModbusDeviceContext shifts protocol addresses by one before they reach the block.
        for offset, value in enumerate(values):
            self._on_write(Write(t_ns, self._kind, address - 1 + offset, int(value)))
        return result


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SimulatedPlc:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        size: int = 128,
        clock_ns: Callable[[], int] = time.time_ns,
        rt_priority: int = 0,
    ) -> None:
        """rt_priority > 0 runs the server thread at SCHED_FIFO (when permitted), standing in for a PLC's own
        CPU: the benchmark then measures the actuator's side, not this machine's other load on the PLC."""
        self.host = host
        self.rt_priority = rt_priority
        self.realtime = "not requested"
        self.port = port or free_port(host)
        self.writes: list[Write] = []
        self._lock = threading.Lock()
        self._coils = _RecordingBlock("coil", size, self._record, clock_ns)
        self._registers = _RecordingBlock("register", size, self._record, clock_ns)
        self._discrete = ModbusSequentialDataBlock(0, [False] * (size + 1))
        self._input_registers = ModbusSequentialDataBlock(0, [0] * (size + 1))
        device = ModbusDeviceContext(co=self._coils, hr=self._registers, di=self._discrete, ir=self._input_registers)
        self._context = ModbusServerContext(devices=device, single=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusTcpServer | None = None
        self._thread: threading.Thread | None = None

    def _record(self, write: Write) -> None:
        with self._lock:
            self.writes.append(write)

    def coil(self, address: int) -> bool:
        return bool(self._coils.getValues(address + 1, 1)[0])

    def set_input(self, address: int, on: bool) -> None:
        """Set a discrete input (0-based), as a sensor wired to the PLC would."""
        self._discrete.setValues(address + 1, [on])

    def set_encoder(self, address: int, count: int) -> None:
        """Set a 32-bit counter in two input registers (0-based, high word first), as the PLC's encoder counter."""
        self._input_registers.setValues(address + 1, [(count >> 16) & 0xFFFF, count & 0xFFFF])

    def register(self, address: int) -> int:
        return int(self._registers.getValues(address + 1, 1)[0])

    def writes_since(self, index: int) -> list[Write]:
        with self._lock:
            return self.writes[index:]

    def writes_to(self, kind: str, address: int) -> list[Write]:
        with self._lock:
            return [w for w in self.writes if w.kind == kind and w.address == address]

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, timeout_s: float = 5.0) -> SimulatedPlc:
        if self._thread is not None:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            if self.rt_priority > 0:
                try:
                    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.rt_priority))
                    self.realtime = f"SCHED_FIFO {self.rt_priority}"
                except (OSError, AttributeError) as exc:
                    self.realtime = f"not granted ({exc})"
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def listen() -> ModbusTcpServer:  # the server must be created inside a running loop
                server = ModbusTcpServer(self._context, address=(self.host, self.port))
                await server.serve_forever(background=True)
                return server

            try:
                self._server = loop.run_until_complete(listen())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._server.shutdown())
            loop.close()

        self._thread = threading.Thread(target=serve, name=f"plc-sim-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s) or errors:
            self._thread = None
            raise RuntimeError(f"simulated PLC could not listen on {self.host}:{self.port}: {errors}")
        return self

    def stop(self) -> None:
        """Stop listening and drop every client connection (like a PLC power cycle)."""
        if self._thread is None:
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._thread = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> SimulatedPlc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    """Run a simulated PLC in the foreground (demos, commissioning without the real PLC); prints each write."""
    import argparse

    parser = argparse.ArgumentParser(description="Simulated Modbus/TCP PLC on loopback (pymodbus server)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5020, help="TCP port (default 5020; 502 needs root)")
    parser.add_argument("--rt-priority", type=int, default=0, help="SCHED_FIFO priority of the server (0 = normal)")
    args = parser.parse_args()
    plc = SimulatedPlc(args.host, args.port, rt_priority=args.rt_priority)
    plc.start()
    print(f"simulated PLC listening on {plc.host}:{plc.port} ({plc.realtime}); Ctrl-C to stop", flush=True)
    print("each write: <time ns> <coil|register> <address> = <value>", flush=True)
    shown = 0
    try:
        while True:
            time.sleep(0.05)
            new = plc.writes_since(shown)
            shown += len(new)
            for w in new:
                print(f"{w.t_ns} {w.kind} {w.address} = {w.value}", flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        plc.stop()


if __name__ == "__main__":
    raise SystemExit(main())
