"""Split a message into the header fields that travel outside the encryption and the MIME
entity that is encrypted, and stream that entity without copying the body.

The encrypted entity is the original body with its own ``Content-*`` fields, untouched
(attachments included), canonicalised to CRLF line ends. With ``protect_subject`` the outer
Subject becomes ``...`` and the entity carries copies of the addressing fields and the real
Subject, marked ``protected-headers="v1"`` on its Content-Type (the convention Thunderbird,
K-9/FairEmail and Mailpile display), so a subject that names a patient never leaves in clear.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass

CRLF = b"\r\n"
# Copied into the encrypted entity for the recipient's client to show (protected headers).
_PROTECTED = ("from", "to", "cc", "reply-to", "subject", "date", "message-id")
_CHUNK = 256 * 1024
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class Field:
    name: str  # lower case
    raw: bytes  # the whole field, continuation lines included, without the final line end


@dataclass(frozen=True)
class Split:
    fields: tuple[Field, ...]
    body: memoryview  # the original body, not copied


def split(raw: bytes) -> Split:
    """Header fields and body of ``raw``; a message without a blank line is all header."""
    end, start = len(raw), len(raw)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = raw.find(sep)
        if i >= 0 and i < end:
            end, start = i, i + len(sep)
    if raw.startswith((b"\r\n", b"\n")):  # no header at all
        end, start = 0, (2 if raw.startswith(b"\r\n") else 1)
    fields: list[Field] = []
    for line in re.split(rb"\r?\n", raw[:end]) if end else []:
        if line[:1] in (b" ", b"\t") and fields:
            prev = fields[-1]
            fields[-1] = Field(prev.name, prev.raw + CRLF + line)
        elif b":" in line:
            name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
            fields.append(Field(name, line))
    return Split(tuple(fields), memoryview(raw)[start:])


def _unfold_value(f: Field) -> bytes:
    return re.sub(rb"\r\n[ \t]", b" ", f.raw.split(b":", 1)[1]).strip()


def entity_header(sp: Split, protect_subject: bool) -> bytes:
    """The header block of the encrypted entity (ending with the blank line)."""
    out: list[bytes] = []
    content = [f for f in sp.fields if f.name.startswith("content-")]
    if protect_subject:
        out.extend(f.raw for f in sp.fields if f.name in _PROTECTED)
    has_type = False
    for f in content:
        if f.name == "content-type":
            has_type = True
            if protect_subject:
                out.append(b"Content-Type: " + _unfold_value(f) + b'; protected-headers="v1"')
                continue
        out.append(f.raw)
    if not has_type:  # RFC 2045 default, stated so the protected-headers mark has a home
        ctype = b"Content-Type: text/plain; charset=us-ascii"
        out.append(ctype + (b'; protected-headers="v1"' if protect_subject else b""))
    return CRLF.join(out) + CRLF + CRLF


def outer_header(sp: Split, protect_subject: bool, content: list[bytes]) -> bytes:
    """The header block that travels in clear: the original fields less ``Content-*`` and
    MIME-Version (and Subject, replaced by ``...`` when protected), then ``content``."""
    out: list[bytes] = []
    for f in sp.fields:
        if f.name.startswith("content-") or f.name == "mime-version":
            continue
        if f.name == "subject" and protect_subject:
            out.append(b"Subject: ...")
            continue
        out.append(f.raw)
    out.append(b"MIME-Version: 1.0")
    out.extend(content)
    return CRLF.join(out) + CRLF + CRLF


def needs_crlf(body: memoryview) -> bool:
    """Whether the body has a line end without CR (mail read from a file, not from SMTP)."""
    for i in range(0, len(body), _CHUNK):
        # one byte of the previous chunk, so a CRLF cut in two is not taken for a bare LF
        piece = bytes(body[max(0, i - 1):i + _CHUNK])
        if _BARE_LF.search(piece, 1 if i else 0):
            return True
    return False


def chunks(head: bytes, body: memoryview) -> Iterator[bytes | memoryview]:
    """The entity as chunks: ``head``, then the body with bare LF made CRLF. The body is
    handed out as slices of the caller's buffer when already canonical."""
    yield head
    fix = needs_crlf(body)
    carry_cr = False
    for i in range(0, len(body), _CHUNK):
        piece = body[i:i + _CHUNK]
        if not fix:
            yield piece
            continue
        data = bytes(piece)
        if carry_cr and data.startswith(b"\n"):
            yield b"\n"
            data = data[1:]
        carry_cr = data.endswith(b"\r")
        yield _BARE_LF.sub(b"\r\n", data)


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of chunks (for a subprocess's stdin)."""

    def __init__(self, parts: Iterator[bytes | memoryview]) -> None:
        self._parts = parts
        self._left: memoryview = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        while not len(self._left):
            nxt = next(self._parts, None)
            if nxt is None:
                return 0
            self._left = memoryview(nxt)
        n = min(len(buf), len(self._left))
        buf[:n] = self._left[:n]
        self._left = self._left[n:]
        return n
