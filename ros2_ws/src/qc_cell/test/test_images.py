"""sensor_msgs/Image <-> numpy: round trips for every supported encoding, row padding via step, byte order,
zero-copy decode, and clear errors on bad input."""

from __future__ import annotations

import array

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from qc_cell.ros import images
from qc_cell.ros.images import (
    ImageConversionError,
    array_to_image,
    decode_bgr8,
    decode_for_model,
    image_to_array,
    to_bgr8,
)

RNG = np.random.default_rng(0)

CASES = [
    ("bgr8", np.uint8, (48, 64, 3)),
    ("rgb8", np.uint8, (48, 64, 3)),
    ("mono8", np.uint8, (48, 64)),
    ("mono16", np.uint16, (48, 64)),
    ("bayer_rggb8", np.uint8, (48, 64)),
    ("bayer_gbrg16", np.uint16, (48, 64)),
    ("8UC1", np.uint8, (5, 7)),
    ("8UC3", np.uint8, (5, 7, 3)),
    ("16UC1", np.uint16, (5, 7)),
    ("32FC1", np.float32, (5, 7)),
]


def _random(dtype, shape) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize(("encoding", "dtype", "shape"), CASES)
def test_round_trip(encoding, dtype, shape):
    pixels = _random(dtype, shape)
    msg = array_to_image(pixels, encoding, Header(frame_id="cam"))
    assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (shape[0], shape[1], encoding, "cam")
    assert msg.step == pixels[0].nbytes and len(msg.data) == pixels.nbytes
    back = image_to_array(msg)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, pixels)


def test_round_trip_through_serialization():
    """What a subscriber in another process gets: the bytes survive CDR serialization unchanged."""
    from rclpy.serialization import deserialize_message, serialize_message

    pixels = _random(np.uint8, (30, 40, 3))
    received = deserialize_message(serialize_message(array_to_image(pixels, "bgr8")), Image)
    np.testing.assert_array_equal(image_to_array(received), pixels)


@pytest.mark.parametrize(("encoding", "dtype", "shape"), CASES)
def test_encode_does_not_copy_a_contiguous_array(encoding, dtype, shape):
    """The message references the pixels (read-only); on the wire it is the same message as one whose data is an
    array('B') filled through the generated setter."""
    from rclpy.serialization import deserialize_message, serialize_message

    pixels = _random(dtype, shape)
    msg = array_to_image(pixels, encoding)
    assert np.shares_memory(np.frombuffer(msg.data, np.uint8), pixels) and msg.data.readonly
    with pytest.raises(TypeError):
        msg.data[0] = 1
    reference = Image(height=msg.height, width=msg.width, encoding=encoding, step=msg.step)
    reference.data = array.array("B", pixels.tobytes())
    assert deserialize_message(serialize_message(msg), Image) == reference  # (CDR padding bytes are not zeroed)


def _padded_message(pixels: np.ndarray, encoding: str, pad: int, big_endian: bool = False) -> Image:
    """A message whose rows carry `pad` junk bytes, as some cameras/drivers produce."""
    h = pixels.shape[0]
    raw = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<")).reshape(h, -1).view(np.uint8)
    rows = np.concatenate([raw, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    data = array.array("B")
    data.frombytes(rows.tobytes())
    return Image(
        height=h, width=pixels.shape[1], encoding=encoding, step=rows.shape[1], is_bigendian=big_endian, data=data
    )


@pytest.mark.parametrize(("encoding", "dtype", "shape"), [c for c in CASES if c[0] in ("bgr8", "mono8", "mono16")])
def test_padded_rows_are_skipped(encoding, dtype, shape):
    pixels = _random(dtype, shape)
    msg = _padded_message(pixels, encoding, pad=6)
    np.testing.assert_array_equal(image_to_array(msg), pixels)
    # Re-encoding a padded decode gives an unpadded message with the same pixels.
    again = array_to_image(image_to_array(msg), encoding)
    assert again.step == pixels[0].nbytes
    np.testing.assert_array_equal(image_to_array(again), pixels)


def test_big_endian_mono16_is_decoded_to_native_values():
    pixels = np.array([[1, 258, 65535], [4096, 0, 513]], dtype=np.uint16)
    msg = _padded_message(pixels, "mono16", pad=2, big_endian=True)
    back = image_to_array(msg)
    assert back.dtype == np.uint16 and back.dtype.isnative
    np.testing.assert_array_equal(back, pixels)


def test_decode_is_a_view_on_the_message_buffer():
    from rclpy.serialization import deserialize_message, serialize_message

    msg = deserialize_message(serialize_message(array_to_image(_random(np.uint8, (20, 30, 3)), "bgr8")), Image)
    view = image_to_array(msg)
    msg.data[0] = (int(msg.data[0]) + 1) % 256
    assert view[0, 0, 0] == msg.data[0], "decode copied the pixels"
    copied = image_to_array(msg, copy=True)
    msg.data[0] = (int(msg.data[0]) + 1) % 256
    assert copied[0, 0, 0] != msg.data[0]


def test_non_contiguous_arrays_are_packed_correctly():
    big = _random(np.uint8, (100, 120, 3))
    roi = big[10:60, 20:100]  # a crop view, rows not contiguous
    packed = array_to_image(roi, "bgr8")
    assert isinstance(packed.data, array.array) and not np.shares_memory(np.frombuffer(packed.data, np.uint8), big)
    np.testing.assert_array_equal(image_to_array(packed), roi)
    flipped = big[:, :, ::-1]
    np.testing.assert_array_equal(image_to_array(array_to_image(flipped, "rgb8")), flipped)


def test_single_channel_arrays_may_carry_a_channel_axis():
    pixels = _random(np.uint8, (4, 5, 1))
    np.testing.assert_array_equal(image_to_array(array_to_image(pixels, "mono8")), pixels[:, :, 0])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"data": array.array("B", bytes(10))}, "wrong data length: 10 bytes"),
        ({"step": 5}, "step 5 < 12"),
        ({"encoding": "yuv_weird"}, "unsupported image encoding 'yuv_weird'"),
        ({"encoding": ""}, "unsupported image encoding '' \\(empty\\)"),
        ({"height": 0, "data": array.array("B")}, "empty image"),
    ],
)
def test_bad_messages_raise_clear_errors(change, expected, monkeypatch):
    monkeypatch.setattr(images, "_CvBridge", None)  # the error paths of the native decoder
    msg = array_to_image(_random(np.uint8, (3, 4, 3)), "bgr8")
    for field, value in change.items():
        setattr(msg, field, value)
    with pytest.raises(ImageConversionError, match=expected):
        image_to_array(msg)


