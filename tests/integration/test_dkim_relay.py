"""DKIM signing in the running gateway: what reaches the sink verifies with OpenDKIM (fed the
exact bytes the sink received, keys from the gateway's own key files): ordinary mail, 8-bit
and long-header mail, portal notifications and bounces; mail whose domain has no key leaves
unsigned, and the log says so. Synthetic data only."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from gateway.dkimkeys import load_private_key, txt_value
from tests import opendkim
from tests.conftest import GatewayProc, Sink, message


def _keys(gw: GatewayProc) -> dict[str, str]:
    out = {}
    for path in (gw.var / "dkim").glob("*.key"):
        domain, _, selector = path.stem.rpartition(".")
        out[f"{selector}._domainkey.{domain}"] = txt_value(load_private_key(path))
    return out


def _send(gw: GatewayProc, data: bytes, to: str = "bob@dest.test",
          mail_from: str = "alice@example.org") -> None:
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=30) as c:
        c.ehlo("client.test")
        c.sendmail(mail_from, [to], data, mail_options=["BODY=8BITMIME"])


@pytest.fixture(autouse=True)
def _need_opendkim() -> None:
    opendkim.require_opendkim()


def test_relayed_mail_verifies(gateway_factory, sink: Sink, tmp_path: Path) -> None:
    gw = gateway_factory("hostname=mx.example.org",
                         transport={"dest.test": sink.port, "example.org": sink.port})
    long_subject = "quarterly facilities update " * 12
    _send(gw, message(subject=long_subject, body="plain synthetic body\r\n"))
    body8 = "Grüße aus der Verwaltung, synthetischer Text.\r\n"
    data8 = (f"From: alice@example.org\r\nTo: bob@dest.test\r\nSubject: 8bit\r\n"
             f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
             f"Content-Transfer-Encoding: 8bit\r\n\r\n{body8}").encode()
    _send(gw, data8)
    got = sink.wait_for(2)
    for i, m in enumerate(got):
        assert m.data.startswith(b"DKIM-Signature:")
        results = opendkim.verify(m.data, tmp_path / f"m{i}", _keys(gw))
        assert results == {"phigate._domainkey.example.org": "pass"}, results

    # a bounce (the sink refuses the recipient) is signed for the gateway's own domain
    sink.handler.rcpt_script["gone@dest.test"] = ["550 5.1.1 no such user"] * 3
    _send(gw, message(subject="to nobody"), to="gone@dest.test")
    bounce = sink.wait_for(3)[2]
    assert bounce.mail_from in ("", "<>") and bounce.rcpt_tos == ["alice@example.org"]
    assert opendkim.verify(bounce.data, tmp_path / "bounce", _keys(gw)) == {
        "phigate._domainkey.example.org": "pass"}


def test_portal_notification_verifies(gateway_factory, sink: Sink, tmp_path: Path) -> None:
    gw = gateway_factory("rules.enabled=true", transport={"dest.test": sink.port})
    _send(gw, message(subject="[secure] synthetic", body="synthetic body\r\n"))
    note = sink.wait_for(1)[0]
    assert b"Secure message from" in note.data
    assert opendkim.verify(note.data, tmp_path, _keys(gw)) == {
        "phigate._domainkey.example.org": "pass"}


def test_domain_without_key_leaves_unsigned(gateway_factory, sink: Sink) -> None:
    # bounces come from MAILER-DAEMON@hostname; this hostname is no domain of ours
    gw = gateway_factory("hostname=gw.other.test",
                         transport={"dest.test": sink.port, "example.org": sink.port})
    sink.handler.rcpt_script["gone@dest.test"] = ["550 5.1.1 no such user"] * 3
    _send(gw, message(subject="to nobody"), to="gone@dest.test")
    bounce = sink.wait_for(1)[0]
    assert not bounce.data.startswith(b"DKIM-Signature")
    ev = gw.wait_event(lambda e: e["event.action"] == "dkim.unsigned")
    assert ev["event.reason"] == "dkim_no_key"
