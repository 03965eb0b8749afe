"""Users, roles, passwords, sessions and CSRF tokens, without a web framework.

Roles are ordered viewer < operator < engineer < admin; each allows what the ones before it allow, plus:
operator labels re-inspection items and acknowledges alerts, engineer exports data sets, admin manages users.
Passwords are hashed with argon2id (memory-hard, argon2-cffi). A session is a 256-bit random cookie value; the
database keeps only its SHA-256. The CSRF token of a session is an HMAC of the session token, so it is bound
to the session and cannot be computed without the cookie (which scripts cannot read: HttpOnly).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, and_, select
from sqlalchemy.engine import Connection

from qc_cloud.fleet import models, rules

ROLES = ("viewer", "operator", "engineer", "admin")
PERMISSIONS = {
    "view": "viewer",
    "label": "operator",
    "ack": "operator",
    "export": "engineer",
    "rollout": "engineer",  # abort a staged rollout
    "users": "admin",
}
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
SESSION_HOURS = 12
# argon2id, RFC 9106's second recommended option scaled to a plant server: 64 MiB, 3 passes.
_hasher = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=1)


class AccountError(ValueError):
    pass


def allows(role: str, permission: str) -> bool:
    needed = PERMISSIONS[permission]
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise AccountError("a password has at most 1024 characters")
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password[:1024])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_DUMMY = None


def burn_time(password: str) -> None:
    """Verify against a dummy hash so an unknown user name takes as long as a wrong password."""
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = _hasher.hash(secrets.token_hex(16))
    verify_password(_DUMMY, password)


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"qc-dashboard-csrf", hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(session_token), presented or "")


class LoginThrottle:
    """At most `attempts` failed log-ins per user name in `window_s`; then that name is refused until the oldest
    failure leaves the window. The failures are rows of `login_failures`, so every API worker (and every
    replica on the same database) counts the same failures: a guesser gains nothing from being spread over
    several workers. It slows guessing; the argon2 cost does the rest."""

    def __init__(self, engine: Engine, attempts: int = 5, window_s: float = 300.0) -> None:
        self.engine, self.attempts, self.window_s = engine, attempts, window_s

    def blocked_for(self, name: str, now: datetime) -> float:
        """Seconds until `name` may try again (0: now)."""
        f = models.LoginFailure.__table__
        since = now - timedelta(seconds=self.window_s)
        with self.engine.connect() as conn:
            times = [
                r[0]
                for r in conn.execute(
                    select(f.c.at).where(and_(f.c.username == name, f.c.at > since)).order_by(f.c.at.desc())
                    .limit(self.attempts)
                )
            ]  # fmt: skip
        if len(times) < self.attempts:
            return 0.0
        return max(0.0, (times[-1] + timedelta(seconds=self.window_s) - now).total_seconds())

    def failed(self, name: str, now: datetime) -> None:
        f = models.LoginFailure.__table__
        with self.engine.begin() as conn:
            conn.execute(f.delete().where(f.c.at <= now - timedelta(seconds=self.window_s)))  # out of every window
            conn.execute(f.insert().values(username=name, at=now))

    def succeeded(self, name: str) -> None:
        f = models.LoginFailure.__table__
        with self.engine.begin() as conn:
            conn.execute(f.delete().where(f.c.username == name))


# --- database side ---


def check_username(username: str) -> str:
    if not USERNAME.match(username or ""):
        raise AccountError("a user name is 1-64 letters, digits or _ . @ -")
    return username


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def add_user(conn: Connection, username: str, password: str, role: str) -> int:
    u = models.User.__table__
    check_username(username)
    check_role(role)
    if conn.execute(select(u.c.id).where(u.c.username == username)).first():
        raise AccountError(f"user {username} exists (qc_cloud users passwd to change the password)")
    now = rules.utcnow()
    return conn.execute(
        u.insert().values(
            username=username,
            password_hash=hash_password(password),
            role=role,
            created_at=now,
            password_changed_at=now,
            disabled=False,
        )
    ).inserted_primary_key[0]


def set_password(conn: Connection, username: str, password: str) -> None:
    u, s = models.User.__table__, models.Session.__table__
    row = conn.execute(select(u.c.id).where(u.c.username == username)).first()
    if row is None:
        raise AccountError(f"no user {username}")
    conn.execute(
        u.update()
        .where(u.c.id == row.id)
        .values(password_hash=hash_password(password), password_changed_at=rules.utcnow())
    )
    conn.execute(s.delete().where(s.c.user_id == row.id))  # a new password logs every browser out


def set_role(conn: Connection, username: str, role: str | None = None, disabled: bool | None = None) -> None:
    u, s = models.User.__table__, models.Session.__table__
    row = conn.execute(select(u.c.id).where(u.c.username == username)).first()
    if row is None:
        raise AccountError(f"no user {username}")
    values = {}
    if role is not None:
        values["role"] = check_role(role)
    if disabled is not None:
        values["disabled"] = disabled
        if disabled:
            conn.execute(s.delete().where(s.c.user_id == row.id))
    if values:
        conn.execute(u.update().where(u.c.id == row.id).values(**values))


def list_users(conn: Connection) -> list[dict]:
    u = models.User.__table__
    return [
        dict(r._mapping)
        for r in conn.execute(select(u.c.username, u.c.role, u.c.created_at, u.c.disabled).order_by(u.c.username))
    ]


def login(engine: Engine, username: str, password: str, now: datetime | None = None) -> str | None:
    """A new session token, or None (unknown user, wrong password, disabled)."""
    u, s = models.User.__table__, models.Session.__table__
    with engine.connect() as conn:
        row = conn.execute(select(u).where(u.c.username == username[:64])).first()
    if row is None or row.disabled:
        burn_time(password)
        return None
    if not verify_password(row.password_hash, password):
        return None
    now = now or rules.utcnow()
    token = new_session_token()
    with engine.begin() as conn:
        conn.execute(s.delete().where(s.c.expires_at < now))
        conn.execute(
            s.insert().values(
                token_hash=token_hash(token),
                user_id=row.id,
                created_at=now,
                expires_at=now + timedelta(hours=SESSION_HOURS),
            )
        )
    return token


def session_user(conn: Connection, token: str, now: datetime | None = None) -> dict | None:
    """(username, role) of a live session, or None."""
    u, s = models.User.__table__, models.Session.__table__
    row = conn.execute(
        select(u.c.username, u.c.role)
        .select_from(s.join(u, u.c.id == s.c.user_id))
        .where(
            s.c.token_hash == token_hash(token[:128]), s.c.expires_at > (now or rules.utcnow()), u.c.disabled.is_(False)
        )
    ).first()
    return {"username": row.username, "role": row.role} if row else None


def logout(conn: Connection, token: str) -> None:
    s = models.Session.__table__
    conn.execute(s.delete().where(s.c.token_hash == token_hash(token[:128])))
