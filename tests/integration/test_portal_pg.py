"""The portal on a shared PostgreSQL store, over real sockets and real processes.

Two nodes: a gateway (``phigate run``, ``portal.store=postgresql://...``) stores a
``[secure]`` message; a separate ``phigate portal run`` (a DMZ host sharing only the store,
its own listen port, handing its mail to the gateway's relay) serves that link: the code is
mailed, verified, the message read and answered there.

An outage: PostgreSQL stopped while a ``[secure]`` message is delivered -> the gateway keeps
it queued (``portal.stored`` failure, a deferral, nothing sent, least of all in clear) and
sends the notification once the server is back. Synthetic data only.
"""

from __future__ import annotations

import contextlib
import json
import signal
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from tests.conftest import PHIGATE, ROOT, GatewayProc, Received, Sink, free_port, wait_port
from tests.integration.portal_client import Browser, code_of, link_of, parse
from tests.portal_pg import SKIP_REASON, PgCluster, pg_bindir

BODY = "Synthetic discharge note for Testpatient Vorbl, recheck in ten days."
SUBJECT = "[secure] Discharge Vorbl"
SECRETS = (b"Testpatient", b"Vorbl", b"scan-vorbl")


def _submit(gw: GatewayProc, to: str) -> None:
    msg = EmailMessage()
    msg["From"] = "Alice Sender <alice@example.org>"
    msg["To"] = to
    msg["Subject"] = SUBJECT
    msg["Message-ID"] = f"<{time.time_ns()}@example.org>"
    msg.set_content(BODY)
    msg.add_attachment(bytes(range(256)) * 8, maintype="application",
                       subtype="octet-stream", filename="scan-vorbl.bin")
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=30) as c:
        c.ehlo("client.test")
        assert not c.sendmail("alice@example.org", [to], msg.as_bytes(policy=SMTP))


def _find(sink: Sink, rcpt: str, subject: str) -> list[Received]:
    with sink.handler.lock:
        return [m for m in sink.handler.messages
                if rcpt in m.rcpt_tos and subject in str(parse(m.data)["subject"])]


def _wait(sink: Sink, rcpt: str, subject: str, timeout: float = 30.0) -> Received:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _find(sink, rcpt, subject)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no message for {rcpt} with {subject!r} at the sink")


@dataclass
class PortalNode:
    """``phigate portal run`` on its own port and var folder, sharing the gateway's store."""

    port: int
    var: Path
    proc: subprocess.Popen[bytes]

    def events(self) -> list[str]:
        path = self.var / "log" / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["event.action"] for line in path.read_text().splitlines()
                if line.strip()]


@pytest.fixture
def portal_node(tmp_path: Path) -> Iterator[Callable[[GatewayProc], PortalNode]]:
    nodes: list[PortalNode] = []

    def start(gw: GatewayProc) -> PortalNode:
        port, var = free_port(), tmp_path / "portal-node"
        var.mkdir()
        mine = ("portal.listen=", "portal.base_url=", "paths.var=", "portal.submit=")
        overrides = [o for o in gw.overrides if not o.startswith(mine)] + [
            f"portal.listen=127.0.0.1:{port}", f"portal.base_url=http://127.0.0.1:{port}",
            f"paths.var={var}", f"portal.submit=127.0.0.1:{gw.relay}"]
        argv = [*PHIGATE, "portal", "run", "--config", str(gw.config)]
        for o in overrides:
            argv += ["--set", o]
        with open(var / "stdout.log", "ab") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        node = PortalNode(port, var, proc)
        nodes.append(node)
        try:
            wait_port(port)
        except TimeoutError:
            raise AssertionError((var / "stdout.log").read_text(errors="replace")[-3000:]) \
                from None
        return node

    yield start
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(15)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(10)


