"""The relay path end to end: smtplib -> phigate (subprocess) -> aiosmtpd sink."""

from __future__ import annotations

import json
import smtplib

from tests.conftest import message


def test_relay_delivers_and_logs(gateway_factory, sink):
    gw = gateway_factory(transport={"dest.test": sink.port})
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=10) as c:
        code, ehlo = c.ehlo("client.test")
        assert code == 250
        for ext in (b"PIPELINING", b"8BITMIME", b"SMTPUTF8", b"SIZE 36700160", b"STARTTLS"):
            assert ext in ehlo
        assert b"AUTH" not in ehlo
        c.mail("alice@example.org")
        c.rcpt("bob@dest.test")
        code, reply = c.data(message())
    assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as ")
    qid = reply.split()[-1].decode()
    got = sink.wait_for(1)[0]
    assert got.mail_from == "alice@example.org" and got.rcpt_tos == ["bob@dest.test"]
    # the DKIM signature (added last, at delivery) on top, then our Received trace field
    assert got.data.startswith(b"DKIM-Signature: v=1;")
    assert b"\r\nReceived: from client.test ([127.0.0.1])" in got.data
    assert f"id {qid}".encode() in got.data
    assert b"synthetic test body" in got.data
    ev = gw.wait_event(lambda e: e["event.action"] == "delivery.delivered")
    assert ev["email.local_id"] == qid and ev["smtp.code"] == 250
    acc = next(e for e in gw.events() if e["event.action"] == "message.accepted")
    assert acc["email.local_id"] == qid and acc["email.size"] > 0
    assert not any(qid in p.name for p in (gw.var / "spool").rglob("*") if p.is_file())
    # the decision log's hash chain verifies, and the message's trail can be found
    log = str(gw.var / "log" / "audit.jsonl")
    out = gw.cli("audit", "verify", log)
    assert out.returncode == 0, out.stdout + out.stderr
    out = gw.cli("audit", "search", "--queue-id", qid, "--json")
    actions = [json.loads(line)["event.action"] for line in out.stdout.splitlines()]
    assert "message.accepted" in actions and "delivery.delivered" in actions


def test_stranger_cannot_relay(gateway_factory, sink):
    gw = gateway_factory("trusted_networks=[10.99.0.0/16]", transport={"dest.test": sink.port})
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=10) as c:
        c.ehlo("x")
        c.mail("alice@example.org")
        code, reply = c.rcpt("bob@dest.test")
    assert code == 554 and b"Relay access denied" in reply
    gw.wait_event(lambda e: e["event.action"] == "smtp.relay_denied")
