"""Intake under bad input: size limits, PIPELINING, SMTPUTF8, SMTP smuggling, malformed bodies,
huge headers, undeclared 8-bit, clients vanishing mid-DATA, command floods, overlong and
non-UTF-8 command lines. The answer must be a clear SMTP reply, never a crash, a hang, a lost
or a smuggled message. Raw sockets (``smtp_raw``) where smtplib would not misbehave enough."""

from __future__ import annotations

import hashlib
import smtplib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import GatewayProc, Received, Sink, make_gateway, start_sink

from .smtp_raw import RawSMTP, Reply

SPOOL_STATES = ("incoming", "active", "deferred", "hold", "tmp")


@dataclass
class View:
    """One test's window on a gateway (possibly shared by the module): its own recipients
    (``rcpt()``), and only the events, log output and sink messages since it started."""

    gw: GatewayProc
    sink: Sink
    tag: str
    events_from: int = 0
    out_from: int = 0

    @property
    def relay(self) -> int:
        return self.gw.relay

    def rcpt(self, name: str) -> str:
        return f"{self.tag}-{name}@dest.test"

    def events(self) -> list[dict[str, Any]]:
        return self.gw.events()[self.events_from:]

    def accepted(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event.action"] == "message.accepted"]

    def messages(self) -> list[Received]:
        return [m for m in list(self.sink.messages)
                if any(a.startswith(self.tag + "-") for a in m.rcpt_tos)]

    def output(self) -> str:
        return self.gw.out.read_bytes()[self.out_from:].decode(errors="replace")

    def settle(self, expected: int, timeout: float = 10.0) -> list[Received]:
        """Wait for ``expected`` of this test's messages at the sink, then until every message
        this test got accepted has left the queue, so that a message that should not arrive
        has had every chance to."""
        deadline = time.monotonic() + timeout
        while len(self.messages()) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.messages()) >= expected, \
            f"sink got {len(self.messages())} message(s), expected {expected}"
        while time.monotonic() < deadline:
            ids = {e["email.local_id"] for e in self.accepted()}
            gone = {e.get("email.local_id") for e in self.events()
                    if e["event.action"] == "queue.removed"}
            if ids <= gone:
                break
            time.sleep(0.05)
        time.sleep(0.3)
        return self.messages()

    def assert_healthy(self, *sessions: RawSMTP) -> None:
        """The checks every bad-input test ends with: the process is alive, no traceback in
        its output or in any reply, no internal error logged, and a new client is served."""
        gw = self.gw
        assert gw.proc is not None and gw.proc.poll() is None, "the gateway process died"
        for s in sessions:
            for r in s.transcript:
                assert b"Traceback" not in r.text and b'File "' not in r.text, r
        assert "Traceback" not in self.output()
        with RawSMTP(gw.relay, timeout=5) as fresh:
            assert fresh.greeting.code == 220
            fresh.ehlo("healthcheck.test")
            assert fresh.cmd("NOOP").code == 250
        internal = [e for e in self.events() if e["event.action"] == "smtp.internal_error"]
        assert not internal, f"internal errors logged: {internal}"


def _view(gw: GatewayProc, sink: Sink, request: pytest.FixtureRequest) -> View:
    tag = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    return View(gw, sink, tag, len(gw.events()), gw.out.stat().st_size)


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProc, Sink]]:
    """One gateway for the tests that need no special configuration (each gateway start costs
    about a second). 5 MB messages, so the 1 MB header tests fit."""
    sink = start_sink()
    gw = make_gateway(tmp_path_factory.mktemp("shared"), "smtp.max_message_size=5MB",
                      transport={"dest.test": sink.port})
    gw.start()
    yield gw, sink
    gw.stop()
    sink.stop()


@pytest.fixture
def gw(shared_gateway: tuple[GatewayProc, Sink], request: pytest.FixtureRequest) -> View:
    return _view(*shared_gateway, request)


@pytest.fixture
def own_gw(gateway_factory: Callable[..., GatewayProc], sink: Sink,
           request: pytest.FixtureRequest) -> Callable[..., View]:
    """A gateway of the test's own, for special settings or checks of the whole spool."""

    def make(*extra: str) -> View:
        return _view(gateway_factory(*extra, transport={"dest.test": sink.port}), sink, request)

    return make


def spooled_files(gw: GatewayProc) -> list[str]:
    spool = gw.var / "spool"
    return [str(p.relative_to(spool)) for state in SPOOL_STATES
            for p in (spool / state).rglob("*") if p.is_file()]


