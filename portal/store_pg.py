"""The portal store on PostgreSQL, for several portal or gateway nodes sharing one store.

psycopg 3 with a small connection pool of its own (``_Pool``): during an outage every call
tries a fresh connection and fails with the driver's reason (``StoreError``), and the first
call after the server is back succeeds; psycopg_pool's reconnect back-off could keep the store
unavailable for minutes after a long outage. Connections are in autocommit;
operations that must be atomic are one ``UPDATE ... WHERE`` (row locks make a concurrent
second attempt re-check the condition and find nothing to do) or one explicit transaction.
The schema is created on open under an advisory lock, so nodes starting together do not race.

Deleted content is gone from every query at once; on disk PostgreSQL keeps dead row versions
until VACUUM reclaims them (autovacuum does), and only ciphertext ever reaches the server.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from portal.model import OneTimeCode, Pickup, Reply, Session, StoreError

SCHEMA_VERSION = 1
_SCHEMA_LOCK = 0x70686967  # advisory lock key ("phig") held while creating the schema

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS portal_meta (
        key text PRIMARY KEY,
        value text NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pickups (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        token_hash bytea NOT NULL,
        sender text NOT NULL,
        recipient text NOT NULL,
        created double precision NOT NULL,
        expires double precision NOT NULL,
        sealed bytea NOT NULL,
        size bigint NOT NULL DEFAULT 0,
        queue_id text NOT NULL DEFAULT '',
        opened double precision,
        revoked double precision,
        failures integer NOT NULL DEFAULT 0,
        locked_until double precision NOT NULL DEFAULT 0)""",
    # Ciphertext does not compress: store it out of line without trying.
    "ALTER TABLE pickups ALTER COLUMN sealed SET STORAGE EXTERNAL",
    # added after schema 1 (older databases get it on open)
    "ALTER TABLE pickups ADD COLUMN IF NOT EXISTS passphrase boolean NOT NULL DEFAULT false",
    "CREATE INDEX IF NOT EXISTS pickups_sender ON pickups (sender)",
    "CREATE INDEX IF NOT EXISTS pickups_recipient ON pickups (recipient)",
    "CREATE INDEX IF NOT EXISTS pickups_queue_id ON pickups (queue_id)",
    "CREATE INDEX IF NOT EXISTS pickups_expires ON pickups (expires)",
    """CREATE TABLE IF NOT EXISTS replies (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        pickup_id text NOT NULL REFERENCES pickups (id) ON DELETE CASCADE,
        created double precision NOT NULL,
        sealed bytea NOT NULL)""",
    "ALTER TABLE replies ALTER COLUMN sealed SET STORAGE EXTERNAL",
    "CREATE INDEX IF NOT EXISTS replies_pickup ON replies (pickup_id, created)",
    """CREATE TABLE IF NOT EXISTS codes (
        pickup_id text PRIMARY KEY REFERENCES pickups (id) ON DELETE CASCADE,
        code_hash bytea NOT NULL,
        created double precision NOT NULL,
        expires double precision NOT NULL,
        used boolean NOT NULL DEFAULT false)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        id_hash bytea PRIMARY KEY,
        recipient text NOT NULL,
        sender text NOT NULL,
        created double precision NOT NULL,
        last_seen double precision NOT NULL,
        idle_expires double precision NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS sessions_idle ON sessions (idle_expires)",
    """CREATE TABLE IF NOT EXISTS grants (
        id_hash bytea NOT NULL REFERENCES sessions (id_hash) ON DELETE CASCADE,
        pickup_id text NOT NULL REFERENCES pickups (id) ON DELETE CASCADE,
        wrapped_key bytea NOT NULL,
        PRIMARY KEY (id_hash, pickup_id))""",
    "CREATE INDEX IF NOT EXISTS grants_pickup ON grants (pickup_id)",
]

_PICKUP_COLUMNS = ("id, token_hash, sender, recipient, created, expires, size, queue_id, "
                   "opened, revoked, failures, locked_until, passphrase")


def _pickup(row: tuple[Any, ...], sealed: bytes) -> Pickup:
    return Pickup(id=row[0], token_hash=bytes(row[1]), sender=row[2], recipient=row[3],
                  created=row[4], expires=row[5], sealed=sealed, size=row[6],
                  queue_id=row[7], opened=row[8], revoked=row[9], failures=row[10],
                  locked_until=row[11], passphrase=bool(row[12]))


def describe(dsn: str) -> str:
    """``postgresql host:port/db`` for messages: no user, no password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgresql (unparseable DSN)"
    host = info.get("host") or info.get("hostaddr") or "localhost"
    return f"postgresql {host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


