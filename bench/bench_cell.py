#!/usr/bin/env python3
"""Whole-cell benchmark (issue 9): in one run on this machine,

- bare preprocess + inference latency of the default model (the same functions the node calls);
- capture-to-verdict latency p50/p95/p99 of the full cell, every node in its own process (cell runner,
  params/demo.yaml, no cloud bridge), at 640x480 and 1280x720 (--sizes, e.g. 2448x2048 for 5 MP), 10 and 30
  parts/s, frames through the shared-memory frame pool (--frame-pool off: inline through DDS, for comparison);
- the ratio of the cell's median to the bare median, and p99 to the cell's median;
- throughput at saturation (camera free-running far above what inference can score);
- CPU use of the cell's processes.

    source scripts/env.sh && python bench/bench_cell.py [--seconds 15] [--sizes 640x480,1280x720]
        [--rates 10,30] [--frame-pool on|off] [--no-saturation]

Goal: median capture-to-verdict within 2x the bare preprocess + inference time at 1280x720 and 30 parts/s,
and p99 within 3x the median. Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_inference import BareBackend  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from qc_cell.bringup.cell_runner import CellRunner  # noqa: E402
from qc_cell.bringup.params_file import load as load_params  # noqa: E402
from qc_cell.bringup.recorder import CellRecorder  # noqa: E402
from qc_cell.ros import qos  # noqa: E402
from qc_cell.ros.time import to_ns  # noqa: E402
from qc_contract.synthetic import SyntheticPartGenerator  # noqa: E402
from qc_interfaces.msg import InspectionResult  # noqa: E402

MODEL = REPO / "models" / "default"
PARAMS = REPO / "params" / "demo.yaml"
WARM_UP_PARTS = 10
TICKS = os.sysconf("SC_CLK_TCK")
# The bare figure runs the backend as the cell's params file configures it: the ratio compares like with like.
THREADS = int(load_params(PARAMS)["inference"]["threads"])


def bare_latency(width: int, height: int, frames: int = 150) -> tuple[float, float]:
    generator = SyntheticPartGenerator(seed=1, width=width, height=height)
    images = [generator.part(i).image for i in range(16)]
    bare = BareBackend(MODEL, threads=THREADS)
    for image in images[:5]:
        bare.one(image)
    times = []
    for i in range(frames):
        times.append(bare.one(images[i % len(images)]))
        time.sleep(0.01)  # the gap a node sees between parts
    bare.model.close()
    p50, p99 = np.percentile(times, [50, 99])
    return float(p50), float(p99)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each node's process."""
    used = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    return used


def run_cell(width: int, height: int, rate: float, seconds: float, tag: str, frame_pool: bool = True) -> dict:
    parts = int(rate * seconds) + WARM_UP_PARTS
    with tempfile.TemporaryDirectory(prefix="qc-bench-cell-") as tmp:
        runner = CellRunner(
            PARAMS,
            namespace=f"bench_{tag}_{os.getpid()}",
            overrides={
                "camera_driver": {
                    "width": width,
                    "height": height,
                    "rate_hz": rate,
                    "max_parts": parts,
                    "state_dir": tmp,
                    "frame_pool": frame_pool,
                },
                "inference": {"model_store_dir": f"{tmp}/models", "frame_pool": frame_pool},
            },
            flags={"use_bridge": False, "use_process_sim": True},
            run_dir=tmp,
            on_event=lambda *_: None,
        )
        runner.start()
        recorder = CellRecorder(runner.observer)
        transport: dict[str, str] = {}  # the inference node's frame counts (by handle / inline), from /diagnostics

        def on_diagnostics(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name.endswith("inference: model"):
                    transport.update({kv.key: kv.value for kv in status.values if kv.key.startswith("frames_")})

        runner.observer.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, qos.DIAGNOSTICS)
        stages: dict[str, tuple[float, ...]] = {}  # part id -> the inference node's own timings, result arrival

        def on_result(msg: InspectionResult) -> None:
            arrived = (time.time_ns() - to_ns(msg.header.stamp)) / 1e6
            stages[msg.part_id] = (msg.queue_ms, msg.preprocess_ms, msg.inference_ms, arrived)

        runner.observer.create_subscription(InspectionResult, "inspection/result", on_result, qos.EVENTS)
        try:
            deadline = time.monotonic() + seconds * 4 + 60
            cpu_start = wall_start = None
            while time.monotonic() < deadline:
                runner.tick()
                decided = len(recorder.snapshot().decisions)
                if cpu_start is None and decided >= WARM_UP_PARTS:
                    pids = {s.name: pid for s in runner.nodes if (pid := runner.supervisor.pid(s.name))}
                    cpu_start, wall_start = cpu_seconds(pids), time.monotonic()
                if decided >= parts:
                    break
                time.sleep(0.05)
            wall = time.monotonic() - wall_start if wall_start is not None else float("nan")
            cpu_end = cpu_seconds(pids) if cpu_start is not None else {}
            cpu_by_node = {
                name: 100.0 * (cpu_end[name] - cpu_start[name]) / wall for name in cpu_end if name in cpu_start
            }
        finally:
            runner.stop()
    decisions = sorted(recorder.snapshot().decisions.values(), key=lambda d: d.capture_ns)[WARM_UP_PARTS:]
    scored = [d for d in decisions if d.verdict != 3]
    latencies = [d.latency_ms for d in scored]
    span = (decisions[-1].received_monotonic - decisions[0].received_monotonic) if len(decisions) > 1 else 0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (float("nan"),) * 3
    timed = np.array([stages[d.part_id] for d in scored if d.part_id in stages]).reshape(-1, 4)
    # Medians of the inference node's own figures (frame received -> preprocessing, preprocessing, model) and of
    # capture -> result at the bench: what that leaves is the frame's hop in and the result's hop out.
    queue, pre, model, arrived = np.median(timed, axis=0) if len(timed) else (float("nan"),) * 4
    return {
        "parts": len(decisions),
        "not_inspected": len(decisions) - len(scored),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "rate": (len(decisions) - 1) / span if span else float("nan"),
        "scored_rate": (len(scored) - 1) / span if span and scored else float("nan"),
        "cpu_pct": sum(cpu_by_node.values()) if cpu_by_node else float("nan"),
        "cpu_by_node": cpu_by_node,
        "stages": {"queue": queue, "preprocess": pre, "model": model, "result_at_bench": arrived},
        "by_handle": transport.get("frames_by_handle", "?"),
        "inline": transport.get("frames_inline", "?"),
    }


