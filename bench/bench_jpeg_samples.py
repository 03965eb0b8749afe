#!/usr/bin/env python3
"""Train/serve skew of the learning loop's JPEG samples: what JPEG does to a model trained on raw images, and to a
model trained on JPEG samples but scored on raw frames (as the cells do). Prints figures only; every model is
trained and scored in the same run (the machine is shared, the figures are compared with each other).

    source scripts/env.sh && python bench/bench_jpeg_samples.py [--size 128] [--qualities 85,95] [--seed 11]

Data (the cell's synthetic bottles at --size px, as the learning-loop system test): model A is trained on good
parts and three defect types but no scratches (60 good, 25 of each); model B on A's data plus "station samples"
(80 good, 60 scratches, 65 of each known type) stored as JPEG at each --qualities value, or as PNG ("lossless").
Both are scored with the cells' bands (0.5/0.8) on a hold-out of 100 good parts, 150 scratches and 60 small
breaks, once as raw PNGs and once as JPEG at the first quality. Reported per model: good parts called Normal,
scratches let through (called Normal: the escape rate). `--no-augment-jpeg` trains without the JPEG
re-compression augmentation (the recipe before it), for the comparison the augmentation is judged by.
Real `qc_cloud train` / `qc_cloud evaluate` runs: 40 head epochs on the frozen base, ~1 min each on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

from qc_contract.synthetic import SyntheticPartGenerator

KNOWN = ("broken_large", "broken_small", "contamination")


def write_parts(root: Path, counts: dict[str, int], size: int, seed: int, quality: int | None) -> None:
    """Distinct synthetic parts per kind ("good" or a defect type); PNG, or JPEG at `quality`."""
    generator = SyntheticPartGenerator(seed=seed, width=size, height=size)
    index = 0
    for kind, n in counts.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = generator.part_with(index, None if kind == "good" else kind).image
            index += 1
            if quality is None:
                cv2.imwrite(str(root / kind / f"{seed}-{i:04d}.png"), image)
            else:
                cv2.imwrite(str(root / kind / f"{seed}-{i:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, quality])


def qc_cloud(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "qc_cloud.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"qc_cloud {args[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def train(data: Path, out: Path, size: int, augment_jpeg: bool) -> Path:
    config = out.with_suffix(".json")
    config.write_text(json.dumps({} if augment_jpeg else {"augmentation": {"jpeg_prob": 0.0}}))
    qc_cloud(
        "train", "--data", str(data), "--out", str(out), "--config", str(config), "--input-size", str(size),
        "--phase1-epochs", "40", "--phase2-epochs", "0", "--cache-draws", "1", "--no-progress",
    )  # fmt: skip
    return out


def score(package: Path, data: Path, out: Path) -> dict[str, dict]:
    qc_cloud("evaluate", "--package", str(package), "--data", str(data), "--out", str(out), "--low", "0.5",
             "--high", "0.8", "--no-progress")  # fmt: skip
    return json.loads((out / "report.json").read_text())["test"]["per_type"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--qualities", default="85,95", help="JPEG qualities of the station samples")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-augment-jpeg", action="store_true", help="train without the JPEG augmentation")
    args = parser.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    augment = not args.no_augment_jpeg
    with tempfile.TemporaryDirectory(prefix="bench-jpeg-") as tmp:
        root = Path(tmp)
        write_parts(root / "data-a", {"good": 60, **{k: 25 for k in KNOWN}}, args.size, 7, None)
        hold = {"good": 100, "scratch": 150, "broken_small": 60}
        write_parts(root / "hold-raw", hold, args.size, 99, None)
        write_parts(root / "hold-jpeg", hold, args.size, 99, qualities[0])
        models = {"A (no scratches)": train(root / "data-a", root / "model-a", args.size, augment)}
        for quality in [None, *qualities]:
            name = "lossless" if quality is None else f"q{quality}"
            data = root / f"data-b-{name}"
            write_parts(data, {"good": 80, "scratch": 60, **{k: 65 for k in KNOWN}}, args.size, args.seed, quality)
            write_parts(data, {"good": 60, **{k: 25 for k in KNOWN}}, args.size, 7, None)  # A's data too
            models[f"B (station samples {name})"] = train(data, root / f"model-b-{name}", args.size, augment)
        print(f"JPEG re-compression augmentation: {'on' if augment else 'off'}; hold-out JPEG at q{qualities[0]}")
        print(f"{'model':34s} {'scored on':10s} {'good Normal':>12s} {'scratch escape':>15s}")
        for name, package in models.items():
            for hold_name in ("hold-raw", "hold-jpeg"):
                per_type = score(package, root / hold_name, root / f"eval-{package.name}-{hold_name}")
                good, scratch = per_type["good"], per_type["scratch"]
                print(
                    f"{name:34s} {hold_name[5:]:10s} {good['normal'] / good['n']:12.1%} "
                    f"{scratch['normal'] / scratch['n']:15.1%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
