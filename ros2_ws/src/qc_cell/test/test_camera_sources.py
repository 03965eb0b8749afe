"""The line-camera sources through the capture loop, against real parts: Aravis's fake GigE Vision camera
(started here; a cable pull is kill + restart), pylon's camera emulation, and rosbag2 recordings written with
rosbags in both storage formats. The ros_image source is tested on a real rclpy graph in test_camera_driver_sources.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from qc_cell.camera.capture import RETRYING, STREAMING, CaptureLoop, CaptureRequest, CaptureResult, CaptureSettings
from qc_cell.camera.framing import Framing
from qc_cell.camera.sources import SourceConfigError, SourceSettings, build_source
from qc_cell.camera.sources.base import NoFrameYetError, NoMatchingFrameError
from qc_cell.camera.sources.genicam import FeatureError, GenICamSettings
from qc_cell.camera.sources.stream import ClockMapper, FrameRing, pixels_from_buffer
from qc_cell.ros.images import to_bgr8
from qc_cell.testing import fake_gv_camera as fake

ARAVIS_MISSING = fake.unavailable_reason()
needs_aravis = pytest.mark.skipif(bool(ARAVIS_MISSING), reason=ARAVIS_MISSING or "aravis")


class Recorder:
    """A capture loop with its results and events collected."""

    def __init__(self, source, mode: str = "free_run", **settings) -> None:
        self.results: list[CaptureResult] = []
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        counter = iter(range(10**9))
        self.loop = CaptureLoop(
            source,
            Framing(),
            CaptureSettings(mode=mode, **settings),
            self._sink,
            time.time_ns,
            lambda: f"p-{next(counter)}",
            lambda level, code, message: self.events.append((level, code, message)),
        )

    def _sink(self, result: CaptureResult) -> None:
        with self._lock:
            self.results.append(result)

    def wait(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def codes(self) -> list[str]:
        return [code for _, code, _ in self.events]


# ---------------------------------------------------------------------------------------- stream helpers


def test_pixel_formats_decode_without_python_loops():
    mono12 = (np.arange(12, dtype="<u2") * 300).tobytes()
    image, encoding = pixels_from_buffer(mono12, 4, 3, "Mono12")
    assert encoding == "mono16" and image.dtype == np.uint16 and image.shape == (3, 4)
    np.testing.assert_array_equal(image.ravel(), (np.arange(12) * 300) << 4)  # 12 bit to the top of 16
    image, encoding = pixels_from_buffer(bytes(range(24)), 4, 2, "RGB8")
    assert encoding == "rgb8" and image.shape == (2, 4, 3)
    image, encoding = pixels_from_buffer(bytes(16), 4, 4, "BayerGR8")
    assert encoding == "bayer_grbg8"
    with pytest.raises(ValueError, match="Mono10p"):
        pixels_from_buffer(bytes(16), 4, 4, "Mono10p")
    with pytest.raises(ValueError, match="too small"):
        pixels_from_buffer(bytes(10), 4, 4, "Mono8")


def test_clock_mapper_takes_the_fastest_transfer_and_follows_a_clock_jump():
    clock = ClockMapper(window=16)
    offset = 5_000_000_000_000
    delays = [3_000_000, 1_000_000, 2_000_000, 1_500_000]
    mapped = [clock.map(t, t + offset + d) for t, d in zip(range(0, 4_000_000_000, 1_000_000_000), delays, strict=True)]
    assert mapped[-1] == 3_000_000_000 + offset + 1_000_000  # camera time + offset + fastest transfer
    assert clock.stats()["clock_offset_ms"] == f"{(offset + 1_000_000) / 1e6:.3f}"
    assert clock.map(10, offset + 10 + 2_000_000 + 7_000_000_000) == offset + 10 + 2_000_000 + 7_000_000_000
    assert clock.resets == 1  # the camera restarted its clock: estimate restarted
    assert clock.map(0, 123) == 123  # no camera timestamp: receive time


def test_frame_ring_matches_the_nearest_frame_and_drops_older_ones():
    from qc_cell.camera.sources.base import Frame

    ring = FrameRing(8)
    for stamp in (100, 200, 300, 400):
        ring.push(Frame(np.zeros((1, 1), np.uint8), "mono8", str(stamp), stamp_ns=stamp))
    assert ring.nearest(290, 50, 0.01, now_ns=lambda: 10**12).origin == "300"
    assert ring.unmatched == 2  # 100 and 200 can no longer belong to any later trigger
    assert ring.nearest(1000, 50, 0.01, now_ns=lambda: 10**12) is None
    assert ring.unmatched == 3


# ---------------------------------------------------------------------------------------- aravis (fake GigE)


@pytest.fixture(scope="module")
def gv_camera():
    if ARAVIS_MISSING:
        pytest.skip(ARAVIS_MISSING)
    with fake.fake_gv_camera(f"QC{os.getpid()}") as camera:
        yield camera


def aravis(mode: str = "free_run", **kwargs):
    return build_source(SourceSettings(kind="aravis", mode=mode, **kwargs))


@needs_aravis
def test_aravis_finds_the_camera_by_id_serial_and_address(gv_camera):
    assert gv_camera.camera_id in gv_camera.arv_tool()  # Aravis's own tool sees it on the wire
    for wanted in (gv_camera.camera_id, gv_camera.serial, "127.0.0.1"):
        source = aravis(guid=wanted)
        source.open()
        try:
            assert source.stats()["camera"] == gv_camera.camera_id
        finally:
            source.close()
    missing = aravis(guid="NO-SUCH-CAMERA")
    with pytest.raises(Exception, match="NO-SUCH-CAMERA not found .*cameras seen: .*" + gv_camera.camera_id):
        missing.open()


@needs_aravis
def test_aravis_free_run_with_features_from_parameters(gv_camera):
    source = aravis(
        guid=gv_camera.serial, pixel_format="Mono8", width=320, height=240, offset_x=16, offset_y=8,
        binning_x=1, binning_y=1, exposure=2000.0, gain=3.0, fps=20.0,
    )  # fmt: skip
    rec = Recorder(source, rate_hz=1.0)  # a camera stream paces itself: rate_hz does not apply
    assert rec.loop.open()
    device = source._device
    written = {name: device.get_string_feature_value(name) for name in ("PixelFormat",)}
    written |= {
        name: device.get_integer_feature_value(name)
        for name in ("Width", "Height", "OffsetX", "OffsetY", "BinningHorizontal", "GainRaw")
    }
    written |= {name: device.get_float_feature_value(name) for name in ("ExposureTimeAbs", "AcquisitionFrameRate")}
    assert written == {
        "PixelFormat": "Mono8", "Width": 320, "Height": 240, "OffsetX": 16, "OffsetY": 8, "BinningHorizontal": 1,
        "GainRaw": 3, "ExposureTimeAbs": 2000.0, "AcquisitionFrameRate": 20.0,
    }  # fmt: skip
    rec.loop.start()
    try:
        assert rec.wait(lambda: len(rec.results) >= 10, 10.0), rec.events
    finally:
        rec.loop.close()
    frames = [r.frame for r in rec.results]
    assert all(f is not None and f.image.shape == (240, 320) and f.encoding == "mono8" for f in frames)
    stamps = [r.stamp_ns for r in rec.results]
    assert stamps == sorted(stamps) and all(r.stamp_ns == r.frame.stamp_ns for r in rec.results)
    gaps = np.diff(stamps) / 1e9
    assert 0.03 < float(np.median(gaps)) < 0.08, gaps  # 20 fps from the camera clock, not 1 Hz
    assert abs(time.time_ns() - stamps[-1]) < 5e9
    stats = source.stats()
    assert stats["frames_grabbed"] >= 10 and stats["lost_frames"] == 0
    assert float(stats["clock_offset_ms"]) != 0.0 or stats["clock_samples"] > 0


@needs_aravis
def test_aravis_software_trigger_one_frame_per_part(gv_camera):
    source = aravis("triggered", guid=gv_camera.camera_id, trigger_source="Software", trigger_timeout_s=2.0)
    rec = Recorder(source, "triggered", max_trigger_age_s=5.0)
    assert rec.loop.open()
    assert source._device.get_string_feature_value("TriggerMode") == "On"
    assert source._device.get_string_feature_value("TriggerSource") == "Software"
    rec.loop.start()
    try:
        time.sleep(0.3)  # a triggered camera sends nothing by itself
        assert source.stats()["frames_grabbed"] == 0
        for i in range(4):
            sent = time.time_ns()
            rec.loop.request(CaptureRequest(f"part-{i}", sent))
            assert rec.wait(lambda n=i + 1: len(rec.results) == n, 10.0)
            result = rec.results[-1]
            assert result.part_id == f"part-{i}" and result.frame is not None, result.error
            assert sent - 5_000_000 <= result.stamp_ns <= time.time_ns()
    finally:
        rec.loop.close()
    stats = source.stats()
    assert stats["software_triggers"] == 4 and stats["unanswered_triggers"] == 0 and stats["frames_grabbed"] == 4


@needs_aravis
def test_aravis_hardware_trigger_is_configured_and_parts_match_frames_by_stamp(gv_camera):
    # The line trigger is written to the camera as configured...
    source = aravis("triggered", guid=gv_camera.serial, trigger_source="Line0", trigger_activation="RisingEdge")
    source.open()
    try:
        device = source._device
        assert [device.get_string_feature_value(n) for n in ("TriggerMode", "TriggerSource", "TriggerActivation")] == [
            "On", "Line0", "RisingEdge",
        ]  # fmt: skip
        # ...but Aravis's fake camera has no input lines (it sends frames only free running or on TriggerSoftware),
        # so a part whose frame never comes gets none, with the reason.
        with pytest.raises(NoMatchingFrameError, match="no camera frame within 50 ms"):
            source.read_for(time.time_ns())
    finally:
        source.close()
    # The matching of part triggers to a stream of frames (what a line-triggered camera sends) by the camera's
    # timestamps: the camera streams at 25 fps (40 ms apart), each trigger takes the nearest frame within 100 ms
    # (wide: the fake camera's frame times jitter on a loaded machine).
    source = aravis("triggered", guid=gv_camera.serial, fps=25.0, trigger_tolerance_s=0.1)
    rec = Recorder(source, "triggered", max_trigger_age_s=5.0)
    assert rec.loop.open()
    rec.loop.start()
    try:
        time.sleep(0.3)
        wanted = []
        for i in range(5):
            wanted.append(time.time_ns())
            rec.loop.request(CaptureRequest(f"part-{i}", wanted[-1]))
            time.sleep(0.15)
        assert rec.wait(lambda: len(rec.results) == 5, 10.0)
    finally:
        rec.loop.close()
    for trigger_ns, result in zip(wanted, rec.results, strict=True):
        assert result.frame is not None, result.error
        assert abs(result.stamp_ns - trigger_ns) <= 100_000_000
    assert len({r.stamp_ns for r in rec.results}) == 5  # parts 150 ms apart: five different frames
    assert source.stats()["unmatched_frames"] > 0  # the frames between parts were nobody's


@needs_aravis
def test_aravis_unsupported_features_are_clear_errors(gv_camera):
    cases = [
        ({"pixel_format": "BayerRG12"}, r"pixel_format 'BayerRG12' is not supported by PixelFormat .*Mono16"),
        ({"trigger_source": "Line0", "trigger_delay": 5.0}, r"does not support trigger_delay .*TriggerDelay"),
        ({"genicam_features": ("DeviceLinkThroughputLimit=1000",)}, "has no feature 'DeviceLinkThroughputLimit'"),
        ({"trigger_source": "Line7"}, r"trigger_source 'Line7' is not supported .*Line0"),
    ]
    for kwargs, message in cases:
        source = aravis(guid=gv_camera.serial, **kwargs)
        with pytest.raises(FeatureError, match=message):
            source.open()
        assert not source.is_open
    with pytest.raises(SourceConfigError, match="needs mode 'triggered'"):
        aravis(guid=gv_camera.serial, trigger_source="Software")
    with pytest.raises(SourceConfigError, match="cannot be read by the cell"):
        aravis(pixel_format="Mono12Packed")
    # Generic features: written with their type.
    source = aravis(guid=gv_camera.serial, genicam_features=("GainRaw=7", "ExposureTimeAbs=1234"))
    source.open()
    try:
        assert source._device.get_integer_feature_value("GainRaw") == 7
        assert source._device.get_float_feature_value("ExposureTimeAbs") == 1234.0
    finally:
        source.close()


@needs_aravis
@pytest.mark.slow
def test_aravis_reconnects_after_a_cable_pull(gv_camera):
    source = aravis(guid=gv_camera.serial, fps=20.0)
    rec = Recorder(source, rate_hz=20.0, backoff_initial_s=0.2, backoff_max_s=1.0)
    assert rec.loop.open()
    rec.loop.start()
    try:
        assert rec.wait(lambda: len(rec.results) >= 5, 10.0)
        gv_camera.kill()
        assert rec.wait(lambda: rec.loop.state == RETRYING, 20.0), rec.events
        assert "CAMERA_UNAVAILABLE" in rec.codes()
        before = len(rec.results)
        gv_camera.start()
        assert rec.wait(lambda: rec.loop.state == STREAMING and len(rec.results) >= before + 5, 30.0), rec.events
        assert "CAMERA_RECOVERED" in rec.codes() and rec.loop.reconnects == 1
    finally:
        rec.loop.close()
    down = next(message for _, code, message in rec.events if code == "CAMERA_UNAVAILABLE")
    assert "control lost" in down or "does not answer" in down or "not found" in down, down


@needs_aravis
def test_aravis_lost_packets_and_frames_in_diagnostics(gv_camera):
    # The fake camera restarted dropping 3 of 1000 GVSP packets: frames go missing, the stream counters say so.
    gv_camera.kill()
    gv_camera.lost = 3
    gv_camera.start()
    try:
        source = aravis(guid=gv_camera.serial, fps=25.0)
        source.open()
        try:
            deadline = time.monotonic() + 20.0
            # until frames were both lost and grabbed and the stream counted a missing packet: the first frames
            # may all be lost (once it stopped after two lost frames, before the first good one), and frames lost
            # while the stream starts count no packet (once: 2 lost, 1 grabbed, 0 missing packets)
            while time.monotonic() < deadline and (
                source.stats()["lost_frames"] < 2
                or source.stats()["frames_grabbed"] == 0
                or source.stats()["missing_packets"] == 0
            ):
                with contextlib.suppress(NoFrameYetError):
                    source.read()
            stats = source.stats()
        finally:
            source.close()
    finally:
        gv_camera.kill()
        gv_camera.lost = 0
        gv_camera.start()
    assert stats["lost_frames"] >= 2 and stats["missing_packets"] > 0, stats
    assert stats["frames_grabbed"] > 0
    assert {"resend_requests", "resent_packets", "missing_frames", "buffer_underruns"} <= set(stats)


@needs_aravis
def test_aravis_bayer_frames_are_demosaiced_for_the_model_like_training(gv_camera):
    source = aravis(guid=gv_camera.serial, pixel_format="BayerRG8", width=64, height=48)
    source.open()
    try:
        frame = None
        for _ in range(50):
            with contextlib.suppress(NoFrameYetError):
                frame = source.read()
                break
    finally:
        source.close()
    assert frame is not None and frame.encoding == "bayer_rggb8" and frame.image.shape == (48, 64)
    # Edge and training both use to_bgr8 (one OpenCV call): identical to OpenCV's own demosaic of the mosaic.
    np.testing.assert_array_equal(
        to_bgr8(frame.image, frame.encoding), cv2.cvtColor(frame.image, cv2.COLOR_BayerBG2BGR)
    )


# ---------------------------------------------------------------------------------------- pylon (emulation)


def _pylon_reason() -> str:
    os.environ.setdefault("PYLON_CAMEMU", "2")
    from qc_cell.camera.sources.pylon import pylon_available

    return pylon_available()


PYLON_MISSING = _pylon_reason()
needs_pylon = pytest.mark.skipif(bool(PYLON_MISSING), reason=PYLON_MISSING or "pylon")


def pylon(mode: str = "free_run", **kwargs):
    return build_source(SourceSettings(kind="pylon", mode=mode, **kwargs))


@needs_pylon
def test_pylon_emulation_free_run_with_the_same_parameters():
    source = pylon(
        guid="0815-0001", pixel_format="Mono12", width=320, height=240, offset_x=8, offset_y=4, binning_x=1,
        exposure=1500.0, gain=2.0, fps=40.0,
    )  # fmt: skip
    rec = Recorder(source, rate_hz=1.0)
    assert rec.loop.open()
    nodes = source._nodes
    assert [nodes.GetNode(n).ToString() for n in ("PixelFormat", "Width", "Height", "OffsetX", "OffsetY")] == [
        "Mono12", "320", "240", "8", "4",
    ]  # fmt: skip
    assert float(nodes.GetNode("ExposureTime").GetValue()) == 1500.0
    assert float(nodes.GetNode("AcquisitionFrameRate").GetValue()) == 40.0
    rec.loop.start()
    try:
        assert rec.wait(lambda: len(rec.results) >= 10, 10.0), rec.events
    finally:
        rec.loop.close()
    frame = rec.results[-1].frame
    assert frame.encoding == "mono16" and frame.image.shape == (240, 320) and frame.image.dtype == np.uint16
    assert int(frame.image.max()) > 4095 and not (frame.image & 0xF).any()  # 12 bit at the top of 16
    assert source.stats()["camera"] == "Emulation-0815-0001"


@needs_pylon
def test_pylon_shifts_12_bit_frames_straight_into_the_buffer_the_driver_gives():
    source = pylon(guid="0815-0001", pixel_format="Mono12", width=64, height=48, fps=40.0)
    given: list[np.ndarray] = []
    source.frame_allocator = lambda shape, dtype: given.append(np.zeros(shape, dtype)) or given[-1]
    rec = Recorder(source, rate_hz=1.0)
    assert rec.loop.open()
    rec.loop.start()
    try:
        assert rec.wait(lambda: len(rec.results) >= 3, 10.0), rec.events
    finally:
        rec.loop.close()
    frames = [r.frame for r in rec.results]
    assert len(given) >= len(frames) and all(any(f.image is g for g in given) for f in frames)  # the decode's target
    image = frames[-1].image
    assert image.dtype == np.uint16 and int(image.max()) > 4095 and not (image & 0xF).any()  # shifted into it


@needs_pylon
def test_pylon_emulation_software_trigger_and_clear_errors():
    source = pylon("triggered", trigger_source="Software", pixel_format="BayerRG8", trigger_timeout_s=3.0)
    rec = Recorder(source, "triggered", max_trigger_age_s=5.0)
    assert rec.loop.open()
    rec.loop.start()
    try:
        for i in range(3):
            rec.loop.request(CaptureRequest(f"part-{i}", time.time_ns()))
        assert rec.wait(lambda: len(rec.results) == 3, 10.0)
    finally:
        rec.loop.close()
    assert all(r.frame is not None and r.frame.encoding == "bayer_rggb8" for r in rec.results), [
        r.error for r in rec.results
    ]
    assert source.stats()["software_triggers"] == 3
    for kwargs, message in [
        ({"pixel_format": "RGB8"}, r"'RGB8' is not supported by PixelFormat .*RGB8Packed"),
        ({"genicam_features": ("NoSuchFeature=1",)}, "has no feature 'NoSuchFeature'"),
        ({"trigger_source": "Line9"}, r"trigger_source 'Line9' is not supported"),
    ]:
        with pytest.raises(FeatureError, match=message):
            pylon(**kwargs).open()
    with pytest.raises(Exception, match="camera 4711 not found"):
        pylon(guid="4711").open()


# ---------------------------------------------------------------------------------------- bag (rosbags)


def write_bag(path: Path, storage: str, kind: str, count: int = 6, period_s: float = 0.1) -> list[np.ndarray]:
    """A rosbag2 recording of `count` images on camera/image_raw (raw, compressed or PartFrame with truth)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from qc_cell.camera.sources.bag import cell_typestore

    store = cell_typestore()
    types = store.types
    Image, Compressed = types["sensor_msgs/msg/Image"], types["sensor_msgs/msg/CompressedImage"]  # noqa: N806
    PartFrame, Header = types["qc_interfaces/msg/PartFrame"], types["std_msgs/msg/Header"]  # noqa: N806
    Time = types["builtin_interfaces/msg/Time"]  # noqa: N806
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    msgtype = {"raw": Image, "compressed": Compressed, "partframe": PartFrame}[kind].__msgtype__
    topic = (
        "camera/frames" if kind == "partframe" else "camera/image_raw" + ("/compressed" if kind == "compressed" else "")
    )
    images = []
    start = 1_700_000_000_000_000_000
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connection = writer.add_connection(topic, msgtype, typestore=store)
        other = writer.add_connection("rosout_like", "std_msgs/msg/String", typestore=store)
        writer.write(
            other, start, store.serialize_cdr(store.types["std_msgs/msg/String"](data="hello"), "std_msgs/msg/String")
        )
        for i in range(count):
            stamp = start + int(i * period_s * 1e9)
            image = np.full((24, 32, 3), (10 * i, 100, 200 - 10 * i), np.uint8)
            images.append(image)
            header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam")
            raw = Image(
                header=header, height=24, width=32, encoding="bgr8", is_bigendian=0, step=96, data=image.ravel()
            )
            if kind == "raw":
                msg = raw
            elif kind == "compressed":
                _, png = cv2.imencode(".png", image)
                msg = Compressed(header=header, format="png", data=png.ravel())
            else:
                msg = PartFrame(
                    header=header, steady_stamp=Time(sec=0, nanosec=0), part_id=f"rec-{i}", sequence=i, source="rec",
                    encoder_count=-1, image=raw,
                    capture_ok=True, capture_error="", ground_truth=2 if i % 2 else 1,
                    defect_type="scratch" if i % 2 else "",
                    # a recorder is not attached to the frame pool: it records the pixels inline
                    pool_frame=types["qc_interfaces/msg/FrameHandle"](pool="qc_frames_x", in_pool=False, slot=0,
                                                                      generation=0),
                )  # fmt: skip
            writer.write(connection, stamp, store.serialize_cdr(msg, msgtype))
    return images


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("kind", ["raw", "compressed", "partframe"])
def test_bag_plays_images_of_both_storage_formats(tmp_path, storage, kind):
    bag = tmp_path / f"line_{storage}_{kind}"
    images = write_bag(bag, storage, kind)
    source = build_source(SourceSettings(kind="bag", path=str(bag), playback="fast"))
    rec = Recorder(source, rate_hz=100.0)
    assert rec.loop.open()
    rec.loop.start()
    try:
        assert rec.wait(lambda: "SOURCE_FINISHED" in rec.codes(), 10.0), rec.events
    finally:
        rec.loop.close()
    assert len(rec.results) == len(images)
    for i, (expected, result) in enumerate(zip(images, rec.results, strict=True)):
        assert result.frame.encoding == "bgr8" and result.frame.origin.startswith(f"bag:{bag.name}#{i}@")
        np.testing.assert_array_equal(result.frame.image, expected)
        truth = (("defect", "scratch") if i % 2 else ("good", None)) if kind == "partframe" else (None, None)
        assert (result.frame.label, result.frame.defect_type) == truth
    assert source.stats() == {"bag_images": 6, "played": 6, "skipped_images": 0, "passes": 0}


