"""Ingest rules, without I/O: what one MQTT message is (a record to store, a presence update, ignored, or
quarantined with a reason). The schemas are the contract's (qc_contract.schemas), the ones the cell uses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from jsonschema import ValidationError

from qc_contract import schema_check, schemas
from qc_contract.topics import CLOUD_RECORD_TOPICS, STREAM_TOPICS

# Topic suffix (below qc/<site>/<line>/<cell>/) -> record type. `status` is presence, not a stream.
SUFFIX_TYPES = {suffix: kind for kind, suffix in (*STREAM_TOPICS.items(), *CLOUD_RECORD_TOPICS.items())}
STREAM_TYPES = tuple(STREAM_TOPICS)  # the cell's streams: <epoch>-<type>-<seq> ids, seq gaps tracked
# The cloud's own records below a cell's prefix (the verifier's verification): no epoch/seq, keyed by their own
# identity (verification_key), no seq gaps.
CLOUD_TYPES = tuple(CLOUD_RECORD_TOPICS)
IMAGE_TYPES = ("sample", "verify_request")
# The cloud's own messages to a cell; a subscription to qc/+/+/+/# sees them, ingest ignores them.
INBOUND_SUFFIXES = ("model/update", "verify/response")
INBOUND_PREFIXES = ("model/chunk/",)

MAX_RECORD_BYTES = 64 * 1024  # a part summary is ~440 B; a record 150 times that is not one
MAX_IMAGE_RECORD_BYTES = 8 * 1024 * 1024  # sample / verify_request (a base64 JPEG)
MAX_SEQ = 2**62
INT64 = 2**63


class Refused(ValueError):  # noqa: N818 (a verdict, not a failure)
    """The message is not a record this service stores; str() is the reason kept in quarantine."""


@dataclass
class Record:
    kind: str  # a stream type, or "status"
    cell: str  # site/line/cell
    body: dict[str, Any]
    time: datetime | None = None  # the record's own time (naive UTC), None when it has none
    image: bytes | None = None  # decoded JPEG of sample / verify_request (not kept in body)
    heatmap: bytes | None = None  # decoded greyscale JPEG of a sample's class-activation map (optional)
    extra: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the identity of a record without an `id` (CLOUD_TYPES)

    @property
    def id(self) -> str:
        return self.key or self.body.get("id", "")

    @property
    def sequenced(self) -> bool:
        """A cell stream's record (epoch/seq: counted per stream, gaps tracked), not one of the cloud's own."""
        return self.kind in STREAM_TYPES


@dataclass(frozen=True)
class Ignored:
    reason: str


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def parse_topic(topic: str) -> tuple[str, str]:
    """qc/<site>/<line>/<cell>/<suffix> -> ('site/line/cell', suffix)."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != "qc" or not all(parts[1:4]):
        raise Refused(f"topic {topic[:200]!r} is not qc/<site>/<line>/<cell>/<stream>")
    return "/".join(parts[1:4]), "/".join(parts[4:])


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _check_values(value: Any, depth: int = 0) -> None:
    """Nothing a database column cannot hold: integers beyond 64 bits, nesting beyond 32 levels."""
    if depth > 32:
        raise Refused("nested deeper than 32 levels")
    if isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -INT64 <= value < INT64:
            raise Refused(f"integer {str(value)[:40]} does not fit 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, depth + 1)
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one decoder, not one per record
_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?Z$")


def parse_time(text: str | None) -> datetime | None:
    """RFC 3339 UTC ('...Z', up to 9 fraction digits, as the schemas allow) -> naive UTC datetime."""
    if text is None:
        return None
    match = _TIME.match(text)
    if match is None:
        raise Refused(f"time {text[:40]!r} is not RFC 3339 UTC")
    *fields, frac = match.groups()
    try:
        return datetime(*map(int, fields), int((frac or "").ljust(6, "0")[:6]))
    except ValueError as exc:
        raise Refused(f"time {text[:40]!r}: {exc}") from None


def verification_key(body: dict[str, Any], payload: bytes) -> str:
    """A verification's identity within its cell: the request it answers, so a redelivered request (answered
    twice) or a redelivered record is stored once. The request id is the cell's verify_request record id, so
    the key carries a prefix (record_ids is shared by all kinds); one too long for the id column, or none (a
    request the verifier could not read), is keyed by a hash (of the request id, else of the record's bytes)."""
    request_id = body["request_id"]
    if request_id and len(request_id) <= 100 and request_id.isprintable():
        return f"verification:{request_id}"
    return "verification#" + hashlib.sha256(request_id.encode() if request_id else payload).hexdigest()[:64]


def record_time(kind: str, body: dict[str, Any]) -> datetime | None:
    """The time a record is filed under: decision time for parts, capture for images, the verifier's answer for
    a verification, else `time`."""
    if kind == "verification":
        return parse_time(body["answered_time"])
    if kind == "part":
        return parse_time(body["decision_time"]) or parse_time(body["capture_time"])
    if kind in IMAGE_TYPES or kind in ("reject",):
        return parse_time(body.get("capture_time"))
    return parse_time(body.get("time")) if "time" in body else None


def classify(topic: str, payload: bytes) -> Record | Ignored:
    """One MQTT message -> a Record (validated), Ignored (the cloud's own inbound topics), or raises Refused."""
    cell, suffix = parse_topic(topic)
    if suffix in INBOUND_SUFFIXES or suffix.startswith(INBOUND_PREFIXES):
        return Ignored(f"inbound topic {suffix}")
    kind = "status" if suffix == "status" else SUFFIX_TYPES.get(suffix)
    if kind is None:
        raise Refused(f"unknown stream topic {suffix[:100]!r}")
    limit = MAX_IMAGE_RECORD_BYTES if kind in IMAGE_TYPES else MAX_RECORD_BYTES
    if len(payload) > limit:
        raise Refused(f"{len(payload)} bytes: more than the {limit} a {kind} record may have")
    try:
        body = _DECODER.decode(payload.decode())  # UTF-8 only (RFC 8259); NaN and Infinity refused
    except RecursionError:
        raise Refused("not JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise Refused(f"not a JSON object but {type(body).__name__}")
    if b"\\u0000" in payload and _has_nul(body):  # JSON carries a NUL only escaped; PostgreSQL text cannot
        raise Refused("a string holds a NUL character")
    if body.get("type") != kind:
        raise Refused(f"type {str(body.get('type'))[:40]!r} on the {kind} topic")
    if not schema_check.is_valid(kind, body):  # compiled from the same schema; jsonschema says why
        try:
            schemas.validator(kind).validate(body)
        except ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "record"
            raise Refused(f"schema {kind}: {where}: {exc.message[:300]}") from None
        raise Refused(f"schema {kind}: refused by the compiled check, accepted by jsonschema (report this)")
    if kind == "status":  # `details` is free-form: every level
        _check_values(body)
    else:  # the schema fixes the shape: integers sit at most three levels down (KPI distributions' bins)
        for value in body.values():
            t = type(value)
            if t is int:
                if not -INT64 <= value < INT64:
                    raise Refused(f"integer {str(value)[:40]} does not fit 64 bits")
            elif t is dict or t is list:
                _check_values(value, 28)
    if body["cell"] != cell:
        raise Refused(f"cell {body['cell']!r} published on the topic of {cell!r}")
    if kind in STREAM_TYPES:
        if body["seq"] > MAX_SEQ:
            raise Refused(f"seq {body['seq']} out of range")
        expected = f"{body['epoch']}-{kind}-{body['seq']}"
        if body["id"] != expected:
            raise Refused(f"id {body['id'][:128]!r} is not <epoch>-<type>-<seq> ({expected})")
    if kind == "part":  # both times are columns: parse each once
        capture, decision = parse_time(body["capture_time"]), parse_time(body["decision_time"])
        times = {"capture_time": capture, "decision_time": decision}
        record = Record(kind, cell, body, decision or capture, extra=times)
    else:
        record = Record(kind, cell, body, record_time(kind, body))
    if kind in CLOUD_TYPES:
        record.key = verification_key(body, payload)
    if kind in IMAGE_TYPES:
        try:
            record.image = base64.b64decode(body["image_b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Refused(f"image_b64: {exc}") from None
        if not record.image.startswith(b"\xff\xd8"):
            raise Refused("image_b64 is not a JPEG")
        record.extra["sha256"] = hashlib.sha256(record.image).hexdigest()
        if body.get("heatmap_b64"):
            try:
                record.heatmap = base64.b64decode(body["heatmap_b64"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Refused(f"heatmap_b64: {exc}") from None
            if not record.heatmap.startswith(b"\xff\xd8"):
                raise Refused("heatmap_b64 is not a JPEG")
            record.extra["heatmap_sha256"] = hashlib.sha256(record.heatmap).hexdigest()
    return record


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