def cpu_line(r: dict) -> str:
    return (
        "    cpu % by node: "
        + ", ".join(f"{name} {pct:.0f}" for name, pct in sorted(r["cpu_by_node"].items()))
        + f"; frames at inference: {r['by_handle']} by handle, {r['inline']} inline\n"
        + "    p50 ms from the results: "
        + ", ".join(f"{name} {ms:.2f}" for name, ms in r["stages"].items())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration")
    parser.add_argument("--sizes", default="640x480,1280x720", help="comma-separated WxH (5 MP: 2448x2048)")
    parser.add_argument("--rates", default="10,30", help="comma-separated parts/s")
    parser.add_argument("--frame-pool", choices=("on", "off"), default="on", help="frames through shared memory")
    parser.add_argument("--no-saturation", action="store_true", help="skip the saturation run")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    rates = [float(rate) for rate in args.rates.split(",")]
    pool = args.frame_pool == "on"
    print(f"frames camera -> inference: {'shared-memory frame pool' if pool else 'inline through DDS'}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; model {MODEL}, {THREADS} thread(s)")
    header = f"{'size':>9} {'parts/s':>7} | {'bare p50':>8} {'p99':>6} | {'cell p50':>8} {'p95':>7} {'p99':>7} | "
    header += f"{'p50/bare':>8} {'p99/p50':>7} | {'achieved':>8} {'not_insp':>8} {'cpu %':>6} {'load':>5}"
    print(header)
    for width, height in sizes:
        bare_p50, bare_p99 = bare_latency(width, height)
        for rate in rates:
            r = run_cell(width, height, rate, args.seconds, f"{width}_{int(rate)}", pool)
            print(
                f"{width}x{height:<4} {rate:7.0f} | {bare_p50:8.2f} {bare_p99:6.2f} | "
                f"{r['p50']:8.2f} {r['p95']:7.2f} {r['p99']:7.2f} | "
                f"{r['p50'] / bare_p50:8.2f} {r['p99'] / r['p50']:7.2f} | {r['rate']:8.1f} {r['not_inspected']:8d} "
                f"{r['cpu_pct']:6.0f} {os.getloadavg()[0]:5.1f}",
                flush=True,
            )
            print(cpu_line(r), flush=True)
    if args.no_saturation:
        return 0
    r = run_cell(1280, 720, 200.0, args.seconds / 2, "saturation", pool)
    print(
        f"saturation 1280x720, camera at 200 parts/s: {r['rate']:.1f} verdicts/s, {r['scored_rate']:.1f} scored/s, "
        f"{r['not_inspected']} of {r['parts']} NOT_INSPECTED (fail-safe), cell CPU {r['cpu_pct']:.0f} %"
    )
    print(cpu_line(r))
    print("goal: p50/bare <= 2.0 at 1280x720 and 30 parts/s; p99/p50 <= 3.0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
