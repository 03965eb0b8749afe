"""Shadow runs: a second model scores parts beside the live one, in spare time only, and never decides.

The live worker (pipeline.py) publishes each part's live result first and only then offers the part here
(ShadowRunner.offer). A part is taken only when
- no frame is waiting for the live model (`frames_waiting`),
- the shadow is not still scoring an earlier part (one slot, never a queue), and
- the measured budget allows: the shadow's own latency (moving average) fits in the spare time between parts
  (mean gap between arrivals minus the live model's time per part, times `spare_fraction`), and under
  `max_latency_ms` when set. While over budget, one part in `probe_every` is still scored, so the estimate
  follows a shadow that got faster or a line that slowed down.
Every part not scored is counted with its reason (SKIP_* below), so a fleet reading a shadow's agreement knows
how many parts it saw. The shadow scores in its own low-priority thread (nice 19 where the OS allows), so the
live worker wins the CPU when a frame arrives during a shadow run. Plain Python, no ROS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qc_cell.inference.model import LoadedModel
from qc_contract.preprocess import preprocess_into

_log = logging.getLogger(__name__)

# Why a part was not scored by the shadow (counted per reason).
SKIP_FRAMES_WAITING = "frames_waiting"  # a frame waits for the live model: the live path has the machine
SKIP_BUSY = "busy"  # the shadow is still scoring an earlier part
SKIP_NO_SPARE_TIME = "no_spare_time"  # the shadow's measured latency does not fit the spare time / max latency
SKIP_LIVE_NOT_INSPECTED = "live_not_inspected"  # the live model gave no score: nothing to compare with
SKIP_NO_IMAGE = "no_image"  # the live worker kept no pixels for the part
SKIP_ERROR = "shadow_error"  # the shadow failed on the part (bad output, backend error)
SKIP_REASONS = (
    SKIP_FRAMES_WAITING,
    SKIP_BUSY,
    SKIP_NO_SPARE_TIME,
    SKIP_LIVE_NOT_INSPECTED,
    SKIP_NO_IMAGE,
    SKIP_ERROR,
)


@dataclass(frozen=True)
class ShadowScore:
    part_id: str
    shadow_version: str
    live_version: str
    defect_probability: float
    live_probability: float
    latency_ms: float  # the shadow's preprocessing + inference
    stamp_ns: int  # wall clock when scored
    context: object = None  # the live job's context (the node's PartFrame), passed through


class ShadowBudget:
    """When the shadow may run, from measured figures (all in ms, exponential moving averages)."""

    def __init__(
        self, spare_fraction: float = 0.5, max_latency_ms: float = 0.0, probe_every: int = 50, alpha: float = 0.2
    ) -> None:
        if not 0.0 < spare_fraction <= 1.0:
            raise ValueError("spare_fraction must be in (0, 1]")
        self.spare_fraction = spare_fraction
        self.max_latency_ms = max_latency_ms
        self.probe_every = max(1, probe_every)
        self.alpha = alpha
        self.gap_ms: float | None = None  # between part arrivals
        self.live_ms: float | None = None  # live preprocessing + inference per part
        self.shadow_ms: float | None = None  # shadow preprocessing + inference per part
        self._last_arrival_ns: int | None = None
        self._over_budget_run = 0

    def _ema(self, old: float | None, value: float) -> float:
        return value if old is None else old + self.alpha * (value - old)

    def observe_arrival(self, received_ns: int) -> None:
        if self._last_arrival_ns is not None and received_ns > self._last_arrival_ns:
            self.gap_ms = self._ema(self.gap_ms, (received_ns - self._last_arrival_ns) / 1e6)
        self._last_arrival_ns = received_ns

    def observe_live(self, ms: float) -> None:
        self.live_ms = self._ema(self.live_ms, ms)

    def observe_shadow(self, ms: float) -> None:
        self.shadow_ms = self._ema(self.shadow_ms, ms)

    def budget_ms(self) -> float | None:
        """The time a shadow run may take per part (None: not measured yet, no limit but max_latency_ms)."""
        budget = None
        if self.gap_ms is not None and self.live_ms is not None:
            budget = max(0.0, self.gap_ms - self.live_ms) * self.spare_fraction
        if self.max_latency_ms > 0:
            budget = self.max_latency_ms if budget is None else min(budget, self.max_latency_ms)
        return budget

    def allows(self) -> bool:
        """The shadow's measured latency fits the budget (unknown latency: one run measures it); while it does
        not, every probe_every-th part is allowed to measure again."""
        budget = self.budget_ms()
        if self.shadow_ms is None or budget is None or self.shadow_ms <= budget:
            self._over_budget_run = 0
            return True
        self._over_budget_run += 1
        if self._over_budget_run >= self.probe_every:
            self._over_budget_run = 0
            return True
        return False


@dataclass
class _Job:
    image: np.ndarray
    channel_order: str
    part_id: str
    live_version: str
    live_probability: float
    context: object


class ShadowRunner:
    def __init__(
        self,
        on_score: Callable[[ShadowScore], None],
        frames_waiting: Callable[[], int],
        budget: ShadowBudget | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        nice: int = 19,
    ) -> None:
        self._on_score = on_score
        self._frames_waiting = frames_waiting
        self.budget = budget or ShadowBudget()
        self._wall_ns = wall_ns
        self._clock_ns = clock_ns
        self._nice = nice
        self._model: LoadedModel | None = None
        self._buffer: np.ndarray | None = None
        self._model_lock = threading.Lock()  # held while the shadow scores; set_model waits for it
        self._cond = threading.Condition()
        self._slot: _Job | None = None
        self._running = False  # a part is being scored
        self._stopping = False
        self._counts: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name="inference-shadow", daemon=True)
        self._thread.start()

    # ---- model ----------------------------------------------------------------------------------------
    @property
    def model(self) -> LoadedModel | None:
        return self._model

    @property
    def version(self) -> str:
        model = self._model
        return model.version if model is not None else ""

    def set_model(self, model: LoadedModel | None) -> LoadedModel | None:
        """Make `model` the shadow (None: no shadow); returns the previous one (the caller closes it)."""
        with self._model_lock:
            previous, self._model, self._buffer = self._model, model, None
            self.budget.shadow_ms = None  # a new model is measured afresh
        with self._cond:
            self._slot = None
            self._counts.clear()  # the counts are the current shadow's (model/shadow names its version)
        return previous

    def wanted(self) -> bool:
        """Whether the live worker should keep each part's pixels for an offer."""
        return self._model is not None

    def counts(self) -> dict[str, int]:
        """Parts the current shadow scored (`scored`) and skipped (`skipped_<reason>`) since it was loaded."""
        with self._cond:
            return dict(self._counts)

    # ---- input (live worker, after the live results were published) -------------------------------------
    def offer(self, outcome) -> None:
        """A part the live model answered (pipeline.Outcome). Cheap unless taken: then the pixels are copied."""
        self.budget.observe_arrival(outcome.job.received_ns)
        if outcome.ok:
            self.budget.observe_live(outcome.preprocess_ms + outcome.inference_ms)
        if self._model is None:
            return
        reason = self._refusal(outcome)
        with self._cond:
            if reason is None and (self._slot is not None or self._running):
                reason = SKIP_BUSY
            if reason is not None:
                self._counts[f"skipped_{reason}"] += 1
                return
            self._slot = _Job(
                np.array(outcome.image, copy=True),  # the frame's buffer goes back to its pool after this call
                outcome.channel_order,
                outcome.job.part_id,
                outcome.model_version,
                outcome.probability,
                outcome.job.context,
            )
            self._cond.notify()

    def _refusal(self, outcome) -> str | None:
        if not outcome.ok:
            return SKIP_LIVE_NOT_INSPECTED
        if outcome.image is None:
            return SKIP_NO_IMAGE
        if self._frames_waiting() > 0:
            return SKIP_FRAMES_WAITING
        if not self.budget.allows():
            return SKIP_NO_SPARE_TIME
        return None

    # ---- worker ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # lower priority than the live worker
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        while True:
            with self._cond:
                while self._slot is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job, self._slot = self._slot, None
                if self._frames_waiting() > 0:  # a frame came in since the offer: it goes first
                    self._counts[f"skipped_{SKIP_FRAMES_WAITING}"] += 1
                    continue
                self._running = True
            try:
                score = self._score(job)
            except Exception as exc:  # the shadow must never take the node down
                _log.warning("shadow model failed on part %s: %s: %s", job.part_id, type(exc).__name__, exc)
                score = None
            with self._cond:
                self._running = False
                self._counts["scored" if score is not None else f"skipped_{SKIP_ERROR}"] += 1
            if score is not None:
                try:
                    self._on_score(score)
                except Exception:
                    _log.exception("could not publish the shadow score of part %s", job.part_id)

    def _score(self, job: _Job) -> ShadowScore | None:
        with self._model_lock:
            model = self._model
            if model is None:
                return None
            start = self._clock_ns()
            if self._buffer is None:
                self._buffer = np.zeros((1, *model.input_chw), dtype=np.float32)
            preprocess_into(job.image, model.manifest.preprocessing, job.channel_order, self._buffer[0])
            scores = model.score(self._buffer[:1])
            latency_ms = (self._clock_ns() - start) / 1e6
        self.budget.observe_shadow(latency_ms)
        if scores.problems[0] is not None:
            return None
        return ShadowScore(
            part_id=job.part_id,
            shadow_version=model.version,
            live_version=job.live_version,
            defect_probability=float(scores.probabilities[0]),
            live_probability=job.live_probability,
            latency_ms=latency_ms,
            stamp_ns=self._wall_ns(),
            context=job.context,
        )

    def wait_idle(self, timeout: float) -> bool:
        """Test helper: True once no part is waiting or being scored."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if self._slot is None and not self._running:
                    return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        previous = self.set_model(None)
        if previous is not None:
            previous.close()
