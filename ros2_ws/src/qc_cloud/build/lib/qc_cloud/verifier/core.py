"""The cloud verifier's logic, without MQTT: admission of a verify request (who may ask, size, schema, image),
the dynamic batcher, the deadline rule and the scoring of a batch, plus the figures it reports.

- Admission (`Verifier.admit`): the cell of the topic must be allowed (fnmatch patterns on "site/line/cell")
  and equal to the record's `cell`; the payload at most `max_request_bytes` (checked before parsing); the record
  valid against verify_request.schema.json; the JPEG decodable, at most `max_image_pixels`, of the declared
  size. Anything else is refused with a reason code (answered, counted, never raised).
- Dynamic batching (`Batcher`): a batch closes when it holds `max_batch` requests or `max_wait_ms` after its
  first request was taken, whichever comes first. The queue is bounded: a request beyond `max_queue` is
  refused (`overloaded`) at once rather than queued to expire.
- Deadline rule: a request whose deadline has passed when it is dequeued is answered `expired`, not scored.
- Scoring: the batch goes through the model package's own preprocessing (qc_contract.preprocess) and a scorer
  (the edge's LoadedModel in production, see model.py). P(defect) >= threshold is DEFECTIVE, else NORMAL.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import cv2
import numpy as np

from qc_contract import records
from qc_contract.inbound import InboundError, parse
from qc_contract.model_manifest import Preprocessing
from qc_contract.preprocess import PreprocessError, preprocess
from qc_contract.topics import cell_of_request_topic


class Scorer(Protocol):
    """What the verifier needs of a model: its preprocessing and P(defect) for a preprocessed batch."""

    version: str
    max_batch: int

    @property
    def preprocessing(self) -> Preprocessing: ...

    def probabilities(self, batch: np.ndarray) -> tuple[np.ndarray, list[str | None]]: ...


@dataclass(frozen=True)
class VerifierSettings:
    worker: str = "verifier-1"
    allowed_cells: tuple[str, ...] = ("*",)  # fnmatch patterns on site/line/cell
    max_batch: int = 8
    max_wait_ms: float = 5.0  # a batch closes this long after its first request, or when full
    max_queue: int = 256  # requests waiting; beyond: refused "overloaded"
    max_request_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    threshold: float = 0.5  # P(defect) >= threshold -> DEFECTIVE

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.max_batch <= 1024:
            problems.append("max_batch must be within 1..1024")
        if not 0 <= self.max_wait_ms <= 10_000:
            problems.append("max_wait_ms must be within 0..10000")
        if self.max_queue < 1 or self.max_request_bytes < 1024 or self.max_image_pixels < 1:
            problems.append("max_queue >= 1, max_request_bytes >= 1024, max_image_pixels >= 1")
        if not 0 < self.threshold < 1:
            problems.append("threshold must be within (0, 1)")
        if not self.allowed_cells:
            problems.append("allowed_cells is empty: no cell could be served")
        if problems:
            raise ValueError("verifier settings: " + "; ".join(problems))


@dataclass
class Request:
    cell: str
    request_id: str
    part_id: str
    image: np.ndarray  # decoded BGR
    image_bytes: int
    deadline_ns: int | None  # wall clock; None: the cell set none (scored whenever it comes)
    received_ns: int  # wall clock
    received_mono: float
    record: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Answer:
    """One answer to send: the response topic's cell, the response body and the verification record."""

    cell: str | None  # None: the topic named no cell, nobody to answer
    response: dict[str, Any]
    verification: dict[str, Any] | None


def _ns_of(stamp: str | None) -> int | None:
    if not stamp:
        return None
    seconds = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return round(seconds * 1e6) * 1000


