"""`qc_cloud dataset`: check a data set and show (or record) the stratified split training would use."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dataset",
        help="check a data set (layout, labels, readable images) and show its stratified split",
        description="Discover and decode every image of a data set (MVTec AD or generic layout), print the "
        "counts per defect type, the fingerprint and the train/val/test split; --split-out records the split "
        "for `qc_cloud train --split`.",
    )
    p.add_argument("--data", type=Path, required=True, help="data set folder")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--split-out", type=Path, help="write the split here (JSON)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _dataset(args: argparse.Namespace) -> int:
    from qc_cloud.training.datasets import load_dataset
    from qc_cloud.training.splits import MVTEC_CAVEAT, stratified_split

    dataset = load_dataset(args.data, progress=not args.no_progress)
    split = stratified_split(dataset, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed)
    print(json.dumps({**dataset.summary(), "split": split.counts(dataset)}, indent=2))
    if dataset.layout == "mvtec":
        print(f"note: {MVTEC_CAVEAT}")
    if args.split_out:
        print(f"split written to {split.save(args.split_out, dataset)}")
    return 0


def main(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import run_guarded

    return run_guarded("dataset", _dataset, args)
