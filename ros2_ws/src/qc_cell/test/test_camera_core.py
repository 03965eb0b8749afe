"""The ROS-free camera core: sources (video, folder, synthetic, v4l2, gstreamer), part ids, framing, the capture
loop's modes, reconnects and failure answers."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from qc_cell.camera.capture import (
    DONE,
    FINISHED,
    RETRYING,
    STREAMING,
    Backoff,
    CaptureLoop,
    CaptureRequest,
    CaptureResult,
    CaptureSettings,
)
from qc_cell.camera.framing import Framing
from qc_cell.camera.part_ids import PartIdAllocator, PartIdError
from qc_cell.camera.sources import (
    EndOfStreamError,
    Frame,
    FrameSource,
    SourceConfigError,
    SourceSettings,
    SourceUnavailableError,
    build_source,
)
from qc_cell.camera.sources.folder import FolderSource, ground_truth_of
from qc_cell.camera.sources.opencv_capture import (
    JETSON_CSI_PIPELINE,
    GStreamerSource,
    V4l2Source,
    VideoFileSource,
    opencv_has_gstreamer,
)
from qc_contract.synthetic import SyntheticPartGenerator, write_mvtec_dataset


def write_video(path: Path, frames: int, size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    """An MJPG AVI of `frames` frames whose brightness encodes the frame number; returns what was written."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    written = []
    for i in range(frames):
        image = np.full((size[1], size[0], 3), 20 + 20 * i, np.uint8)
        writer.write(image)
        written.append(image)
    writer.release()
    return written


# ---------------------------------------------------------------------------------------------- part ids


def test_part_ids_are_unique_and_survive_restarts(tmp_path):
    state = tmp_path / "ids.json"
    first = PartIdAllocator("line3", state, block=10)
    ids = [first.next_id() for _ in range(25)]
    assert ids[0] == "line3-000000000" and len(set(ids)) == 25
    # A restart (or a crash at any point) continues after everything the first run may have handed out.
    second = PartIdAllocator("line3", state, block=10)
    later = [second.next_id() for _ in range(5)]
    assert not set(later) & set(ids)
    assert int(later[0].rsplit("-", 1)[1]) > int(ids[-1].rsplit("-", 1)[1])
    assert json.loads(state.read_text()) == {"prefix": "line3", "next_free": 40}
    assert [p.name for p in tmp_path.iterdir()] == ["ids.json"], "temporary files left behind"


