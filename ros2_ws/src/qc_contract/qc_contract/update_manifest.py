"""Signed model update manifests, shared by the cloud CLI (which signs) and the edge (which verifies).

The signature is Ed25519 over the canonical manifest: the JSON object without its `signature` field,
keys sorted, no whitespace, ASCII only (json.dumps(sort_keys=True, separators=(",", ":"))). The manifest
holds only strings, integers and objects of them, so the canonical form is unambiguous.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qc_contract.inbound import InboundError
from qc_contract.records import SCHEMA_VERSION, iso_time


class KeyFileError(ValueError):
    """A key file is missing or not an Ed25519 key."""


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"public key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"public key {path} is not an Ed25519 key")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"private key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"private key {path} is not an Ed25519 key")
    return key


def trusted_keys(paths: list[str]) -> dict[str, Ed25519PublicKey]:
    """key_id -> public key, for every configured key (several allow a key rotation)."""
    keys = {}
    for path in paths:
        key = load_public_key(path)
        keys[key_id(key)] = key
    return keys


def build(
    *,
    version: str,
    sha256: str,
    size: int,
    artifact: Mapping[str, Any],
    issued_ns: int,
    expires_ns: int = 0,
    targets: list[str] | None = None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "model_update",
        "version": version,
        "sha256": sha256,
        "size": size,
        "format": "tar.gz",
        "artifact": dict(artifact),
        "issued_at": iso_time(issued_ns),
    }
    if expires_ns:
        manifest["expires_at"] = iso_time(expires_ns)
    if targets:
        manifest["targets"] = list(targets)
    return manifest


def sign(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    signed = {k: v for k, v in manifest.items() if k != "signature"}
    signed["key_id"] = key_id(private_key.public_key())
    signed["signature"] = base64.b64encode(private_key.sign(canonical_bytes(signed))).decode()
    return signed


def verify_signature(manifest: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> None:
    """Raises InboundError(no_trusted_key | unknown_key | bad_signature)."""
    if not keys:
        raise InboundError("no_trusted_key", "no public key is configured at the edge: updates are refused")
    key = keys.get(str(manifest.get("key_id", "")))
    if key is None:
        raise InboundError("unknown_key", f"key_id {manifest.get('key_id')!r} is not a trusted key")
    try:
        signature = base64.b64decode(str(manifest.get("signature", "")), validate=True)
        key.verify(signature, canonical_bytes(manifest))
    except (InvalidSignature, ValueError):
        raise InboundError("bad_signature", "Ed25519 signature does not match the manifest") from None


_TOKEN = re.compile(r"(\d+)")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order: numeric runs compare as numbers ('1.10' > '1.9', '...-20250101T...' > '...-20241231T...')."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in _TOKEN.split(version) if t)


def compare_versions(a: str, b: str) -> int:
    """-1, 0, 1 as a <, ==, > b in natural order."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)
