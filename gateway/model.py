"""Plain data passed between the pipeline stages (frozen dataclasses, no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("deliver", "require_tls", "portal", "encrypt", "quarantine", "reject")


@dataclass(frozen=True)
class Envelope:
    """What the SMTP session established, independent of the message content."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_ip: str = ""
    client_helo: str = ""
    auth_user: str | None = None
    listener: str = "relay"
    smtputf8: bool = False
    body_8bit: bool = False
    received_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "client_ip": self.client_ip,
            "client_helo": self.client_helo,
            "auth_user": self.auth_user,
            "listener": self.listener,
            "smtputf8": self.smtputf8,
            "body_8bit": self.body_8bit,
            "received_at": self.received_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Envelope:
        return cls(
            mail_from=str(d["mail_from"]),
            rcpt_tos=tuple(str(r) for r in d["rcpt_tos"]),
            client_ip=str(d.get("client_ip", "")),
            client_helo=str(d.get("client_helo", "")),
            auth_user=d.get("auth_user"),
            listener=str(d.get("listener", "relay")),
            smtputf8=bool(d.get("smtputf8", False)),
            body_8bit=bool(d.get("body_8bit", False)),
            received_at=float(d.get("received_at", 0.0)),
        )


@dataclass(frozen=True)
class Finding:
    """One detector hit, without the matched value."""

    type: str
    rule: str
    count: int
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "rule": self.rule, "count": self.count, "score": self.score}


@dataclass(frozen=True)
class RecipientVerdict:
    recipient: str
    action: str
    rule: str

    def to_json(self) -> dict[str, str]:
        return {"recipient": self.recipient, "action": self.action, "rule": self.rule}


@dataclass(frozen=True)
class Verdict:
    """The decision for one message: what happens to each recipient, and why."""

    recipients: tuple[RecipientVerdict, ...]
    phi: bool = False
    findings: tuple[Finding, ...] = ()
    errors: tuple[str, ...] = ()
    reject_reason: str | None = None
    monitor: tuple[RecipientVerdict, ...] = ()  # monitor-mode policies that matched

    def action_for(self, recipient: str) -> RecipientVerdict:
        for rv in self.recipients:
            if rv.recipient == recipient:
                return rv
        return RecipientVerdict(recipient, "deliver", "default")

    @property
    def held(self) -> bool:
        return any(rv.action == "quarantine" for rv in self.recipients)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipients": [rv.to_json() for rv in self.recipients],
            "phi": self.phi,
            "findings": [f.to_json() for f in self.findings],
            "errors": list(self.errors),
            "reject_reason": self.reject_reason,
            "monitor": [m.to_json() for m in self.monitor],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Verdict:
        return cls(
            recipients=tuple(
                RecipientVerdict(str(r["recipient"]), str(r["action"]), str(r["rule"]))
                for r in d.get("recipients", [])
            ),
            phi=bool(d.get("phi", False)),
            findings=tuple(
                Finding(str(f["type"]), str(f["rule"]), int(f["count"]), float(f["score"]))
                for f in d.get("findings", [])
            ),
            errors=tuple(str(e) for e in d.get("errors", [])),
            reject_reason=d.get("reject_reason"),
            monitor=tuple(
                RecipientVerdict(str(r["recipient"]), str(r["action"]), str(r["rule"]))
                for r in d.get("monitor", [])
            ),
        )


@dataclass(frozen=True)
class RecipientStatus:
    """Where one recipient stands in delivery."""

    recipient: str
    state: str = "pending"  # pending | delivered | bounced
    attempts: int = 0
    last_code: int = 0
    last_reply: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "state": self.state,
            "attempts": self.attempts,
            "last_code": self.last_code,
            "last_reply": self.last_reply,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RecipientStatus:
        return cls(
            recipient=str(d["recipient"]),
            state=str(d.get("state", "pending")),
            attempts=int(d.get("attempts", 0)),
            last_code=int(d.get("last_code", 0)),
            last_reply=str(d.get("last_reply", "")),
        )


@dataclass(frozen=True)
class DeliveryStatus:
    """Mutable-by-replacement delivery progress of one spooled message."""

    recipients: tuple[RecipientStatus, ...]
    attempts: int = 0
    next_attempt: float = 0.0
    warned: bool = False

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(r.recipient for r in self.recipients if r.state == "pending")

    def to_json(self) -> dict[str, Any]:
        return {
            "recipients": [r.to_json() for r in self.recipients],
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "warned": self.warned,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeliveryStatus:
        return cls(
            recipients=tuple(RecipientStatus.from_json(r) for r in d["recipients"]),
            attempts=int(d.get("attempts", 0)),
            next_attempt=float(d.get("next_attempt", 0.0)),
            warned=bool(d.get("warned", False)),
        )

    @classmethod
    def fresh(cls, recipients: tuple[str, ...]) -> DeliveryStatus:
        return cls(recipients=tuple(RecipientStatus(r) for r in recipients))


@dataclass(frozen=True)
class SpoolEntry:
    """A message as the spool holds it."""

    queue_id: str
    envelope: Envelope
    verdict: Verdict
    state: str
    status: DeliveryStatus
    size: int
    kind: str = "message"  # message | bounce | warning


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    outcome: str  # delivered | deferred | bounced
    code: int
    reply: str


@dataclass(frozen=True)
class DeliveryResult:
    queue_id: str
    results: tuple[RecipientResult, ...] = field(default_factory=tuple)
