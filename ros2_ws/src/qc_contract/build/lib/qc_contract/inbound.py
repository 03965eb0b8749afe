"""Parse and validate inbound MQTT JSON (model updates, verify responses): every failure is an
InboundError with a short reason code (counted by the caller) and a detail for the log."""

from __future__ import annotations

import json
from typing import Any

from qc_contract import schemas
from qc_contract.records import SCHEMA_VERSION


class InboundError(Exception):
    """reason: machine-readable code (oversized, malformed_json, unsupported_schema_version, unknown_field,
    schema_violation, bad_signature, hash_mismatch, ...); detail: human-readable text without secrets."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse(payload: bytes, schema_name: str, max_bytes: int) -> dict[str, Any]:
    """Size first (before any parsing), then JSON, then schema version, then the full schema."""
    if len(payload) > max_bytes:
        raise InboundError("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InboundError("malformed_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise InboundError("malformed_json", f"expected a JSON object, got {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InboundError(
            "unsupported_schema_version", f"schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    errors = sorted(schemas.validator(schema_name).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        unknown = [e for e in errors if e.validator == "additionalProperties"]
        first = unknown[0] if unknown else errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise InboundError("unknown_field" if unknown else "schema_violation", f"{where}: {first.message[:200]}")
    return data


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
