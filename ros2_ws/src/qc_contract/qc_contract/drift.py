"""Drift statistics, shared by the cell, training and the fleet service: the per-part image statistics, their
fixed-bin histograms (the bins are defined here ONCE), and the population stability index (PSI).

- Per part (the cell's inference node, and training on the validation images): brightness = mean grey level,
  contrast = standard deviation of the grey levels, sharpness = log10(1 + variance of the Laplacian), all on a
  grey copy of the frame downsampled to at most STATS_SIDE pixels on its longer side (a large frame thinned to
  every k-th pixel first, so the cost does not grow with the frame: bench/bench_drift_stats.py).
- Histograms: counts per fixed bin (BINS); a value outside the range is counted in the first/last bin; NaN is
  not counted. They travel in the KPI record's optional `distributions` block (records.distributions) and in
  the model manifest's optional `drift_reference` block (model_manifest.DriftReference).
- PSI = sum over bins of (recent% - reference%) * ln(recent% / reference%), with half a count added to every bin
  of both histograms (Jeffreys smoothing: an empty bin gives a finite term). Customary reading, used as the
  fleet's thresholds: < 0.1 no shift, 0.1-0.25 a moderate shift (watch), >= 0.25 a significant shift (alert).
  PSI of two samples of the SAME distribution is not 0: it grows roughly like (occupied bins - 1) x
  (1/n_reference + 1/n_recent), hence the minimum part counts before anything is judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

STATS_SIDE = 96  # the grey copy the statistics are computed on: longer side at most this many pixels

PSI_WATCH = 0.1  # below: no meaningful shift
PSI_ALERT = 0.25  # at or above: a significant shift (raise the alert)


@dataclass(frozen=True)
class Bins:
    """Equal-width bins over [low, high); values outside are counted in the end bins."""

    low: float
    high: float
    count: int
    unit: str

    def edges(self) -> list[float]:
        return [float(v) for v in np.linspace(self.low, self.high, self.count + 1)]


# The statistic -> its bins. Changing a bin layout makes old histograms incomparable: add a new name instead.
IMAGE_STATS = ("brightness", "contrast", "sharpness")
SCORE_STAT = "defect_probability"
BINS: dict[str, Bins] = {
    "brightness": Bins(0.0, 256.0, 32, "grey level (mean, 0-255)"),
    "contrast": Bins(0.0, 128.0, 32, "grey level (standard deviation)"),
    "sharpness": Bins(0.0, 4.0, 32, "log10(1 + variance of the Laplacian)"),
    SCORE_STAT: Bins(0.0, 1.0, 20, "P(defective)"),
}
STATS = (*IMAGE_STATS, SCORE_STAT)


@dataclass(frozen=True)
class ImageStats:
    brightness: float
    contrast: float
    sharpness: float

    def as_dict(self) -> dict[str, float]:
        return {"brightness": self.brightness, "contrast": self.contrast, "sharpness": self.sharpness}


NO_STATS = ImageStats(math.nan, math.nan, math.nan)


def image_stats(image: np.ndarray, channel_order: str = "BGR") -> ImageStats:
    """Brightness, contrast and sharpness of an H x W (grey) or H x W x 3 (`channel_order` BGR or RGB) uint8 or
    float image in 0-255.

    ValueError on an empty image or another shape."""
    import cv2  # here: the fleet service uses the histograms and PSI without OpenCV

    if image.ndim not in (2, 3) or image.size == 0 or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"image_stats needs an H x W or H x W x 3 image, got shape {image.shape}")
    # A large frame is thinned first to every step-th pixel, leaving 2-3 x STATS_SIDE or more for the area reduction:
    # its cost then stops growing with the frame (5 MP: 17 -> 1.4 ms; it had cost more than the model), and the
    # statistics move by less than a quarter of a bin. An odd step keeps all the colour sites of a Bayer mosaic.
    step = max(image.shape[:2]) // (3 * STATS_SIDE)
    if step > 1:
        step |= 1
        image = np.ascontiguousarray(image[step // 2 :: step, step // 2 :: step])
    h, w = image.shape[:2]
    scale = STATS_SIDE / max(h, w)
    if scale < 1.0:  # downsample first: the colour conversion and the Laplacian then cost almost nothing
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if channel_order == "RGB" else cv2.COLOR_BGR2GRAY)
    grey = np.ascontiguousarray(image.reshape(image.shape[:2]), dtype=np.float32)
    mean, std = cv2.meanStdDev(grey)
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=1)
    _, lap_std = cv2.meanStdDev(lap)
    return ImageStats(
        brightness=float(mean[0, 0]),
        contrast=float(std[0, 0]),
        sharpness=float(math.log10(1.0 + float(lap_std[0, 0]) ** 2)),
    )


def bin_index(stat: str, value: float) -> int | None:
    """The bin of `value` in statistic `stat` (clamped to the end bins); None for NaN/inf."""
    if not math.isfinite(value):
        return None
    b = BINS[stat]
    i = int((value - b.low) / (b.high - b.low) * b.count)
    return min(max(i, 0), b.count - 1)


class Histograms:
    """Counts per bin of every statistic (STATS), added part by part; `parts` counts the parts added."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {s: [0] * BINS[s].count for s in STATS}
        self.parts = 0

    def add(self, stats: ImageStats | None, defect_probability: float) -> None:
        values = {} if stats is None else stats.as_dict()
        values[SCORE_STAT] = defect_probability
        for stat, value in values.items():
            i = bin_index(stat, value)
            if i is not None:
                self.counts[stat][i] += 1
        self.parts += 1

    def merge(self, counts: Mapping[str, Sequence[int]], parts: int) -> None:
        """Add histograms of the same layout (e.g. a KPI record's); ValueError on another layout."""
        check_layout(counts)
        for stat, values in counts.items():
            mine = self.counts[stat]
            for i, v in enumerate(values):
                mine[i] += int(v)
        self.parts += int(parts)

    def take(self) -> tuple[dict[str, list[int]], int]:
        """The counts so far and the part count, and start again from zero."""
        counts, parts = self.counts, self.parts
        self.__init__()
        return counts, parts


