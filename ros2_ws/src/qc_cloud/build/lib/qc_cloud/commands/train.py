"""`qc_cloud train`: train the defect classifier and write a complete model package with its report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train, evaluate and export the defect classifier (model package + report)",
        description="Train the EfficientNet defect classifier in two phases, evaluate the exported ONNX model on "
        "the held-out test split and write a model package (manifest.json, model.onnx, golden/) with its report "
        "(report.json, report.md, plots/), split.json and train_config.json into --out. See docs/training.md.",
    )
    p.add_argument("--config", type=Path, help="training configuration JSON (defaults for every key not given)")
    p.add_argument(
        "--data",
        type=Path,
        help="data set folder (MVTec AD or generic layout); optional when the config describes a synthetic data set",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder: the model package and its report")
    p.add_argument("--split", type=Path, help="reuse a recorded split.json instead of drawing a new split")
    p.add_argument("--checkpoint", type=Path, help="also save the best weights here (for `qc_cloud export`)")
    p.add_argument("--keep-data", type=Path, help="synthetic data: generate into (or reuse) this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--preset",
        choices=("adaptive", "paper"),
        help="start from a named preset instead of the defaults: adaptive (the default recipe) or paper (the "
        "paper's two-phase method, for comparison); --config and the options below override it",
    )
    o = p.add_argument_group("overrides of configuration values")
    o.add_argument(
        "--method",
        choices=("classifier", "anomaly"),
        help="classifier (good and defective images) or anomaly (PatchCore-style, trained on good parts only)",
    )
    o.add_argument("--budget-minutes", type=float, dest="budget_minutes", help="training time budget (0 = none)")
    o.add_argument("--calibration", choices=("platt", "temperature", "none"))
    o.add_argument(
        "--max-false-reject", type=float, dest="max_false_reject", help="band proposal: false reject rate limit"
    )
    o.add_argument("--target-escape", type=float, dest="target_escape", help="band proposal: escape rate target")
    o.add_argument(
        "--reinspect-budget", type=float, dest="reinspect_budget", help="band proposal: re-inspection share budget"
    )
    o.add_argument("--backbone", choices=("efficientnet_b0", "efficientnet_lite0"))
    o.add_argument("--weights", help="backbone weights file (efficientnet-pytorch state dict)")
    o.add_argument("--input-size", type=int, dest="input_size")
    o.add_argument("--batch-size", type=int, dest="batch_size")
    o.add_argument("--seed", type=int)
    o.add_argument("--phase1-epochs", type=int, dest="phase1_epochs")
    o.add_argument("--phase2-epochs", type=int, dest="phase2_epochs")
    o.add_argument("--cache-draws", type=int, dest="cache_draws", help="augmentation draws cached per image")
    o.add_argument(
        "--no-feature-cache",
        action="store_const",
        const=False,
        dest="feature_cache",
        help="Phase I runs the frozen base every epoch (fresh augmentation each epoch)",
    )
    o.add_argument("--fp16", action="store_const", const=True, help="export half-precision weights")
    o.add_argument(
        "--no-features",
        action="store_const",
        const=False,
        dest="export_features",
        help="export without the feature-map output (no heatmaps on the edge)",
    )
    o.add_argument("--threads", type=int, help="torch threads (0 = default)")
    o.add_argument("--version", help="model version written into the manifest")
    p.set_defaults(func=main)


OVERRIDES = (
    "method",
    "budget_minutes",
    "calibration",
    "target_escape",
    "reinspect_budget",
    "max_false_reject",
    "backbone",
    "weights",
    "input_size",
    "batch_size",
    "seed",
    "phase1_epochs",
    "phase2_epochs",
    "cache_draws",
    "feature_cache",
    "fp16",
    "export_features",
    "threads",
    "version",
)


def _train(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import print_summary
    from qc_cloud.training.config import TrainConfig
    from qc_cloud.training.pipeline import resolved_data, train

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.preset:  # the preset's values, then the keys the config file sets (the file wins)
        written = TrainConfig.keys_in(args.config) if args.config else {}
        config = TrainConfig.preset_config(args.preset, **{k: getattr(config, k) for k in written})
    config = config.replace(**{name: getattr(args, name) for name in OVERRIDES})
    if args.data is not None and config.synthetic is not None:  # real data given: the synthetic recipe is unused
        config = TrainConfig.from_dict({**config.to_dict(), "synthetic": None})
    with resolved_data(config, args.data, args.keep_data) as data_root:
        run = train(
            config,
            data_root=data_root,
            out_dir=args.out,
            split_path=args.split,
            checkpoint_path=args.checkpoint,
            progress=not args.no_progress,
        )
    if run is not None:  # under torchrun only rank 0 packages (and reports)
        print_summary(run)
    return 0


def main(args: argparse.Namespace) -> int:
    from qc_cloud.training.commandline import run_guarded

    return run_guarded("train", _train, args)
