"""What the cell tells the cloud link, as plain values (the node converts its ROS messages into these), and the
clocks the link reads.

Times are wall-clock ns since the epoch (0 = unset stamp); verdicts, severities, outcomes and model states are
the message constants' values (their names in qc_contract.records)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clock:
    """wall_ns: the time parts are stamped in (deadlines, recovered verdicts); monotonic_ns: rates and round trips."""

    wall_ns: Callable[[], int] = time.time_ns
    monotonic_ns: Callable[[], int] = time.monotonic_ns


@dataclass(frozen=True, slots=True)
class PartVerdict:
    part_id: str
    verdict: int
    reasons: tuple[str, ...]
    defect_probability: float
    process_anomaly_score: float
    process_flags: int
    model_version: str
    encoder_count: int
    capture_ns: int
    decision_ns: int
    capture_to_decision_ms: float
    image_stats: tuple[float, float, float] = (math.nan, math.nan, math.nan)  # drift statistics (QualityDecision)


@dataclass(frozen=True, slots=True)
class PartImage:
    """A part's frame. `decode` gives it as a BGR8 array, and is called only when the image is sent (samples,
    offload): most frames are never decoded. It raises ValueError when the image cannot be converted."""

    part_id: str
    captured: bool
    decode: Callable[[], np.ndarray]


@dataclass(frozen=True, slots=True)
class KpiReport:
    stamp_ns: int
    window_s: float
    parts: int
    counts: Mapping[str, int]  # by verdict name
    yield_ratio: float
    throughput_pps: float
    latency_ms: Mapping[str, float]  # p50, p95, p99
    reasons: Mapping[str, int]
    total_parts: int


@dataclass(frozen=True, slots=True)
class AlertReport:
    stamp_ns: int
    severity: int
    source: str
    code: str
    message: str
    part_id: str


@dataclass(frozen=True, slots=True)
class RejectReport:
    part_id: str
    verdict: int
    outcome: int
    method: str
    lane: str
    capture_ns: int
    planned_ns: int
    actual_ns: int
    lateness_ms: float
    message: str


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    part_id: str
    verdict: int
    has_verdict: bool
    lane: str
    status: int
    outcome: int
    terminal_events: int
    capture_ns: int
    deadline_ns: int


@dataclass(frozen=True, slots=True)
class ProcessReport:
    stamp_ns: int
    temperature_c: float
    pressure_pa: float
    vibration_rms: float
    anomaly_score: float
    flags: int
    out_of_spec: bool
    stale: bool


@dataclass(frozen=True, slots=True)
class ModelReport:
    """The inference node's model state (model/active)."""

    stamp_ns: int
    version: str
    sha256: str
    backend: str
    precision: str
    state: int
    message: str


@dataclass(frozen=True, slots=True)
class ShadowScoreReport:
    """One part scored by the shadow model (inspection/shadow)."""

    stamp_ns: int
    part_id: str
    shadow_version: str
    live_version: str
    defect_probability: float
    latency_ms: float


@dataclass(frozen=True, slots=True)
class ShadowStateReport:
    """The inference node's shadow model and its scored/skipped counts (model/shadow)."""

    stamp_ns: int
    version: str
    counts: dict[str, int]
    message: str
