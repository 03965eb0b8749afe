"""`qc_cloud export`: re-export a training checkpoint as a model package (e.g. with fp16 weights)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a training checkpoint as a model package (ONNX + manifest + golden set + report)",
        description="Export the checkpoint written by `qc_cloud train --checkpoint` to ONNX (opset 17, dynamic "
        "batch), check it against PyTorch, evaluate it on the checkpoint's recorded test split and write the model "
        "package with its report into --out. The data set must be the one the checkpoint was trained on "
        "(checked against the recorded split and fingerprint).",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint from `qc_cloud train --checkpoint`")
    p.add_argument("--data", type=Path, help="the training data set (optional for a synthetic data set)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the model package")
    p.add_argument("--fp16", action="store_const", const=True, help="half-precision weights (float32 inputs/outputs)")
    p.add_argument(
        "--no-features", action="store_const", const=False, dest="export_features", help="no feature-map output"
    )
    p.add_argument("--version", help="model version written into the manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def _export(args: argparse.Namespace) -> int:
    from qc_cloud.training.checkpoint import load_checkpoint
    from qc_cloud.training.commandline import print_summary
    from qc_cloud.training.config import TrainConfig
    from qc_cloud.training.datasets import load_dataset
    from qc_cloud.training.pipeline import package_model, resolved_data
    from qc_cloud.training.splits import Split

    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint.config.replace(fp16=args.fp16, export_features=args.export_features, version=args.version)
    if args.data is not None and config.synthetic is not None:
        config = TrainConfig.from_dict({**config.to_dict(), "synthetic": None})
    with resolved_data(config, args.data) as data_root:
        dataset = load_dataset(data_root, progress=not args.no_progress)
        split = Split.from_dict(checkpoint.split)
        split.check_matches(dataset)
        run = package_model(
            checkpoint.model,
            config,
            dataset,
            split,
            args.out,
            training=checkpoint.training,
            history=checkpoint.history,
            progress=not args.no_progress,
        )
    print_summary(run)
    return 0


def main(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import run_guarded

    return run_guarded("export", _export, args)
