"""Synthetic legacy Office files (no real PHI): a minimal OLE compound-file writer, after
[MS-CFB], and Word 97 (.doc), PowerPoint 97 (.ppt) and Outlook (.msg) files built on it after
[MS-DOC], [MS-PPT] and [MS-OXMSG]. Excel 97 files are written by xlwt.

The writer is version 3 (512-byte sectors): streams under 4096 bytes live in the mini stream,
as the format requires; each storage's children are chained through right siblings (a valid
binary search tree; all entries black, which readers do not check).
"""

from __future__ import annotations

import datetime
import io
import struct
from collections.abc import Mapping

_FREE, _END, _FATSECT = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD
_NONE = 0xFFFFFFFF
_SECTOR, _MINI, _CUTOFF = 512, 64, 4096


def compound_file(streams: Mapping[str, bytes]) -> bytes:
    """An OLE compound file holding ``streams`` ("Storage/Sub/Stream" paths: storages implied)."""
    # the directory tree: path -> children names
    storages: dict[str, list[str]] = {"": []}
    for path in streams:
        parts = path.split("/")
        for i in range(len(parts)):
            parent = "/".join(parts[:i])
            child = "/".join(parts[: i + 1])
            if i < len(parts) - 1:
                storages.setdefault(child, [])
            if parts[i] not in storages[parent]:
                storages[parent].append(parts[i])
    order = [""]  # directory entry order: root first, then breadth first
    for path in order:
        if path in storages:
            kids = sorted(storages[path], key=lambda n: (len(n), n.upper()))
            storages[path] = kids
            order.extend(f"{path}/{k}" if path else k for k in kids)
    index = {p: i for i, p in enumerate(order)}

    mini = bytearray()
    minifat: list[int] = []
    big: list[tuple[str, bytes]] = []
    start: dict[str, int] = {}
    for path in order[1:]:
        if path in storages:
            continue
        data = streams[path]
        if len(data) >= _CUTOFF:
            big.append((path, data))
            continue
        if not data:
            start[path] = _END
            continue
        first = len(minifat)
        n = -(-len(data) // _MINI)
        minifat.extend(range(first + 1, first + n))
        minifat.append(_END)
        start[path] = first
        mini += data + bytes(n * _MINI - len(data))

    sectors: list[bytes] = []
    fat: list[int] = []

    def put(data: bytes) -> int:
        if not data:
            return _END
        first = len(sectors)
        n = -(-len(data) // _SECTOR)
        for k in range(n):
            sectors.append(data[k * _SECTOR : (k + 1) * _SECTOR].ljust(_SECTOR, b"\x00"))
            fat.append(first + k + 1 if k < n - 1 else _END)
        return first

    for path, data in big:
        start[path] = put(data)
    mini_start = put(bytes(mini))
    minifat_bytes = b"".join(struct.pack("<I", v) for v in minifat)
    if minifat_bytes:
        minifat_bytes += struct.pack("<I", _FREE) * (-(len(minifat_bytes) // 4) % 128)
    minifat_start = put(minifat_bytes)
    minifat_count = -(-len(minifat_bytes) // _SECTOR)

    entries = []
    for path in order:
        name = path.rsplit("/", 1)[-1] if path else "Root Entry"
        encoded = name.encode("utf-16-le") + b"\x00\x00"
        if path == "":
            kind, first, size = 5, mini_start, len(mini)
        elif path in storages:
            kind, first, size = 1, 0, 0
        else:
            kind, first, size = 2, start[path], len(streams[path])
        child = _NONE
        if storages.get(path):
            kid = storages[path][0]
            child = index[f"{path}/{kid}" if path else kid]
        right = _NONE
        if path:
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            siblings = storages[parent]
            pos = siblings.index(name)
            if pos + 1 < len(siblings):
                nxt = siblings[pos + 1]
                right = index[f"{parent}/{nxt}" if parent else nxt]
        entries.append(
            encoded.ljust(64, b"\x00")
            + struct.pack("<HBB", len(encoded), kind, 1)
            + struct.pack("<III", _NONE, right, child)
            + bytes(16 + 4 + 16)
            + struct.pack("<IQ", first, size)
        )
    directory = b"".join(entries)
    directory += bytes(-len(directory) % _SECTOR)
    dir_start = put(directory)

    # FAT sectors: enough for every sector including themselves
    nfat = 1
    while (len(sectors) + nfat) > nfat * 128:
        nfat += 1
    fat_first = len(sectors)
    fat.extend([_FATSECT] * nfat)
    fat.extend([_FREE] * (nfat * 128 - len(fat)))
    table = b"".join(struct.pack("<I", v) for v in fat)
    for k in range(nfat):
        sectors.append(table[k * _SECTOR : (k + 1) * _SECTOR])
    assert nfat <= 109
    difat = [fat_first + k for k in range(nfat)] + [_FREE] * (109 - nfat)

    header = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(16)
        + struct.pack("<HHHHH", 0x003E, 0x0003, 0xFFFE, 9, 6) + bytes(6)
        + struct.pack("<IIIIIIIII", 0, nfat, dir_start, 0, _CUTOFF,
                      minifat_start if minifat_count else _END, minifat_count, _END, 0)
        + b"".join(struct.pack("<I", v) for v in difat)
    )  # fmt: skip
    assert len(header) == _SECTOR
    return header + b"".join(sectors)


# ---- Word 97 -------------------------------------------------------------------------------


def doc_bytes(pieces: tuple[str, ...] = ("Patient: Jane Testperson\r",
                                         "DOB 01/02/1960, MRN 12345678 \u2013 caf\u00e9\r"),
              nfib: int = 0x00C1, encrypted: bool = False,
              objects: Mapping[str, bytes] | None = None) -> bytes:
    """A Word 97 document whose text is in ``pieces``: even pieces stored as 8-bit (cp1252)
    text, odd ones as UTF-16, as Word does after edits; ``objects`` adds ObjectPool streams."""
    text_at = 0x800
    body = bytearray()
    cps = [0]
    pcds = []
    for i, piece in enumerate(pieces):
        offset = text_at + len(body)
        if i % 2 == 0:
            body += piece.encode("cp1252")
            fc = (offset * 2) | 0x40000000
        else:
            if offset % 2:
                body += b"\x00"
                offset += 1
            body += piece.encode("utf-16-le")
            fc = offset
        cps.append(cps[-1] + len(piece))
        pcds.append(struct.pack("<HIH", 0, fc, 0))
    plc = b"".join(struct.pack("<I", cp) for cp in cps) + b"".join(pcds)
    clx = b"\x01" + struct.pack("<h", 2) + b"\x00\x00" + b"\x02" + struct.pack("<I", len(plc)) + plc
    fib = bytearray(text_at)
    flags = 0x0200 | (0x0100 if encrypted else 0)
    struct.pack_into("<HHHH", fib, 0, 0xA5EC, nfib, 0, 0)
    struct.pack_into("<H", fib, 0x0A, flags)
    struct.pack_into("<H", fib, 32, 14)
    struct.pack_into("<H", fib, 62, 22)
    struct.pack_into("<I", fib, 0x4C, cps[-1])  # ccpText
    struct.pack_into("<H", fib, 152, 0x5D)
    struct.pack_into("<II", fib, 0x01A2, 0, len(clx))
    streams = {"WordDocument": bytes(fib) + bytes(body), "1Table": clx}
    for path, data in (objects or {}).items():
        streams[f"ObjectPool/{path}"] = data
    return compound_file(streams)


def ole10_native(label: str, data: bytes) -> bytes:
    """An "\\x01Ole10Native" stream: a file embedded with Windows' packager."""
    name = label.encode("cp1252") + b"\x00"
    path = b"C:\\tmp\\" + name
    body = (struct.pack("<H", 2) + name + path + struct.pack("<I", 0x00030000)
            + struct.pack("<I", len(path)) + path + struct.pack("<I", len(data)) + data)
    return struct.pack("<I", len(body)) + body


# ---- PowerPoint 97 -------------------------------------------------------------------------


def ppt_bytes(lines: tuple[str, ...] = ("Case review", "Patient: Jane Testperson")) -> bytes:
    def rec(ver_inst: int, rtype: int, body: bytes) -> bytes:
        return struct.pack("<HHI", ver_inst, rtype, len(body)) + body

    atoms = rec(0, 0x0FA0, lines[0].encode("utf-16-le")) + b"".join(
        rec(0, 0x0FA8, line.encode("cp1252")) for line in lines[1:])
    document = rec(0x000F, 0x03E8, rec(0, 0x03E9, bytes(40)) + rec(0x000F, 0x0FF0, atoms))
    return compound_file({"PowerPoint Document": document, "Current User": bytes(20)})


# ---- Excel 97 ------------------------------------------------------------------------------


def xls_bytes() -> bytes:
    import xlwt  # type: ignore[import-untyped]

    book = xlwt.Workbook()
    sheet = book.add_sheet("Patients")
    for c, head in enumerate(("Name", "DOB", "MRN", "Balance")):
        sheet.write(0, c, head)
    date = xlwt.easyxf(num_format_str="MM/DD/YYYY")
    sheet.write(1, 0, "Jane Testperson")
    sheet.write(1, 1, datetime.date(1960, 1, 2), date)
    sheet.write(1, 2, 12345678)
    sheet.write(1, 3, 12.5)
    book.add_sheet("Empty")
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


# ---- Outlook .msg --------------------------------------------------------------------------


def _props(prefix: str, values: Mapping[int, str | bytes]) -> dict[str, bytes]:
    out = {}
    for tag, value in values.items():
        if isinstance(value, bytes):
            out[f"{prefix}__substg1.0_{tag:04X}0102"] = value
        else:
            out[f"{prefix}__substg1.0_{tag:04X}001F"] = value.encode("utf-16-le")
    return out


def msg_bytes(attachment: bytes = b"name,dob\nJane Testperson,01/02/1960\n",
              nested: bool = True, html_only: bool = False, rtf_only: bool = False) -> bytes:
    """An Outlook item: subject, names, a body, a CSV attachment and an attached item."""
    streams: dict[str, bytes] = {"__properties_version1.0": bytes(32)}
    body: dict[int, str | bytes] = {0x1000: "Referral for Patient: Jane Testperson, DOB 01/02/1960"}
    if html_only:
        body = {0x1013: b"<html><body><p>Patient: Jane Testperson</p>"
                        b"<p>MRN 12345678</p></body></html>"}
    elif rtf_only:
        from compressed_rtf import compress  # type: ignore[import-untyped]

        body = {0x1009: compress(b"{\\rtf1\\ansi Patient: Jane Testperson\\par MRN 12345678}")}
    streams |= _props("", {0x0037: "Referral Testperson", 0x0C1A: "Dr Alice Example",
                           0x0E04: "Bob Receiver", **body})
    streams |= _props("__recip_version1.0_#00000000/", {0x3001: "Carol Recipient"})
    streams["__recip_version1.0_#00000000/__properties_version1.0"] = bytes(8)
    streams |= _props("__attach_version1.0_#00000000/",
                      {0x3707: "patients.csv", 0x370E: "text/csv", 0x3701: attachment})
    streams["__attach_version1.0_#00000000/__properties_version1.0"] = bytes(8)
    if nested:
        inner = "__attach_version1.0_#00000001/__substg1.0_3701000D/"
        streams["__attach_version1.0_#00000001/__properties_version1.0"] = bytes(8)
        streams |= _props("__attach_version1.0_#00000001/", {0x3001: "Earlier referral"})
        streams[inner + "__properties_version1.0"] = bytes(24)
        streams |= _props(inner, {0x0037: "Lab results", 0x1000: "HbA1c 9.1% for MRN 87654321"})
    return compound_file(streams)
