"""The pickup portal end to end over real sockets: a ``[secure]`` message through the running
gateway, the notification at a sink, the one-time code by a second mail, reading, download,
reply; and the refusals (wrong codes to lockout, revoked and tampered links, a session used
for another message, a form without its CSRF token). Synthetic data only."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from tests.conftest import GatewayProc, Received, Sink
from tests.integration.portal_client import Browser, code_of, link_of, parse

BODY = "Synthetic referral text for Testpatient Quux, follow-up in two weeks."
ATTACHMENT = bytes(range(256)) * 40  # binary, byte-for-byte comparison
SUBJECT = "[secure] Referral Quux"


def _submit(gw: GatewayProc, to: str, subject: str = SUBJECT) -> None:
    msg = EmailMessage()
    msg["From"] = "Alice Sender <alice@example.org>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@example.org>"
    msg.set_content(BODY)
    msg.add_attachment(ATTACHMENT, maintype="application", subtype="octet-stream",
                       filename="scan-quux.bin")
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=30) as c:
        c.ehlo("client.test")
        refused = c.sendmail("alice@example.org", [to], msg.as_bytes(policy=SMTP))
    assert not refused


def _wait(sink: Sink, pred, timeout: float = 30.0) -> Received:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sink.handler.lock:
            for m in sink.handler.messages:
                if pred(m):
                    return m
        time.sleep(0.05)
    raise AssertionError("expected message not received")


def _to(addr: str, subject: str | None = None):  # type: ignore[no-untyped-def]
    def pred(m: Received) -> bool:
        if addr not in m.rcpt_tos:
            return False
        return subject is None or subject in str(parse(m.data)["subject"])
    return pred


@pytest.fixture
def portal_gw(gateway_factory, sink):  # type: ignore[no-untyped-def]
    return gateway_factory("rules.enabled=true", "portal.max_failures=3",
                           "portal.code_resend=1s", "portal.notify_sender_on_open=true",
                           transport={"dest.test": sink.port, "example.org": sink.port})


def _verified(gw: GatewayProc, sink: Sink, rcpt: str) -> tuple[Browser, str, str]:
    """Open the notification's link, get a code by mail, verify: (browser, link, message id)."""
    note = _wait(sink, _to(rcpt, "Secure message from"))
    link = link_of(note.data)
    b = Browser(gw.portal)
    first = b.get(link)
    assert first.status == 200 and 'http-equiv="refresh"' in first.text
    page = b.get(link + "?s=1")
    assert page.status == 200 and "Email me a code" in page.text
    sent = b.post(link + "/send", {"csrf": page.form_token()})
    assert sent.status == 200, sent.text
    code = code_of(_wait(sink, _to(rcpt, "one-time code")).data)
    done = b.post(link + "/verify", {"csrf": sent.form_token(), "code": code})
    assert done.status == 303, done.text
    mid = link.split("/")[2]
    assert done.headers["Location"] == f"/m/{mid}"
    assert "phigate_session" in b.cookies
    return b, link, mid


