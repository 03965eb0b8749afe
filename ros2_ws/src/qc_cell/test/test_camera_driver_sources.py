"""camera_driver with the line-camera sources on a real rclpy graph: a publisher node standing in for a camera
driver (raw and compressed, free run and triggered), Aravis's fake GigE Vision camera with software triggers
on camera/trigger and its counters in /diagnostics, and a rosbag2 recording replayed with ground truth."""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image
from test_camera_driver import Probe, activate, make_driver, wait_for_subscriber
from test_camera_sources import write_bag

from qc_cell.nodes.camera_driver import EXECUTOR_THREADS
from qc_cell.ros import qos
from qc_cell.ros.images import array_to_image, image_to_array
from qc_cell.ros.time import from_ns, to_ns
from qc_cell.testing import fake_gv_camera as fake
from qc_cell.testing.ros import ros_graph
from qc_interfaces.msg import PartFrame

ARAVIS_MISSING = fake.unavailable_reason()
RECORDED = 1_000_000_000_000_000_000  # image stamps of a camera driver, far from now


def test_ros_image_free_run_every_image_is_a_part_with_its_own_stamp(tmp_path):
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        probe = Probe(graph)
        camera = graph.node("usb_cam_stand_in")
        pub = camera.create_publisher(Image, "cam0/image_raw", qos.IMAGE_VIEW)  # what usb_cam & co. offer
        driver = make_driver(graph, tmp_path, source="ros_image", topic="cam0/image_raw", rate_hz=0.5)
        wait_for_subscriber(graph, driver)
        activate(driver)
        assert graph.spin_until(lambda: pub.get_subscription_count() > 0, 5.0)
        assert graph.spin_until(lambda: driver.count_publishers("/cam0/image_raw") > 0, 5.0)
        graph.spin_for(0.2)  # best effort: let both ends finish matching before the first image
        sent = []
        for i in range(5):  # sensor-data QoS keeps the newest 5: one image at a time, as a camera at its rate
            stamp = RECORDED + i * 33_000_000
            pixels = np.full((12, 16), 40 * i, np.uint8)
            pub.publish(array_to_image(pixels, "mono8"))  # a driver that leaves the stamp 0: receive time
            assert graph.spin_until(lambda n=2 * i + 1: len(probe.frames) >= n, 5.0)
            sent.append((stamp, pixels))
            msg = array_to_image(pixels, "mono8")
            msg.header.stamp = from_ns(stamp)
            pub.publish(msg)
            assert graph.spin_until(lambda n=2 * i + 2: len(probe.frames) >= n, 5.0)
        assert graph.spin_until(lambda: probe.diagnostics and int(probe.values()["images_received"]) >= 10, 5.0)
        values = probe.values()
    stamped = [f for f in probe.frames if to_ns(f.header.stamp) < RECORDED + 10**9]
    assert [to_ns(f.header.stamp) for f in stamped] == [s for s, _ in sent]  # the image's stamp is the capture time
    for frame, (_, pixels) in zip(stamped, sent, strict=True):
        np.testing.assert_array_equal(image_to_array(frame.image), pixels)
        assert frame.capture_ok and frame.source.startswith("ros_image:cam0/image_raw@")
    unstamped = [f for f in probe.frames if f not in stamped]
    assert len(unstamped) == 5 and all(abs(to_ns(f.header.stamp) - time.time_ns()) < 30e9 for f in unstamped)
    assert values["source_kind"] == "ros_image" and values["topic"] == "/cam0/image_raw"
    assert values["publishers"] == "1" and values["decode_errors"] == "0"


