"""Preprocessing (shared by the inference node and the cloud training/export tools): exact against a plain
reference implementation of the manifest's recipe, and the same tensor through the node's message path as
through the tool's file path."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from qc_contract.model_manifest import IMAGENET, TFLITE, Manifest, Normalization, Preprocessing
from qc_contract.preprocess import PreprocessError, preprocess, preprocess_batch, preprocess_into


def reference(image: np.ndarray, spec: Preprocessing, channel_order: str) -> np.ndarray:
    """The recipe written out step by step at full resolution, as a training script would."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if spec.roi is not None:
        x, y, w, h = spec.roi
        image = image[y : y + h, x : x + w]
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    else:
        image = image[:, :, :3]
        if channel_order != spec.color_order:
            image = image[:, :, ::-1]
    image = np.ascontiguousarray(image)
    if spec.letterbox:
        scale = min(spec.input_width / image.shape[1], spec.input_height / image.shape[0])
        nw, nh = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
        canvas = np.full((spec.input_height, spec.input_width, 3), spec.pad_value, dtype=np.uint8)
        top, left = (spec.input_height - nh) // 2, (spec.input_width - nw) // 2
        canvas[top : top + nh, left : left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        image = canvas
    else:
        image = cv2.resize(image, (spec.input_width, spec.input_height), interpolation=cv2.INTER_LINEAR)
    norm = spec.normalization
    mean = np.asarray(norm.mean, dtype=np.float32)
    inv_std = np.float32(1.0) / np.asarray(norm.std, dtype=np.float32)
    tensor = (image.astype(np.float32) * np.float32(1.0 / norm.scale) - mean) * inv_std
    return np.ascontiguousarray(tensor.transpose(2, 0, 1))[np.newaxis]


RNG = np.random.default_rng(7)
IMAGES = {
    "bgr8": RNG.integers(0, 256, (97, 131, 3), dtype=np.uint8),
    "mono8": RNG.integers(0, 256, (97, 131), dtype=np.uint8),
    "mono8_hw1": RNG.integers(0, 256, (97, 131, 1), dtype=np.uint8),
    "bgra8": RNG.integers(0, 256, (97, 131, 4), dtype=np.uint8),
    "bgr16": RNG.integers(0, 65536, (97, 131, 3), dtype=np.uint16),
}
SPECS = {
    "imagenet_rgb": Preprocessing(),
    "bgr_model": Preprocessing(color_order="BGR", input_height=40, input_width=56),
    "letterbox": Preprocessing(letterbox=True, pad_value=114, input_height=64, input_width=48),
    "roi_tflite": Preprocessing(roi=(10, 5, 60, 70), normalization=TFLITE, input_height=32, input_width=32),
}


@pytest.mark.parametrize(("image_name", "spec_name", "order"), list(itertools.product(IMAGES, SPECS, ("BGR", "RGB"))))
def test_matches_the_reference_recipe_exactly(image_name, spec_name, order):
    image, spec = IMAGES[image_name], SPECS[spec_name]
    got = preprocess(image, spec, order)
    expected = reference(image, spec, order)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got.shape == (1, 3, spec.input_height, spec.input_width)
    np.testing.assert_array_equal(got, expected)


def test_imagenet_normalisation_values():
    # A flat mid-grey image: each channel is (128/255 - mean) / std of ImageNet, in RGB order.
    tensor = preprocess(np.full((10, 10, 3), 128, np.uint8), Preprocessing(input_height=8, input_width=8))
    expected = (128 / 255 - np.array(IMAGENET.mean)) / np.array(IMAGENET.std)
    np.testing.assert_allclose(tensor[0, :, 0, 0], expected, rtol=1e-6)


def test_colour_order_is_swapped_for_the_model():
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[:, :, 2] = 255  # pure red in BGR
    spec = Preprocessing(input_height=8, input_width=8, normalization=Normalization(1.0, (0, 0, 0), (1, 1, 1)))
    rgb_model = preprocess(bgr, spec, "BGR")
    assert rgb_model[0, 0].max() == 255 and rgb_model[0, 2].max() == 0  # red lands in the model's channel 0
    bgr_model = preprocess(bgr, Preprocessing(**{**vars(spec), "color_order": "BGR"}), "BGR")
    assert bgr_model[0, 2].max() == 255 and bgr_model[0, 0].max() == 0


def test_batch_path_equals_single_images_and_mixed_orders():
    spec = SPECS["letterbox"]
    images = [IMAGES["bgr8"], IMAGES["mono8"], IMAGES["bgra8"]]
    batch = preprocess_batch(images, spec, ["BGR", "BGR", "RGB"])
    for i, (image, order) in enumerate(zip(images, ["BGR", "BGR", "RGB"], strict=True)):
        np.testing.assert_array_equal(batch[i : i + 1], preprocess(image, spec, order))
    buffer = np.full((2, 3, spec.input_height, spec.input_width), np.nan, np.float32)
    preprocess_into(IMAGES["bgr8"], spec, "BGR", buffer[1])
    np.testing.assert_array_equal(buffer[1:], preprocess(IMAGES["bgr8"], spec, "BGR"))
    assert np.isnan(buffer[0]).all(), "preprocess_into wrote outside its slot"


@pytest.mark.parametrize(
    ("image", "spec", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), Preprocessing(), "empty image"),
        (np.zeros((10, 10, 3), np.float32), Preprocessing(), "unsupported image dtype"),
        (np.zeros((10, 10, 2), np.uint8), Preprocessing(), "unsupported image shape"),
        (np.zeros((10, 10, 3, 1), np.uint8), Preprocessing(), "unsupported image shape"),
        (np.zeros((50, 50, 3), np.uint8), Preprocessing(roi=(40, 40, 20, 20)), "outside image"),
        ("not an image", Preprocessing(), "empty image"),
    ],
)
def test_bad_images_raise_a_clear_error(image, spec, message):
    with pytest.raises(PreprocessError, match=message):
        preprocess(image, spec)


