"""Zip, gzip and tar, read with every size checked while decompressing.

Zip members are decompressed here from the raw bytes (``zipfile`` only reads the central
directory), so the output is bounded chunk by chunk whatever the headers declare, and bzip2
members are bounded too (``zipfile`` inflates those without an output limit).
"""

from __future__ import annotations

import bz2
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable

from .budget import Blob, Budget
from .detect import guess_type

Recurse = Callable[[Budget, Blob], None]

_CHUNK = 1 << 20
_ZIP_ENCRYPTED = 0x1
_ZIP_STORED, _ZIP_DEFLATED, _ZIP_BZIP2 = 0, 8, 12


class Corrupt(Exception):
    """The bytes do not form a valid file of the expected format."""


class Encrypted(Exception):
    """The content needs a password."""


class TooLarge(Exception):
    """Decompressing would pass a size limit."""


def member_limit(budget: Budget) -> int:
    return min(budget.limits.max_member, budget.room())


def inflate(data: bytes, wbits: int, limit: int) -> tuple[bytes, bool]:
    """Decompress a zlib/deflate/gzip stream to at most ``limit`` bytes.

    Returns the output and whether the stream was complete; raises TooLarge past the limit.
    Concatenated gzip members (as ``gzip`` writes with appends) are all read.
    """
    out: list[bytes] = []
    total = 0
    d = zlib.decompressobj(wbits)
    pending = data
    while True:
        try:
            piece = d.decompress(pending, _CHUNK)
        except zlib.error as e:
            if out:  # trailing garbage after valid data: keep what we have, say it is incomplete
                return b"".join(out), False
            raise Corrupt(str(e)) from None
        total += len(piece)
        if total > limit:
            raise TooLarge
        if piece:
            out.append(piece)
        pending = d.unconsumed_tail
        if d.eof:
            rest = d.unused_data
            if wbits > 16 and rest[:2] == b"\x1f\x8b":
                d = zlib.decompressobj(wbits)
                pending = rest
                continue
            return b"".join(out), True
        if not piece and not pending:
            return b"".join(out), False


def bunzip(data: bytes, limit: int) -> tuple[bytes, bool]:
    """bzip2 with the same contract as ``inflate``."""
    out: list[bytes] = []
    total = 0
    d = bz2.BZ2Decompressor()
    try:
        piece = d.decompress(data, _CHUNK)
        while True:
            total += len(piece)
            if total > limit:
                raise TooLarge
            out.append(piece)
            if d.eof or d.needs_input:
                return b"".join(out), d.eof
            piece = d.decompress(b"", _CHUNK)
    except (OSError, ValueError) as e:
        raise Corrupt(str(e)) from None


def open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as e:
        raise Corrupt(str(e)) from None