def test_secure_message_read_download_reply(portal_gw: GatewayProc, sink: Sink) -> None:
    gw = portal_gw
    _submit(gw, "bob@dest.test")
    note = _wait(sink, _to("bob@dest.test", "Secure message from"))
    # the notification carries no PHI: not the subject, body or attachment name
    text = note.data.decode("utf-8", "replace")
    for secret in ("Quux", "Testpatient", "scan-quux", "Referral"):
        assert secret not in text
    assert note.rcpt_tos == ["bob@dest.test"] and note.mail_from == "alice@example.org"
    assert "Alice Sender" in text

    b, _link, mid = _verified(gw, sink, "bob@dest.test")
    opened = _wait(sink, _to("alice@example.org", "Your secure message was opened"))
    assert b"bob@dest.test" in opened.data and b"Quux" not in opened.data
    page = b.get(f"/m/{mid}")
    assert page.status == 200
    assert "Testpatient Quux" in page.text  # the body, shown to the verified recipient
    assert "[secure]" not in page.text and "Referral Quux" in page.text
    assert "script-src" not in page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert "scan-quux.bin" in page.text
    att = b.get(f"/m/{mid}/a/0")
    assert att.status == 200 and att.body == ATTACHMENT
    assert att.headers["Content-Type"] == "application/octet-stream"
    assert "attachment" in att.headers["Content-Disposition"]

    form = page.form_token()
    sent = b.post_multipart(f"/m/{mid}/reply", {"csrf": form, "text": "Synthetic reply text"},
                            [("reply-note.txt", "text/plain", b"synthetic attachment\n")])
    assert sent.status == 303, sent.text
    reply = _wait(sink, _to("alice@example.org", "Re: Referral Quux"))
    msg = parse(reply.data)
    assert msg["Reply-To"] == "bob@dest.test"
    assert "Synthetic reply text" in reply.data.decode("utf-8", "replace")
    names = [p.get_filename() for p in msg.iter_attachments()]
    assert names == ["reply-note.txt"]
    thread = b.get(f"/m/{mid}")
    assert "Synthetic reply text" in thread.text  # the reply stays in the thread

    events = [e["event.action"] for e in gw.events()]
    for action in ("portal.stored", "portal.code_sent", "portal.verified", "portal.view",
                   "portal.download", "portal.reply"):
        assert action in events, action
    # the store on disk holds none of the message's text
    db = (gw.var / "portal.db").read_bytes()
    wal = gw.var / "portal.db-wal"
    if wal.exists():
        db += wal.read_bytes()
    for secret in (b"Testpatient", b"Quux", b"scan-quux", b"Synthetic reply"):
        assert secret not in db
    # and the logs hold no link secret, code or content
    logs = (gw.var / "log" / "audit.jsonl").read_text() + gw.out.read_text()
    assert _link.split("/")[3] not in logs and "Testpatient" not in logs


def test_refusals(portal_gw: GatewayProc, sink: Sink) -> None:
    gw = portal_gw
    _submit(gw, "carol@dest.test")
    b, link, mid = _verified(gw, sink, "carol@dest.test")

    # a tampered token
    pid, secret = link.split("/")[2], link.split("/")[3]
    bad = Browser(gw.portal).get(f"/p/{pid}/{secret[:-2]}xx?s=1")
    assert bad.status == 404 and "not valid" in bad.text

    # a form without its CSRF token
    nocsrf = Browser(gw.portal)
    nocsrf.get(link + "?s=1")
    r = nocsrf.post(link + "/send", {"csrf": "forged-token-value-123456"})
    assert r.status == 403 and "Request refused" in r.text
    r = b.post_multipart(f"/m/{mid}/reply", {"csrf": "forged", "text": "x"}, [])
    assert r.status == 403

    # wrong codes until lockout
    _submit(gw, "dave@dest.test")
    note = _wait(sink, _to("dave@dest.test", "Secure message from"))
    dlink = link_of(note.data)
    d = Browser(gw.portal)
    page = d.get(dlink + "?s=1")
    sent = d.post(dlink + "/send", {"csrf": page.form_token()})
    real = code_of(_wait(sink, _to("dave@dest.test", "one-time code")).data)
    wrong = "000000" if real != "000000" else "111111"
    r1 = d.post(dlink + "/verify", {"csrf": sent.form_token(), "code": wrong})
    assert r1.status == 400 and "2 more tries" in r1.text
    d.post(dlink + "/verify", {"csrf": sent.form_token(), "code": wrong})
    r3 = d.post(dlink + "/verify", {"csrf": sent.form_token(), "code": wrong})
    assert r3.status == 429 and "locked until" in r3.text
    r4 = d.post(dlink + "/verify", {"csrf": sent.form_token(), "code": real})
    assert r4.status == 429  # even the right code, while locked
    assert any(e["event.action"] == "portal.locked" for e in gw.events())
    # the admin's unlock path
    dpid = dlink.split("/")[2]
    out = gw.cli("portal", "unlock", dpid, "--reason", "recipient called")
    assert out.returncode == 0, out.stderr
    # the code was not used by the refused attempts; a fresh one is needed after a lock
    time.sleep(1.1)
    sent = d.post(dlink + "/send", {"csrf": page.form_token()})
    assert sent.status == 200
    codes: list[str] = []
    deadline = time.monotonic() + 30
    while len(codes) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        with sink.handler.lock:
            codes = [code_of(m.data) for m in sink.handler.messages
                     if _to("dave@dest.test", "one-time code")(m)]
    r5 = d.post(dlink + "/verify", {"csrf": sent.form_token(), "code": codes[-1]})
    assert r5.status == 303

    # carol's session cookie, used on dave's message: refused
    stolen = Browser(gw.portal, cookies=dict(b.cookies))
    r = stolen.get(f"/m/{dpid}")
    assert r.status == 403 and "open the link" in r.text.lower()
    # and a session cookie alone, on dave's link page, does not skip his code
    r = stolen.get(dlink + "?s=1")
    assert r.status == 200 and "Email me a code" in r.text

    # revocation: the link and the session stop working, the content is gone
    out = gw.cli("portal", "revoke", mid, "--reason", "sent to the wrong person")
    assert out.returncode == 0, out.stderr
    assert b.get(f"/m/{mid}").status == 410
    assert Browser(gw.portal).get(link + "?s=1").status == 410
    listed = gw.cli("portal", "list", "--json")
    assert '"revoked": "' in listed.stdout and "Quux" not in listed.stdout


