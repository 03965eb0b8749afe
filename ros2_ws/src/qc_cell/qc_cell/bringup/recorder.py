"""Record what a running cell does, part by part, from its topics (for the demo report and system tests)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from rclpy.node import Node

from qc_cell.ros import qos
from qc_cell.ros.time import to_ns
from qc_interfaces.msg import InspectionResult, PartTrigger, QualityDecision, RejectEvent


@dataclass
class DecisionRecord:
    part_id: str
    verdict: int
    reasons: list[str]
    defect_probability: float
    ground_truth: int
    defect_type: str
    latency_ms: float
    capture_ns: int
    received_monotonic: float
    model_version: str = ""  # the model that scored the part ("" when none did)


@dataclass
class CellRecord:
    parts: dict[str, int] = field(default_factory=dict)  # part_id -> capture ns (from camera/parts)
    results: dict[str, int] = field(default_factory=dict)  # part_id -> InspectionResult.status
    decisions: dict[str, DecisionRecord] = field(default_factory=dict)
    duplicate_decisions: list[str] = field(default_factory=list)
    reject_events: dict[str, list[int]] = field(default_factory=dict)  # part_id -> outcomes


class CellRecorder:
    """Subscribes to camera/parts, inspection/result, quality/decision and reject/event of one cell."""

    def __init__(self, node: Node) -> None:
        self.record = CellRecord()
        self._lock = threading.Lock()
        node.create_subscription(PartTrigger, "camera/parts", self._on_part, qos.EVENTS)
        node.create_subscription(InspectionResult, "inspection/result", self._on_result, qos.EVENTS)
        node.create_subscription(QualityDecision, "quality/decision", self._on_decision, qos.EVENTS)
        node.create_subscription(RejectEvent, "reject/event", self._on_reject, qos.EVENTS)

    def _on_part(self, msg: PartTrigger) -> None:
        with self._lock:
            self.record.parts.setdefault(msg.part_id, to_ns(msg.header.stamp))

    def _on_result(self, msg: InspectionResult) -> None:
        with self._lock:
            self.record.results.setdefault(msg.part_id, msg.status)

    def _on_decision(self, msg: QualityDecision) -> None:
        with self._lock:
            if msg.part_id in self.record.decisions:
                self.record.duplicate_decisions.append(msg.part_id)
                return
            self.record.decisions[msg.part_id] = DecisionRecord(
                part_id=msg.part_id,
                verdict=msg.verdict,
                reasons=list(msg.reasons),
                defect_probability=float(msg.defect_probability),
                ground_truth=msg.ground_truth,
                defect_type=msg.defect_type,
                latency_ms=float(msg.capture_to_decision_ms),
                capture_ns=to_ns(msg.header.stamp),
                received_monotonic=time.monotonic(),
                model_version=msg.model_version,
            )

    def _on_reject(self, msg: RejectEvent) -> None:
        with self._lock:
            self.record.reject_events.setdefault(msg.part_id, []).append(msg.outcome)

    def snapshot(self) -> CellRecord:
        with self._lock:
            return CellRecord(
                parts=dict(self.record.parts),
                results=dict(self.record.results),
                decisions=dict(self.record.decisions),
                duplicate_decisions=list(self.record.duplicate_decisions),
                reject_events={k: list(v) for k, v in self.record.reject_events.items()},
            )


def finite(value: float) -> bool:
    return value is not None and math.isfinite(value)
