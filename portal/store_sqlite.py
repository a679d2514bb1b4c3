"""The portal store on SQLite (the default: one file, ``<paths.var>/portal.db``).

One connection per thread (the web app calls in from ``asyncio.to_thread`` workers), WAL so
readers do not wait for the writer, ``synchronous=FULL`` so a stored pickup survives a crash
once ``add_pickup`` returns. Operations that must be atomic are a single ``UPDATE ... WHERE``
(checked by its rowcount) or an ``IMMEDIATE`` transaction, which takes the write lock first.

Deleting content really deletes it: ``secure_delete`` zeroes freed cells and pages, and after a
revoke or purge the WAL is checkpointed and truncated so no old page image survives in it. The
file, its ``-wal`` and ``-shm`` (which SQLite creates with the database's mode) are 0600.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from portal.model import OneTimeCode, Pickup, Reply, Session, StoreError

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pickups (
    id TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    sealed BLOB NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    queue_id TEXT NOT NULL DEFAULT '',
    opened REAL,
    revoked REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0,
    passphrase INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pickups_sender ON pickups (sender);
CREATE INDEX IF NOT EXISTS pickups_recipient ON pickups (recipient);
CREATE INDEX IF NOT EXISTS pickups_queue_id ON pickups (queue_id);
CREATE INDEX IF NOT EXISTS pickups_expires ON pickups (expires);
CREATE TABLE IF NOT EXISTS replies (
    id TEXT PRIMARY KEY,
    pickup_id TEXT NOT NULL REFERENCES pickups (id) ON DELETE CASCADE,
    created REAL NOT NULL,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_pickup ON replies (pickup_id, created);
CREATE TABLE IF NOT EXISTS codes (
    pickup_id TEXT PRIMARY KEY REFERENCES pickups (id) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash BLOB PRIMARY KEY,
    recipient TEXT NOT NULL,
    sender TEXT NOT NULL,
    created REAL NOT NULL,
    last_seen REAL NOT NULL,
    idle_expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_idle ON sessions (idle_expires);
CREATE TABLE IF NOT EXISTS grants (
    id_hash BLOB NOT NULL REFERENCES sessions (id_hash) ON DELETE CASCADE,
    pickup_id TEXT NOT NULL REFERENCES pickups (id) ON DELETE CASCADE,
    wrapped_key BLOB NOT NULL,
    PRIMARY KEY (id_hash, pickup_id)
);
CREATE INDEX IF NOT EXISTS grants_pickup ON grants (pickup_id);
"""

_PICKUP_COLUMNS = ("id, token_hash, sender, recipient, created, expires, size, queue_id, "
                   "opened, revoked, failures, locked_until, passphrase")
# columns added since schema 1, with their definitions: added to older files on open
_ADDED_COLUMNS = {"passphrase": "INTEGER NOT NULL DEFAULT 0"}


def _pickup(row: tuple[Any, ...], sealed: bytes) -> Pickup:
    return Pickup(id=row[0], token_hash=bytes(row[1]), sender=row[2], recipient=row[3],
                  created=row[4], expires=row[5], sealed=sealed, size=row[6],
                  queue_id=row[7], opened=row[8], revoked=row[9], failures=row[10],
                  locked_until=row[11], passphrase=bool(row[12]))


