"""The running state of one extraction: what was found so far and what is left of the limits.

Every format reader receives the same ``Budget`` and asks it before doing work (``part``,
``reserve``, ``expired``), so the limits hold across MIME parts, archive members and nested
messages alike. Once the message has timed out or has too many parts, ``stopped`` is set and every
reader returns at its next check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .model import Extracted, ExtractLimits, TextChunk, Unscannable


@dataclass(frozen=True)
class Blob:
    """Decoded bytes of one attachment or archive member, with what is known about them."""

    data: bytes
    base: str  # location without the type: "attachment[2]", "attachment[3]/inner[1]"
    kind: str  # "body" or "attachment"
    ctype: str  # declared content type, lower case; "" if none
    filename: str  # declared file name; "" if none
    charset: str | None  # declared charset of a text part
    depth: int  # nesting depth of this blob


class Budget:
    """Collects chunks and failures while enforcing ``ExtractLimits``."""

    __slots__ = (
        "chunks",
        "deadline",
        "expanded",
        "limits",
        "names",
        "parts",
        "stopped",
        "text_left",
        "types",
        "unscannable",
    )

    def __init__(self, limits: ExtractLimits, start: float | None = None) -> None:
        self.limits = limits
        self.deadline = (time.monotonic() if start is None else start) + limits.timeout
        self.chunks: list[TextChunk] = []
        self.unscannable: list[Unscannable] = []
        self.types: list[str] = []
        self.names: list[str] = []
        self.parts = 0
        self.expanded = 0
        self.text_left = limits.max_text
        self.stopped = False

    def fail(self, where: str, reason: str) -> None:
        item = Unscannable(where, reason)
        if not self.unscannable or self.unscannable[-1] != item:
            self.unscannable.append(item)

    def expired(self) -> bool:
        """True (and recorded once) when the wall-time limit has passed; stops everything."""
        if self.stopped:
            return True
        if time.monotonic() > self.deadline:
            self.stopped = True
            self.fail("message", "timeout")
            return True
        return False

    def part(self, where: str) -> bool:
        """Count one MIME part or archive member; False (recorded, stops all) past the limit."""
        if self.stopped:
            return False
        self.parts += 1
        if self.parts > self.limits.max_parts:
            self.stopped = True
            self.fail(where, "too_many_parts")
            return False
        return not self.expired()

    def deep(self, where: str, depth: int) -> bool:
        """True (and recorded) when ``depth`` is past the nesting limit."""
        if depth > self.limits.max_depth:
            self.fail(where, "too_deep")
            return True
        return False

    def room(self) -> int:
        """Bytes that may still be decoded or decompressed."""
        return self.limits.max_expanded - self.expanded

    def reserve(self, where: str, nbytes: int) -> bool:
        """Account for ``nbytes`` of decoded data; False (recorded) if over the total limit."""
        if nbytes > self.room():
            self.expanded = self.limits.max_expanded
            self.fail(where, "too_large")
            return False
        self.expanded += nbytes
        return True

    def text(self, where: str, kind: str, text: str) -> None:
        """Keep ``text`` for scanning, cut to what is left of ``max_text`` (a cut is recorded)."""
        if not text or text.isspace():
            return
        if len(text) > self.text_left:
            text = text[: self.text_left]
            self.fail(where, "too_large")
            if not text:
                return
        self.text_left -= len(text)
        self.chunks.append(TextChunk(where, kind, text))

    def result(self) -> Extracted:
        return Extracted(
            chunks=tuple(self.chunks),
            unscannable=tuple(self.unscannable),
            attachment_types=tuple(self.types),
            attachment_names=tuple(self.names),
            part_count=self.parts,
        )