def test_unknown_channel_order_is_refused():
    with pytest.raises(PreprocessError, match="channel_order"):
        preprocess(IMAGES["bgr8"], Preprocessing(), "YUV")


def test_manifest_round_trip_keeps_the_preprocessing(tmp_path):
    spec = Preprocessing(
        input_height=48,
        input_width=64,
        color_order="BGR",
        letterbox=True,
        pad_value=3,
        roi=(1, 2, 30, 40),
        normalization=TFLITE,
    )
    Manifest(version="1", sha256="0" * 64, preprocessing=spec).write(tmp_path)
    loaded = Manifest.load(tmp_path).preprocessing
    assert loaded == spec
    np.testing.assert_array_equal(preprocess(IMAGES["bgr8"], loaded), preprocess(IMAGES["bgr8"], spec))


# ------------------------------------------------------------------------------- whole-frame bayer demosaicing

BAYER_LAYOUTS = ("bayer_rggb", "bayer_bggr", "bayer_gbrg", "bayer_grbg")


@pytest.mark.parametrize("layout", BAYER_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_whole_bayer_frame_without_roi_gives_the_model_input_of_the_reference_demosaic(layout, dtype):
    """No ROI: the raw mosaic is demosaiced once (into the thread's reused buffer) and gives exactly the input the
    training side computes from the frame demosaiced by the reference (to_bgr8, what a data set keeps)."""
    from qc_cell.ros.images import to_bgr8

    rng = np.random.default_rng(5)
    high = 256 if dtype is np.uint8 else 65536
    for height, width in ((48, 64), (50, 70), (480, 640), (36, 36)):
        mosaic = rng.integers(0, high, (height, width), dtype=dtype)
        encoding = f"{layout}{8 if dtype is np.uint8 else 16}"
        saved = to_bgr8(mosaic, encoding)
        for spec in (Preprocessing(input_width=32, input_height=24), Preprocessing(input_width=40, input_height=40,
                                                                                  letterbox=True)):  # fmt: skip
            np.testing.assert_array_equal(preprocess(mosaic, spec, layout), preprocess(saved, spec, "BGR"))
            np.testing.assert_array_equal(preprocess(mosaic, spec, layout), reference(saved, spec, "BGR"))


@pytest.mark.parametrize(
    ("height", "width", "spec"),
    [
        (3000, 4096, Preprocessing(input_width=224, input_height=224)),  # 12 MP: sampled cells only
        (3000, 4096, Preprocessing(input_width=224, input_height=160, letterbox=True)),  # 12 MP, letterboxed
        (2048, 2448, Preprocessing(input_width=320, input_height=256, letterbox=True)),  # 5 MP: whole frame
        (720, 1280, Preprocessing(input_width=299, input_height=299)),
        (1000, 30, Preprocessing(input_width=7, input_height=5)),  # narrow: columns all read, rows sampled
        (48, 64, Preprocessing(input_width=640, input_height=640)),  # upscaled: the whole frame demosaiced
    ],
)
def test_a_whole_frame_with_stale_pixels_in_the_buffer_still_gives_the_reference_input(height, width, spec):
    """Only the pixels the resize reads are demosaiced into the thread's buffer: whatever the rest of it holds
    (filled with noise here), the model input is the reference one, for every pattern."""
    from qc_contract import preprocess as module
    from qc_contract.preprocess import BAYER_CODES

    rng = np.random.default_rng(8)
    mosaic = rng.integers(0, 256, (height, width), dtype=np.uint8)
    for layout, code in BAYER_CODES.items():
        module._frame_buffer(height, width)[:] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = preprocess(cv2.cvtColor(mosaic, code), spec, "BGR")
        np.testing.assert_array_equal(preprocess(mosaic, spec, layout), expected)


def test_the_reused_demosaic_buffer_holds_nothing_of_the_previous_frame():
    """Frame after frame of the same size (the buffer is reused), then another size: each input is its own frame's."""
    from qc_cell.ros.images import to_bgr8

    rng = np.random.default_rng(6)
    spec = Preprocessing(input_width=16, input_height=12)
    for shape in ((40, 60), (40, 60), (40, 60), (20, 30), (40, 60)):
        mosaic = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = preprocess(to_bgr8(mosaic, "bayer_rggb8"), spec, "BGR")
        np.testing.assert_array_equal(preprocess(mosaic, spec, "bayer_rggb"), expected)


def test_demosaic_of_a_whole_frame_equals_opencv_and_writes_into_the_given_buffer():
    from qc_contract.preprocess import BAYER_CODES, demosaic

    rng = np.random.default_rng(7)
    mosaic = rng.integers(0, 4096, (30, 44), dtype=np.uint16) << 4  # a 12-bit sensor, at the top of 16 bits
    out = np.empty((30, 44, 3), np.uint8)
    for layout, code in BAYER_CODES.items():
        assert demosaic(mosaic, layout, out=out) is out
        np.testing.assert_array_equal(out, cv2.cvtColor((mosaic >> 8).astype(np.uint8), code))
    with pytest.raises(PreprocessError, match="contiguous 30x44x3 uint8"):
        demosaic(mosaic, "bayer_rggb", out=np.empty((30, 44), np.uint8))


@pytest.mark.parametrize("shape", [(49, 64), (48, 65), (1, 64), (47, 63)])
def test_a_bayer_mosaic_with_an_odd_side_is_refused_clearly(shape):
    from qc_cell.ros.images import ImageConversionError, to_bgr8
    from qc_contract.preprocess import demosaic

    mosaic = np.zeros(shape, np.uint8)
    message = f"whole 2x2 cells: {shape[1]}x{shape[0]} has an odd side"
    with pytest.raises(PreprocessError, match=message):
        demosaic(mosaic, "bayer_rggb")
    with pytest.raises(PreprocessError, match=message):  # with a ROI too
        demosaic(mosaic, "bayer_rggb", (0, 0, 1, 1))
    with pytest.raises(PreprocessError, match=message):
        preprocess(mosaic, Preprocessing(input_width=8, input_height=8), "bayer_gbrg")
    with pytest.raises(ImageConversionError, match=message):
        to_bgr8(mosaic, "bayer_rggb8")
