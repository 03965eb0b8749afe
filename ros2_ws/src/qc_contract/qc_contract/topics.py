"""MQTT topic names of one cell: everything lives under qc/<site>/<line>/<cell>/."""

from __future__ import annotations

import re
from dataclasses import dataclass

from qc_contract.broker import BridgeConfigError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Outbound record streams (each has its own sequence numbers) -> topic below the cell prefix.
STREAM_TOPICS: dict[str, str] = {
    "part": "part",
    "kpi": "kpi",
    "alert": "alert",
    "reject": "reject",
    "reconcile": "reconcile",
    "process": "process",
    "model_status": "model/status",
    "sample": "sample",
    "verify_request": "verify/request",
    "verify": "verify/result",
    "shadow_score": "shadow",
}

# Records the cloud itself publishes below a cell's prefix -> topic. They are not a cell stream: no epoch/seq,
# each is keyed by its own identity (a verification by the request it answers), so no seq gaps exist for them.
CLOUD_RECORD_TOPICS: dict[str, str] = {
    "verification": "verify/verification",
}


@dataclass(frozen=True)
class CellId:
    site: str
    line: str
    cell: str

    def __post_init__(self) -> None:
        for key in ("site", "line", "cell"):
            value = getattr(self, key)
            if not _NAME.match(value):
                raise BridgeConfigError(
                    f"{key} {value!r}: use 1-64 letters, digits, '_', '.', '-' (no MQTT wildcards or '/')"
                )

    @property
    def path(self) -> str:
        """'site/line/cell', as records carry it."""
        return f"{self.site}/{self.line}/{self.cell}"

    @property
    def prefix(self) -> str:
        return f"qc/{self.path}/"

    def topic(self, suffix: str) -> str:
        return self.prefix + suffix

    def stream_topic(self, stream: str) -> str:
        return self.prefix + STREAM_TOPICS[stream]

    # Presence (retained birth / last will), not an outbox record.
    @property
    def status(self) -> str:
        return self.topic("status")

    # Inbound.
    @property
    def model_update(self) -> str:
        return self.topic("model/update")

    @property
    def model_chunks(self) -> str:
        """Subscription filter for artifact chunks: model/chunk/<version>/<index>."""
        return self.topic("model/chunk/#")

    @property
    def verify_response(self) -> str:
        return self.topic("verify/response")

    # Cloud verifier -> fleet: one record per request the verifier handled (verification.schema.json).
    @property
    def verify_verification(self) -> str:
        return self.topic(CLOUD_RECORD_TOPICS["verification"])

    def chunk_topic(self, version: str, index: int) -> str:
        return self.topic(f"model/chunk/{version}/{index}")

    def parse_chunk_topic(self, topic: str) -> tuple[str, int] | None:
        """model/chunk/<version>/<index> -> (version, index); None when the topic is not one."""
        head = self.topic("model/chunk/")
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        return parts[0], int(parts[1])


# The cloud verifier (qc_cloud verifier): every worker subscribes to all cells' requests through one MQTT 5 shared
# subscription, so the broker hands each request to one worker of the group.
VERIFY_REQUEST_FILTER = "qc/+/+/+/verify/request"


def verify_request_subscription(group: str) -> str:
    """$share/<group>/qc/+/+/+/verify/request: the workers of one group share the requests."""
    if not _NAME.match(group):
        raise BridgeConfigError(f"verifier group {group!r}: use 1-64 letters, digits, '_', '.', '-'")
    return f"$share/{group}/{VERIFY_REQUEST_FILTER}"


def cell_of_request_topic(topic: str) -> CellId | None:
    """qc/<site>/<line>/<cell>/verify/request -> CellId; None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != "qc" or parts[4:] != ["verify", "request"]:
        return None
    try:
        return CellId(parts[1], parts[2], parts[3])
    except BridgeConfigError:
        return None


def verifier_status_topic(worker: str) -> str:
    """Retained status and load figures of one verifier worker (online birth / offline will)."""
    if not _NAME.match(worker):
        raise BridgeConfigError(f"verifier worker id {worker!r}: use 1-64 letters, digits, '_', '.', '-'")
    return f"qc-verifier/{worker}/status"
