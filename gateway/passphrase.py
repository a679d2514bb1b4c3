"""The sender's passphrase: ``[secure: words the sender tells the recipient]`` in the subject.

Such a subject forces the portal like ``[secure]`` does, and the pickup then opens only with the
passphrase as well as the emailed code: the content key is derived from the link's secret and
the passphrase together (``portal.crypto.passphrase_key``), so a forwarded notification or a
mailbox read by someone else is not enough. The passphrase never leaves the gateway by mail:
every outgoing copy of the message (direct, encrypted, stored in the portal) carries ``[secure]``
in its place, and it is never logged.
"""

from __future__ import annotations

import re
import unicodedata
from email.header import Header, decode_header, make_header

# "[secure: a phrase]" or "[secure passphrase: a phrase]" (":" or "="), any case
TAG = re.compile(r"\[\s*secure\s*(?:pass(?:phrase|word)?\s*)?[:=]\s*([^\]\r\n]{1,200}?)\s*\]",
                 re.IGNORECASE)
# any such tag, an empty one included: never sent on
_ANY_TAG = re.compile(r"\[\s*secure\s*(?:pass(?:phrase|word)?\s*)?[:=][^\]\r\n]*\]?",
                      re.IGNORECASE)
_SUBJECT = re.compile(rb"(?im)^subject[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)")
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
MAX_HEADER_BLOCK = 256 * 1024


def normalise(passphrase: str) -> str:
    """What is compared: Unicode-normalised, case-folded, spaces collapsed (a phone keyboard
    capitalises the first letter; a sender reading it out loud does not say the case)."""
    return " ".join(unicodedata.normalize("NFKC", passphrase).casefold().split())


def as_secure(subject: str) -> str:
    """The subject with each passphrase tag replaced by the plain ``[secure]`` keyword."""
    return _ANY_TAG.sub("[secure]", subject)


def find(subject: str) -> str | None:
    """The passphrase in a (decoded) subject, or None."""
    m = TAG.search(subject)
    if m is None:
        return None
    phrase = normalise(m.group(1))
    return phrase or None


def take(raw: bytes) -> tuple[bytes, str | None]:
    """The message with the passphrase tag turned into ``[secure]`` in its Subject header, and
    the passphrase (None, and the message unchanged, when it has none)."""
    end = _END_OF_HEADERS.search(raw, 0, MAX_HEADER_BLOCK)
    head = raw[: end.start() if end else min(len(raw), MAX_HEADER_BLOCK)]
    if b"secure" not in head.lower():
        return raw, None
    m = _SUBJECT.search(head)
    if m is None:
        return raw, None
    decoded = _decode(m.group(1))
    if not _ANY_TAG.search(decoded):
        return raw, None
    phrase = find(decoded)
    new = as_secure(decoded)
    value = Header(new, "utf-8" if not new.isascii() else "us-ascii",
                   header_name="Subject").encode(linesep="\r\n")
    nl = b"\r\n" if b"\r\n" in head else b"\n"
    line = b"Subject: " + value.encode("ascii").replace(b"\r\n", nl)
    return raw[: m.start()] + line + raw[m.end():], phrase


def _decode(folded: bytes) -> str:
    text = folded.decode("utf-8", "replace")
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", text).strip()
    try:
        return str(make_header(decode_header(unfolded)))
    except (ValueError, LookupError, UnicodeError):
        return unfolded