class SqliteStore:
    """``PortalStore`` on one SQLite file. Safe to call from several threads."""

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise StoreError(f"portal store {self.path}: {exc.strerror or exc}") from exc
        with self._errors():
            conn = self._conn()
            mode = self._wal(conn)
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"portal store {self.path}: cannot switch to WAL mode")
            with self._write() as c:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                have = {r[1] for r in c.execute("PRAGMA table_info(pickups)")}
                for column, definition in _ADDED_COLUMNS.items():
                    if column not in have:
                        c.execute(f"ALTER TABLE pickups ADD COLUMN {column} {definition}")
                c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                          (str(SCHEMA_VERSION),))
                row = c.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                raise StoreError(f"portal store {self.path}: schema version "
                                 f"{row[0] if row else '?'}, this phigate knows "
                                 f"{SCHEMA_VERSION}")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)

    # -- connections and errors -----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"portal store {self.path}: closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA secure_delete=ON")
                conn.execute("PRAGMA synchronous=FULL")
            except BaseException:
                conn.close()
                raise
            with self._conns_lock:
                if self._closed:
                    conn.close()
                    raise StoreError(f"portal store {self.path}: closed")
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            # SQLite's messages name tables, columns and constraints, never values.
            raise StoreError(f"portal store {self.path}: {type(exc).__name__}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: the write lock is taken before the first read, so
        read-then-write sequences cannot interleave with another writer."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _scrub_wal(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database and truncate it, so page images holding deleted
        content do not linger in the -wal file. Best effort: a busy reader only delays it
        until the next revoke or purge (the database pages are zeroed either way)."""
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _wal(self, conn: sqlite3.Connection) -> Any:
        """Switch the file to WAL. SQLite answers "database is locked" at once, without its
        busy handler, while another process (a sibling worker) is doing the same on a new
        file: retry for up to the busy timeout."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return conn.execute("PRAGMA journal_mode=WAL").fetchone()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    # -- pickups ---------------------------------------------------------------------------

    def add_pickup(self, pickup: Pickup) -> None:
        with self._errors():
            self._conn().execute(
                "INSERT INTO pickups (id, token_hash, sender, recipient, created, expires, "
                "sealed, size, queue_id, opened, revoked, failures, locked_until, passphrase) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pickup.id, pickup.token_hash, pickup.sender, pickup.recipient, pickup.created,
                 pickup.expires, pickup.sealed, pickup.size, pickup.queue_id, pickup.opened,
                 pickup.revoked, pickup.failures, pickup.locked_until, int(pickup.passphrase)))

    def pickup(self, pickup_id: str) -> Pickup | None:
        with self._errors():
            row = self._conn().execute(
                f"SELECT {_PICKUP_COLUMNS}, sealed FROM pickups WHERE id = ?",  # noqa: S608
                (pickup_id,)).fetchone()
        return None if row is None else _pickup(row, bytes(row[13]))

    def pickups(self, *, sender: str | None = None, recipient: str | None = None,
                queue_id: str | None = None) -> list[Pickup]:
        where: list[str] = []
        args: list[str] = []
        for column, value in (("sender", sender), ("recipient", recipient),
                              ("queue_id", queue_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        # Column names and clauses are constants from this module; values are parameters.
        query = f"SELECT {_PICKUP_COLUMNS} FROM pickups{clause} ORDER BY created, rowid"  # noqa: S608
        with self._errors():
            rows = self._conn().execute(query, args).fetchall()
        return [_pickup(row, b"") for row in rows]

    def mark_opened(self, pickup_id: str, when: float) -> bool:
        with self._errors():
            cur = self._conn().execute(
                "UPDATE pickups SET opened = ? WHERE id = ? AND opened IS NULL",
                (when, pickup_id))
        return cur.rowcount == 1

    def revoke(self, pickup_id: str, when: float) -> bool:
        with self._errors():
            with self._write() as conn:
                cur = conn.execute(
                    "UPDATE pickups SET revoked = ?, sealed = X'' "
                    "WHERE id = ? AND revoked IS NULL", (when, pickup_id))
                done = cur.rowcount == 1
                if done:
                    conn.execute("UPDATE replies SET sealed = X'' WHERE pickup_id = ?",
                                 (pickup_id,))
                    conn.execute("DELETE FROM codes WHERE pickup_id = ?", (pickup_id,))
                    conn.execute("DELETE FROM grants WHERE pickup_id = ?", (pickup_id,))
            if done:
                self._scrub_wal(conn)
        return done

    def record_failure(self, pickup_id: str, now: float, max_failures: int,
                       lock_seconds: float) -> tuple[int, float]:
        with self._errors(), self._write() as conn:
            conn.execute(
                "UPDATE pickups SET "
                "locked_until = CASE WHEN failures + 1 >= ? THEN ? ELSE locked_until END, "
                "failures = CASE WHEN failures + 1 >= ? THEN 0 ELSE failures + 1 END "
                "WHERE id = ?",
                (max_failures, now + lock_seconds, max_failures, pickup_id))
            row = conn.execute("SELECT failures, locked_until FROM pickups WHERE id = ?",
                               (pickup_id,)).fetchone()
        return (0, 0.0) if row is None else (int(row[0]), float(row[1]))

    def unlock(self, pickup_id: str) -> bool:
        with self._errors():
            cur = self._conn().execute(
                "UPDATE pickups SET failures = 0, locked_until = 0 WHERE id = ?", (pickup_id,))
        return cur.rowcount == 1

    def purge(self, now: float) -> int:
        with self._errors():
            with self._write() as conn:
                # Replies, codes and grants go with their pickup (ON DELETE CASCADE); grants
                # also go with their session.
                cur = conn.execute(
                    "DELETE FROM pickups WHERE expires <= ? OR revoked IS NOT NULL", (now,))
                deleted = cur.rowcount
                sessions = conn.execute("DELETE FROM sessions WHERE idle_expires <= ?",
                                        (now,)).rowcount
            if deleted or sessions:
                self._scrub_wal(conn)
        return deleted

    # -- thread ----------------------------------------------------------------------------

    def add_reply(self, reply: Reply) -> None:
        with self._errors():
            self._conn().execute(
                "INSERT INTO replies (id, pickup_id, created, sealed) VALUES (?, ?, ?, ?)",
                (reply.id, reply.pickup_id, reply.created, reply.sealed))

    def replies(self, pickup_id: str) -> list[Reply]:
        with self._errors():
            rows = self._conn().execute(
                "SELECT id, pickup_id, created, sealed FROM replies WHERE pickup_id = ? "
                "ORDER BY created, rowid", (pickup_id,)).fetchall()
        return [Reply(id=r[0], pickup_id=r[1], created=r[2], sealed=bytes(r[3])) for r in rows]

    # -- one-time codes --------------------------------------------------------------------

    def set_code(self, code: OneTimeCode) -> None:
        with self._errors():
            self._conn().execute(
                "INSERT INTO codes (pickup_id, code_hash, created, expires, used) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pickup_id) DO UPDATE SET "
                "code_hash = excluded.code_hash, created = excluded.created, "
                "expires = excluded.expires, used = excluded.used",
                (code.pickup_id, code.code_hash, code.created, code.expires, int(code.used)))

    def code(self, pickup_id: str) -> OneTimeCode | None:
        with self._errors():
            row = self._conn().execute(
                "SELECT pickup_id, code_hash, created, expires, used FROM codes "
                "WHERE pickup_id = ?", (pickup_id,)).fetchone()
        if row is None:
            return None
        return OneTimeCode(pickup_id=row[0], code_hash=bytes(row[1]), created=row[2],
                           expires=row[3], used=bool(row[4]))

    def use_code(self, pickup_id: str, code_hash: bytes, now: float) -> bool:
        # The hash is an HMAC under the pickup key, which the attacker does not have, so the
        # equality test inside SQLite leaks nothing useful through timing.
        with self._errors():
            cur = self._conn().execute(
                "UPDATE codes SET used = 1 WHERE pickup_id = ? AND code_hash = ? "
                "AND used = 0 AND expires > ?", (pickup_id, code_hash, now))
        return cur.rowcount == 1

    # -- sessions and grants ---------------------------------------------------------------

    def add_session(self, session: Session, idle_expires: float) -> None:
        with self._errors():
            self._conn().execute(
                "INSERT INTO sessions (id_hash, recipient, sender, created, last_seen, "
                "idle_expires) VALUES (?, ?, ?, ?, ?, ?)",
                (session.id_hash, session.recipient, session.sender, session.created,
                 session.last_seen, idle_expires))

    def session(self, id_hash: bytes, now: float) -> Session | None:
        with self._errors():
            row = self._conn().execute(
                "SELECT id_hash, recipient, sender, created, last_seen FROM sessions "
                "WHERE id_hash = ? AND idle_expires > ?", (id_hash, now)).fetchone()
        if row is None:
            return None
        return Session(id_hash=bytes(row[0]), recipient=row[1], sender=row[2],
                       created=row[3], last_seen=row[4])

    def touch_session(self, id_hash: bytes, now: float, idle_expires: float) -> None:
        with self._errors():
            self._conn().execute(
                "UPDATE sessions SET last_seen = ?, idle_expires = ? WHERE id_hash = ?",
                (now, idle_expires, id_hash))

    def delete_session(self, id_hash: bytes) -> None:
        with self._errors():
            self._conn().execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    def grant(self, id_hash: bytes, pickup_id: str, wrapped_key: bytes) -> None:
        with self._errors():
            self._conn().execute(
                "INSERT INTO grants (id_hash, pickup_id, wrapped_key) VALUES (?, ?, ?) "
                "ON CONFLICT (id_hash, pickup_id) DO UPDATE SET "
                "wrapped_key = excluded.wrapped_key", (id_hash, pickup_id, wrapped_key))

    def granted(self, id_hash: bytes, pickup_id: str) -> bytes | None:
        with self._errors():
            row = self._conn().execute(
                "SELECT wrapped_key FROM grants WHERE id_hash = ? AND pickup_id = ?",
                (id_hash, pickup_id)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        with self._conns_lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
