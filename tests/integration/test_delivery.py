"""Delivery against real SMTP peers on loopback, driven by an injected clock: retries and
back-off, per-recipient outcomes, RFC 3464 bounces that return headers only (through the
gateway's own spool and transport map), the null sender, a destination that comes up later,
expiry, delay warnings, connection reuse, opportunistic STARTTLS (never below TLS 1.2),
and the syntax of DSN fields.

The parts are wired in-process (see ``delivery_harness``); the clock moves only when a test
advances it, so nothing here sleeps to wait for a retry. The last test runs the whole
``app.Gateway`` (intake, scheduler, workers) in-process on the same kind of clock.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import smtplib
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway, Runtime, bind, prepare_var
from gateway.audit import AuditLog
from gateway.config import HostPort, load_config
from tests.conftest import ROOT, Sink, free_port, start_sink
from tests.integration.delivery_harness import (
    CountingHandler,
    FakeClock,
    Harness,
    check_dsn_fields,
    harness_maker,
    make_message,
    start_custom_sink,
)

pytestmark = pytest.mark.timeout(60)

SENDER = "alice@example.org"
BODY_MARKER = "BODY-MARKER-4f1c9e2a synthetic lab value 7.3 for the patient"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@pytest.fixture
def bounce_sink() -> Iterator[Sink]:
    """Where the original sender's domain (example.org) is routed: bounces arrive here."""
    s = start_sink()
    yield s
    s.stop()


@pytest.fixture
async def harness_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Harness]]:
    async with harness_maker(tmp_path) as make:
        yield make


def _parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def assert_headers_only_bounce(raw: bytes, *, original_subject: str,
                               original_msgid: str) -> dict[str, str]:
    """Check the RFC 3464 shape of a bounce; return its parts' text by content type."""
    msg = _parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert "MAILER-DAEMON@" in str(msg["From"])
    assert SENDER in str(msg["To"])
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = list(msg.iter_parts())
    types = [p.get_content_type() for p in parts]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"], types
    texts = {p.get_content_type(): p.as_string() for p in parts}
    headers = texts["text/rfc822-headers"]
    assert f"Subject: {original_subject}" in headers
    assert original_msgid in headers
    # headers only: the body (PHI) never goes back, in no part and no encoding
    assert BODY_MARKER.encode() not in raw
    assert b"BODY-MARKER" not in raw
    assert "message/rfc822" not in types
    return texts


# --------------------------------------------------------------------------- 4xx, back-off


async def test_4xx_is_deferred_with_doubling_backoff_then_delivered(harness_factory, sink):
    h = harness_factory("delivery.retry.first=60s", "delivery.retry.max_backoff=200s",
                        transport={"dest.test": sink.port})
    refusals = 4
    sink.handler.rcpt_script["bob@dest.test"] = ["451 4.3.0 try again later"] * refusals
    raw, _ = make_message()
    qid = h.store(SENDER, ["bob@dest.test"], raw)

    assert await h.delivery.process(qid, "incoming")
    # first, 2x first, then capped by max_backoff
    for attempt, delay in enumerate([60, 120, 200, 200], start=1):
        assert h.spool.find(qid) == "deferred"
        st = h.status(qid)
        assert st is not None
        assert st["attempts"] == attempt
        assert st["next_attempt"] == pytest.approx(h.clock.now + delay)
        (rs,) = st["recipients"]
        assert rs["state"] == "pending" and rs["attempts"] == attempt
        assert rs["last_code"] == 451 and "try again later" in rs["last_reply"]
        ev = h.events("message.deferred", qid)[-1]
        assert ev["queue.attempt"] == attempt
        assert ev["queue.state"] == "deferred"
        assert ev["queue.next_attempt"] == iso(h.clock.now + delay)
        assert ev["email.to.address"] == ["bob@dest.test"]
        assert h.events("delivery.deferred", qid)[-1]["smtp.code"] == 451

        # one second early: nothing is attempted
        h.clock.advance(delay - 1)
        assert await h.delivery.run_due() == []
        assert len(sink.handler.rcpt_script["bob@dest.test"]) == refusals - attempt
        assert h.spool.find(qid) == "deferred"
        # on time: attempted
        h.clock.advance(1)
        assert await h.delivery.run_due() == [qid]

    got = sink.wait_for(1, timeout=5)
    assert len(got) == 1 and got[0].rcpt_tos == ["bob@dest.test"]
    assert h.spool.find(qid) is None and h.status(qid) is None
    (done,) = h.events("delivery.delivered", qid)
    assert done["queue.attempt"] == refusals + 1 and done["smtp.code"] == 250
    assert h.events("queue.removed", qid)
    assert h.queued() == {}