def test_bag_at_recorded_pace_and_looping(tmp_path):
    bag = tmp_path / "paced"
    write_bag(bag, "mcap", "raw", count=5, period_s=0.1)
    source = build_source(SourceSettings(kind="bag", path=str(bag), playback="recorded", loop=True))
    assert source.self_paced
    rec = Recorder(source, rate_hz=0.5)  # recorded pace, not rate_hz
    assert rec.loop.open()
    rec.loop.start()
    try:
        assert rec.wait(lambda: len(rec.results) >= 12, 10.0)
    finally:
        rec.loop.close()
    stamps = np.array([r.stamp_ns for r in rec.results[:5]]) / 1e9
    assert 0.35 <= stamps[-1] - stamps[0] <= 1.5, np.diff(stamps)  # 4 gaps of 0.1 s as recorded
    assert source.stats()["passes"] >= 2


def test_bag_errors_name_the_problem(tmp_path):
    bag = tmp_path / "two_topics"
    write_bag(bag, "sqlite3", "raw", count=1)
    with pytest.raises(SourceConfigError, match=r"no image topic 'nope'.*camera/image_raw"):
        build_source(SourceSettings(kind="bag", path=str(bag), topic="nope")).open()
    missing = build_source(SourceSettings(kind="bag", path=str(tmp_path / "gone")))
    with pytest.raises(Exception, match="does not exist"):
        missing.open()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metadata.yaml").write_text("not: a bag\n")
    with pytest.raises(Exception, match="cannot be read"):
        build_source(SourceSettings(kind="bag", path=str(tmp_path / "junk"))).open()
    with pytest.raises(SourceConfigError, match="playback"):
        build_source(SourceSettings(kind="bag", path=str(bag), playback="slow"))


