"""Durability and the queue command, against a real ``phigate run`` subprocess.

Invariant 1 of the design: a 250 at end of DATA means the message is on disk; after a
``kill -9`` at any moment and a restart, every acknowledged message is delivered (at least
once: duplicates are allowed, counted and reported, never losses). Also: SIGTERM drains a
session in DATA, and ``phigate queue list|hold|release|delete|flush`` with and without a
running gateway.
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import PHIGATE, ROOT, GatewayProc, Received, Sink, free_port, start_sink
from tests.integration.delivery_harness import SlowHandler, make_message, start_custom_sink

SENDER = "alice@example.org"
RCPT = "bob@dest.test"
RECEIVED_ID = re.compile(rb"\(phigate\) with E?SMTP\w* id ([0-9A-Za-z]+)")
# Retry quickly after a restart: what was deferred while the destination was down is tried
# again within about a second of it coming up.
FAST_RETRY = ("delivery.retry.first=1s", "delivery.retry.max_backoff=1s")


# --------------------------------------------------------------------------- helpers


def queue_id_of(received: Received) -> str | None:
    m = RECEIVED_ID.search(received.data[:2000])
    return m.group(1).decode() if m else None


def send_one(port: int, raw: bytes, rcpt: str = RCPT) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("client.test")
        c.mail(SENDER)
        c.rcpt(rcpt)
        code, reply = c.data(raw)
    assert code == 250, (code, reply)
    return reply.split()[-1].decode()


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def spool_files(gw: GatewayProc, states: tuple[str, ...] = ("incoming", "active", "deferred",
                                                             "hold", "corrupt")) -> dict[str, str]:
    """queue id -> state, for every queue file on disk."""
    out = {}
    for state in states:
        d = gw.var / "spool" / state
        if d.is_dir():
            for p in d.iterdir():
                out[p.name] = state
    return out


def queue_list(gw: GatewayProc) -> dict[str, dict[str, Any]]:
    r = gw.cli("queue", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {e["queue_id"]: e for e in map(json.loads, r.stdout.splitlines())}


def cli_ok(gw: GatewayProc, *argv: str, tries: int = 20) -> str:
    """Run a queue command; retry while the message is briefly being delivered (active)."""
    for _ in range(tries):
        r = gw.cli(*argv)
        if r.returncode == 0:
            return r.stdout
        if "being delivered right now" not in r.stderr:
            break
        time.sleep(0.1)
    raise AssertionError(f"phigate {' '.join(argv)} failed: {r.returncode} {r.stderr}")


def events_of(gw: GatewayProc, action: str, qid: str | None = None) -> list[dict[str, Any]]:
    return [e for e in gw.events() if e["event.action"] == action
            and (qid is None or e.get("email.local_id") == qid)]


@dataclass
class Ledger:
    """What the clients saw: acknowledged (250 with a queue id) and failed messages."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, str] = field(default_factory=dict)  # Message-ID -> queue id
    failed: list[str] = field(default_factory=list)

    def ack(self, msgid: str, qid: str) -> None:
        with self.lock:
            self.acked[msgid] = qid

    def fail(self, msgid: str) -> None:
        with self.lock:
            self.failed.append(msgid)

    def n_acked(self) -> int:
        with self.lock:
            return len(self.acked)


def client_thread(port: int, items: list[tuple[str, bytes]], ledger: Ledger,
                  stop: threading.Event) -> None:
    """Send each message over one reused connection; reconnect after an error; give up
    when the gateway no longer accepts connections."""
    conn: smtplib.SMTP | None = None
    try:
        for msgid, raw in items:
            if stop.is_set():
                return
            try:
                if conn is None:
                    conn = smtplib.SMTP("127.0.0.1", port, timeout=10)
                    conn.ehlo("client.test")
            except OSError:
                ledger.fail(msgid)
                return  # the gateway is gone
            try:
                code, _ = conn.mail(SENDER)
                if code != 250:
                    raise smtplib.SMTPResponseException(code, b"MAIL")
                code, _ = conn.rcpt(RCPT)
                if code != 250:
                    raise smtplib.SMTPResponseException(code, b"RCPT")
                code, reply = conn.data(raw)
            except (OSError, smtplib.SMTPException):
                ledger.fail(msgid)
                try:
                    conn.close()
                finally:
                    conn = None
                continue
            m = re.search(rb"queued as (\S+)", reply)
            if code == 250 and m:
                ledger.ack(msgid, m.group(1).decode())
            else:
                ledger.fail(msgid)
    finally:
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()