def test_gateway_stores_portal_node_serves(gateway_factory, sink: Sink, pg_dsn: str,  # type: ignore[no-untyped-def]
                                           portal_node) -> None:
    gw = gateway_factory("rules.enabled=true", f"portal.store={pg_dsn}",
                         transport={"dest.test": sink.port, "example.org": sink.port})
    node = portal_node(gw)
    _submit(gw, "bob@dest.test")
    note = _wait(sink, "bob@dest.test", "Secure message from")
    for secret in SECRETS:
        assert secret not in note.data
    link = link_of(note.data)
    pid = link.split("/")[2]
    stored = gw.wait_event(lambda e: e["event.action"] == "portal.stored")
    assert stored["event.outcome"] == "success" and stored["portal.id"] == pid

    # the link, on the other node: code by mail (through the gateway's relay), verify, read
    b = Browser(node.port)
    page = b.get(link + "?s=1")
    assert page.status == 200 and "Email me a code" in page.text
    sent = b.post(link + "/send", {"csrf": page.form_token()})
    assert sent.status == 200, sent.text
    code = code_of(_wait(sink, "bob@dest.test", "one-time code").data)
    done = b.post(link + "/verify", {"csrf": sent.form_token(), "code": code})
    assert done.status == 303 and done.headers["Location"] == f"/m/{pid}", done.text
    msg = b.get(f"/m/{pid}")
    assert msg.status == 200 and "Testpatient Vorbl" in msg.text
    assert "scan-vorbl.bin" in msg.text
    att = b.get(f"/m/{pid}/a/0")
    assert att.status == 200 and att.body == bytes(range(256)) * 8

    # a reply from the portal node reaches the sender through the gateway
    r = b.post_multipart(f"/m/{pid}/reply", {"csrf": msg.form_token(),
                                             "text": "Synthetic reply via the DMZ node"}, [])
    assert r.status == 303, r.text
    reply = _wait(sink, "alice@example.org", "Re: Discharge Vorbl")
    assert b"Synthetic reply via the DMZ node" in reply.data

    # the node did the serving (its own audit log); the gateway's portal saw none of it
    for action in ("portal.code_sent", "portal.verified", "portal.view", "portal.download",
                   "portal.reply"):
        assert action in node.events(), action
    assert "portal.view" not in [e["event.action"] for e in gw.events()]
    # the session made on the DMZ node works on the gateway's portal too (one shared store,
    # no node-local state)
    assert Browser(gw.portal, cookies=dict(b.cookies)).get(f"/m/{pid}").status == 200


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    if pg_bindir() is None:
        pytest.skip(SKIP_REASON)
    with PgCluster() as cluster:
        yield cluster


def test_store_outage_keeps_message_queued(gateway_factory, sink: Sink,  # type: ignore[no-untyped-def]
                                           own_cluster: PgCluster) -> None:
    pg = own_cluster
    gw = gateway_factory("rules.enabled=true", f"portal.store={pg.admin_dsn}",
                         "delivery.retry.first=2s", "delivery.retry.max_backoff=2s",
                         transport={"dest.test": sink.port, "example.org": sink.port})
    # the worker opens the store as it starts (the relay port is bound before): wait for it
    gw.wait_event(lambda e: e["event.action"] == "service.started")
    pg.stop()
    try:
        _submit(gw, "carol@dest.test")
        failed = gw.wait_event(lambda e: e["event.action"] == "portal.stored"
                               and e["event.outcome"] == "failure")
        assert failed["email.to.address"] == "carol@dest.test"
        deferred = gw.wait_event(lambda e: e["event.action"] == "message.deferred")
        assert deferred["email.local_id"] == failed["email.local_id"]
        assert "carol@dest.test" in deferred["email.to.address"]
        # the portal answers with a clear page, not a crash, while its store is away
        down = Browser(gw.portal).get("/p/AAAAAAAAAAAAAAAAAAAAAA/BBBBBBBBBBBBBBBBBBBBBBBBBBBB?s=1")
        assert down.status == 503 and "Temporarily unavailable" in down.text
        queued = gw.cli("queue", "list")
        assert failed["email.local_id"] in queued.stdout, queued.stdout + queued.stderr
        with sink.handler.lock:
            early = list(sink.handler.messages)
    finally:
        pg.start()
    # nothing went out while the store was down: not in clear, not as a notification
    for m in early:
        assert "carol@dest.test" not in m.rcpt_tos
        for secret in SECRETS:
            assert secret not in m.data

    note = _wait(sink, "carol@dest.test", "Secure message from", timeout=40)
    for secret in SECRETS:
        assert secret not in note.data
    stored = gw.wait_event(lambda e: e["event.action"] == "portal.stored"
                           and e["event.outcome"] == "success")
    assert stored["email.local_id"] == failed["email.local_id"]
    with sink.handler.lock:
        to_carol = [m for m in sink.handler.messages if "carol@dest.test" in m.rcpt_tos]
    assert len(to_carol) == 1  # one notification, and never the message itself
    link = link_of(note.data)
    page = Browser(gw.portal).get(link + "?s=1")
    assert page.status == 200 and "Email me a code" in page.text
    with contextlib.suppress(Exception):
        gw.stop()  # before the cluster goes away


def test_gateway_starts_while_store_down(gateway_factory, sink: Sink) -> None:  # type: ignore[no-untyped-def]
    """Fail closed, but stay up: with the store unreachable at start, the gateway still
    accepts mail and keeps portal messages queued until the store is back."""
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'psycopg[binary]')")
    closed = f"postgresql://postgres:unused@127.0.0.1:{free_port()}/postgres"
    gw = gateway_factory("rules.enabled=true", f"portal.store={closed}",
                         transport={"dest.test": sink.port, "example.org": sink.port})
    assert gw.proc is not None
    deadline = time.monotonic() + 15
    while not any(e["event.action"] == "service.started" for e in gw.events()):
        assert gw.proc.poll() is None, "the gateway exited: the store is down at start"
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    _submit(gw, "dan@dest.test")
    gw.wait_event(lambda e: e["event.action"] == "portal.stored"
                  and e["event.outcome"] == "failure")
    gw.wait_event(lambda e: e["event.action"] == "message.deferred")
