"""Frames through the shared-memory pool on a real rclpy graph (docs/graph-contract.md, "Frames through shared
memory"): the inference node scoring frames by handle, refusing overwritten and unreadable ones
(NOT_INSPECTED frame_overwritten / frame_unavailable, counted, never a score of another frame), carrying on
across a camera driver restart; the camera driver sending handles only while every subscriber is attached to its
pool, full frames to a subscriber that is not (another host, a viewer, a recorder), and camera/image_raw as ever."""

from __future__ import annotations

import secrets
import time

import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from test_inference_node import inference_cell

from qc_cell.camera import frame_pool
from qc_cell.camera.frame_pool import FramePool
from qc_cell.inference.synthetic_models import expected_probability, uniform_image
from qc_cell.nodes.camera_driver import CameraDriver
from qc_cell.ros import qos
from qc_cell.ros.frame_transport import FrameReceiver
from qc_cell.ros.images import image_description, image_to_array
from qc_cell.ros.time import from_ns
from qc_cell.testing.ros import ros_graph
from qc_contract.model_manifest import Preprocessing
from qc_interfaces.msg import FrameHandle, InspectionResult, ModelInfo, PartFrame

pytestmark = pytest.mark.skipif(not frame_pool.SHM_DIR.is_dir(), reason="no /dev/shm")
SPEC = Preprocessing(input_height=32, input_width=32)
SUCCESS = TransitionCallbackReturn.SUCCESS


@pytest.fixture
def prefix():
    name = f"qc_frames_nodetest_{secrets.token_hex(3)}"
    yield name
    for path in frame_pool.SHM_DIR.glob(f"{name}_*"):
        path.unlink(missing_ok=True)


def send_by_handle(cell, pool: FramePool, level: int, wait_s: float = 10.0) -> str:
    """What the camera driver does for a local consumer: the frame into the pool, its handle on camera/frames."""
    pixels = uniform_image(level)
    end = time.monotonic() + wait_s
    ref = pool.write(pixels)
    while ref is None and time.monotonic() < end:
        cell.graph.spin_for(0.01)
        ref = pool.write(pixels)
    assert ref is not None, "the pool stayed full"
    handle = FrameHandle(pool=pool.name, in_pool=True, slot=ref.slot, generation=ref.generation)
    return send(cell, handle, pixels)


def send(cell, handle: FrameHandle, pixels: np.ndarray) -> str:
    part_id = f"part-{cell.sent:05d}"
    msg = PartFrame(part_id=part_id, sequence=cell.sent, source="test", capture_ok=True, pool_frame=handle)
    msg.header.stamp = from_ns(cell.probe.get_clock().now().nanoseconds)
    msg.image = image_description(pixels, "bgr8", msg.header)
    cell.frames_pub.publish(msg)
    cell.sent += 1
    return part_id


def test_inference_scores_frames_by_handle_and_refuses_overwritten_and_unreadable_ones(tmp_path, prefix):
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        pool = FramePool.create(prefix, 4, uniform_image(0).nbytes, lease_s=5.0)
        try:
            levels = [0, 128, 255]
            sent = [send_by_handle(cell, pool, level) for level in levels]
            cell.wait_results(3)
            for part_id, level in zip(sent, levels, strict=True):
                r = cell.by_part()[part_id]
                assert r.status == InspectionResult.STATUS_OK, r.reason
                assert r.defect_probability == pytest.approx(expected_probability(uniform_image(level), SPEC), abs=1e-5)
            assert cell.graph.spin_until(lambda: pool.leased() == 0, 5.0)  # released once answered
            assert pool.readers() == {cell.node.get_fully_qualified_name()}

            # A handle whose slot was written again before it arrived: never scored.
            stale = pool.write(uniform_image(10))
            assert pool.write(uniform_image(20)) is not None and pool.write(uniform_image(30)) is not None
            assert pool.write(uniform_image(40)) is not None
            assert cell.graph.spin_until(lambda: pool.leased() == 0, 10.0)
            while pool.write(uniform_image(250)) is None or pool._m.table[stale.slot, 0] == stale.generation:
                cell.graph.spin_for(0.01)
            overwritten = send(cell, FrameHandle(pool=pool.name, in_pool=True, slot=stale.slot,
                                                 generation=stale.generation), uniform_image(10))  # fmt: skip
            # A handle into a pool that does not exist here (a driver on another host, or gone).
            gone = send(cell, FrameHandle(pool=f"{prefix}_gone", in_pool=True, slot=0, generation=2), uniform_image(0))
            cell.wait_results(5)
            r = cell.by_part()[overwritten]
            assert (r.status, r.reason) == (InspectionResult.STATUS_NOT_INSPECTED, "frame_overwritten")
            r = cell.by_part()[gone]
            assert (r.status, r.reason) == (InspectionResult.STATUS_NOT_INSPECTED, "frame_unavailable")
            counted = {"frame_overwritten": 1, "frame_unavailable": 1}  # counted just after publishing
            assert cell.graph.spin_until(
                lambda: {k: cell.node._pipeline.stats().not_inspected[k] for k in counted} == counted, 5.0
            )
        finally:
            pool.close()