def test_genicam_settings_reject_bad_values():
    with pytest.raises(SourceConfigError, match="Name=value"):
        GenICamSettings(features=("Gain",))
    with pytest.raises(SourceConfigError, match="ros_image subscribes through"):
        build_source(SourceSettings(kind="ros_image"))


def test_golden_bayer_and_12_bit_camera_frames_score_identically_at_the_edge_and_in_training():
    """A camera frame goes to the model through the edge (PartFrame image -> decode_for_model -> preprocess) and,
    saved as an image file, through training (decode_image -> preprocess): the model input must be identical."""
    pytest.importorskip("tqdm", reason="the training side needs the cloud tools (requirements/cloud.txt)")
    from qc_cell.ros.images import array_to_image, decode_for_model
    from qc_cloud.training.datasets import decode_image
    from qc_contract.model_manifest import Preprocessing
    from qc_contract.preprocess import preprocess

    spec = Preprocessing(input_width=40, input_height=32)
    rng = np.random.default_rng(7)
    mosaic, encoding = pixels_from_buffer(rng.integers(0, 256, 64 * 48, np.uint8).tobytes(), 64, 48, "BayerRG8")
    mono12, encoding12 = pixels_from_buffer(rng.integers(0, 4096, 64 * 48, "<u2").tobytes(), 64, 48, "Mono12")
    for pixels, enc in ((mosaic, encoding), (mono12, encoding12)):
        edge_pixels, order = decode_for_model(array_to_image(np.ascontiguousarray(pixels), enc))
        edge = preprocess(edge_pixels, spec, order)
        saved = to_bgr8(pixels, enc) if enc.startswith("bayer_") else pixels  # what a data set keeps of the frame
        ok, png = cv2.imencode(".png", saved)
        assert ok
        training = preprocess(decode_image(png.tobytes(), "frame.png"), spec, "BGR")
        np.testing.assert_array_equal(edge, training)
    assert encoding == "bayer_rggb8" and encoding12 == "mono16"


