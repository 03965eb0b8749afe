"""Stratified, seeded train/val/test split, recorded as JSON next to the run's outputs.

Strata are the defect types ("good" is one), so every split holds every defect type in about the
same proportion. The assignment depends only on the seed, the fractions and the sorted file list.

MVTec AD caveat: its own `train/` split holds good images only (it is an unsupervised benchmark). A
supervised classifier needs defective images to learn from, so this split pools MVTec's train and test
folders and draws the defective training images from MVTec's test split. Metrics are then NOT
comparable with published MVTec AD results (different protocol, a smaller test set, the same defect
types seen in training). `MVTEC_CAVEAT` is written into every report of an MVTec-layout run.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qc_cloud.training.datasets import Dataset, Sample
from qc_cloud.training.errors import DatasetError

SPLITS = ("train", "val", "test")
SPLIT_FORMAT = "qc_cloud.split/1"
MVTEC_CAVEAT = (
    "MVTec AD's own train split holds only good images (the benchmark is unsupervised). For supervised "
    "training this run pools MVTec's train and test folders and draws the defective training images from "
    "MVTec's test split, with a stratified split by defect type. These metrics are therefore not comparable "
    "with published MVTec AD results: the protocol differs, the test set is smaller, and every defect type in "
    "the test set was also seen (as different images) in training."
)


@dataclass(frozen=True)
class Split:
    seed: int
    val_fraction: float
    test_fraction: float
    dataset_fingerprint: str
    assignment: dict[str, str]  # sample path -> one of SPLITS

    def samples(self, dataset: Dataset, name: str) -> list[Sample]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; one of {SPLITS}")
        return [s for s in dataset.samples if self.assignment[s.path] == name]

    def counts(self, dataset: Dataset) -> dict[str, dict[str, int]]:
        """{split: {defect type: images}}"""
        return {
            name: dict(sorted(Counter(s.defect_type for s in self.samples(dataset, name)).items())) for name in SPLITS
        }

    def to_dict(self, dataset: Dataset) -> dict[str, Any]:
        return {
            "format": SPLIT_FORMAT,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "dataset_fingerprint": self.dataset_fingerprint,
            "layout": dataset.layout,
            "caveat": MVTEC_CAVEAT if dataset.layout == "mvtec" else None,
            "counts": self.counts(dataset),
            "items": [
                {"path": s.path, "label": s.label, "defect_type": s.defect_type, "split": self.assignment[s.path]}
                for s in dataset.samples
            ],
        }

    def save(self, path: Path, dataset: Dataset) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(dataset), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
            raise DatasetError(f"not a split file (format {SPLIT_FORMAT!r} expected)")
        try:
            assignment = {item["path"]: item["split"] for item in data["items"]}
            split = cls(
                seed=int(data["seed"]),
                val_fraction=float(data["val_fraction"]),
                test_fraction=float(data["test_fraction"]),
                dataset_fingerprint=str(data["dataset_fingerprint"]),
                assignment=assignment,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"malformed split file: {exc!r}") from exc
        bad = {v for v in assignment.values() if v not in SPLITS}
        if bad:
            raise DatasetError(f"split file names unknown split(s) {sorted(bad)}")
        return split

    @classmethod
    def load(cls, path: Path) -> Split:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read split file {path}: {exc}") from exc

    def check_matches(self, dataset: Dataset) -> None:
        """Raise DatasetError unless this split was recorded for exactly this data set."""
        have = {s.path for s in dataset.samples}
        want = set(self.assignment)
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            raise DatasetError(
                f"the split does not match the data set at {dataset.root}: {len(missing)} recorded image(s) missing"
                f"{' (e.g. ' + missing[0] + ')' if missing else ''}, {len(extra)} image(s) not in the split"
                f"{' (e.g. ' + extra[0] + ')' if extra else ''}"
            )
        if self.dataset_fingerprint != dataset.fingerprint:
            raise DatasetError(
                f"the data set at {dataset.root} has the same files as the recorded split but different content "
                f"(fingerprint {dataset.fingerprint[:12]} != recorded {self.dataset_fingerprint[:12]})"
            )


def _allocate(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) for a stratum of n images; at least one of each when the stratum allows it."""
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    while n_val + n_test > n - 1 and (n_val or n_test):  # keep at least one training image
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def stratified_split(
    dataset: Dataset, *, val_fraction: float = 0.15, test_fraction: float = 0.25, seed: int = 0
) -> Split:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError(f"split fractions val={val_fraction} test={test_fraction} must be > 0 and sum below 1")
    strata: dict[str, list[str]] = defaultdict(list)
    for s in sorted(dataset.samples, key=lambda s: s.path):
        strata[s.defect_type].append(s.path)
    assignment: dict[str, str] = {}
    for name, paths in sorted(strata.items()):
        order = np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(paths))
        n_val, n_test = _allocate(len(paths), val_fraction, test_fraction)
        for rank, index in enumerate(order):
            assignment[paths[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    split = Split(seed, val_fraction, test_fraction, dataset.fingerprint, assignment)
    for name in SPLITS:
        labels = {s.label for s in split.samples(dataset, name)}
        if labels != {0, 1}:
            raise DatasetError(
                f"too few images for a stratified split: the {name} split would lack "
                f"{'defective' if 1 not in labels else 'good'} images "
                f"(per type: {dataset.counts()}; each class needs at least 3 images)"
            )
    return split
