"""A real PostgreSQL server for tests: a throwaway cluster in a temp dir on a free loopback
port, or an existing server named by ``PHIGATE_TEST_PG_DSN``.

Use it from a test module by importing the fixtures (pytest finds them in the module's
namespace)::

    from tests.portal_pg import pg_dsn, pg_server  # noqa: F401

    def test_something(pg_dsn: str) -> None: ...   # a fresh, empty database per test

(or once in ``tests/conftest.py``, which makes them available to every test). Several modules
importing them share one cluster per session.

``pg_server`` (session scope) gives the server itself: ``new_database()``, ``drop_database()``,
``admin_dsn``; ``PgCluster`` can also be used directly (``with PgCluster() as c:``) for a test
that must stop and restart a server of its own (``c.stop()``, ``c.start()``).

Without PostgreSQL installed (``/usr/lib/postgresql/*/bin/initdb``), the tests that ask for it
are skipped with the reason "postgresql not installed (make test installs it)".
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

SKIP_REASON = "postgresql not installed (make test installs it)"
ENV_DSN = "PHIGATE_TEST_PG_DSN"


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_dbname(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


class PgCluster:
    """initdb + pg_ctl in a temp dir, listening on 127.0.0.1 only, password auth. As root the
    server runs as the ``postgres`` user (``runuser``), since PostgreSQL refuses root."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or pg_bindir()
        if found is None:
            raise FileNotFoundError(SKIP_REASON)
        self.bindir = found
        self.port = 0
        self.password = secrets.token_hex(16)
        self.root = Path(tempfile.mkdtemp(prefix="phigate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        cmd = list(argv)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}\n{log}")

    def init(self) -> None:
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync")
        finally:
            pwfile.unlink()

    def start(self) -> None:
        """Start (or restart after ``stop``) on the same port; a fresh one picked first time."""
        if not self.port:
            self.port = _free_port()
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                  "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                          "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class PgServer:
    """A server the tests may create databases on (a ``PgCluster`` or ``PHIGATE_TEST_PG_DSN``)."""

    def __init__(self, admin_dsn: str, cluster: PgCluster | None = None) -> None:
        self.admin_dsn = admin_dsn
        self.cluster = cluster

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # names made here, not user input

    def new_database(self) -> str:
        """Create an empty database and return its DSN."""
        name = f"phigate_test_{secrets.token_hex(6)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return _with_dbname(self.admin_dsn, name)

    def drop_database(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        assert name.startswith("phigate_test_"), name
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_shared: PgCluster | None = None
_shared_users = 0
_shared_lock = threading.Lock()


@contextlib.contextmanager
def _shared_cluster() -> Iterator[PgCluster]:
    """One cluster per test session even when several test modules import ``pg_server``
    (pytest then holds one session fixture per module): the first user starts it, the
    last one to finish stops it."""
    global _shared, _shared_users
    with _shared_lock:
        if _shared is None:
            cluster = PgCluster()
            cluster.__enter__()
            _shared = cluster
        _shared_users += 1
        cluster = _shared
    try:
        yield cluster
    finally:
        with _shared_lock:
            _shared_users -= 1
            if _shared_users == 0:
                _shared = None
                cluster.destroy()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    dsn = os.environ.get(ENV_DSN)
    if dsn:
        yield PgServer(dsn)
        return
    if pg_bindir() is None:
        pytest.skip(SKIP_REASON)
    with _shared_cluster() as cluster:
        yield PgServer(cluster.admin_dsn, cluster)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    dsn = pg_server.new_database()
    try:
        yield dsn
    finally:
        pg_server.drop_database(dsn)


__all__ = ["SKIP_REASON", "PgCluster", "PgServer", "pg_bindir", "pg_dsn", "pg_server"]
