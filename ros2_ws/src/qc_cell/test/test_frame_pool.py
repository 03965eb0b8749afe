"""The camera driver's shared-memory frame pool (qc_cell.camera.frame_pool), without ROS: writer and readers in
this process and in other processes (a consumer killed while it holds leases, a writer lapping a slow reader,
a driver restarted while a consumer holds a handle, a dead writer's pool removed)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from qc_cell.camera import frame_pool
from qc_cell.camera.frame_pool import OVERWRITTEN, UNAVAILABLE, FrameGoneError, FramePool, PoolError, PoolReader

pytestmark = pytest.mark.skipif(not frame_pool.SHM_DIR.is_dir(), reason="no /dev/shm")


@pytest.fixture
def prefix():
    name = f"qc_frames_test_{secrets.token_hex(3)}"
    yield name
    for path in frame_pool.SHM_DIR.glob(f"{name}_*"):
        path.unlink(missing_ok=True)


def frame(value: int, shape=(48, 64, 3)) -> np.ndarray:
    return np.full(shape, value % 256, dtype=np.uint8)


def wait_until(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_frame_goes_through_by_handle_and_the_slot_comes_back_after_release(prefix):
    pool = FramePool.create(prefix, slots=2, slot_bytes=frame(0).nbytes, lease_s=30.0)
    reader = PoolReader("/cell/inference")
    try:
        ref = pool.write(frame(7))
        assert ref is not None and ref.generation % 2 == 0 and ref.pool == pool.name
        lease = reader.lease(ref)
        pixels = lease.pixels()
        assert not pixels.flags.writeable and np.all(pixels == 7) and lease.intact()
        assert pool.readers() == {"/cell/inference"}
        ref2 = pool.write(frame(8))
        assert ref2 is not None and ref2.slot != ref.slot
        # No slot free: the frame still waiting for its consumer is taken (the oldest), never the leased one.
        ref3 = pool.write(frame(9))
        assert ref3 is not None and ref3.slot == ref2.slot and pool.reclaimed == 1
        with pytest.raises(FrameGoneError) as gone:
            reader.lease(ref2)
        assert gone.value.reason == OVERWRITTEN
        lease3 = reader.lease(ref3)
        # Every slot leased by a consumer: the pool is bounded, the writer is refused (the caller sends inline).
        assert pool.write(frame(10)) is None and pool.full == 1 and pool.leased() == 2
        lease.release()
        ref4 = pool.write(frame(11))
        assert ref4 is not None and ref4.slot == ref.slot and ref4.generation > ref.generation
        assert not lease.intact() and lease3.intact()  # the released frame was reused: a late use is detected
        with pytest.raises(FrameGoneError) as gone:
            reader.lease(ref)
        assert gone.value.reason == OVERWRITTEN
    finally:
        reader.close()
        pool.close()
    assert not pool.path.exists()


def test_a_frame_captured_into_a_reserved_slot_is_committed_without_a_copy_or_given_up(prefix):
    pool = FramePool.create(prefix, slots=2, slot_bytes=frame(0).nbytes, lease_s=0.05)
    reader = PoolReader("/cell/inference")
    try:
        old = pool.write(frame(1))
        assert wait_until(lambda: pool.leased() == 0, 5.0)  # its hand-off ran out: the slot may be taken again
        target = pool.reserve(frame(0).shape, np.uint8)
        assert pool.reserved(target) and not pool.reserved(frame(0))
        target[...] = 42  # the camera's exposure / decode lands in the slot
        ref = pool.commit()
        assert np.all(reader.lease(ref).pixels() == 42)
        # A frame dropped after its slot was reserved: the next reservation replaces it, and the slot's
        # previous frame, partly overwritten, is never readable again.
        slot = pool.reserve(frame(0).shape, np.uint8)
        slot[...] = 99
        again = pool.reserve(frame(0).shape, np.uint8)
        assert not pool.reserved(slot) and pool.reserved(again)
        pool.cancel()
        assert not pool.reserved(again)
        with pytest.raises(FrameGoneError) as gone:
            reader.lease(old)
        assert gone.value.reason == OVERWRITTEN
    finally:
        reader.close()
        pool.close()


def test_an_unleased_handle_is_overwritten_once_its_hand_off_expires(prefix):
    pool = FramePool.create(prefix, slots=2, slot_bytes=frame(0).nbytes, lease_s=0.05)
    reader = PoolReader("r")
    try:
        first = pool.write(frame(1))
        assert pool.write(frame(2)) is not None
        assert wait_until(lambda: pool.write(frame(3)) is not None, 5.0)  # hand-offs expired: slots reused
        with pytest.raises(FrameGoneError) as gone:
            reader.lease(first)
        assert gone.value.reason == OVERWRITTEN
    finally:
        reader.close()
        pool.close()


def test_shared_memory_unavailable_or_too_small_is_a_clear_error(prefix, tmp_path):
    with pytest.raises(PoolError, match="does not exist"):
        FramePool.create(prefix, 2, 1024, 1.0, directory=tmp_path / "missing")
    with pytest.raises(PoolError, match="slots"):
        FramePool.create(prefix, 1, 1024, 1.0)
    pool = FramePool.create(prefix, 2, 1024, 1.0)
    try:
        with pytest.raises(PoolError, match="does not fit"):
            pool.write(np.zeros(8192, np.uint8))
    finally:
        pool.close()
    reader = PoolReader("r")
    ref = frame_pool.FrameRef(f"{prefix}_gone", 0, 2, (4, 4), np.dtype(np.uint8))
    with pytest.raises(FrameGoneError) as gone:
        reader.lease(ref)
    assert gone.value.reason == UNAVAILABLE and "cannot open" in str(gone.value)


def test_a_restarted_writer_makes_a_new_pool_and_an_old_handle_stays_correct_or_is_refused(prefix):
    old = FramePool.create(prefix, 2, frame(0).nbytes, 30.0)
    holder, newcomer = PoolReader("holder"), PoolReader("newcomer")
    try:
        old_ref = old.write(frame(11))
        held = holder.lease(old_ref)
        old.close()  # the driver stops (or is restarted): its pool file is removed
        new = FramePool.create(prefix, 2, frame(0).nbytes, 30.0)
        assert new.name != old.name
        new_ref = new.write(frame(12))
        # The consumer that held the old frame still reads it intact: nothing writes that pool any more.
        assert np.all(held.pixels() == 11) and held.intact()
        assert np.all(holder.lease(new_ref).pixels() == 12)
        # A consumer that never mapped the old pool is told the frame is gone, never shown another one.
        with pytest.raises(FrameGoneError) as gone:
            newcomer.lease(old_ref)
        assert gone.value.reason == UNAVAILABLE
        new.close()
    finally:
        holder.close()
        newcomer.close()


# ---------------------------------------------------------------------------------------------- other processes

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from qc_cell.camera.frame_pool import FrameGoneError, FrameRef, PoolReader, FramePool
    cmd = json.loads(sys.argv[1])
    if cmd["role"] == "hog":  # lease every given frame, say so, then wait to be killed
        reader = PoolReader("hog")
        for slot, gen in cmd["refs"]:
            reader.lease(FrameRef(cmd["pool"], slot, gen, tuple(cmd["shape"]), np.dtype(np.uint8)))
        print("LEASED", flush=True)
        time.sleep(600)
    elif cmd["role"] == "slow":  # read frames named on stdin slowly; report what was intact and what it held
        reader = PoolReader("slow")
        for line in sys.stdin:
            slot, gen, value = json.loads(line)
            try:
                lease = reader.lease(FrameRef(cmd["pool"], slot, gen, tuple(cmd["shape"]), np.dtype(np.uint8)))
                pixels = lease.pixels()
                lo = int(pixels.min()); time.sleep(cmd["delay"]); hi = int(pixels.max())
                status = "intact" if lease.intact() else "overwritten"
                lease.release()
            except FrameGoneError as exc:
                status, lo, hi = exc.reason, -1, -1
            print(json.dumps([value, status, lo, hi]), flush=True)
    elif cmd["role"] == "writer":  # a driver that dies without closing its pool
        pool = FramePool.create(cmd["prefix"], 2, 4096, 1.0)
        print(pool.name, flush=True)
        time.sleep(600)
    """
)


