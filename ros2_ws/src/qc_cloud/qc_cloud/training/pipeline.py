"""End-to-end runs used by the `qc_cloud train`, `export` and `evaluate` commands.

train:   data -> split -> Trainer -> (checkpoint) -> package
package: export ONNX -> parity check -> evaluate the exported model on the test split (ONNX Runtime, the
         edge's preprocessing) -> golden set -> manifest -> split.json, train_config.json -> report

Output directory (a complete model package plus its evidence):
    manifest.json, model.onnx, golden/      what the edge loads
    report.json, report.md, plots/          the evaluation report
    split.json                              which image went to train/val/test
    train_config.json                       the resolved configuration (re-run with --config)
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qc_cloud.training.batches import IMAGE_CHANNEL_ORDER, input_batches
from qc_cloud.training.calibration import apply_calibration, fit_calibration, propose_bands, reliability
from qc_cloud.training.checkpoint import Checkpoint, save_checkpoint
from qc_cloud.training.config import AUTO, SyntheticData, TrainConfig, resolve_input_size
from qc_cloud.training.datasets import GOOD, Dataset, load_dataset, read_image
from qc_cloud.training.distributed import World
from qc_cloud.training.drift_reference import validation_reference
from qc_cloud.training.errors import ConfigError, DatasetError
from qc_cloud.training.evaluate import Evaluation, OnnxScorer, evaluate, score_samples
from qc_cloud.training.export import OPSET, check_parity, export_onnx
from qc_cloud.training.input_size import candidate_sizes, search_input_size
from qc_cloud.training.models import DefectClassifier, backbone_spec, build_model
from qc_cloud.training.package import PackageContents, pick_golden, write_golden, write_manifest
from qc_cloud.training.report import write_report
from qc_cloud.training.splits import MVTEC_CAVEAT, Split, stratified_split
from qc_cloud.training.trainer import Trainer
from qc_contract.model_manifest import (
    MANIFEST_NAME,
    DecisionBands,
    DriftReference,
    Manifest,
    ManifestError,
    Preprocessing,
)
from qc_contract.preprocess import preprocess
from qc_contract.synthetic import write_mvtec_dataset

log = logging.getLogger(__name__)

PARITY_IMAGES = 8  # test images run through PyTorch and ONNX Runtime for the parity check


@dataclass
class RunResult:
    out_dir: Path  # where the run wrote (the package for train/export, the report folder for evaluate)
    package_dir: Path  # the model package the run made or scored
    manifest: Manifest
    evaluation: Evaluation
    report: dict[str, Any]
    paths: dict[str, Path]


def command_line() -> str:
    """How this run was started, to be repeated (recorded in the manifest and the report)."""
    prog = Path(sys.argv[0]).name if sys.argv else ""
    if prog == "cli.py":
        return shlex.join(["python", "-m", "qc_cloud.cli", *sys.argv[1:]])
    if prog == "qc_cloud":
        return shlex.join(["qc_cloud", *sys.argv[1:]])
    return f"(called from Python by {prog or 'an interactive session'})"


def preprocessing_for(config: TrainConfig) -> Preprocessing:
    spec = backbone_spec(config.backbone)
    return Preprocessing(
        input_height=config.input_size,
        input_width=config.input_size,
        color_order="RGB",
        normalization=spec.normalization,
        roi=config.roi,
    )


@contextlib.contextmanager
def resolved_data(config: TrainConfig, data: Path | None, keep_data: Path | None = None) -> Iterator[Path]:
    """The data set root: `data` if given, else the synthetic set the config describes, generated into
    `keep_data` (kept) or a temporary folder (removed afterwards)."""
    if data is not None:
        yield Path(data)
        return
    if config.synthetic is None:
        raise ConfigError("no data set: pass --data DIR, or describe a synthetic one under 'synthetic' in the config")
    syn = config.synthetic
    with contextlib.ExitStack() as stack:
        root = (
            Path(keep_data) if keep_data else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qc_syn_")))
        )
        recipe = root / "synthetic.json"
        if recipe.is_file():
            _check_synthetic_recipe(recipe, syn)
        else:
            log.info(f"generating the synthetic data set into {root}")
            write_mvtec_dataset(
                root,
                n_train_good=syn.n_train_good,
                n_test_good=syn.n_test_good,
                n_test_per_defect=syn.n_test_per_defect,
                width=syn.width,
                height=syn.height,
                seed=syn.seed,
                product=syn.product,
                crop=syn.crop,
            )
        yield root


def _check_synthetic_recipe(recipe: Path, syn: SyntheticData) -> None:
    """A kept synthetic data set is reused only if it was generated with the same settings."""
    try:
        written = json.loads(recipe.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {recipe}: {exc}") from exc
    wanted = json.loads(json.dumps(asdict(syn)))  # tuples as the JSON file holds them (lists)
    if wanted.get("crop") is None:
        wanted.pop("crop", None)  # sets written before the key existed are whole frames
    differs = {k: (written.get(k), v) for k, v in wanted.items() if written.get(k) != v}
    if differs:
        changes = ", ".join(f"{k}: {old} != {new}" for k, (old, new) in differs.items())
        raise ConfigError(
            f"{recipe.parent} holds a synthetic data set generated with other settings ({changes}); "
            "use another --keep-data folder"
        )


def sample_image_sizes(dataset: Dataset, n: int = 16) -> list[tuple[int, int]]:
    """(width, height) of up to n images spread over the data set (for the automatic input size)."""
    samples = dataset.samples[:: max(1, len(dataset.samples) // n)][:n]
    sizes = []
    for s in samples:
        image = dataset.image(s)
        sizes.append((image.shape[1], image.shape[0]))
    return sizes


def calibrate_scorer(
    scorer: OnnxScorer, dataset: Dataset, split: Split, config: TrainConfig, spec: Preprocessing, progress: bool
) -> dict[str, Any]:
    """Fit the calibration on the validation split's logits (the exported model, as the edge runs it), set it on
    `scorer`, and propose bands for the configured targets on the calibrated validation scores."""
    val = split.samples(dataset, "val")
    logits = score_samples(
        scorer.logits, dataset, val, spec, batch_size=config.batch_size, progress=progress, desc="calibrating on val"
    )
    labels = np.asarray([s.label for s in val], dtype=np.float64)
    calibration = fit_calibration(logits, labels, config.calibration)
    scorer.calibration = calibration
    probs = apply_calibration(logits, calibration)
    return {
        "drift_reference": asdict(validation_reference(dataset, val, probs)),  # manifest drift_reference
        "method": config.calibration,
        "scale_shift": list(calibration) if calibration else None,
        "temperature": (1.0 / calibration[0]) if calibration else None,
        "n_val": len(val),
        "val_ece_before": reliability(apply_calibration(logits, None), labels)["ece"],
        "val_ece_after": reliability(probs, labels)["ece"],
        "proposed_bands": propose_bands(
            probs,
            labels,
            target_escape=config.target_escape,
            reinspect_budget=config.reinspect_budget,
            max_false_reject=config.max_false_reject,
        ),
    }


def test_calibration_section(
    calibration: dict[str, Any], evaluation: Evaluation, raw_logits: np.ndarray, config: TrainConfig
) -> dict[str, Any]:
    """The test split's reliability before/after calibration and its figures under the proposed bands."""
    labels = evaluation.labels
    before = reliability(apply_calibration(raw_logits, None), labels)
    after = reliability(evaluation.scores, labels)
    section = {
        **calibration,
        "test_ece_before": before["ece"],
        "test_ece_after": after["ece"],
        "reliability_before": before["bins"],
        "reliability_after": after["bins"],
    }
    bands = calibration["proposed_bands"]
    if bands.get("low") is not None:
        from qc_cloud.training.evaluate import band_analysis

        section["proposed_bands_on_test"] = band_analysis(labels, evaluation.scores, bands["low"], bands["high"])
    return section