def test_a_writer_lapping_the_queue_gives_frame_overwritten_never_another_frames_score(tmp_path, prefix):
    with inference_cell(tmp_path, queue_size=20) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE)
        pool = FramePool.create(prefix, 12, uniform_image(0).nbytes, lease_s=0.05)
        pipeline = cell.node._pipeline
        try:
            with pipeline._model_lock:  # scoring stalls (as behind a slow batch): the frames wait in the queue
                sent = [send_by_handle(cell, pool, 0) for _ in range(12)]
                assert cell.graph.spin_until(lambda: pipeline.stats().received == 12, 10.0)
                time.sleep(0.1)  # their 50 ms leases expire while they wait
                overwritten = [pool.write(uniform_image(255)) for _ in range(6)]  # the camera laps the reader
                assert all(ref is not None for ref in overwritten)
            cell.wait_results(len(sent))
            reasons = sorted(r.reason for r in cell.results)
            assert reasons == [""] * 6 + ["frame_overwritten"] * 6, reasons
            dark = expected_probability(uniform_image(0), SPEC)
            for r in cell.results:
                if r.status == InspectionResult.STATUS_OK:
                    assert r.defect_probability == pytest.approx(dark, abs=1e-5)  # its own frame, not a bright one
        finally:
            pool.close()


def test_inference_carries_on_across_a_camera_driver_restart(tmp_path, prefix):
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        first = FramePool.create(prefix, 4, uniform_image(0).nbytes, lease_s=5.0)
        send_by_handle(cell, first, 0)
        cell.wait_results(1)
        held = send_by_handle(cell, first, 255)  # in flight while the driver goes away
        first.close()
        second = FramePool.create(prefix, 4, uniform_image(0).nbytes, lease_s=5.0)
        try:
            after = send_by_handle(cell, second, 128)
            cell.wait_results(3)
            # The consumer had the old pool mapped: the frame it was handed is still that frame, scored correctly.
            bright = cell.by_part()[held]
            assert bright.status == InspectionResult.STATUS_OK
            assert bright.defect_probability == pytest.approx(expected_probability(uniform_image(255), SPEC), abs=1e-5)
            assert cell.by_part()[after].status == InspectionResult.STATUS_OK
            assert cell.node._frames.reader.pool == second.name
            assert cell.graph.spin_until(lambda: second.readers() == {cell.node.get_fully_qualified_name()}, 5.0)
        finally:
            second.close()


def make_driver(graph, tmp_path, **params) -> CameraDriver:
    values = {"source": "synthetic", "width": 96, "height": 64, "rate_hz": 20.0, "state_dir": str(tmp_path / "s"),
              "diagnostics_period_s": 0.2, "part_id_prefix": f"shm{secrets.token_hex(2)}", **params}  # fmt: skip
    overrides = [Parameter(name, value=value) for name, value in values.items()]
    driver = graph.add(CameraDriver(context=graph.context, parameter_overrides=overrides))
    assert driver.trigger_configure() == SUCCESS
    return driver