def test_sender_passphrase(portal_gw: GatewayProc, sink: Sink) -> None:
    """``[secure: phrase]``: the phrase goes to no one by mail (not the notification, not the
    copy delivered to a colleague), the pickup opens only with the code AND the phrase (case and
    spacing aside), a wrong phrase does not use up the code, and an open session does not skip
    it for a new message."""
    gw = portal_gw
    msg = EmailMessage()
    msg["From"] = "Alice Sender <alice@example.org>"
    msg["To"] = "dave@dest.test, colleague@example.org"
    msg["Subject"] = "Referral Quux [secure: Copper Lantern 58]"
    msg.set_content(BODY)
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=30) as c:
        c.ehlo("client.test")
        assert not c.sendmail("alice@example.org", ["dave@dest.test", "colleague@example.org"],
                              msg.as_bytes(policy=SMTP))
    note = _wait(sink, _to("dave@dest.test", "Secure message from"))
    _wait(sink, _to("colleague@example.org"))  # [secure] sends everyone to the portal
    link = link_of(note.data)
    b = Browser(gw.portal)
    page = b.get(link + "?s=1")
    sent = b.post(link + "/send", {"csrf": page.form_token()})
    assert 'name="passphrase"' in sent.text and "Passphrase from the sender" in sent.text
    code = code_of(_wait(sink, _to("dave@dest.test", "one-time code")).data)
    wrong = b.post(link + "/verify", {"csrf": sent.form_token(), "code": code,
                                      "passphrase": "copper lantern 59"})
    assert wrong.status == 400 and "passphrase" in wrong.text
    missing = b.post(link + "/verify", {"csrf": wrong.form_token(), "code": code})
    assert missing.status == 400
    done = b.post(link + "/verify", {"csrf": missing.form_token(), "code": code,
                                     "passphrase": "  copper   LANTERN 58 "})
    assert done.status == 303, done.text
    mid = link.split("/")[2]
    page = b.get(f"/m/{mid}")
    assert page.status == 200 and "Testpatient Quux" in page.text
    assert "Copper" not in page.text and "[secure" not in page.text
    # the store knows the pickup needs a passphrase, and the phrase itself is nowhere
    db = (gw.var / "portal.db").read_bytes()
    wal = gw.var / "portal.db-wal"
    if wal.exists():
        db += wal.read_bytes()
    logs = (gw.var / "log" / "audit.jsonl").read_text() + gw.out.read_text()
    for place in (db, logs.encode()):
        assert b"copper" not in place.lower()
    # a second protected message from the same sender: the open session is not enough
    msg.replace_header("Subject", "Second [secure: Copper Lantern 58]")
    msg.replace_header("To", "dave@dest.test")
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=30) as c:
        c.ehlo("client.test")
        assert not c.sendmail("alice@example.org", ["dave@dest.test"], msg.as_bytes(policy=SMTP))

    def second(m: Received) -> bool:
        return "dave@dest.test" in m.rcpt_tos and link_of(m.data) != link \
            if b"/p/" in m.data else False
    link2 = link_of(_wait(sink, second).data)
    again = b.get(link2 + "?s=1")
    assert again.status == 200 and "Email me a code" in again.text
    with sink.handler.lock:  # no mail that left carries the phrase
        assert not [m for m in sink.handler.messages if b"copper" in m.data.lower()]