class _Pool:
    """Idle connections reused newest first, a new one opened when none is idle, at most
    ``max_size`` in use at once. A connection idle for more than ``check_after`` seconds is
    checked with an empty query before use (a server restarted meanwhile costs nothing)."""

    def __init__(self, name: str, dsn: str, kwargs: dict[str, Any], *, max_size: int,
                 timeout: float, statement_timeout: float, check_after: float = 2.0) -> None:
        self._name = name
        self._dsn = dsn
        self._kwargs = kwargs
        self._max_size = max_size
        self._timeout = timeout
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._check_after = check_after
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_size)
        self._closed = False

    def connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._dsn, **self._kwargs)
        try:
            conn.execute(f"SET statement_timeout = {self._statement_timeout_ms}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _take(self) -> psycopg.Connection[Any]:
        while True:
            with self._lock:
                if self._closed:
                    raise StoreError(f"portal store {self._name}: closed")
                if not self._idle:
                    break
                conn, last_used = self._idle.pop()
            if conn.closed or conn.broken:
                continue
            if time.monotonic() - last_used > self._check_after:
                try:
                    conn.execute("")
                except psycopg.Error:
                    conn.close()
                    continue
            return conn
        return self.connect()

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        stale: list[tuple[psycopg.Connection[Any], float]] = []
        if conn.broken:
            # The server went away or restarted: the idle ones are most likely dead too.
            with self._lock:
                stale, self._idle = self._idle, []
        elif not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            with self._lock:
                if not self._closed and len(self._idle) < self._max_size:
                    self._idle.append((conn, time.monotonic()))
                    return
        conn.close()
        for other, _ in stale:
            other.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=self._timeout):
            raise StoreError(f"portal store {self._name}: all {self._max_size} connections "
                             f"busy for {self._timeout:g} s")
        try:
            conn = self._take()
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


