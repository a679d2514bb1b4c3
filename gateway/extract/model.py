"""The plain data that text extraction returns (frozen dataclasses, no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("subject", "body", "attachment", "filename", "header")
REASONS = (
    "encrypted",
    "corrupt",
    "too_large",
    "too_deep",
    "too_many_parts",
    "timeout",
    "unsupported_charset",
    "bad_encoding",
    "no_text_layer",
    "image",
    "unsupported",
)
# What each reason means, for people (explanations, replies); never names the content.
REASON_TEXT = {
    "encrypted": "encrypted or password-protected",
    "corrupt": "damaged or not the format it claims",
    "too_large": "over a size limit",
    "too_deep": "nested too deeply",
    "too_many_parts": "too many parts",
    "timeout": "took too long to read",
    "unsupported_charset": "text in an unknown character set",
    "bad_encoding": "undecodable transfer encoding",
    "no_text_layer": "pdf has no text layer (scanned image)",
    "image": "an image (a scan, fax, photo or screenshot) whose content cannot be read",
    "unsupported": "a file format that cannot be read",
}


@dataclass(frozen=True)
class TextChunk:
    """Text found in one place of a message.

    ``where`` names the place without any of its content (no file names, no subject), e.g.
    ``"body[0] text/plain"``, ``"attachment[3]/inner[1] application/pdf"``, ``"filename[2]"``.
    """

    where: str
    kind: str  # one of KINDS
    text: str


@dataclass(frozen=True)
class Unscannable:
    """A place whose content could not be read completely; the policy treats it as PHI."""

    where: str
    reason: str  # one of REASONS


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on the work done for one message (the defaults suit an SMTP gateway)."""

    max_depth: int = 8  # nesting of multipart / message/rfc822 / archive in archive
    max_parts: int = 1000  # MIME parts + archive members in total
    max_expanded: int = 100 * 2**20  # total bytes after decoding/decompression, all parts
    max_text: int = 20 * 2**20  # total extracted text characters kept
    max_member: int = 50 * 2**20  # one decompressed archive member
    timeout: float = 20.0  # wall time for the whole message
    image_min: int = 16 * 2**10  # smaller images (logos, icons) are not counted as unscannable;
    #                              a TIFF (the fax format) always is


@dataclass(frozen=True)
class Extracted:
    """Everything the detectors scan, plus what could not be scanned."""

    chunks: tuple[TextChunk, ...]
    unscannable: tuple[Unscannable, ...]
    attachment_types: tuple[str, ...]  # content types of attachments (for policies)
    attachment_names: tuple[str, ...]  # attachment file names (in memory only: may be PHI)
    part_count: int
