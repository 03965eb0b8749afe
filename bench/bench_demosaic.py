"""Preprocessing of raw Bayer frames without a model ROI (the whole frame demosaiced once, where it is consumed),
against baselines measured in the same run:

- mono8: the same frame as grey (no demosaic at all): the floor of preprocessing a frame of this size;
- bgr8: a frame already demosaiced (what the model gets when the camera or a driver demosaics);
- bayer_fresh: the previous path, a fresh H x W x 3 array demosaiced per frame (cv2.cvtColor without dst);
- bayer_whole: the whole frame demosaiced into a reused buffer (no allocation), then as bgr8;
- bayer: the current path (qc_contract.preprocess: only the 2x2 cells the resize reads are demosaiced, into the
  thread's reused buffer; the model input is identical, checked here before timing);
- bayer16: a 16-bit mosaic (12-bit sensors), same path (its high byte taken, then as bayer).

Each figure is the median ms per frame of preprocess_into (demosaic, resize to the model input, normalise), frames
alternating between two different mosaics with a pause between frames (PAUSE_S) as on a line, so no cache stays
warm from the previous frame. Prints figures and ratios; asserts nothing.

    source scripts/env.sh && nice -n 10 python bench/bench_demosaic.py [--sizes 1280x720,2448x2048,4096x3000]
        [--frames 40] [--input 224]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import cv2
import numpy as np

from qc_contract.model_manifest import Preprocessing
from qc_contract.preprocess import BAYER_CODES, preprocess_into

PAUSE_S = 0.01


def _old_bayer(image: np.ndarray, spec: Preprocessing, out: np.ndarray) -> None:
    """The previous whole-frame path: a fresh BGR array per frame, then the BGR preprocessing."""
    preprocess_into(cv2.cvtColor(image, BAYER_CODES["bayer_rggb"]), spec, "BGR", out)


_WHOLE: dict[tuple[int, int], np.ndarray] = {}


def _whole_bayer(image: np.ndarray, spec: Preprocessing, out: np.ndarray) -> None:
    """The whole frame demosaiced into a buffer reused frame after frame, then the BGR preprocessing."""
    buffer = _WHOLE.setdefault(image.shape, np.empty((*image.shape, 3), np.uint8))
    preprocess_into(cv2.cvtColor(image, BAYER_CODES["bayer_rggb"], dst=buffer), spec, "BGR", out)


def _time(frames: list[np.ndarray], call, count: int) -> float:
    samples = []
    for i in range(count):
        frame = frames[i % len(frames)]
        time.sleep(PAUSE_S)
        start = time.perf_counter()
        call(frame)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples[2:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1280x720,2448x2048,4096x3000")
    parser.add_argument("--frames", type=int, default=40, help="frames per point")
    parser.add_argument("--input", type=int, default=224, help="model input side")
    args = parser.parse_args(argv)
    spec = Preprocessing(input_width=args.input, input_height=args.input)
    out = np.zeros((3, args.input, args.input), np.float32)
    rng = np.random.default_rng(0)
    print(
        f"preprocess (no ROI) to {args.input}x{args.input}, median ms per frame, {os.cpu_count()} CPUs, "
        f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'size':>10} {'mono8':>7} {'bgr8':>7} {'bayer_fresh':>11} {'bayer_whole':>11} {'bayer':>7} "
          f"{'bayer16':>8} {'fresh/bayer':>11} {'whole/bayer':>11} {'bayer/mono8':>11}")  # fmt: skip
    for text in args.sizes.split(","):
        width, height = (int(v) for v in text.split("x"))
        mosaics = [rng.integers(0, 256, (height, width), dtype=np.uint8) for _ in range(2)]
        mosaics16 = [m.astype(np.uint16) << 8 | rng.integers(0, 256, m.shape, dtype=np.uint16) for m in mosaics]
        colour = [cv2.cvtColor(m, BAYER_CODES["bayer_rggb"]) for m in mosaics]
        for frame in mosaics:  # the new path gives the old path's input exactly
            expected, got = out.copy(), out.copy()
            _old_bayer(frame, spec, expected)
            preprocess_into(frame, spec, "bayer_rggb", got)
            assert np.array_equal(expected, got), "the reused-buffer path changed the model input"
        mono = _time(mosaics, lambda f: preprocess_into(f, spec, "BGR", out), args.frames)
        bgr = _time(colour, lambda f: preprocess_into(f, spec, "BGR", out), args.frames)
        fresh = _time(mosaics, lambda f: _old_bayer(f, spec, out), args.frames)
        whole = _time(mosaics, lambda f: _whole_bayer(f, spec, out), args.frames)
        bayer = _time(mosaics, lambda f: preprocess_into(f, spec, "bayer_rggb", out), args.frames)
        bayer16 = _time(mosaics16, lambda f: preprocess_into(f, spec, "bayer_rggb", out), args.frames)
        print(
            f"{text:>10} {mono:7.2f} {bgr:7.2f} {fresh:11.2f} {whole:11.2f} {bayer:7.2f} {bayer16:8.2f} "
            f"{fresh / bayer:11.1f} {whole / bayer:11.1f} {bayer / mono:11.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
