#!/usr/bin/env python3
"""Shadow-run overhead on the live path: live latency with and without a shadow model, in one run.

    source scripts/env.sh && python bench/bench_shadow.py [--frames 300] [--interval-ms 20] [--input 224]

The inference pipeline core (the node's worker, no ROS) serves a live model; parts arrive every --interval-ms
(camera-sized 480x640 frames). Blocks of --block parts alternate between "shadow off" and "shadow on" (a second
model of the same size scoring in spare time, inference/shadow.py), so both see the same machine load. Printed:
live latency (frame submitted -> live result published) p50/p99 for each, the ratio on/off, and the shadow's
scored/skipped counts; then a burst (all parts at once) with the shadow on, where it must skip. Figures only.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from qc_cell.inference.backends import BackendOptions, resolve_backend
from qc_cell.inference.hot_swap import ModelManager
from qc_cell.inference.model_store import ORIGIN_UPDATE, ModelStore
from qc_cell.inference.pipeline import FrameJob, InferencePipeline
from qc_cell.inference.shadow import ShadowRunner
from qc_cell.inference.synthetic_models import write_package
from qc_contract.model_manifest import Manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--interval-ms", type=float, default=20.0)
    ap.add_argument("--input", type=int, default=224, help="model input size (square)")
    ap.add_argument("--block", type=int, default=25)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        latencies: dict[str, list[float]] = {"off": [], "on": []}
        done = threading.Event()
        state = {"mode": "off", "expected": 0, "seen": 0}
        submitted: dict[str, int] = {}
        totals: dict[str, int] = {}

        def on_result(outcome) -> None:
            latencies[state["mode"]].append((time.monotonic_ns() - submitted[outcome.job.part_id]) / 1e6)
            state["seen"] += 1
            if state["seen"] >= state["expected"]:
                done.set()

        runner = ShadowRunner(lambda score: None, lambda: pipeline.queue_depth())
        pipeline = InferencePipeline(
            on_result, queue_size=1000, pixels_wanted=runner.wanted, after_publish=runner.offer
        )
        store = ModelStore(tmp / "store")
        manager = ModelManager(
            pipeline, resolve_backend("onnxruntime", "fp32"), BackendOptions(threads=1), store, shadow=runner
        )
        pipeline.start()
        for version in ("1.0.0", "2.0.0"):
            write_package(tmp / version, version, input_hw=(args.input, args.input))
            store.install(tmp / version, Manifest.load(tmp / version), ORIGIN_UPDATE)
            if version == "1.0.0":
                assert manager.load("", version).success
        image = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)

        def run_block(mode: str, count: int, interval_s: float, start_index: int) -> None:
            if mode == "on" and runner.model is None:
                assert manager.load_shadow("", "2.0.0").success
            if mode == "off" and runner.model is not None:
                for key, value in runner.counts().items():  # the counts are per shadow load: keep them
                    totals[key] = totals.get(key, 0) + value
                assert manager.load_shadow("", "").success
            state.update(mode=mode, expected=state["seen"] + count)
            done.clear()
            next_t = time.monotonic()
            for i in range(count):
                part = f"p{start_index + i}"
                submitted[part] = time.monotonic_ns()
                pipeline.submit(FrameJob(part, submitted[part], lambda: (image, "BGR")))
                next_t += interval_s
                time.sleep(max(0.0, next_t - time.monotonic()))
            done.wait(60)
            runner.wait_idle(10)

        index, modes = 0, ["off", "on"]
        while index < args.frames:
            for mode in modes:
                run_block(mode, args.block, args.interval_ms / 1000, index)
                index += args.block
        counts_paced = {k: totals.get(k, 0) + runner.counts().get(k, 0) for k in {*totals, *runner.counts()}}
        for mode in ("off", "on"):
            lat = np.array(latencies[mode])
            p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
            print(f"paced {args.interval_ms:g} ms, shadow {mode:3s}: live latency p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
        off, on = np.array(latencies["off"]), np.array(latencies["on"])
        print(f"ratio on/off: p50 {np.percentile(on, 50) / np.percentile(off, 50):.2f}  "
              f"p99 {np.percentile(on, 99) / np.percentile(off, 99):.2f}")  # fmt: skip
        print(f"shadow counts (paced): {counts_paced}")
        latencies["on"].clear()
        before = dict(runner.counts())
        run_block("on", 100, 0.0, index)
        after = runner.counts()
        burst = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        lat = np.array(latencies["on"])
        print(f"burst of 100, shadow on: live p50 {np.percentile(lat, 50):.2f} ms p99 {np.percentile(lat, 99):.2f} ms;"
              f" shadow counts {burst}")  # fmt: skip
        pipeline.stop()
        runner.stop()


if __name__ == "__main__":
    main()
