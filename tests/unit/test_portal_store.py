"""The portal store: one suite, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from portal import crypto
from portal.model import OneTimeCode, Pickup, PortalStore, Reply, Session, StoreError
from portal.store import open_store
from portal.store_sqlite import SCHEMA, SqliteStore
from tests.portal_pg import PgCluster, pg_bindir, pg_dsn, pg_server  # noqa: F401

T = TypeVar("T")

NOW = 1_750_000_000.0
DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PortalStore]:
    s: PortalStore
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "portal.db")
    else:
        store_pg = pytest.importorskip("portal.store_pg")
        s = store_pg.PostgresStore(request.getfixturevalue("pg_dsn"))
    try:
        yield s
    finally:
        s.close()


def make_pickup(pid: str, *, sender: str = "dr.a@clinic.example",
                recipient: str = "pat@mail.example", created: float = NOW,
                expires: float = NOW + 30 * DAY, sealed: bytes = b"sealed-bytes",
                queue_id: str = "Q1") -> Pickup:
    return Pickup(id=pid, token_hash=crypto.token_hash("secret-" + pid), sender=sender,
                  recipient=recipient, created=created, expires=expires, sealed=sealed,
                  size=len(sealed), queue_id=queue_id)


def make_session(tag: str, *, recipient: str = "pat@mail.example",
                 sender: str = "dr.a@clinic.example") -> Session:
    return Session(id_hash=crypto.token_hash("session-" + tag), recipient=recipient,
                   sender=sender, created=NOW, last_seen=NOW)


def make_code(pid: str, code: str, *, created: float = NOW,
              expires: float = NOW + 600) -> OneTimeCode:
    return OneTimeCode(pickup_id=pid, code_hash=crypto.code_hash(b"k" * 32, code),
                       created=created, expires=expires)


def in_threads(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run fn(i) in n threads released together; return the results in order."""
    barrier = threading.Barrier(n)
    results: list[T | None] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


# -- pickups ---------------------------------------------------------------------------------


def test_add_and_read_pickup(store: PortalStore) -> None:
    p = make_pickup("p1", sealed=bytes(range(256)) * 40)
    store.add_pickup(p)
    assert store.pickup("p1") == p
    assert store.pickup("nope") is None


def test_passphrase_flag_kept(store: PortalStore) -> None:
    p = Pickup(**{**make_pickup("p2").__dict__, "passphrase": True})
    store.add_pickup(p)
    assert store.pickup("p2") == p and store.pickup("p2").passphrase  # type: ignore[union-attr]
    assert [x.passphrase for x in store.pickups(sender=p.sender)] == [True]


def test_schema_1_sqlite_file_gains_the_passphrase_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = SCHEMA.replace(",\n    passphrase INTEGER NOT NULL DEFAULT 0", "")
    assert "passphrase" not in old
    conn = sqlite3.connect(path)
    conn.executescript(old)
    conn.execute("INSERT INTO meta VALUES ('schema', '1')")
    conn.execute("INSERT INTO pickups (id, token_hash, sender, recipient, created, expires, "
                 "sealed) VALUES ('p0', x'00', 'a@x.example', 'b@y.example', 1, 2, x'01')")
    conn.commit()
    conn.close()
    s = SqliteStore(path)
    try:
        assert s.pickup("p0").passphrase is False  # type: ignore[union-attr]
        s.add_pickup(Pickup(**{**make_pickup("p3").__dict__, "passphrase": True}))
        assert s.pickup("p3").passphrase is True  # type: ignore[union-attr]
    finally:
        s.close()


