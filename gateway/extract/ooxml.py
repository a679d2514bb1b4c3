"""Office documents (DOCX, XLSX, PPTX and OpenDocument), read straight from their XML.

The XML parts are streamed through expat with a few callbacks instead of building the object
models of python-docx / openpyxl / python-pptx: several times faster, every zip member goes
through the bounded reader in ``archive``, entity declarations are refused (no billion laughs),
and the text those libraries leave out (headers, footers, footnotes, comments, tracked deletions,
speaker notes, embedded documents) is easy to include.
"""

from __future__ import annotations

import contextlib
import datetime
import posixpath
import re
import zipfile
from collections.abc import Callable
from xml.parsers import expat

from .archive import (
    Corrupt,
    Encrypted,
    Recurse,
    TooLarge,
    member_limit,
    read_member,
)
from .budget import Blob, Budget
from .detect import guess_type
from .text import tidy

_FEED = 1 << 20
_CELLS = frozenset({"tc", "table-cell"})
_PARAGRAPHS = frozenset({"p", "h"})


class _Full(Exception):
    """The text budget is spent: stop parsing, keep what was collected."""


def _refuse_entities(*_args: object) -> None:
    raise Corrupt("entity declaration in an Office XML part")


def _local(name: str) -> str:
    return name[name.rfind(" ") + 1 :]


def _parse(
    budget: Budget,
    data: bytes,
    start: Callable[[str, dict[str, str]], None],
    end: Callable[[str], None],
    chars: Callable[[str], None],
) -> bool:
    """Stream ``data`` through expat; False when stopped early by the clock or the text budget."""
    p = expat.ParserCreate(namespace_separator=" ")
    p.buffer_text = True
    p.buffer_size = 65536
    p.StartElementHandler = start
    p.EndElementHandler = end
    p.CharacterDataHandler = chars
    p.EntityDeclHandler = _refuse_entities
    try:
        for off in range(0, len(data), _FEED):
            if budget.expired():
                return False
            p.Parse(data[off : off + _FEED], False)
        p.Parse(b"", True)
    except _Full:
        return False
    except expat.ExpatError as e:
        raise Corrupt(str(e)) from None
    return True


