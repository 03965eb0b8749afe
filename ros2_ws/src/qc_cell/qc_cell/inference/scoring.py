"""Model outputs -> defect probability, as the manifest's `output` says; non-finite outputs are caught per
part, never passed on as a score. Also the class-activation map (CAM) for the overlay heatmap."""

from __future__ import annotations

import numpy as np

from qc_contract.model_manifest import Output


class OutputError(ValueError):
    """The model's output does not have the shape its manifest promises (a packaging error, not a part's)."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Stable for large |x|: exp only of non-positive numbers.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def defect_probabilities(raw: np.ndarray, output: Output) -> tuple[np.ndarray, list[str | None]]:
    """raw: the model's output for N parts (N, ...). Returns (P(defective) per part as float32 with NaN
    where unusable, per-part problem or None). Problems: "nan_output" (NaN/inf from the model) or
    "model_error" (a `probability` output outside [0, 1])."""
    raw = np.asarray(raw)
    if raw.ndim == 0:
        raise OutputError(f"output '{output.name}' is a scalar; one row per part expected")
    rows = raw.reshape(raw.shape[0], -1).astype(np.float64)
    n, width = rows.shape
    if output.semantics == "softmax":
        if width < 2 or not 0 <= output.defect_index < width:
            raise OutputError(
                f"output '{output.name}' has {width} values per part; softmax semantics need >= 2 class logits "
                f"and defect_index {output.defect_index} inside them"
            )
        shifted = rows - rows.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        probs = e[:, output.defect_index] / e.sum(axis=1)
    else:
        if width != 1:
            raise OutputError(
                f"output '{output.name}' has {width} values per part; {output.semantics} semantics need exactly 1"
            )
        values = rows[:, 0]
        if output.semantics == "sigmoid_logit" and output.calibration is not None:
            scale, shift = output.calibration  # fitted on the validation split at training (manifest)
            values = scale * values + shift
        probs = _sigmoid(values) if output.semantics == "sigmoid_logit" else values
    finite_rows = np.isfinite(rows).all(axis=1) & np.isfinite(probs)
    problems: list[str | None] = []
    for i in range(n):
        if not finite_rows[i]:
            problems.append("nan_output")
        elif output.semantics == "probability" and not 0.0 <= probs[i] <= 1.0:
            problems.append("model_error")
        else:
            problems.append(None)
    out = probs.astype(np.float32)
    out[[p is not None for p in problems]] = np.nan
    return out, problems


def class_activation_map(features: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """CAM of one part: features (C, h, w) from the last conv layer, weights (C,) of the sigmoid head.
    Returns (h, w) float32 in [0, 1] (positive evidence for "defective"), or None when unusable."""
    features = np.asarray(features, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if features.ndim != 3 or weights.shape != (features.shape[0],):
        return None
    cam = np.tensordot(weights, features, axes=(0, 0))
    if not np.isfinite(cam).all():
        return None
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).astype(np.float32)
