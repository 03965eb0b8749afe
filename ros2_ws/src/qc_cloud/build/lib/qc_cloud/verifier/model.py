"""The verifier's model: a package written by `qc_cloud train`, loaded with the edge's own code (manifest check,
backend choice, LoadedModel, golden-set self-test), so cloud and edge score a package the same way.

The backends live in qc_cell.inference (ROS-free modules); they are imported here only when a model is loaded,
so the rest of qc_cloud still installs and runs without qc_cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qc_contract.model_manifest import Manifest, Preprocessing


class PackageScorer:
    """A LoadedModel behind the verifier's Scorer interface."""

    def __init__(self, model) -> None:
        self.model = model
        self.version = model.version
        self.max_batch = model.max_batch

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model.manifest.preprocessing

    def probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        # A batch larger than the backend takes is scored in slices (the batcher never makes one, but be safe).
        probs, problems = [], []
        for start in range(0, batch.shape[0], self.max_batch):
            scores = self.model.score(batch[start : start + self.max_batch])
            probs.append(scores.probabilities)
            problems.extend(scores.problems)
        return np.concatenate(probs), problems

    def describe(self) -> str:
        return self.model.describe()

    def close(self) -> None:
        self.model.close()


def load_package(
    package_dir: Path, backend: str = "auto", precision: str = "fp32", max_batch: int = 8, threads: int = 2
) -> tuple[PackageScorer, str]:
    """Load, warm up and self-test a model package. Returns (scorer, one line for the log). Raises
    ManifestError / BackendError / SelfTestError with a message an operator can act on."""
    from qc_cell.inference.backends import BackendOptions, create_backend, resolve_backend
    from qc_cell.inference.model import LoadedModel

    package_dir = Path(package_dir)
    manifest = Manifest.load(package_dir)
    model_path = manifest.verify_model_file(package_dir)
    choice = resolve_backend(backend, precision)
    options = BackendOptions(threads=threads, precision=choice.precision, max_batch=max_batch)
    loaded = LoadedModel(
        package_dir, manifest, create_backend(choice.name, model_path, manifest, options), choice.message
    )
    try:
        loaded.warm_up(runs=1)
        selftest = loaded.self_test()
    except Exception:
        loaded.close()
        raise
    return PackageScorer(loaded), f"{loaded.describe()}; {selftest}; {choice.message}"
