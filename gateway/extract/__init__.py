"""Text extraction: everything in a message that a PHI detector should read.

``extract(raw)`` walks a raw RFC 5322 message (headers, text and HTML parts, attachments: PDF,
DOCX, XLSX, PPTX, OpenDocument, RTF, CSV/TXT and other text, iCalendar/vCard, TNEF
``winmail.dat``, nested messages, zip, gzip, tar, and attachment file names) and returns the
text found, place by place, plus the places that could not be read ("unscannable": encrypted,
corrupt, over a limit, timed out), which the policy treats as PHI. It is pure (bytes in, data
out), never raises, and bounds its work by ``ExtractLimits``.
"""

from __future__ import annotations

from .message import extract, extract_message
from .model import KINDS, REASON_TEXT, REASONS, Extracted, ExtractLimits, TextChunk, Unscannable

__all__ = [
    "KINDS",
    "REASONS",
    "REASON_TEXT",
    "ExtractLimits",
    "Extracted",
    "TextChunk",
    "Unscannable",
    "extract",
    "extract_message",
]