def transaction(r: RawSMTP, body: bytes, to: str, frm: str = "alice@example.org",
                mail_params: str = "") -> Reply:
    """MAIL, RCPT, DATA; ``body`` is sent as is (it must carry its own terminator)."""
    code = r.cmd(f"MAIL FROM:<{frm}>{mail_params}").code
    assert code == 250, code
    code = r.cmd(f"RCPT TO:<{to}>").code
    assert code == 250, code
    return r.data(body)


def body(text: bytes = b"synthetic test body\r\n", subject: bytes = b"test") -> bytes:
    return (b"From: alice@example.org\r\nTo: bob@dest.test\r\nSubject: " + subject
            + b"\r\n\r\n" + text + b".\r\n")


# --------------------------------------------------------------------------- SIZE


def test_size_limit_at_mail_and_after_data(own_gw):
    v = own_gw("smtp.max_message_size=100KB")
    with RawSMTP(v.relay) as r:
        ehlo = r.ehlo()
        assert b"SIZE 102400" in ehlo.lines
        assert r.cmd("MAIL FROM:<alice@example.org> SIZE=102401").code == 552
        assert r.cmd("MAIL FROM:<alice@example.org> SIZE=150000").code == 552
        assert r.cmd("RSET").code == 250
        assert r.cmd("MAIL FROM:<alice@example.org> SIZE=1000").code == 250  # a lie
        assert r.cmd(f"RCPT TO:<{v.rcpt('big')}>").code == 250
        big = body(b"".join(b"line %06d of a message that is too large\r\n" % i
                            for i in range(3000)))
        assert len(big) > 120 * 1024
        reply = r.data(big)
        assert reply.code == 552 and reply.text.startswith(b"5.3.4"), reply
        # the whole oversized DATA was consumed: the session is in step for the next message
        reply = transaction(r, body(), to=v.rcpt("small"))
        assert reply.code == 250, reply
    got = v.settle(1)
    assert [m.rcpt_tos for m in got] == [[v.rcpt("small")]]
    assert [e["email.to.address"] for e in v.accepted()] == [[v.rcpt("small")]]
    assert b"synthetic test body" in got[0].data
    # smtplib declares SIZE itself and is refused before sending the data
    with smtplib.SMTP("127.0.0.1", v.relay, timeout=10) as c, \
            pytest.raises(smtplib.SMTPSenderRefused) as refused:
        c.sendmail("alice@example.org", [v.rcpt("big2")], b"x" * 200_000)
    assert refused.value.smtp_code == 552
    v.assert_healthy(r)


# --------------------------------------------------------------------------- PIPELINING


def test_pipelined_commands_get_replies_in_order(gw):
    first, second, third = gw.rcpt("first"), gw.rcpt("second"), gw.rcpt("third")
    with RawSMTP(gw.relay) as r:
        assert b"PIPELINING" in r.ehlo().lines
        r.send(b"MAIL FROM:<alice@example.org>\r\n"
               + f"RCPT TO:<{first}>\r\n".encode()
               + b"RCPT TO:<no-domain>\r\n"
               + f"RCPT TO:<{second}>\r\n".encode()
               + b"DATA\r\n")
        codes = [x.code for x in r.replies(5)]
        assert codes == [250, 250, 501, 250, 354], codes
        r.send(body(b"pipelined\r\n"))
        done = r.reply()
        assert done.code == 250, done
        # a second group in one write after the first transaction: RSET, MAIL, RCPT, NOOP
        r.send(b"RSET\r\nMAIL FROM:<alice@example.org>\r\n"
               + f"RCPT TO:<{third}>\r\n".encode() + b"NOOP\r\n")
        assert [x.code for x in r.replies(4)] == [250, 250, 250, 250]
    got = gw.settle(1)
    assert sorted(a for m in got for a in m.rcpt_tos) == [first, second]
    assert all(b"pipelined" in m.data for m in got)
    gw.assert_healthy(r)


# --------------------------------------------------------------------------- SMTPUTF8


