"""JSON records the cell sends to the cloud (schema in qc_contract/schemas/<type>.schema.json, see docs/mqtt.md).

Builders take plain Python values (the node converts ROS messages), return the record body; envelope()
adds what every record carries: schema_version, type, cell, epoch, seq, id. Encoded compactly: records
are most of the cell's traffic and the budget is a small fraction of one image per part.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from qc_contract.vocabulary import (
    MODEL_STATE_NAMES,
    OUTCOME_NAMES,
    SEVERITY_NAMES,
    SIMULATED_INPUTS,
    VERDICT_NAMES,
    name_of,
)

# Bumped on an incompatible change only. An added optional property (e.g. `simulated`) keeps it: records without
# it, written before, still validate and read the same.
SCHEMA_VERSION = 1


def simulated(inputs: Iterable[str]) -> dict[str, list[str]]:
    """The `simulated` property of part, reject and process records: {} when every input is real (the property is
    then absent), else the simulated inputs in vocabulary order. Raises ValueError on a name outside it."""
    names = set(inputs)
    unknown = names - set(SIMULATED_INPUTS)
    if unknown:
        raise ValueError(f"simulated inputs {sorted(unknown)}: known are {list(SIMULATED_INPUTS)}")
    return {"simulated": [name for name in SIMULATED_INPUTS if name in names]} if names else {}


def iso_time(ns: int) -> str | None:
    """Nanoseconds since the epoch -> RFC 3339 UTC with microseconds; None for 0 (unset ROS stamp)."""
    if ns <= 0:
        return None
    seconds, rest = divmod(int(ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1000:06d}Z"


def number(value: float, digits: int = 4) -> float | None:
    """JSON has no NaN/inf: those become null. Rounded, since float32 sources carry no more precision."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def envelope(cell: str, epoch: str, stream: str, seq: int, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "type": stream,
        "cell": cell,
        "epoch": epoch,
        "seq": seq,
        "id": record_id(epoch, stream, seq),
        **body,
    }


def record_id(epoch: str, stream: str, seq: int) -> str:
    """Unique per cell: the outbox epoch (new only when the outbox file is recreated), stream and sequence."""
    return f"{epoch}-{stream}-{seq}"


def encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def part(
    *,
    part_id: str,
    verdict: int,
    reasons: Iterable[str],
    defect_probability: float,
    process_anomaly_score: float,
    process_flags: int,
    model_version: str,
    encoder_count: int,
    capture_ns: int,
    decision_ns: int,
    capture_to_decision_ms: float,
    simulated_inputs: Iterable[str] = (),
) -> dict[str, Any]:
    return {
        "part_id": part_id,
        "verdict": name_of(VERDICT_NAMES, verdict),
        "reasons": list(reasons),
        "defect_probability": number(defect_probability),
        "process_anomaly_score": number(process_anomaly_score),
        "process_flags": int(process_flags),
        "model_version": model_version,
        "encoder_count": int(encoder_count),
        "capture_time": iso_time(capture_ns),
        "decision_time": iso_time(decision_ns),
        "capture_to_decision_ms": number(capture_to_decision_ms, 2),
        **simulated(simulated_inputs),
    }