def send_concurrently(port: int, n: int, threads: int, tag: str, ledger: Ledger,
                      stop: threading.Event) -> list[threading.Thread]:
    msgs = [make_message(subject=f"{tag} {i}", msgid=f"<{tag}-{i}@example.org>",
                         body=f"durability test message {i}\r\n" + "x" * 200 + "\r\n")
            for i in range(n)]
    items = [(msgid, raw) for raw, msgid in msgs]
    out = []
    for k in range(threads):
        t = threading.Thread(target=client_thread, args=(port, items[k::threads], ledger, stop),
                             daemon=True)
        t.start()
        out.append(t)
    return out


def check_arrivals(sink: Sink, ledger: Ledger, timeout: float) -> dict[str, Any]:
    """Wait until every acknowledged queue id arrived; return counts for the report."""
    want = set(ledger.acked.values())

    def arrived() -> Counter[str]:
        with sink.handler.lock:
            got = list(sink.handler.messages)
        return Counter(q for q in map(queue_id_of, got) if q is not None)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not want <= set(arrived()):
        time.sleep(0.1)
    counts = arrived()
    missing = want - set(counts)
    dups = {q: c for q, c in counts.items() if c > 1}
    assert not missing, (f"{len(missing)} of {len(want)} acknowledged messages were lost, "
                         f"e.g. {sorted(missing)[:5]}")
    # each queue id carries the Message-ID its client sent (no mix-up on recovery)
    by_qid = {q: m for m, q in ledger.acked.items()}
    with sink.handler.lock:
        got = list(sink.handler.messages)
    for r in got:
        q = queue_id_of(r)
        if q in by_qid:
            assert by_qid[q].encode() in r.data
    return {"acked": len(want), "delivered_total": sum(counts.values()),
            "distinct": len(counts), "duplicates": sum(c - 1 for c in dups.values()),
            "unacked_delivered": len(set(counts) - want), "client_failures": len(ledger.failed)}