def decision_bands(proposed: dict[str, Any]) -> DecisionBands | None:
    """The manifest's decision_bands from the calibration's proposal (None when it could not propose any)."""
    if proposed.get("low") is None:
        return None
    basis = (
        f"validation split: escape <= {proposed['target_escape']:.1%}, re-inspection <= "
        f"{proposed['reinspect_budget']:.1%}, false reject <= {proposed['max_false_reject']:.1%}"
    )
    if not proposed["feasible"]:
        basis += f" NOT met ({proposed['reason']})"
    return DecisionBands(float(proposed["low"]), float(proposed["high"]), bool(proposed["feasible"]), basis)


def prepare_split(dataset: Dataset, config: TrainConfig, split_path: Path | None) -> Split:
    if split_path is None:
        return stratified_split(
            dataset,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
            require_defects=config.method != "anomaly",  # the anomaly model learns and calibrates on good parts
        )
    split = Split.load(split_path)
    split.check_matches(dataset)
    return split


def _dataset_info(dataset: Dataset, split: Split, config: TrainConfig) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": dataset.root.name if config.synthetic is None else "synthetic (qc_contract.synthetic)",
        "layout": dataset.layout,
        "fingerprint": dataset.fingerprint,
        "images": len(dataset.samples),
        "per_type": dataset.counts(),
        "split": split.counts(dataset),
        "split_seed": split.seed,
        "split_file": "split.json",
        # The class folders other than good: the defect types this model was trained on. The re-inspection
        # station offers them first (Manifest.defect_types; the cell's model_status record carries them).
        "defect_types": sorted(t for t in dataset.counts() if t != GOOD),
    }
    if dataset.version is not None:  # the gate leaves these images out of its production slices (candidate.py)
        info["version"] = dataset.version
    if config.synthetic is not None:
        info["synthetic"] = asdict(config.synthetic)
    return info


