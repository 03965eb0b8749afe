"""The overlay picture: verdict colour by score, NOT_INSPECTED in grey, the heatmap mapped back through ROI
and letterbox onto the right part of the image, large frames scaled down, the caller's frame untouched."""

from __future__ import annotations

import numpy as np
import pytest

from qc_cell.inference.overlay import AMBER, GREEN, GREY, RED, OverlayStyle, render
from qc_contract.model_manifest import Preprocessing


def border_colour(picture: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in picture[picture.shape[0] // 2, 0])


@pytest.mark.parametrize(
    ("ok", "p", "colour"), [(True, 0.1, GREEN), (True, 0.6, AMBER), (True, 0.95, RED), (False, float("nan"), GREY)]
)
def test_border_shows_the_verdict_colour(ok, p, colour):
    image = np.full((120, 160, 3), 30, np.uint8)
    before = image.copy()
    picture = render(image, "BGR", ok, p, "v1")
    assert border_colour(picture) == colour
    np.testing.assert_array_equal(image, before)  # drawn on a copy


def test_thresholds_follow_the_style():
    image = np.zeros((60, 80, 3), np.uint8)
    style = OverlayStyle(reinspect_threshold=0.2, defective_threshold=0.3)
    assert border_colour(render(image, "BGR", True, 0.25, "v1", style=style)) == AMBER


def test_grey_rgb_and_16_bit_inputs_become_bgr8():
    for image, order in (
        (np.full((40, 40), 100, np.uint8), "BGR"),
        (np.full((40, 40, 3), (10, 20, 200), np.uint8), "RGB"),
        (np.full((40, 40, 4), 100, np.uint8), "BGR"),
        (np.full((40, 40), 40000, np.uint16), "BGR"),
    ):
        picture = render(image, order, True, 0.1, "v1")
        assert picture.dtype == np.uint8 and picture.shape == (40, 40, 3)
    rgb = render(np.full((40, 40, 3), (10, 20, 200), np.uint8), "RGB", True, 0.1, "v1")
    assert tuple(rgb[20, 20]) == (200, 20, 10)  # red stays red


def test_large_frames_are_scaled_down():
    picture = render(np.zeros((1200, 1600, 3), np.uint8), "BGR", True, 0.1, "v1", style=OverlayStyle(max_side=400))
    assert picture.shape == (300, 400, 3)


def test_heatmap_lands_where_the_model_looked_through_roi_and_letterbox():
    spec = Preprocessing(input_height=32, input_width=32, letterbox=True, roi=(100, 50, 200, 100))
    cam = np.zeros((8, 8), np.float32)
    cam[2:6, 6:8] = 1.0  # hot at the right edge of the model input (inside the letterboxed content)
    image = np.full((300, 400, 3), 128, np.uint8)
    picture = render(image, "BGR", True, 0.9, "v1", spec, cam).astype(int)
    changed = np.abs(picture - 128).sum(axis=2) > 30
    inside_roi = changed[60:140, 110:290]
    assert inside_roi[:, 120:].mean() > 0.3  # right part of the ROI coloured
    assert inside_roi[:, :40].mean() < 0.05  # left part not
    assert not changed[170:280, 20:380].any()  # nothing outside the ROI (below it)


def test_the_heatmap_sent_with_samples_is_greyscale_on_the_image_through_roi_and_letterbox():
    from qc_cell.inference.overlay import heatmap_image

    spec = Preprocessing(input_height=32, input_width=32, letterbox=True, roi=(100, 50, 200, 100))
    cam = np.zeros((8, 8), np.float32)
    cam[2:6, 6:8] = 1.0
    heat = heatmap_image(cam, (600, 800), spec, max_side=400)  # scaled to 300 x 400: the ROI halves too
    assert heat.dtype == np.uint8 and heat.shape == (300, 400)
    roi = heat[25:75, 50:150]
    assert roi[:, 60:].mean() > 60 and roi[:, :20].max() == 0 and heat[100:, :].max() == 0