def test_golden_bayer_frames_demosaiced_over_the_roi_only_give_the_training_input():
    """With a model ROI the edge demosaics only the ROI of the raw mosaic; training demosaics the whole saved
    frame and crops: the model inputs must be identical (ROIs at odd offsets, at the frame's edges, 8 and 16 bit)."""
    from qc_cell.ros.images import array_to_image, decode_for_model
    from qc_contract.model_manifest import Preprocessing
    from qc_contract.preprocess import preprocess

    rng = np.random.default_rng(11)
    for pixel_format, width, height in (("BayerRG8", 64, 48), ("BayerGB8", 70, 50), ("BayerBG16", 64, 48)):
        dtype = np.uint8 if pixel_format.endswith("8") else "<u2"
        high = 256 if dtype is np.uint8 else 65536
        mosaic, encoding = pixels_from_buffer(rng.integers(0, high, width * height, dtype).tobytes(), width, height,
                                              pixel_format)  # fmt: skip
        edge_pixels, order = decode_for_model(array_to_image(np.ascontiguousarray(mosaic), encoding))
        assert order == encoding[:10] and np.shares_memory(edge_pixels, edge_pixels)  # raw, not demosaiced
        for roi in ((0, 0, width, height), (1, 3, 20, 17), (5, 0, 30, height), (width - 9, height - 7, 9, 7)):
            spec = Preprocessing(input_width=16, input_height=12, roi=roi)
            saved = to_bgr8(mosaic, encoding)  # what a data set keeps of the frame (the whole frame, demosaiced)
            np.testing.assert_array_equal(preprocess(edge_pixels, spec, order), preprocess(saved, spec, "BGR"))