def edge_cost(input_size: int) -> dict[str, Any]:
    """What the input size costs on the edge, relative to the paper's 224 px (compute grows with the area)."""
    return {"input_size": input_size, "relative_to_224": round((input_size / 224) ** 2, 3)}


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    bands = metrics["bands"]
    keys = ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision")
    return {
        "split": "test",
        "n_images": metrics["n_images"],
        **{k: metrics[k] for k in keys},
        "defect_escape_rate": bands["defect_escape_rate"],
        "false_reject_rate": bands["false_reject_rate"],
        "fraction_reinspect": bands["fraction_reinspect"],
        "bands": [bands["low"], bands["high"]],
    }


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished package from `staging` into `out_dir`, replacing same-named entries and leaving other
    files alone. manifest.json moves last: until then a reader sees the old manifest, which does not match the
    new model file, so the edge refuses the half-moved package instead of running it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST_NAME)
    for entry in entries:
        target = out_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        entry.replace(target)
    staging.rmdir()


def package_model(
    model: DefectClassifier,
    config: TrainConfig,
    dataset: Dataset,
    split: Split,
    out_dir: Path,
    *,
    training: dict[str, Any] | None,
    history: list[dict[str, Any]] | None,
    progress: bool = True,
) -> RunResult:
    """Export, check, evaluate and package a trained model into out_dir (see the module docstring).

    Everything is built in a staging folder next to out_dir and moved in only when complete: a failed export,
    parity check or evaluation leaves out_dir as it was."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent) as tmp:
        staging = Path(tmp) / "package"
        staging.mkdir()
        report, evaluation = _build_package(model, config, dataset, split, staging, training, history, progress)
        _publish(staging, out_dir)
    manifest = Manifest.load(out_dir)
    manifest.verify_model_file(out_dir)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths.update({name: out_dir / rel for name, rel in report["plots"].items()})
    log.info(f"model package written to {out_dir}")
    return RunResult(out_dir, out_dir, manifest, evaluation, report, paths)


def _build_package(
    model: DefectClassifier,
    config: TrainConfig,
    dataset: Dataset,
    split: Split,
    out_dir: Path,
    training: dict[str, Any] | None,
    history: list[dict[str, Any]] | None,
    progress: bool,
) -> tuple[dict[str, Any], Evaluation]:
    spec = preprocessing_for(config)
    test_samples = split.samples(dataset, "test")
    log.info(f"exporting ONNX (opset {OPSET}, {'fp16' if config.fp16 else 'fp32'}) and checking it against PyTorch")
    model_path = export_onnx(
        model, out_dir / "model.onnx", input_size=config.input_size, features=config.export_features, fp16=config.fp16
    )
    parity_inputs, _, _ = next(input_batches(dataset, test_samples[:PARITY_IMAGES], spec, PARITY_IMAGES))
    parity = check_parity(model, model_path, parity_inputs, fp16=config.fp16)
    log.info(f"evaluating the exported model on the {len(test_samples)} test images (ONNX Runtime)")
    scorer = OnnxScorer(model_path)
    calibration = calibrate_scorer(scorer, dataset, split, config, spec, progress)
    raw_test_logits = score_samples(
        scorer.logits, dataset, test_samples, spec, batch_size=config.batch_size, progress=False
    )
    evaluation = evaluate(
        scorer,
        dataset,
        test_samples,
        spec,
        low=config.decision_low,
        high=config.decision_high,
        batch_size=config.batch_size,
        progress=progress,
    )
    cal_section = test_calibration_section(calibration, evaluation, raw_test_logits, config)
    golden = write_golden(
        out_dir, dataset, pick_golden(test_samples, config.golden_per_class, config.seed), scorer, spec
    )
    weights = tuple(float(w) for w in model.head.weight.detach().reshape(-1)) if config.export_features else None
    dataset_info = _dataset_info(dataset, split, config)
    version = config.version or f"{config.backbone}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    manifest = write_manifest(
        out_dir,
        PackageContents(
            architecture=config.backbone,
            version=version,
            preprocessing=spec,
            metrics={
                **_headline(evaluation.metrics),
                "ece": cal_section["test_ece_after"],
                "proposed_bands": cal_section["proposed_bands"],
            },
            dataset=dataset_info,
            training={k: v for k, v in (training or {}).items() if k not in ("timings",)},
            classifier_weights=weights,
            calibration=scorer.calibration,
            decision_bands=decision_bands(cal_section["proposed_bands"]),
            drift_reference=DriftReference(**cal_section["drift_reference"]),
        ),
        golden,
        features=config.export_features,
    )
    split.save(out_dir / "split.json", dataset)
    config.save(out_dir / "train_config.json")
    caveats = [MVTEC_CAVEAT] if dataset.layout == "mvtec" else []
    if config.synthetic is not None:
        caveats.append(
            "Trained and tested on procedurally generated parts (qc_contract.synthetic): these figures say "
            "the pipeline works, not how the model will do on a real line. Retrain on images of the real product."
        )
    report = {
        "model": {
            "architecture": config.backbone,
            "version": manifest.version,
            "input_size": config.input_size,
            "opset": OPSET,
            "fp16": config.fp16,
            "sha256": manifest.sha256,
            "size_bytes": manifest.size_bytes,
            "features_output": config.export_features,
            "parity": parity.to_dict(),
        },
        "dataset": {**dataset_info, "root": str(dataset.root)},
        "test": evaluation.metrics,
        "calibration": cal_section,
        "edge_cost": edge_cost(config.input_size),
        "golden": [asdict(g) for g in golden],
        "caveats": caveats,
    }
    if training:
        report["training"] = training
    written = write_report(out_dir, report, evaluation, history)
    report["plots"] = {
        name: path.relative_to(out_dir).as_posix() for name, path in written.items() if name not in ("json", "markdown")
    }
    return report, evaluation


def choose_input_size(
    config: TrainConfig, dataset: Dataset, split: Split, world: World | None = None
) -> tuple[TrainConfig, dict[str, Any], Any]:
    """The config with its input side chosen (input_size AUTO), the record of how it was chosen, and the chosen
    side's short run to continue (a TrainResult; None when the search did not run).

    The classifier scores the candidates by a short run of the recipe each, on the validation split, and keeps
    224 unless another side is better beyond the noise (training/input_size.py), when both splits hold good and
    defective images; otherwise (the
    anomaly model, a good-only set, a split without defects, input_size_search off) the side the images suggest
    is taken, and the record says why."""
    from_images = resolve_input_size(config, sample_image_sizes(dataset))
    sizes = candidate_sizes(from_images, config.input_size_candidates)
    reason = None
    if not config.input_size_search:
        reason = "input_size_search is off"
    elif config.method != "classifier":
        reason = f"method {config.method}: no defect labels to score sizes on"
    elif len(sizes) < 2:
        reason = f"one candidate only ({sizes[0]} px)"
    else:
        for part in ("train", "val"):
            if {s.label for s in split.samples(dataset, part)} != {0, 1}:
                reason = f"the {part} split lacks good or defective images"
    if reason is not None:
        log.info(f"input size {from_images} x {from_images} px, from the images ({reason})")
        record = {"chosen": from_images, "from_images": from_images, "candidates": [], "skipped": reason}
        return config.replace(input_size=from_images), record, None
    log.info(f"input size: searching {sizes} px (a short run of the recipe each; set input_size to skip)")
    record, short_run = search_input_size(
        config, dataset, split, sizes, preprocessing_for=preprocessing_for, build_model=build_model, world=world
    )
    record["from_images"] = from_images
    log.info(f"input size {record['chosen']} x {record['chosen']} px, chosen by the search")
    return config.replace(input_size=record["chosen"]), record, short_run


def train(
    config: TrainConfig,
    *,
    data_root: Path,
    out_dir: Path,
    split_path: Path | None = None,
    checkpoint_path: Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> RunResult | None:
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    world = World.from_environment()  # several processes under torchrun (distributed.py), else one
    if not world.is_main:
        progress = False
        logging.getLogger("qc_cloud").setLevel(logging.WARNING)
    dataset = load_dataset(data_root, progress=progress, good_only_ok=config.method == "anomaly")
    split = prepare_split(dataset, config, split_path)
    log.info(f"data set {dataset.root} ({dataset.layout} layout): {dataset.counts()}")
    for name, counts in split.counts(dataset).items():
        log.info(f"  {name:5s} {sum(counts.values()):5d} images {counts}")
    if dataset.layout == "mvtec":
        log.info(f"note: {MVTEC_CAVEAT}")
    if config.threads:
        torch.set_num_threads(config.threads)
    size_search = short_run = None
    if config.input_size == AUTO:
        config, size_search, short_run = choose_input_size(config, dataset, split, world)
    torch.manual_seed(config.seed)
    if config.method == "anomaly":
        from qc_cloud.training.anomaly import train_anomaly

        if world.active:
            raise ConfigError("the anomaly model is built in one process; run it without torchrun")
        return train_anomaly(
            config,
            dataset,
            split,
            out_dir,
            progress=progress,
            command=command or command_line(),
            started=started,
            started_at=started_at,
        )
    model = (
        short_run.model  # the chosen side's short run, continued
        if short_run is not None
        else build_model(
            config.backbone,
            input_size=config.input_size,
            weights=Path(config.weights) if config.weights else None,
            dropout=config.dropout,
            pooling=config.pooling,
        )
    )
    spent = (size_search or {}).get("seconds", 0.0) if config.budget_minutes else 0.0  # the search's share
    result = Trainer(
        model,
        config,
        dataset,
        split,
        preprocessing_for(config),
        progress=progress,
        world=world,
        budget_spent=spent,
        warm_start=short_run,
    ).run()
    if not world.is_main:  # rank 0 exports and packages; the others wait for it and leave
        world.barrier()
        return None
    history = result.history_dicts()
    training = {
        "command": command or command_line(),
        "config": config.to_dict(),
        "best": result.best,
        "class_weights": result.class_weights,
        "epochs": {str(p): n for p, n in sorted(Counter(h["phase"] for h in history).items())},
        "unfrozen_layers": result.unfrozen_layers,
        "timings": result.timings,
        "seconds": time.perf_counter() - started,
        "started_at": started_at,
        "torch": torch.__version__,
    }
    training["processes"] = world.size
    if size_search is not None:
        training["input_size_search"] = size_search
        if spent:
            training["budget"] = {
                "minutes": config.budget_minutes,
                "input_size_search_s": round(spent, 2),
                "left_for_training_s": round(config.budget_minutes * 60.0 - spent, 2),
            }
    try:
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path, Checkpoint(result.model, config, split.to_dict(dataset), history, training)
            )
        return package_model(
            result.model, config, dataset, split, out_dir, training=training, history=history, progress=progress
        )
    finally:
        world.barrier()


def check_golden(package_dir: Path, manifest: Manifest, scorer: OnnxScorer) -> list[dict[str, Any]]:
    """Re-score the package's golden images; ManifestError if one is missing or off by more than the tolerance."""
    results = []
    for item in manifest.golden:
        try:
            image = read_image(Path(package_dir) / item.file)
        except DatasetError as exc:
            raise ManifestError(f"golden image of the manifest: {exc}") from exc
        score = float(scorer(preprocess(image, manifest.preprocessing, IMAGE_CHANNEL_ORDER))[0])
        if abs(score - item.score) > manifest.golden_tolerance:
            raise ManifestError(
                f"golden image {item.file} scores {score:.4f}, the manifest expects {item.score:.4f} "
                f"(tolerance {manifest.golden_tolerance}): the package is inconsistent"
            )
        results.append({"file": item.file, "expected": item.score, "actual": round(score, 6)})
    return results


