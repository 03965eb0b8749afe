"""Signed model update manifests, shared by the cloud CLI (which signs) and the edge (which verifies).

The signature is Ed25519 over the canonical manifest: the JSON object without its `signature` field,
keys sorted, no whitespace, ASCII only (json.dumps(sort_keys=True, separators=(",", ":"))). The manifest
holds only strings, integers and objects of them, so the canonical form is unambiguous.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qc_contract.inbound import InboundError
from qc_contract.records import SCHEMA_VERSION, iso_time


class KeyFileError(ValueError):
    """A key file is missing or not an Ed25519 key."""


PASSPHRASE_ENV = "QC_SIGNING_KEY_PASSPHRASE"

# What a signed update makes of its model on the cell (the manifest's `role`; absent = live).
ROLE_LIVE = "live"
ROLE_SHADOW = "shadow"
ROLES = (ROLE_LIVE, ROLE_SHADOW)


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


def load_passphrase(passphrase_file: str | Path | None = None, env: str = PASSPHRASE_ENV) -> bytes | None:
    """The signing key's passphrase: first line of passphrase_file, else the environment variable env,
    else None. Never from the command line (it would show in `ps` and the shell history)."""
    if passphrase_file:
        path = Path(passphrase_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise KeyFileError(f"passphrase file {path}: {exc.strerror or exc}") from None
        if not lines or not lines[0]:
            raise KeyFileError(f"passphrase file {path} is empty")
        return lines[0].encode()
    value = os.environ.get(env, "")
    return value.encode() if value else None


def load_private_key(path: str | Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except TypeError:
        if passphrase is None:
            raise KeyFileError(
                f"private key {path} is encrypted: give its passphrase in a file (--passphrase-file) "
                f"or in ${PASSPHRASE_ENV}"
            ) from None
        raise KeyFileError(f"private key {path} is not encrypted, but a passphrase was given") from None
    except ValueError:
        raise KeyFileError(f"private key {path}: wrong passphrase or not a PEM private key") from None
    except OSError as exc:
        raise KeyFileError(f"private key {path}: {exc.strerror or exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"private key {path} is not an Ed25519 key")
    return key


def trusted_keys(paths: list[str], revoked: set[str] | frozenset[str] = frozenset()) -> dict[str, Ed25519PublicKey]:
    """key_id -> public key, for every configured key (several allow a key rotation) not in revoked."""
    keys = {}
    for path in paths:
        key = load_public_key(path)
        if key_id(key) not in revoked:
            keys[key_id(key)] = key
    return keys


class TrustedKeys(Mapping[str, Ed25519PublicKey]):
    """The trusted public keys and the revocation list, re-read whenever one of their files changes (size or
    modification time), so keys can be added, rotated or revoked on a running cell. A file that cannot be
    read any more raises KeyFileError on use: the caller refuses updates rather than keep stale trust."""

    def __init__(self, key_files: list[str], revoked_file: str = "") -> None:
        self.key_files = [str(Path(k).expanduser()) for k in key_files]
        self.revoked_file = str(Path(revoked_file).expanduser()) if revoked_file else ""
        self._stamp: tuple = ()
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.revoked: frozenset[str] = frozenset()
        self.refresh()

    def _current_stamp(self) -> tuple:
        """The files' contents (small PEM and text files): any change, however quick, is seen."""
        stamp = []
        for path in [*self.key_files, self.revoked_file]:
            if not path:
                continue
            try:
                stamp.append((path, Path(path).read_bytes()))
            except OSError:
                stamp.append((path, None))
        return tuple(stamp)

    def refresh(self) -> bool:
        """Re-read the files if they changed; True when they were re-read."""
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        revoked = load_revoked(self.revoked_file)
        self._keys = trusted_keys(self.key_files, revoked)
        self.revoked, self._stamp = revoked, stamp
        return True

    def __getitem__(self, kid: str) -> Ed25519PublicKey:
        self.refresh()
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        self.refresh()
        return iter(dict(self._keys))

    def __len__(self) -> int:
        self.refresh()
        return len(self._keys)


def load_revoked(path: str | Path | None) -> frozenset[str]:
    """Revoked key ids: one 16-hex key id per line, '#' starts a comment. No file configured = none revoked;
    a configured file that is missing or malformed is an error (a revocation must never be lost silently)."""
    if not path:
        return frozenset()
    path = Path(path).expanduser()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise KeyFileError(f"revocation list {path}: {exc.strerror or exc}") from None
    ids = set()
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not re.fullmatch(r"[0-9a-f]{16}", text):
            raise KeyFileError(f"revocation list {path}:{number}: {text!r} is not a 16-hex key id")
        ids.add(text)
    return frozenset(ids)


def target_matches(pattern: str, cell_path: str) -> bool:
    """Segment-wise match of a site/line/cell pattern: each '/'-separated segment is an fnmatch glob that
    never crosses a '/' ('plant1*' matches 'plant10' as a site, never 'plant10/line1/cell1')."""
    want, have = pattern.split("/"), cell_path.split("/")
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w) for w, h in zip(want, have, strict=True))


def build(
    *,
    version: str,
    sha256: str,
    size: int,
    artifact: Mapping[str, Any],
    issued_ns: int,
    expires_ns: int = 0,
    targets: list[str] | None = None,
    rollback_from: str = "",
    role: str = ROLE_LIVE,
) -> dict[str, Any]:
    """targets None or empty: every cell. rollback_from: a signed rollback from that exact active version
    down to `version` (the cell accepts an older version only so). role: ROLE_LIVE (the model decides) or
    ROLE_SHADOW (scored beside the live model, never deciding); signed like every other field."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    if role == ROLE_SHADOW and rollback_from:
        raise ValueError("a shadow update cannot be a rollback")
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
    if rollback_from:
        manifest["rollback_from"] = rollback_from
    if role != ROLE_LIVE:
        manifest["role"] = role
    return manifest


def sign(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    signed = {k: v for k, v in manifest.items() if k != "signature"}
    signed["key_id"] = key_id(private_key.public_key())
    signed["signature"] = base64.b64encode(private_key.sign(canonical_bytes(signed))).decode()
    return signed


def verify_signature(manifest: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> None:
    """Raises InboundError(no_trusted_key | revoked_key | unknown_key | bad_signature)."""
    trusted = len(keys)  # a TrustedKeys re-reads its files here
    if str(manifest.get("key_id", "")) in getattr(keys, "revoked", ()):
        raise InboundError("revoked_key", f"key_id {manifest.get('key_id')!r} is revoked")
    if not trusted:
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
