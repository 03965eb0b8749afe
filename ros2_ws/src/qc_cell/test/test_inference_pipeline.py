"""The scoring pipeline (no ROS): one outcome per frame whatever happens, explicit backpressure, deadline,
bad input, NaN outputs, batching, and hot swap under a live stream."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from qc_cell.inference.backends import BackendOptions, create_backend
from qc_cell.inference.model import LoadedModel
from qc_cell.inference.pipeline import (
    BAD_IMAGE,
    CAPTURE_FAILED,
    DEADLINE,
    MODEL_ERROR,
    NAN_OUTPUT,
    NO_MODEL,
    QUEUE_FULL,
    SHUTDOWN,
    FrameJob,
    ImageError,
    InferencePipeline,
    Outcome,
    SequenceGaps,
)
from qc_cell.inference.synthetic_models import expected_probability, uniform_image, write_package
from qc_contract.model_manifest import Manifest


def load(package, max_batch: int = 4) -> LoadedModel:
    manifest = Manifest.load(package)
    backend = create_backend("onnxruntime", package / "model.onnx", manifest, BackendOptions(max_batch=max_batch))
    return LoadedModel(package, manifest, backend)


class Collector:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def __call__(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def wait(self, count: int, timeout: float = 10.0) -> list[Outcome]:
        end = time.monotonic() + timeout
        while time.monotonic() < end and len(self.outcomes) < count:
            time.sleep(0.005)
        assert len(self.outcomes) == count, f"expected {count} outcomes, got {len(self.outcomes)}"
        return list(self.outcomes)

    def by_part(self) -> dict[str, Outcome]:
        return {o.job.part_id: o for o in self.outcomes}


def job(part_id: str, level: int = 128, **kw) -> FrameJob:
    image = uniform_image(level)
    return FrameJob(part_id, time.monotonic_ns(), lambda: (image, "BGR"), **kw)


@pytest.fixture
def package(tmp_path):
    write_package(tmp_path / "v1", "1.0.0", gain=2.0)
    return tmp_path / "v1"


@pytest.fixture
def pipeline_factory():
    made = []

    def make(**kw) -> tuple[InferencePipeline, Collector]:
        sink = Collector()
        pipeline = InferencePipeline(sink, **kw)
        made.append(pipeline)
        return pipeline, sink

    yield make
    for pipeline in made:
        pipeline.stop()


def test_every_frame_gets_one_correct_result(package, pipeline_factory):
    pipeline, sink = pipeline_factory(queue_size=50)
    pipeline.swap(load(package))
    model = pipeline.model
    pipeline.start()
    levels = [0, 30, 90, 128, 180, 255] * 3
    for i, level in enumerate(levels):
        assert pipeline.submit(job(f"p{i}", level))
    outcomes = sink.wait(len(levels))
    assert [o.job.part_id for o in outcomes] == [f"p{i}" for i in range(len(levels))]  # in arrival order
    for outcome, level in zip(outcomes, levels, strict=True):
        assert outcome.ok and outcome.reason == "" and outcome.model_version == "1.0.0"
        assert outcome.backend == "onnxruntime"
        expected = expected_probability(uniform_image(level), model.manifest.preprocessing)
        assert outcome.probability == pytest.approx(expected, abs=1e-5)
        assert outcome.queue_ms >= 0 and outcome.preprocess_ms > 0 and outcome.inference_ms > 0
    stats = pipeline.stats()
    assert (stats.received, stats.published, stats.ok, sum(stats.not_inspected.values())) == (18, 18, 18, 0)


def test_failed_capture_is_answered_at_once(package, pipeline_factory):
    pipeline, sink = pipeline_factory()
    pipeline.swap(load(package))
    assert not pipeline.submit(job("p0", capture_ok=False, capture_error="sensor timeout"))
    [outcome] = sink.wait(1)
    assert (outcome.ok, outcome.reason, outcome.detail) == (False, CAPTURE_FAILED, "sensor timeout")
    assert np.isnan(outcome.probability)


def test_full_queue_gives_not_inspected_queue_full_and_counts_it(package, pipeline_factory):
    pipeline, sink = pipeline_factory(queue_size=3)
    pipeline.swap(load(package))
    # Worker not started yet: the queue fills deterministically.
    accepted = [pipeline.submit(job(f"p{i}")) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert [(o.job.part_id, o.reason) for o in sink.outcomes] == [("p3", QUEUE_FULL), ("p4", QUEUE_FULL)]
    pipeline.start()
    sink.wait(5)
    results = sink.by_part()
    assert all(results[f"p{i}"].ok for i in range(3))
    stats = pipeline.stats()
    assert stats.not_inspected == {QUEUE_FULL: 2} and stats.ok == 3 and stats.queue_high_water == 3


def test_parts_past_their_deadline_are_not_inspected(package, pipeline_factory):
    pipeline, sink = pipeline_factory()
    pipeline.swap(load(package))
    now = time.monotonic_ns()
    slow_image = uniform_image(100)

    def slow_decode():
        time.sleep(0.15)  # the result will be ready after its deadline
        return slow_image, "BGR"

    pipeline.submit(job("expired", expires_ns=now - 1))
    pipeline.submit(FrameJob("late", now, slow_decode, expires_ns=now + 50_000_000))
    pipeline.submit(job("in_time", expires_ns=now + 60_000_000_000))
    pipeline.start()
    sink.wait(3)
    results = sink.by_part()
    assert results["expired"].reason == DEADLINE and "before scoring" in results["expired"].detail
    assert results["late"].reason == DEADLINE and "past its deadline" in results["late"].detail
    assert np.isnan(results["late"].probability) and results["late"].model_version == "1.0.0"
    assert results["in_time"].ok


def test_bad_images_do_not_spoil_the_rest_of_the_batch(package, pipeline_factory):
    pipeline, sink = pipeline_factory(max_batch=4)
    pipeline.swap(load(package))

    def bad_encoding():
        raise ImageError("unsupported encoding 'yuv422'")

    pipeline.submit(job("good_1"))
    pipeline.submit(FrameJob("bad_encoding", time.monotonic_ns(), bad_encoding))
    pipeline.submit(FrameJob("empty", time.monotonic_ns(), lambda: (np.zeros((0, 0, 3), np.uint8), "BGR")))
    pipeline.submit(FrameJob("float", time.monotonic_ns(), lambda: (np.zeros((8, 8), np.float64), "BGR")))
    pipeline.submit(job("good_2"))
    pipeline.start()
    sink.wait(5)
    results = sink.by_part()
    assert results["good_1"].ok and results["good_2"].ok
    assert results["bad_encoding"].reason == BAD_IMAGE and "yuv422" in results["bad_encoding"].detail
    assert results["empty"].reason == BAD_IMAGE and "empty image" in results["empty"].detail
    assert results["float"].reason == BAD_IMAGE and "dtype" in results["float"].detail


def test_no_model_means_not_inspected(pipeline_factory):
    pipeline, sink = pipeline_factory()
    pipeline.start()
    pipeline.submit(job("p0"))
    [outcome] = sink.wait(1)
    assert (outcome.ok, outcome.reason) == (False, NO_MODEL)


def test_nan_outputs_are_not_inspected_per_part(tmp_path, pipeline_factory):
    write_package(tmp_path / "nan", "nan.1", kind="nan_when_dark", golden_levels=(200,))
    pipeline, sink = pipeline_factory(max_batch=4)
    pipeline.swap(load(tmp_path / "nan"))
    for part, level in (("dark", 0), ("bright", 230), ("dark2", 10)):
        pipeline.submit(job(part, level))
    pipeline.start()
    sink.wait(3)
    results = sink.by_part()
    assert results["dark"].reason == NAN_OUTPUT and results["dark2"].reason == NAN_OUTPUT
    assert results["bright"].ok and 0.5 < results["bright"].probability < 1
    assert pipeline.stats().largest_batch == 3  # one batch: the NaN rows did not fail their neighbour


def test_a_failing_model_gives_model_error_and_the_worker_survives(package, tmp_path, pipeline_factory):
    pipeline, sink = pipeline_factory()
    broken = load(package)
    broken.backend.close()  # runtime gone: every run raises
    pipeline.swap(broken)
    pipeline.start()
    pipeline.submit(job("p0"))
    assert sink.wait(1)[0].reason == MODEL_ERROR and "closed" in sink.outcomes[0].detail
    pipeline.swap(load(package))
    pipeline.submit(job("p1"))
    assert sink.wait(2)[1].ok


def test_queued_frames_are_batched_up_to_max_batch_without_changing_scores(package, pipeline_factory):
    pipeline, sink = pipeline_factory(queue_size=20, max_batch=4)
    model = load(package, max_batch=4)
    pipeline.swap(model)
    levels = list(range(0, 250, 25))
    for i, level in enumerate(levels):
        pipeline.submit(job(f"p{i}", level))
    pipeline.start()
    outcomes = sink.wait(len(levels))
    stats = pipeline.stats()
    assert stats.largest_batch == 4 and stats.batches == 3  # 4 + 4 + 2
    for outcome, level in zip(outcomes, levels, strict=True):
        expected = expected_probability(uniform_image(level), model.manifest.preprocessing)
        assert outcome.probability == pytest.approx(expected, abs=1e-5)


def test_stop_answers_queued_frames(package, pipeline_factory):
    pipeline, sink = pipeline_factory()
    pipeline.swap(load(package))
    pipeline.submit(job("p0"))
    pipeline.submit(job("p1"))
    assert pipeline.stop() == 2
    assert [o.reason for o in sink.outcomes] == [SHUTDOWN, SHUTDOWN]
    assert not pipeline.submit(job("p2")) and sink.outcomes[-1].reason == SHUTDOWN


def test_hot_swap_under_a_live_stream_drops_and_duplicates_nothing(tmp_path, pipeline_factory):
    """Frames stream in from another thread while the model is swapped back and forth: every part gets
    exactly one result, scored entirely by one of the two models."""
    write_package(tmp_path / "a", "A", gain=2.0)
    write_package(tmp_path / "b", "B", gain=-2.0)  # opposite scores: a mixed-up part would show
    pipeline, sink = pipeline_factory(queue_size=1000, max_batch=4)
    pipeline.swap(load(tmp_path / "a"))
    pipeline.start()
    spec = pipeline.model.manifest.preprocessing
    expected = {
        ("A", 170): expected_probability(uniform_image(170), spec, gain=2.0),
        ("B", 170): expected_probability(uniform_image(170), spec, gain=-2.0),
    }
    total, done = 400, threading.Event()

    def stream():
        for i in range(total):
            pipeline.submit(job(f"p{i:04d}", 170))
            time.sleep(0.0005)
        done.set()

    producer = threading.Thread(target=stream)
    producer.start()
    swaps = 0
    while not done.is_set():
        nxt = load(tmp_path / ("b" if pipeline.model.version == "A" else "a"))
        previous = pipeline.swap(nxt)
        previous.close()
        swaps += 1
    producer.join()
    outcomes = sink.wait(total, timeout=30)
    ids = [o.job.part_id for o in outcomes]
    assert len(set(ids)) == total and sorted(ids) == [f"p{i:04d}" for i in range(total)]
    assert all(o.ok for o in outcomes), {o.reason for o in outcomes if not o.ok}
    for outcome in outcomes:
        assert outcome.probability == pytest.approx(expected[(outcome.model_version, 170)], abs=1e-5)
    versions = {o.model_version for o in outcomes}
    assert swaps >= 2 and versions == {"A", "B"}, f"{swaps} swaps, versions seen {versions}"


def test_sequence_gaps_count_frames_the_middleware_lost():
    gaps = SequenceGaps()
    assert [gaps.observe(s) for s in (5, 6, 9, 10, 14)] == [0, 0, 2, 0, 3]
    assert gaps.lost == 5
    assert gaps.observe(0) == 0 and gaps.restarts == 1  # camera driver restarted: counter began again
    assert gaps.observe(1) == 0 and gaps.observe(1) == 0 and gaps.lost == 5  # a repeat is not a loss
