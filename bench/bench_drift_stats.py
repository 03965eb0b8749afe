#!/usr/bin/env python3
"""Cost of the per-part drift statistics (qc_contract.drift.image_stats) against the inference they ride along.

    source scripts/env.sh && python bench/bench_drift_stats.py [--parts 200] [--size 512] [--threads 2]

On the same synthetic bgr8 frames, interleaved part by part (so both see the same machine load):
- drift statistics: image_stats(frame) as the inference worker calls it (brightness, contrast, sharpness on a
  grey copy downsampled to STATS_SIDE px), plus adding the part to the histograms (Histograms.add);
- inference: preprocess + score with the shipped model package (models/default, ONNX Runtime CPU, batch 1),
  the functions the inference node's worker calls.
- baseline: the same statistics on the whole frame area-reduced to STATS_SIDE px (what image_stats did before it
  thinned large frames first: its cost grew with the frame, 17 ms at 5 MP).
Prints p50/p99 of each and the ratios statistics / inference (the goal: about 1 %) and baseline / statistics.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "ros2_ws/src/qc_contract"), str(ROOT / "ros2_ws/src/qc_cell")]

from qc_cell.inference.backends import BackendOptions, create_backend  # noqa: E402
from qc_cell.inference.model import LoadedModel  # noqa: E402
from qc_contract.drift import STATS_SIDE, Histograms, image_stats  # noqa: E402
from qc_contract.model_manifest import Manifest  # noqa: E402
from qc_contract.preprocess import preprocess_into  # noqa: E402
from qc_contract.synthetic import SyntheticPartGenerator  # noqa: E402


def whole_frame_stats(frame: np.ndarray) -> None:
    """The baseline: every pixel of the frame area-reduced to STATS_SIDE, then the same statistics."""
    h, w = frame.shape[:2]
    scale = STATS_SIDE / max(h, w)
    image_stats(cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA), "BGR")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=200)
    ap.add_argument("--size", default="512", help="frame size: a side in pixels, or WxH (5 MP: 2448x2048)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--package", type=Path, default=ROOT / "models" / "default")
    args = ap.parse_args()

    manifest = Manifest.load(args.package)
    backend = create_backend("onnxruntime", args.package / "model.onnx", manifest, BackendOptions(threads=args.threads))
    model = LoadedModel(args.package, manifest, backend)
    spec = manifest.preprocessing
    buffer = np.zeros((1, *model.input_chw), np.float32)
    width, _, height = args.size.partition("x")
    width, height = int(width), int(height or width)
    generator = SyntheticPartGenerator(seed=0, width=width, height=height)
    frames = [generator.part(i).image for i in range(min(args.parts, 50))]
    hist = Histograms()
    stats_ms, infer_ms, whole_ms = [], [], []
    for _ in range(5):  # warm-up
        preprocess_into(frames[0], spec, "BGR", buffer[0])
        model.score(buffer)
    for i in range(args.parts):
        frame = frames[i % len(frames)]
        t0 = time.perf_counter()
        preprocess_into(frame, spec, "BGR", buffer[0])
        scores = model.score(buffer)
        t1 = time.perf_counter()
        hist.add(image_stats(frame, "BGR"), float(scores.probabilities[0]))
        t2 = time.perf_counter()
        whole_frame_stats(frame)
        infer_ms.append((t1 - t0) * 1e3)
        stats_ms.append((t2 - t1) * 1e3)
        whole_ms.append((time.perf_counter() - t2) * 1e3)
    s50, s99 = np.percentile(stats_ms, [50, 99])
    i50, i99 = np.percentile(infer_ms, [50, 99])
    w50 = float(np.percentile(whole_ms, 50))
    print(
        f"{args.parts} parts, {width}x{height} bgr8, stats on <= {STATS_SIDE} px, model {manifest.version} "
        f"ONNX Runtime CPU {args.threads} threads"
    )
    print(f"drift statistics + histograms: p50 {s50:.3f} ms  p99 {s99:.3f} ms")
    print(f"preprocess + inference:        p50 {i50:.2f} ms  p99 {i99:.2f} ms")
    mean_ratio = np.mean(stats_ms) / np.mean(infer_ms) * 100
    print(f"ratio statistics / inference:  p50 {s50 / i50 * 100:.2f} %  (mean {mean_ratio:.2f} %)")
    print(f"baseline (whole frame reduced): p50 {w50:.3f} ms, {w50 / s50:.1f}x the statistics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
