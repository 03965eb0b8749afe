"""Vibration RMS over a sliding time window of 3-axis acceleration samples."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

NS_PER_S = 1_000_000_000


class VibrationWindow:
    """Keeps the samples of the last `window_s` seconds and computes the RMS acceleration magnitude.

    With `remove_dc` (the usual vibration RMS) the per-axis mean over the window is removed first, so gravity
    and a sensor's mounting offset do not count as vibration.
    """

    def __init__(self, window_s: float, min_samples: int, remove_dc: bool) -> None:
        if not window_s > 0.0:
            raise ValueError(f"vibration window must be > 0 s, got {window_s}")
        if min_samples < 2:
            raise ValueError(f"vibration RMS needs at least 2 samples per window, got {min_samples}")
        self.window_ns = int(window_s * NS_PER_S)
        self.min_samples = min_samples
        self.remove_dc = remove_dc
        self._samples: deque[tuple[int, float, float, float]] = deque()

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, t_ns: int, x: float, y: float, z: float) -> bool:
        """Add one sample; returns False for a non-finite sample (not added)."""
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
            return False
        self._samples.append((t_ns, x, y, z))
        self._prune(t_ns)
        return True

    def _prune(self, now_ns: int) -> None:
        horizon = now_ns - self.window_ns
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def rms(self) -> float:
        """RMS magnitude over the window; NaN until min_samples samples are in it."""
        if len(self._samples) < self.min_samples:
            return math.nan
        acc = np.asarray(self._samples, dtype=np.float64)[:, 1:]
        if self.remove_dc:
            acc = acc - acc.mean(axis=0)
        return float(np.sqrt(np.mean(np.sum(acc * acc, axis=1))))
