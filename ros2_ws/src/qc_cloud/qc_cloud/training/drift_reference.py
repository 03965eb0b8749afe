"""The model package's drift reference (manifest `drift_reference`, issue 22): the fixed-bin histograms of the
validation images' statistics (qc_contract.drift.image_stats, as the cell computes them per part) and of the
model's calibrated defect probability on them. The fleet compares cells' recent parts with it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qc_contract.drift import Histograms, image_stats
from qc_contract.model_manifest import DriftReference


def validation_reference(dataset, samples: Sequence, probabilities: np.ndarray) -> DriftReference:
    """`samples` of `dataset` (its images are BGR, as read for training) with the model's P(defect) on each."""
    if len(samples) != len(probabilities):
        raise ValueError(f"{len(samples)} samples but {len(probabilities)} probabilities")
    hist = Histograms()
    for sample, p in zip(samples, probabilities, strict=True):
        hist.add(image_stats(dataset.image(sample), "BGR"), float(p))
    counts, parts = hist.take()
    return DriftReference(parts=parts, histograms=counts)
