"""No train/serve skew: the tensor the inference node builds from a camera frame message equals, bit for bit,
the tensor the training/export tool builds from the same image file (both call preprocess(); the tool reads
files with OpenCV, the node gets sensor_msgs/Image in whatever encoding the camera sends)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from qc_cell.ros.images import array_to_image, decode_for_model
from qc_contract.model_manifest import TFLITE, Preprocessing
from qc_contract.preprocess import preprocess

SPECS = {
    "effnet_b0": Preprocessing(),
    "roi_letterbox_bgr": Preprocessing(
        input_height=96, input_width=128, color_order="BGR", letterbox=True, pad_value=0, roi=(20, 10, 200, 150)
    ),
    "tflite": Preprocessing(input_height=64, input_width=64, normalization=TFLITE),
}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:240, 0:320]
    image = np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=2).astype(np.uint8)
    image = cv2.add(image, rng.integers(0, 40, image.shape, dtype=np.uint8))
    path = tmp_path_factory.mktemp("part") / "part_0001.png"
    assert cv2.imwrite(str(path), image)
    return path


def tool_tensor(path, spec: Preprocessing) -> np.ndarray:
    """What qc_cloud's exporter does for a golden/evaluation image."""
    return preprocess(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), spec, "BGR")


def node_tensor(msg, spec: Preprocessing) -> np.ndarray:
    """What the inference node does with PartFrame.image."""
    array, order = decode_for_model(msg)
    return preprocess(array, spec, order)


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("encoding", ["bgr8", "rgb8", "bgra8", "rgba8"])
def test_node_tensor_equals_tool_tensor(image_file, spec_name, encoding):
    spec = SPECS[spec_name]
    bgr = cv2.imread(str(image_file), cv2.IMREAD_UNCHANGED)
    camera_pixels = {
        "bgr8": bgr,
        "rgb8": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
        "bgra8": cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA),
        "rgba8": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA),
    }[encoding]
    msg = array_to_image(camera_pixels, encoding)
    np.testing.assert_array_equal(node_tensor(msg, spec), tool_tensor(image_file, spec))


@pytest.mark.parametrize("spec_name", list(SPECS))
def test_grey_camera_equals_grey_file(tmp_path, image_file, spec_name):
    grey = cv2.cvtColor(cv2.imread(str(image_file)), cv2.COLOR_BGR2GRAY)
    path = tmp_path / "grey.png"
    cv2.imwrite(str(path), grey)
    msg = array_to_image(grey, "mono8")
    np.testing.assert_array_equal(node_tensor(msg, SPECS[spec_name]), tool_tensor(path, SPECS[spec_name]))
