"""Legacy Office files, which are OLE compound files: Word 97-2003 (.doc), Excel 97-2003 (.xls),
PowerPoint 97-2003 (.ppt) and Outlook items (.msg).

``olefile`` reads the compound file (its own checks stop sector-chain loops and out-of-range
sectors). On top of it:

- Word: the text is where the document's piece table (the "Clx" in the table stream) says,
  8-bit or UTF-16 per piece: every story (main text, headers, footnotes, comments, text boxes).
  Word 6/95 files and encrypted ones are not read.
- Excel: ``xlrd`` reads the workbook, one row per line, cells apart by tabs, dates as dates.
- PowerPoint: the text atoms of the "PowerPoint Document" stream (slides, notes, outlines).
- Outlook .msg: subject, sender and recipient names, body (plain, else HTML, else compressed
  RTF), and attachments, which are read like a message's; an attached item recurses.

Whatever cannot be read (another kind of compound file, an embedded OLE object that is not a
file, an encrypted document) is "unsupported" or "encrypted", never skipped.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import olefile  # type: ignore[import-untyped]

from .archive import Recurse, filename_text, member_limit
from .budget import Blob, Budget
from .detect import guess_type, ole_is_encrypted_ooxml
from .text import decode_text, html_to_text, rtf_to_text

_MAX_PIECES = 100_000
_MAX_RECORDS = 2_000_000
_CONTROL = str.maketrans(
    {
        "\r": "\n", "\x07": "\t", "\x0b": "\n", "\x0c": "\n", "\x0e": "\n", "\x1e": "-",
        "\x1f": "", "\x13": " ", "\x14": " ", "\x15": " ", "\x01": "", "\x08": "", "\x05": "",
        "\x02": "", "\x03": "", "\x04": "",
    }
)  # fmt: skip


class Unsupported(Exception):
    """A valid file this module does not read."""


class _Encrypted(Exception):
    pass


def read_ole(budget: Budget, blob: Blob, where: str, recurse: Recurse) -> None:
    """Text of a legacy Office file or Outlook item; what is not read is recorded."""
    if ole_is_encrypted_ooxml(blob.data):  # a password-protected DOCX/XLSX/PPTX
        budget.fail(where, "encrypted")
        return
    try:
        ole = olefile.OleFileIO(blob.data)
    except Exception:
        budget.fail(where, "corrupt")
        return
    try:
        _read_storage(budget, blob, ole, [], where, recurse)
    except _Encrypted:
        budget.fail(where, "encrypted")
    except Unsupported:
        budget.fail(where, "unsupported")
    finally:
        ole.close()


def _read_storage(budget: Budget, blob: Blob, ole: Any, path: list[str], where: str,
                  recurse: Recurse) -> None:
    def has(name: str) -> bool:
        return bool(ole.exists("/".join([*path, name])))

    if has("EncryptedPackage") or has("EncryptedSummary"):
        raise _Encrypted
    if has("WordDocument"):
        budget.text(where, blob.kind, word_text(ole, path, member_limit(budget)))
        _embedded_objects(budget, blob, ole, [*path, "ObjectPool"], where, recurse)
    elif has("Workbook") or has("Book"):
        if path:  # xlrd reads a whole compound file only
            raise Unsupported
        budget.text(where, blob.kind, excel_text(blob.data, budget))
    elif has("PowerPoint Document"):
        budget.text(where, blob.kind, powerpoint_text(_stream(ole, [*path, "PowerPoint Document"],
                                                             member_limit(budget))))
    elif has("__properties_version1.0") and any(
        e[len(path)].startswith("__substg1.0_") for e in _entries(ole, path)
    ):
        read_msg(budget, blob, ole, path, recurse)
    else:
        raise Unsupported


def _entries(ole: Any, path: list[str]) -> list[list[str]]:
    """Streams and storages directly under ``path`` (as full paths)."""
    n = len(path)
    seen = set()
    out: list[list[str]] = []
    for entry in ole.listdir(streams=True, storages=True):
        if len(entry) > n and entry[:n] == path and entry[n] not in seen:
            seen.add(entry[n])
            out.append(entry[: n + 1])
    return out


def _stream(ole: Any, path: list[str], limit: int) -> bytes:
    name = "/".join(path)
    if int(ole.get_size(name)) > limit:
        raise MemoryError  # handled as too_large by the caller's caller
    with ole.openstream(name) as f:
        return bytes(f.read(limit + 1))


# ---- Word ----------------------------------------------------------------------------------


def word_text(ole: Any, path: list[str], limit: int) -> str:
    """Every story of a Word 97-2003 document, from its piece table."""
    doc = _stream(ole, [*path, "WordDocument"], limit)
    if len(doc) < 0x1AA:
        raise ValueError("short FIB")
    ident, nfib = struct.unpack_from("<HH", doc, 0)
    flags = struct.unpack_from("<H", doc, 0x0A)[0]
    if ident != 0xA5EC:
        raise ValueError("not a Word document")
    if flags & 0x0100:  # fEncrypted (also XOR-obfuscated)
        raise _Encrypted
    if nfib < 0x00C1:  # Word 6/95 and older: another layout
        raise Unsupported
    table_name = "1Table" if flags & 0x0200 else "0Table"
    table = _stream(ole, [*path, table_name], limit)
    fc_clx, lcb_clx = struct.unpack_from("<II", doc, 0x01A2)
    clx = table[fc_clx : fc_clx + lcb_clx]
    if len(clx) != lcb_clx or not lcb_clx:
        raise ValueError("no piece table")
    pos = 0
    while pos < len(clx) and clx[pos] == 0x01:  # Prc: property modifiers, skipped
        (size,) = struct.unpack_from("<h", clx, pos + 1)
        pos += 3 + max(size, 0)
    if pos + 5 > len(clx) or clx[pos] != 0x02:
        raise ValueError("no Pcdt")
    (lcb,) = struct.unpack_from("<I", clx, pos + 1)
    plc = clx[pos + 5 : pos + 5 + lcb]
    count = (len(plc) - 4) // 12
    if count <= 0 or count > _MAX_PIECES or len(plc) != count * 12 + 4:
        raise ValueError("bad PlcPcd")
    cps = struct.unpack_from(f"<{count + 1}I", plc, 0)
    pieces: list[str] = []
    total = 0
    for i in range(count):
        start, end = cps[i], cps[i + 1]
        if end <= start:
            continue
        (fc,) = struct.unpack_from("<I", plc, (count + 1) * 4 + i * 8 + 2)
        chars = end - start
        total += chars
        if total > limit:
            raise MemoryError
        if fc & 0x40000000:  # 8-bit text (cp1252) at fc / 2
            offset = (fc & 0x3FFFFFFF) // 2
            raw = doc[offset : offset + chars]
            text = raw.decode("cp1252", "replace")
        else:
            raw = doc[fc : fc + 2 * chars]
            text = raw.decode("utf-16-le", "replace")
        if len(text) != chars:
            raise ValueError("piece out of range")
        pieces.append(text)
    return "".join(pieces).translate(_CONTROL)


def _embedded_objects(budget: Budget, blob: Blob, ole: Any, pool: list[str], where: str,
                      recurse: Recurse) -> None:
    """Objects embedded in a Word document (ObjectPool/_<id>): an embedded file or document is
    read one level deeper; anything else (an equation, a chart) is "unsupported"."""
    if not ole.exists("/".join(pool)):
        return
    for index, entry in enumerate(_entries(ole, pool)):
        if ole.get_type("/".join(entry)) != olefile.STGTY_STORAGE:
            continue
        base = f"{blob.base}/inner[{index}]"
        names = {e[-1] for e in _entries(ole, entry)}
        content: bytes | None = None
        name = ""
        if "Package" in names:  # an embedded DOCX/XLSX/PPTX
            content = _stream(ole, [*entry, "Package"], member_limit(budget))
        elif "\x01Ole10Native" in names:  # an embedded file ("packager" object)
            content, name = _ole10_native(
                _stream(ole, [*entry, "\x01Ole10Native"], member_limit(budget)))
        if content is None:  # a document's own storage, or something else
            inner = f"{base} application/x-ole-storage"
            if not budget.part(inner) or budget.deep(inner, blob.depth + 1):
                continue
            sub = Blob(b"", base, "attachment", "application/x-ole-storage", "", None,
                       blob.depth + 1)
            try:
                _read_storage(budget, sub, ole, entry, inner, recurse)
            except _Encrypted:
                budget.fail(inner, "encrypted")
            except Unsupported:
                budget.fail(inner, "unsupported")
            continue
        ctype = guess_type(name)
        inner = f"{base} {ctype}"
        if not budget.part(inner) or budget.deep(inner, blob.depth + 1):
            continue
        if not budget.reserve(inner, len(content)):
            continue
        recurse(budget, Blob(content, base, "attachment", ctype, name, None, blob.depth + 1))


def _ole10_native(data: bytes) -> tuple[bytes | None, str]:
    """OLE 1.0 "Package" object: size, type, label, path, ..., then the file's bytes."""
    try:
        pos = 4 + 2
        label_end = data.index(b"\x00", pos)
        label = data[pos:label_end].decode("cp1252", "replace")
        pos = data.index(b"\x00", label_end + 1) + 1  # original path
        pos += 4  # reserved
        (tlen,) = struct.unpack_from("<I", data, pos)
        pos += 4 + tlen  # temporary path
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        content = data[pos : pos + size]
        if len(content) != size:
            return None, ""
        return content, label
    except (ValueError, struct.error):
        return None, ""