@pytest.mark.parametrize(
    ("pixels", "encoding", "expected"),
    [
        (np.zeros((4, 4), np.uint8), "bgr8", "bgr8 needs 3 channel"),
        (np.zeros((4, 4, 3), np.uint16), "bgr8", "needs dtype uint8"),
        (np.zeros((4, 4), np.uint8), "mono16", "needs dtype uint16"),
        (np.zeros((0, 4, 3), np.uint8), "bgr8", "empty array"),
        (np.zeros((4, 4), np.uint8), "not_an_encoding", "unsupported image encoding"),
        ([[1, 2], [3, 4]], "mono8", "expected a numpy array"),
    ],
)
def test_bad_arrays_raise_clear_errors(pixels, encoding, expected, monkeypatch):
    monkeypatch.setattr(images, "_CvBridge", None)
    with pytest.raises(ImageConversionError, match=expected):
        array_to_image(pixels, encoding)


def test_to_bgr8():
    bgr = _random(np.uint8, (8, 10, 3))
    assert to_bgr8(bgr, "bgr8") is bgr
    np.testing.assert_array_equal(to_bgr8(bgr[:, :, ::-1], "rgb8"), bgr)
    mono16 = np.full((8, 10), 0x1234, np.uint16)
    assert (to_bgr8(mono16, "mono16") == 0x12).all() and to_bgr8(mono16, "mono16").shape == (8, 10, 3)
    # A uniform grey mosaic demosaics to uniform grey, whatever the pattern.
    assert (to_bgr8(np.full((8, 10), 90, np.uint8), "bayer_rggb8") == 90).all()


def test_decode_for_model_keeps_the_channel_order_and_the_bayer_mosaic_raw():
    bgr = _random(np.uint8, (8, 10, 3))
    pixels, order = decode_for_model(array_to_image(bgr[:, :, ::-1].copy(), "rgb8"))
    assert order == "RGB" and np.array_equal(pixels[:, :, ::-1], bgr), "rgb8 is handed on as RGB, not converted"
    msg = array_to_image(np.full((8, 10), 90, np.uint8), "bayer_grbg8")
    pixels, order = decode_for_model(msg)  # preprocessing demosaics it (over the model's ROI only)
    assert (
        order == "bayer_grbg"
        and pixels.shape == (8, 10)
        and np.shares_memory(pixels, np.frombuffer(msg.data, np.uint8))
    )
    from qc_contract.preprocess import demosaic

    assert (demosaic(pixels, order) == 90).all() and demosaic(pixels, order).shape == (8, 10, 3)
    with pytest.raises(ImageConversionError, match="'32FC1' cannot be scored"):
        decode_for_model(array_to_image(_random(np.float32, (5, 7)), "32FC1"))


def test_decode_bgr8_of_a_message():
    bgr = _random(np.uint8, (8, 10, 3))
    np.testing.assert_array_equal(decode_bgr8(array_to_image(bgr[:, :, ::-1].copy(), "rgb8")), bgr)
    with pytest.raises(ImageConversionError, match="cannot show 32FC1"):
        decode_bgr8(array_to_image(_random(np.float32, (5, 7)), "32FC1"))


@pytest.mark.skipif(not images.HAVE_CV_BRIDGE, reason="cv_bridge is not installed (ROS from PyPI wheels)")
def test_matches_cv_bridge_passthrough():
    from cv_bridge import CvBridge

    pixels = _random(np.uint8, (6, 8, 3))
    msg = array_to_image(pixels, "bgr8")
    np.testing.assert_array_equal(CvBridge().imgmsg_to_cv2(msg, "passthrough"), image_to_array(msg))
    np.testing.assert_array_equal(image_to_array(CvBridge().cv2_to_imgmsg(pixels, "bgr8")), pixels)
