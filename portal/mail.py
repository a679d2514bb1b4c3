"""The portal's mail: the notification that replaces a message, one-time codes, replies and
open notices, built from the admin's templates in ``conf/templates/``, and handed to the
gateway's relay listener like any other mail (so it is scanned, queued and DKIM-signed).

The notification carries no PHI: a neutral subject, the sender's name, the link and the expiry
date; never the original subject, body or attachment names.
"""

from __future__ import annotations

import email.policy
import email.utils
import time
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

import aiosmtplib
import jinja2

from gateway.config import PortalConfig
from gateway.passphrase import as_secure

SECURE_KEYWORD = "[secure]"
_HEADERS = BytesHeaderParser(policy=email.policy.default)


class SubmitError(Exception):
    """The relay did not take the portal's mail (the caller answers with a retry page)."""


@dataclass(frozen=True)
class Original:
    """What the portal shows about a message before it is opened (headers only)."""

    sender_name: str
    sender_address: str
    subject: str
    message_id: str


def original_headers(raw: bytes, fallback_sender: str) -> Original:
    msg = _HEADERS.parsebytes(raw)
    name, addr = "", fallback_sender
    try:
        addrs = msg["from"].addresses if msg["from"] is not None else ()
    except (AttributeError, IndexError, ValueError):
        addrs = ()
    if addrs:
        name, addr = addrs[0].display_name, addrs[0].addr_spec or fallback_sender
    subject = str(msg["subject"] or "")
    return Original(name or addr, addr, strip_secure(subject), str(msg["message-id"] or ""))


def strip_secure(subject: str) -> str:
    """The subject as the recipient sees it: without the sender's ``[secure]`` keyword (or
    passphrase tag)."""
    subject = as_secure(subject)
    lower = subject.lower()
    k = lower.find(SECURE_KEYWORD)
    while k >= 0:
        subject = (subject[:k] + subject[k + len(SECURE_KEYWORD):])
        lower = subject.lower()
        k = lower.find(SECURE_KEYWORD)
    return " ".join(subject.split())


class Templates:
    """The admin's mail templates (plain text; the notification also has an HTML part)."""

    def __init__(self, folder: Path) -> None:
        loader = jinja2.FileSystemLoader(str(folder))
        # plain-text mail is not HTML: escaping would corrupt it (the HTML part is escaped)
        self._text = jinja2.Environment(loader=loader, autoescape=False,  # noqa: S701
                                        undefined=jinja2.StrictUndefined)
        self._html = jinja2.Environment(loader=loader, autoescape=True,
                                        undefined=jinja2.StrictUndefined)

    def text(self, name: str, **values: object) -> str:
        return self._text.get_template(name).render(**values)

    def html(self, name: str, **values: object) -> str:
        return self._html.get_template(name).render(**values)


def _date(ts: float) -> str:
    return time.strftime("%d %B %Y", time.gmtime(ts))


class Composer:
    """Builds the portal's messages from the configuration and templates."""

    def __init__(self, config: PortalConfig, organisation: str, hostname: str) -> None:
        self.config = config
        self.organisation = organisation
        self.hostname = hostname
        self.templates = Templates(config.templates)

    def _base(self, from_: str | Address, to: str, subject: str, ts: float) -> EmailMessage:
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = from_
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = email.utils.formatdate(ts, localtime=False)
        msg["Message-ID"] = email.utils.make_msgid(domain=self.hostname)
        msg["Auto-Submitted"] = "auto-generated"
        return msg

    def notification(self, original: Original, recipient: str, link: str, expires: float,
                     now: float) -> bytes:
        values = {"organisation": self.organisation, "phrase": self.config.anti_phishing_phrase,
                  "sender_name": original.sender_name, "sender_address": original.sender_address,
                  "link": link, "expires": _date(expires), "recipient": recipient}
        sender = Address(display_name=original.sender_name
                         if original.sender_name != original.sender_address else "",
                         addr_spec=original.sender_address)
        msg = self._base(sender, recipient, self.config.subject, now)
        del msg["Auto-Submitted"]  # a person's message, relayed in another form
        msg.set_content(self.templates.text("notification.txt", **values))
        msg.add_alternative(self.templates.html("notification.html", **values), subtype="html")
        return msg.as_bytes()

    def code(self, recipient: str, code: str, now: float) -> bytes:
        body = self.templates.text(
            "code.txt", organisation=self.organisation, code=code,
            phrase=self.config.anti_phishing_phrase,
            minutes=max(1, round(self.config.code_ttl / 60)))
        msg = self._base(Address(self.organisation, addr_spec=self.config.from_address),
                         recipient, f"Your one-time code: {code}", now)
        msg.set_content(body)
        return msg.as_bytes()

    def opened(self, sender: str, recipient: str, sent: float, now: float) -> bytes:
        body = self.templates.text("opened.txt", recipient=recipient, sent=_date(sent),
                                   opened=time.strftime("%d %B %Y %H:%M UTC", time.gmtime(now)))
        msg = self._base(Address(self.organisation, addr_spec=self.config.from_address), sender,
                         "Your secure message was opened", now)
        msg.set_content(body)
        return msg.as_bytes()

    def reply(self, original: Original, recipient: str, text: str,
              attachments: list[tuple[str, str, bytes]], now: float) -> bytes:
        """The recipient's reply, to the original sender: From names the recipient, sent by
        the portal's address; Reply-To the recipient, so answering it goes back through the
        gateway (and is scanned again)."""
        msg = self._base(Address(f"{recipient} (via secure portal)",
                                 addr_spec=self.config.from_address),
                         original.sender_address,
                         "Re: " + original.subject if original.subject else "Secure reply", now)
        del msg["Auto-Submitted"]
        msg["Reply-To"] = recipient
        if original.message_id:
            msg["In-Reply-To"] = original.message_id
            msg["References"] = original.message_id
        msg.set_content(text or "(no text)")
        for name, ctype, data in attachments:
            maintype, _, subtype = ctype.partition("/")
            if not subtype:
                maintype, subtype = "application", "octet-stream"
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        return msg.as_bytes()


class Submitter:
    """Hands a message to the gateway's relay listener over SMTP."""

    def __init__(self, host: str, port: int, helo: str, timeout: float = 30.0) -> None:
        self.host, self.port, self.helo, self.timeout = host, port, helo, timeout

    async def submit(self, mail_from: str, rcpt: str, data: bytes) -> None:
        try:
            errors, _ = await aiosmtplib.send(
                data, sender=mail_from, recipients=[rcpt], hostname=self.host,
                port=self.port, local_hostname=self.helo, timeout=self.timeout,
                start_tls=False, use_tls=False)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise SubmitError(type(exc).__name__) from exc
        if errors:
            raise SubmitError("recipient refused")
