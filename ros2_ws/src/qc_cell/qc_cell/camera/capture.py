"""The capture loop: owns a FrameSource on its own thread, turns frames into parts and keeps the source alive.

- Free-run: one frame every 1/rate_hz; each frame is a new part (id from the allocator).
- Triggered: one frame per request (a part at the camera, with its id); a request that cannot be served (source
  down, finished, queue full, served too late, stopped) still yields a result without a frame, so no part goes
  unnoticed downstream.
- A missing device at start or a disconnect mid-run closes the source and re-opens it with exponential backoff;
  requests that arrive meanwhile are answered at once with the reason.
- Reads block (V4L2, GStreamer, video decode), which is why this runs on its own thread and never on the ROS
  executor; results go to `sink` from this thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qc_cell.camera.framing import Framing
from qc_cell.camera.sources.base import (
    EndOfStreamError,
    Frame,
    FrameSource,
    NoFrameYetError,
    SourceError,
    SourceUnavailableError,
)

MODES = ("free_run", "triggered")

# Loop states (diagnostics "source_state").
IDLE = "idle"  # not capturing (configured, not active)
STREAMING = "streaming"
RETRYING = "retrying"  # source missing or lost; re-opening with backoff
FINISHED = "finished"  # a finite source delivered everything
DONE = "done"  # max_parts reached


@dataclass(frozen=True)
class CaptureSettings:
    mode: str = "free_run"
    rate_hz: float = 10.0
    max_parts: int = 0  # stop after this many parts; 0 = unlimited
    queue_depth: int = 8  # triggered: requests waiting for the camera
    max_trigger_age_s: float = 0.5  # triggered: a request served later than this gets no frame (the part moved on)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} must be one of {list(MODES)}")
        if self.rate_hz <= 0:
            raise ValueError(f"rate_hz {self.rate_hz} must be > 0")
        if self.max_parts < 0 or self.queue_depth < 1 or self.max_trigger_age_s <= 0:
            raise ValueError("max_parts >= 0, queue_depth >= 1 and max_trigger_age_s > 0 are required")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(
                f"need 0 < backoff_initial_s ({self.backoff_initial_s}) <= backoff_max_s ({self.backoff_max_s})"
            )


@dataclass(frozen=True)
class CaptureRequest:
    part_id: str
    trigger_ns: int  # when the part was at the camera (the trigger's stamp)
    encoder_count: int = -1
    received: float = field(default_factory=time.monotonic)  # monotonic receipt time, for the age check


@dataclass(frozen=True)
class CaptureResult:
    part_id: str
    stamp_ns: int  # capture time of the frame; the trigger time when there is no frame
    encoder_count: int
    frame: Frame | None  # None: no frame could be had for this part (error says why)
    image: np.ndarray | None = None  # the framed (ROI, downscaled) image of `frame`
    error: str = ""
    steady_ns: int = 0  # the same moment on the host's steady (monotonic) clock; 0 = unknown


class Backoff:
    """Exponential retry delays: initial, 2x, 4x, ... up to maximum; reset() after a success."""

    def __init__(self, initial_s: float, maximum_s: float) -> None:
        self.initial_s, self.maximum_s = initial_s, maximum_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2.0, self.maximum_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


# on_event(level, code, message); level is "info", "warn" or "error".
EventSink = Callable[[str, str, str], None]


class CaptureLoop:
    def __init__(
        self,
        source: FrameSource,
        framing: Framing,
        settings: CaptureSettings,
        sink: Callable[[CaptureResult], None],
        clock_ns: Callable[[], int],
        next_part_id: Callable[[], str],
        on_event: EventSink,
    ) -> None:
        self.source = source
        self.framing = framing
        self.settings = settings
        self._sink = sink
        self._clock_ns = clock_ns
        self._next_part_id = next_part_id
        self._on_event = on_event
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
        self._period = 1.0 / settings.rate_hz
        self._lock = threading.Lock()
        self._requests: deque[CaptureRequest] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._last_error = ""
        self._lost = False  # the source failed since it was last open: the next open is a reconnect
        self.state = IDLE
        self._end_reason = ""  # why no more frames come (FINISHED/DONE)
        # Counters for /diagnostics.
        self.parts = 0  # parts emitted (with or without a frame)
        self.frames = 0  # parts emitted with a frame
        self.failed_parts = 0  # parts emitted without a frame
        self.dropped_frames = 0  # frames lost: read errors, ROI errors, unserved requests
        self.reconnects = 0
        self._frame_times: deque[float] = deque(maxlen=512)

    # ---------------------------------------------------------------- control (any thread)

    def open(self) -> bool:
        """Try to acquire the source now; on SourceUnavailableError schedule a retry and return False.
        SourceConfigError (and other SourceErrors that are not transient) propagate: retrying cannot help."""
        return self._try_open()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        if self.state == IDLE:
            self.state = STREAMING if self.source.is_open else RETRYING
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.source.kind}", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "capture stopped") -> None:
        """Stop capturing (the source stays open); pending requests are answered without a frame."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout=10.0)
            if thread.is_alive():  # a read blocked in the driver; the daemon thread dies with the process
                self._on_event("error", "CAPTURE_STUCK", f"{self.source.description}: read did not return within 10 s")
        if self.state not in (FINISHED, DONE):
            self.state = IDLE
        self._fail_pending(reason)

    def close(self) -> None:
        self.stop("camera released")
        self.source.close()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def set_rate(self, rate_hz: float) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz {rate_hz} must be > 0")
        self._period = 1.0 / rate_hz

    def request(self, request: CaptureRequest) -> None:
        """Ask for one frame for a part at the camera (triggered mode). Always yields exactly one result."""
        reason = ""
        with self._lock:
            if self._thread is None:
                reason = f"camera not capturing ({self.state})"
            elif len(self._requests) >= self.settings.queue_depth:
                reason = (
                    f"capture backlog full ({self.settings.queue_depth} parts waiting): trigger rate above the camera's"
                )
            else:
                self._requests.append(request)
        if reason:
            self._fail(request, reason)
        else:
            self._wake.set()

    def snapshot(self) -> dict[str, object]:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._frame_times if now - t <= 5.0]
            waiting = len(self._requests)
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) >= 2 and recent[-1] > recent[0] else 0.0
        values: dict[str, object] = {
            "source": self.source.description,
            "source_state": self.state,
            "mode": self.settings.mode,
            "achieved_fps": f"{fps:.2f}",
            "parts": self.parts,
            "frames": self.frames,
            "parts_without_frame": self.failed_parts,
            "dropped_frames": self.dropped_frames,
            "reconnects": self.reconnects,
            "waiting_triggers": waiting,
        }
        if self._last_error:
            values["last_error"] = self._last_error
        if self._end_reason:
            values["end_reason"] = self._end_reason
        values.update(self.source.stats())
        return values

    # ---------------------------------------------------------------- capture thread

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if self.state in (FINISHED, DONE):
                self._fail_pending(self._end_reason)
                self._wait(0.2)
                continue
            if not self.source.is_open:
                if time.monotonic() < self._retry_at or not self._try_open_logged():
                    self._wait(max(0.0, self._retry_at - time.monotonic()))
                    self._fail_pending(f"camera unavailable: {self._last_error}")
                    continue
                next_tick = time.monotonic()
            if self.settings.mode == "free_run" and self.source.self_paced:
                self._capture(None)  # the source blocks until its next frame (NoFrameYetError after a short wait)
            elif self.settings.mode == "free_run":
                delay = next_tick - time.monotonic()
                if delay > 0:
                    self._wait(delay)
                    continue  # re-check stop/state, then capture on time
                next_tick = max(next_tick + self._period, time.monotonic())  # no burst after a stall
                self._capture(None)
            else:
                request = self._pop()
                if request is None:
                    self._wait(0.1)
                    continue
                late = time.monotonic() - request.received
                if late > self.settings.max_trigger_age_s:
                    self._fail(
                        request,
                        f"trigger served {late:.2f} s after it arrived (max_trigger_age_s "
                        f"{self.settings.max_trigger_age_s:g}): the part has left the camera",
                    )
                    continue
                self._capture(request)

    def _wait(self, seconds: float) -> None:
        if self._wake.wait(seconds):
            self._wake.clear()

    def _pop(self) -> CaptureRequest | None:
        with self._lock:
            return self._requests.popleft() if self._requests else None

    def _try_open(self) -> bool:
        try:
            self.source.open()
        except SourceUnavailableError as exc:
            self._source_down(str(exc))
            return False
        if self._lost:
            self.reconnects += 1
            self._on_event("info", "CAMERA_RECOVERED", f"{self.source.description}: capturing again")
        self._lost = False
        self._last_error = ""
        self._backoff.reset()
        if self.state == RETRYING:
            self.state = STREAMING
        return True

    def _try_open_logged(self) -> bool:
        try:
            return self._try_open()
        except SourceError as exc:  # not transient (e.g. config): report it and keep retrying slowly
            self._source_down(str(exc))
            return False

    def _source_down(self, reason: str) -> None:
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        first = not self._lost
        self._lost = True
        self._last_error = reason
        if self.state == STREAMING:
            self.state = RETRYING
        self._on_event("error" if first else "warn", "CAMERA_UNAVAILABLE", f"{reason}; retrying in {delay:.1f} s")

    def _capture(self, request: CaptureRequest | None) -> None:
        try:
            frame = self.source.read() if request is None else self.source.read_for(request.trigger_ns)
        except NoFrameYetError as exc:
            if request is not None:  # a part is waiting: no frame is a failed capture, never a silent one
                self._lose(request, f"{self.source.description}: {exc}")
            return
        except EndOfStreamError as exc:
            self.state, self._end_reason = FINISHED, str(exc)
            self._on_event("info", "SOURCE_FINISHED", str(exc))
            if request is not None:
                self._fail(request, f"no more frames: {exc}")
            return
        except SourceUnavailableError as exc:
            self.source.close()
            self._source_down(str(exc))
            self._lose(request, f"camera unavailable: {exc}")
            return
        except Exception as exc:  # a decoder/driver error on one frame: skip it, keep the source
            message = f"{self.source.description}: frame lost: {type(exc).__name__}: {exc}"
            self._on_event("warn", "FRAME_LOST", message)
            self._lose(request, message)
            return
        # wall stamp from the camera's clock when it has one (for records); steady time of receipt (deadlines)
        stamp_ns, steady_ns = frame.stamp_ns or self._clock_ns(), time.monotonic_ns()
        try:
            image = self.framing.apply(frame.image)
        except ValueError as exc:
            message = f"{frame.origin}: {exc}"
            self._on_event("error", "FRAMING_FAILED", message)
            self._lose(request, message)
            return
        if request is None:
            try:
                part_id = self._next_part_id()
            except Exception as exc:  # e.g. the part id state cannot be written: no id, no part
                self._on_event("error", "PART_ID_FAILED", str(exc))
                self._lose(None, str(exc))
                return
            result = CaptureResult(part_id, stamp_ns, -1, frame, image, steady_ns=steady_ns)
        else:
            result = CaptureResult(request.part_id, stamp_ns, request.encoder_count, frame, image, steady_ns=steady_ns)
        with self._lock:
            self._frame_times.append(time.monotonic())
            self.frames += 1
        self._emit(result)

    def _lose(self, request: CaptureRequest | None, reason: str) -> None:
        """A frame that should have been captured was not: answer the part, or count the free-run loss."""
        if request is not None:
            self._fail(request, reason)
        else:
            with self._lock:
                self.dropped_frames += 1

    def _fail(self, request: CaptureRequest, reason: str) -> None:
        with self._lock:
            self.failed_parts += 1
            self.dropped_frames += 1
        # The trigger's moment on the steady clock: its receipt (the trigger carries no steady stamp of its own).
        steady_ns = int(request.received * 1e9)
        self._emit(
            CaptureResult(request.part_id, request.trigger_ns, request.encoder_count, None, None, reason, steady_ns)
        )

    def _emit(self, result: CaptureResult) -> None:
        with self._lock:
            self.parts += 1
            parts = self.parts
        try:
            self._sink(result)
        except Exception as exc:  # never let a publishing error kill the capture thread
            self._on_event("error", "PUBLISH_FAILED", f"part {result.part_id}: {type(exc).__name__}: {exc}")
        limit = self.settings.max_parts
        if limit and parts >= limit and self.state != DONE:
            self.state, self._end_reason = DONE, f"max_parts ({limit}) reached"
            self._on_event("info", "MAX_PARTS", f"{limit} parts captured (max_parts): capture stops")

    def _fail_pending(self, reason: str) -> None:
        while (request := self._pop()) is not None:
            self._fail(request, reason)
