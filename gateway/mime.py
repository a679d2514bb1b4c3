"""Parsing of accepted messages with the standard library (``email.policy.default``).

Headers are parsed at once (cheap, and every stage needs them); the full MIME tree is parsed on
first use, so a policy that only looks at headers does not pay for walking a large attachment.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from email.parser import BytesHeaderParser

_HEADERS = BytesHeaderParser(policy=email.policy.default)


class ParsedMessage:
    """An accepted message: raw bytes plus its parsed headers and, lazily, its MIME tree."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.headers: EmailMessage = _HEADERS.parsebytes(raw)
        self._tree: EmailMessage | None = None

    @property
    def tree(self) -> EmailMessage:
        if self._tree is None:
            self._tree = email.message_from_bytes(
                self.raw, policy=email.policy.default
            )
        assert self._tree is not None
        return self._tree

    def header(self, name: str) -> str:
        """A header's value, or "" when absent or undecodable."""
        try:
            value = self.headers.get(name)
        except Exception:  # malformed headers must not stop the pipeline
            return ""
        return str(value) if value is not None else ""


_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")


def header_section_size(raw: bytes, limit: int | None = None) -> int:
    """Bytes of the header section (RFC 5322): up to the blank line, or up to the first line
    that is neither a header field nor a folded continuation (a message without headers has
    a header section of 0 bytes). ``limit`` stops counting early past that size."""
    end = raw.find(b"\r\n\r\n", 0, None if limit is None else limit + 4)
    if end >= 0 and raw[:2] != b"\r\n":
        return end + 4
    pos = 0
    n = len(raw)
    while pos < n:
        eol = raw.find(b"\r\n", pos)
        eol = n if eol < 0 else eol + 2
        line = raw[pos:eol]
        if line in (b"\r\n", b""):
            return eol if pos else 0
        if line[:1] not in (b" ", b"\t") and not _FIELD.match(line):
            return pos
        if pos == 0 and line[:1] in (b" ", b"\t"):
            return 0
        pos = eol
        if limit is not None and pos > limit:
            return pos
    return pos
