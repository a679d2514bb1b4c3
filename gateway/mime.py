"""Message structure helpers shared by intake and classification.

Full MIME parsing and text extraction live in ``gateway.extract``; this module only finds the
header section, which intake needs to bound its size and policies need for header conditions.
"""

from __future__ import annotations

import re

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
