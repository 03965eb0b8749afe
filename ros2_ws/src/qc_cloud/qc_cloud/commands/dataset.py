"""`qc_cloud dataset`: check a data set and show (or record) the stratified split training would use; export the
station's labels; build an immutable data set version (docs/learning-loop.md, "Data set versions")."""

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
        choices=("check", "export", "build"),
        default="check",
        help="check (default): check --data; export: write the dashboard's labelled images to --out; "
        "build: build a data set version into the version store --out",
    )
    p.add_argument("--data", type=Path, help="data set folder (check)")
    p.add_argument(
        "--out", type=Path, help="export: a new folder for the labelled data set; build: the version store folder"
    )
    p.add_argument("--config", default=None, help="export/build: fleet settings file (QC_FLEET_SETTINGS_FILE)")
    p.add_argument("--data-dir", help="export/build: the fleet service's data folder")
    p.add_argument("--database-url-file", help="export/build: file holding the fleet database URL")
    b = p.add_argument_group("build (sources: any mix, at least one)")
    b.add_argument("--from-fleet", action="store_true", help="the re-inspection station's current labels")
    b.add_argument("--since", help="with --from-fleet: labels from this time (ISO 8601 UTC, or 7d / 24h / 30m ago)")
    b.add_argument("--cells", nargs="+", help="with --from-fleet: only these cells (site/line/cell)")
    b.add_argument(
        "--from-version", action="append", default=[], help="an earlier version (folder, or id in --out); repeatable"
    )
    b.add_argument(
        "--from-folder", action="append", default=[], type=Path, help="a data set folder (MVTec AD/generic); repeatable"
    )
    b.add_argument(
        "--regression-add",
        action="append",
        default=[],
        type=Path,
        help="a data set folder whose images join the regression set; repeatable",
    )
    b.add_argument(
        "--regression-fraction",
        type=float,
        default=0.5,
        help="share of new hard cases (picked by image hash) that join the regression set (default 0.5)",
    )
    b.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave unreadable/corrupt/missing images out (listed in version.json) instead of refusing the build",
    )
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


def parse_since(text: str | None):
    """ISO 8601 (UTC when no zone) or a duration back from now (30m, 24h, 7d) -> naive UTC datetime."""
    from datetime import datetime, timedelta, timezone

    if not text:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: an ISO 8601 time or a duration such as 30m, 24h, 7d") from None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def fleet_rows(args: argparse.Namespace):
    """(current label rows, sample store folder, cells table rows) of the fleet service named by the settings
    arguments."""
    import os

    from qc_cloud.dashboard import data
    from qc_cloud.fleet import db, models
    from qc_cloud.fleet import settings as settings_module

    settings = settings_module.load(
        args.config or os.environ.get("QC_FLEET_SETTINGS_FILE"),
        data_dir=args.data_dir,
        database_url_file=args.database_url_file,
    )
    engine = db.make_engine(settings.resolved_database_url())
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            rows = data.labelled_samples(conn)
            cells = {r.name: r.model_version for r in conn.execute(models.Cell.__table__.select())}
    finally:
        engine.dispose()
    return rows, settings.samples_dir, cells


def _build(args: argparse.Namespace) -> int:
    import os

    from qc_cloud.training import dataset_versions as dv

    if args.out is None:
        raise dv.VersionError("dataset build needs --out STORE (the folder that holds the versions)")
    if not (args.from_fleet or args.from_version or args.from_folder or args.regression_add):
        raise dv.VersionError(
            "dataset build needs at least one source: --from-fleet, --from-version, --from-folder, --regression-add"
        )
    sources = dv.Sources()
    for ref in args.from_version:
        dv.add_version(sources, dv.resolve_version(ref, args.out))
    for folder in args.from_folder:
        dv.add_folder(sources, folder)
    for folder in args.regression_add:
        dv.add_folder(sources, folder, regression=True)
    if args.from_fleet:
        from qc_cloud.fleet import settings as settings_module

        try:
            since = parse_since(args.since)
            rows, samples_dir, _ = fleet_rows(args)
        except (settings_module.SettingsError, ValueError) as exc:
            raise dv.VersionError(str(exc)) from exc
        dv.add_fleet_labels(sources, rows, samples_dir, since=since, cells=args.cells)
    result = dv.build(
        sources,
        args.out,
        regression_fraction=args.regression_fraction,
        skip_bad_images=args.skip_bad_images,
        who=os.environ.get("USER", ""),
    )
    print(json.dumps(result.summary(), indent=2))
    for bad in result.version.meta["bad_images"]:
        print(f"left out: {bad['path']}: {bad['reason']}", file=__import__("sys").stderr)
    for conflict in result.version.meta["conflicts"]:
        labels = sorted({(c["label"], c["defect_type"]) for c in conflict["labels"]})
        print(f"conflict: {conflict['sha256'][:12]}... labelled {labels}: {conflict['resolution']}")
    return 0


def main(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import run_guarded

    if args.action == "build":
        return run_guarded("dataset build", _build, args)
    if args.action == "export":
        return export_main(args)
    if args.data is None:
        print("error: dataset check needs --data DIR", file=__import__("sys").stderr)
        return 2

    return run_guarded("dataset", _dataset, args)
