"""System tests: the whole cell (cell runner, separate processes, mosquitto) fed by each line-camera source at a
few parts/s: a rosbag2 recording of synthetic parts with ground truth, Aravis's fake GigE Vision camera, pylon's
camera emulation, and a ROS image topic published by a stand-in camera driver. Every part must get one verdict,
one MQTT record and its reject event; the bag replay also measures the model's accuracy on the recording."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from qc_cell.bringup.demo import run_demo
from qc_cell.testing import fake_gv_camera as fake

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params" / "demo.yaml"
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(600)]
PARTS = 20


def _assert_every_part_accounted(result: dict, parts: int) -> None:
    assert result["parts_with_verdict"] == parts, f"expected {parts} verdicts: {result}"
    assert result["parts_without_verdict"] == 0, f"parts without verdict: {result}"
    assert result["duplicate_verdicts"] == 0, f"duplicate verdicts: {result}"
    assert result["mqtt"]["part_records_vs_parts"] == f"{parts}/{parts}", f"MQTT summaries: {result['mqtt']}"
    due, done = result["reject"]["parts_due"], result["reject"]["parts_with_reject_event"]
    assert done == due, f"{due} parts due for ejection, only {done} reject events"


def _camera(**values) -> dict[str, dict]:
    return {"camera_driver": {"width": 0, "height": 0, "pixel_format": "", **values}}


def test_cell_replays_a_bag_with_ground_truth(tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    from qc_cell.camera.sources.bag import cell_typestore
    from qc_contract.synthetic import SyntheticPartGenerator

    store = cell_typestore()
    types = store.types
    bag = tmp_path / "line_recording"
    generator = SyntheticPartGenerator(seed=11, width=256, height=256, defect_rate=0.3)
    start = 1_700_000_000_000_000_000
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        msgtype = "qc_interfaces/msg/PartFrame"
        connection = writer.add_connection("/cell1/camera/frames", msgtype, typestore=store)
        for i in range(PARTS):
            part = generator.part(i)
            stamp = start + i * 100_000_000
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="camera"
            )
            image = types["sensor_msgs/msg/Image"](
                header=header, height=256, width=256, encoding="bgr8", is_bigendian=0, step=768,
                data=np.ascontiguousarray(part.image).ravel(),
            )  # fmt: skip
            msg = types[msgtype](
                header=header, steady_stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                part_id=f"cell1-{i:09d}", sequence=i, source=f"synthetic:11:{i}", encoder_count=-1,
                image=image, capture_ok=True, capture_error="", ground_truth=2 if part.label == "defect" else 1,
                defect_type=part.defect_type or "",
                # a recorder is not attached to the frame pool: it records the pixels inline
                pool_frame=types["qc_interfaces/msg/FrameHandle"](pool="", in_pool=False, slot=0, generation=0),
            )  # fmt: skip
            writer.write(connection, stamp, store.serialize_cdr(msg, msgtype))
    overrides = _camera(source="bag", path=str(bag), playback="fast", rate_hz=5.0)
    result = run_demo(PARTS, PARAMS, tmp_path / "run", namespace=f"bag{os.getpid()}", extra_overrides=overrides)
    _assert_every_part_accounted(result, PARTS)
    print(f"bag replay: {PARTS} parts, accuracy at 0.5: {result['model_accuracy_at_0_5']}")
    assert result["model_accuracy_at_0_5"] is not None, f"the replay carried no ground truth: {result}"
    expected = json.loads((REPO / "models" / "default" / "report.json").read_text())["test"]["accuracy"]
    assert result["model_accuracy_at_0_5"] >= expected - 0.25, result  # 20 parts: a coarse check


@pytest.mark.skipif(bool(fake.unavailable_reason()), reason=fake.unavailable_reason() or "aravis")
def test_cell_runs_from_the_fake_gige_camera(tmp_path):
    with fake.fake_gv_camera(f"QS{os.getpid()}") as camera:
        overrides = _camera(source="aravis", guid=camera.serial, pixel_format="Mono8", width=256, height=256, fps=4.0)
        result = run_demo(PARTS, PARAMS, tmp_path, namespace=f"gige{os.getpid()}", extra_overrides=overrides)
    _assert_every_part_accounted(result, PARTS)


def test_cell_runs_from_pylon_emulation(tmp_path, monkeypatch):
    try:
        import pypylon  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"pypylon not installed ({exc}): pip install -r requirements/pylon.txt")
    monkeypatch.setenv("PYLON_CAMEMU", "1")  # the camera_driver process inherits it
    overrides = _camera(source="pylon", pixel_format="Mono8", width=320, height=320, fps=4.0)
    result = run_demo(PARTS, PARAMS, tmp_path, namespace=f"pylon{os.getpid()}", extra_overrides=overrides)
    _assert_every_part_accounted(result, PARTS)


def test_cell_runs_from_a_ros_camera_topic(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from qc_cell.ros.images import array_to_image
    from qc_contract.synthetic import SyntheticPartGenerator

    namespace = f"topic{os.getpid()}"
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("usb_cam", namespace=namespace, context=context)
    publisher = node.create_publisher(Image, "image_raw", qos_profile_sensor_data)
    generator = SyntheticPartGenerator(seed=3, width=256, height=256)
    published = [0]

    def publish() -> None:
        msg = array_to_image(generator.part(published[0]).image, "bgr8", frame_id="usb_cam")
        msg.header.stamp = node.get_clock().now().to_msg()
        publisher.publish(msg)
        published[0] += 1

    node.create_timer(0.25, publish)  # a 4 fps camera
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        overrides = _camera(source="ros_image", topic="image_raw")
        result = run_demo(PARTS, PARAMS, tmp_path, namespace=namespace, extra_overrides=overrides)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=5)
    _assert_every_part_accounted(result, PARTS)
    assert published[0] >= PARTS