class Batcher:
    """Bounded FIFO with dynamic batching: take() blocks until one request is there, then gathers more until
    the batch is full or max_wait_ms after the first one was taken."""

    def __init__(self, max_batch: int, max_wait_ms: float, max_queue: int) -> None:
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1e3, max_queue
        self._items: deque[Request] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, request: Request) -> bool:
        with self._cond:
            if self._closed or len(self._items) >= self.max_queue:
                return False
            self._items.append(request)
            self._cond.notify()
            return True

    @property
    def depth(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> list[Request]:
        """Up to max_batch requests; [] on timeout or when closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return []
            if not self._items:
                return []
            batch = [self._items.popleft()]
            end = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                remaining = end - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch


class Stats:
    """Counts and recent timings: queue depth, batch sizes, service time per batch, time in queue."""

    def __init__(self, window: int = 1000) -> None:
        self.counts: Counter[str] = Counter()  # scored, expired, refused_<reason>
        self.batch_sizes: Counter[int] = Counter()
        self.service_ms: deque[float] = deque(maxlen=window)
        self.queue_ms: deque[float] = deque(maxlen=window)
        self.max_depth = 0
        self._lock = threading.Lock()

    def note_batch(self, size: int, service_ms: float, queue_ms: Sequence[float]) -> None:
        with self._lock:
            self.batch_sizes[size] += 1
            self.service_ms.append(service_ms)
            self.queue_ms.extend(queue_ms)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def snapshot(self, depth: int) -> dict[str, Any]:
        with self._lock:
            self.max_depth = max(self.max_depth, depth)
            service, queue = sorted(self.service_ms), sorted(self.queue_ms)
            sizes = dict(sorted(self.batch_sizes.items()))
            counts = dict(sorted(self.counts.items()))
        n_batches = sum(sizes.values())
        return {
            "queue_depth": depth,
            "queue_depth_max": self.max_depth,
            "counts": counts,
            "batches": n_batches,
            "batch_size_mean": round(sum(k * v for k, v in sizes.items()) / n_batches, 2) if n_batches else None,
            "batch_sizes": {str(k): v for k, v in sizes.items()},
            "service_ms_p50": _pct(service, 0.5),
            "service_ms_p95": _pct(service, 0.95),
            "queue_ms_p50": _pct(queue, 0.5),
            "queue_ms_p95": _pct(queue, 0.95),
        }


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))], 2)


class Verifier:
    """admit() from the MQTT thread, run_once()/serve() on the scoring thread; answers go to `emit`."""

    def __init__(
        self,
        settings: VerifierSettings,
        scorer: Scorer,
        emit: Callable[[Answer], None],
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.scorer = scorer
        self.emit = emit
        self.wall_ns = wall_ns
        self.stats = Stats()
        self.batcher = Batcher(min(settings.max_batch, scorer.max_batch), settings.max_wait_ms, settings.max_queue)

    # -- admission (MQTT thread) ------------------------------------------------------------------------

    def admit(self, topic: str, payload: bytes) -> None:
        received_ns, received_mono = self.wall_ns(), time.monotonic()
        topic_cell = cell_of_request_topic(topic)
        try:
            request = self._parse(topic_cell.path if topic_cell else None, payload, received_ns, received_mono)
        except InboundError as exc:
            self._refuse(topic_cell.path if topic_cell else None, payload, exc.reason, received_ns)
            return
        if not self.batcher.put(request):
            self._refuse(request.cell, payload, "overloaded", received_ns, request)

    def _parse(self, cell: str | None, payload: bytes, received_ns: int, received_mono: float) -> Request:
        if cell is None:
            raise InboundError("bad_topic", "not qc/<site>/<line>/<cell>/verify/request")
        if not any(fnmatch.fnmatchcase(cell, pattern) for pattern in self.settings.allowed_cells):
            raise InboundError("not_allowed", f"cell {cell} is not among the allowed cells")
        data = parse(payload, "verify_request", self.settings.max_request_bytes)
        if data["cell"] != cell:
            raise InboundError("cell_mismatch", f"record of {data['cell']} on the topic of {cell}")
        width, height = int(data["width"]), int(data["height"])
        if width * height > self.settings.max_image_pixels:
            raise InboundError("oversized", f"image {width}x{height} > {self.settings.max_image_pixels} pixels")
        try:
            jpeg = base64.b64decode(data["image_b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InboundError("bad_image", f"image_b64: {exc}") from None
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if jpeg else None
        if image is None:
            raise InboundError("bad_image", "not a decodable JPEG")
        if image.shape[:2] != (height, width):
            raise InboundError("bad_image", f"JPEG is {image.shape[1]}x{image.shape[0]}, record says {width}x{height}")
        try:
            deadline_ns = _ns_of(data.get("deadline"))
        except ValueError as exc:
            raise InboundError("schema_violation", f"deadline: {exc}") from None
        return Request(
            cell=cell,
            request_id=data["id"],
            part_id=data["part_id"],
            image=image,
            image_bytes=len(jpeg),
            deadline_ns=deadline_ns,
            received_ns=received_ns,
            received_mono=received_mono,
            record=data,
        )

    def _refuse(
        self, cell: str | None, payload: bytes, reason: str, received_ns: int, request: Request | None = None
    ) -> None:
        self.stats.count(f"refused_{reason}")
        if request is not None:
            part_id, request_id = request.part_id, request.request_id
        elif len(payload) > self.settings.max_request_bytes:
            part_id, request_id = "", ""  # never parse what is too big to handle
        else:
            part_id, request_id = _ids_of(payload)
        response = records.verify_response(part_id=part_id, request_id=request_id, outcome="refused", reason=reason)
        record = None
        if cell is not None and reason not in ("bad_topic", "not_allowed"):
            record = self._verification(cell, request, part_id, request_id, "refused", reason, received_ns)
        # A cell that is not allowed gets its refusal (it may be a misconfiguration), but no record is kept for it.
        self.emit(Answer(cell, response, record))

    # -- scoring (scoring thread) -----------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.run_once(timeout=0.2)

    def close(self) -> None:
        self.batcher.close()

    def run_once(self, timeout: float | None = None) -> int:
        """Take one batch (waiting up to timeout for its first request), answer it; returns its size."""
        batch = self.batcher.take(timeout)
        if not batch:
            return 0
        now_ns, now_mono = self.wall_ns(), time.monotonic()
        live = []
        for request in batch:
            if request.deadline_ns is not None and now_ns >= request.deadline_ns:
                self.stats.count("expired")
                self.emit(self._answer(request, "expired", "deadline_passed", None, None, None))
            else:
                live.append(request)
        if live:
            self._score(live, now_mono)
        return len(batch)

    def _score(self, batch: list[Request], start_mono: float) -> None:
        spec = self.scorer.preprocessing
        tensors, ready = [], []
        for request in batch:
            try:
                tensors.append(preprocess(request.image, spec, "BGR"))
                ready.append(request)
            except PreprocessError as exc:
                self.stats.count("refused_bad_image")
                self.emit(self._answer(request, "refused", "bad_image", None, None, None, detail=str(exc)))
        if not ready:
            return
        try:
            probabilities, problems = self.scorer.probabilities(np.ascontiguousarray(np.concatenate(tensors)))
        except Exception as exc:
            self.stats.count("refused_model_error", len(ready))
            for request in ready:
                self.emit(self._answer(request, "refused", "model_error", None, None, None, detail=str(exc)[:200]))
            return
        service_ms = (time.monotonic() - start_mono) * 1e3
        queue_ms = [(start_mono - r.received_mono) * 1e3 for r in ready]
        self.stats.note_batch(len(ready), service_ms, queue_ms)
        for request, p, problem, q_ms in zip(ready, probabilities, problems, queue_ms, strict=True):
            if problem is not None:
                self.stats.count(f"refused_{problem}")
                self.emit(self._answer(request, "refused", problem, None, q_ms, service_ms, len(ready)))
                continue
            verdict = "DEFECTIVE" if float(p) >= self.settings.threshold else "NORMAL"
            self.stats.count("scored")
            self.emit(self._answer(request, "scored", "", (verdict, float(p)), q_ms, service_ms, len(ready)))

    def _answer(
        self,
        request: Request,
        outcome: str,
        reason: str,
        result: tuple[str, float] | None,
        queue_ms: float | None,
        service_ms: float | None,
        batch_size: int | None = None,
        detail: str = "",
    ) -> Answer:
        verdict, probability = result if result else (None, None)
        response = records.verify_response(
            part_id=request.part_id,
            request_id=request.request_id,
            outcome=outcome,
            verdict=verdict,
            defect_probability=probability,
            model_version=self.scorer.version,
            reason=reason,
        )
        record = self._verification(
            request.cell,
            request,
            request.part_id,
            request.request_id,
            outcome,
            reason,
            request.received_ns,
            verdict=verdict,
            probability=probability,
            queue_ms=queue_ms,
            service_ms=service_ms,
            batch_size=batch_size,
        )
        return Answer(request.cell, response, record)

    def _verification(
        self,
        cell: str,
        request: Request | None,
        part_id: str,
        request_id: str,
        outcome: str,
        reason: str,
        received_ns: int,
        *,
        verdict: str | None = None,
        probability: float | None = None,
        queue_ms: float | None = None,
        service_ms: float | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        data = request.record if request else {}
        return records.verification(
            cell=cell,
            request_id=request_id,
            part_id=part_id,
            verifier=self.settings.worker,
            outcome=outcome,
            reason=reason,
            verdict=verdict,
            defect_probability=probability,
            local_verdict=data.get("verdict"),
            local_defect_probability=data.get("defect_probability"),
            edge_model_version=str(data.get("model_version", "")),
            model_version=self.scorer.version,
            capture_time=data.get("capture_time"),
            deadline=data.get("deadline"),
            received_ns=received_ns,
            answered_ns=self.wall_ns(),
            queue_ms=queue_ms,
            service_ms=service_ms,
            batch_size=batch_size,
            image_bytes=request.image_bytes if request else 0,
        )

    def report(self) -> dict[str, Any]:
        return {
            "worker": self.settings.worker,
            "model_version": self.scorer.version,
            **self.stats.snapshot(self.batcher.depth),
        }


def _ids_of(payload: bytes) -> tuple[str, str]:
    """part_id and request id of a refused payload, as far as they can be read ('' otherwise)."""
    import json

    try:
        data = json.loads(payload.decode("utf-8", "replace"))
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    part_id, request_id = data.get("part_id"), data.get("id")
    return (
        part_id[:256] if isinstance(part_id, str) else "",
        request_id[:256] if isinstance(request_id, str) else "",
    )
