"""Rolling median / MAD over the last N samples: a baseline that single spikes cannot drag along."""

from __future__ import annotations

import bisect
import math
from collections import deque

# MAD * 1.4826 estimates the standard deviation of Gaussian data.
MAD_TO_SIGMA = 1.4826


class RollingMedianMad:
    """Median and MAD of the last `window` samples; robust z-score of a new sample against them.

    `min_scale` is the noise floor of the sensor (same unit as the samples): a perfectly constant signal
    has MAD 0, and without a floor the smallest quantisation step would look like an infinite deviation.
    """

    def __init__(self, window: int, min_samples: int, min_scale: float) -> None:
        if window < 3:
            raise ValueError(f"window must be >= 3 samples, got {window}")
        if not 1 <= min_samples <= window:
            raise ValueError(f"min_samples must be in [1, window={window}], got {min_samples}")
        if not (min_scale > 0.0 and math.isfinite(min_scale)):
            raise ValueError(f"min_scale must be a positive number, got {min_scale}")
        self.window = window
        self.min_samples = min_samples
        self.min_scale = min_scale
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._fifo)

    @property
    def ready(self) -> bool:
        return len(self._fifo) >= self.min_samples

    def add(self, value: float) -> None:
        self._fifo.append(value)
        bisect.insort(self._sorted, value)
        if len(self._fifo) > self.window:
            oldest = self._fifo.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]

    def median(self) -> float:
        values = self._sorted
        if not values:
            return math.nan
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])

    def scale(self) -> float:
        """Robust standard deviation: 1.4826 * MAD, never below min_scale."""
        if not self._sorted:
            return math.nan
        med = self.median()
        deviations = sorted(abs(v - med) for v in self._sorted)
        mid = len(deviations) // 2
        mad = deviations[mid] if len(deviations) % 2 else 0.5 * (deviations[mid - 1] + deviations[mid])
        return max(MAD_TO_SIGMA * mad, self.min_scale)

    def zscore(self, value: float) -> float:
        """Robust z of `value` against the current window; 0.0 until min_samples samples are in."""
        if not self.ready:
            return 0.0
        return (value - self.median()) / self.scale()
