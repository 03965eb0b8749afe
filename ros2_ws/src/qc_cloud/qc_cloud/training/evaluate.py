"""Scoring a split with the PyTorch model or the exported ONNX model, and the metrics of the report.

Metrics (label 1 = defective is the positive class):
- accuracy, precision, recall, F1 and the confusion matrix at one threshold (the cell's lower band, 0.5);
- ROC AUC (Mann-Whitney statistic, ties counted half), ROC and precision-recall curves;
- the cell's decision bands (Normal < low <= Re-inspect < high <= Defective): share of parts per band,
  defect escape rate (defective parts called Normal), false reject rate (good parts called Defective),
  re-inspection load, per class and per defect type.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from qc_cloud.training.batches import input_batches
from qc_cloud.training.datasets import Dataset, Sample
from qc_contract.model_manifest import Manifest, ManifestError, Preprocessing

Scorer = Callable[[np.ndarray], np.ndarray]  # (N, 3, h, w) float32 -> (N,) P(defect)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


# -- metrics --------------------------------------------------------------------------------------------


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random defective part scores above a random good one (ties count 1/2); NaN if one
    class is absent."""
    labels, scores = np.asarray(labels) > 0.5, np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending, starting at (0, 0)."""
    labels, scores = np.asarray(labels) > 0.5, np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(scores)[::-1]
    tp = np.array([(scores[labels] >= t).sum() for t in thresholds], dtype=np.float64)
    fp = np.array([(scores[~labels] >= t).sum() for t in thresholds], dtype=np.float64)
    tpr = np.concatenate([[0.0], tp / max(labels.sum(), 1)])
    fpr = np.concatenate([[0.0], fp / max((~labels).sum(), 1)])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, thresholds), thresholds descending."""
    labels, scores = np.asarray(labels) > 0.5, np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(scores)[::-1]
    tp = np.array([(scores[labels] >= t).sum() for t in thresholds], dtype=np.float64)
    predicted = np.array([(scores >= t).sum() for t in thresholds], dtype=np.float64)
    return tp / max(labels.sum(), 1), tp / np.maximum(predicted, 1), thresholds


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    recall, precision, _ = pr_curve(labels, scores)
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    y, pred = np.asarray(labels) > 0.5, np.asarray(scores) >= threshold
    tp, fp = int((y & pred).sum()), int((~y & pred).sum())
    fn, tn = int((y & ~pred).sum()), int((~y & ~pred).sum())
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    return {
        "threshold": threshold,
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "specificity": _ratio(tn, tn + fp),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def band_analysis(labels: np.ndarray, scores: np.ndarray, low: float, high: float) -> dict[str, Any]:
    """The cell's three-way decision applied to the scores."""
    y, s = np.asarray(labels) > 0.5, np.asarray(scores)
    normal, defective = s < low, s >= high
    reinspect = ~normal & ~defective
    n_def, n_good = int(y.sum()), int((~y).sum())
    return {
        "low": low,
        "high": high,
        "fraction_normal": _ratio(int(normal.sum()), len(s)),
        "fraction_reinspect": _ratio(int(reinspect.sum()), len(s)),
        "fraction_defective": _ratio(int(defective.sum()), len(s)),
        "defect_escape_rate": _ratio(int((y & normal).sum()), n_def),  # defective called Normal
        "false_reject_rate": _ratio(int((~y & defective).sum()), n_good),  # good called Defective
        "defects_reinspected": _ratio(int((y & reinspect).sum()), n_def),
        "good_reinspected": _ratio(int((~y & reinspect).sum()), n_good),
        "defects_caught_directly": _ratio(int((y & defective).sum()), n_def),
        "counts": {
            "good": {
                "normal": int((~y & normal).sum()),
                "reinspect": int((~y & reinspect).sum()),
                "defective": int((~y & defective).sum()),
            },
            "defective": {
                "normal": int((y & normal).sum()),
                "reinspect": int((y & reinspect).sum()),
                "defective": int((y & defective).sum()),
            },
        },
    }


def per_type_metrics(defect_types: Sequence[str], scores: np.ndarray, low: float, high: float) -> dict[str, Any]:
    out = {}
    types, s = np.asarray(defect_types), np.asarray(scores)
    for name in sorted(set(defect_types)):
        t = s[types == name]
        out[name] = {
            "n": len(t),
            "mean_score": float(t.mean()),
            "normal": int((t < low).sum()),
            "reinspect": int(((t >= low) & (t < high)).sum()),
            "defective": int((t >= high).sum()),
        }
    return out


# -- scoring --------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    samples: list[Sample]
    scores: np.ndarray  # P(defect)
    metrics: dict[str, Any]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([s.label for s in self.samples], dtype=np.float32)

    def per_image(self) -> list[dict[str, Any]]:
        return [
            {"path": s.path, "label": s.label, "defect_type": s.defect_type, "score": round(float(p), 6)}
            for s, p in zip(self.samples, self.scores, strict=True)
        ]


def compute_metrics(samples: Sequence[Sample], scores: np.ndarray, *, low: float, high: float) -> dict[str, Any]:
    labels = np.asarray([s.label for s in samples], dtype=np.float32)
    metrics = {
        "n_images": len(samples),
        "n_good": int((labels == 0).sum()),
        "n_defective": int((labels == 1).sum()),
        **threshold_metrics(labels, scores, low),
        "roc_auc": roc_auc(labels, scores),
        "average_precision": average_precision(labels, scores),
        "bands": band_analysis(labels, scores, low, high),
        "per_type": per_type_metrics([s.defect_type for s in samples], scores, low, high),
    }
    if metrics["n_defective"] == 0:
        # Good parts only (the anomaly model on a new line): what needs defects cannot be measured; say so
        # (None, shown as n/a) instead of a 0 or a NaN that reads like a result.
        metrics.update(precision=None, recall=None, f1=None, roc_auc=None, average_precision=None, good_only=True)
    return metrics


def score_samples(
    scorer: Scorer,
    dataset: Dataset,
    samples: Sequence[Sample],
    spec: Preprocessing,
    *,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "evaluating",
    latencies_ms: list[float] | None = None,
) -> np.ndarray:
    """P(defect) per sample. With `latencies_ms`, the model's time per batch (scorer call only, not image reading
    or preprocessing) divided by the batch size is appended per batch: with batch_size=1, the latency per image."""
    scores = np.zeros(len(samples), dtype=np.float64)
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for inputs, _, chunk in input_batches(dataset, samples, spec, batch_size):
            start = time.perf_counter()
            scores[chunk] = scorer(inputs)
            if latencies_ms is not None:
                latencies_ms.append((time.perf_counter() - start) * 1000.0 / len(chunk))
            bar.update(len(chunk))
    return scores


def evaluate(
    scorer: Scorer,
    dataset: Dataset,
    samples: Sequence[Sample],
    spec: Preprocessing,
    *,
    low: float,
    high: float,
    batch_size: int = 16,
    progress: bool = True,
) -> Evaluation:
    scores = score_samples(scorer, dataset, samples, spec, batch_size=batch_size, progress=progress)
    return Evaluation(list(samples), scores, compute_metrics(samples, scores, low=low, high=high))


def torch_scorer(model) -> Scorer:
    import torch

    model.eval()

    def score(inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return sigmoid(model(torch.from_numpy(inputs)).reshape(-1).numpy())

    return score


class OnnxScorer:
    """The exported model in ONNX Runtime (CPU), as the edge runs it without TensorRT."""

    def __init__(
        self,
        model_path: Path,
        input_name: str = "input",
        output_name: str = "logit",
        semantics: str = "sigmoid_logit",
        calibration: tuple[float, float] | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for malformed files
            raise ManifestError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if input_name not in inputs or output_name not in outputs:
            raise ManifestError(
                f"{model_path} has inputs {inputs} and outputs {outputs}; the manifest names input "
                f"{input_name!r} and output {output_name!r}"
            )
        if semantics != "sigmoid_logit":
            raise ManifestError(f"output semantics {semantics!r} not supported by the training tools (sigmoid_logit)")
        self.input_name, self.output_name = input_name, output_name
        self.calibration = calibration  # (scale, shift) of the manifest, applied as the edge does
        self.input_shape = self.session.get_inputs()[inputs.index(input_name)].shape

    @classmethod
    def from_package(cls, package_dir: Path) -> tuple[OnnxScorer, Manifest]:
        """Load a model package; ManifestError when the manifest is missing, malformed or does not match the model
        file (sha256, size, tensor names or input size)."""
        manifest = Manifest.load(package_dir)
        model_path = manifest.verify_model_file(package_dir)
        out = manifest.output
        scorer = cls(model_path, manifest.input_name, out.name, out.semantics, out.calibration)
        pre = manifest.preprocessing
        expected = [3, pre.input_height, pre.input_width]
        if [d if isinstance(d, int) else None for d in scorer.input_shape[1:]] != expected:
            raise ManifestError(
                f"model input shape {scorer.input_shape} does not match the manifest's preprocessing "
                f"(N, 3, {pre.input_height}, {pre.input_width})"
            )
        return scorer, manifest

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: inputs})[0].reshape(-1)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        z = self.logits(inputs)
        if self.calibration is not None:
            z = self.calibration[0] * z + self.calibration[1]
        return sigmoid(z)