async def test_destination_down_then_up(harness_factory):
    port = free_port()  # nothing listens there yet
    h = harness_factory(transport={"dest.test": port})
    raw, msgid = make_message()
    qid = h.store(SENDER, ["bob@dest.test"], raw)
    await h.delivery.process(qid, "incoming")
    assert h.spool.find(qid) == "deferred"
    st = h.status(qid)
    assert st is not None and st["attempts"] == 1
    assert 400 <= st["recipients"][0]["last_code"] < 500
    ev = h.events("message.deferred", qid)[-1]
    assert ev["queue.next_attempt"] == iso(h.clock.now + 60)
    assert not h.events("bounce.created")

    sink = start_sink(port=port)
    try:
        h.clock.advance(59)
        assert await h.delivery.run_due() == []
        assert sink.messages == []
        h.clock.advance(1)
        assert await h.delivery.run_due() == [qid]
        got = sink.wait_for(1, timeout=5)
        assert msgid.encode() in got[0].data
        assert h.events("delivery.delivered", qid)[0]["queue.attempt"] == 2
        assert h.queued() == {}
    finally:
        sink.stop()


# --------------------------------------------------------------------------- 5xx, bounces


async def test_5xx_for_one_recipient_bounces_headers_only_to_sender(harness_factory, sink,
                                                                    bounce_sink):
    h = harness_factory(transport={"dest.test": sink.port, "example.org": bounce_sink.port})
    sink.handler.rcpt_script["carol@dest.test"] = ["550 5.1.1 <carol@dest.test>: no such user"]
    subject = "Appointment follow-up 2291"
    raw, msgid = make_message(subject=subject, body=f"Dear Bob,\r\n{BODY_MARKER}\r\n",
                              to="bob@dest.test, carol@dest.test")
    qid = h.store(SENDER, ["bob@dest.test", "carol@dest.test"], raw)

    await h.delivery.process(qid, "incoming")

    # bob got the message (with its body), carol did not
    (got,) = sink.wait_for(1, timeout=5)
    assert got.rcpt_tos == ["bob@dest.test"]
    assert BODY_MARKER.encode() in got.data
    assert [e["email.to.address"] for e in h.events("delivery.delivered", qid)] == \
        ["bob@dest.test"]
    (bounced,) = h.events("delivery.bounced", qid)
    assert bounced["email.to.address"] == "carol@dest.test" and bounced["smtp.code"] == 550
    # nothing pending: the original is gone from the queue
    assert h.spool.find(qid) is None

    # the bounce is a queued message of its own, delivered through the same path
    (created,) = h.events("bounce.created")
    assert created["related.local_id"] == qid
    assert created["email.to.address"] == SENDER
    bid = created["email.local_id"]
    assert h.spool.find(bid) == "incoming"
    assert h.spool.read_header("incoming", bid).kind == "bounce"
    await h.delivery.drain()

    (b,) = bounce_sink.wait_for(1, timeout=5)
    assert b.mail_from in ("", "<>"), b.mail_from  # envelope sender <>
    assert b.rcpt_tos == [SENDER]
    assert len(sink.messages) == 1  # nothing else went to the destination
    texts = assert_headers_only_bounce(b.data, original_subject=subject, original_msgid=msgid)
    report = texts["message/delivery-status"]
    assert "Reporting-MTA: dns; phigate.test" in report
    assert f"X-Phigate-Queue-ID: {qid}" in report
    assert "Final-Recipient: rfc822; carol@dest.test" in report
    assert "Action: failed" in report
    assert "Status: 5.1.1" in report
    assert "Diagnostic-Code: smtp; 550 5.1.1" in report
    assert "bob@dest.test" not in report  # delivered recipients are not reported
    assert "carol@dest.test" in texts["text/plain"]
    assert h.events("delivery.delivered", bid)
    assert h.queued() == {}


