"""Bytes to text: charsets, HTML to visible text, iCalendar/vCard unfolding, RTF."""

from __future__ import annotations

import codecs
import html
import re
from collections.abc import Callable

# Codecs Python accepts for ``bytes.decode`` that are no MIME charset, some of them slow
# (punycode is quadratic) or meaningless for mail.
_NOT_CHARSETS = frozenset(
    {"punycode", "idna", "raw-unicode-escape", "unicode-escape", "undefined", "mbcs", "oem"}
)
_ALIASES = {
    "": "utf-8",
    "us-ascii": "utf-8",  # 8-bit text labelled ASCII is almost always UTF-8 in practice
    "ascii": "utf-8",
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
    "iso-8859-1": "cp1252",  # what mail clients mean by it (WHATWG does the same)
    "latin1": "cp1252",
    "latin-1": "cp1252",
}
_GARBAGE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")
_SAMPLE = 65536


def garbage_ratio(text: str) -> float:
    """Share of replacement and control characters in (a sample of) ``text``."""
    sample = text[:_SAMPLE]
    if not sample:
        return 0.0
    return len(_GARBAGE.findall(sample)) / len(sample)


def _codec(charset: str | None) -> str | None:
    """The Python codec name for a MIME charset, or None when unknown."""
    name = (charset or "").strip().strip("\"'").lower()
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_text(data: bytes, charset: str | None) -> tuple[str, bool]:
    """Decode a text part; never fails.

    Returns the text and whether the charset was unknown *and* the result mostly garbage
    (the caller records that as "unsupported_charset").
    """
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", "replace"), False
    if data[:3] == b"\xef\xbb\xbf":
        return data[3:].decode("utf-8", "replace"), False
    codec = _codec(charset)
    if codec is None:
        try:
            return data.decode("utf-8"), False
        except UnicodeDecodeError:
            text = data.decode("utf-8", "replace")
            return text, garbage_ratio(text) > 0.3
    try:
        return data.decode(codec), False
    except UnicodeDecodeError:
        pass
    except Exception:  # a broken codec must not stop the scan
        codec = "utf-8"
    for fallback in ("utf-8", "cp1252"):
        if fallback != codec:
            try:
                return data.decode(fallback), False
            except UnicodeDecodeError:
                pass
    try:
        return data.decode(codec, "replace"), False
    except Exception:
        return data.decode("latin-1"), False


def looks_like_text(data: bytes) -> bool:
    """A cheap sniff for undeclared text (CSV, HL7, logs sent as application/octet-stream)."""
    head = data[:8192]
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with a byte-order mark
        return True
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        if e.start >= len(head) - 4:  # a character cut at the sample's end
            return True
    controls = sum(1 for b in head if b < 9 or 13 < b < 32 or b == 127)
    return controls * 20 < len(head)


# HTML to visible text with one tokenizing regex instead of a tree: linear in the input whatever
# its shape. (html.parser is quadratic on inputs such as "</" * 100_000 and runs at ~1.5 MB/s;
# building an HTML5 tree, as lexbor or html5lib do, is quadratic in nesting depth.)
_TOKEN = re.compile(
    r"""<(?:!--.*?(?:-->|\Z)"""  # comment, unclosed ones run to the end as in a browser
    r"""|[!?][^>]*>?"""  # doctype, CDATA, processing instruction
    r"""|(/?)([a-zA-Z][a-zA-Z0-9:_-]*)((?:[^>"']+|"[^"]*"|'[^']*')*)>?)""",
    re.S,
)
_ALT = re.compile(r"""\b(?:alt|title)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_OTHER_SPACE = (
    "\n", "\t", "\r", "\f", "\v", "\x85", "\xa0", "\u1680", "\u2000", "\u2001", "\u2002",
    "\u2003", "\u2004", "\u2005", "\u2006", "\u2007", "\u2008", "\u2009", "\u200a",
    "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
)  # fmt: skip
# Not scanned: code and styling (noise). Everything else a client might render is kept, even
# text in <head> (a browser moves it into the body) and comments are the only other omission.
_RAW_TEXT = frozenset({"script", "style"})
_CELL = frozenset({"td", "th"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "caption", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody",
        "tfoot", "thead", "title", "tr", "ul",
    }
)  # fmt: skip
_END_TAGS: dict[str, re.Pattern[str]] = {
    name: re.compile(rf"</{name}\s*>", re.I) for name in _RAW_TEXT
}


def _squeeze(text: str, old: str, new: str) -> str:
    """Replace every run of ``old`` by ``new`` with C-speed str methods (a regex is ~20x slower
    on text with many short runs, such as the single spaces between words)."""
    while old + old in text:
        text = text.replace(old + old, old)
    return text.replace(old, new) if old != new else text


def _visible(text: str) -> str:
    """Text between tags: entities decoded, each run of white space one space (as rendered)."""
    if "&" in text:
        text = html.unescape(text)
    for ch in _OTHER_SPACE:
        if ch in text:
            text = text.replace(ch, " ")
    return _squeeze(text, " ", " ")


def tidy(text: str) -> str:
    """One tab between cells, no blanks around line ends, at most one blank line in a row."""
    text = _squeeze(text, " ", " ").replace(" \t", "\t").replace("\t ", "\t")
    text = _squeeze(text, "\t", "\t")
    for blank_eol in (" \n", "\t\n", "\n ", "\n\t"):
        text = text.replace(blank_eol, "\n")
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def html_to_text(markup: str) -> str:
    """The visible text of an HTML document, table cells separated by tabs, blocks by lines.

    Left out: tags, comments, script and style.
    """
    out: list[str] = []
    pos = 0
    end = len(markup)
    finditer = _TOKEN.finditer
    while pos < end:
        for m in finditer(markup, pos):
            if m.start() > pos:
                out.append(_visible(markup[pos : m.start()]))
            pos = m.end()
            name = m.group(2)
            if name is None:
                continue
            name = name.lower()
            closing = m.group(1)
            if name in _CELL:
                out.append("\t")
            elif name in _BLOCK:
                out.append("\n")
            elif name == "img" and not closing:
                alt = _ALT.search(m.group(3) or "")
                if alt:
                    out.append(" " + _visible(alt.group(1) or alt.group(2) or alt.group(3)) + " ")
            elif name in _RAW_TEXT and not closing:
                close = _END_TAGS[name].search(markup, pos)
                pos = close.end() if close else end
                break  # restart the scan after the skipped element
        else:
            out.append(_visible(markup[pos:]))
            break
    return tidy("".join(out))


_UNFOLD = re.compile(r"\r?\n[ \t]")
_ICS_ESC = re.compile(r"\\([nN,;\\])")


def _ics_unescape(m: re.Match[str]) -> str:
    c = m.group(1)
    return "\n" if c in "nN" else c


def ics_to_text(text: str) -> str:
    """iCalendar / vCard: unfold continuation lines and undo value escapes."""
    return _ICS_ESC.sub(_ics_unescape, _UNFOLD.sub("", text))


def rtf_to_text(data: bytes) -> str:
    """Plain text of an RTF document (striprtf; RTF itself is 7-bit, escapes carry the rest)."""
    from striprtf import striprtf

    strip: Callable[..., str] = striprtf.rtf_to_text
    return strip(data.decode("latin-1"), errors="replace")