def test_the_driver_sends_handles_only_while_every_subscriber_is_attached(tmp_path):
    with ros_graph(threads=2) as graph:
        driver = make_driver(graph, tmp_path)
        local = graph.node("local_consumer")
        receiver = FrameReceiver(local.get_fully_qualified_name())
        frames: list[tuple[PartFrame, np.ndarray | None, bool]] = []

        def on_frame(msg: PartFrame) -> None:
            got = receiver.receive(msg)
            pixels = np.array(got.decode()[0]) if msg.capture_ok else None
            intact = got.verify() == "" if got.verify is not None else True
            if got.release is not None:
                got.release()
            frames.append((msg, pixels, intact))

        local.create_subscription(PartFrame, "camera/frames", on_frame, qos.PART_FRAMES)
        viewer: list[Image] = []
        local.create_subscription(Image, "camera/image_raw", viewer.append, qos.IMAGE_VIEW)
        assert graph.spin_until(lambda: driver.frames_pub.get_subscription_count() == 1, 5.0)
        assert driver.trigger_activate() == SUCCESS
        try:
            # The first frames come inline naming the pool; once the consumer is attached, by handle.
            assert graph.spin_until(lambda: sum(f[0].pool_frame.in_pool for f in frames) >= 3, 15.0), [
                f[0].pool_frame for f in frames
            ]
            first_inline = frames[0][0]
            assert not first_inline.pool_frame.in_pool and first_inline.pool_frame.pool.startswith("qc_frames_")
            assert len(first_inline.image.data) == 96 * 64 * 3
            for msg, pixels, intact in frames:
                if msg.pool_frame.in_pool:
                    assert len(msg.image.data) == 0 and (msg.image.width, msg.image.height) == (96, 64)
                    assert intact and pixels.shape == (64, 96, 3)
            # camera/image_raw still carries the full image, the same pixels as the frame sent by handle.
            by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): p for m, p, _ in frames if m.pool_frame.in_pool}
            assert graph.spin_until(
                lambda: any((v.header.stamp.sec, v.header.stamp.nanosec) in by_stamp for v in viewer), 10.0
            )
            shown = next(v for v in viewer if (v.header.stamp.sec, v.header.stamp.nanosec) in by_stamp)
            np.testing.assert_array_equal(image_to_array(shown), by_stamp[(shown.header.stamp.sec,
                                                                           shown.header.stamp.nanosec)])  # fmt: skip

            # A subscriber that is not attached (another host, a recorder): everybody gets full frames.
            remote_frames: list[PartFrame] = []
            remote = graph.node("remote_recorder")
            remote.create_subscription(PartFrame, "camera/frames", remote_frames.append, qos.PART_FRAMES)
            assert graph.spin_until(lambda: len(remote_frames) >= 3, 10.0)
            for msg in remote_frames[-2:]:
                assert not msg.pool_frame.in_pool and len(msg.image.data) == 96 * 64 * 3
            values = {}
            assert graph.spin_until(
                lambda: values.update(driver.frame_sender.stats()) or values["frames_inline"] > 1, 5.0
            )
            # It leaves: handles again.
            mark = len(frames)
            graph.executor.remove_node(remote)
            remote.destroy_node()
            assert graph.spin_until(lambda: any(f[0].pool_frame.in_pool for f in frames[mark + 2 :]), 10.0)
            pool_path = driver.frame_sender.pool.path
            assert pool_path.exists()
        finally:
            driver.trigger_deactivate()
            driver.trigger_cleanup()
            receiver.close()
        assert not pool_path.exists()  # the pool goes with the driver's cleanup


