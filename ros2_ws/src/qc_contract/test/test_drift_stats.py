"""Drift statistics (qc_contract.drift): the per-part image statistics, the fixed-bin histograms, the population
stability index, and the KPI record's optional `distributions` block (older KPI records still validate)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qc_contract import drift, records, schemas
from qc_contract.synthetic import SyntheticPartGenerator


def test_statistics_of_known_images():
    flat = np.full((200, 300), 120, np.uint8)
    s = drift.image_stats(flat)
    assert s.brightness == pytest.approx(120.0) and s.contrast == pytest.approx(0.0) and s.sharpness == 0.0
    checker = (np.indices((192, 192)) // 32).sum(axis=0) % 2 * 200  # 0 / 200 squares, halved exactly
    checker = checker.astype(np.uint8)
    c = drift.image_stats(np.dstack([checker] * 3))  # BGR gives the same grey
    assert c.brightness == pytest.approx(100.0, abs=1.0) and c.contrast == pytest.approx(100.0, abs=2.0)
    assert c.sharpness > 2.0
    blurred = drift.image_stats(np.asarray(__import__("cv2").GaussianBlur(checker, (0, 0), 6)))
    assert blurred.sharpness < c.sharpness - 1.0, "blur lowers the sharpness"


def _area_reduced_stats(image: np.ndarray) -> drift.ImageStats:
    """The statistics on the whole frame area-reduced to STATS_SIDE (what image_stats thins first)."""
    import cv2

    h, w = image.shape[:2]
    scale = drift.STATS_SIDE / max(h, w)
    return drift.image_stats(cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("size", [(1280, 720), (2448, 2048), (4096, 3000)])
def test_a_large_frame_thinned_first_gives_the_statistics_of_the_whole_frame_within_a_fraction_of_a_bin(size):
    g = SyntheticPartGenerator(seed=5, width=size[0], height=size[1])
    for i in range(3):
        image = g.part(i).image
        fast, whole = drift.image_stats(image), _area_reduced_stats(image)
        for stat in drift.IMAGE_STATS:
            bins = drift.BINS[stat]
            width = (bins.high - bins.low) / bins.count
            assert abs(getattr(fast, stat) - getattr(whole, stat)) < 0.25 * width, (stat, fast, whole)
    # A Bayer mosaic (R 200, G 100, B 40 sites) thinned keeps every colour site: not one channel's level.
    mosaic = np.full((size[1], size[0]), 100, np.uint8)
    mosaic[0::2, 0::2], mosaic[1::2, 1::2] = 200, 40
    assert drift.image_stats(mosaic).brightness == pytest.approx(110.0, abs=2.0)


def test_statistics_refuse_what_is_not_an_image():
    for bad in (np.zeros((0, 5), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros(7, np.uint8)):
        with pytest.raises(ValueError, match="image_stats"):
            drift.image_stats(bad)


def test_a_dimmer_light_lowers_brightness_and_contrast():
    g = SyntheticPartGenerator(seed=3, width=128, height=128)
    nominal = drift.image_stats(g.part(0).image)
    g.lighting = 0.6
    dim = drift.image_stats(g.part(0).image)
    assert dim.brightness < 0.7 * nominal.brightness and dim.contrast < 0.7 * nominal.contrast
    with pytest.raises(ValueError, match="lighting"):
        SyntheticPartGenerator(lighting=0.0)


def test_bins_clamp_out_of_range_values_and_skip_nan():
    assert drift.bin_index("brightness", -5.0) == 0 and drift.bin_index("brightness", 999.0) == 31
    assert drift.bin_index("defect_probability", 1.0) == 19 and drift.bin_index("defect_probability", 0.0) == 0
    assert drift.bin_index("contrast", math.nan) is None
    h = drift.Histograms()
    h.add(drift.ImageStats(10.0, 5.0, 1.0), 0.5)
    h.add(drift.NO_STATS, math.nan)  # a part that was not inspected: counted as a part, in no bin
    assert h.parts == 2 and sum(h.counts["brightness"]) == 1 and h.counts["defect_probability"][10] == 1
    counts, parts = h.take()
    assert parts == 2 and h.parts == 0 and sum(h.counts["brightness"]) == 0
    h.merge(counts, parts)
    assert h.counts == counts
    with pytest.raises(ValueError, match="bins"):
        h.merge({"brightness": [1, 2]}, 3)
    with pytest.raises(ValueError, match="unknown drift statistic"):
        h.merge({"hue": [0] * 32}, 1)


def test_psi_values():
    assert drift.psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    assert drift.psi([100, 100], [100, 100]) == 0.0
    # Textbook value without empty bins (smoothing off): sum (q - p) ln(q / p).
    p, q = np.array([0.5, 0.5]), np.array([0.8, 0.2])
    assert drift.psi([50, 50], [80, 20], smoothing=0.0) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert math.isfinite(drift.psi([100, 0], [0, 100])), "an empty bin gives a finite PSI"
    assert drift.psi([100, 0], [0, 100]) > drift.PSI_ALERT
    assert math.isnan(drift.psi([0, 0], [1, 2]))
    with pytest.raises(ValueError, match="different bins"):
        drift.psi([1, 2], [1, 2, 3])
    assert [drift.level(v) for v in (0.05, 0.1, 0.25, math.nan)] == ["stable", "watch", "alert", "unknown"]


def _kpi(**extra) -> dict:
    body = records.kpi(
        stamp_ns=1_700_000_000_000_000_000,
        window_s=60.0,
        parts=3,
        counts={"NORMAL": 3},
        yield_ratio=1.0,
        throughput_pps=0.05,
        latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0},
        reasons={},
        total_parts=3,
        **extra,
    )
    return records.envelope("s/l/c", "0123abcd", "kpi", 1, body)


def test_kpi_record_carries_the_histograms_and_older_records_still_validate():
    validator = schemas.validator("kpi")
    validator.validate(_kpi())  # written before the block existed
    h = drift.Histograms()
    for v in (50.0, 60.0, 70.0):
        h.add(drift.ImageStats(v, 20.0, 2.0), 0.1)
    counts, parts = h.take()
    record = _kpi(distributions=records.drift_distributions(model_version="m-2", parts=parts, counts=counts))
    validator.validate(record)
    assert record["distributions"]["histograms"]["brightness"][6:9] == [1, 1, 1]
    bad = _kpi(distributions={"model_version": "m", "parts": 1, "histograms": {"brightness": [1, 2]}})
    assert not schemas.validator("kpi").is_valid(bad), "a histogram of another bin layout is refused"
    with pytest.raises(ValueError, match="bins"):
        records.drift_distributions(model_version="m", parts=1, counts={"brightness": [1]})


def test_manifest_drift_reference_is_optional_and_checked():
    from qc_contract.model_manifest import SCHEMA_VERSION, Manifest, ManifestError

    base = {"schema_version": SCHEMA_VERSION, "version": "1.0.0", "sha256": "a" * 64}
    assert Manifest.from_dict(base).drift_reference is None
    assert Manifest.from_dict({**base, "schema_version": 3}).drift_reference is None  # older manifests load
    h = drift.Histograms()
    h.add(drift.ImageStats(60.0, 40.0, 2.0), 0.2)
    counts, parts = h.take()
    m = Manifest.from_dict({**base, "drift_reference": {"parts": parts, "histograms": counts}})
    assert m.drift_reference.parts == 1 and Manifest.from_dict(m.to_dict()) == m
    with pytest.raises(ManifestError, match="cannot carry drift_reference"):
        Manifest.from_dict({**base, "schema_version": 3, "drift_reference": {"parts": 1, "histograms": counts}})
    with pytest.raises(ManifestError, match="drift_reference"):
        Manifest.from_dict({**base, "drift_reference": {"parts": 1, "histograms": {"brightness": [1]}}})