def child(command: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(command)], stdout=subprocess.PIPE, text=True, **kwargs
    )


def test_a_consumer_killed_while_holding_slots_leaks_nothing(prefix):
    lease_s = 1.0
    pool = FramePool.create(prefix, 3, frame(0).nbytes, lease_s)
    try:
        refs = [pool.write(frame(i)) for i in range(3)]
        held = [[r.slot, r.generation] for r in refs]
        hog = child({"role": "hog", "pool": pool.name, "shape": [48, 64, 3], "refs": held})
        try:
            assert hog.stdout.readline().strip() == "LEASED"
            killed_at = time.monotonic()
            hog.send_signal(signal.SIGKILL)
            hog.wait(10)
        finally:
            if hog.poll() is None:
                hog.kill()
        assert pool.write(frame(5)) is None  # every slot leased by the dead consumer, for now
        assert wait_until(lambda: pool.write(frame(6)) is not None, lease_s + 5.0), "slots never came back"
        assert time.monotonic() - killed_at > lease_s * 0.5  # came back by expiry, not by accident
        assert wait_until(lambda: pool.write(frame(7)) is not None, 5.0) and pool.write(frame(8)) is not None
    finally:
        pool.close()


def test_a_writer_lapping_a_slow_reader_is_detected_and_no_torn_frame_passes(prefix):
    shape = (256, 256, 3)
    pool = FramePool.create(prefix, 2, int(np.prod(shape)), lease_s=0.02)  # leases far shorter than the reads
    reader = child({"role": "slow", "pool": pool.name, "shape": list(shape), "delay": 0.05}, stdin=subprocess.PIPE)
    results = []
    try:
        for value in range(12):
            ref = None
            while ref is None:
                ref = pool.write(frame(value, shape))
            reader.stdin.write(json.dumps([ref.slot, ref.generation, value]) + "\n")
            reader.stdin.flush()
            end = time.monotonic() + 0.08  # keep capturing while the reader reads (other frames, value 200)
            while time.monotonic() < end:
                pool.write(frame(200, shape))
                time.sleep(0.003)
            results.append(json.loads(reader.stdout.readline()))
    finally:
        reader.stdin.close()
        reader.wait(30)
    statuses = [status for _, status, _, _ in results]
    assert "overwritten" in statuses or OVERWRITTEN in statuses, statuses
    for expected, status, lo, hi in results:
        if status == "intact":  # a frame reported intact is exactly the frame that was written, not torn
            assert lo == hi == expected, (expected, lo, hi)
    pool.close()


