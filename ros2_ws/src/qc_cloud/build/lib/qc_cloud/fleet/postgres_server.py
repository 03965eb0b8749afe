"""A throw-away PostgreSQL server (Debian's `postgresql` package): initdb + pg_ctl in a temporary directory on a
free loopback port, run as an unprivileged user (PostgreSQL refuses root). For the tests and the benchmark;
restartable (stop()/start() on the same port and data) for outage tests."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:  # Debian's layout (its /usr/bin wrappers need a cluster configuration)
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def unavailable_reason() -> str:
    """'' when a server can be started here, else why not (the tests skip with it)."""
    if pg_bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; scripts/setup.sh does it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.bindir = pg_bindir()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="qc-postgres-"))
        self.data = self.workdir / "data"
        self.port = port or _free_port()
        self.log = self.workdir / "postgres.log"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._user:
            command = ["setpriv", "--reuid", self._user, "--regid", self._user, "--init-groups", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, cwd=self.workdir, timeout=120)

    def init(self) -> PostgresServer:
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale")
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.workdir}'\n"
                    "fsync = on\nsynchronous_commit = on\nmax_connections = 100\nshared_buffers = 128MB\n"
                )
        return self

    def start(self, timeout: float = 30.0) -> PostgresServer:
        self.init()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, name: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)
