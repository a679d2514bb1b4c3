"""Outlook's TNEF (winmail.dat): subject, body (plain, HTML or compressed RTF) and attachments.

tnefparse decodes the format, but trusts the counts inside it: a crafted file can make it loop
four billion times or copy the whole file once per record. ``_check`` walks the same structure
first with every count checked against the bytes that are left, and the file goes to tnefparse
only when that walk succeeds.
"""

from __future__ import annotations

import struct
from typing import Any

from .archive import Recurse, filename_text, member_limit
from .budget import Blob, Budget
from .detect import guess_type
from .text import decode_text, html_to_text, rtf_to_text

_SIGNATURE = b"\x78\x9f\x3e\x22"
_IMESSAGE = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
_ATT_MAPIPROPS, _ATT_RECIPTABLE, _ATT_ATTACHMENT = 0x9003, 0x9004, 0x9005
_MAPI_ATTACH_DATA_OBJ = 0x3701
_FIXED = {0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8,
          0x0007: 8, 0x0014: 8, 0x0040: 8, 0x0048: 16, 0x0001: 0}  # fmt: skip
_VARIABLE = frozenset({0x001E, 0x001F, 0x000D, 0x0102, 0x0000})
_MAX_RECORDS = 5000
_MAX_COPY = 2_000_000_000  # tnefparse copies the rest of the file once per record
_MAX_NESTING = 4


class _Bad(Exception):
    pass


def _u32(data: bytes, off: int) -> int:
    if off + 4 > len(data):
        raise _Bad
    return int(struct.unpack_from("<I", data, off)[0])


def _u16(data: bytes, off: int) -> int:
    if off + 2 > len(data):
        raise _Bad
    return int(struct.unpack_from("<H", data, off)[0])


def _pad4(n: int) -> int:
    return n + (-n % 4)


def _check_mapi(data: bytes, off: int, nesting: int) -> int:
    """Walk a MAPI property list as tnefparse.mapi.decode_mapi does; return the end offset."""
    count = _u32(data, off)
    off += 4
    if count > (len(data) - off) // 4:
        raise _Bad
    for _ in range(count):
        atype, aname = _u16(data, off), _u16(data, off + 2)
        off += 4
        if aname >= 0x8000:  # named property: GUID, kind, then an id or a name
            kind = _u32(data, off + 16)
            off += 20
            off += 4 if kind == 0 else 4 + _pad4(_u32(data, off))
        multi = None
        if atype & 0x1000:
            atype ^= 0x1000
            multi = _u32(data, off)
            off += 4
            if multi > len(data) - off:
                raise _Bad
        for _ in range(multi or 1):
            if atype in _FIXED:
                off += _FIXED[atype]
            elif atype in _VARIABLE:
                values = 1
                if not multi:
                    values = _u32(data, off)
                    off += 4
                    if values > (len(data) - off) // 4:
                        raise _Bad
                for _ in range(values):
                    length = _u32(data, off)
                    start = off + 4
                    off = start + _pad4(length)
                    if off > len(data):
                        raise _Bad
                    if aname == _MAPI_ATTACH_DATA_OBJ and data[start : start + 16] == _IMESSAGE:
                        _check(data[start + 16 : start + length], nesting + 1)
            else:
                return len(data)  # tnefparse stops decoding this list here, harmlessly
            if off > len(data):
                raise _Bad
        if (multi or 1) % 2 and atype in (0x0002, 0x000B):
            off += 2
    return off


def _check(data: bytes, nesting: int = 0) -> None:
    """Raise _Bad unless tnefparse can read ``data`` in bounded time and memory."""
    if nesting > _MAX_NESTING or not data.startswith(_SIGNATURE):
        raise _Bad
    off, records = 6, 0
    while off + 12 < len(data):
        records += 1
        if records > _MAX_RECORDS or records * len(data) > _MAX_COPY:
            raise _Bad
        name = _u16(data, off + 1)
        length = _u32(data, off + 5)
        if length + 11 > len(data) - off:  # a record cut short: the file is truncated
            raise _Bad
        body = data[off + 9 : off + 9 + length]
        if name in (_ATT_MAPIPROPS, _ATT_ATTACHMENT):
            _check_mapi(body, 0, nesting)
        elif name == _ATT_RECIPTABLE:
            rows = _u32(body, 0)
            if rows > len(body) // 4:
                raise _Bad
            pos = 4
            for _ in range(rows):
                pos = _check_mapi(body, pos, nesting)
        off += length + 11
    if data[off:].strip(b"\x00"):  # bytes left over that tnefparse would silently drop
        raise _Bad


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return decode_text(value.rstrip(b"\x00"), None)[0]
    return str(value) if value else ""


def read_tnef(budget: Budget, blob: Blob, where: str, recurse: Recurse) -> None:
    """The TNEF body as "body" chunks, its attachments one level deeper."""
    try:
        _check(blob.data)
    except (_Bad, struct.error):
        budget.fail(where, "corrupt")
        return
    try:
        from tnefparse.tnef import TNEF  # type: ignore[import-untyped]

        tnef = TNEF(blob.data)
        subject = next((o.data for o in tnef.msgprops if o.name == TNEF.ATTSUBJECT), "")
        bodies = [("text/plain", _text(tnef.body)), ("text/html", _text(tnef.htmlbody))]
        rtf = tnef.rtfbody
        if rtf:
            bodies.append(("text/rtf", rtf_to_text(rtf) if isinstance(rtf, bytes) else ""))
        attachments = [(a.long_filename(), a.data) for a in tnef.attachments]
    except Exception:
        budget.fail(where, "corrupt")
        return
    if subject:
        budget.text(f"{blob.base}/subject", "subject", _text(subject))
    for ctype, body in bodies:
        if body:
            text = html_to_text(body) if ctype == "text/html" else body
            budget.text(f"{blob.base}/body {ctype}", "body", text)
    for index, (name, content) in enumerate(attachments):
        name = _text(name)
        base = f"{blob.base}/inner[{index}]"
        ctype = guess_type(name)
        inner = f"{base} {ctype}"
        if not budget.part(inner):
            return
        if budget.deep(inner, blob.depth + 1):
            continue
        if not isinstance(content, bytes) or len(content) > member_limit(budget):
            budget.fail(inner, "too_large" if isinstance(content, bytes) else "corrupt")
            if name:
                budget.names.append(name)
                budget.text(f"{blob.base}/filename[{index}]", "filename", filename_text(name))
            continue
        recurse(budget, Blob(content, base, "attachment", ctype, name, None, blob.depth + 1))
