"""A model package loaded on a backend: scores preprocessed batches as the manifest says, warms up, and
runs its golden-set self-test. One LoadedModel serves parts at a time; hot swap replaces it whole."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from qc_cell.inference.backends import Backend, BackendError
from qc_cell.inference.scoring import OutputError, class_activation_map, defect_probabilities
from qc_contract.model_manifest import Manifest
from qc_contract.preprocess import PreprocessError, preprocess


class SelfTestError(RuntimeError):
    """The model does not reproduce its golden set (or cannot run at all); it must not serve parts."""


@dataclass
class BatchScores:
    probabilities: np.ndarray  # (N,) float32, NaN where problems[i] is set
    problems: list[str | None]  # per part: None, "nan_output" or "model_error"
    features: np.ndarray | None  # (N, C, h, w) when requested and exported
    inference_ms: float


class LoadedModel:
    def __init__(self, package_dir: Path, manifest: Manifest, backend: Backend, backend_message: str = "") -> None:
        self.package_dir = Path(package_dir)
        self.manifest = manifest
        self.backend = backend
        self.backend_message = backend_message
        out = manifest.output
        names = {spec.name for spec in backend.outputs}
        if out.name not in names:
            raise BackendError(f"model has no output '{out.name}' named in its manifest (outputs: {sorted(names)})")
        # An anomaly model exports its per-pixel map (N, 1, H, W) in [0, 1] directly: that is the heatmap.
        self._anomaly_map = out.anomaly_map is not None and out.anomaly_map in names
        if self._anomaly_map:
            self._features_name = out.anomaly_map
        else:
            self._features_name = out.features if out.features in names else None
        self._cam_weights = (
            np.asarray(out.classifier_weights, dtype=np.float32)
            if self._features_name and out.classifier_weights and not self._anomaly_map
            else None
        )

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def input_chw(self) -> tuple[int, int, int]:
        spec = self.manifest.preprocessing
        return (3, spec.input_height, spec.input_width)

    @property
    def max_batch(self) -> int:
        return self.backend.max_batch

    @property
    def has_heatmap(self) -> bool:
        return self._cam_weights is not None or self._anomaly_map

    def score(self, batch: np.ndarray, want_features: bool = False) -> BatchScores:
        """Run a preprocessed batch. BackendError: the whole batch failed (runtime error)."""
        names = [self.manifest.output.name]
        if want_features and self._features_name:
            names.append(self._features_name)
        start = time.perf_counter()
        outputs = self.backend.run(batch, names)
        inference_ms = (time.perf_counter() - start) * 1e3
        try:
            probabilities, problems = defect_probabilities(outputs[names[0]], self.manifest.output)
        except OutputError as exc:
            raise BackendError(str(exc)) from exc
        if len(probabilities) != batch.shape[0]:
            raise BackendError(f"model returned {len(probabilities)} scores for a batch of {batch.shape[0]}")
        features = outputs.get(self._features_name) if len(names) > 1 else None
        return BatchScores(probabilities, problems, features, inference_ms)

    def heatmap(self, features: np.ndarray) -> np.ndarray | None:
        """CAM (h, w) in [0, 1] for one part's features (C, h, w), or an anomaly model's own map (1, h, w);
        None when the model exports none."""
        if self._anomaly_map:
            heat = np.asarray(features, dtype=np.float32).reshape(features.shape[-2:])
            return np.clip(heat, 0.0, 1.0) if np.isfinite(heat).all() else None
        if self._cam_weights is None:
            return None
        return class_activation_map(features, self._cam_weights)

    def warm_up(self, runs: int = 3) -> None:
        """First runs allocate and (TensorRT) autotune; do them before the model serves parts. Also proves
        the output has the shape the manifest promises, at batch 1 and at the largest batch."""
        sizes = sorted({1, self.max_batch})
        for size in sizes:
            batch = np.zeros((size, *self.input_chw), dtype=np.float32)
            for _ in range(runs):
                self.score(batch, want_features=self.has_heatmap)

    def self_test(self) -> str:
        """Score the manifest's golden images (read from the package like the training tool reads them) and
        compare with their expected scores. Returns a summary; raises SelfTestError with every mismatch."""
        golden = self.manifest.golden
        if not golden:
            return "no golden set in the package"
        tolerance = self.manifest.golden_tolerance
        failures, worst = [], 0.0
        for item in golden:
            path = (self.package_dir / item.file).resolve()
            if self.package_dir.resolve() not in path.parents:
                raise SelfTestError(f"golden file {item.file!r} points outside the package")
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise SelfTestError(f"golden image {item.file} missing or unreadable")
            try:
                tensor = preprocess(image, self.manifest.preprocessing, "BGR")
            except PreprocessError as exc:
                raise SelfTestError(f"golden image {item.file}: {exc}") from exc
            result = self.score(tensor)
            got = float(result.probabilities[0])
            if result.problems[0] is not None:
                failures.append(f"{item.file}: {result.problems[0]}")
                continue
            error = abs(got - item.score)
            worst = max(worst, error)
            if error > tolerance:
                failures.append(f"{item.file}: {got:.4f}, expected {item.score:.4f} +- {tolerance}")
        if failures:
            raise SelfTestError(f"golden-set self-test failed on {len(failures)}/{len(golden)}: " + "; ".join(failures))
        return f"golden set {len(golden)}/{len(golden)} within {tolerance} (worst {worst:.4f})"

    def describe(self) -> str:
        return f"model {self.version} ({self.manifest.architecture}) on {self.backend.describe()}"

    def close(self) -> None:
        self.backend.close()
