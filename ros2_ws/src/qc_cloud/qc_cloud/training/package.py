"""The model package the edge loads: model.onnx + manifest.json (qc_contract.model_manifest) + golden/.

The golden set is a few held-out test images (PNG files copied byte for byte), with the score the exported model
gives them through ONNX Runtime and qc_contract.preprocess: before the edge swaps in a new model it
scores these files and compares (tolerance in the manifest), which catches a broken engine build or a
preprocessing mismatch before a single part is judged by it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from qc_cloud.training.batches import IMAGE_CHANNEL_ORDER
from qc_cloud.training.datasets import GOOD, Dataset, Sample, read_image
from qc_cloud.training.evaluate import OnnxScorer
from qc_cloud.training.export import FEATURES_NAME, INPUT_NAME, LOGIT_NAME
from qc_contract.model_manifest import (
    DecisionBands,
    DriftReference,
    GoldenItem,
    Manifest,
    Output,
    Preprocessing,
    sha256_file,
)
from qc_contract.preprocess import preprocess

GOLDEN_DIR = "golden"
GOLDEN_TOLERANCE = 0.02  # |expected - actual| P(defect) allowed on the edge (TensorRT fp16 vs ORT fp32)


@dataclass(frozen=True)
class PackageContents:
    architecture: str
    version: str
    preprocessing: Preprocessing
    metrics: dict[str, Any]
    dataset: dict[str, Any]
    training: dict[str, Any]
    classifier_weights: tuple[float, ...] | None  # head weights, when the model has a "features" output
    calibration: tuple[float, float] | None = None  # (scale, shift) of the logit, fitted on the validation split
    anomaly_map: str | None = None  # name of the anomaly model's per-pixel map output
    decision_bands: DecisionBands | None = None  # proposed on the validation split (the cell: bands: from_model)
    drift_reference: DriftReference | None = None  # the validation split's histograms (drift alerts)


def pick_golden(samples: Sequence[Sample], per_class: int, seed: int) -> list[Sample]:
    """`per_class` good and `per_class` defective samples; defective ones cycle through the defect types."""
    rng = np.random.default_rng([seed, 7])
    good = [s for s in samples if not s.is_defect]
    by_type: dict[str, list[Sample]] = {}
    for s in samples:
        if s.is_defect:
            by_type.setdefault(s.defect_type, []).append(s)
    picked = [good[i] for i in sorted(rng.permutation(len(good))[:per_class])]
    pools = {t: [v[i] for i in rng.permutation(len(v))] for t, v in sorted(by_type.items())}
    while sum(s.is_defect for s in picked) < per_class and any(pools.values()):
        for pool in pools.values():
            if pool and sum(s.is_defect for s in picked) < per_class:
                picked.append(pool.pop(0))
    return picked


def write_golden(
    package_dir: Path, dataset: Dataset, samples: Sequence[Sample], scorer: OnnxScorer, spec: Preprocessing
) -> tuple[GoldenItem, ...]:
    folder = Path(package_dir) / GOLDEN_DIR
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    items = []
    for i, sample in enumerate(samples):
        name = f"{i:02d}_{'good' if sample.defect_type == GOOD else sample.defect_type}.png"
        source = dataset.root / sample.path
        if source.suffix.lower() == ".png":
            shutil.copyfile(source, folder / name)
        # Lossy or exotic formats are stored as PNG of the decoded pixels: JPEG decoders differ slightly between
        # libjpeg builds, and the golden test must compare the model, not the decoder.
        elif not cv2.imwrite(str(folder / name), read_image(source)):
            raise OSError(f"cannot write golden image {folder / name}")
        # Scored from the copied file, exactly as the edge will read it.
        score = float(scorer(preprocess(read_image(folder / name), spec, IMAGE_CHANNEL_ORDER))[0])
        items.append(GoldenItem(file=f"{GOLDEN_DIR}/{name}", score=round(score, 6)))
    return tuple(items)


def write_manifest(
    package_dir: Path, contents: PackageContents, golden: tuple[GoldenItem, ...], *, features: bool
) -> Manifest:
    """Write manifest.json for the model.onnx in `package_dir`, reload it and verify the model file against it."""
    package_dir = Path(package_dir)
    model_path = package_dir / "model.onnx"
    manifest = Manifest(
        version=contents.version,
        sha256=sha256_file(model_path),
        model_file=model_path.name,
        size_bytes=model_path.stat().st_size,
        architecture=contents.architecture,
        input_name=INPUT_NAME,
        preprocessing=contents.preprocessing,
        output=Output(
            name=LOGIT_NAME,
            semantics="sigmoid_logit",
            features=FEATURES_NAME if features else None,
            classifier_weights=contents.classifier_weights if features else None,
            calibration=contents.calibration,
            anomaly_map=contents.anomaly_map,
        ),
        golden=golden,
        golden_tolerance=GOLDEN_TOLERANCE,
        metrics=contents.metrics,
        dataset=contents.dataset,
        training=contents.training,
        decision_bands=contents.decision_bands,
        drift_reference=contents.drift_reference,
    )
    manifest.validate()
    manifest.write(package_dir)
    reloaded = Manifest.load(package_dir)
    reloaded.verify_model_file(package_dir)
    return reloaded
