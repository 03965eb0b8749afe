"""`qc_cloud evaluate`: score a model package on a data set and write the evaluation report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model package (ONNX Runtime, the edge's preprocessing) on a data set",
        description="Load a model package (manifest.json is checked against model.onnx: sha256, size, tensor "
        "names, input size), re-check its golden set, score the images and write report.json, report.md and "
        "plots/ into --out. With --split only that split's test images are scored; without it, every image.",
    )
    p.add_argument("--package", type=Path, required=True, help="model package folder (manifest.json + model)")
    p.add_argument("--data", type=Path, required=True, help="data set folder (MVTec AD or generic layout)")
    p.add_argument("--out", type=Path, required=True, help="folder for the report")
    p.add_argument("--split", type=Path, help="split.json: score only its test images")
    p.add_argument("--low", type=float, default=0.5, help="decision band: Re-inspect from this P(defect)")
    p.add_argument("--high", type=float, default=0.8, help="decision band: Defective from this P(defect)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def _evaluate(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import print_summary
    from qc_cloud.training.datasets import load_dataset
    from qc_cloud.training.errors import ConfigError
    from qc_cloud.training.pipeline import evaluate_package

    if not 0 < args.low <= args.high < 1:
        raise ConfigError(f"decision bands need 0 < low <= high < 1 (got {args.low}, {args.high})")
    dataset = load_dataset(args.data, progress=not args.no_progress, good_only_ok=True)
    run = evaluate_package(
        args.package,
        dataset,
        args.out,
        split_path=args.split,
        low=args.low,
        high=args.high,
        progress=not args.no_progress,
    )
    print_summary(run)
    return 0


def main(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import run_guarded

    return run_guarded("evaluate", _evaluate, args)
