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