def test_the_pool_is_announced_so_the_first_frame_goes_by_handle_captured_straight_into_its_slot(tmp_path):
    """Start-up: the driver announces its new pool (camera/frame_pool, latched) and waits for its subscribers to
    attach before the first frame, so no frame goes inline; the synthetic source renders into the pool slots."""
    from qc_contract.synthetic import SyntheticPartGenerator

    with ros_graph(threads=2) as graph:
        local = graph.node("local_consumer")
        receiver = FrameReceiver(local.get_fully_qualified_name())
        receiver.subscribe(local)
        frames: list[tuple[PartFrame, np.ndarray]] = []

        def on_frame(msg: PartFrame) -> None:
            got = receiver.receive(msg)
            pixels = np.array(got.decode()[0])
            assert got.verify is None or got.verify() == ""
            if got.release is not None:
                got.release()
            frames.append((msg, pixels))

        local.create_subscription(PartFrame, "camera/frames", on_frame, qos.PART_FRAMES)
        driver = make_driver(graph, tmp_path, max_parts=6, seed=5)
        assert graph.spin_until(lambda: driver.frames_pub.get_subscription_count() == 1, 5.0)
        assert driver.trigger_activate() == SUCCESS
        try:
            assert graph.spin_until(lambda: len(frames) >= 6, 15.0), len(frames)
            assert [m.pool_frame.in_pool for m, _ in frames] == [True] * 6  # the first one too
            stats = driver.frame_sender.stats()
            assert (stats["frames_inline"], stats["frames_by_handle"], stats["frames_captured_into_pool"]) == (0, 6, 6)
            assert len(driver.frame_sender.attach_waits) == 1 and driver.frame_sender.attach_waits[0] < 1.0
            generator = SyntheticPartGenerator(seed=5, width=96, height=64)
            for msg, pixels in frames:  # the pixels the consumer read are the part's
                np.testing.assert_array_equal(pixels, generator.part(int(msg.source.rsplit(":", 1)[1])).image)
        finally:
            driver.trigger_deactivate()
            driver.trigger_cleanup()
            receiver.close()


def test_without_shared_memory_frames_go_inline(tmp_path, monkeypatch):
    monkeypatch.setattr(frame_pool, "SHM_DIR", tmp_path / "no_shm")
    with ros_graph(threads=2) as graph:
        driver = make_driver(graph, tmp_path)
        monkeypatch.setattr(driver.frame_sender, "_prefix", driver.frame_sender._prefix)  # created before the patch
        frames: list[PartFrame] = []
        local = graph.node("local_consumer")
        receiver = FrameReceiver(local.get_fully_qualified_name())
        local.create_subscription(
            PartFrame, "camera/frames", lambda m: (receiver.receive(m), frames.append(m)), qos.PART_FRAMES
        )
        assert graph.spin_until(lambda: driver.frames_pub.get_subscription_count() == 1, 5.0)
        assert driver.trigger_activate() == SUCCESS
        try:
            assert graph.spin_until(lambda: len(frames) >= 4, 10.0)
            assert all(not f.pool_frame.pool and len(f.image.data) == 96 * 64 * 3 for f in frames)
            assert "no /dev/shm" in str(driver.frame_sender.stats()["frame_pool"]) or "does not exist" in str(
                driver.frame_sender.stats()["frame_pool"]
            )
        finally:
            driver.trigger_deactivate()
            receiver.close()


@pytest.mark.slow
def test_camera_to_inference_at_5_mp_goes_by_handle(tmp_path):
    """The cell's frame path at 5 MP: synthetic 2448x2048 parts from the camera driver, scored by inference."""
    with inference_cell(tmp_path) as cell:
        cell.wait_model(ModelInfo.STATE_ACTIVE, "1.0.0")
        driver = make_driver(cell.graph, tmp_path, width=2448, height=2048, rate_hz=5.0, max_parts=5)
        try:
            assert cell.graph.spin_until(lambda: driver.frames_pub.get_subscription_count() == 1, 5.0)
            assert driver.trigger_activate() == SUCCESS
            cell.wait_results(5, timeout=120.0)
            assert [r.status for r in cell.results] == [InspectionResult.STATUS_OK] * 5, [
                r.reason for r in cell.results
            ]
            assert (cell.node._frames.by_handle, cell.node._frames.inline) == (5, 0)  # the first frame too
            stats = driver.frame_sender.stats()
            assert stats["frame_pool_slots"] == f"12 x {2448 * 2048 * 3 / 1e6:.1f} MB"
            assert stats["frames_by_handle"] == stats["frames_captured_into_pool"] == 5  # no copy in the driver
        finally:
            driver.trigger_deactivate()
            driver.trigger_cleanup()
