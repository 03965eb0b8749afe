"""API tokens, without I/O: random tokens shown once, stored as SHA-256 hashes; roles read < write.

Tokens are 256-bit random strings, so a plain SHA-256 is enough to store them (a slow password hash protects
guessable secrets; these are not guessable), and a lookup by hash costs one index probe per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ROLES = ("read", "write")  # write implies read
PREFIX = "qcf_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def allows(role: str, needed: str) -> bool:
    """Does a token of `role` allow an operation that needs `needed`?"""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