class _Text:
    """Text of chosen elements, with separators at chosen element boundaries."""

    def __init__(
        self,
        limit: int,
        text_in: frozenset[str] | None,
        starts: dict[str, str],
        ends: dict[str, str],
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.out: list[str] = []
        self.size = 0
        self.limit = limit
        self.text_in = text_in
        self.starts = starts
        self.ends = ends
        self.skip = skip
        self.skipping = 0
        self.capture = 1 if text_in is None else 0
        self.cells = 0  # inside a table cell a paragraph ends with a space, not a line

    def start(self, name: str, _attrs: dict[str, str]) -> None:
        local = _local(name)
        if local in self.skip:
            self.skipping += 1
        if self.skipping:
            return
        if self.text_in is not None and local in self.text_in:
            self.capture += 1
        if local in _CELLS:
            self.cells += 1
        sep = self.starts.get(local)
        if sep:
            self.out.append(sep)

    def end(self, name: str) -> None:
        local = _local(name)
        if self.skipping:
            if local in self.skip:
                self.skipping -= 1
            return
        if self.text_in is not None and local in self.text_in:
            self.capture -= 1
        if local in _CELLS:
            self.cells -= 1
        sep = self.ends.get(local)
        if sep:
            self.out.append(" " if self.cells and local in _PARAGRAPHS else sep)

    def chars(self, text: str) -> None:
        if self.capture > 0 and not self.skipping:
            self.out.append(text)
            self.size += len(text)
            if self.size > self.limit:
                raise _Full

    def text(self) -> str:
        return tidy("".join(self.out))


class Package:
    """An Office zip package: its members by name, read through the bounded reader."""

    def __init__(self, budget: Budget, blob: Blob, zf: zipfile.ZipFile, where: str) -> None:
        self.budget = budget
        self.blob = blob
        self.where = where
        self.infos = {i.filename: i for i in zf.infolist()}

    def read(self, name: str) -> bytes | None:
        """A member's bytes; None when absent. Raises Corrupt/Encrypted/TooLarge."""
        info = self.infos.get(name)
        if info is None:
            return None
        data = read_member(self.blob.data, info, member_limit(self.budget))
        if not self.budget.reserve(self.where, len(data)):
            raise TooLarge
        return data

    def text(
        self,
        name: str,
        text_in: frozenset[str] | None,
        starts: dict[str, str],
        ends: dict[str, str],
        skip: frozenset[str] = frozenset(),
    ) -> str:
        data = self.read(name)
        if not data:
            return ""
        collector = _Text(self.budget.text_left, text_in, starts, ends, skip)
        _parse(self.budget, data, collector.start, collector.end, collector.chars)
        return collector.text()

    def rels(self, part: str) -> dict[str, tuple[str, str]]:
        """Relationships of ``part``: id -> (type, target member name)."""
        folder, _, file = part.rpartition("/")
        data = self.read(f"{folder}/_rels/{file}.rels" if folder else f"_rels/{file}.rels")
        found: dict[str, tuple[str, str]] = {}
        if not data:
            return found

        def start(name: str, attrs: dict[str, str]) -> None:
            if _local(name) == "Relationship" and attrs.get("TargetMode") != "External":
                target = attrs.get("Target", "")
                if target.startswith("/"):
                    resolved = target.lstrip("/")
                else:
                    resolved = posixpath.normpath(posixpath.join(folder, target))
                found[attrs.get("Id", "")] = (attrs.get("Type", ""), resolved)

        _parse(self.budget, data, start, lambda _n: None, lambda _t: None)
        return found

    def main_part(self, default: str) -> str:
        for rtype, target in self.rels("").values():
            if rtype.endswith("/officeDocument") and target in self.infos:
                return target
        return default

    def names(self, pattern: str) -> list[str]:
        """Member names matching ``pattern``, in natural order (slide2 before slide10)."""
        rx = re.compile(pattern)
        found = [n for n in self.infos if rx.fullmatch(n)]
        return sorted(found, key=_natural)


def _natural(name: str) -> list[tuple[int, str]]:
    return [(int(t), "") if t.isdigit() else (0, t) for t in re.split(r"(\d+)", name)]


def kind_of(zf: zipfile.ZipFile) -> str:
    """Which Office format a zip holds: docx, xlsx, pptx, odf, or zip (a plain archive)."""
    names = set(zf.namelist())
    if "[Content_Types].xml" in names:
        if any(n.startswith("word/") for n in names):
            return "docx"
        if any(n.startswith("xl/") for n in names):
            return "xlsx"
        if any(n.startswith("ppt/") for n in names):
            return "pptx"
    if "content.xml" in names and "mimetype" in names:
        return "odf"
    return "zip"


_CORE_SKIP = frozenset(
    {"created", "modified", "lastPrinted", "revision", "creator", "lastModifiedBy"}
)
_WORD_STARTS = {"tab": "\t", "br": "\n", "cr": "\n", "noBreakHyphen": "-"}
_WORD_ENDS = {"p": "\n", "tc": "\t", "tr": "\n"}
_WORD_TEXT = frozenset({"t", "delText"})
_FALLBACK = frozenset({"Fallback"})  # mc:AlternateContent repeats its text in the fallback


def _core(pkg: Package) -> str:
    return pkg.text(
        "docProps/core.xml",
        None,
        {},
        {"title": "\n", "subject": "\n", "description": "\n", "keywords": "\n", "category": "\n"},
        _CORE_SKIP,
    )


def docx(pkg: Package) -> str:
    main = pkg.main_part("word/document.xml")
    folder = main.rpartition("/")[0]
    parts = [main, *pkg.names(rf"{re.escape(folder)}/(header|footer)\d*\.xml")]
    parts += [f"{folder}/{n}.xml" for n in ("footnotes", "endnotes", "comments")]
    texts = [pkg.text(p, _WORD_TEXT, _WORD_STARTS, _WORD_ENDS, _FALLBACK) for p in parts]
    texts.append(_core(pkg))
    return "\n".join(t for t in texts if t)


_SLIDE_TEXT = frozenset({"t", "text"})
_SLIDE_STARTS = {"br": "\n", "tab": "\t"}
_SLIDE_ENDS = {"p": "\n", "tc": "\t", "tr": "\n"}


def pptx(pkg: Package) -> str:
    parts = pkg.names(r"ppt/slides/slide\d+\.xml")
    parts += pkg.names(r"ppt/notesSlides/notesSlide\d+\.xml")
    parts += pkg.names(r"ppt/comments/[^/]+\.xml")
    texts = [pkg.text(p, _SLIDE_TEXT, _SLIDE_STARTS, _SLIDE_ENDS, _FALLBACK) for p in parts]
    texts.append(_core(pkg))
    return "\n".join(t for t in texts if t)


_ODF_STARTS = {"tab": "\t", "line-break": "\n", "s": " "}
_ODF_ENDS = {"p": "\n", "h": "\n", "table-cell": "\t", "table-row": "\n", "list-item": "\n"}
_ODF_SKIP = frozenset({"annotation-end", "tracked-changes"})


def odf(pkg: Package) -> str:
    return pkg.text("content.xml", None, _ODF_STARTS, _ODF_ENDS, _ODF_SKIP)


# ---- XLSX ------------------------------------------------------------------------------------

_DATE_IDS = frozenset({14, 15, 16, 17, 22, *range(27, 37), *range(50, 59)})
_FMT_NOISE = re.compile(r'"[^"]*"|\[[^\]]*\]|\\.|_.|\*.')
_MAX_GAP = 16


def _is_date_format(code: str) -> bool:
    code = _FMT_NOISE.sub("", code).lower().split(";", 1)[0]
    return "y" in code or "d" in code or ("m" in code and "h" not in code and "s" not in code)


def _serial_date(value: float, date1904: bool) -> str:
    days = int(value)
    if date1904:
        day = datetime.date(1904, 1, 1) + datetime.timedelta(days=days)
    elif days < 60:  # Excel's 1900 leap-year bug shifts every serial from 61 on by one
        day = datetime.date(1899, 12, 31) + datetime.timedelta(days=days)
    else:
        day = datetime.date(1899, 12, 30) + datetime.timedelta(days=days)
    text = day.strftime("%m/%d/%Y")
    frac = value - days
    if frac > 1e-9:
        minutes = round(frac * 1440)
        text += f" {minutes // 60:02d}:{minutes % 60:02d}"
    return text


def _number(value: str, is_date: bool, date1904: bool) -> str:
    try:
        f = float(value)
    except ValueError:
        return value
    if is_date and 0 < f < 2958466:
        return _serial_date(f, date1904)
    if f.is_integer() and abs(f) < 1e16:
        return str(int(f))
    return repr(f)


def _column(ref: str) -> int:
    col = 0
    for ch in ref:
        if "A" <= ch <= "Z":
            col = col * 26 + ord(ch) - 64
        else:
            break
    return col - 1


class _Strings:
    """sharedStrings.xml: one string per <si>, phonetic runs (<rPh>) left out."""

    def __init__(self, limit: int) -> None:
        self.items: list[str] = []
        self.cur: list[str] = []
        self.capture = 0
        self.skip = 0
        self.size = 0
        self.limit = limit

    def start(self, name: str, _attrs: dict[str, str]) -> None:
        local = _local(name)
        if local == "t":
            self.capture += 1
        elif local == "rPh":
            self.skip += 1
        elif local == "si":
            self.cur = []

    def end(self, name: str) -> None:
        local = _local(name)
        if local == "t":
            self.capture -= 1
        elif local == "rPh":
            self.skip -= 1
        elif local == "si":
            self.items.append("".join(self.cur))

    def chars(self, text: str) -> None:
        if self.capture > 0 and not self.skip:
            self.cur.append(text)
            self.size += len(text)
            if self.size > self.limit:
                raise _Full


class _Styles:
    """styles.xml: which cell styles (``s`` indexes into cellXfs) show numbers as dates."""

    def __init__(self) -> None:
        self.custom: dict[int, str] = {}
        self.xf_formats: list[int] = []
        self.in_xfs = 0

    def start(self, name: str, attrs: dict[str, str]) -> None:
        local = _local(name)
        if local == "numFmt":
            with contextlib.suppress(ValueError):
                self.custom[int(attrs.get("numFmtId", "-1"))] = attrs.get("formatCode", "")
        elif local == "cellXfs":
            self.in_xfs += 1
        elif local == "xf" and self.in_xfs:
            try:
                self.xf_formats.append(int(attrs.get("numFmtId", "0")))
            except ValueError:
                self.xf_formats.append(0)

    def end(self, name: str) -> None:
        if _local(name) == "cellXfs":
            self.in_xfs -= 1

    def date_styles(self) -> frozenset[int]:
        dates = set()
        for i, fmt in enumerate(self.xf_formats):
            code = self.custom.get(fmt)
            if (code is not None and _is_date_format(code)) or (code is None and fmt in _DATE_IDS):
                dates.add(i)
        return frozenset(dates)


class _Sheet:
    """A worksheet, row by row: cells separated by tabs, rows by newlines.

    When the first row looks like a header (all text), every later cell is written as
    "Header: value", so a value stays next to its label ("DOB: 01/02/1960") for the detectors.
    """

    def __init__(
        self, strings: list[str], dates: frozenset[int], date1904: bool, limit: int
    ) -> None:
        self.strings = strings
        self.dates = dates
        self.date1904 = date1904
        self.limit = limit
        self.size = 0
        self.out: list[str] = []
        self.row: list[tuple[int, str]] = []
        self.row_all_text = True
        self.header: dict[int, str] | None = None
        self.first_row = True
        self.cell_type = ""
        self.cell_style = 0
        self.cell_col = -1
        self.value: list[str] = []
        self.capture = 0

    def start(self, name: str, attrs: dict[str, str]) -> None:
        local = _local(name)
        if local == "c":
            self.cell_type = attrs.get("t", "n")
            try:
                self.cell_style = int(attrs.get("s", "0"))
            except ValueError:
                self.cell_style = 0
            ref = attrs.get("r")
            prev = self.row[-1][0] if self.row else -1
            col = _column(ref) if ref else prev + 1
            self.cell_col = col if col > prev else prev + 1
            self.value = []
        elif local in ("v", "t"):
            self.capture += 1
        elif local == "row":
            self.row = []
            self.row_all_text = True

    def end(self, name: str) -> None:
        local = _local(name)
        if local in ("v", "t"):
            self.capture -= 1
        elif local == "c":
            self._cell()
        elif local == "row":
            self._row()

    def chars(self, text: str) -> None:
        if self.capture > 0:
            self.value.append(text)

    def _cell(self) -> None:
        raw = "".join(self.value)
        if not raw:
            return
        t = self.cell_type
        if t == "s":
            try:
                value = self.strings[int(raw)]
            except (ValueError, IndexError):
                value = ""
        elif t == "b":
            value = "TRUE" if raw.strip() == "1" else "FALSE"
        elif t in ("str", "inlineStr", "e", "d"):
            value = raw
        else:
            value = _number(raw, self.cell_style in self.dates, self.date1904)
        if value:
            self.row.append((self.cell_col, value))
            if t not in ("s", "str", "inlineStr") or len(value) > 64:
                self.row_all_text = False

    def _row(self) -> None:
        if not self.row:
            return
        if self.first_row:
            self.first_row = False
            if len(self.row) >= 2 and self.row_all_text:
                self.header = dict(self.row)
        elif self.header:
            self.row = [
                (c, f"{self.header[c]}: {v}" if c in self.header else v) for c, v in self.row
            ]
        parts: list[str] = []
        prev = self.row[0][0]
        for col, value in self.row:
            if parts:
                parts.append("\t" * min(col - prev, _MAX_GAP))
            parts.append(value)
            prev = col
        parts.append("\n")
        line = "".join(parts)
        self.out.append(line)
        self.size += len(line)
        if self.size > self.limit:
            raise _Full


def xlsx(pkg: Package) -> str:
    main = pkg.main_part("xl/workbook.xml")
    rels = pkg.rels(main)
    sheets: list[tuple[str, str]] = []
    flags = {"date1904": False}

    def wb_start(name: str, attrs: dict[str, str]) -> None:
        local = _local(name)
        if local == "sheet":
            rid = next((v for k, v in attrs.items() if _local(k) == "id"), "")
            target = rels.get(rid, ("", ""))[1]
            if target:
                sheets.append((attrs.get("name", ""), target))
        elif local == "workbookPr":
            flags["date1904"] = attrs.get("date1904", "0").lower() in ("1", "true")

    data = pkg.read(main)
    if data is None:
        raise Corrupt("no workbook")
    _parse(pkg.budget, data, wb_start, lambda _n: None, lambda _t: None)

    strings = _Strings(pkg.budget.text_left)
    styles = _Styles()
    for rtype, target in rels.values():
        if rtype.endswith("/sharedStrings"):
            content = pkg.read(target)
            if content:
                _parse(pkg.budget, content, strings.start, strings.end, strings.chars)
        elif rtype.endswith("/styles"):
            content = pkg.read(target)
            if content:
                _parse(pkg.budget, content, styles.start, styles.end, lambda _t: None)
    dates = styles.date_styles()

    texts: list[str] = []
    for sheet_name, target in sheets:
        content = pkg.read(target)
        if not content:
            continue
        sheet = _Sheet(strings.items, dates, flags["date1904"], pkg.budget.text_left)
        _parse(pkg.budget, content, sheet.start, sheet.end, sheet.chars)
        texts.append(f"[{sheet_name}]\n" + "".join(sheet.out))
    comment_parts = pkg.names(r"xl/comments\d*\.xml")
    texts += [pkg.text(p, frozenset({"t"}), {}, {"comment": "\n"}) for p in comment_parts]
    texts.append(_core(pkg))
    return "\n".join(t for t in texts if t)


_READERS = {"docx": docx, "xlsx": xlsx, "pptx": pptx, "odf": odf}
_EMBEDDED = r"(word|xl|ppt)/embeddings/[^/]+"


def read_office(
    budget: Budget, blob: Blob, zf: zipfile.ZipFile, kind: str, where: str, recurse: Recurse
) -> None:
    """Text of an Office package as one chunk, then its embedded documents one level deeper."""
    pkg = Package(budget, blob, zf, where)
    try:
        text = _READERS[kind](pkg)
    except Encrypted:
        budget.fail(where, "encrypted")
        return
    except TooLarge:
        budget.fail(where, "too_large")
        return
    except Exception:  # malformed XML or package: fail closed for this file only
        budget.fail(where, "corrupt")
        return
    budget.text(where, blob.kind, text)
    for index, name in enumerate(pkg.names(_EMBEDDED) if kind != "odf" else []):
        base = f"{blob.base}/inner[{index}]"
        ctype = guess_type(name)
        inner = f"{base} {ctype}"
        if not budget.part(inner):
            return
        if budget.deep(inner, blob.depth + 1):
            continue
        try:
            content = pkg.read(name)
        except TooLarge:
            budget.fail(inner, "too_large")
            continue
        except Exception:
            budget.fail(inner, "corrupt")
            continue
        if content:
            recurse(budget, Blob(content, base, "attachment", ctype, "", None, blob.depth + 1))
