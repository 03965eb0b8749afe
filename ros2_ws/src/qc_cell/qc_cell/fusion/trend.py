"""Maintenance trend detection on vibration RMS: a one-sided (upward) CUSUM.

A bearing or a belt wearing out shows as vibration RMS creeping up over minutes to days, long before it
leaves its spec limit. The CUSUM accumulates the evidence of a sustained upward shift of the mean:

    S_n = clip(S_{n-1} + (x_n - mu0) / sigma - k, 0, 2h)        alarm while S > h, cleared when S <= h/2

mu0 and sigma are the in-control mean and spread, learned (median, 1.4826 * MAD) from the first
`baseline_samples` values, or mu0 given by the maintenance engineer (the healthy machine's RMS). S is capped at
2h so a recovered machine clears in bounded time.

Defaults (k = 0.5, h = 15, 300 baseline samples), measured on Gaussian noise with 200 seeds: a false alarm in
0.5 % of 20,000-sample runs (5.5 h at one sample per second); a 1-sigma step detected after 28 samples (median,
p90 54); a ramp of 1 sigma per minute detected after 66 s (median). A smaller baseline or h raises the false
alarm rate sharply (30 samples, h = 10: half the runs), because mu0 and sigma are then poorly estimated.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import Enum

from qc_cell.fusion.robust_stats import MAD_TO_SIGMA


@dataclass(frozen=True)
class TrendConfig:
    baseline_samples: int = 300  # values learned as the in-control reference
    k_sigma: float = 0.5  # allowance: shifts smaller than k sigma are not accumulated
    h_sigma: float = 15.0  # decision interval: alarm when the CUSUM exceeds h (in sigmas)
    min_sigma: float = 0.01  # floor of the learned spread, in the signal's unit
    baseline: float = math.nan  # fixed in-control mean; NaN = learn it

    def __post_init__(self) -> None:
        if self.baseline_samples < 3:
            raise ValueError(f"trend baseline needs >= 3 samples, got {self.baseline_samples}")
        if not self.k_sigma >= 0.0:
            raise ValueError(f"trend k must be >= 0 sigma, got {self.k_sigma}")
        if not self.h_sigma > 0.0:
            raise ValueError(f"trend h must be > 0 sigma, got {self.h_sigma}")
        if not self.min_sigma > 0.0:
            raise ValueError(f"trend min sigma must be > 0, got {self.min_sigma}")
        if not (math.isnan(self.baseline) or math.isfinite(self.baseline)):
            raise ValueError(f"trend baseline must be finite or NaN (learn), got {self.baseline}")


class TrendTransition(Enum):
    RAISED = "raised"
    CLEARED = "cleared"


@dataclass(frozen=True)
class TrendStatus:
    ready: bool  # the baseline is established
    mean: float  # in-control mean mu0
    sigma: float  # in-control spread
    cusum: float  # S, in sigmas
    active: bool  # alarm on
    samples: int  # values seen


class CusumTrend:
    def __init__(self, config: TrendConfig) -> None:
        self.config = config
        self._baseline_values: list[float] = []
        self._mean = math.nan
        self._sigma = math.nan
        self._cusum = 0.0
        self._active = False
        self._samples = 0

    @property
    def ready(self) -> bool:
        return math.isfinite(self._sigma)

    def update(self, value: float) -> TrendTransition | None:
        """Feed one value (one per trend interval); returns the alarm transition it caused, if any."""
        if not math.isfinite(value):
            return None
        self._samples += 1
        if not self.ready:
            self._learn(value)
            return None
        cfg = self.config
        step = (value - self._mean) / self._sigma - cfg.k_sigma
        self._cusum = min(max(0.0, self._cusum + step), 2.0 * cfg.h_sigma)
        if not self._active and self._cusum > cfg.h_sigma:
            self._active = True
            return TrendTransition.RAISED
        if self._active and self._cusum <= 0.5 * cfg.h_sigma:
            self._active = False
            return TrendTransition.CLEARED
        return None

    def _learn(self, value: float) -> None:
        self._baseline_values.append(value)
        if len(self._baseline_values) < self.config.baseline_samples:
            return
        values = self._baseline_values
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        self._mean = self.config.baseline if math.isfinite(self.config.baseline) else median
        self._sigma = max(MAD_TO_SIGMA * mad, self.config.min_sigma)
        self._baseline_values = []

    def status(self) -> TrendStatus:
        return TrendStatus(
            ready=self.ready,
            mean=self._mean,
            sigma=self._sigma,
            cusum=self._cusum,
            active=self._active,
            samples=self._samples,
        )