def report(request: pytest.FixtureRequest, stats: dict[str, Any]) -> None:
    """Print the figures (seen with -s or -rA), attach them to the test (JUnit XML
    properties), and turn duplicates into a warning so they show in the summary."""
    for k, v in stats.items():
        request.node.user_properties.append((k, v))
    print(f"\n{request.node.name}: {stats}")
    if stats.get("duplicates"):
        warnings.warn(f"{request.node.name}: {stats['duplicates']} duplicate deliveries "
                      f"(at least once; no loss): {stats}", stacklevel=2)


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kill_after", [50, 250, 450])
def test_sigkill_while_receiving_loses_no_acknowledged_message(gateway_factory, request,
                                                                kill_after):
    dest = free_port()  # the destination is down while the messages come in
    # Each message is tried once on arrival, then deferred for a minute: retries of
    # hundreds of deferred messages would only compete with intake for the CPU.
    gw = gateway_factory("delivery.retry.first=60s", transport={"dest.test": dest})
    ledger, stop = Ledger(), threading.Event()
    t_send = time.monotonic()
    threads = send_concurrently(gw.relay, 500, 5, f"k{kill_after}", ledger, stop)
    wait_until(lambda: ledger.n_acked() >= kill_after, 30, f"{kill_after} acknowledgements")
    gw.kill()
    stop.set()
    for t in threads:
        t.join(15)
        assert not t.is_alive()
    acked_at_kill = dict(ledger.acked)
    assert len(acked_at_kill) >= kill_after

    # Nothing has been delivered (the destination is down), so every acknowledged message
    # must be on disk right now, whole and in a state the restart will pick up.
    on_disk = spool_files(gw)
    lost_now = [q for q in acked_at_kill.values() if q not in on_disk]
    assert not lost_now, f"acknowledged but not on disk after kill -9: {lost_now[:5]}"
    assert "corrupt" not in on_disk.values()

    # The destination is back: the admin flushes the queue (offline: it only makes every
    # deferred message due) and restarts the gateway. What was in incoming/ or active/ at
    # the kill needs no flush: it is recovered and tried at once.
    t_restart = time.monotonic()
    sink = start_sink(port=dest)
    cli_ok(gw, "queue", "flush")
    gw.start()
    try:
        stats = check_arrivals(sink, ledger, timeout=40)
        stats["seconds_to_deliver_after_restart"] = round(time.monotonic() - t_restart, 1)
        wait_until(lambda: not spool_files(gw), 15, "the spool to drain")
        assert gw.stop() == 0
    finally:
        sink.stop()
    stats["seconds_sending"] = round(t_restart - t_send, 1)
    stats["killed_after"] = len(acked_at_kill)
    report(request, stats)
    assert events_of(gw, "queue.recovered"), "no queue.recovered event at restart"
    assert not events_of(gw, "queue.corrupt")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkill_during_delivery_loses_no_acknowledged_message(gateway_factory, request):
    handler = SlowHandler(delay=0.3)  # a slow remote server: deliveries are in flight
    sink = start_custom_sink(handler)
    try:
        gw = gateway_factory(*FAST_RETRY, transport={"dest.test": sink.port})
        ledger, stop = Ledger(), threading.Event()
        threads = send_concurrently(gw.relay, 200, 4, "dk", ledger, stop)
        wait_until(lambda: ledger.n_acked() >= 100 and len(sink.messages) >= 10, 30,
                   "100 acknowledgements and 10 deliveries")
        gw.kill()
        stop.set()
        for t in threads:
            t.join(15)
            assert not t.is_alive()
        delivered_before = len(sink.messages)
        in_spool = spool_files(gw)
        assert delivered_before < len(ledger.acked), "everything was delivered before the kill"
        gw.start()
        stats = check_arrivals(sink, ledger, timeout=40)
        wait_until(lambda: not spool_files(gw), 15, "the spool to drain")
        assert gw.stop() == 0
    finally:
        sink.stop()
    stats["delivered_before_kill"] = delivered_before
    stats["in_spool_at_kill"] = len(in_spool)
    stats["active_at_kill"] = sum(1 for s in in_spool.values() if s == "active")
    report(request, stats)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ours(pid: int, var: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"gateway.cli" in cmd and var.encode() in cmd


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigkill_of_the_supervisor_with_two_workers(gateway_factory):
    """With ``workers: 2`` the process the admin (or the OOM killer) kills is the
    supervisor. Its workers must not live on as orphans holding the listening sockets and
    the spool: the restart has to come up and deliver every acknowledged message."""
    dest = free_port()
    gw = gateway_factory("workers=2", *FAST_RETRY, transport={"dest.test": dest})
    wait_until(lambda: len(events_of(gw, "service.started")) == 2, 10, "two workers")
    workers = [e["process.pid"] for e in events_of(gw, "service.started")]
    ledger, stop = Ledger(), threading.Event()
    threads = send_concurrently(gw.relay, 40, 2, "sup", ledger, stop)
    for t in threads:
        t.join(20)
    assert ledger.n_acked() == 40
    gw.kill()
    sink = None
    try:
        time.sleep(2)
        orphans = [p for p in workers if _alive(p)]
        gw.start()
        time.sleep(1)
        assert gw.proc is not None
        restart_rc = gw.proc.poll()
        restart_out = gw.out.read_text(errors="replace")[-300:]
        sink = start_sink(port=dest)
        check_arrivals(sink, ledger, timeout=20)  # whoever delivers them
        assert not orphans, f"worker processes {orphans} outlived their supervisor"
        assert restart_rc is None, f"the restarted gateway exited ({restart_rc}): {restart_out}"
    finally:
        if sink is not None:
            sink.stop()
        for pid in workers:  # only the worker pids this test's gateway reported
            if _alive(pid) and _ours(pid, str(gw.var)):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_a_second_instance_on_the_same_spool_leaves_it_alone(gateway_factory):
    """Starting ``phigate run`` again while one runs (same config: same ports and var) must
    fail without touching the running instance's spool; in particular it must not hand
    the message being delivered right now back to incoming (a duplicate in waiting)."""
    handler = SlowHandler(delay=3.0)
    sink = start_custom_sink(handler)
    try:
        gw = gateway_factory(transport={"dest.test": sink.port})
        raw, _ = make_message()
        qid = send_one(gw.relay, raw)
        wait_until(lambda: spool_files(gw).get(qid) == "active", 5, "the delivery to start")
        second = subprocess.run([*PHIGATE, "run", *gw.args()], cwd=ROOT, capture_output=True,
                                text=True, timeout=20)
        assert second.returncode != 0
        assert spool_files(gw).get(qid) == "active", \
            "the second instance moved a message that the first one is delivering"
        sink.wait_for(1, timeout=10)
        wait_until(lambda: qid not in spool_files(gw), 5, "the message to leave the queue")
    finally:
        sink.stop()


# --------------------------------------------------------------------------- SIGTERM


def _reply(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """Read one (possibly multi-line) SMTP reply."""
    lines = []
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise EOFError(f"connection closed; got {bytes(buf)!r}")
            buf += chunk
        i = buf.index(b"\r\n")
        line = bytes(buf[:i])
        del buf[: i + 2]
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"\n".join(x[4:] for x in lines)


@pytest.mark.timeout(60)
def test_sigterm_drains_a_session_in_data(gateway_factory):
    dest = free_port()  # down: the message stays queued through the stop
    gw = gateway_factory(transport={"dest.test": dest})
    raw, msgid = make_message(body="first half of the body\r\n" * 20 + "second half\r\n")
    cut = len(raw) // 2
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", gw.relay), timeout=10) as s:
        assert _reply(s, buf)[0] == 220
        for cmd, code in ((b"EHLO client.test", 250), (f"MAIL FROM:<{SENDER}>".encode(), 250),
                          (f"RCPT TO:<{RCPT}>".encode(), 250), (b"DATA", 354)):
            s.sendall(cmd + b"\r\n")
            assert _reply(s, buf)[0] == code, cmd
        s.sendall(raw[:cut])
        time.sleep(0.3)
        gw.signal(signal.SIGTERM)

        def refuses_connections() -> bool:
            try:
                socket.create_connection(("127.0.0.1", gw.relay), timeout=1).close()
            except OSError:
                return True
            return False

        wait_until(refuses_connections, 10, "the gateway to stop accepting connections")
        time.sleep(0.5)
        assert gw.proc is not None and gw.proc.poll() is None, \
            "the gateway exited while a client was in DATA"
        s.sendall(raw[cut:] + b".\r\n")
        code, text = _reply(s, buf)
        assert code == 250, text
        qid = text.split()[-1].decode()
        try:
            s.sendall(b"QUIT\r\n")
            _reply(s, buf)
        except OSError:
            pass  # the gateway may close the session once the message is safe
        except EOFError:
            pass
    assert gw.proc.wait(30) == 0
    assert spool_files(gw).get(qid) in ("incoming", "deferred")
    stopped = events_of(gw, "service.stopped")
    assert len(stopped) == 1

    sink = start_sink(port=dest)
    try:
        gw.start()
        (got,) = sink.wait_for(1, timeout=15)
        assert queue_id_of(got) == qid and msgid.encode() in got.data
        assert got.data.endswith(b"second half\r\n")
    finally:
        gw.stop()
        sink.stop()


@pytest.mark.timeout(60)
def test_sigterm_finishes_the_delivery_in_flight(gateway_factory):
    handler = SlowHandler(delay=2.0)
    sink = start_custom_sink(handler)
    try:
        gw = gateway_factory(transport={"dest.test": sink.port})
        raw, msgid = make_message()
        qid = send_one(gw.relay, raw)
        wait_until(lambda: spool_files(gw).get(qid) == "active", 5, "the delivery to start")
        time.sleep(0.5)  # the remote server is now sitting on DATA
        gw.signal(signal.SIGTERM)
        assert gw.proc is not None and gw.proc.wait(30) == 0
        (got,) = sink.wait_for(1, timeout=1)
        assert msgid.encode() in got.data
        assert qid not in spool_files(gw), "delivered, yet left in the queue for a resend"
        (ev,) = events_of(gw, "delivery.delivered", qid)
        assert ev["smtp.code"] == 250
        gw.start()
        time.sleep(2)
        assert len(sink.messages) == 1
    finally:
        sink.stop()


# --------------------------------------------------------------------------- queue command


def _deferred(gw: GatewayProc, qid: str) -> dict[str, Any]:
    gw.wait_event(lambda e: e["event.action"] == "message.deferred"
                  and e.get("email.local_id") == qid, timeout=15)
    return queue_list(gw)[qid]


@pytest.mark.timeout(60)
def test_queue_hold_and_release_with_the_gateway_running(gateway_factory):
    dest = free_port()
    # no retry of its own during the test: the message stays deferred until we act
    gw = gateway_factory("delivery.retry.first=60s", transport={"dest.test": dest})
    raw, msgid = make_message()
    qid = send_one(gw.relay, raw)
    entry = _deferred(gw, qid)
    assert entry["state"] == "deferred" and entry["sender"] == SENDER
    assert entry["attempts"] >= 1 and entry["next_attempt"]
    (rs,) = entry["recipients"]
    assert rs["recipient"] == RCPT and rs["state"] == "pending"
    assert 400 <= rs["last_code"] < 500

    out = cli_ok(gw, "queue", "hold", qid)
    assert f"{qid}: hold done" in out
    assert spool_files(gw).get(qid) == "hold"
    sink = start_sink(port=dest)
    try:
        # held: not delivered, not even by a flush
        cli_ok(gw, "queue", "flush")
        time.sleep(2.5)
        assert sink.messages == []
        assert queue_list(gw)[qid]["state"] == "hold"

        started = time.monotonic()
        cli_ok(gw, "queue", "release", qid)
        (got,) = sink.wait_for(1, timeout=5)
        assert msgid.encode() in got.data and queue_id_of(got) == qid
        print(f"\nreleased message delivered after {time.monotonic() - started:.2f} s")
        wait_until(lambda: qid not in spool_files(gw), 5, "the message to leave the queue")
    finally:
        sink.stop()
    assert events_of(gw, "queue.hold", qid) and events_of(gw, "queue.release", qid)


@pytest.mark.timeout(60)
def test_queue_flush_retries_promptly(gateway_factory):
    dest = free_port()
    # a long back-off: without the flush the next attempt would be a minute away
    gw = gateway_factory("delivery.retry.first=60s", transport={"dest.test": dest})
    raw, msgid = make_message()
    qid = send_one(gw.relay, raw)
    entry = _deferred(gw, qid)
    assert entry["attempts"] == 1
    sink = start_sink(port=dest)
    try:
        time.sleep(1.0)
        assert sink.messages == []
        out = cli_ok(gw, "queue", "flush")
        assert "flushed 1 deferred message(s)" in out
        (got,) = sink.wait_for(1, timeout=5)
        assert msgid.encode() in got.data
        wait_until(lambda: qid not in spool_files(gw), 5, "the message to leave the queue")
    finally:
        sink.stop()
    (ev,) = events_of(gw, "queue.flush")
    assert ev["count"] == 1


@pytest.mark.timeout(60)
def test_queue_commands_without_a_running_gateway(gateway_factory):
    dest = free_port()
    gw = gateway_factory("delivery.retry.first=60s", transport={"dest.test": dest})
    raw1, msgid1 = make_message(subject="to delete")
    raw2, msgid2 = make_message(subject="to hold")
    q1, q2 = send_one(gw.relay, raw1), send_one(gw.relay, raw2)
    _deferred(gw, q1)
    _deferred(gw, q2)
    assert gw.stop() == 0

    listed = queue_list(gw)
    assert {q1, q2} <= set(listed)
    assert listed[q1]["state"] == listed[q2]["state"] == "deferred"

    out = cli_ok(gw, "queue", "delete", q1, "--reason", "sent to the wrong patient")
    assert f"{q1}: delete done" in out
    cli_ok(gw, "queue", "hold", q2)
    listed = queue_list(gw)
    assert q1 not in listed and listed[q2]["state"] == "hold"
    assert q1 not in spool_files(gw) and spool_files(gw)[q2] == "hold"
    assert not (gw.var / "spool" / "status" / f"{q1}.json").exists()
    (ev,) = events_of(gw, "queue.delete", q1)
    assert ev["admin.reason"] == "sent to the wrong patient"
    assert ev["queue.state"] == "deferred"

    r = gw.cli("queue", "delete", "NOSUCHID")
    assert r.returncode == 1 and "not in the queue" in r.stderr

    # held across a restart; released while the gateway runs: delivered promptly
    sink = start_sink(port=dest)
    try:
        gw.start()
        time.sleep(1.5)
        assert sink.messages == []
        assert spool_files(gw)[q2] == "hold"
        cli_ok(gw, "queue", "release", q2)
        (got,) = sink.wait_for(1, timeout=5)
        assert msgid2.encode() in got.data
        time.sleep(0.5)
        assert not any(msgid1.encode() in m.data for m in sink.messages)
        assert len(sink.messages) == 1
    finally:
        gw.stop()
        sink.stop()
