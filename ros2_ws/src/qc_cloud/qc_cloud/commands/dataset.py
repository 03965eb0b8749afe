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
    p.add_argument(
        "action",
        nargs="?",
        choices=("check", "export"),
        default="check",
        help="check (default): check --data; export: write the dashboard's labelled images to --out",
    )
    p.add_argument("--data", type=Path, help="data set folder (check)")
    p.add_argument("--out", type=Path, help="export: a new folder for the labelled data set")
    p.add_argument("--config", default=None, help="export: fleet settings file (QC_FLEET_SETTINGS_FILE)")
    p.add_argument("--data-dir", help="export: the fleet service's data folder")
    p.add_argument("--database-url-file", help="export: file holding the fleet database URL")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--split-out", type=Path, help="write the split here (JSON)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _dataset(args: argparse.Namespace) -> int:
    from qc_cloud.training.datasets import load_dataset
    from qc_cloud.training.splits import MVTEC_CAVEAT, stratified_split

    dataset = load_dataset(args.data, progress=not args.no_progress, good_only_ok=True)
    good_only = all(s.label == 0 for s in dataset.samples)  # label 0: good
    split = stratified_split(
        dataset,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        require_defects=not good_only,  # a good-only set splits as the anomaly model splits it
    )
    print(json.dumps({**dataset.summary(), "split": split.counts(dataset)}, indent=2))
    if good_only:
        print(
            "note: good parts only: `qc_cloud train --method anomaly` trains on it and `qc_cloud evaluate` measures "
            "the false-alarm load on it; the classifier needs defective images too"
        )
    if dataset.layout == "mvtec":
        print(f"note: {MVTEC_CAVEAT}")
    if args.split_out:
        print(f"split written to {split.save(args.split_out, dataset)}")
    return 0


def export_main(args: argparse.Namespace) -> int:
    import os
    import sys

    from qc_cloud.dashboard import dataset
    from qc_cloud.fleet import db
    from qc_cloud.fleet import settings as settings_module
    from qc_cloud.fleet.samples import SampleStore

    if args.out is None:
        print("error: dataset export needs --out DIR", file=sys.stderr)
        return 2
    try:
        settings = settings_module.load(
            args.config or os.environ.get("QC_FLEET_SETTINGS_FILE"),
            data_dir=args.data_dir,
            database_url_file=args.database_url_file,
        )
        engine = db.make_engine(settings.resolved_database_url())
        db.upgrade(engine)
        result = dataset.export(engine, SampleStore(settings.samples_dir), args.out, who=os.environ.get("USER", ""))
    except (settings_module.SettingsError, dataset.ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def main(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import run_guarded

    if args.action == "export":
        return export_main(args)
    if args.data is None:
        print("error: dataset check needs --data DIR", file=__import__("sys").stderr)
        return 2

    return run_guarded("dataset", _dataset, args)