# ---- Excel ---------------------------------------------------------------------------------


def excel_text(data: bytes, budget: Budget) -> str:
    """Cells of every sheet: one row a line, cells apart by tabs, dates as MM/DD/YYYY."""
    import xlrd  # type: ignore[import-untyped]

    from .ooxml import _serial_date

    try:
        book = xlrd.open_workbook(file_contents=data, logfile=io.StringIO(), verbosity=0,
                                  on_demand=True, ragged_rows=True)
    except xlrd.XLRDError as e:
        if "encrypted" in str(e).lower():
            raise _Encrypted from None
        raise
    lines: list[str] = []
    size = 0
    try:
        for index in range(book.nsheets):
            if budget.expired():
                break
            sheet = book.sheet_by_index(index)
            lines.append(str(sheet.name))
            for r in range(sheet.nrows):
                cells = []
                for cell in sheet.row(r):
                    if cell.ctype == xlrd.XL_CELL_DATE:
                        cells.append(_serial_date(float(cell.value), book.datemode == 1))
                    elif cell.ctype == xlrd.XL_CELL_NUMBER:
                        f = float(cell.value)
                        cells.append(str(int(f)) if f.is_integer() and abs(f) < 1e16 else repr(f))
                    elif cell.ctype in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK):
                        cells.append("")
                    else:
                        cells.append(str(cell.value))
                line = "\t".join(cells).rstrip("\t")
                lines.append(line)
                size += len(line) + 1
                if size > budget.text_left:  # budget.text cuts it and records the cut
                    return "\n".join(lines)
            book.unload_sheet(index)
    finally:
        book.release_resources()
    return "\n".join(lines)