def test_ros_image_compressed_triggered_takes_the_image_nearest_the_trigger(tmp_path):
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        probe = Probe(graph)
        camera = graph.node("v4l2_camera_stand_in")
        pub = camera.create_publisher(CompressedImage, "image_raw/compressed", qos.EVENTS)  # a reliable publisher
        driver = make_driver(
            graph, tmp_path, source="ros_image", topic="image_raw/compressed", mode="triggered",
            trigger_tolerance_s=0.02, trigger_timeout_s=0.5, max_trigger_age_s=5.0,
        )  # fmt: skip
        wait_for_subscriber(graph, driver)
        activate(driver)
        assert graph.spin_until(lambda: pub.get_subscription_count() > 0, 5.0)
        assert graph.spin_until(lambda: driver.count_publishers("/image_raw/compressed") > 0, 5.0)
        assert graph.spin_until(lambda: probe.trigger_pub.get_subscription_count() > 0, 5.0)
        base = time.time_ns()
        images = {}
        for i in range(6):  # 30 fps worth of images, 33 ms apart
            stamp = base + i * 33_000_000
            image = np.full((10, 14, 3), (20 * i, 50, 90), np.uint8)
            _, png = cv2.imencode(".png", image)
            msg = CompressedImage(format="png", data=png.tobytes())
            msg.header.stamp = from_ns(stamp)
            pub.publish(msg)
            images[stamp] = image
        graph.spin_for(0.2)
        probe.trigger("near-3", stamp_ns=base + 3 * 33_000_000 + 5_000_000)  # 5 ms after image 3
        probe.trigger("between", stamp_ns=base + 4 * 33_000_000 + 16_000_000)  # 16 ms from 4 and 17 from 5
        probe.trigger("far", stamp_ns=base + 60_000_000_000)  # no image within 20 ms
        assert graph.spin_until(lambda: len(probe.frames) == 3, 10.0)
    frames = {f.part_id: f for f in probe.frames}
    assert frames["near-3"].capture_ok and to_ns(frames["near-3"].header.stamp) == base + 3 * 33_000_000
    np.testing.assert_array_equal(image_to_array(frames["near-3"].image), images[base + 3 * 33_000_000])
    assert frames["between"].capture_ok and to_ns(frames["between"].header.stamp) == base + 4 * 33_000_000
    assert (
        not frames["far"].capture_ok and "no image on image_raw/compressed within 20 ms" in frames["far"].capture_error
    )


@pytest.mark.skipif(bool(ARAVIS_MISSING), reason=ARAVIS_MISSING or "aravis")
def test_aravis_camera_software_triggered_from_camera_trigger(tmp_path):
    with fake.fake_gv_camera(f"QN{os.getpid()}") as gv, ros_graph(threads=EXECUTOR_THREADS) as graph:
        probe = Probe(graph)
        driver = make_driver(
            graph, tmp_path, source="aravis", guid=gv.serial, mode="triggered", trigger_source="Software",
            pixel_format="Mono8", width=128, height=96, max_trigger_age_s=5.0, trigger_timeout_s=2.0,
        )  # fmt: skip
        wait_for_subscriber(graph, driver)
        activate(driver)
        assert graph.spin_until(lambda: probe.trigger_pub.get_subscription_count() > 0, 5.0)
        sent = []
        for i in range(3):
            sent.append(time.time_ns())
            probe.trigger(f"gige-{i}", encoder_count=100 * i, stamp_ns=sent[-1])
            assert graph.spin_until(lambda n=i + 1: len(probe.frames) == n, 10.0)
        assert graph.spin_until(lambda: probe.diagnostics and probe.values().get("software_triggers") == "3", 5.0)
        values = probe.values()
    assert [f.part_id for f in probe.frames] == ["gige-0", "gige-1", "gige-2"]
    for frame, trigger_ns in zip(probe.frames, sent, strict=True):
        assert frame.capture_ok, frame.capture_error
        assert frame.image.encoding == "mono8" and (frame.image.width, frame.image.height) == (128, 96)
        assert to_ns(frame.header.stamp) >= trigger_ns - 5_000_000  # the camera's stamp, after the trigger
        assert frame.ground_truth == PartFrame.LABEL_UNKNOWN
    assert values["source_kind"] == "aravis" and values["camera"] == gv.camera_id
    assert values["lost_frames"] == "0" and "missing_packets" in values and "clock_offset_ms" in values


def test_bag_replay_with_ground_truth_through_the_driver(tmp_path):
    bag = tmp_path / "last_week"
    images = write_bag(bag, "mcap", "partframe", count=6, period_s=0.05)
    with ros_graph(threads=EXECUTOR_THREADS) as graph:
        probe = Probe(graph)
        driver = make_driver(graph, tmp_path, source="bag", path=str(bag), playback="fast", rate_hz=50.0)
        wait_for_subscriber(graph, driver)
        activate(driver)
        assert graph.spin_until(lambda: len(probe.frames) == 6, 10.0)
        assert graph.spin_until(lambda: probe.diagnostics and probe.values()["source_state"] == "finished", 5.0)
    for i, (frame, image) in enumerate(zip(probe.frames, images, strict=True)):
        np.testing.assert_array_equal(image_to_array(frame.image), image)
        expected = (PartFrame.LABEL_DEFECT, "scratch") if i % 2 else (PartFrame.LABEL_GOOD, "")
        assert (frame.ground_truth, frame.defect_type) == expected
        assert frame.source.startswith(f"bag:last_week#{i}@")
