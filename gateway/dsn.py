"""RFC 3464 delivery status notifications (bounces) that return headers only.

The original body never goes back: the third part is ``text/rfc822-headers``, so a bounce of a
PHI message carries no PHI body or attachment. The explanation names recipients and the remote
server's reply, never content.
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FailedRecipient:
    recipient: str
    status: str  # enhanced status code, e.g. 5.1.1
    diagnostic: str  # "smtp; 550 5.1.1 user unknown" or a local reason
    remote_mta: str | None
    action: str = "failed"  # failed | delayed


def _status_from_reply(code: int, reply: str) -> str:
    first = reply.split(" ", 1)[0] if reply else ""
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
        return first
    return f"{str(code)[0] if code else 5}.0.0"


def status_for(code: int, reply: str) -> str:
    return _status_from_reply(code, reply)


def _clean(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())[:400]


def _diagnostic(text: str) -> str:
    """RFC 3464 2.3.6: ``diagnostic-type; text``. Remote replies are ``smtp;``, our own
    reasons ``X-Phigate;``."""
    clean = _clean(text)
    kind, sep, _ = clean.partition(";")
    if sep and kind and all(c.isalnum() or c == "-" for c in kind):
        return clean
    return f"X-Phigate; {clean}"


def header_section(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


def build_bounce(
    *,
    reporting_mta: str,
    original_sender: str,
    original_queue_id: str,
    arrival_date: float,
    recipients: Sequence[FailedRecipient],
    original: bytes,
    now: float,
    delayed: bool = False,
) -> bytes:
    boundary = f"phigate-{secrets.token_hex(12)}"
    msgid = f"<{secrets.token_hex(12)}.{original_queue_id}@{reporting_mta}>"
    subject = ("Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    human = [
        f"This is the mail system at host {reporting_mta}.",
        "",
    ]
    if delayed:
        human += [
            "Your message could not be delivered yet to one or more recipients.",
            "It will be retried; you do not need to resend it.",
        ]
    else:
        human += [
            "Your message could not be delivered to one or more recipients.",
            "The message content is not included in this notice.",
        ]
    human.append("")
    for r in recipients:
        human.append(f"<{r.recipient}>: {_clean(r.diagnostic)}")
    human.append("")

    status_lines = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Phigate-Queue-ID: {original_queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival_date)}",
        "",
    ]
    for r in recipients:
        status_lines += [
            f"Final-Recipient: rfc822; {r.recipient}",
            f"Original-Recipient: rfc822; {r.recipient}",
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            status_lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        status_lines.append(f"Diagnostic-Code: {_diagnostic(r.diagnostic)}")
        status_lines.append("")

    headers = header_section(original)
    parts = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{original_sender}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: {msgid}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        *human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *status_lines,
        f"--{boundary}",
        "Content-Description: Undelivered message headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    text = "\r\n".join(parts).encode("utf-8", "replace") + b"\r\n"
    return text + headers + f"\r\n--{boundary}--\r\n".encode()
