"""The quarantine workflow: what ``phigate queue`` does with held messages, and the notice a
DLP reviewer gets when something is held.

A message is held (spool state ``hold``) when a policy chose ``quarantine`` for a recipient or
the rate limiter held it. An admin lists held messages (by sender, rule, age), then releases
them as they are, releases them to the portal (every recipient not already encrypted end to end
gets the ``portal`` action, so the delivery worker stores the message in the portal and sends a
notification instead), or deletes them; each with a reason, in the audit log.

The reviewer notice (``quarantine.notify``) carries no PHI: queue id, sender, rule id and the
rule's description (written by the admin), recipient count, arrival time. Never the subject, a
recipient address, or any content. It is spooled like a bounce (null sender, so a failure
cannot bounce back) and delivered by the same workers.
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import email.utils
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from .audit import AuditLog
from .config import Config
from .model import Envelope, RecipientVerdict, SpoolEntry, Verdict
from .spool import Spool

RATELIMIT_RULE = "ratelimit"
NOTICE_RULE = "quarantine-notice"
# Already protected end to end (or never sent): not changed by a release to the portal.
_KEPT_ON_PORTAL_RELEASE = ("portal", "encrypt", "reject")


class _RuleSource(Protocol):
    def policy(self, pid: str) -> Any: ...


def held_rules(verdict: Verdict) -> list[str]:
    """The rules that held a message: those that chose ``quarantine``, else the rate limiter."""
    rules = [rv.rule for rv in verdict.recipients if rv.action == "quarantine"]
    return list(dict.fromkeys(rules)) or [RATELIMIT_RULE]


def matches(entry: SpoolEntry, now: float, *, sender: str | None = None,
            rule: str | None = None, older_than: float | None = None) -> bool:
    """The ``queue list`` filters: sender (case-insensitive), a verdict's rule id (any
    recipient, or ``ratelimit`` for a message the rate limiter held), minimum age."""
    if sender and entry.envelope.mail_from.lower() != sender.lower():
        return False
    if rule:
        rules = {rv.rule for rv in entry.verdict.recipients}
        if entry.state == "hold":
            rules.update(held_rules(entry.verdict))
        if rule not in rules:
            return False
    return not (older_than is not None and now - entry.envelope.received_at < older_than)


def to_portal(verdict: Verdict) -> Verdict:
    """The verdict for a release to the portal: every recipient gets ``portal`` unless it is
    already protected end to end. The deciding rule stays, for the trail."""
    return replace(verdict, recipients=tuple(
        rv if rv.action in _KEPT_ON_PORTAL_RELEASE else RecipientVerdict(rv.recipient, "portal",
                                                                         rv.rule)
        for rv in verdict.recipients))


def release_to_portal(spool: Spool, queue_id: str) -> Verdict:
    """Rewrite a held message's verdict for the portal (a new file, fsync, renamed over the
    old one: still held, so no worker can be reading it) and return the new verdict. The
    caller then moves it to ``incoming``. A crash in between leaves it held, with the safer
    verdict."""
    header = spool.read_header("hold", queue_id)
    verdict = to_portal(header.verdict)
    body = spool.read_message("hold", queue_id)
    spool.store(header.envelope, verdict, body, state="hold", kind=header.kind,
                queue_id=queue_id, now=header.created)
    return verdict


def describe(rules: list[str], source: _RuleSource | None) -> list[str]:
    out = []
    for rid in rules:
        if rid == RATELIMIT_RULE:
            out.append(f"{rid}: held by the rate limiter (unusual sending)")
            continue
        policy = source.policy(rid) if source is not None else None
        text = getattr(policy, "description", "") or ""
        out.append(f"{rid}: {text}" if text else rid)
    return out


def build_notice(config: Config, queue_id: str, envelope: Envelope, rules: list[str],
                 now: float) -> bytes:
    """The reviewer's notice: PHI-free by construction (see the module docstring)."""
    assert config.quarantine.notify is not None
    lines = [
        "A message was held for review by the outbound mail gateway.",
        "",
        f"Queue id:    {queue_id}",
        f"Sender:      {envelope.mail_from or '<>'}",
        f"Recipients:  {len(envelope.rcpt_tos)}",
        f"Received:    {email.utils.formatdate(envelope.received_at or now, localtime=False)}",
        f"Held by:     {(chr(10) + ' ' * 13).join(rules)}",
        "",
        "Review it on the gateway host, then deliver it through the secure portal,",
        "deliver it as it is, or delete it (the reason goes into the audit log):",
        f"  phigate queue show {queue_id}",
        f"  phigate queue release {queue_id} --to-portal --reason '...'",
        f"  phigate queue release {queue_id} --reason '...'",
        f"  phigate queue delete {queue_id} --reason '...'",
        "",
        "The subject and content are not included in this notice.",
    ]
    msg = email.message.EmailMessage()
    msg["From"] = f"Mail gateway <MAILER-DAEMON@{config.hostname}>"
    msg["To"] = config.quarantine.notify
    msg["Subject"] = f"Message held for review: {queue_id}"
    msg["Date"] = email.utils.formatdate(now)
    msg["Message-ID"] = email.utils.make_msgid("quarantine", config.hostname)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join(lines) + "\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def spool_notice(config: Config, spool: Spool, queue_id: str, envelope: Envelope,
                 verdict: Verdict, source: _RuleSource | None, now: float) -> str:
    """Build the reviewer notice for a held message and spool it; returns its queue id."""
    reviewer = config.quarantine.notify
    assert reviewer is not None
    raw = build_notice(config, queue_id, envelope, describe(held_rules(verdict), source), now)
    nenv = Envelope(mail_from="", rcpt_tos=(reviewer,), listener="notice", received_at=now)
    nverdict = Verdict(recipients=(RecipientVerdict(reviewer, "deliver", NOTICE_RULE),))
    return spool.store(nenv, nverdict, raw, kind="notice", now=now)


async def notify_reviewer(config: Config, spool: Spool, audit: AuditLog,
                          on_queued: Callable[[str, str, Any], None], queue_id: str,
                          envelope: Envelope, verdict: Verdict, policy: object,
                          now: float) -> None:
    """At hold time (intake, after the held message is on disk): spool the reviewer notice.
    Never raises: the held message is already safe, a missing notice is only logged."""
    reviewer = config.quarantine.notify
    if reviewer is None:
        return
    source = getattr(policy, "ruleset", None)
    try:
        nid = await asyncio.get_running_loop().run_in_executor(None, lambda: spool_notice(
            config, spool, queue_id, envelope, verdict, source, now))
    except Exception as exc:
        audit.emit("quarantine.notice", {"related.local_id": queue_id,
                                         "email.to.address": reviewer,
                                         "event.outcome": "failure",
                                         "error.type": type(exc).__name__})
        return
    audit.emit("quarantine.notice", {"email.local_id": nid, "related.local_id": queue_id,
                                     "email.to.address": reviewer, "event.outcome": "success",
                                     "verdict.rule": ",".join(held_rules(verdict))[:300]})
    on_queued(nid, "incoming", None)


def fmt_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
