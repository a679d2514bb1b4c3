"""The quarantine workflow end to end on a real ``phigate run``: a local policy holds Medicare
numbers; the DLP reviewer gets a PHI-free notice; the admin lists held mail by sender, rule and
age, releases one to the portal (the recipient gets a notification, never the PHI), one as it
is, and deletes one; each with a reason in the audit log. Synthetic data only."""

from __future__ import annotations

import json
import shutil
import smtplib
from pathlib import Path

from tests.conftest import ROOT, message

MBI = "1EG4-TE5-MK73"
BODY = f"Medicare ID {MBI} for the eligibility check.\r\n"


def send(port: int, sender: str, to: str, subject: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        c.mail(sender)
        c.rcpt(to)
        code, reply = c.data(message(subject=subject, body=BODY, frm=sender, to=to))
    assert code == 250, reply
    return reply.split()[-1].decode()


def ids(listing: str) -> list[str]:
    return [json.loads(line)["queue_id"] for line in listing.splitlines() if line.strip()]


def test_hold_notify_list_release_delete(gateway_factory, sink, tmp_path: Path):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "conf" / "rules", rules)
    (rules / "local.d").mkdir(exist_ok=True)
    (rules / "local.d" / "site.yaml").write_text(
        "policies:\n"
        "  - id: hold-mbi\n"
        "    description: Medicare numbers are reviewed by the privacy office\n"
        "    when: {finding: mbi}\n"
        "    action: quarantine\n"
        "    before: secure-keyword\n")
    gw = gateway_factory("rules.enabled=true", f"rules.dir={rules}", "rules.processes=1",
                         "quarantine.notify=dlp@review.test",
                         transport={"plain.test": sink.port, "review.test": sink.port})
    q1 = send(gw.relay, "alice@example.org", "y@plain.test", "eligibility Testperson")
    q2 = send(gw.relay, "carol@example.org", "z@plain.test", "eligibility Testperson")
    q3 = send(gw.relay, "alice@example.org", "w@plain.test", "eligibility Testperson")
    for qid in (q1, q2, q3):
        assert (gw.var / "spool" / "hold" / qid).exists()

    # the reviewer's notices: queue id, sender, rule and its description, recipient count;
    # no subject, no recipient, no PHI
    notices = sink.wait_for(3)
    assert {m.rcpt_tos[0] for m in notices} == {"dlp@review.test"}
    texts = {m.data.decode() for m in notices}
    note = next(t for t in texts if q2 in t)
    assert "carol@example.org" in note
    assert "hold-mbi: Medicare numbers are reviewed by the privacy office" in note
    assert "Recipients:  1" in note
    for t in texts:
        for secret in (MBI, "Testperson", "eligibility", "@plain.test"):
            assert secret not in t, secret
    ev = gw.wait_event(lambda e: e["event.action"] == "quarantine.notice"
                       and e.get("related.local_id") == q1)
    assert ev["event.outcome"] == "success" and ev["verdict.rule"] == "hold-mbi"

    # list with filters
    base = ("queue", "list", "--state", "hold", "--json")
    assert sorted(ids(gw.cli(*base).stdout)) == sorted([q1, q2, q3])
    assert ids(gw.cli(*base, "--sender", "CAROL@example.org").stdout) == [q2]
    assert sorted(ids(gw.cli(*base, "--rule", "hold-mbi").stdout)) == sorted([q1, q2, q3])
    assert ids(gw.cli(*base, "--rule", "no-such-rule").stdout) == []
    assert ids(gw.cli(*base, "--older-than", "1d").stdout) == []
    assert len(ids(gw.cli(*base, "--older-than", "1ms").stdout)) == 3
    text = gw.cli("queue", "list", "--state", "hold", "--sender", "alice@example.org").stdout
    assert "held by hold-mbi" in text and "-- 2 message(s)" in text
    bad = gw.cli("queue", "list", "--older-than", "soon")
    assert bad.returncode == 2 and "expected a duration" in bad.stderr

    # release to the portal: y@ gets a notification with a link, not the message
    out = gw.cli("queue", "release", q1, "--to-portal", "--reason", "reviewed: portal ok")
    assert out.returncode == 0, out.stderr
    assert f"{q1}: release to the portal done" in out.stdout
    got = sink.wait_for(4)[3]
    assert got.rcpt_tos == ["y@plain.test"]
    assert b"Secure message from" in got.data
    for secret in (MBI.encode(), b"Testperson", b"eligibility"):
        assert secret not in got.data
    gw.wait_event(lambda e: e["event.action"] == "portal.stored"
                  and e.get("email.local_id") == q1)

    # release as it is (the admin's call), and delete with a reason
    assert gw.cli("queue", "release", q3, "--reason", "false positive").returncode == 0
    got = sink.wait_for(5)[4]
    assert got.rcpt_tos == ["w@plain.test"] and MBI.encode() in got.data
    out = gw.cli("queue", "delete", q2, "--reason", "sent to the wrong payer")
    assert out.returncode == 0
    assert not (gw.var / "spool" / "hold" / q2).exists()
    assert ids(gw.cli(*base).stdout) == []

    trail = {e["email.local_id"]: e for e in gw.events()
             if e["event.action"] in ("queue.release", "queue.delete")}
    assert trail[q1]["event.action"] == "queue.release"
    assert trail[q1]["admin.reason"] == "reviewed: portal ok"
    assert trail[q1]["verdict.action"] == "portal"
    assert {r["action"] for r in trail[q1]["verdict.recipients"]} == {"portal"}
    assert trail[q3]["admin.reason"] == "false positive" and "verdict.action" not in trail[q3]
    assert trail[q2]["event.action"] == "queue.delete"
    assert trail[q2]["admin.reason"] == "sent to the wrong payer"
    assert trail[q2]["user.name"]
    # the audit log stays PHI-free, and its chain verifies
    log = (gw.var / "log" / "audit.jsonl").read_text()
    assert MBI not in log and "Testperson" not in log
    verify = gw.cli("audit", "verify", str(gw.var / "log" / "audit.jsonl"))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_release_to_portal_refused_without_portal(gateway_factory, tmp_path: Path):
    gw = gateway_factory("portal.enabled=false", start=False)
    out = gw.cli("queue", "release", "0123", "--to-portal")
    assert out.returncode == 1 and "portal.enabled" in out.stderr


def test_quarantine_notify_is_checked(tmp_path: Path):
    import pytest

    from gateway.config import ConfigError, load_config

    cfg = load_config(ROOT / "conf" / "gateway.yaml", [f"paths.var={tmp_path}"])
    assert cfg.quarantine.notify is None  # shipped: off
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "conf" / "gateway.yaml",
                    [f"paths.var={tmp_path}", "quarantine.notify=privacy office"])
    assert "quarantine.notify: expected an address" in err.value.problems[0]