class PostgresStore:
    """``PortalStore`` on PostgreSQL. Safe to call from several threads.

    ``connect_timeout`` bounds opening a connection (and waiting for a free one),
    ``statement_timeout`` any one statement, lock waits included: a hung server is an error
    (the gateway defers, the portal answers 503), not a hung worker."""

    def __init__(self, dsn: str, *, max_size: int = 10, connect_timeout: float = 5.0,
                 statement_timeout: float = 30.0) -> None:
        self.name = describe(dsn)
        kwargs: dict[str, Any] = {"autocommit": True,
                                  "connect_timeout": max(1, round(connect_timeout)),
                                  "application_name": "phigate-portal"}
        self._pool = _Pool(self.name, dsn, kwargs, max_size=max_size,
                           timeout=connect_timeout, statement_timeout=statement_timeout)
        # The schema is made at the first successful connection, not here: a gateway that
        # starts while the store is down stays up (portal messages wait in the queue) and
        # catches up when it returns. ``check()`` connects now, for commands that want a
        # clear error at once.
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def check(self) -> None:
        with self._conn():
            pass

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO portal_meta (key, value) VALUES ('schema', %s) "
                         "ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))
            row = conn.execute("SELECT value FROM portal_meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise StoreError(f"portal store {self.name}: schema version "
                             f"{row[0] if row else '?'}, this phigate knows {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            # The primary message names constraints and columns; DETAIL (which may quote
            # values) is left out.
            diag = getattr(exc, "diag", None)
            primary = diag.message_primary if diag is not None else None
            lines = str(exc).strip().splitlines()
            text = primary or (lines[0] if lines else "")
            raise StoreError(f"portal store {self.name}: {type(exc).__name__}: "
                             f"{text}") from exc

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with self._errors(), self._pool.connection() as conn:
            if not self._schema_ready:
                with self._schema_lock:
                    if not self._schema_ready:
                        self._create_schema(conn)
                        self._schema_ready = True
            yield conn

    # -- pickups ---------------------------------------------------------------------------

    def add_pickup(self, pickup: Pickup) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO pickups (id, token_hash, sender, recipient, created, expires, "
                "sealed, size, queue_id, opened, revoked, failures, locked_until, passphrase) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (pickup.id, pickup.token_hash, pickup.sender, pickup.recipient, pickup.created,
                 pickup.expires, pickup.sealed, pickup.size, pickup.queue_id, pickup.opened,
                 pickup.revoked, pickup.failures, pickup.locked_until, pickup.passphrase))

    def pickup(self, pickup_id: str) -> Pickup | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_PICKUP_COLUMNS}, sealed FROM pickups WHERE id = %s",  # noqa: S608
                (pickup_id,)).fetchone()
        return None if row is None else _pickup(row, bytes(row[13]))

    def pickups(self, *, sender: str | None = None, recipient: str | None = None,
                queue_id: str | None = None) -> list[Pickup]:
        where: list[str] = []
        args: list[str] = []
        for column, value in (("sender", sender), ("recipient", recipient),
                              ("queue_id", queue_id)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        # Column names and clauses are constants from this module; values are parameters.
        query = f"SELECT {_PICKUP_COLUMNS} FROM pickups{clause} ORDER BY created, seq"  # noqa: S608
        with self._conn() as conn:
            rows = conn.execute(query, args).fetchall()
        return [_pickup(row, b"") for row in rows]

    def mark_opened(self, pickup_id: str, when: float) -> bool:
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE pickups SET opened = %s WHERE id = %s AND opened IS NULL",
                (when, pickup_id))
            return cur.rowcount == 1

    def revoke(self, pickup_id: str, when: float) -> bool:
        with self._conn() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE pickups SET revoked = %s, sealed = ''::bytea "
                "WHERE id = %s AND revoked IS NULL", (when, pickup_id))
            if cur.rowcount != 1:
                return False
            conn.execute("UPDATE replies SET sealed = ''::bytea WHERE pickup_id = %s",
                         (pickup_id,))
            conn.execute("DELETE FROM codes WHERE pickup_id = %s", (pickup_id,))
            conn.execute("DELETE FROM grants WHERE pickup_id = %s", (pickup_id,))
            return True

    def record_failure(self, pickup_id: str, now: float, max_failures: int,
                       lock_seconds: float) -> tuple[int, float]:
        with self._conn() as conn:
            row = conn.execute(
                "UPDATE pickups SET "
                "locked_until = CASE WHEN failures + 1 >= %s THEN %s ELSE locked_until END, "
                "failures = CASE WHEN failures + 1 >= %s THEN 0 ELSE failures + 1 END "
                "WHERE id = %s RETURNING failures, locked_until",
                (max_failures, now + lock_seconds, max_failures, pickup_id)).fetchone()
        return (0, 0.0) if row is None else (int(row[0]), float(row[1]))

    def unlock(self, pickup_id: str) -> bool:
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE pickups SET failures = 0, locked_until = 0 WHERE id = %s",
                (pickup_id,))
            return cur.rowcount == 1

    def purge(self, now: float) -> int:
        with self._conn() as conn, conn.transaction():
            # Replies, codes and grants go with their pickup (ON DELETE CASCADE); grants
            # also go with their session.
            cur = conn.execute(
                "DELETE FROM pickups WHERE expires <= %s OR revoked IS NOT NULL", (now,))
            deleted = cur.rowcount
            conn.execute("DELETE FROM sessions WHERE idle_expires <= %s", (now,))
        return deleted

    # -- thread ----------------------------------------------------------------------------

    def add_reply(self, reply: Reply) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO replies (id, pickup_id, created, sealed) VALUES (%s, %s, %s, %s)",
                (reply.id, reply.pickup_id, reply.created, reply.sealed))

    def replies(self, pickup_id: str) -> list[Reply]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, pickup_id, created, sealed FROM replies WHERE pickup_id = %s "
                "ORDER BY created, seq", (pickup_id,)).fetchall()
        return [Reply(id=r[0], pickup_id=r[1], created=r[2], sealed=bytes(r[3])) for r in rows]

    # -- one-time codes --------------------------------------------------------------------

    def set_code(self, code: OneTimeCode) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO codes (pickup_id, code_hash, created, expires, used) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (pickup_id) DO UPDATE SET "
                "code_hash = excluded.code_hash, created = excluded.created, "
                "expires = excluded.expires, used = excluded.used",
                (code.pickup_id, code.code_hash, code.created, code.expires, code.used))

    def code(self, pickup_id: str) -> OneTimeCode | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT pickup_id, code_hash, created, expires, used FROM codes "
                "WHERE pickup_id = %s", (pickup_id,)).fetchone()
        if row is None:
            return None
        return OneTimeCode(pickup_id=row[0], code_hash=bytes(row[1]), created=row[2],
                           expires=row[3], used=bool(row[4]))

    def use_code(self, pickup_id: str, code_hash: bytes, now: float) -> bool:
        # The hash is an HMAC under the pickup key, which the attacker does not have, so the
        # equality test in the server leaks nothing useful through timing.
        with self._conn() as conn:
            cur = conn.execute(
                "UPDATE codes SET used = true WHERE pickup_id = %s AND code_hash = %s "
                "AND NOT used AND expires > %s", (pickup_id, code_hash, now))
            return cur.rowcount == 1

    # -- sessions and grants ---------------------------------------------------------------

    def add_session(self, session: Session, idle_expires: float) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO sessions (id_hash, recipient, sender, created, last_seen, "
                "idle_expires) VALUES (%s, %s, %s, %s, %s, %s)",
                (session.id_hash, session.recipient, session.sender, session.created,
                 session.last_seen, idle_expires))

    def session(self, id_hash: bytes, now: float) -> Session | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT id_hash, recipient, sender, created, last_seen FROM sessions "
                "WHERE id_hash = %s AND idle_expires > %s", (id_hash, now)).fetchone()
        if row is None:
            return None
        return Session(id_hash=bytes(row[0]), recipient=row[1], sender=row[2],
                       created=row[3], last_seen=row[4])

    def touch_session(self, id_hash: bytes, now: float, idle_expires: float) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE sessions SET last_seen = %s, idle_expires = %s WHERE id_hash = %s",
                (now, idle_expires, id_hash))

    def delete_session(self, id_hash: bytes) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM sessions WHERE id_hash = %s", (id_hash,))

    def grant(self, id_hash: bytes, pickup_id: str, wrapped_key: bytes) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO grants (id_hash, pickup_id, wrapped_key) VALUES (%s, %s, %s) "
                "ON CONFLICT (id_hash, pickup_id) DO UPDATE SET "
                "wrapped_key = excluded.wrapped_key", (id_hash, pickup_id, wrapped_key))

    def granted(self, id_hash: bytes, pickup_id: str) -> bytes | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT wrapped_key FROM grants WHERE id_hash = %s AND pickup_id = %s",
                (id_hash, pickup_id)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._pool.close()
