"""Paired comparisons of two models scored on the same images: is a difference more than chance?

Used where small evaluation sets meet a decision: the input-size search (is another size really better than the
default?) and the promotion gate (is the candidate really worse than the model the cells run?). On tens of
labelled parts one or two images move a rate or an AUC by more than any useful tolerance.
"""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP = 2000  # resamples of a paired AUC difference


def pair_matrix(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """M[i, j] = 1 if defective image i scores above good image j, 1/2 on a tie, else 0 (the AUC is its mean)."""
    labels = np.asarray(labels) > 0.5
    pos, neg = np.asarray(scores, dtype=np.float64)[labels], np.asarray(scores, dtype=np.float64)[~labels]
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def auc_gain_bound(
    labels: np.ndarray,
    scores: np.ndarray,
    reference: np.ndarray,
    seed: int,
    *,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP,
) -> tuple[float, float]:
    """(AUC(scores) - AUC(reference), its one-sided lower `confidence` bound): the same images resampled for both
    (paired), defective and good parts resampled separately (stratified: every resample has both classes)."""
    diff = pair_matrix(labels, scores) - pair_matrix(labels, reference)
    n_pos, n_neg = diff.shape
    rng = np.random.default_rng([seed, 25])
    pos_counts = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=resamples).astype(np.float64)
    neg_counts = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=resamples).astype(np.float64)
    gains = np.einsum("bi,ij,bj->b", pos_counts, diff, neg_counts) / (n_pos * n_neg)
    return float(diff.mean()), float(np.quantile(gains, 1.0 - confidence))


def mcnemar_worse_p(candidate_events: np.ndarray, current_events: np.ndarray) -> tuple[int, int, float]:
    """Exact one-sided McNemar test that the candidate has the event (an escape, a false reject...) more often
    than the current model on the same images: (b, c, p) with b = images only the candidate got wrong, c = images
    only the current model got wrong, p = P(X >= b) for X ~ Binomial(b + c, 1/2) (1.0 when b + c = 0)."""
    cand, cur = np.asarray(candidate_events, dtype=bool), np.asarray(current_events, dtype=bool)
    b, c = int((cand & ~cur).sum()), int((cur & ~cand).sum())
    n = b + c
    p = sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n if n else 1.0
    return b, c, float(p)
