"""The scoring pipeline between the camera and the decision: a bounded queue and one worker thread that
preprocesses and scores frames, so the ROS executor thread only enqueues (and never blocks on a model).

Guarantees (the decision node's fail-safe depends on them):
- every submitted frame gets exactly one Outcome, OK or NOT_INSPECTED with a reason, and is counted;
- a full queue, a part past its deadline, an unreadable image, a missing or failing model, or a NaN score
  give NOT_INSPECTED for the parts concerned, never an exception out of the worker;
- a hot swap replaces the model between two batches under a lock: each frame is scored by exactly one
  model, none is dropped or scored twice.
No ROS here; the node supplies `publish` and converts messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from qc_cell.camera.frame_pool import OVERWRITTEN, UNAVAILABLE, FrameGoneError
from qc_cell.inference.backends import BackendError
from qc_cell.inference.model import LoadedModel
from qc_contract.drift import NO_STATS, ImageStats, image_stats
from qc_contract.model_manifest import Preprocessing
from qc_contract.preprocess import preprocess_into

# InspectionResult.reason values (see msg/InspectionResult.msg).
CAPTURE_FAILED = "capture_failed"
QUEUE_FULL = "queue_full"
DEADLINE = "deadline"
BAD_IMAGE = "bad_image"
NO_MODEL = "no_model"
MODEL_ERROR = "model_error"
NAN_OUTPUT = "nan_output"
SHUTDOWN = "shutdown"  # frames still queued when the node stops
FRAME_OVERWRITTEN = OVERWRITTEN  # a shared-memory frame reused by the camera before or while it was scored
FRAME_UNAVAILABLE = UNAVAILABLE  # a shared-memory frame whose pool cannot be read (driver restarted, other host)

_log = logging.getLogger(__name__)


class ImageError(ValueError):
    """The frame's image cannot be used (encoding, size, empty); raised by FrameJob.decode."""


@dataclass
class FrameJob:
    part_id: str
    received_ns: int  # time.monotonic_ns() when the frame arrived
    decode: Callable[[], tuple[np.ndarray, str]]  # -> (image, channel order "BGR"/"RGB"); raises on bad input
    expires_ns: int | None = None  # monotonic time after which the result is too late; None = no deadline
    context: Any = None  # the node's data to build the result message from (header, ground truth, ...)
    capture_ok: bool = True
    capture_error: str = ""
    # Frames from the camera driver's shared-memory pool: verify() after preprocessing says "" while the pixels
    # are still this part's (else why not: NOT_INSPECTED frame_overwritten, never a score of another frame);
    # release() gives the slot back once the part is answered (and its overlay drawn).
    verify: Callable[[], str] | None = None
    release: Callable[[], None] | None = None


@dataclass
class Outcome:
    job: FrameJob
    ok: bool
    reason: str = ""  # NOT_INSPECTED reason ("" when ok)
    detail: str = ""  # human-readable detail of the reason
    probability: float = float("nan")
    model_version: str = ""
    backend: str = ""
    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    image: np.ndarray | None = None  # decoded image, kept only while an overlay is wanted
    channel_order: str = "BGR"
    heatmap: np.ndarray | None = None  # CAM over the model input (h, w) in [0, 1], for the overlay
    preprocessing: Preprocessing | None = None  # of the model that scored the part (maps the heatmap back)
    image_stats: ImageStats = NO_STATS  # drift statistics of the decoded image (qc_contract.drift)


@dataclass
class PipelineStats:
    received: int = 0
    published: int = 0
    ok: int = 0
    not_inspected: Counter = field(default_factory=Counter)
    queue_depth: int = 0
    queue_high_water: int = 0
    batches: int = 0
    largest_batch: int = 0
    swaps: int = 0  # models put into service, the first one included
    latency_ms: list[float] = field(default_factory=list)  # received -> published, most recent frames


