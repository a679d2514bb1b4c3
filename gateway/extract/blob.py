"""Dispatch of one decoded attachment (or archive member) to the reader for its format."""

from __future__ import annotations

from .archive import filename_text, filename_where, gunzip, open_zip, walk_tar, walk_zip
from .budget import Blob, Budget
from .detect import choose, guess_type, image_kind
from .ole import read_ole
from .ooxml import kind_of, read_office
from .pdf import read_pdf
from .text import decode_text, html_to_text, ics_to_text, rtf_to_text
from .tnef import read_tnef

_FORMAT_TYPES = {
    "pdf": "application/pdf", "zip": "application/zip", "gzip": "application/gzip",
    "tar": "application/x-tar", "rtf": "application/rtf", "tnef": "application/ms-tnef",
    "ole": "application/x-ole-storage", "html": "text/html", "ics": "text/calendar",
    "text": "text/plain", "rfc822": "message/rfc822",
}  # fmt: skip
_GENERIC = frozenset({"", "application/octet-stream", "application/unknown", "binary/octet-stream"})
_PGP_ARMOR = "-----BEGIN PGP MESSAGE-----"


def effective_type(blob: Blob, fmt: str) -> str:
    """The declared type, unless it says nothing; then what the bytes or the name say."""
    if blob.ctype not in _GENERIC:
        return blob.ctype
    guessed = guess_type(blob.filename) if blob.filename else "application/octet-stream"
    if guessed != "application/octet-stream":
        return guessed
    return _FORMAT_TYPES.get(fmt, blob.ctype or "application/octet-stream")


def handle(budget: Budget, blob: Blob) -> None:
    """Read one blob: text goes to the budget as chunks, containers recurse one level deeper."""
    if budget.stopped:
        return
    fmt = choose(blob.data, blob.ctype, blob.filename)
    ctype = effective_type(blob, fmt)
    where = f"{blob.base} {ctype}"
    if blob.kind == "attachment":
        budget.types.append(ctype)
    if blob.filename:
        budget.names.append(blob.filename)
        budget.text(filename_where(blob.base), "filename", filename_text(blob.filename))
    try:
        _read(budget, blob, fmt, where)
    except RecursionError:
        budget.fail(where, "too_deep")
    except MemoryError:
        budget.fail(where, "too_large")
    except Exception:  # a reader's bug or a library's surprise: this blob only, fail closed
        budget.fail(where, "corrupt")


def _read(budget: Budget, blob: Blob, fmt: str, where: str) -> None:
    if fmt in ("text", "html", "ics"):
        read_text(budget, blob, fmt, where)
    elif fmt == "pdf":
        read_pdf(budget, blob, where, handle)
    elif fmt == "zip":
        zf = open_zip(blob.data)
        kind = kind_of(zf)
        if kind == "zip":
            walk_zip(budget, blob, zf, handle)
        else:
            read_office(budget, blob, zf, kind, where, handle)
    elif fmt == "gzip":
        gunzip(budget, blob, handle)
    elif fmt == "tar":
        walk_tar(budget, blob, handle)
    elif fmt == "tnef":
        read_tnef(budget, blob, where, handle)
    elif fmt == "rtf":
        if b"{\\rtf" in blob.data[:1024]:
            budget.text(where, blob.kind, rtf_to_text(blob.data))
        else:
            read_text(budget, blob, "text", where)
    elif fmt == "rfc822":
        from .message import walk_bytes  # the MIME walker imports this module

        walk_bytes(budget, blob.data, f"{blob.base}/", blob.depth)
    elif fmt == "ole":
        read_ole(budget, blob, where, handle)
    elif fmt == "image":
        read_image(budget, blob, where)
    elif fmt.startswith("bad:"):
        budget.fail(where, "corrupt")
    # "binary": audio, video and the like carry no text; their type is recorded above


def read_image(budget: Budget, blob: Blob, where: str) -> None:
    """An image may be a scanned referral, a faxed lab result or a screenshot of a chart, and
    its text cannot be read (no OCR): unscannable, unless it is small enough to be a logo or
    an icon. A TIFF, the fax format, is unscannable at any size."""
    if image_kind(blob.data) == "tiff" or len(blob.data) >= budget.limits.image_min:
        budget.fail(where, "image")


def read_text(budget: Budget, blob: Blob, fmt: str, where: str) -> None:
    """A text part or file: decoded by its charset, HTML reduced to its visible text."""
    data = blob.data
    cap = budget.text_left * 4 + 4  # no charset needs more than 4 bytes per character
    if len(data) > cap:
        data = data[:cap]
        budget.fail(where, "too_large")
    text, garbage = decode_text(data, blob.charset)
    if garbage:
        budget.fail(where, "unsupported_charset")
    if fmt == "html":
        text = html_to_text(text)
    elif fmt == "ics":
        text = ics_to_text(text)
    if _PGP_ARMOR in text:
        budget.fail(where, "encrypted")
    budget.text(where, blob.kind, text)
