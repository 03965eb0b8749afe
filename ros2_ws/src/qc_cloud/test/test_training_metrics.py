"""Evaluation metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qc_cloud.training.evaluate import (
    average_precision,
    band_analysis,
    compute_metrics,
    pr_curve,
    roc_auc,
    roc_curve,
    threshold_metrics,
)

# 4 good, 4 defective parts; the scores cover all three bands (Normal < 0.5 <= Re-inspect < 0.8 <= Defective).
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.10, 0.20, 0.60, 0.90, 0.30, 0.55, 0.85, 0.95])


def test_roc_auc_known_values():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5, "a tie counts one half"
    # pairs (defect > good): 0.30 beats 2, 0.55 beats 2, 0.85 beats 3, 0.95 beats 4 -> 11 of 16
    assert roc_auc(LABELS, SCORES) == pytest.approx(11 / 16)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_threshold_metrics_and_confusion_matrix():
    m = threshold_metrics(LABELS, SCORES, 0.5)
    assert m["confusion_matrix"] == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    none_flagged = threshold_metrics(LABELS, SCORES, 0.99)
    assert none_flagged["precision"] is None and none_flagged["f1"] == 0.0


def test_decision_bands():
    b = band_analysis(LABELS, SCORES, 0.5, 0.8)
    # good: 0.10, 0.20 Normal; 0.60 Re-inspect; 0.90 Defective. defective: 0.30 Normal; 0.55 Re-inspect; 0.85, 0.95
    assert b["counts"] == {
        "good": {"normal": 2, "reinspect": 1, "defective": 1},
        "defective": {"normal": 1, "reinspect": 1, "defective": 2},
    }
    assert b["defect_escape_rate"] == pytest.approx(1 / 4)
    assert b["false_reject_rate"] == pytest.approx(1 / 4)
    assert b["fraction_reinspect"] == pytest.approx(2 / 8)
    assert b["fraction_normal"] + b["fraction_reinspect"] + b["fraction_defective"] == pytest.approx(1.0)
    edges = band_analysis([0, 1], [0.5, 0.8], 0.5, 0.8)
    assert edges["counts"]["good"]["reinspect"] == 1 and edges["counts"]["defective"]["defective"] == 1


def test_curves():
    fpr, tpr, _ = roc_curve(LABELS, SCORES)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(LABELS, SCORES))
    recall, precision, _ = pr_curve(LABELS, SCORES)
    assert recall[-1] == 1.0 and precision[-1] == pytest.approx(0.5)
    assert average_precision([0, 1, 1], [0.1, 0.8, 0.9]) == pytest.approx(1.0)


def test_compute_metrics_per_defect_type():
    from qc_cloud.training.datasets import Sample

    types = ["good"] * 4 + ["scratch", "scratch", "dent", "dent"]
    samples = [Sample(f"{i}.png", int(y), t) for i, (y, t) in enumerate(zip(LABELS, types, strict=True))]
    m = compute_metrics(samples, SCORES, low=0.5, high=0.8)
    assert m["n_good"] == 4 and m["n_defective"] == 4
    assert m["per_type"]["scratch"] == {
        "n": 2,
        "mean_score": pytest.approx(0.425),
        "normal": 1,
        "reinspect": 1,
        "defective": 0,
    }
    assert m["per_type"]["dent"]["defective"] == 2
