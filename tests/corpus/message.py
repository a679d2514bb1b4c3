"""Turn a ``Draft`` into a complete RFC 5322 message (CRLF line endings, MIME where needed).

Everything that the ``email`` package would otherwise pick at random (multipart boundaries) or
from the clock is chosen from the sample's own random generator, so output is reproducible.
"""

from __future__ import annotations

import datetime as dt
import html
import random
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from tests.corpus import vocab
from tests.corpus.model import Attachment, Draft

_TZ = (-5, -4, -6, -7, -8, -4, -5, 0)


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _addr(name: str, address: str) -> str:
    local, _, domain = address.partition("@")
    return str(Address(display_name=name, username=local, domain=domain))


def text_to_html(text: str, rng: random.Random) -> str:
    """Simple HTML as mail clients produce it: paragraphs, line breaks, some boilerplate."""
    paras = [p for p in text.split("\n\n")]
    style = rng.randrange(3)
    body_parts = []
    for p in paras:
        inner = "<br>\n".join(html.escape(line) for line in p.split("\n"))
        if style == 0:
            body_parts.append(f"<p>{inner}</p>")
        elif style == 1:
            body_parts.append(f'<p class="MsoNormal">{inner}<o:p></o:p></p>')
        else:
            body_parts.append(f"<div>{inner}</div><div><br></div>")
    head = (
        '<head><meta http-equiv="Content-Type" content="text/html; charset=utf-8">'
        "<style>body{font-family:Calibri,Arial,sans-serif;font-size:11pt}</style></head>"
    )
    if style == 1:
        return (
            f'<html xmlns:o="urn:schemas-microsoft-com:office:office">{head}<body lang="EN-US">'
            f'<div class="WordSection1">\n' + "\n".join(body_parts) + "\n</div></body></html>"
        )
    return f"<html>{head}<body>\n" + "\n".join(body_parts) + "\n</body></html>"


def _add_attachment(msg: EmailMessage, att: Attachment, rng: random.Random) -> None:
    if isinstance(att.data, EmailMessage):
        msg.add_attachment(att.data, filename=att.filename)
        return
    if att.maintype == "text" and rng.random() < 0.5:
        text = att.data.decode("utf-8-sig")
        msg.add_attachment(
            text,
            subtype=att.subtype,
            filename=att.filename,
            cte=rng.choice([None, "quoted-printable", "base64"]),
        )
        return
    msg.add_attachment(att.data, maintype=att.maintype, subtype=att.subtype, filename=att.filename)


def build(draft: Draft, rng: random.Random, day: dt.date) -> bytes:
    assert draft.sender is not None and draft.to
    msg = EmailMessage()
    msg["From"] = _addr(*draft.sender)
    msg["To"] = ", ".join(_addr(n, a) for n, a in draft.to)
    if draft.cc:
        msg["Cc"] = ", ".join(_addr(n, a) for n, a in draft.cc)
    msg["Subject"] = draft.subject
    tz = dt.timezone(dt.timedelta(hours=rng.choice(_TZ)))
    when = dt.datetime(
        day.year,
        day.month,
        day.day,
        rng.randint(6, 20),
        rng.randint(0, 59),
        rng.randint(0, 59),
        tzinfo=tz,
    )
    msg["Date"] = format_datetime(when)
    domain = draft.sender[1].partition("@")[2]
    msg["Message-ID"] = rng.choice([
        f"<{_hex(rng, 32)}@{domain}>",
        f"<{rng.randint(10**11, 10**12)}.{_hex(rng, 12)}@mail.{domain}>",
        f"<CA{_hex(rng, 30).upper()}@{domain}>",
    ])  # fmt: skip
    if draft.reply:
        ref = f"<{_hex(rng, 24)}@{rng.choice(vocab.ORG_DOMAINS)}>"
        msg["In-Reply-To"] = ref
        msg["References"] = ref
    mailer = rng.choice(vocab.MAILERS)
    msg["X-Mailer" if rng.random() < 0.6 else "User-Agent"] = mailer
    for name, value in draft.headers:
        msg[name] = value

    mode = draft.body_mode
    if mode == "auto":
        mode = rng.choices(["plain", "alt", "html"], weights=[0.62, 0.28, 0.10])[0]
    text, htm = draft.text, draft.html
    if htm is None and text is not None and mode in ("alt", "html"):
        htm = text_to_html(text, rng)
    if htm is not None and text is None:
        mode = "html"
    cte = rng.choices([None, "quoted-printable", "base64"], weights=[0.6, 0.3, 0.1])[0]
    if mode == "html":
        assert htm is not None
        msg.set_content(htm, subtype="html", cte=cte)
    else:
        assert text is not None
        msg.set_content(text, cte=cte)
        if htm is not None and mode != "plain":
            msg.add_alternative(htm, subtype="html", cte=rng.choice(["quoted-printable", "base64"]))
        elif htm is not None:
            msg.add_alternative(htm, subtype="html", cte="quoted-printable")
    for att in draft.attachments:
        _add_attachment(msg, att, rng)

    for part in msg.walk():
        if part is not msg and "From" not in part:  # keep it on forwarded messages
            del part["MIME-Version"]  # the email package adds it to every sub-part
    style = rng.randrange(3)
    for i, part in enumerate(msg.walk()):
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            if style == 0:
                b = f"_{i:03d}_{_hex(rng, 30).upper()}_"
            elif style == 1:
                b = f"Apple-Mail={_hex(rng, 8).upper()}-{_hex(rng, 4).upper()}-{i}"
            else:
                b = f"----=_Part_{rng.randint(1000, 99999)}_{rng.randint(10**8, 10**9)}.{i}"
            part.set_boundary(b)
    return msg.as_bytes(policy=policy.SMTP)
