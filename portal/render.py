"""Turning a stored message into what the portal shows: safe HTML or text, and attachments.

HTML bodies are sanitised with Ammonia (``nh3``): no scripts, styles, forms, frames or images
(so no remote content either: the page's Content-Security-Policy would block it anyway).
Attachments are numbered in MIME order; their names never appear in a URL.
"""

from __future__ import annotations

import email.policy
import json
import struct
from dataclasses import asdict, dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser

import nh3

from .mail import strip_secure

_PARSER = BytesParser(policy=email.policy.default)
_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "div", "em", "h1", "h2", "h3",
    "h4", "h5", "h6", "hr", "i", "li", "ol", "p", "pre", "s", "small", "span", "strong", "sub",
    "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}
_ATTRIBUTES = {"a": {"href", "title"}, "td": {"colspan", "rowspan"},
               "th": {"colspan", "rowspan", "scope"}, "abbr": {"title"}}


@dataclass(frozen=True)
class Attachment:
    index: int
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Rendered:
    sender: str
    to: str
    date: str
    subject: str
    html: str | None  # sanitised
    text: str | None
    attachments: tuple[Attachment, ...]


@dataclass(frozen=True)
class FileInfo:
    index: int
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class View:
    """What the message page shows, rendered once when the message is stored (parsing MIME
    on every page view costs milliseconds per 100 KB)."""

    sender: str
    to: str
    date: str
    subject: str
    html: str | None
    text: str | None
    files: tuple[FileInfo, ...]


MAGIC = b"PGV1"


def view_of(shown: Rendered) -> View:
    return View(shown.sender, shown.to, shown.date, shown.subject, shown.html, shown.text,
                tuple(FileInfo(a.index, a.filename, a.content_type, len(a.data))
                      for a in shown.attachments))


def pack(raw: bytes) -> bytes:
    """The stored form: the rendered view, then the original message (both sealed)."""
    view = json.dumps(asdict(view_of(render(raw))), separators=(",", ":")).encode()
    return MAGIC + struct.pack("!I", len(view)) + view + raw


def unpack(blob: bytes) -> tuple[View, bytes]:
    """(view, original). Content stored without a view is rendered now."""
    if not blob.startswith(MAGIC):
        return view_of(render(blob)), blob
    (n,) = struct.unpack("!I", blob[4:8])
    d = json.loads(blob[8:8 + n])
    view = View(d["sender"], d["to"], d["date"], d["subject"], d["html"], d["text"],
                tuple(FileInfo(**f) for f in d["files"]))
    return view, blob[8 + n:]


def sanitise(html: str) -> str:
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES,
                     url_schemes={"http", "https", "mailto"},
                     link_rel="noopener noreferrer nofollow")


def _text(part: Message) -> str:
    try:
        content = part.get_content() if isinstance(part, EmailMessage) else part.get_payload()
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def _attachments(msg: Message) -> list[tuple[str, str, bytes]]:
    """Leaf parts that are not the body, in order; an attached message is one .eml file."""
    out: list[tuple[str, str, bytes]] = []
    body_parts: set[int] = set()
    if isinstance(msg, EmailMessage):
        for pref in (("html",), ("plain",)):
            b = msg.get_body(preferencelist=pref)
            if b is not None:
                body_parts.add(id(b))

    def walk(part: Message) -> None:
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            first = inner[0] if isinstance(inner, list) and inner else None
            data = first.as_bytes() if isinstance(first, Message) else b""
            out.append((part.get_filename() or "attached-message.eml", ctype, data))
            return
        if part.is_multipart():
            for sub in part.get_payload():
                if isinstance(sub, Message):
                    walk(sub)
            return
        if id(part) in body_parts:
            return
        if part.get_content_maintype() == "text" and not part.get_filename() and \
                part.get_content_disposition() != "attachment":
            return  # an alternative body part (e.g. the plain twin of the HTML body)
        payload = part.get_payload(decode=True)
        out.append((part.get_filename() or f"attachment-{len(out) + 1}", ctype,
                    payload if isinstance(payload, bytes) else b""))

    walk(msg)
    return out


def render(raw: bytes) -> Rendered:
    msg = _PARSER.parsebytes(raw)
    html_part = msg.get_body(preferencelist=("html",))
    text_part = msg.get_body(preferencelist=("plain",))
    html = sanitise(_text(html_part)) if html_part is not None else None
    text = _text(text_part) if text_part is not None and html is None else None
    atts = tuple(Attachment(i, name, ctype, data)
                 for i, (name, ctype, data) in enumerate(_attachments(msg)))
    return Rendered(sender=str(msg["from"] or ""), to=str(msg["to"] or ""),
                    date=str(msg["date"] or ""), subject=strip_secure(str(msg["subject"] or "")),
                    html=html, text=text, attachments=atts)
