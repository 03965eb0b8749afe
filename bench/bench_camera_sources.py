"""Line-camera sources: what the GenICam path costs and how well camera time maps to ROS time.

    python bench/bench_camera_sources.py [--frames 100] [--triggers 40]

Against Aravis's fake GigE Vision camera (started here, real GVCP/GVSP over loopback) and, when pypylon is
installed, pylon's camera emulation:
1. Free run: achieved fps against the camera's configured rate, lost frames, and the clock mapping's error. The
   fake camera stamps frames with the host's real-time clock, so the true offset is 0 and the estimate
   (`clock_offset_ms`) is exactly the mapping error: how late a mapped stamp is against the exposure.
2. Software trigger: trigger -> frame in the capture loop's hands (p50/p95), against the camera's frame period
   (the fake camera looks for a trigger once per tick of its 25 Hz trigger clock: up to one period by design).
3. Cable pull: the camera killed and restarted; seconds from the restart to the first frame again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "ros2_ws/src" / package) for package in ("qc_contract", "qc_cell")]
os.environ.setdefault("PYLON_CAMEMU", "1")

import numpy as np  # noqa: E402

from qc_cell.camera.sources import SourceSettings, build_source  # noqa: E402
from qc_cell.camera.sources.base import NoFrameYetError  # noqa: E402
from qc_cell.testing import fake_gv_camera as fake  # noqa: E402


def free_run(kind: str, frames: int, fps: float, **settings) -> None:
    source = build_source(SourceSettings(kind=kind, fps=fps, **settings))
    source.open()
    got, started = [], time.monotonic()
    try:
        while len(got) < frames and time.monotonic() - started < frames / fps * 3 + 10:
            try:
                got.append(source.read())
            except NoFrameYetError:
                continue
        stats = source.stats()
    finally:
        source.close()
    stamps = np.array([f.stamp_ns for f in got], dtype=np.float64) / 1e9
    achieved = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    print(
        f"{kind} free run: {len(got)} frames, {achieved:.2f} fps from camera stamps (configured {fps:g}: "
        f"{achieved / fps:.2f}x), lost_frames {stats['lost_frames']}, clock_offset_ms {stats['clock_offset_ms']}, "
        f"clock_transfer_spread_ms {stats.get('clock_transfer_spread_ms', '-')}"
    )


def software_trigger(kind: str, triggers: int, fps: float, **settings) -> None:
    source = build_source(SourceSettings(kind=kind, mode="triggered", trigger_source="Software", fps=fps, **settings))
    source.open()
    latencies = []
    try:
        for _ in range(triggers):
            sent = time.monotonic()
            source.read_for(time.time_ns())
            latencies.append(time.monotonic() - sent)
    finally:
        source.close()
    ms = np.array(latencies) * 1000
    period = 1000 / fps
    print(
        f"{kind} software trigger -> frame: p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms "
        f"over {triggers} (frame period {period:.1f} ms: p50/period {np.percentile(ms, 50) / period:.2f})"
    )


def cable_pull(camera: fake.FakeGvCamera) -> None:
    from qc_cell.camera.capture import STREAMING, CaptureLoop, CaptureSettings
    from qc_cell.camera.framing import Framing

    results, events = [], []
    source = build_source(SourceSettings(kind="aravis", guid=camera.serial, fps=20.0))
    loop = CaptureLoop(
        source, Framing(), CaptureSettings(backoff_initial_s=0.2, backoff_max_s=1.0), results.append,
        time.time_ns, lambda: "p", lambda *e: events.append((time.monotonic(), *e)),
    )  # fmt: skip
    loop.open()
    loop.start()
    try:
        while len(results) < 5:
            time.sleep(0.05)
        killed = time.monotonic()
        camera.kill()
        while not any(code == "CAMERA_UNAVAILABLE" for _, _, code, _ in events):
            time.sleep(0.05)
        detected = next(t for t, _, code, _ in events if code == "CAMERA_UNAVAILABLE") - killed
        camera.start()
        restarted, before = time.monotonic(), len(results)
        while not (loop.state == STREAMING and len(results) > before):
            time.sleep(0.05)
        back = time.monotonic() - restarted
    finally:
        loop.close()
    print(f"aravis cable pull: detected after {detected:.2f} s, frames again {back:.2f} s after the camera restarted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--triggers", type=int, default=40)
    args = parser.parse_args()
    reason = fake.unavailable_reason()
    if reason:
        print(f"aravis: SKIPPED: {reason}")
    else:
        with fake.fake_gv_camera(f"QB{os.getpid()}") as camera:
            free_run("aravis", args.frames, 25.0, guid=camera.serial, pixel_format="Mono8")
            software_trigger("aravis", args.triggers, 25.0, guid=camera.serial)
            cable_pull(camera)
    from qc_cell.camera.sources.pylon import pylon_available

    reason = pylon_available()
    if reason:
        print(f"pylon: SKIPPED: {reason}")
    else:
        free_run("pylon", args.frames, 50.0, pixel_format="Mono8", width=640, height=480)
        software_trigger("pylon", args.triggers, 50.0, pixel_format="Mono8", width=640, height=480)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
