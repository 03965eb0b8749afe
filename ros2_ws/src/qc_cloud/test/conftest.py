"""Fixtures of the cloud tests: one real PostgreSQL server per test session (Debian's package, initdb + pg_ctl in
a temporary directory on a free port, as the 'postgres' user when run as root), a fresh database per test."""

from __future__ import annotations

import itertools

import pytest

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server; skips (with the reason) where PostgreSQL cannot run."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (requirements/fleet.txt)")
    from qc_cloud.fleet.postgres_server import PostgresServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()  # under /tmp: pytest's own temp folders are closed to the postgres user
    yield server
    server.destroy()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new empty database on the session's server."""
    return postgres_server.create_database(f"test_{next(_counter)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The same test on both databases the fleet service supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.sqlite3"
    return request.getfixturevalue("postgres_url")
