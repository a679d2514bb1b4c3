"""Parsing of accepted messages with the standard library (``email.policy.default``).

Headers are parsed at once (cheap, and every stage needs them); the full MIME tree is parsed on
first use, so a policy that only looks at headers does not pay for walking a large attachment.
"""

from __future__ import annotations

import email
import email.policy
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


def header_section_size(raw: bytes) -> int:
    """Bytes up to and including the blank line that ends the header section."""
    end = raw.find(b"\r\n\r\n")
    return len(raw) if end < 0 else end + 4