# ---- PowerPoint ----------------------------------------------------------------------------

_TEXT_CHARS, _TEXT_BYTES, _CSTRING = 0x0FA0, 0x0FA8, 0x0FBA


def powerpoint_text(stream: bytes) -> str:
    """Text atoms in the order they are stored: containers are stepped into, atoms skipped."""
    out: list[str] = []
    pos, end = 0, len(stream)
    records = 0
    while pos + 8 <= end:
        records += 1
        if records > _MAX_RECORDS:
            break
        ver_inst, rtype, length = struct.unpack_from("<HHI", stream, pos)
        pos += 8
        if ver_inst & 0x000F == 0x000F:  # a container: its records follow
            continue
        body = stream[pos : pos + length]
        if rtype in (_TEXT_CHARS, _CSTRING):
            out.append(body.decode("utf-16-le", "replace"))
        elif rtype == _TEXT_BYTES:
            out.append(body.decode("cp1252", "replace"))
        pos += length
    return "\n".join(out).translate(_CONTROL)


# ---- Outlook .msg ------------------------------------------------------------------------------

_SUBJECT, _BODY, _HTML, _RTF = 0x0037, 0x1000, 0x1013, 0x1009
_NAMES = (0x0C1A, 0x0042, 0x0E04, 0x0E03, 0x0E02)  # sender, representing, display to/cc/bcc
_RECIP_NAME = 0x3001
_ATTACH_DATA, _ATTACH_LONG_NAME, _ATTACH_NAME, _ATTACH_MIME = 0x3701, 0x3707, 0x3704, 0x370E
_ATTACH_DISPLAY = 0x3001