def check_layout(counts: Mapping[str, Sequence[int]]) -> None:
    """ValueError unless every statistic is known and has its number of bins with counts >= 0."""
    for stat, values in counts.items():
        if stat not in BINS:
            raise ValueError(f"unknown drift statistic {stat!r}; known: {list(BINS)}")
        if len(values) != BINS[stat].count:
            raise ValueError(f"{stat}: {len(values)} bins, the layout has {BINS[stat].count}")
        if any(int(v) < 0 for v in values):
            raise ValueError(f"{stat}: negative bin count")


def psi(reference: Sequence[int], recent: Sequence[int], smoothing: float = 0.5) -> float:
    """Population stability index of `recent` against `reference` (counts over the same bins); NaN when either is
    empty. ValueError when the bin counts differ."""
    if len(reference) != len(recent):
        raise ValueError(f"PSI over different bins: {len(reference)} vs {len(recent)}")
    ref = np.asarray(reference, dtype=np.float64)
    new = np.asarray(recent, dtype=np.float64)
    if ref.sum() <= 0 or new.sum() <= 0:
        return math.nan
    p = (ref + smoothing) / (ref.sum() + smoothing * ref.size)
    q = (new + smoothing) / (new.sum() + smoothing * new.size)
    return float(np.sum((q - p) * np.log(q / p)))


def level(value: float) -> str:
    """'alert' (>= PSI_ALERT), 'watch' (>= PSI_WATCH), 'stable', or 'unknown' for NaN."""
    if not math.isfinite(value):
        return "unknown"
    return "alert" if value >= PSI_ALERT else "watch" if value >= PSI_WATCH else "stable"
