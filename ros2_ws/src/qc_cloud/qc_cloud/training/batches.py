"""Model input batches from data set samples: read -> (augment) -> qc_contract.preprocess.

Every tensor the model sees in training, evaluation, export checks and golden scores is made by
`preprocess()`, the function the edge inference node calls: no train/serve skew.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from qc_cloud.training.augment import Augmentation, draw_rng
from qc_cloud.training.datasets import Dataset, Sample
from qc_contract.model_manifest import Preprocessing
from qc_contract.preprocess import fit_longer_side, preprocess

# Images are read with OpenCV, so they are BGR; preprocess() reorders to the model's colour order.
IMAGE_CHANNEL_ORDER = "BGR"


def model_input(
    dataset: Dataset,
    sample: Sample,
    spec: Preprocessing,
    augmentation: Augmentation | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(1, 3, h, w) float32 for one sample; augmented when `augmentation` and `rng` are given."""
    image = dataset.image(sample)
    if augmentation is not None and rng is not None and not augmentation.is_identity:
        reduced: list[bool] = []

        def reduce(full: np.ndarray) -> np.ndarray:
            reduced.append(True)
            return offloaded_image(full, spec)

        image = augmentation.apply(image, rng, reduce=reduce)
        if reduced:  # the region is cut out already
            spec = dataclasses.replace(spec, roi=None)
    return preprocess(image, spec, IMAGE_CHANNEL_ORDER)


def offloaded_image(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The image as a cell's bridge offloads it to a verifier with this preprocessing: the region, its longer side
    reduced to the model's input side (qc_cell.bridge.part_images)."""
    if spec.roi is not None:
        x, y, w, h = spec.roi
        image = image[y : y + h, x : x + w]
    return fit_longer_side(image, max(spec.input_width, spec.input_height))


def input_batches(
    dataset: Dataset,
    samples: Sequence[Sample],
    spec: Preprocessing,
    batch_size: int,
    *,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    draw: int = 0,
    order: Sequence[int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Yield (inputs N x 3 x h x w, labels N, sample indices) in `order` (default: as given).

    With an augmentation, sample i gets the draw seeded by (seed, i, draw): a given (image, draw) pair always
    yields the same augmented input, whichever batch it falls in."""
    indices = list(range(len(samples))) if order is None else list(order)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        inputs = np.concatenate(
            [
                model_input(dataset, samples[i], spec, augmentation, draw_rng(seed, i, draw) if augmentation else None)
                for i in chunk
            ]
        )
        labels = np.asarray([samples[i].label for i in chunk], dtype=np.float32)
        yield inputs, labels, chunk