def test_the_pool_of_a_dead_writer_is_removed_and_a_live_one_kept(prefix):
    writer = child({"role": "writer", "prefix": prefix})
    try:
        dead_name = writer.stdout.readline().strip()
        assert (frame_pool.SHM_DIR / dead_name).exists()
        live = FramePool.create(prefix, 2, 4096, 1.0)
        assert frame_pool.remove_stale(prefix) == []  # both writers alive
    finally:
        writer.kill()
        writer.wait(10)
    assert frame_pool.remove_stale(prefix) == [dead_name]
    assert not (frame_pool.SHM_DIR / dead_name).exists() and live.path.exists()
    live.close()


def test_a_reader_registration_is_replaced_not_duplicated(prefix):
    pool = FramePool.create(prefix, 2, 4096, 1.0)
    first, again = PoolReader("/inference"), PoolReader("/inference")
    try:
        assert first.attach(pool.name) and again.attach(pool.name)
        assert pool.readers() == {"/inference"}
    finally:
        first.close()
        again.close()
        pool.close()
    assert not Path(pool.path).exists()


# ---------------------------------------------------------------------------------------------- the pipeline's side


def test_the_inference_pipeline_releases_every_leased_frame_exactly_once(prefix):
    """Every path a frame can take through the pipeline gives its slot back once: scored (here: no model),
    refused at once (failed capture, full queue), or still queued at shutdown."""
    from qc_cell.inference.pipeline import FrameJob, InferencePipeline

    pool = FramePool.create(prefix, 8, frame(0).nbytes, lease_s=30.0)
    reader = PoolReader("/inference")
    outcomes = []
    pipeline = InferencePipeline(outcomes.append, queue_size=2)
    released: list[str] = []

    def job(part_id: str, capture_ok: bool = True) -> FrameJob:
        lease = reader.lease(pool.write(frame(1)))

        def release() -> None:
            released.append(part_id)
            lease.release()

        return FrameJob(part_id, time.monotonic_ns(), lambda: (lease.pixels(), "BGR"), capture_ok=capture_ok,
                        verify=lambda: "", release=release)  # fmt: skip

    try:
        pipeline.submit(job("failed", capture_ok=False))
        # The worker is not started yet: two frames fill the queue, the third is refused.
        pipeline.submit(job("queued-1"))
        pipeline.submit(job("queued-2"))
        pipeline.submit(job("refused"))
        assert sorted(released) == ["failed", "refused"]
        pipeline.start()
        assert wait_until(lambda: len(outcomes) == 4, 10.0)
        assert wait_until(lambda: sorted(released) == ["failed", "queued-1", "queued-2", "refused"], 5.0)
        assert {o.reason for o in outcomes} == {"capture_failed", "queue_full", "no_model"}
        assert pool.leased() == 0  # every slot back
    finally:
        pipeline.stop()
        reader.close()
        pool.close()
    assert len(released) == len(set(released)) == 4