async def test_no_bounce_to_the_null_sender(harness_factory, sink, bounce_sink):
    h = harness_factory(transport={"dest.test": sink.port, "example.org": bounce_sink.port})
    sink.handler.rcpt_script["carol@dest.test"] = ["550 5.1.1 no such user"]
    raw, _ = make_message(frm="MAILER-DAEMON@example.org", to="carol@dest.test",
                          body=f"{BODY_MARKER}\r\n")
    qid = h.store("", ["carol@dest.test"], raw)
    await h.delivery.process(qid, "incoming")
    await h.delivery.drain()

    (sup,) = h.events("bounce.suppressed", qid)
    assert sup["event.reason"] == "null_sender"
    assert not h.events("bounce.created")
    assert h.queued() == {}  # no new message anywhere, the original removed
    assert sink.messages == [] and bounce_sink.messages == []


async def test_expiry_bounces_with_4_4_7_and_removes(harness_factory, sink, bounce_sink):
    h = harness_factory("delivery.retry.first=60s", "delivery.retry.expire=300s",
                        transport={"dest.test": sink.port, "example.org": bounce_sink.port})
    sink.handler.rcpt_script["bob@dest.test"] = ["452 4.2.2 mailbox full"] * 50
    subject = "Results 5521"
    raw, msgid = make_message(subject=subject, body=f"{BODY_MARKER}\r\n")
    t0 = h.clock.now
    qid = h.store(SENDER, ["bob@dest.test"], raw)

    await h.delivery.process(qid, "incoming")
    attempts_at = [h.clock.now - t0]
    while h.spool.find(qid) == "deferred":
        assert len(attempts_at) < 10, "never expired"
        st = h.status(qid)
        assert st is not None
        h.clock.set(st["next_attempt"])
        assert await h.delivery.run_due() == [qid]
        attempts_at.append(h.clock.now - t0)
    # 0, +60, +120, +240: the attempt at 420 s is past expire (300 s) and ends it
    assert attempts_at == [0, 60, 180, 420]
    assert h.spool.find(qid) is None and h.status(qid) is None
    assert sink.messages == []
    (exp,) = h.events("message.expired", qid)
    assert exp["email.to.address"] == ["bob@dest.test"] and exp["queue.age"] == 420
    assert h.events("queue.removed", qid)

    (created,) = h.events("bounce.created")
    assert created["related.local_id"] == qid
    await h.delivery.drain()
    (b,) = bounce_sink.wait_for(1, timeout=5)
    assert b.rcpt_tos == [SENDER] and b.mail_from in ("", "<>")
    texts = assert_headers_only_bounce(b.data, original_subject=subject, original_msgid=msgid)
    report = texts["message/delivery-status"]
    assert "Final-Recipient: rfc822; bob@dest.test" in report
    assert "Action: failed" in report
    assert "Status: 4.4.7" in report
    assert "452" in report  # the last error is reported
    assert h.queued() == {}


# --------------------------------------------------------------------------- connections


async def test_messages_to_one_destination_reuse_one_connection(harness_factory):
    handler = CountingHandler()
    sink = start_custom_sink(handler)
    other_handler = CountingHandler()
    other = start_custom_sink(other_handler)
    try:
        h = harness_factory(transport={"dest.test": sink.port, "other.test": other.port})
        qids = []
        for i in range(5):
            raw, _ = make_message(subject=f"m{i}")
            qids.append(h.store(SENDER, [f"r{i}@dest.test"], raw))
        raw, _ = make_message(subject="elsewhere", to="x@other.test")
        qids.insert(2, h.store(SENDER, ["x@other.test"], raw))
        for qid in qids:
            assert await h.delivery.process(qid, "incoming")
        assert len(sink.wait_for(5, timeout=5)) == 5
        assert len(other.wait_for(1, timeout=5)) == 1
        assert len(handler.peers) == 5
        assert len(set(handler.peers)) == 1, f"connections used: {set(handler.peers)}"
        assert len(set(other_handler.peers)) == 1
        assert h.queued() == {}
    finally:
        sink.stop()
        other.stop()


# --------------------------------------------------------------------------- STARTTLS


