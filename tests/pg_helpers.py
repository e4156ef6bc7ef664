"""A real PostgreSQL for the tests: Debian's `postgresql` package, started
by the suite on a temporary folder with a Unix socket (`initdb` and `pg_ctl`
run as the `postgres` user when the tests run as root).

Where PostgreSQL (or psycopg) is absent the tests that need it skip and say
why; with CI set they fail instead, so CI never skips them silently.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(Path(candidate) / "pg_ctl", os.X_OK):
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def unavailable(why: str) -> None:
    """Skip, or fail under CI (where the server must run)."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {why}")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server for the session; each test gets a database of its own."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="b12pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        self.started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def start(self) -> str | None:
        """Start it; returns why not, or None."""
        if self.bindir is None:
            return "PostgreSQL is not installed (apt-get install postgresql)"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (pip install 'b12comment[postgres]')"
        if self.as_postgres:
            try:
                shutil.chown(self.folder, "postgres", "postgres")
            except (LookupError, OSError) as exc:
                return f"cannot hand the test folder to the postgres user: {exc}"
        done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        if done.returncode:
            return f"initdb failed: {done.stderr.strip()[-300:]}"
        opts = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.folder}' -p {self.port} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-w", "-t", "60", "-l", str(self.folder / "log"), "start"
        )
        if done.returncode:
            log = (self.folder / "log").read_text(errors="replace")[-500:] if (self.folder / "log").exists() else ""
            return f"pg_ctl start failed: {done.stderr.strip()[-300:]} {log}"
        self.started = True
        return None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.folder}&port={self.port}"

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