def test_a_bayer_frame_in_the_pool_is_demosaiced_where_consumed_from_the_slot_itself(prefix):
    """The consumer's path for a raw mosaic: FrameReceiver gives the mosaic as a view on the slot (no ROS Image, no
    copy), and preprocessing without a ROI demosaics it once, to the reference model input (the frame demosaiced
    whole by to_bgr8, as a data set keeps it). A mosaic with an odd side is refused with a clear error."""
    from qc_cell.ros.frame_transport import FrameReceiver
    from qc_cell.ros.images import image_description, to_bgr8
    from qc_contract.model_manifest import Preprocessing
    from qc_contract.preprocess import PreprocessError, preprocess
    from qc_interfaces.msg import FrameHandle, PartFrame

    rng = np.random.default_rng(4)
    pool = FramePool.create(prefix, 4, 300 * 400, lease_s=30.0)
    receiver = FrameReceiver("/cell/inference")
    spec = Preprocessing(input_width=32, input_height=24)
    try:
        for shape, encoding in (((300, 400), "bayer_grbg8"), ((300, 399), "bayer_rggb8")):
            mosaic = rng.integers(0, 256, shape, dtype=np.uint8)
            ref = pool.write(mosaic)
            msg = PartFrame(part_id="p", capture_ok=True)
            msg.image = image_description(mosaic, encoding, msg.header)
            msg.pool_frame = FrameHandle(pool=pool.name, in_pool=True, slot=ref.slot, generation=ref.generation)
            received = receiver.receive(msg)
            pixels, order = received.decode()
            assert order == encoding[:10] and pixels.shape == shape
            assert np.shares_memory(pixels, np.frombuffer(receiver.reader._pool.mm, np.uint8))  # the slot
            if shape[1] % 2 == 0:
                expected = preprocess(to_bgr8(mosaic, encoding), spec, "BGR")
                np.testing.assert_array_equal(preprocess(pixels, spec, order), expected)
            else:
                with pytest.raises(PreprocessError, match="399x300 has an odd side"):
                    preprocess(pixels, spec, order)
            assert received.verify() == ""
            received.release()
        assert pool.leased() == 0
    finally:
        receiver.close()
        pool.close()