@pytest.fixture(scope="module")
def sink_tls_context() -> ssl.SSLContext:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("sink.test", "127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


async def test_opportunistic_starttls_is_used_when_offered(harness_factory, sink_tls_context):
    tls_sink = start_sink(tls_context=sink_tls_context)
    try:
        h = harness_factory(transport={"dest.test": tls_sink.port})
        raw, msgid = make_message()
        qid = h.store(SENDER, ["bob@dest.test"], raw)
        await h.delivery.process(qid, "incoming")
        (got,) = tls_sink.wait_for(1, timeout=5)
        assert got.tls, "the message went in plaintext to a server offering STARTTLS"
        assert msgid.encode() in got.data
        (ev,) = h.events("delivery.delivered", qid)
        assert ev["tls.established"] is True
        assert ev["tls.version"] in ("TLSv1.2", "TLSv1.3")
        assert ev["tls.cipher"]
    finally:
        tls_sink.stop()


async def test_plaintext_when_starttls_not_offered(harness_factory, sink):
    h = harness_factory(transport={"dest.test": sink.port})
    raw, _ = make_message()
    qid = h.store(SENDER, ["bob@dest.test"], raw)
    await h.delivery.process(qid, "incoming")
    (got,) = sink.wait_for(1, timeout=5)
    assert not got.tls
    (ev,) = h.events("delivery.delivered", qid)
    assert ev["tls.established"] is False
    assert "tls.version" not in ev


async def test_tls_below_1_2_is_never_negotiated(harness_factory, sink_tls_context):
    """A server that offers STARTTLS but only TLS 1.0/1.1: the handshake must fail (no
    downgrade below 1.2); opportunistic delivery then falls back to plaintext."""
    trustme = pytest.importorskip("trustme")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot serve TLS 1.0/1.1: {exc}")
    trustme.CA().issue_cert("sink.test", "127.0.0.1").configure_cert(old)
    old_sink = start_sink(tls_context=old)
    try:
        h = harness_factory(transport={"dest.test": old_sink.port})
        raw, _ = make_message()
        qid = h.store(SENDER, ["bob@dest.test"], raw)
        await h.delivery.process(qid, "incoming")
        (got,) = old_sink.wait_for(1, timeout=5)
        assert not got.tls
        (ev,) = h.events("delivery.delivered", qid)
        assert ev["tls.established"] is False
    finally:
        old_sink.stop()


# --------------------------------------------------------------------------- more outcomes


async def test_retry_goes_only_to_the_recipients_still_pending(harness_factory, sink):
    h = harness_factory(transport={"dest.test": sink.port})
    sink.handler.rcpt_script["carol@dest.test"] = ["451 4.2.1 mailbox busy"]
    raw, msgid = make_message(to="bob@dest.test, carol@dest.test")
    qid = h.store(SENDER, ["bob@dest.test", "carol@dest.test"], raw)
    await h.delivery.process(qid, "incoming")
    (first,) = sink.wait_for(1, timeout=5)
    assert first.rcpt_tos == ["bob@dest.test"]
    st = h.status(qid)
    assert st is not None
    assert {r["recipient"]: r["state"] for r in st["recipients"]} == {
        "bob@dest.test": "delivered", "carol@dest.test": "pending"}
    assert h.events("message.deferred", qid)[-1]["email.to.address"] == ["carol@dest.test"]

    h.clock.advance(60)
    assert await h.delivery.run_due() == [qid]
    got = sink.wait_for(2, timeout=5)
    assert got[1].rcpt_tos == ["carol@dest.test"], "bob must not get the message twice"
    assert msgid.encode() in got[1].data
    assert h.queued() == {}


async def test_4xx_at_data_defers_every_recipient(harness_factory, sink):
    h = harness_factory(transport={"dest.test": sink.port})
    sink.handler.data_script = ["451 4.3.0 temporary content scanner failure"]
    raw, _ = make_message(to="bob@dest.test, carol@dest.test")
    qid = h.store(SENDER, ["bob@dest.test", "carol@dest.test"], raw)
    await h.delivery.process(qid, "incoming")
    assert sink.messages == []
    st = h.status(qid)
    assert st is not None
    assert [r["state"] for r in st["recipients"]] == ["pending", "pending"]
    assert {r["last_code"] for r in st["recipients"]} == {451}
    h.clock.advance(60)
    assert await h.delivery.run_due() == [qid]
    (got,) = sink.wait_for(1, timeout=5)
    assert sorted(got.rcpt_tos) == ["bob@dest.test", "carol@dest.test"]  # one transaction
    assert h.queued() == {}


async def test_5xx_at_data_bounces_every_accepted_recipient(harness_factory, sink, bounce_sink):
    h = harness_factory(transport={"dest.test": sink.port, "example.org": bounce_sink.port})
    sink.handler.data_script = ["554 5.7.1 message refused by policy"]
    raw, msgid = make_message(subject="refused", to="bob@dest.test, carol@dest.test",
                              body=f"{BODY_MARKER}\r\n")
    qid = h.store(SENDER, ["bob@dest.test", "carol@dest.test"], raw)
    await h.delivery.process(qid, "incoming")
    assert h.queued().get("deferred") is None and h.spool.find(qid) is None
    assert len(h.events("delivery.bounced", qid)) == 2
    (created,) = h.events("bounce.created")  # one bounce for both recipients
    assert created["count"] == 2
    await h.delivery.drain()
    (b,) = bounce_sink.wait_for(1, timeout=5)
    texts = assert_headers_only_bounce(b.data, original_subject="refused", original_msgid=msgid)
    report = texts["message/delivery-status"]
    assert report.count("Action: failed") == 2 and report.count("Status: 5.7.1") == 2


async def test_delay_warning_is_sent_once_and_delivery_goes_on(harness_factory, sink,
                                                               bounce_sink):
    h = harness_factory("delivery.retry.first=60s", "delivery.retry.delay_warning=100s",
                        transport={"dest.test": sink.port, "example.org": bounce_sink.port})
    sink.handler.rcpt_script["bob@dest.test"] = ["451 4.3.0 later"] * 4
    subject = "Still queued 88"
    raw, msgid = make_message(subject=subject, body=f"{BODY_MARKER}\r\n")
    qid = h.store(SENDER, ["bob@dest.test"], raw)
    await h.delivery.process(qid, "incoming")  # t=0
    for _ in range(4):  # t=60, 180, 420, 900
        st = h.status(qid)
        assert st is not None
        h.clock.set(st["next_attempt"])
        assert await h.delivery.run_due() == [qid]
    (got,) = sink.wait_for(1, timeout=5)
    assert msgid.encode() in got.data
    warnings_ = h.events("bounce.delay_warning")
    assert len(warnings_) == 1, "one delay warning, not one per attempt"
    assert warnings_[0]["related.local_id"] == qid
    assert not h.events("bounce.created")
    await h.delivery.drain()
    (w,) = bounce_sink.wait_for(1, timeout=5)
    assert w.rcpt_tos == [SENDER]
    texts = assert_headers_only_bounce(w.data, original_subject=subject, original_msgid=msgid)
    assert "Action: delayed" in texts["message/delivery-status"]
    assert "Status: 4.3.0" in texts["message/delivery-status"]
    assert h.queued() == {}


async def test_a_bounce_that_bounces_is_not_bounced_again(harness_factory, sink, bounce_sink):
    h = harness_factory(transport={"dest.test": sink.port, "example.org": bounce_sink.port})
    sink.handler.rcpt_script["carol@dest.test"] = ["550 5.1.1 no such user"]
    bounce_sink.handler.rcpt_script[SENDER] = ["550 5.1.1 sender mailbox gone"]
    raw, _ = make_message(to="carol@dest.test")
    qid = h.store(SENDER, ["carol@dest.test"], raw)
    await h.delivery.process(qid, "incoming")
    (created,) = h.events("bounce.created")
    await h.delivery.drain()
    bid = created["email.local_id"]
    assert h.events("delivery.bounced", bid)
    (sup,) = h.events("bounce.suppressed", bid)
    assert sup["event.reason"] == "null_sender"
    assert len(h.events("bounce.created")) == 1
    assert h.queued() == {}
    assert bounce_sink.messages == [] and sink.messages == []


# --------------------------------------------------------------------------- DSN syntax


async def _bounce_for(kind: str, h: Harness, sink: Sink, bounce_sink: Sink) -> bytes:
    raw, _ = make_message(to="bob@dest.test")
    if kind == "remote_5xx":
        sink.handler.rcpt_script["bob@dest.test"] = ["550 5.1.1 no such user"]
        qid = h.store(SENDER, ["bob@dest.test"], raw)
        await h.delivery.process(qid, "incoming")
    else:  # expiry or delay warning after repeated 4xx
        sink.handler.rcpt_script["bob@dest.test"] = ["451 4.3.0 later"] * 10
        qid = h.store(SENDER, ["bob@dest.test"], raw)
        await h.delivery.process(qid, "incoming")
        h.clock.advance(400)
        assert await h.delivery.run_due() == [qid]
    await h.delivery.drain()
    (b,) = bounce_sink.wait_for(1, timeout=5)
    return b.data


@pytest.mark.parametrize(("kind", "overrides"), [
    pytest.param("remote_5xx", (), id="remote_5xx"),
    pytest.param("expiry", ("delivery.retry.expire=300s",), id="expiry"),
    pytest.param("delay_warning", ("delivery.retry.delay_warning=300s",), id="delay_warning"),
])
async def test_dsn_fields_follow_rfc3464_syntax(harness_factory, sink, bounce_sink, kind,
                                                overrides):
    """Every typed DSN field, Diagnostic-Code included, is ``type; text`` (RFC 3464
    2.3.6: diagnostic-code-field = "Diagnostic-Code" ":" diagnostic-type ";" *text), also
    when the reason is local (expiry) or a delay warning quotes the last remote reply."""
    h = harness_factory(*overrides, transport={"dest.test": sink.port,
                                               "example.org": bounce_sink.port})
    data = await _bounce_for(kind, h, sink, bounce_sink)
    assert b"Diagnostic-Code:" in data
    check_dsn_fields(data)


# --------------------------------------------------------------------------- whole gateway


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Gateway.start() reconfigures the root logger for the process; undo it afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for hd in list(root.handlers):
        root.removeHandler(hd)
    for hd in handlers:
        root.addHandler(hd)
    root.setLevel(level)


async def test_running_gateway_retries_on_the_injected_clock(tmp_path, sink, restore_logging):
    """The production wiring (app.Gateway with intake, scheduler and workers running) takes
    its time from Runtime.clock: real seconds passing do not trigger a retry, moving the
    injected clock does."""
    clock = FakeClock()
    relay = free_port()
    var = tmp_path / "var"
    cfg = load_config(ROOT / "conf" / "gateway.yaml", [
        f"paths.var={var}", "hostname=phigate.test", "domains=[example.org]",
        "log.stdout=false", "delivery.retry.first=60s", "delivery.scan_interval=0.1s",
        f"listen.relay=127.0.0.1:{relay}", "listen.submission=off", "listen.submissions=off",
        "delivery.transport=" + json.dumps({"dest.test": f"127.0.0.1:{sink.port}"}),
        "dns.nameservers=[127.0.0.1]", "dns.port=9", "dns.timeout=1s",
    ])
    cert, key = prepare_var(cfg)
    audit = AuditLog(cfg.log.audit_file, stdout=False)
    gw = Gateway(cfg, ROOT / "conf" / "gateway.yaml", [], {"relay": bind(HostPort("127.0.0.1",
                                                                                  relay))},
                 cert, key, runtime=Runtime(clock=clock), audit=audit)
    sink.handler.rcpt_script["bob@dest.test"] = ["451 4.3.0 later"]

    def events(action: str) -> list[dict[str, object]]:
        return [e for e in map(json.loads, cfg.log.audit_file.read_text().splitlines())
                if e["event.action"] == action]

    async def until(pred: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    def send() -> str:
        raw, _ = make_message()
        with smtplib.SMTP("127.0.0.1", relay, timeout=10) as c:
            c.ehlo("client.test")
            c.mail(SENDER)
            c.rcpt("bob@dest.test")
            code, reply = c.data(raw)
        assert code == 250
        return reply.split()[-1].decode()

    await gw.start()
    try:
        qid = await asyncio.to_thread(send)
        await until(lambda: any(e.get("email.local_id") == qid
                                for e in events("message.deferred")), "the first attempt")
        (ev,) = events("message.deferred")
        assert ev["queue.next_attempt"] == iso(clock.now + 60)
        await asyncio.sleep(1.0)  # real time passes; the injected clock does not
        assert sink.messages == [] and len(events("delivery.deferred")) == 1
        clock.advance(60)
        await until(lambda: len(sink.messages) == 1, "the retry")
        assert sink.messages[0].rcpt_tos == ["bob@dest.test"]
        await until(lambda: bool(events("queue.removed")), "the message to leave the queue")
    finally:
        await asyncio.wait_for(gw.stop(grace=5), 15)
        audit.close()