def test_part_ids_are_unique_across_threads(tmp_path):
    allocator = PartIdAllocator("c", tmp_path / "ids.json", block=7)
    out: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [allocator.next_id() for _ in range(200)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 800


def test_corrupt_or_foreign_state_files_are_refused(tmp_path):
    state = tmp_path / "ids.json"
    state.write_text("{not json")
    with pytest.raises(PartIdError, match="corrupt"):
        PartIdAllocator("c", state)
    state.write_text(json.dumps({"prefix": "other", "next_free": 5}))
    with pytest.raises(PartIdError, match="belongs to prefix 'other'"):
        PartIdAllocator("c", state)
    with pytest.raises(ValueError, match="prefix"):
        PartIdAllocator("bad prefix!", tmp_path / "x.json")


def test_unwritable_state_file_is_reported_at_start(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PartIdError, match="cannot read part id state"):
        PartIdAllocator("c", tmp_path / "a_file" / "ids.json")
    allocator = PartIdAllocator("c", Path("/proc/qc_cell_no_such_dir/ids.json"))  # not creatable, even by root
    with pytest.raises(PartIdError, match="cannot write part id state"):
        allocator.check_writable()


# ---------------------------------------------------------------------------------------------- framing


def test_roi_is_a_view_and_downscale_resizes():
    image = np.arange(100 * 200 * 3, dtype=np.uint32).astype(np.uint8).reshape(100, 200, 3)
    crop = Framing(roi=(10, 20, 50, 40)).apply(image)
    assert crop.shape == (40, 50, 3) and np.shares_memory(crop, image)
    np.testing.assert_array_equal(crop, image[20:60, 10:60])
    assert Framing(roi=(10, 20, 50, 40), scale=0.5).apply(image).shape == (20, 25, 3)
    assert Framing().apply(image) is image
    assert Framing.from_parameters([0, 0, 0, 0], 1.0).roi is None


def test_bad_framing_is_rejected():
    with pytest.raises(ValueError, match="outside the 200x100 frame"):
        Framing(roi=(150, 0, 100, 10)).apply(np.zeros((100, 200), np.uint8))
    with pytest.raises(ValueError, match="4 values"):
        Framing.from_parameters([1, 2, 3], 1.0)
    with pytest.raises(ValueError, match="width, height > 0"):
        Framing(roi=(0, 0, 0, 10))
    with pytest.raises(ValueError, match="scale"):
        Framing(scale=0.0)


# ---------------------------------------------------------------------------------------------- sources


def test_video_source_reads_every_frame_then_ends(tmp_path):
    written = write_video(tmp_path / "line.avi", 5)
    source = VideoFileSource(str(tmp_path / "line.avi"))
    source.open()
    frames = [source.read() for _ in range(5)]
    with pytest.raises(EndOfStreamError, match="ended after 5 frames"):
        source.read()
    assert [f.encoding for f in frames] == ["bgr8"] * 5
    assert frames[0].origin == "video:line.avi#0" and frames[4].origin == "video:line.avi#4"
    # MJPG is lossy: compare the mean brightness that encodes the frame number.
    assert [round(float(f.image.mean()) / 20) for f in frames] == [round(float(w.mean()) / 20) for w in written]
    assert frames[0].label is None


def test_video_source_loops(tmp_path):
    write_video(tmp_path / "line.avi", 3)
    source = VideoFileSource(str(tmp_path / "line.avi"), loop=True)
    source.open()
    origins = [source.read().origin for _ in range(7)]
    assert origins == [f"video:line.avi#{i}" for i in (0, 1, 2, 0, 1, 2, 0)]


def test_missing_and_corrupt_videos_are_unavailable(tmp_path):
    with pytest.raises(SourceUnavailableError, match="does not exist"):
        VideoFileSource(str(tmp_path / "nope.avi")).open()
    bad = tmp_path / "bad.avi"
    bad.write_bytes(os.urandom(4096))
    source = VideoFileSource(str(bad))
    with pytest.raises(SourceUnavailableError, match=r"bad\.avi"):
        source.open()
        source.read()  # some builds open the garbage and only fail on the first read


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec") / "bottle"
    return write_mvtec_dataset(root, n_train_good=2, n_test_good=1, n_test_per_defect=1, width=64, height=64, seed=3)


def test_ground_truth_from_mvtec_paths():
    assert ground_truth_of(Path("/d/bottle/train/good/000.png")) == ("good", None)
    assert ground_truth_of(Path("/d/bottle/test/good/000.png")) == ("good", None)
    assert ground_truth_of(Path("/d/bottle/test/broken_small/004.png")) == ("defect", "broken_small")
    assert ground_truth_of(Path("/d/images/cam0/img.png")) == (None, None)


def test_folder_source_reads_mvtec_layout_with_ground_truth(mvtec):
    source = FolderSource(str(mvtec))
    source.open()
    frames = []
    with pytest.raises(EndOfStreamError):
        while True:
            frames.append(source.read())
    by_origin = {f.origin: f for f in frames}
    # 2 train + 1 test good + 4 defect types; the ground_truth masks are not parts.
    assert len(frames) == 7
    assert not any("ground_truth" in o for o in by_origin)
    assert (by_origin["folder:train/good/000.png"].label, by_origin["folder:train/good/000.png"].defect_type) == (
        "good",
        None,
    )
    scratch = by_origin["folder:test/scratch/000.png"]
    assert (scratch.label, scratch.defect_type, scratch.encoding) == ("defect", "scratch", "bgr8")
    expected = SyntheticPartGenerator(seed=3, width=64, height=64).part_with(2 + 1 + 3, "scratch").image
    np.testing.assert_array_equal(scratch.image, expected)


def test_folder_source_skips_corrupt_images_with_their_path(tmp_path):
    (tmp_path / "good").mkdir()
    cv2.imwrite(str(tmp_path / "good" / "a.png"), np.full((8, 8), 7, np.uint8))
    (tmp_path / "good" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cv2.imwrite(str(tmp_path / "good" / "c.png"), np.full((8, 8, 3), 9, np.uint8))
    warnings: list[str] = []
    source = FolderSource(str(tmp_path), loop=True, warn=warnings.append)
    source.open()
    origins = [source.read().origin for _ in range(4)]
    assert origins == ["folder:good/a.png", "folder:good/c.png", "folder:good/a.png", "folder:good/c.png"]
    assert warnings == [f"skipping unreadable image {tmp_path / 'good' / 'b.png'}"] * 2
    assert source.stats()["skipped_images"] == 2
    first = FolderSource(str(tmp_path))
    first.open()
    assert first.read().encoding == "mono8"


def test_folder_source_failures(tmp_path):
    with pytest.raises(SourceUnavailableError, match="does not exist"):
        FolderSource(str(tmp_path / "missing")).open()
    with pytest.raises(SourceUnavailableError, match="contains no images"):
        FolderSource(str(tmp_path)).open()
    (tmp_path / "x.png").write_bytes(b"not an image")
    source = FolderSource(str(tmp_path), loop=True, warn=lambda _: None)
    source.open()
    with pytest.raises(SourceUnavailableError, match="none of its 1 images is readable"):
        source.read()
    with pytest.raises(SourceConfigError, match="order"):
        FolderSource(str(tmp_path), order="random")


def test_folder_source_follows_linked_class_folders_and_survives_a_link_loop(tmp_path):
    """Class folders linked in from elsewhere (a network share) are read, with their ground truth; a link back to
    an ancestor is read once, not forever."""
    share = tmp_path / "share"
    for folder, value in (("good", 10), ("scratch", 20)):
        (share / folder).mkdir(parents=True)
        cv2.imwrite(str(share / folder / "000.png"), np.full((8, 8), value, np.uint8))
    root = tmp_path / "bottle"
    (root / "test").mkdir(parents=True)
    (root / "good").symlink_to(share / "good", target_is_directory=True)
    (root / "test" / "scratch").symlink_to(share / "scratch", target_is_directory=True)
    (root / "test" / "scratch_again").symlink_to(share / "scratch", target_is_directory=True)
    (share / "scratch" / "back_to_the_top").symlink_to(root, target_is_directory=True)  # a loop
    (root / "test" / "gone.png").symlink_to(tmp_path / "deleted.png")  # a dangling link: not an image

    warnings: list[str] = []
    source = FolderSource(str(root), warn=warnings.append)
    source.open()
    frames = []
    with pytest.raises(EndOfStreamError):
        while True:
            frames.append(source.read())
    truth = {frame.origin: (frame.label, frame.defect_type, int(frame.image.mean())) for frame in frames}
    assert truth == {
        "folder:good/000.png": ("good", None, 10),
        "folder:test/scratch/000.png": ("defect", "scratch", 20),
    }
    assert len(warnings) == 2 and all("already read through another path" in w for w in warnings), warnings
    assert {w.split(":")[0] for w in warnings} == {
        f"skipping {root / 'test' / 'scratch' / 'back_to_the_top'}",
        f"skipping {root / 'test' / 'scratch_again'}",
    }


def test_folder_shuffle_is_reproducible_and_complete(mvtec):
    def order(seed: int) -> list[str]:
        source = FolderSource(str(mvtec), order="shuffled", seed=seed)
        source.open()
        return [source.read().origin for _ in range(7)]

    assert order(1) == order(1)
    assert sorted(order(1)) == sorted(order(2))
    assert order(1) != sorted(order(1)) or order(2) != sorted(order(2))


def test_synthetic_source_matches_the_generator():
    source = build_source(SourceSettings(kind="synthetic", seed=4, width=96, height=64))
    source.open()
    generator = SyntheticPartGenerator(seed=4, width=96, height=64)
    for index in range(3):
        frame, part = source.read(), generator.part(index)
        assert frame.origin == f"synthetic:4:{index}"
        assert (frame.label, frame.defect_type) == (part.label, part.defect_type)
        np.testing.assert_array_equal(frame.image, part.image)


def test_v4l2_missing_device_is_unavailable_with_a_clear_message():
    source = V4l2Source("/dev/video_qc_missing")
    with pytest.raises(SourceUnavailableError, match="v4l2 device /dev/video_qc_missing does not exist"):
        source.open()
    with pytest.raises(SourceConfigError, match="FourCC"):
        V4l2Source("/dev/video0", pixel_format="MJPEG")


@pytest.mark.hardware
@pytest.mark.skipif(not Path("/dev/video0").exists(), reason="no V4L2 camera at /dev/video0 on this machine")
def test_v4l2_camera_delivers_frames():
    source = V4l2Source("/dev/video0", width=640, height=480)
    source.open()
    try:
        frame = source.read()
        assert frame.image.ndim in (2, 3) and frame.origin == "v4l2:/dev/video0"
    finally:
        source.close()


def test_gstreamer_settings_are_checked():
    with pytest.raises(SourceConfigError, match="appsink"):
        GStreamerSource("videotestsrc ! autovideosink")
    with pytest.raises(SourceConfigError, match="empty"):
        GStreamerSource("  ")
    assert "nvarguscamerasrc" in JETSON_CSI_PIPELINE and JETSON_CSI_PIPELINE.rstrip().endswith("sync=false")


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer; the refusal path cannot happen")
def test_gstreamer_without_opencv_support_is_a_config_error():
    with pytest.raises(SourceConfigError, match="without GStreamer"):
        GStreamerSource("videotestsrc ! videoconvert ! appsink").open()


@pytest.mark.skipif(not opencv_has_gstreamer(), reason="OpenCV built without GStreamer (PyPI opencv-python wheels)")
def test_gstreamer_test_pipeline_delivers_frames():
    source = GStreamerSource(
        "videotestsrc num-buffers=5 ! video/x-raw,width=64,height=48 ! videoconvert ! video/x-raw,format=BGR ! appsink"
    )
    source.open()
    try:
        assert source.read().image.shape == (48, 64, 3)
    finally:
        source.close()


# ---------------------------------------------------------------------------------------------- capture loop


class ScriptedSource(FrameSource):
    """A camera double for the loop's fault handling: opens fail `missing` times, then `frames_before_loss`
    frames come before a disconnect, after which it can be re-opened."""

    kind = "scripted"

    def __init__(
        self, missing: int = 0, frames_before_loss: int | None = None, hold: threading.Event | None = None
    ) -> None:
        self.missing = missing
        self.hold = hold  # read() waits for it: a camera that is slower than the triggers
        self.frames_before_loss = frames_before_loss
        self.opened = False
        self.open_attempts: list[float] = []
        self.index = 0

    @property
    def description(self) -> str:
        return "scripted"

    @property
    def is_open(self) -> bool:
        return self.opened

    def open(self) -> None:
        self.open_attempts.append(time.monotonic())
        if self.missing > 0:
            self.missing -= 1
            raise SourceUnavailableError("scripted camera missing")
        self.opened = True

    def read(self) -> Frame:
        if not self.opened:
            raise SourceUnavailableError("not open")
        if self.hold is not None:
            self.hold.wait(10.0)
        if self.frames_before_loss is not None:
            if self.frames_before_loss == 0:
                self.frames_before_loss = None
                raise SourceUnavailableError("scripted camera unplugged")
            self.frames_before_loss -= 1
        self.index += 1
        return Frame(np.full((4, 6, 3), self.index, np.uint8), "bgr8", f"scripted#{self.index}")

    def close(self) -> None:
        self.opened = False


class Recorder:
    def __init__(self) -> None:
        self.results: list[CaptureResult] = []
        self.events: list[tuple[str, str, str]] = []
        self._ids = iter(range(10**6))

    def next_id(self) -> str:
        return f"t-{next(self._ids)}"

    def loop(self, source: FrameSource, **settings) -> CaptureLoop:
        return CaptureLoop(
            source,
            Framing(),
            CaptureSettings(**{"backoff_initial_s": 0.05, "backoff_max_s": 0.2, **settings}),
            self.results.append,
            time.time_ns,
            self.next_id,
            lambda *event: self.events.append(event),
        )

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()


def test_backoff_doubles_up_to_the_maximum():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_free_run_numbers_parts_and_stops_at_max_parts():
    rec = Recorder()
    loop = rec.loop(ScriptedSource(), rate_hz=200.0, max_parts=6)
    assert loop.open()
    loop.start()
    try:
        assert rec.wait(lambda: loop.state == DONE)
        time.sleep(0.05)
    finally:
        loop.close()
    assert [r.part_id for r in rec.results] == [f"t-{i}" for i in range(6)]
    assert all(r.frame is not None and r.error == "" for r in rec.results)
    stamps = [r.stamp_ns for r in rec.results]
    assert stamps == sorted(stamps)
    assert ("info", "MAX_PARTS") in [e[:2] for e in rec.events]


def test_missing_camera_is_retried_with_growing_backoff_and_recovers():
    rec = Recorder()
    source = ScriptedSource(missing=4)
    loop = rec.loop(source, rate_hz=100.0)
    assert not loop.open()
    assert loop.snapshot()["last_error"] == "scripted camera missing"
    loop.start()
    try:
        assert loop.state == RETRYING
        assert rec.wait(lambda: len(rec.results) >= 3), f"never recovered: {rec.events}"
        assert loop.state == STREAMING and loop.reconnects == 1
    finally:
        loop.close()
    gaps = np.diff(source.open_attempts)
    assert len(source.open_attempts) == 5
    assert gaps[0] >= 0.04 and gaps[2] >= 0.15, f"retry delays do not grow: {gaps}"
    codes = [e[1] for e in rec.events]
    assert codes[0] == "CAMERA_UNAVAILABLE" and rec.events[0][0] == "error"
    assert "CAMERA_RECOVERED" in codes


def test_disconnect_mid_run_reconnects():
    rec = Recorder()
    loop = rec.loop(ScriptedSource(frames_before_loss=3), rate_hz=100.0)
    loop.open()
    loop.start()
    try:
        assert rec.wait(lambda: len(rec.results) >= 6)
    finally:
        loop.close()
    assert loop.reconnects == 1 and loop.dropped_frames == 1
    assert all(r.frame is not None for r in rec.results), "free-run makes no part without a frame"
    assert [e[1] for e in rec.events][:2] == ["CAMERA_UNAVAILABLE", "CAMERA_RECOVERED"]


def test_triggered_mode_serves_each_request_with_its_id():
    rec = Recorder()
    loop = rec.loop(ScriptedSource(), mode="triggered")
    loop.open()
    loop.start()
    try:
        for i in range(3):
            loop.request(CaptureRequest(f"plc-{i}", trigger_ns=1000 + i, encoder_count=500 + i))
        assert rec.wait(lambda: len(rec.results) == 3)
    finally:
        loop.close()
    assert [(r.part_id, r.encoder_count) for r in rec.results] == [("plc-0", 500), ("plc-1", 501), ("plc-2", 502)]
    assert all(r.frame is not None and r.stamp_ns > 10**18 for r in rec.results)  # capture time, not trigger time


def test_triggers_without_a_frame_are_answered_with_the_reason():
    rec = Recorder()
    loop = rec.loop(ScriptedSource(missing=1000), mode="triggered", queue_depth=2)
    loop.request(CaptureRequest("before-start", 5))  # not capturing yet
    loop.open()
    loop.start()
    try:
        loop.request(CaptureRequest("while-missing", 6, 77))
        assert rec.wait(lambda: len(rec.results) == 2)
    finally:
        loop.close()
    first, second = rec.results
    assert (first.part_id, first.frame, first.stamp_ns) == ("before-start", None, 5)
    assert "not capturing" in first.error
    assert (second.part_id, second.frame, second.encoder_count) == ("while-missing", None, 77)
    assert "camera unavailable: scripted camera missing" in second.error
    assert loop.failed_parts == 2


def test_stale_triggers_and_a_full_backlog_get_no_frame():
    rec = Recorder()
    hold = threading.Event()
    loop = rec.loop(ScriptedSource(hold=hold), mode="triggered", queue_depth=1, max_trigger_age_s=5.0)
    loop.open()
    loop.start()
    try:
        loop.request(CaptureRequest("in-camera", 1))
        assert rec.wait(lambda: loop.snapshot()["waiting_triggers"] == 0)  # the loop is blocked reading it
        loop.request(CaptureRequest("queued", 2))
        loop.request(CaptureRequest("overflow", 3))  # answered at once: the backlog holds one
        loop.request(CaptureRequest("old", 4, received=time.monotonic() - 10.0))
        assert [r.part_id for r in rec.results] == ["overflow", "old"]
        hold.set()
        assert rec.wait(lambda: len(rec.results) == 4)
    finally:
        hold.set()
        loop.close()
    by_id = {r.part_id: r for r in rec.results}
    assert "backlog full (1 parts waiting)" in by_id["overflow"].error
    assert by_id["in-camera"].frame is not None and by_id["queued"].frame is not None
    loop2 = rec.loop(ScriptedSource(), mode="triggered", max_trigger_age_s=0.05)
    loop2.open()
    loop2.start()
    try:
        loop2.request(CaptureRequest("late", 5, received=time.monotonic() - 1.0))
        assert rec.wait(lambda: len(rec.results) == 5)
    finally:
        loop2.close()
    assert rec.results[-1].frame is None and "the part has left the camera" in rec.results[-1].error


def test_finite_source_finishes_and_answers_later_triggers(mvtec):
    rec = Recorder()
    loop = rec.loop(FolderSource(str(mvtec)), mode="triggered")
    loop.open()
    loop.start()
    try:
        for i in range(8):
            loop.request(CaptureRequest(f"p{i}", i))
        assert rec.wait(lambda: len(rec.results) == 8)
    finally:
        loop.close()
    assert [r.frame is not None for r in rec.results] == [True] * 7 + [False]
    assert "no more frames" in rec.results[-1].error and loop.state == FINISHED


def test_framing_errors_become_parts_without_frame():
    rec = Recorder()
    loop = CaptureLoop(
        ScriptedSource(),
        Framing(roi=(0, 0, 100, 100)),
        CaptureSettings(mode="triggered"),
        rec.results.append,
        time.time_ns,
        rec.next_id,
        lambda *e: rec.events.append(e),
    )
    loop.open()
    loop.start()
    try:
        loop.request(CaptureRequest("p", 1))
        assert rec.wait(lambda: len(rec.results) == 1)
    finally:
        loop.close()
    assert rec.results[0].frame is None and "outside the 6x4 frame" in rec.results[0].error


# ---------------------------------------------------------------------------------------------- transport setting


def test_the_cell_ships_its_image_transport_profile():
    """cell_graph.ENVIRONMENT points every node at the Fast DDS profile chosen by bench_image_transport.py."""
    import xml.etree.ElementTree as ET

    from qc_cell.cell_graph import ENVIRONMENT, PROFILE_VARIABLE

    profile = Path(ENVIRONMENT[PROFILE_VARIABLE])
    assert profile.is_file(), f"{PROFILE_VARIABLE} points to a missing file: {profile}"
    ns = {"dds": "http://www.eprosima.com"}
    root = ET.parse(profile).getroot()
    segments = [int(e.text) for e in root.iterfind(".//dds:transport_descriptor/dds:segment_size", ns)]
    assert segments and min(segments) >= 2 * 1920 * 1080 * 3, "the SHM segment must hold two 1080p bgr8 frames"
    participant = root.find(".//dds:participant", ns)
    assert participant is not None and participant.get("is_default_profile") == "true"
    assert "glibc.malloc.mmap_threshold=" in ENVIRONMENT["GLIBC_TUNABLES"]