def kpi(
    *,
    stamp_ns: int,
    window_s: float,
    parts: int,
    counts: Mapping[str, int],
    yield_ratio: float,
    throughput_pps: float,
    latency_ms: Mapping[str, float],
    reasons: Mapping[str, int],
    total_parts: int,
    distributions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`distributions` (optional, drift_distributions()): histograms of the parts since the previous KPI record."""
    return {
        "time": iso_time(stamp_ns),
        "window_s": number(window_s, 3),
        "parts": int(parts),
        "verdicts": {name: int(counts.get(name, 0)) for name in VERDICT_NAMES.values()},
        "yield_ratio": number(yield_ratio),
        "throughput_pps": number(throughput_pps, 3),
        "latency_ms": {key: number(value, 2) for key, value in latency_ms.items()},
        "reasons": {str(k): int(v) for k, v in reasons.items()},
        "total_parts": int(total_parts),
        **({"distributions": dict(distributions)} if distributions else {}),
    }


def drift_distributions(*, model_version: str, parts: int, counts: Mapping[str, Iterable[int]]) -> dict[str, Any]:
    """The KPI record's optional `distributions` block: fixed-bin histograms (qc_contract.drift.BINS) of the
    per-part image statistics and of the defect probability over the `parts` decided since the previous KPI record
    (consecutive records do not overlap: the fleet sums them into windows) by model `model_version`."""
    from qc_contract.drift import check_layout

    histograms = {str(k): [int(v) for v in values] for k, values in counts.items()}
    check_layout(histograms)
    return {"model_version": model_version, "parts": int(parts), "histograms": histograms}


def alert(*, stamp_ns: int, severity: int, source: str, code: str, message: str, part_id: str) -> dict[str, Any]:
    return {
        "time": iso_time(stamp_ns),
        "severity": name_of(SEVERITY_NAMES, severity),
        "source": source,
        "code": code,
        "message": message,
        "part_id": part_id,
    }


def reject(
    *,
    part_id: str,
    verdict: int,
    outcome: int,
    method: str,
    lane: str,
    capture_ns: int,
    planned_ns: int,
    actual_ns: int,
    lateness_ms: float,
    message: str,
    simulated_inputs: Iterable[str] = (),
) -> dict[str, Any]:
    return {
        "part_id": part_id,
        "verdict": name_of(VERDICT_NAMES, verdict),
        "outcome": name_of(OUTCOME_NAMES, outcome),
        "method": method,
        "lane": lane,
        "capture_time": iso_time(capture_ns),
        "planned_time": iso_time(planned_ns),
        "actual_time": iso_time(actual_ns),
        "lateness_ms": number(lateness_ms, 2),
        "message": message,
        **simulated(simulated_inputs),
    }


RECONCILE_STATUS_NAMES = {0: "RESOLVED", 1: "OVERDUE", 2: "DUPLICATE"}  # msg/Reconciliation.msg constants


def reconcile(
    *,
    part_id: str,
    verdict: int,
    has_verdict: bool,
    lane: str,
    status: int,
    outcome: int,
    terminal_events: int,
    capture_ns: int,
    deadline_ns: int,
    simulated_inputs: Iterable[str] = (),
) -> dict[str, Any]:
    """The reconciler's finding on one part (schemas/reconcile.schema.json); outcome -1: no terminal event."""
    return {
        "part_id": part_id,
        "verdict": name_of(VERDICT_NAMES, verdict),
        "has_verdict": bool(has_verdict),
        "lane": lane,
        "status": name_of(RECONCILE_STATUS_NAMES, status),
        "outcome": None if outcome < 0 else name_of(OUTCOME_NAMES, outcome),
        "terminal_events": int(terminal_events),
        "capture_time": iso_time(capture_ns),
        "deadline_time": iso_time(deadline_ns),
        **simulated(simulated_inputs),
    }


def process(
    *,
    stamp_ns: int,
    temperature_c: float,
    pressure_pa: float,
    vibration_rms: float,
    anomaly_score: float,
    flags: int,
    out_of_spec: bool,
    stale: bool,
    simulated_inputs: Iterable[str] = (),
) -> dict[str, Any]:
    return {
        "time": iso_time(stamp_ns),
        "temperature_c": number(temperature_c, 3),
        "pressure_pa": number(pressure_pa, 1),
        "vibration_rms": number(vibration_rms, 4),
        "anomaly_score": number(anomaly_score),
        "flags": int(flags),
        "out_of_spec": bool(out_of_spec),
        "stale": bool(stale),
        **simulated(simulated_inputs),
    }


def model_state(
    *,
    stamp_ns: int,
    version: str,
    sha256: str,
    backend: str,
    precision: str,
    state: int,
    message: str,
    defect_types: Iterable[str] = (),
) -> dict[str, Any]:
    """The inference node's model (model/active) as the cloud sees it on model/status. `defect_types`
    (optional, left out when unknown): the types the active model was trained on, from its manifest."""
    body = {
        "time": iso_time(stamp_ns),
        "event": "model_state",
        "state": name_of(MODEL_STATE_NAMES, state),
        "active_version": version,
        "sha256": sha256,
        "backend": backend,
        "precision": precision,
        "message": message,
    }
    types = [str(t)[:64] for t in defect_types][:64]
    if types:
        body["defect_types"] = types
    return body


def update_outcome(
    *,
    stamp_ns: int,
    accepted: bool,
    version: str,
    reason: str,
    detail: str,
    active_version: str,
    role: str = "",
    shadow_version: str | None = None,
) -> dict[str, Any]:
    """The outcome of one model update manifest, on model/status; `role` (optional): the manifest's role."""
    body = {
        "time": iso_time(stamp_ns),
        "event": "update_accepted" if accepted else "update_rejected",
        "version": version,
        "reason": reason,
        "message": detail,
        "active_version": active_version,
    }
    if role:
        body["role"] = role
    if shadow_version is not None:
        body["shadow_version"] = shadow_version
    return body


def shadow_state(
    *, stamp_ns: int, active_version: str, shadow_version: str, counts: Mapping[str, int], message: str = ""
) -> dict[str, Any]:
    """The cell's shadow model and its scored/skipped counts, on model/status (event shadow_state)."""
    return {
        "time": iso_time(stamp_ns),
        "event": "shadow_state",
        "active_version": active_version,
        "shadow_version": shadow_version,
        "shadow_counts": {str(k): int(v) for k, v in counts.items()},
        "message": message,
    }


def shadow_score(
    *,
    stamp_ns: int,
    part_id: str,
    shadow_version: str,
    live_version: str,
    defect_probability: float,
    latency_ms: float,
) -> dict[str, Any]:
    """One part scored by the shadow model (schemas/shadow_score.schema.json)."""
    return {
        "time": iso_time(stamp_ns),
        "part_id": part_id,
        "shadow_version": shadow_version,
        "live_version": live_version,
        "defect_probability": min(1.0, max(0.0, float(defect_probability))),
        "latency_ms": number(latency_ms, 2),
    }


def image_record(
    *,
    part_id: str,
    verdict: int,
    defect_probability: float,
    reasons: Iterable[str],
    model_version: str,
    capture_ns: int,
    width: int,
    height: int,
    jpeg_b64: str,
    deadline_ns: int | None = None,
    heatmap_b64: str | None = None,
    random_sample: bool = False,
) -> dict[str, Any]:
    """A JPEG of one part with its metadata: the sample channel (retraining) and verify requests.
    Samples only: `heatmap_b64` (greyscale JPEG of the class-activation map, same size) and `random_sample`
    (picked by the random rate, not by its verdict) are optional fields, left out when absent/false."""
    body: dict[str, Any] = {
        "part_id": part_id,
        "verdict": name_of(VERDICT_NAMES, verdict),
        "defect_probability": number(defect_probability),
        "reasons": list(reasons),
        "model_version": model_version,
        "capture_time": iso_time(capture_ns),
        "encoding": "jpeg",
        "width": int(width),
        "height": int(height),
        "image_b64": jpeg_b64,
    }
    if deadline_ns is not None:
        body["deadline"] = iso_time(deadline_ns)
    if heatmap_b64:
        body["heatmap_b64"] = heatmap_b64
    if random_sample:
        body["random_sample"] = True
    return body


def verify_result(
    *,
    part_id: str,
    request_id: str,
    local_verdict: int,
    cloud_verdict: str | None,
    outcome: str,
    rtt_ms: float | None,
    policy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What became of one re-inspection offload: used (cloud verdict in time), late, no_response, not_sent,
    expired / refused (answered without a verdict). `policy`: the offload policy's decision and reason."""
    body = {
        "part_id": part_id,
        "request_id": request_id,
        "local_verdict": name_of(VERDICT_NAMES, local_verdict),
        "cloud_verdict": cloud_verdict,
        "outcome": outcome,
        "rtt_ms": None if rtt_ms is None else number(rtt_ms, 2),
    }
    if policy:
        body["policy"] = dict(policy)
    return body


def verify_response(
    *,
    part_id: str,
    request_id: str,
    outcome: str = "scored",
    verdict: str | None = None,
    defect_probability: float | None = None,
    model_version: str = "",
    reason: str = "",
) -> dict[str, Any]:
    """The cloud verifier's answer on .../verify/response: a verdict when scored, else outcome and reason."""
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "verify_response",
        "part_id": part_id,
        "request_id": request_id,
        "outcome": outcome,
        "verdict": verdict,
    }
    if defect_probability is not None:
        body["defect_probability"] = number(defect_probability)
    if model_version:
        body["model_version"] = model_version
    if reason:
        body["reason"] = reason
    return body


def verification(
    *,
    cell: str,
    request_id: str,
    part_id: str,
    verifier: str,
    outcome: str,
    reason: str,
    verdict: str | None,
    defect_probability: float | None,
    local_verdict: str | None,
    local_defect_probability: float | None,
    edge_model_version: str,
    model_version: str,
    capture_time: str | None,
    deadline: str | None,
    received_ns: int,
    answered_ns: int,
    queue_ms: float | None,
    service_ms: float | None,
    batch_size: int | None,
    image_bytes: int,
) -> dict[str, Any]:
    """What the cloud verifier did with one request (verification.schema.json), for the fleet service to store
    next to the part; its identity is (cell, request_id)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "verification",
        "cell": cell,
        "request_id": request_id,
        "part_id": part_id,
        "verifier": verifier,
        "outcome": outcome,
        "reason": reason,
        "verdict": verdict,
        "defect_probability": None if defect_probability is None else number(defect_probability),
        "local_verdict": local_verdict,
        "local_defect_probability": None if local_defect_probability is None else number(local_defect_probability),
        "edge_model_version": edge_model_version,
        "model_version": model_version,
        "capture_time": capture_time,
        "deadline": deadline,
        "received_time": iso_time(received_ns),
        "answered_time": iso_time(answered_ns),
        "queue_ms": None if queue_ms is None else number(queue_ms, 2),
        "service_ms": None if service_ms is None else number(service_ms, 2),
        "batch_size": batch_size,
        "image_bytes": int(image_bytes),
    }


def status(*, cell: str, state: str, stamp_ns: int, reason: str = "", details: Mapping[str, Any] | None = None) -> dict:
    """Presence on .../status (retained): online birth, offline will, periodic health. Not an outbox record:
    it is the current state, not history, and the will cannot be queued by the cell anyway."""
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "status",
        "cell": cell,
        "state": state,
        "time": iso_time(stamp_ns),
    }
    if reason:
        body["reason"] = reason
    if details:
        body["details"] = dict(details)
    return body
