"""Calibrated probabilities, so the cell's bands mean what they say; and band thresholds proposed for a target.

The raw logit z of a model trained with class-weighted loss (or a raw anomaly distance) is not a probability.
A calibration p = sigmoid(scale * z + shift) is fitted on the validation split by maximum likelihood:
- "platt": scale and shift (Platt scaling; the shift also undoes the class weighting's prior shift);
- "temperature": scale only (Guo et al. 2017: temperature T = 1 / scale).
It is stored in the manifest (`output.calibration`) and applied by the edge (qc_cell.inference.scoring) and the
training tools' scorer alike. The report gives the expected calibration error (ECE, 10 equal-width bins) and a
reliability diagram before and after, and the band thresholds that meet a target escape rate and a
re-inspection budget on the validation split, with whether they can be met.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ECE_BINS = 10


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, kind: str = "platt") -> tuple[float, float] | None:
    """(scale, shift) minimising the log loss of sigmoid(scale * z + shift) on (logits, labels); None for
    kind "none" or when the labels hold one class only. Newton's method on the 2-parameter convex problem
    with a small ridge on the scale towards 1, so a tiny or separable validation split gives a finite answer."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = (np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5).astype(np.float64)
    if kind == "none" or len(z) == 0 or y.min() == y.max():
        return None
    if kind not in ("platt", "temperature"):
        raise ValueError(f"unknown calibration {kind!r}")
    center, spread = float(np.mean(z)), float(np.std(z)) or 1.0
    zn = (z - center) / spread  # well-conditioned; the answer is mapped back at the end
    # Targets softened as Platt (1999) recommends: no infinite scale on separable data.
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    ridge = 1e-3

    def loss(a: float, b: float) -> float:
        p = np.clip(_sigmoid(a * zn + b), 1e-12, 1 - 1e-12)
        return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() + ridge * (a - 1.0) ** 2 / 2)

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(100):
        p = _sigmoid(a * zn + b)
        g = p - t
        w = np.maximum(p * (1 - p), 1e-12)
        grad = np.array([np.dot(g, zn) + ridge * (a - 1.0), g.sum()])
        hess = np.array([[np.dot(w, zn * zn) + ridge, np.dot(w, zn)], [np.dot(w, zn), w.sum()]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        factor = 1.0
        while factor > 1e-4:  # backtracking: Newton steps never increase the loss
            trial = loss(a - factor * step[0], b - factor * step[1])
            if trial <= current:
                break
            factor /= 2
        a, b, current = a - factor * step[0], b - factor * step[1], trial
        if np.abs(factor * step).max() < 1e-10:
            break
    # sigmoid(a * (z - center) / spread + b) = sigmoid(scale * z + shift)
    scale, shift = a / spread, b - a * center / spread
    if kind == "temperature":
        scale, shift = _fit_scale_only(z, t, ridge)
    if not (math.isfinite(scale) and math.isfinite(shift)) or scale <= 0:
        return None  # an inverted or degenerate model: leave the scores as they are (the report says so)
    return float(scale), float(shift)


def _fit_scale_only(z: np.ndarray, t: np.ndarray, ridge: float) -> tuple[float, float]:
    """Temperature scaling: sigmoid(scale * z), scale by a 1-D Newton search with backtracking."""
    spread = float(np.std(z)) or 1.0
    zn = z / spread

    def loss(a: float) -> float:
        p = np.clip(_sigmoid(a * zn), 1e-12, 1 - 1e-12)
        return float(-(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() + ridge * (a - 1.0) ** 2 / 2)

    a, current = 1.0, loss(1.0)
    for _ in range(100):
        p = _sigmoid(a * zn)
        grad = float(np.dot(p - t, zn)) + ridge * (a - 1.0)
        hess = float(np.dot(np.maximum(p * (1 - p), 1e-12), zn * zn)) + ridge
        step, factor = grad / hess, 1.0
        while factor > 1e-4 and loss(a - factor * step) > current:
            factor /= 2
        a -= factor * step
        current = loss(a)
        if abs(factor * step) < 1e-10:
            break
    return a / spread, 0.0


def apply_calibration(logits: np.ndarray, calibration: tuple[float, float] | None) -> np.ndarray:
    """P(defect) of raw logits under a calibration (plain sigmoid when None)."""
    z = np.asarray(logits, dtype=np.float64)
    if calibration is None:
        return _sigmoid(z)
    scale, shift = calibration
    return _sigmoid(scale * z + shift)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Reliability diagram data (per equal-width bin: count, mean predicted, observed defect frequency) and the
    expected calibration error sum_b n_b / n * |observed_b - predicted_b|."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = (np.asarray(labels).reshape(-1) > 0.5).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        if n:
            predicted, observed = float(p[sel].mean()), float(y[sel].mean())
            ece += n / len(p) * abs(observed - predicted)
        else:
            predicted = observed = None
        rows.append(
            {"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "predicted": predicted, "observed": observed}
        )
    return {"ece": float(ece) if len(p) else None, "bins": rows}


def _band_figures(p: np.ndarray, y: np.ndarray, low: float, high: float) -> dict[str, float]:
    normal, reinspect = p < low, (p >= low) & (p < high)
    return {
        "low": round(low, 6),
        "high": round(high, 6),
        "escape_rate": float((normal & y).sum() / max(y.sum(), 1)),
        "reinspect_share": float(reinspect.sum() / len(p)),
        "false_reject_rate": float(((p >= high) & ~y).sum() / max((~y).sum(), 1)),
    }


def _escape_first(p: np.ndarray, y: np.ndarray, target_escape: float, reinspect_budget: float) -> tuple[float, float]:
    """low = the highest threshold whose escape rate is <= target_escape; high = the highest threshold above low
    whose re-inspection share is <= the budget (as few good parts as possible rejected outright)."""
    defects = np.sort(p[y])
    allowed = math.floor(target_escape * len(defects) + 1e-9)  # defective parts that may fall below low
    low = float(defects[allowed]) if allowed < len(defects) else 1.0
    low = min(max(low, 1e-6), 1.0 - 1e-6)
    above = np.sort(p[p >= low])
    room = math.floor(reinspect_budget * len(p) + 1e-9)  # parts that may fall into [low, high)
    # The (room+1)-th score from low up: [low, high) then holds `room` parts at most.
    high = 1.0 if room >= len(above) else float(above[room])
    return low, min(max(high, low + 1e-6), 1.0)


def _within_budgets(
    p: np.ndarray, y: np.ndarray, reinspect_budget: float, max_false_reject: float
) -> tuple[float, float]:
    """The bands with the least escape that keep both budgets: high just above the good score that only
    max_false_reject of the good parts reach; low as far down as the re-inspection budget allows below high."""
    goods = np.sort(p[~y])[::-1]
    allowed = math.floor(max_false_reject * len(goods) + 1e-9)  # good parts that may reach high
    high = 1.0 if allowed >= len(goods) else min(float(goods[allowed]) + 1e-6, 1.0)
    below = np.sort(p[p < high])[::-1]
    room = math.floor(reinspect_budget * len(p) + 1e-9)
    low = high if room == 0 or not len(below) else float(below[min(room, len(below)) - 1])
    low = min(max(low, 1e-6), high - 1e-6)
    return low, high


def propose_bands(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    target_escape: float,
    reinspect_budget: float,
    max_false_reject: float = 0.05,
) -> dict[str, Any]:
    """Band thresholds (low, high) for the cell: Normal < low <= Re-inspect < high <= Defective.

    First the escape target: low = the highest threshold whose escape rate (defective parts below it) is <=
    target_escape, high = the highest threshold above low whose re-inspection share (parts in [low, high)) is <=
    the budget. `feasible` when these also keep the false reject rate (good parts at or above high) within its
    limit: without that limit any model "meets" the first two by rejecting nearly everything. When they do not,
    the proposal is instead the bands that keep the re-inspection and false-reject budgets with the least escape
    (what a line can run), `feasible` false and `reason` saying the escape the model reaches; the escape-first
    bands and what they would cost are kept under `escape_first`."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    if len(p) == 0 or not y.any() or y.all():
        return {"low": None, "high": None, "feasible": False, "reason": "needs good and defective parts"}
    targets = {
        "target_escape": target_escape,
        "reinspect_budget": reinspect_budget,
        "max_false_reject": max_false_reject,
    }
    first = _band_figures(p, y, *_escape_first(p, y, target_escape, reinspect_budget))
    failing = []
    if first["escape_rate"] > target_escape + 1e-12:  # ties at low
        failing.append(f"escape {first['escape_rate']:.1%} > {target_escape:.1%}")
    if first["reinspect_share"] > reinspect_budget + 1e-12:
        failing.append(f"re-inspection {first['reinspect_share']:.1%} > {reinspect_budget:.1%}")
    if first["false_reject_rate"] > max_false_reject + 1e-12:
        failing.append(f"false rejects {first['false_reject_rate']:.1%} > {max_false_reject:.1%}")
    if not failing:
        return {**first, **targets, "feasible": True, "reason": None}
    budgets = _band_figures(p, y, *_within_budgets(p, y, reinspect_budget, max_false_reject))
    return {
        **budgets,
        **targets,
        "feasible": False,
        "reason": (
            f"the model cannot meet the targets on the validation split: escape {target_escape:.1%} needs "
            + "; ".join(failing)
            + f". Proposed instead, within the re-inspection and false-reject budgets: escape "
            f"{budgets['escape_rate']:.1%}"
        ),
        "escape_first": first,
    }