def test_smtputf8_recipient_is_delivered(gw):
    rcpt = gw.rcpt("jörg.müller")  # a UTF-8 local part
    msg = ("From: alice@example.org\r\nTo: " + rcpt + "\r\nSubject: grüße\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n\r\nHallo Jörg\r\n").encode()
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=10) as c:
        c.ehlo("client.test")
        assert c.has_extn("smtputf8")
        refused = c.sendmail("alice@example.org", [rcpt], msg,
                             mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert refused == {}
    got = gw.settle(1)[0]
    assert got.rcpt_tos == [rcpt]
    assert "Hallo Jörg".encode() in got.data
    assert b"with UTF8SMTP" in got.data
    assert [e["email.to.address"] for e in gw.accepted()] == [[rcpt]]
    gw.assert_healthy()


# --------------------------------------------------------------------------- smuggling

SMUGGLING_ENDINGS = [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n"]


def test_smtp_smuggling_is_refused(gw):
    """A body ending in a non-standard terminator followed by a second transaction must stay
    one (refused) message: the smuggled recipient never gets anything."""
    sessions = []
    for i, ending in enumerate(SMUGGLING_ENDINGS):
        smuggled = (b"Subject: innocent\r\n\r\nnothing to see" + ending
                    + b"MAIL FROM:<ceo@example.org>\r\n"
                    + f"RCPT TO:<{gw.rcpt(f'smuggled{i}')}>\r\n".encode()
                    + b"DATA\r\n"
                    + b"From: ceo@example.org\r\nSubject: smuggled\r\n\r\nwire money\r\n"
                    + b".\r\n")
        with RawSMTP(gw.relay) as r:
            sessions.append(r)
            r.ehlo()
            reply = transaction(r, smuggled, to=gw.rcpt(f"victim{i}"))
            assert reply.code == 550 and reply.text.startswith(b"5.5.2"), (ending, reply)
            # nothing else is pending: no reply to a smuggled MAIL/RCPT/DATA arrives
            assert r.cmd("NOOP").code == 250, ending
            # the session is still in step: an honest transaction goes through
            reply = transaction(r, body(b"honest\r\n"), to=gw.rcpt(f"honest{i}"))
            assert reply.code == 250, (ending, reply)
    got = gw.settle(len(SMUGGLING_ENDINGS))
    rcpts = sorted(a for m in got for a in m.rcpt_tos)
    assert rcpts == [gw.rcpt(f"honest{i}") for i in range(len(SMUGGLING_ENDINGS))]
    assert not any(b"wire money" in m.data for m in got)
    assert not any("smuggled" in str(e.get("email.to.address")) for e in gw.events())
    assert len(gw.accepted()) == len(SMUGGLING_ENDINGS)
    gw.assert_healthy(*sessions)


# --------------------------------------------------------------------------- malformed bodies


def test_malformed_bodies_get_clear_errors(gw):
    with RawSMTP(gw.relay) as r:
        r.ehlo()
        lf_only = b"From: alice@example.org\nSubject: unix\n\nline one\nline two\n\r\n.\r\n"
        reply = transaction(r, lf_only, to=gw.rcpt("lf"))
        assert reply.code == 550 and reply.text.startswith(b"5.5.2"), reply

        reply = transaction(r, body(b"before\x00after\r\n"), to=gw.rcpt("nul"))
        assert reply.code == 550 and reply.text.startswith(b"5.6.0"), reply

        reply = transaction(r, body(b"x" * 999 + b"\r\n"), to=gw.rcpt("long"))
        assert reply.code == 500 and reply.text.startswith(b"5.5.2"), reply
        reply = transaction(r, body(b"x" * 20000 + b"\r\n"), to=gw.rcpt("long"))
        assert reply.code == 500 and reply.text.startswith(b"5.5.2"), reply

        # control: a line of exactly 998 octets is legal (RFC 5322 2.1.1)
        reply = transaction(r, body(b"y" * 998 + b"\r\n"), to=gw.rcpt("exact"))
        assert reply.code == 250, reply
    got = gw.settle(1)
    assert [m.rcpt_tos for m in got] == [[gw.rcpt("exact")]]
    assert b"y" * 998 + b"\r\n" in got[0].data
    gw.assert_healthy(r)


@pytest.mark.parametrize("raw", [b"just a body, no header at all\r\nsecond line\r\n",
                                 b"\r\nempty header section, then the body\r\n"],
                         ids=["no-separator", "empty-header-section"])
def test_message_without_headers_is_delivered(gw, raw):
    with RawSMTP(gw.relay) as r:
        r.ehlo()
        reply = transaction(r, raw + b".\r\n", to=gw.rcpt("headerless"))
        assert reply.code == 250, reply
    got = gw.settle(1)
    assert raw.strip() in got[0].data
    gw.assert_healthy(r)


@pytest.mark.parametrize("raw", [b"a body line without any header\r\n" * 40_000,
                                 b"\r\n" + b"body after an empty header section\r\n" * 40_000],
                         ids=["no-separator", "empty-header-section"])
def test_large_message_without_headers_is_not_a_header_overflow(gw, raw):
    """A header-less message of 1.3 MB has a header section of 0 bytes, not 1.3 MB."""
    assert 1024 * 1024 < len(raw) < 5 * 1024 * 1024
    with RawSMTP(gw.relay) as r:
        r.ehlo()
        reply = transaction(r, raw + b".\r\n", to=gw.rcpt("headerless"))
        assert reply.code == 250, reply
    got = gw.settle(1)
    assert len(got[0].data) > len(raw)
    gw.assert_healthy(r)


def _folded_header_section(size: int) -> bytes:
    """A header section of about ``size`` octets: one header folded over many lines."""
    head = b"From: alice@example.org\r\nTo: bob@dest.test\r\nSubject: big\r\nX-Filler: a\r\n"
    fold = b" " + b"b" * 70 + b"\r\n"
    return head + fold * ((size - len(head)) // len(fold)) + b"\r\n"


def test_header_section_limit_is_1mb(gw):
    # the shared gateway takes 5 MB messages; smtp.max_header_size is deliberately not
    # overridden: its default (1 MB) is what is tested
    mb = 1024 * 1024
    over = _folded_header_section(mb + 2048)
    under = _folded_header_section(mb - 2048)
    assert len(over) > mb > len(under)
    with RawSMTP(gw.relay, timeout=30) as r:
        r.ehlo()
        reply = transaction(r, over + b"body\r\n.\r\n", to=gw.rcpt("over"))
        assert reply.code == 552 and reply.text.startswith(b"5.3.4"), reply
        assert b"header section too large" in reply.text.lower()
        reply = transaction(r, under + b"body\r\n.\r\n", to=gw.rcpt("under"))
        assert reply.code == 250, reply
    got = gw.settle(1, timeout=20)
    assert [m.rcpt_tos for m in got] == [[gw.rcpt("under")]]
    gw.assert_healthy(r)


def test_undeclared_8bit_body_is_accepted_and_flagged(gw):
    eight_bit = "Grüße, café\r\n".encode()
    with RawSMTP(gw.relay) as r:
        r.ehlo()
        reply = transaction(r, body(eight_bit), to=gw.rcpt("undeclared"))
        assert reply.code == 250, reply
        undeclared_qid = reply.text.split()[-1].decode()
        reply = transaction(r, body(eight_bit), to=gw.rcpt("declared"),
                            mail_params=" BODY=8BITMIME")
        assert reply.code == 250, reply
        reply = transaction(r, body(), to=gw.rcpt("ascii"))
        assert reply.code == 250, reply
    got = gw.settle(3)
    flags = {e["email.to.address"][0]: e.get("body.8bit") for e in gw.accepted()}
    assert flags == {gw.rcpt("undeclared"): True, gw.rcpt("declared"): None,
                     gw.rcpt("ascii"): None}
    assert [e["email.local_id"] for e in gw.accepted() if e.get("body.8bit")] == \
        [undeclared_qid]
    by_rcpt = {m.rcpt_tos[0]: m.data for m in got}
    assert eight_bit in by_rcpt[gw.rcpt("undeclared")]  # delivered unchanged
    gw.assert_healthy(r)


# --------------------------------------------------------------------------- vanishing clients


def test_client_vanishing_mid_data_leaves_nothing(own_gw):
    v = own_gw("smtp.max_message_size=5MB")
    partials = [
        b"",  # right after 354
        b"From: alice@example.org\r\nSubject: half\r\n\r\nhalf a bo",  # mid-line
        b"Subject: big\r\n\r\n" + b"z" * 70 + b"\r\n" + b"line\r\n" * 400_000,  # mid-chunk
        b"Subject: almost\r\n\r\nbody\r\n.",  # one byte before <CR><LF>
    ]
    for i, partial in enumerate(partials):
        r = RawSMTP(v.relay)
        r.ehlo()
        assert r.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert r.cmd(f"RCPT TO:<{v.rcpt(f'vanished{i}')}>").code == 250
        assert r.cmd("DATA").code == 354
        r.send(partial)
        r.close()
    time.sleep(1.0)
    assert spooled_files(v.gw) == []
    assert v.accepted() == []
    # the gateway still serves the next client, and that message is delivered
    with RawSMTP(v.relay) as r:
        r.ehlo()
        assert transaction(r, body(), to=v.rcpt("next")).code == 250
    got = v.settle(1)
    assert [m.rcpt_tos for m in got] == [[v.rcpt("next")]]
    v.assert_healthy(r)
    # no session is still counted as "in DATA": a graceful stop does not wait for them
    started = time.monotonic()
    assert v.gw.stop() == 0
    assert time.monotonic() - started < 10, "SIGTERM waited for vanished DATA sessions"


# --------------------------------------------------------------------------- command abuse


def test_unknown_command_flood_is_cut_off(gw):
    r = RawSMTP(gw.relay)
    r.ehlo()
    r.send(b"".join(b"XGARBAGE%d some argument\r\n" % i for i in range(200)))
    replies = r.read_until_closed()
    r.close()
    assert replies, "no reply at all"
    assert all(x.code == 500 for x in replies[:-1]), replies
    last = replies[-1]
    assert last.code == 502 and last.text.startswith(b"5.5.1"), last
    assert len(replies) < 50, f"{len(replies)} unknown commands answered before cutting off"
    gw.assert_healthy(r)


def test_overlong_command_lines_get_500(gw):
    with RawSMTP(gw.relay) as r:
        r.ehlo()
        assert r.cmd(b"NOOP " + b"x" * 600).code == 500
        assert r.cmd(b"NOOP " + b"x" * 100_000).code == 500  # past the read buffer too
        assert r.cmd(b"MAIL FROM:<" + b"a" * 600 + b"@example.org>").code == 500
        assert r.cmd(b"RCPT TO:<" + b"a" * 600 + b"@dest.test>").code >= 500
        assert r.cmd("NOOP").code == 250
        # the session is still usable for an ordinary message
        assert transaction(r, body(), to=gw.rcpt("after")).code == 250
    got = gw.settle(1)
    assert [m.rcpt_tos for m in got] == [[gw.rcpt("after")]]
    gw.assert_healthy(r)


def test_invalid_utf8_in_commands_does_not_crash(gw):
    with RawSMTP(gw.relay) as r:
        for line in (b"\xff\xfe\r\n", b"EHLO \xff\xfe.example\r\n", b"NOOP \xc3\x28\r\n",
                     b"HELP \xed\xa0\x80\r\n", b"VRFY \xf8\x88\x80\x80\x80\r\n",
                     b"XFOO\xff\r\n", b"RSET \xff\r\n", b"MAIL \xff\r\n",
                     b"\xc0\xaf\xc0\xaf\r\n"):
            r.send(line)
            reply = r.reply()
            assert 200 <= reply.code < 600, (line, reply)
        assert r.cmd("RSET").code == 250
    gw.assert_healthy(r)


@pytest.mark.parametrize(("sender", "recipient"), [
    (b"<\xff\xfe@example.org>", b"<{ok}>"),
    (b"<alice@example.org> SMTPUTF8", b"<b\xf8b\xff{bad}>"),
    (b"<alice@example.org>", b"<j\xc3\xb6rg{bad}>"),
], ids=["invalid-utf8-sender", "invalid-utf8-recipient", "utf8-without-SMTPUTF8"])
def test_undeliverable_addresses_are_refused_not_queued(gw, sender, recipient):
    """An address that is not valid UTF-8, or not ASCII without SMTPUTF8 (RFC 6531 3.2), can
    never be delivered: it must be refused (at MAIL, RCPT or at the latest after DATA), not
    answered 250 at the end of DATA and then retried for days."""
    recipient = recipient.replace(b"{ok}", gw.rcpt("ok").encode())
    recipient = recipient.replace(b"{bad}", gw.rcpt("").encode())
    with RawSMTP(gw.relay) as r:
        r.ehlo()
        codes = [r.cmd(b"MAIL FROM:" + sender).code, r.cmd(b"RCPT TO:" + recipient).code]
        if codes == [250, 250]:
            codes.append(r.data(body()).code)
        assert any(500 <= c < 600 for c in codes), \
            f"MAIL FROM:{sender!r} / RCPT TO:{recipient!r} answered {codes}: accepted"
    assert gw.accepted() == []
    gw.assert_healthy(r)


def test_out_of_order_commands(gw):
    """State machine abuse: every out-of-order command gets a 5xx and changes nothing."""
    with RawSMTP(gw.relay) as r:
        assert r.cmd("MAIL FROM:<alice@example.org>").code == 503  # before EHLO
        r.ehlo()
        assert r.cmd(f"RCPT TO:<{gw.rcpt('a')}>").code == 503  # before MAIL
        assert r.cmd("DATA").code == 503  # before RCPT
        assert r.cmd("MAIL FROM:<alice@example.org>").code == 250
        assert r.cmd("MAIL FROM:<alice@example.org>").code == 503  # nested
        assert r.cmd("DATA").code == 503  # no recipient yet
        assert r.cmd(f"RCPT TO:<{gw.rcpt('b')}>").code == 250
        assert r.cmd("DATA extra").code == 501
        reply = r.data(body())
        assert reply.code == 250, reply
    got = gw.settle(1)
    assert [m.rcpt_tos for m in got] == [[gw.rcpt("b")]]
    gw.assert_healthy(r)
