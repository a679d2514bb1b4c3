"""The PHI engine in the relay: verdicts decide how each recipient's copy may leave.

Synthetic data only. The gateway runs with its shipped rules (conf/rules)."""

from __future__ import annotations

import smtplib
import ssl

import pytest
import trustme

from tests.conftest import message, start_sink

PHI_BODY = ("Referral for Patient: Jane Testperson, DOB 03/04/1971, MRN 00123456.\r\n"
            "Diagnosis: type 2 diabetes (E11.9), HbA1c 9.1%.\r\n")


@pytest.fixture(scope="module")
def tls_sink():
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    s = start_sink(tls_context=ctx)
    yield s
    s.stop()


def _send(port: int, to: list[str], subject: str, body: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        c.mail("alice@example.org")
        for r in to:
            c.rcpt(r)
        return c.data(message(subject=subject, body=body, to=", ".join(to)))


def test_phi_requires_tls_per_recipient(gateway_factory, sink, tls_sink):
    gw = gateway_factory("rules.enabled=true",
                         transport={"plain.test": sink.port, "secure.test": tls_sink.port})
    code, reply = _send(gw.relay, ["bob@plain.test", "carol@secure.test"], "referral", PHI_BODY)
    assert code == 250
    qid = reply.split()[-1].decode()
    got = tls_sink.wait_for(1)
    assert got[0].tls and got[0].rcpt_tos == ["carol@secure.test"]
    # bob's server offers no TLS: he gets a portal notification, never the PHI in clear
    note = sink.wait_for(1)[0]
    assert note.rcpt_tos == ["bob@plain.test"] and b"Secure message from" in note.data
    for value in (b"Testperson", b"03/04/1971", b"00123456", b"referral"):
        assert value not in note.data
    fb = gw.wait_event(lambda e: e["event.action"] == "tls.fallback")
    assert fb["email.local_id"] == qid and "STARTTLS" in fb["event.reason"]
    ok = gw.wait_event(lambda e: e["event.action"] == "delivery.delivered"
                       and e["email.to.address"] == "carol@secure.test")
    assert ok["tls.required"] == "encrypt" and ok["tls.version"].startswith("TLSv1.")
    verdict = next(e for e in gw.events() if e["event.action"] == "message.verdict")
    assert verdict["phi.detected"] is True
    types = {f["type"] for f in verdict["phi.findings"]}
    assert {"dob", "mrn", "name", "icd10"} <= types
    assert {v["action"] for v in verdict["verdict.recipients"]} == {"require_tls"}
    # No value reaches the logs: neither the audit file nor stdout.
    logs = (gw.var / "log" / "audit.jsonl").read_text() + gw.out.read_text()
    for value in ("Testperson", "03/04/1971", "00123456", "9.1%"):
        assert value not in logs


def test_tls_fallback_can_wait(gateway_factory, sink):
    """With tls.fallback_after set, PHI to a destination without TLS is retried first."""
    gw = gateway_factory("rules.enabled=true", "tls.fallback_after=1h",
                         transport={"plain.test": sink.port})
    code, reply = _send(gw.relay, ["bob@plain.test"], "referral", PHI_BODY)
    assert code == 250
    qid = reply.split()[-1].decode()
    ev = gw.wait_event(lambda e: e["event.action"] == "message.deferred"
                       and e.get("email.local_id") == qid)
    assert ev["email.to.address"] == ["bob@plain.test"]
    dv = gw.wait_event(lambda e: e["event.action"] == "delivery.deferred")
    assert "4.7.5 TLS required" in dv["smtp.reply"] and dv["tls.required"] == "encrypt"
    assert sink.messages == []  # never in clear, and no notification yet


def test_clean_mail_is_delivered_and_secure_keyword_is_held(gateway_factory, sink):
    gw = gateway_factory("rules.enabled=true", transport={"plain.test": sink.port})
    assert _send(gw.relay, ["bob@plain.test"], "lunch on friday",
                 "The cafeteria is closed on Friday.\r\n")[0] == 250
    assert len(sink.wait_for(1)) == 1
    code, _ = _send(gw.relay, ["bob@plain.test"], "[secure] lunch", "nothing here\r\n")
    assert code == 250
    # the [secure] message goes to the portal: bob gets a notification, not the message
    got = sink.wait_for(2)[1]
    assert b"Secure message from" in got.data and b"lunch" not in got.data
    assert b"nothing here" not in got.data


def test_portal_disabled_holds_secure_mail(gateway_factory, sink):
    gw = gateway_factory("rules.enabled=true", "portal.enabled=false",
                         transport={"plain.test": sink.port})
    code, reply = _send(gw.relay, ["bob@plain.test"], "[secure] lunch", "nothing here\r\n")
    assert code == 250
    qid = reply.split()[-1].decode()
    ev = gw.wait_event(lambda e: e["event.action"] == "delivery.deferred"
                       and e.get("email.local_id") == qid)
    assert "needs the portal, which is disabled" in ev["smtp.reply"]
    assert sink.messages == []  # never sent in clear


def test_quarantine_and_reject_policies(gateway_factory, sink, tmp_path):
    import shutil

    from tests.conftest import ROOT

    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "conf" / "rules", rules)
    (rules / "local.d").mkdir(exist_ok=True)
    (rules / "local.d" / "site.yaml").write_text(
        "policies:\n"
        "  - id: no-ssn-to-consumers\n"
        "    description: SSNs may not be sent to consumer mailboxes\n"
        "    when: {finding: ssn, recipient_domain: [consumer.test]}\n"
        "    action: reject\n"
        "    before: secure-keyword\n"
        "  - id: hold-mbi\n"
        "    description: Medicare numbers are reviewed by the privacy office\n"
        "    when: {finding: mbi}\n"
        "    action: quarantine\n"
        "    before: secure-keyword\n")
    gw = gateway_factory("rules.enabled=true", f"rules.dir={rules}",
                         transport={"consumer.test": sink.port, "plain.test": sink.port})
    code, reply = _send(gw.relay, ["x@consumer.test"], "billing", "SSN: 123-45-6780\r\n")
    assert code == 550
    assert reply == b"5.7.1 SSNs may not be sent to consumer mailboxes"
    code, reply = _send(gw.relay, ["y@plain.test"], "eligibility",
                        "Medicare ID 1EG4-TE5-MK73\r\n")
    assert code == 250
    qid = reply.split()[-1].decode()
    assert (gw.var / "spool" / "hold" / qid).exists()
    listing = gw.cli("queue", "list", "--state", "hold", "--json")
    assert qid in listing.stdout and "hold-mbi" in listing.stdout