def read_member(data: bytes, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The content of one zip member, decompressed to at most ``limit`` bytes and CRC-checked."""
    if info.flag_bits & _ZIP_ENCRYPTED:
        raise Encrypted
    off = info.header_offset
    if off < 0 or data[off : off + 4] != b"PK\x03\x04":
        raise Corrupt("bad local header")
    name_len, extra_len = struct.unpack("<HH", data[off + 26 : off + 30])
    start = off + 30 + name_len + extra_len
    raw = data[start : start + info.compress_size]
    if info.compress_type == _ZIP_STORED:
        if len(raw) > limit:
            raise TooLarge
        content, complete = raw, len(raw) == info.compress_size
    elif info.compress_type == _ZIP_DEFLATED:
        content, complete = inflate(raw, -15, limit)
    elif info.compress_type == _ZIP_BZIP2:
        content, complete = bunzip(raw, limit)
    else:  # LZMA, Deflate64, PPMd...: not read here
        raise Corrupt(f"compression method {info.compress_type}")
    if not complete or zlib.crc32(content) != info.CRC:
        raise Corrupt("truncated or bad CRC")
    return content


def _member_failed(budget: Budget, where: str, e: Exception) -> None:
    if isinstance(e, Encrypted):
        budget.fail(where, "encrypted")
    elif isinstance(e, TooLarge):
        budget.fail(where, "too_large")
    else:
        budget.fail(where, "corrupt")


def walk_zip(budget: Budget, blob: Blob, zf: zipfile.ZipFile, recurse: Recurse) -> None:
    """Every file in a zip archive, each handed to ``recurse`` one level deeper."""
    index = 0
    for info in zf.infolist():
        if info.is_dir():
            continue
        name = info.filename
        base = f"{blob.base}/inner[{index}]"
        ctype = guess_type(name)
        where = f"{base} {ctype}"
        index += 1
        if not budget.part(where):
            return
        if budget.deep(where, blob.depth + 1):
            record_name(budget, base, name, ctype)
            continue
        try:
            content = read_member(blob.data, info, member_limit(budget))
        except Exception as e:  # any failure is this member's, not the message's
            record_name(budget, base, name, ctype)
            _member_failed(budget, where, e)
            continue
        if not budget.reserve(where, len(content)):
            record_name(budget, base, name, ctype)
            continue
        recurse(budget, Blob(content, base, "attachment", ctype, name, None, blob.depth + 1))


def record_name(budget: Budget, base: str, name: str, ctype: str) -> None:
    """Note an attachment that is not read, so policies still see its type and name."""
    budget.types.append(ctype)
    if name:
        budget.names.append(name)
        budget.text(filename_where(base), "filename", filename_text(name))


def filename_where(base: str) -> str:
    """Where a file name is: "attachment[2]" -> "filename[2]",
    "attachment[3]/inner[1]" -> "attachment[3]/filename[1]"."""
    prefix, _, last = base.rpartition("/")
    label = "filename" + last[last.find("[") :]
    return f"{prefix}/{label}" if prefix else label


def filename_text(name: str) -> str:
    """A file name as scannable words: "Jane_Testperson_DOB.pdf" -> "Jane Testperson DOB.pdf"."""
    return name.replace("_", " ").replace("+", " ")


def gunzip(budget: Budget, blob: Blob, recurse: Recurse) -> None:
    """A gzip file: its one decompressed file, one level deeper."""
    where = f"{blob.base} application/gzip"
    base = f"{blob.base}/inner[0]"
    name = blob.filename
    lower = name.lower()
    if lower.endswith(".tgz"):
        name = name[:-4] + ".tar"
    elif lower.endswith((".gz", ".gzip")):
        name = name.rsplit(".", 1)[0]
    ctype = guess_type(name)
    if not budget.part(f"{base} {ctype}") or budget.deep(f"{base} {ctype}", blob.depth + 1):
        return
    try:
        content, complete = inflate(blob.data, 47, member_limit(budget))
    except TooLarge:
        budget.fail(where, "too_large")
        return
    except Corrupt:
        budget.fail(where, "corrupt")
        return
    if not complete:
        budget.fail(where, "corrupt")
    if budget.reserve(where, len(content)):
        recurse(budget, Blob(content, base, "attachment", ctype, name, None, blob.depth + 1))


def walk_tar(budget: Budget, blob: Blob, recurse: Recurse) -> None:
    """Every regular file in an (uncompressed) tar archive, one level deeper."""
    where = f"{blob.base} application/x-tar"
    try:
        tf = tarfile.open(fileobj=io.BytesIO(blob.data), mode="r:")  # noqa: SIM115
    except Exception:
        budget.fail(where, "corrupt")
        return
    with tf:
        _tar_members(budget, blob, tf, where, recurse)


def _tar_members(
    budget: Budget, blob: Blob, tf: tarfile.TarFile, where: str, recurse: Recurse
) -> None:
    index = 0
    while True:
        try:
            member = tf.next()
        except Exception:
            budget.fail(where, "corrupt")
            return
        if member is None:
            return
        if not member.isfile():
            continue
        name = member.name
        base = f"{blob.base}/inner[{index}]"
        ctype = guess_type(name)
        mwhere = f"{base} {ctype}"
        index += 1
        if not budget.part(mwhere):
            return
        if budget.deep(mwhere, blob.depth + 1) or member.size > member_limit(budget):
            if member.size > member_limit(budget):
                budget.fail(mwhere, "too_large")
            record_name(budget, base, name, ctype)
            continue
        try:
            f = tf.extractfile(member)
            content = f.read(member.size) if f is not None else b""
        except Exception:
            record_name(budget, base, name, ctype)
            budget.fail(mwhere, "corrupt")
            continue
        # a slice of bytes already counted: no new expansion to reserve
        recurse(budget, Blob(content, base, "attachment", ctype, name, None, blob.depth + 1))