# ---------------------------------------------------------------------------------- capture into given buffers


def test_the_decode_step_writes_into_a_given_buffer_with_the_same_pixels():
    from qc_cell.camera.sources.stream import finish_pixels

    rng = np.random.default_rng(3)
    for pixel_format, data in (
        ("Mono8", rng.integers(0, 256, 24 * 16, np.uint8).tobytes()),
        ("Mono12", rng.integers(0, 4096, 24 * 16, "<u2").tobytes()),
        ("BayerRG16", rng.integers(0, 65536, 24 * 16, "<u2").tobytes()),
    ):
        decoded, _ = pixels_from_buffer(data, 24, 16, pixel_format)
        raw, _ = pixels_from_buffer(data, 24, 16, pixel_format, finish=False)
        target = np.empty(decoded.shape, decoded.dtype.newbyteorder("="))
        assert finish_pixels(raw, pixel_format, target) is target
        np.testing.assert_array_equal(target, decoded)


@needs_aravis
def test_aravis_decodes_each_frame_straight_into_the_buffer_the_driver_gives(gv_camera):
    source = aravis(guid=gv_camera.serial, pixel_format="Mono8", width=64, height=48)
    given: list[np.ndarray] = []

    def allocate(shape, dtype):
        given.append(np.full(shape, 7, dtype))  # stands for a frame-pool slot
        return given[-1]

    source.frame_allocator = allocate
    source.open()
    try:
        frames = []
        end = time.monotonic() + 10.0
        while len(frames) < 3 and time.monotonic() < end:
            with contextlib.suppress(NoFrameYetError):
                frames.append(source.read())
    finally:
        source.close()
    assert len(frames) == 3 and len(given) == 3
    for frame, buffer in zip(frames, given, strict=True):
        assert frame.image is buffer and frame.image.shape == (48, 64) and frame.encoding == "mono8"
    assert not all((f.image == 7).all() for f in frames)  # the camera's pixels, not the buffer's fill