GOOD_ONLY_EVALUATION = (
    "Good parts only: without defective images the ROC AUC, average precision, precision, recall, F1 and the "
    "escape rate are undefined (n/a). What is measured is the false-alarm load: the share of good parts sent to "
    "re-inspection or rejected at these bands (false reject rate), and the false-positive rate at the threshold "
    "(1 - specificity)."
)


def evaluate_package(
    package_dir: Path,
    dataset: Dataset,
    out_dir: Path,
    *,
    split_path: Path | None = None,
    low: float = 0.5,
    high: float = 0.8,
    batch_size: int = 16,
    progress: bool = True,
) -> RunResult:
    """Score a model package on `dataset` (its test split when a split file is given) and write the report."""
    scorer, manifest = OnnxScorer.from_package(package_dir)
    golden = check_golden(package_dir, manifest, scorer)
    caveats = []
    if split_path is not None:
        split = Split.load(split_path)
        split.check_matches(dataset)
        samples, scope = split.samples(dataset, "test"), "Held-out **test split**"
        if dataset.layout == "mvtec":
            caveats.append(MVTEC_CAVEAT)
    else:
        samples, scope = list(dataset.samples), "**All images** of the data set"
        if manifest.dataset.get("fingerprint") == dataset.fingerprint:
            caveats.append(
                "This data set is the one the model was trained on and no split was given: the scores "
                "include training images and overstate the model. Pass --split split.json."
            )
    labels = {s.label for s in samples}
    if 0 not in labels:  # label 0: good
        raise DatasetError("the images to evaluate include no good parts: the false-alarm load cannot be measured")
    if labels == {0}:
        caveats.append(GOOD_ONLY_EVALUATION)
    evaluation = evaluate(
        scorer, dataset, samples, manifest.preprocessing, low=low, high=high, batch_size=batch_size, progress=progress
    )
    pre = manifest.preprocessing
    report = {
        "scope": scope,
        "model": {
            "architecture": manifest.architecture,
            "version": manifest.version,
            "input_size": pre.input_width,
            "sha256": manifest.sha256,
            "size_bytes": manifest.size_bytes,
            "package": str(package_dir),
        },
        "dataset": {**dataset.summary(), "name": dataset.root.name},
        "test": evaluation.metrics,
        "golden_check": golden,
        "caveats": caveats,
    }
    paths = write_report(Path(out_dir), report, evaluation, None)
    return RunResult(Path(out_dir), Path(package_dir), manifest, evaluation, report, paths)