class InferencePipeline:
    def __init__(
        self,
        publish: Callable[[Outcome], None],
        *,
        queue_size: int = 8,
        max_batch: int = 1,
        overlay_wanted: Callable[[], bool] = lambda: False,
        on_overlay: Callable[[Outcome], None] | None = None,
        heatmaps_wanted: Callable[[], bool] = lambda: False,
        on_heatmap: Callable[[Outcome], None] | None = None,
        pixels_wanted: Callable[[], bool] = lambda: False,
        after_publish: Callable[[Outcome], None] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        latency_window: int = 1000,
    ) -> None:
        if queue_size < 1 or max_batch < 1:
            raise ValueError("queue_size and max_batch must be >= 1")
        self._publish = publish
        self._queue_size = queue_size
        self._max_batch = max_batch
        self._overlay_wanted = overlay_wanted
        self._on_overlay = on_overlay
        self._heatmaps_wanted = heatmaps_wanted  # e.g. the cloud bridge sends heatmaps with its samples
        self._on_heatmap = on_heatmap
        # After each part's result is published (e.g. the shadow model's offer, inference/shadow.py); with
        # pixels_wanted, the decoded image stays on the outcome until then.
        self._pixels_wanted = pixels_wanted
        self._after_publish = after_publish
        self._clock = clock
        self._queue: deque[FrameJob] = deque()
        self._cond = threading.Condition()
        self._model_lock = threading.Lock()  # held while a batch is scored; a swap waits for it
        self._model: LoadedModel | None = None
        self._buffer: np.ndarray | None = None
        self._stopping = False
        self._stats = PipelineStats()
        self._stats_lock = threading.Lock()
        self._latency = deque(maxlen=latency_window)
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)

    # ---- control ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> int:
        """Finish the batch in progress, mark queued frames NOT_INSPECTED (shutdown), stop the worker.
        Returns how many frames were still queued."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for job in left:
            self._emit([_not_inspected(job, SHUTDOWN, "the inference node stopped before scoring it")])
        _release(left)
        with self._model_lock:
            model, self._model = self._model, None
        if model is not None:
            model.close()
        return len(left)

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def swap(self, model: LoadedModel | None) -> LoadedModel | None:
        """Make `model` serve from the next batch on; returns the previous model (caller closes it).
        After stop() nothing serves any more: the model is closed at once."""
        with self._model_lock:
            if self._stopping:
                if model is not None:
                    model.close()
                return None
            previous, self._model = self._model, model
            self._buffer = None
        with self._stats_lock:
            self._stats.swaps += 1
        return previous

    # ---- input ------------------------------------------------------------------------------
    def submit(self, job: FrameJob) -> bool:
        """Enqueue a frame; never blocks. A failed capture or a full queue is answered at once
        (NOT_INSPECTED). Returns whether the frame was queued for scoring."""
        with self._stats_lock:
            self._stats.received += 1
        if not job.capture_ok:
            self._emit([_not_inspected(job, CAPTURE_FAILED, job.capture_error or "the camera could not capture")])
            _release([job])
            return False
        refusal = None
        with self._cond:
            if self._stopping:
                refusal = _not_inspected(job, SHUTDOWN, "the inference node is stopping")
            elif len(self._queue) >= self._queue_size:
                refusal = _not_inspected(job, QUEUE_FULL, f"{self._queue_size} frames already waiting")
            else:
                self._queue.append(job)
                depth = len(self._queue)
                self._cond.notify()
        if refusal is not None:
            self._emit([refusal])
            _release([job])
            return False
        with self._stats_lock:
            self._stats.queue_high_water = max(self._stats.queue_high_water, depth)
        return True

    def stats(self) -> PipelineStats:
        with self._stats_lock:
            snapshot = PipelineStats(**{k: v for k, v in vars(self._stats).items() if k != "latency_ms"})
            snapshot.not_inspected = Counter(self._stats.not_inspected)
            snapshot.latency_ms = list(self._latency)
        with self._cond:
            snapshot.queue_depth = len(self._queue)
        return snapshot

    # ---- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                model = self._model
                limit = min(self._max_batch, model.max_batch) if model is not None else 1
                jobs = [self._queue.popleft() for _ in range(min(limit, len(self._queue)))]
            try:
                outcomes = self._process(jobs)
            except Exception as exc:  # a bug must not stop the line: every part still gets its answer
                _log.exception("inference worker failed on a batch of %d", len(jobs))
                outcomes = [
                    _not_inspected(j, MODEL_ERROR, f"internal error: {type(exc).__name__}: {exc}") for j in jobs
                ]
            self._heatmaps(outcomes)  # before the results: the bridge pairs a part's map with its verdict
            self._emit(outcomes)
            self._overlay(outcomes)
            self._after(outcomes)
            _release(jobs)

    def _process(self, jobs: list[FrameJob]) -> list[Outcome]:
        results: dict[int, Outcome] = {}
        now = self._clock()
        live = []
        for i, job in enumerate(jobs):
            if job.expires_ns is not None and now > job.expires_ns:
                results[i] = _not_inspected(
                    job, DEADLINE, f"past its deadline before scoring ({(now - job.received_ns) / 1e6:.0f} ms queued)"
                )
            else:
                live.append(i)
        if live:
            with self._model_lock:
                self._score(jobs, live, results)
        done = self._clock()
        for i in live:
            job, outcome = jobs[i], results[i]
            if outcome.ok and job.expires_ns is not None and done > job.expires_ns:
                # Too late to be of use: the decision has failed safe already or is about to.
                results[i] = replace(
                    outcome,
                    ok=False,
                    reason=DEADLINE,
                    detail=f"scored {(done - job.received_ns) / 1e6:.0f} ms after arrival, past its deadline",
                    probability=float("nan"),
                    heatmap=None,
                )
        return [results[i] for i in range(len(jobs))]

    def _score(self, jobs: list[FrameJob], live: list[int], results: dict[int, Outcome]) -> None:
        """Under the model lock: preprocess into the batch buffer, run, split per part."""
        model = self._model
        if model is None:
            for i in live:
                results[i] = _not_inspected(jobs[i], NO_MODEL, "no model loaded")
            return
        spec = model.manifest.preprocessing
        if self._buffer is None or self._buffer.shape[0] < model.max_batch:
            self._buffer = np.zeros((max(model.max_batch, 1), *model.input_chw), dtype=np.float32)
        keep_images = self._overlay_wanted() or (self._on_heatmap is not None and self._heatmaps_wanted())
        keep_pixels = keep_images or self._pixels_wanted()
        ready: list[tuple[int, Outcome]] = []
        for i in live:
            job = jobs[i]
            start = self._clock()
            outcome = Outcome(job, ok=True, queue_ms=(start - job.received_ns) / 1e6)
            outcome.model_version, outcome.backend = model.version, model.backend.name
            try:
                image, order = job.decode()
                preprocess_into(image, spec, order, self._buffer[len(ready)])
                outcome.image_stats = image_stats(image, order)  # before verify(): the pixels were this part's
                overwritten = job.verify() if job.verify is not None else ""
            except FrameGoneError as exc:  # a shared-memory frame overwritten before use, or its pool gone
                outcome.ok, outcome.reason, outcome.detail = False, exc.reason, str(exc)
                overwritten = None
            except Exception as exc:  # ImageError, PreprocessError, or anything a corrupt message triggers
                outcome.ok, outcome.reason, outcome.detail = False, BAD_IMAGE, _describe(exc)
                overwritten = None
            if overwritten:  # the input buffer may hold another frame's pixels: never scored
                outcome.ok, outcome.reason, outcome.detail = False, FRAME_OVERWRITTEN, overwritten
            if not outcome.ok:
                outcome.preprocess_ms = (self._clock() - start) / 1e6
                results[i] = outcome
                continue
            outcome.preprocess_ms = (self._clock() - start) / 1e6
            if keep_pixels:
                outcome.image, outcome.channel_order, outcome.preprocessing = image, order, spec
            ready.append((i, outcome))
        if not ready:
            return
        want_features = keep_images and model.has_heatmap
        try:
            scores = model.score(self._buffer[: len(ready)], want_features=want_features)
        except BackendError as exc:
            for i, outcome in ready:
                outcome.ok, outcome.reason, outcome.detail = False, MODEL_ERROR, str(exc)
                results[i] = outcome
            return
        with self._stats_lock:
            self._stats.batches += 1
            self._stats.largest_batch = max(self._stats.largest_batch, len(ready))
        for row, (i, outcome) in enumerate(ready):
            outcome.inference_ms = scores.inference_ms
            problem = scores.problems[row]
            if problem is not None:
                outcome.ok, outcome.reason = False, problem
                outcome.detail = f"model {model.version} gave a non-finite or invalid output"
            else:
                outcome.probability = float(scores.probabilities[row])
                if scores.features is not None:
                    outcome.heatmap = model.heatmap(scores.features[row])
            results[i] = outcome

    # ---- output -------------------------------------------------------------------------------
    def _emit(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            try:
                self._publish(outcome)
            except Exception:  # e.g. publishing while the context shuts down; counted as not published
                _log.exception("could not publish the result of part %s", outcome.job.part_id)
                continue
            latency = (self._clock() - outcome.job.received_ns) / 1e6
            with self._stats_lock:
                self._stats.published += 1
                if outcome.ok:
                    self._stats.ok += 1
                else:
                    self._stats.not_inspected[outcome.reason] += 1
                self._latency.append(latency)

    def _heatmaps(self, outcomes: list[Outcome]) -> None:
        """Every scored part's heatmap (not one per batch like the overlay): samples need the part's own map."""
        if self._on_heatmap is None:
            return
        for outcome in outcomes:
            if outcome.heatmap is not None and outcome.image is not None:
                try:
                    self._on_heatmap(outcome)
                except Exception:
                    _log.exception("heatmap failed for part %s", outcome.job.part_id)

    def _overlay(self, outcomes: list[Outcome]) -> None:
        """One overlay per batch (the newest part): viewers need a live picture, not every frame."""
        if self._on_overlay is None or (self._pixels_wanted() and not self._overlay_wanted()):
            return  # pixels kept for the shadow alone draw no overlay nobody watches
        for outcome in reversed(outcomes):
            if outcome.image is not None:
                try:
                    self._on_overlay(outcome)
                except Exception:
                    _log.exception("overlay failed for part %s", outcome.job.part_id)
                return

    def _after(self, outcomes: list[Outcome]) -> None:
        if self._after_publish is None:
            return
        for outcome in outcomes:
            try:
                self._after_publish(outcome)
            except Exception:
                _log.exception("after-publish hook failed for part %s", outcome.job.part_id)

    def queue_depth(self) -> int:
        """Frames waiting for the live model (cheap; for the shadow's spare-time check)."""
        return len(self._queue)


class SequenceGaps:
    """Frames that never reached the node, from gaps in the camera driver's frame counter (PartFrame.sequence).

    The middleware can lose frames silently (a KEEP_LAST reliable writer overwrites samples it could not
    deliver in time, e.g. under CPU starvation). Such parts never get a result from us; the decision node
    fails them safe (no_result), and this counter makes the loss visible instead of silent."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.lost = 0
        self.restarts = 0

    def observe(self, sequence: int) -> int:
        """Record a frame's sequence number; returns how many frames went missing just before it."""
        if self.last is not None and sequence < self.last:
            self.restarts += 1  # the camera driver restarted: its counter began again
        elif self.last is not None and sequence > self.last + 1:
            gap = sequence - self.last - 1
            self.lost += gap
            self.last = sequence
            return gap
        self.last = sequence
        return 0


def _release(jobs: list[FrameJob]) -> None:
    for job in jobs:
        if job.release is not None:
            try:
                job.release()
            except Exception:  # a release must never stop the worker; the lease expires by itself
                _log.exception("could not release the frame of part %s", job.part_id)


def _not_inspected(job: FrameJob, reason: str, detail: str) -> Outcome:
    return Outcome(job, ok=False, reason=reason, detail=detail)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"
