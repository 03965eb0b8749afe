"""What the cloud link gives back to the cell, as plain values (the node turns them into messages): its own
alerts, the cloud's re-inspection verdicts, and its health for /diagnostics."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class HealthLevel(IntEnum):  # the values of diagnostic_msgs/DiagnosticStatus levels
    OK = 0
    WARN = 1
    ERROR = 2


@dataclass(frozen=True)
class LinkAlert:
    severity: str  # a name of qc_contract.vocabulary.Severity
    code: str
    message: str


@dataclass(frozen=True)
class CloudVerdict:
    """The cloud's re-inspection verdict, in time to be used for the part."""

    part_id: str
    capture_ns: int
    verdict: int  # a qc_contract.vocabulary.Verdict value
    defect_probability: float  # NaN when the cloud gave none
    model_version: str
    reason: str = "cloud_verify"


@dataclass(frozen=True)
class Health:
    level: HealthLevel
    message: str
    values: dict[str, Any]
