"""Bounces return headers only; the audit schema refuses free-text fields."""

from __future__ import annotations

import email
import email.policy
import json

import pytest

from gateway.audit import AuditLog, SchemaError
from gateway.dsn import FailedRecipient, build_bounce, status_for


def test_bounce_is_rfc3464_with_headers_only():
    original = (b"From: alice@example.org\r\nTo: bob@dest.test\r\nSubject: lab results\r\n"
                b"\r\nBODY-MARKER-7731 patient text\r\n")
    raw = build_bounce(reporting_mta="phigate.test", original_sender="alice@example.org",
                       original_queue_id="Q1", arrival_date=0, now=10, original=original,
                       recipients=[FailedRecipient("bob@dest.test", "5.1.1",
                                                   "smtp; 550 5.1.1 no such user", "mx.dest.test")])
    assert b"BODY-MARKER-7731" not in raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].as_string()
    assert "Final-Recipient: rfc822; bob@dest.test" in status
    assert "Status: 5.1.1" in status and "Action: failed" in status
    assert "Remote-MTA: dns; mx.dest.test" in status
    assert b"Subject: lab results" in parts[2].get_payload(decode=True) or \
        "Subject: lab results" in parts[2].as_string()
    assert msg["Auto-Submitted"] == "auto-replied"


def test_status_from_reply():
    assert status_for(550, "5.1.1 user unknown") == "5.1.1"
    assert status_for(554, "rejected") == "5.0.0"
    assert status_for(451, "try later") == "4.0.0"


def test_audit_schema_is_closed(tmp_path):
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, stdout=False)
    log.emit("message.accepted", {"email.local_id": "Q1", "email.size": 10})
    with pytest.raises(SchemaError):
        log.emit("message.accepted", {"email.subject": "lab results"})
    with pytest.raises(SchemaError):
        log.emit("message.accepted", {"email.size": "10"})
    log.emit("x", smtp__reply="y" * 5000)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["event.action"] == "message.accepted" and lines[0]["email.local_id"] == "Q1"
    assert "@timestamp" in lines[0]
    assert len(lines) == 2 and len(lines[1]["smtp.reply"]) == 300