def test_duplicate_pickup_id_is_a_store_error(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    with pytest.raises(StoreError):
        store.add_pickup(make_pickup("p1"))


def test_pickups_listing_filters_orders_and_leaves_sealed_empty(store: PortalStore) -> None:
    store.add_pickup(make_pickup("late", created=NOW + 10, recipient="b@mail.example"))
    store.add_pickup(make_pickup("early", created=NOW, queue_id="Q2"))
    store.add_pickup(make_pickup("mid", created=NOW + 5, sender="dr.b@clinic.example"))
    everything = store.pickups()
    assert [p.id for p in everything] == ["early", "mid", "late"]
    assert all(p.sealed == b"" for p in everything)
    assert everything[0].size == len(b"sealed-bytes")
    assert everything[0].token_hash == crypto.token_hash("secret-early")
    assert [p.id for p in store.pickups(sender="dr.a@clinic.example")] == ["early", "late"]
    assert [p.id for p in store.pickups(recipient="pat@mail.example")] == ["early", "mid"]
    assert [p.id for p in store.pickups(queue_id="Q2")] == ["early"]
    assert [p.id for p in store.pickups(sender="dr.a@clinic.example",
                                        recipient="b@mail.example")] == ["late"]
    assert store.pickups(sender="nobody@x.example") == []


def test_mark_opened_only_first_time(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    assert store.mark_opened("p1", NOW + 1) is True
    assert store.mark_opened("p1", NOW + 2) is False
    got = store.pickup("p1")
    assert got is not None and got.opened == NOW + 1
    assert store.mark_opened("nope", NOW) is False


def test_mark_opened_once_under_threads(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    results = in_threads(12, lambda i: store.mark_opened("p1", NOW + i))
    assert results.count(True) == 1


def test_revoke_drops_content_codes_grants_and_reply_content(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1", sealed=b"x" * 5000))
    store.add_reply(Reply(id="r1", pickup_id="p1", created=NOW + 1, sealed=b"reply"))
    store.set_code(make_code("p1", "123456"))
    sess = make_session("s1")
    store.add_session(sess, NOW + 900)
    store.grant(sess.id_hash, "p1", b"wrapped")
    assert store.revoke("p1", NOW + 2) is True
    got = store.pickup("p1")
    assert got is not None and got.revoked == NOW + 2 and got.sealed == b""
    assert [r.sealed for r in store.replies("p1")] == [b""]
    assert store.code("p1") is None
    assert store.granted(sess.id_hash, "p1") is None
    assert store.session(sess.id_hash, NOW) is not None  # the session itself lives on
    assert store.revoke("p1", NOW + 3) is False
    got = store.pickup("p1")
    assert got is not None and got.revoked == NOW + 2
    assert store.revoke("nope", NOW) is False


def test_record_failure_counts_locks_and_restarts(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    assert store.record_failure("p1", NOW, 3, 600) == (1, 0.0)
    assert store.record_failure("p1", NOW + 1, 3, 600) == (2, 0.0)
    assert store.record_failure("p1", NOW + 2, 3, 600) == (0, NOW + 602)
    got = store.pickup("p1")
    assert got is not None and got.failures == 0 and got.locked_until == NOW + 602
    assert store.record_failure("p1", NOW + 700, 3, 600) == (1, NOW + 602)
    assert store.unlock("p1") is True
    got = store.pickup("p1")
    assert got is not None and got.failures == 0 and got.locked_until == 0.0
    assert store.unlock("nope") is False
    assert store.record_failure("nope", NOW, 3, 600) == (0, 0.0)


def test_record_failure_is_atomic_under_threads(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    store.add_pickup(make_pickup("p2"))
    # No lock reached: every failure counted exactly once.
    counts = in_threads(20, lambda i: store.record_failure("p1", NOW, 1000, 600)[0])
    assert sorted(counts) == list(range(1, 21))
    # Lock at 5: 20 failures lock exactly four times, and the count restarts each time.
    results = in_threads(20, lambda i: store.record_failure("p2", NOW, 5, 600))
    assert sum(1 for failures, _ in results if failures == 0) == 4
    got = store.pickup("p2")
    assert got is not None and got.failures == 0 and got.locked_until == NOW + 600


# -- replies -------------------------------------------------------------------------------


def test_replies_thread_oldest_first(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    store.add_pickup(make_pickup("p2"))
    store.add_reply(Reply(id="r2", pickup_id="p1", created=NOW + 20, sealed=b"second"))
    store.add_reply(Reply(id="r1", pickup_id="p1", created=NOW + 10, sealed=b"first"))
    store.add_reply(Reply(id="r3", pickup_id="p2", created=NOW + 5, sealed=b"other"))
    assert store.replies("p1") == [
        Reply(id="r1", pickup_id="p1", created=NOW + 10, sealed=b"first"),
        Reply(id="r2", pickup_id="p1", created=NOW + 20, sealed=b"second"),
    ]
    assert store.replies("nope") == []


def test_reply_to_unknown_pickup_is_refused(store: PortalStore) -> None:
    with pytest.raises(StoreError):
        store.add_reply(Reply(id="r1", pickup_id="nope", created=NOW, sealed=b"x"))


# -- codes ---------------------------------------------------------------------------------


def test_codes_replace_and_single_use(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    assert store.code("p1") is None
    first = make_code("p1", "111111")
    store.set_code(first)
    assert store.code("p1") == first
    second = make_code("p1", "222222", created=NOW + 60, expires=NOW + 660)
    store.set_code(second)
    assert store.code("p1") == second
    assert store.use_code("p1", first.code_hash, NOW + 61) is False  # replaced
    assert store.use_code("p1", second.code_hash, NOW + 61) is True
    assert store.use_code("p1", second.code_hash, NOW + 62) is False  # used
    got = store.code("p1")
    assert got is not None and got.used is True
    # A new code after a used one works again.
    third = make_code("p1", "333333", created=NOW + 100, expires=NOW + 700)
    store.set_code(third)
    assert store.code("p1") == third
    assert store.use_code("p1", third.code_hash, NOW + 101) is True
    assert store.use_code("nope", third.code_hash, NOW) is False


def test_expired_code_is_refused(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    code = make_code("p1", "123456", expires=NOW + 600)
    store.set_code(code)
    assert store.use_code("p1", code.code_hash, NOW + 600) is False
    got = store.code("p1")
    assert got is not None and got.used is False


def test_code_used_once_under_threads(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    code = make_code("p1", "654321")
    store.set_code(code)
    results = in_threads(16, lambda i: store.use_code("p1", code.code_hash, NOW + 1))
    assert results.count(True) == 1
    assert results.count(False) == 15


# -- sessions and grants -----------------------------------------------------------------------


def test_sessions_idle_out_touch_and_delete(store: PortalStore) -> None:
    sess = make_session("s1")
    store.add_session(sess, NOW + 900)
    assert store.session(sess.id_hash, NOW + 899) == sess
    assert store.session(sess.id_hash, NOW + 900) is None  # idled out
    store.touch_session(sess.id_hash, NOW + 800, NOW + 1700)
    got = store.session(sess.id_hash, NOW + 1000)
    assert got is not None and got.last_seen == NOW + 800 and got.created == NOW
    store.delete_session(sess.id_hash)
    assert store.session(sess.id_hash, NOW + 1000) is None
    assert store.session(b"\0" * 32, NOW) is None
    store.touch_session(b"\0" * 32, NOW, NOW + 10)  # unknown: nothing happens
    store.delete_session(b"\0" * 32)


def test_grants(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1"))
    store.add_pickup(make_pickup("p2"))
    a, b = make_session("a"), make_session("b")
    store.add_session(a, NOW + 900)
    store.add_session(b, NOW + 900)
    assert store.granted(a.id_hash, "p1") is None
    store.grant(a.id_hash, "p1", b"wrap-a1")
    store.grant(a.id_hash, "p2", b"wrap-a2")
    store.grant(b.id_hash, "p1", b"wrap-b1")
    assert store.granted(a.id_hash, "p1") == b"wrap-a1"
    assert store.granted(a.id_hash, "p2") == b"wrap-a2"
    assert store.granted(b.id_hash, "p2") is None
    store.grant(a.id_hash, "p1", b"wrap-a1-again")  # granted again: replaced
    assert store.granted(a.id_hash, "p1") == b"wrap-a1-again"
    store.delete_session(a.id_hash)  # grants go with the session
    assert store.granted(a.id_hash, "p1") is None
    assert store.granted(b.id_hash, "p1") == b"wrap-b1"


# -- purge ---------------------------------------------------------------------------------


def test_purge_deletes_expired_and_revoked_with_everything_attached(store: PortalStore) -> None:
    store.add_pickup(make_pickup("live", expires=NOW + DAY))
    store.add_pickup(make_pickup("expired", expires=NOW - 1))
    store.add_pickup(make_pickup("revoked", expires=NOW + DAY))
    live_s, idle_s = make_session("live"), make_session("idle")
    store.add_session(live_s, NOW + 600)
    store.add_session(idle_s, NOW - 1)
    for pid in ("live", "expired", "revoked"):
        store.add_reply(Reply(id="r-" + pid, pickup_id=pid, created=NOW, sealed=b"r"))
        store.set_code(make_code(pid, "123456"))
        store.grant(live_s.id_hash, pid, b"w-" + pid.encode())
    store.grant(idle_s.id_hash, "live", b"w-idle")
    assert store.revoke("revoked", NOW) is True

    assert store.purge(NOW) == 2

    assert [p.id for p in store.pickups()] == ["live"]
    for pid in ("expired", "revoked"):
        assert store.pickup(pid) is None
        assert store.replies(pid) == []
        assert store.code(pid) is None
        assert store.granted(live_s.id_hash, pid) is None
    assert [r.id for r in store.replies("live")] == ["r-live"]
    assert store.code("live") is not None
    assert store.granted(live_s.id_hash, "live") == b"w-live"
    # The idle session and its grant are gone, the live one stays.
    assert store.session(idle_s.id_hash, NOW - 10) is None
    assert store.granted(idle_s.id_hash, "live") is None
    assert store.session(live_s.id_hash, NOW) == live_s
    assert store.purge(NOW) == 0


def test_purge_at_exact_expiry(store: PortalStore) -> None:
    store.add_pickup(make_pickup("p1", expires=NOW))
    assert store.purge(NOW - 0.5) == 0
    assert store.purge(NOW) == 1


# -- lifecycle and errors ---------------------------------------------------------------------


def test_closed_store_raises_store_error(store: PortalStore) -> None:
    store.close()
    with pytest.raises(StoreError):
        store.pickup("p1")


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    s = open_store(tmp_path / "a.db")
    assert isinstance(s, SqliteStore)
    s.close()
    s = open_store(str(tmp_path / "b.db"))
    assert isinstance(s, SqliteStore)
    s.close()
    s = open_store(f"sqlite:///{tmp_path}/c.db")
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "c.db"
    s.close()


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "portal.db"
    s = SqliteStore(path)
    s.add_pickup(make_pickup("p1"))
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    s.close()


def test_sqlite_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteStore(tmp_path)  # a directory
    bad = tmp_path / "not-a-db"
    bad.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(StoreError) as err:
        SqliteStore(bad)
    assert "not-a-db" in str(err.value)


def test_sqlite_store_is_shared_across_threads(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "portal.db")
    in_threads(8, lambda i: s.add_pickup(make_pickup(f"p{i}", created=NOW + i)))
    assert [p.id for p in s.pickups()] == [f"p{i}" for i in range(8)]
    s.close()


def test_raw_sqlite_file_holds_no_plaintext(tmp_path: Path) -> None:
    """Seal synthetic messages as the portal does, keep one, revoke one, let one expire and
    purge: the bytes on disk hold no plaintext, and nothing of the dropped ciphertexts."""
    path = tmp_path / "portal.db"
    s = SqliteStore(path)
    marker = b"Synthetic patient Zebulon Quartermaine, MRN 40417733, dx E11.9"
    sealed: dict[str, bytes] = {}
    for pid, size in (("kept", 20), ("revoked", 300), ("expired", 1)):
        plaintext = (b"Subject: results\r\n\r\n" + marker + b"\r\n") * size
        secret = crypto.new_secret()
        key = crypto.derive(secret, "pickup", pid)
        sealed[pid] = crypto.seal(key, plaintext, pid)
        s.add_pickup(Pickup(id=pid, token_hash=crypto.token_hash(secret),
                            sender="dr.a@clinic.example", recipient="pat@mail.example",
                            created=NOW, expires=NOW - 1 if pid == "expired" else NOW + DAY,
                            sealed=sealed[pid], size=len(plaintext)))
        s.add_reply(Reply(id="r-" + pid, pickup_id=pid, created=NOW,
                          sealed=crypto.seal(key, b"Reply from Zebulon Quartermaine", pid)))
        assert crypto.unseal(key, s.pickup(pid).sealed, pid) == plaintext  # type: ignore[union-attr]
    assert s.revoke("revoked", NOW) is True
    assert s.purge(NOW) == 2

    def on_disk() -> bytes:
        return b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.is_file())

    while_open = on_disk()
    s.close()
    for raw in (while_open, on_disk()):
        assert b"Zebulon" not in raw and b"40417733" not in raw and marker not in raw
        assert sealed["kept"][-64:] in raw  # the scan does see stored content
        for pid in ("revoked", "expired"):
            blob = sealed[pid]
            for start in range(0, len(blob) - 32, max(1, len(blob) // 16)):
                assert blob[start:start + 32] not in raw, (pid, start)


# -- PostgreSQL specifics --------------------------------------------------------------------


def test_open_store_postgres_url(pg_dsn: str) -> None:  # noqa: F811
    pytest.importorskip("portal.store_pg")
    s = open_store(pg_dsn)
    assert type(s).__name__ == "PostgresStore"
    s.add_pickup(make_pickup("p1"))
    s.close()
    # The schema survives reopening; the data too.
    s = open_store(pg_dsn)
    assert s.pickup("p1") == make_pickup("p1")
    s.close()


def test_postgres_unreachable_is_a_store_error() -> None:
    store_pg = pytest.importorskip("portal.store_pg")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        store = store_pg.PostgresStore(f"postgresql://u:secretpw@127.0.0.1:{port}/db",
                                       connect_timeout=2)  # connects lazily: no error yet
        with pytest.raises(StoreError) as err:
            store.check()
        with pytest.raises(StoreError):
            store.pickup("p1")
    assert "secretpw" not in str(err.value)


@pytest.mark.skipif(pg_bindir() is None or bool(os.environ.get("PHIGATE_TEST_PG_DSN")),
                    reason="needs a local PostgreSQL to stop and start")
def test_postgres_outage_and_recovery() -> None:
    store_pg = pytest.importorskip("portal.store_pg")
    with PgCluster() as cluster:
        s = store_pg.PostgresStore(cluster.admin_dsn, connect_timeout=2)
        s.add_pickup(make_pickup("p1"))
        in_threads(4, lambda i: s.pickup("p1"))  # several pooled connections
        cluster.stop()
        with pytest.raises(StoreError):
            s.pickup("p1")  # a pooled connection finds the server gone
        with pytest.raises(StoreError) as err:
            s.add_pickup(make_pickup("p2"))  # then a new connection is refused
        assert "refused" in str(err.value).lower()
        assert cluster.password not in str(err.value)
        cluster.start()
        # Back at the first call, without reopening the store.
        assert s.pickup("p1") == make_pickup("p1")
        assert in_threads(4, lambda i: s.pickup("p1")) == [make_pickup("p1")] * 4
        s.close()
        with pytest.raises(StoreError):
            s.pickup("p1")


def test_postgres_store_error_names_no_values(pg_dsn: str) -> None:  # noqa: F811
    store_pg = pytest.importorskip("portal.store_pg")
    s = store_pg.PostgresStore(pg_dsn)
    s.add_pickup(make_pickup("pickup-id-xyz", recipient="someone.unique@mail.example"))
    with pytest.raises(StoreError) as err:
        s.add_pickup(make_pickup("pickup-id-xyz", recipient="someone.unique@mail.example"))
    assert "pickup-id-xyz" not in str(err.value)
    assert "someone.unique" not in str(err.value)
    s.close()



class _LockedAtFirst:
    """A real connection whose first ``times`` journal-mode switches answer "database is
    locked" at once, as SQLite does (without its busy handler) while a sibling process
    switches the same new file to WAL."""

    def __init__(self, conn: Any, times: int) -> None:
        self.conn, self.left = conn, times

    def execute(self, sql: str, *args: Any) -> Any:
        if "journal_mode" in sql and self.left > 0:
            self.left -= 1
            import sqlite3

            raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(sql, *args)


def test_sqlite_wal_switch_retries_while_a_sibling_holds_the_new_file(tmp_path: Path) -> None:
    """Gateway workers start together on a fresh var folder; each must still open the store."""
    import sqlite3

    store = SqliteStore(tmp_path / "portal.db")
    try:
        conn = sqlite3.connect(tmp_path / "other.db")
        mode = store._wal(_LockedAtFirst(conn, 3))  # type: ignore[arg-type]
        assert mode is not None and mode[0] == "wal"
        conn.close()
        store._busy_timeout = 0.0  # past the busy timeout the error is the caller's
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store._wal(_LockedAtFirst(sqlite3.connect(tmp_path / "third.db"), 1))  # type: ignore[arg-type]
    finally:
        store.close()