def _prop(ole: Any, path: list[str], tag: int, limit: int) -> str | bytes | None:
    """A property stream ``__substg1.0_TTTTYYYY``: text for 001F/001E, bytes for 0102."""
    for ptype in ("001F", "001E", "0102"):
        entry = [*path, f"__substg1.0_{tag:04X}{ptype}"]
        if ole.exists("/".join(entry)):
            data = _stream(ole, entry, limit)
            if ptype == "001F":
                return data.decode("utf-16-le", "replace").rstrip("\x00")
            if ptype == "001E":
                return decode_text(data.rstrip(b"\x00"), None)[0]
            return data
    return None


def _text_prop(ole: Any, path: list[str], tag: int, limit: int) -> str:
    value = _prop(ole, path, tag, limit)
    if isinstance(value, bytes):
        return decode_text(value, None)[0]
    return value or ""


def read_msg(budget: Budget, blob: Blob, ole: Any, path: list[str], recurse: Recurse) -> None:
    """An Outlook item (or one attached to it, under ``path``) as a nested message."""
    limit = member_limit(budget)
    base = blob.base
    budget.text(f"{base}/subject", "subject", _text_prop(ole, path, _SUBJECT, limit))
    names = [_text_prop(ole, path, tag, limit) for tag in _NAMES]
    entries = _entries(ole, path)
    for entry in entries:
        if entry[-1].startswith("__recip_version1.0_"):
            names.append(_text_prop(ole, entry, _RECIP_NAME, limit))
    budget.text(f"{base}/header names", "header", "\n".join(n for n in names if n))
    body = _prop(ole, path, _BODY, limit)
    if body:
        text = body if isinstance(body, str) else decode_text(body, None)[0]
        budget.text(f"{base}/body text/plain", "body", text)
    else:
        html = _prop(ole, path, _HTML, limit)
        if html:
            text = html if isinstance(html, str) else decode_text(html, None)[0]
            budget.text(f"{base}/body text/html", "body", html_to_text(text))
        else:
            rtf = _prop(ole, path, _RTF, limit)
            if isinstance(rtf, bytes) and rtf:
                from compressed_rtf import decompress  # type: ignore[import-untyped]

                budget.text(f"{base}/body text/rtf", "body", rtf_to_text(decompress(rtf)))
    attachments = [e for e in entries if e[-1].startswith("__attach_version1.0_")]
    for index, entry in enumerate(attachments):
        if budget.stopped:
            return
        _msg_attachment(budget, blob, ole, entry, index, recurse)


def _msg_attachment(budget: Budget, blob: Blob, ole: Any, entry: list[str], index: int,
                    recurse: Recurse) -> None:
    limit = member_limit(budget)
    name = (_text_prop(ole, entry, _ATTACH_LONG_NAME, limit)
            or _text_prop(ole, entry, _ATTACH_NAME, limit)
            or _text_prop(ole, entry, _ATTACH_DISPLAY, limit))
    mime = _text_prop(ole, entry, _ATTACH_MIME, limit).strip().lower()
    base = f"{blob.base}/inner[{index}]"
    embedded = [*entry, f"__substg1.0_{_ATTACH_DATA:04X}000D"]
    ctype = mime or ("application/vnd.ms-outlook" if ole.exists("/".join(embedded))
                     else guess_type(name))
    inner = f"{base} {ctype}"
    if not budget.part(inner) or budget.deep(inner, blob.depth + 1):
        return
    if ole.exists("/".join(embedded)):  # an attached item, or an OLE object
        budget.types.append(ctype)
        if name:
            budget.names.append(name)
            budget.text(f"{blob.base}/filename[{index}]", "filename", filename_text(name))
        sub = Blob(b"", base, "attachment", ctype, name, None, blob.depth + 1)
        try:
            _read_storage(budget, sub, ole, embedded, inner, recurse)
        except _Encrypted:
            budget.fail(inner, "encrypted")
        except Unsupported:
            budget.fail(inner, "unsupported")
        return
    data = _prop(ole, entry, _ATTACH_DATA, limit)
    if not isinstance(data, bytes):  # by reference or a link: only its name is known
        if name:
            budget.names.append(name)
            budget.text(f"{blob.base}/filename[{index}]", "filename", filename_text(name))
        return
    if not budget.reserve(inner, len(data)):
        return
    recurse(budget, Blob(data, base, "attachment", ctype, name, None, blob.depth + 1))
