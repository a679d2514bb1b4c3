"""The durable queue: write, read back, move, claim, recover."""

from __future__ import annotations

import os

import pytest

from gateway.model import DeliveryStatus, Envelope, RecipientStatus, RecipientVerdict, Verdict
from gateway.spool import Spool, SpoolError, new_queue_id


def _env(*rcpts: str) -> Envelope:
    return Envelope("alice@example.org", tuple(rcpts) or ("bob@dest.test",), "127.0.0.1",
                    "client.test", None, "relay", received_at=1000.0)


def _verdict(env: Envelope) -> Verdict:
    return Verdict(tuple(RecipientVerdict(r, "deliver", "default") for r in env.rcpt_tos))


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool")
    s.ensure()
    return s


def test_store_and_read_back(spool):
    env = _env("a@x.test", "b@y.test")
    body = b"Subject: t\r\n\r\n" + bytes(range(256)) * 10
    qid = spool.store(env, _verdict(env), body)
    assert spool.find(qid) == "incoming"
    assert spool.read_message("incoming", qid) == body
    e = spool.entry("incoming", qid)
    assert e.envelope == env and e.verdict == _verdict(env) and e.size == len(body)
    assert e.status.pending == ("a@x.test", "b@y.test")
    assert os.listdir(spool.root / "tmp") == []


def test_claim_is_exclusive(spool):
    env = _env()
    qid = spool.store(env, _verdict(env), b"x\r\n")
    assert spool.claim(qid, "incoming") is True
    assert spool.claim(qid, "incoming") is False
    assert spool.find(qid) == "active"


def test_status_round_trip_and_remove(spool):
    env = _env("a@x.test", "b@y.test")
    qid = spool.store(env, _verdict(env), b"x\r\n")
    st = DeliveryStatus((RecipientStatus("a@x.test", "delivered", 1, 250, "ok"),
                         RecipientStatus("b@y.test", "pending", 1, 451, "later")), 1, 1234.5)
    spool.set_status(qid, st)
    assert spool.status(qid, env.rcpt_tos) == st
    assert spool.entry("incoming", qid).status.pending == ("b@y.test",)
    spool.remove(qid, "incoming")
    assert spool.find(qid) is None
    assert not (spool.root / "status" / f"{qid}.json").exists()


def test_recover_requeues_active_and_quarantines_corrupt(spool):
    env = _env()
    a = spool.store(env, _verdict(env), b"a\r\n")
    spool.claim(a, "incoming")
    (spool.root / "tmp" / "half-written").write_bytes(b"PHIGATE1 99\n{")
    (spool.root / "deferred" / "BROKEN").write_bytes(b"garbage")
    counts = spool.recover()
    assert counts == {"tmp_removed": 1, "requeued": 1, "corrupt": 1}
    assert spool.find(a) == "incoming"
    assert spool.find("BROKEN") == "corrupt"
    with pytest.raises(SpoolError):
        spool.read_header("corrupt", "BROKEN")


def test_failed_write_leaves_nothing(spool, monkeypatch):
    env = _env()

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        spool.store(env, _verdict(env), b"x\r\n")
    monkeypatch.undo()
    assert all(spool.ids(s) == [] for s in ("incoming", "tmp"))
    assert os.listdir(spool.root / "tmp") == []


def test_queue_ids_unique_and_ordered():
    ids = [new_queue_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert [i[:14] for i in ids] == sorted(i[:14] for i in ids)


def test_requeue_stale_active(spool):
    env = _env()
    a = spool.store(env, _verdict(env), b"a\r\n")
    spool.claim(a, "incoming")
    claimed = os.stat(spool.path("active", a)).st_ctime
    assert spool.requeue_stale(3600, now=claimed + 60) == 0
    assert spool.requeue_stale(3600, now=claimed + 3601) == 1
    assert spool.find(a) == "incoming"
