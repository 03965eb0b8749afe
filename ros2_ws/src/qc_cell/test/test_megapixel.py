"""The cell at megapixel sizes, without ROS: the synthetic source cycles pre-rendered parts above 2 MP, and the
overlay is drawn on the image scaled down (heatmap in the same place as on the full-size image)."""

from __future__ import annotations

import time

import numpy as np

from qc_cell.camera.sources import generated
from qc_cell.camera.sources.generated import SyntheticSource
from qc_cell.inference.overlay import OverlayStyle, render
from qc_contract.model_manifest import Preprocessing
from qc_contract.synthetic import SyntheticPartGenerator


def test_the_synthetic_source_cycles_rendered_parts_above_the_size_limit(monkeypatch):
    monkeypatch.setattr(generated, "CACHE_ABOVE_PIXELS", 96 * 64 - 1)
    monkeypatch.setattr(generated, "CACHED_PARTS", 3)
    source = SyntheticSource(seed=4, width=96, height=64)
    source.open()
    frames = [source.read() for _ in range(7)]
    assert [f.origin for f in frames] == [f"synthetic:4:{i % 3}" for i in range(7)]
    assert frames[3].image is frames[0].image and not frames[0].image.flags.writeable  # rendered once
    generator = SyntheticPartGenerator(seed=4, width=96, height=64)
    for frame in frames[:3]:  # the origin re-renders exactly the part shown, ground truth included
        part = generator.part(int(frame.origin.rsplit(":", 1)[1]))
        np.testing.assert_array_equal(frame.image, part.image)
        assert (frame.label, frame.defect_type) == (part.label, part.defect_type)
    assert source.stats()["cycled_parts"] == "3/3 rendered"
    small = SyntheticSource(seed=4, width=96, height=64 - 1)  # below the limit: every part rendered anew
    small.open()
    assert [small.read().origin for _ in range(4)] == [f"synthetic:4:{i}" for i in range(4)]


def test_a_12_mp_overlay_is_drawn_scaled_down_with_the_heatmap_in_place():
    spec = Preprocessing(input_height=32, input_width=32, roi=(1000, 500, 2000, 2000))
    cam = np.zeros((8, 8), np.float32)
    cam[:, 4:] = 1.0  # the right half of the ROI
    image = np.full((3000, 4096), 128, np.uint8)  # 12 MP mono8, as it is in the frame pool (read-only view)
    image.flags.writeable = False
    start = time.perf_counter()
    picture = render(image, "BGR", True, 0.9, "v1", spec, cam, OverlayStyle(max_side=640))
    elapsed = time.perf_counter() - start
    assert picture.shape == (469, 640, 3)
    changed = np.abs(picture.astype(int) - 128).sum(axis=2) > 30
    scale = 640 / 4096
    y0, y1 = round(500 * scale) + 4, round(2500 * scale) - 4
    left, mid, right = round(1000 * scale) + 4, round(2000 * scale), round(3000 * scale) - 4
    assert changed[y0:y1, mid + 4 : right].mean() > 0.9  # right half of the ROI coloured
    assert not changed[y0:y1, left : (left + mid) // 2].any()  # left quarter not (bilinear edge in between)
    assert not changed[y1 + 10 : 460, 20:620].any()  # nothing below the ROI
    assert elapsed < 5.0, f"{elapsed:.2f} s for one overlay"  # generous: only catches a full-size blend (loaded CI)


def test_the_synthetic_source_renders_into_the_buffer_the_driver_gives():
    source = SyntheticSource(seed=2, width=96, height=64)
    given: list[np.ndarray] = []
    source.frame_allocator = lambda shape, dtype: given.append(np.zeros(shape, dtype)) or given[-1]
    source.open()
    frame = source.read()
    assert len(given) == 1 and frame.image is given[0]  # captured into the slot: nothing copies it afterwards
    np.testing.assert_array_equal(frame.image, SyntheticPartGenerator(seed=2, width=96, height=64).part(0).image)
    source.frame_allocator = lambda shape, dtype: None  # the pool is full: a fresh array
    assert source.read().image.shape == (64, 96, 3)


def test_a_bayer_overlay_is_demosaiced_small_never_at_full_size():
    mosaic = np.zeros((3000, 4096), np.uint8)
    mosaic[0::2, 0::2] = 200  # rggb: red sites only -> a red picture
    picture = render(mosaic, "bayer_rggb", True, 0.1, "1.0.0", style=OverlayStyle(max_side=640))
    assert max(picture.shape[:2]) <= 640 and picture.shape[2] == 3
    centre = picture[picture.shape[0] // 2, picture.shape[1] // 2]
    assert centre[2] > 150 and centre[0] < 50 and centre[1] < 50, centre
