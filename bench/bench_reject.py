"""Reject actuation timing error (actual - planned) for the sim and modbus drivers at 10 and 30 parts/s.

Every part is DEFECTIVE (every part is ejected: the worst case). Each verdict arrives right after capture;
the controller plans its pulse from the conveyor model and the deadline scheduler drives the output.

- "driver" error: actual = when the driver call returned (sim: output recorded; modbus: the PLC acknowledged
  the coil write over Modbus/TCP), minus the planned command time.
- "PLC" error (modbus only): when the loopback PLC (a real pymodbus server) stored the coil, minus planned.
  A PLC is a device of its own: the simulated PLC runs in its own process (python -m qc_cell.reject.plc_sim)
  at SCHED_FIFO (--plc-rt-priority), so that this machine's other load does not delay the PLC; the rows
  "rt+spin/PLC normal" show the PLC process at normal priority, competing for the CPUs too.
- "node": the same through the reject_actuator node (sim driver, its executor as in the node process,
  verdicts published on quality/decision): actual - planned as reported on reject/event.
- Schedulers, all measured in the same run:
  "rt+spin": the node's configuration: SCHED_FIFO thread (scheduler_rt_priority), sleep then busy-wait the
             last spin ms. Needs CAP_SYS_NICE/rtprio; the table says when it was not granted.
  "spin":    normal scheduling, sleep then busy-wait (what runs where real-time priority is not granted).
  "sleep":   baseline: normal scheduling, plain sleep until each deadline. Ratio = baseline p99 / rt+spin p99.

Goal: p99 within 5 ms on this machine. Usage: python bench/bench_reject.py [--seconds 10] [--spin-ms 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from qc_cell.reject.config import RejectConfig
from qc_cell.reject.controller import RejectController, percentile
from qc_cell.reject.drivers.base import PulseDriver
from qc_cell.reject.drivers.modbus import ModbusDriver, ModbusOutput
from qc_cell.reject.drivers.sim import SimDriver
from qc_cell.reject.plc_sim import Write, free_port
from qc_cell.reject.recording import RecordingSink
from qc_cell.reject.records import DEFECTIVE, DONE, REJECT, Decision

MS = 1_000_000
GOAL_P99_MS = 5.0
# 300 mm at 500 mm/s: 600 ms from capture to the ejector; 15 ms pulses, parts >= 33 ms apart: no merging.
CONFIG = RejectConfig(
    reject_distance_mm=300.0,
    belt_speed_mm_s=500.0,
    actuator_latency_ms=10.0,
    pulse_width_ms=15.0,
    late_tolerance_ms=50.0,
    min_pulse_gap_ms=5.0,
    watchdog_timeout_s=0.0,
)


SCHEDULERS = ("rt+spin", "spin", "sleep")


class PlcProcess:
    """The simulated PLC in a separate process; collects its timestamped writes from its output."""

    def __init__(self, rt_priority: int) -> None:
        self.host, self.port = "127.0.0.1", free_port()
        command = ["-m", "qc_cell.reject.plc_sim", "--port", str(self.port), "--rt-priority", str(rt_priority)]
        self._proc = subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        self.banner = self._proc.stdout.readline().strip()
        self._proc.stdout.readline()  # format line
        self._writes: list[Write] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.realtime = self.banner[self.banner.find("(") + 1 : self.banner.find(")")]

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            t_ns, kind, address, _, value = line.split()
            with self._lock:
                self._writes.append(Write(int(t_ns), kind, int(address), int(value)))

    def clear(self) -> None:
        time.sleep(0.2)  # the PLC prints its writes every 50 ms
        with self._lock:
            self._writes.clear()

    def writes_to(self, kind: str, address: int) -> list[Write]:
        time.sleep(0.2)
        with self._lock:
            return [w for w in self._writes if w.kind == kind and w.address == address]

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()


@dataclass
class Result:
    driver: str
    rate: int
    scheduler: str
    realtime: str
    parts: int
    done: int
    driver_err_ms: list[float]
    plc_err_ms: list[float]
    cpu_s: float
    wall_s: float


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(
    driver_name: str,
    rate: int,
    scheduler: str,
    spin_ms: float,
    rt_priority: int,
    seconds: float,
    plc: PlcProcess | None,
) -> Result:
    driver: PulseDriver
    if driver_name == "modbus":
        assert plc is not None
        driver = ModbusDriver(plc.host, plc.port, {REJECT: ModbusOutput("coil", 0)}, timeout_s=0.5)
    else:
        driver = SimDriver()
    sink = RecordingSink()
    spin_ns = 0 if scheduler == "sleep" else int(spin_ms * MS)
    rt = rt_priority if scheduler == "rt+spin" else 0
    controller = RejectController(CONFIG, driver, sink, spin_ns=spin_ns, rt_priority=rt)
    controller.open()
    controller.arm()
    if plc is not None:
        plc.clear()  # drop open()'s initial off-write
    parts = max(1, int(seconds * rate))
    period_ns = 1_000_000_000 // rate
    cpu0, wall0 = _cpu_s(), time.monotonic()
    start = time.time_ns()
    for i in range(parts):  # the verdict stream: one part every period, verdict right after capture
        capture = start + i * period_ns
        delay = (capture - time.time_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        controller.on_decision(Decision(f"p{i}", DEFECTIVE, capture))
    sink.wait(lambda: len(sink.events) >= parts, timeout=10.0)
    time.sleep(0.1)  # let the last off-edges go out
    cpu, wall = _cpu_s() - cpu0, time.monotonic() - wall0
    realtime = controller.realtime
    controller.close()
    events = sorted(sink.events, key=lambda e: e.planned_ns)
    done = [e for e in events if e.outcome == DONE]
    driver_err = [e.lateness_ms for e in done]
    plc_err: list[float] = []
    if plc is not None:
        ons = [w.t_ns for w in plc.writes_to("coil", 0) if w.value == 1]
        plc_err = [(t - e.planned_ns) / MS for t, e in zip(ons, done, strict=False)]
    return Result(driver_name, rate, scheduler, realtime, parts, len(done), driver_err, plc_err, cpu, wall)


def run_node(rate: int, seconds: float, rt_priority: int, spin_ms: float) -> tuple[int, list[float], str]:
    """Verdicts -> reject_actuator node (sim) -> reject/event, all in this process on a real rclpy graph."""
    from rclpy.parameter import Parameter

    from qc_cell.nodes.reject_actuator import EXECUTOR_THREADS, GIL_SWITCH_INTERVAL_S, RejectActuator
    from qc_cell.ros import qos
    from qc_cell.ros.time import from_ns
    from qc_cell.testing.ros import ros_graph
    from qc_interfaces.msg import QualityDecision, RejectEvent

    overrides = [
        Parameter("driver", value="sim"),
        Parameter("reject_distance_mm", value=CONFIG.reject_distance_mm),
        Parameter("belt_speed_mm_s", value=CONFIG.belt_speed_mm_s),
        Parameter("actuator_latency_ms", value=CONFIG.actuator_latency_ms),
        Parameter("pulse_width_ms", value=CONFIG.pulse_width_ms),
        Parameter("late_tolerance_ms", value=CONFIG.late_tolerance_ms),
        Parameter("min_pulse_gap_ms", value=CONFIG.min_pulse_gap_ms),
        Parameter("watchdog_timeout_s", value=0.0),
        Parameter("scheduler_rt_priority", value=rt_priority),
        Parameter("scheduler_spin_ms", value=spin_ms),
    ]
    events: list[RejectEvent] = []
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as the node's main() does
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        node = graph.add(RejectActuator(context=graph.context, parameter_overrides=overrides))
        node.trigger_configure()
        node.trigger_activate()
        probe = graph.node("bench_probe")
        pub = probe.create_publisher(QualityDecision, "quality/decision", qos.PART_RECORDS)
        probe.create_subscription(RejectEvent, "reject/event", events.append, qos.EVENTS)
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                graph.executor.spin_once(timeout_sec=0.05)

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        try:
            end = time.monotonic() + 10.0
            while pub.get_subscription_count() < 1 and time.monotonic() < end:
                time.sleep(0.01)
            parts = max(1, int(seconds * rate))
            start = time.time_ns()
            for i in range(parts):
                capture = start + i * (1_000_000_000 // rate)
                delay = (capture - time.time_ns()) / 1e9
                if delay > 0:
                    time.sleep(delay)
                msg = QualityDecision(part_id=f"n{i}", verdict=QualityDecision.DEFECTIVE)
                msg.header.stamp = from_ns(capture)
                pub.publish(msg)
            end = time.monotonic() + 10.0
            while len(events) < parts and time.monotonic() < end:
                time.sleep(0.02)
            realtime = node.controller.realtime if node.controller else "?"
        finally:
            stop.set()
            spinner.join(5.0)
    sys.setswitchinterval(previous_interval)
    done = [e.lateness_ms for e in events if e.outcome == RejectEvent.OUTCOME_DONE]
    return parts, done, realtime


def fmt(values: list[float]) -> str:
    if not values:
        return f"{'-':>7} {'-':>7} {'-':>7}"
    return f"{percentile(values, 50):7.3f} {percentile(values, 99):7.3f} {max(values):7.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each run (default 10)")
    parser.add_argument("--spin-ms", type=float, default=2.0, help="busy-wait window of the scheduler (default 2)")
    parser.add_argument("--rt-priority", type=int, default=50, help="SCHED_FIFO priority for rt+spin (default 50)")
    parser.add_argument("--plc-rt-priority", type=int, default=40, help="simulated PLC thread priority (0 = normal)")
    args = parser.parse_args()

    print(__doc__.split("\n\n")[0])
    print(
        f"{args.seconds:.0f} s per run; spin window {args.spin_ms} ms; rt priority {args.rt_priority}; "
        f"goal: p99 <= {GOAL_P99_MS} ms; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n"
    )
    header = (
        f"{'driver':7} {'pps':>3} {'scheduler':>21} {'parts':>5} {'done':>5} | {'driver error p50/p99/max ms':>23} "
        f"| {'PLC error p50/p99/max ms':>23} | {'cpu%':>5}"
    )
    print(header)
    print("-" * len(header))
    rows: dict[tuple[str, int, str], Result] = {}
    plcs = {"": PlcProcess(args.plc_rt_priority), "/PLC normal": PlcProcess(0)}
    runs = [(d, r, s, "") for d in ("sim", "modbus") for r in (10, 30) for s in SCHEDULERS]
    runs += [("modbus", r, "rt+spin", "/PLC normal") for r in (10, 30)] if args.plc_rt_priority > 0 else []
    try:
        for driver, rate, scheduler, plc_mode in sorted(runs, key=lambda run: (run[0] == "modbus", run[1])):
            plc = plcs[plc_mode] if driver == "modbus" else None
            r = run_once(driver, rate, scheduler, args.spin_ms, args.rt_priority, args.seconds, plc)
            rows[(driver, rate, scheduler + plc_mode)] = r
            label = (scheduler if r.realtime.startswith("SCHED") or scheduler != "rt+spin" else "rt(DENIED)") + plc_mode
            print(
                f"{driver:7} {rate:>3} {label:>21} {r.parts:>5} {r.done:>5} | {fmt(r.driver_err_ms)} "
                f"| {fmt(r.plc_err_ms)} | {100 * r.cpu_s / r.wall_s:5.1f}",
                flush=True,
            )
    finally:
        for server in plcs.values():
            server.stop()
    print()
    worst = 0.0
    for driver in ("sim", "modbus"):
        for rate in (10, 30):
            ours, base = rows[(driver, rate, "rt+spin")], rows[(driver, rate, "sleep")]
            p99 = percentile(ours.plc_err_ms or ours.driver_err_ms, 99)
            base_p99 = percentile(base.plc_err_ms or base.driver_err_ms, 99)
            worst = max(worst, p99)
            missing = ours.parts - ours.done
            print(
                f"{driver:7} {rate:>2} pps: rt+spin p99 {p99:6.3f} ms (baseline sleep {base_p99:6.3f} ms, "
                f"ratio {base_p99 / p99 if p99 > 0 else float('inf'):5.1f}x); parts not DONE: {missing}"
            )
    print(f"\nactuation thread in rt+spin runs: {rows[('sim', 10, 'rt+spin')].realtime}")
    print(f"simulated PLC thread: {plcs[''].realtime}")
    print("\nthrough the reject_actuator node (sim driver, reject/event lateness):")
    for rate in (10, 30):
        parts, lateness, realtime = run_node(rate, args.seconds, args.rt_priority, args.spin_ms)
        p99 = percentile(lateness, 99)
        worst = max(worst, p99)
        print(f"node    {rate:>2} pps: {len(lateness)}/{parts} DONE, p50/p99/max {fmt(lateness)} ms ({realtime})")
    verdict = "MET" if worst <= GOAL_P99_MS else "NOT MET"
    print(f"goal p99 <= {GOAL_P99_MS} ms (PLC-side for modbus): {verdict} (worst p99 {worst:.3f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
