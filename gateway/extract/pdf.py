"""PDF text with PDFium (pypdfium2): page text, filled-in form fields, annotations, metadata and
embedded files.

A page that yields (almost) no text but is mostly covered by images is a scan or a fax (a
faxed referral is the classic PHI attachment): nothing can be read from it without OCR, so the
document is recorded as unscannable ("no_text_layer"). Images are looked at only on such pages,
so an ordinary text PDF costs nothing more; a blank or short text-only PDF is not flagged.

PDFium is Chrome's PDF engine: tolerant of damaged files, and several times faster than pypdf
and two orders of magnitude faster than pdfminer.six on text extraction. It is not thread-safe,
so every call into it holds one process-wide lock (the gateway scans in worker processes, so the
lock is uncontended there).
"""

from __future__ import annotations

import ctypes
import re
import threading
import zlib
from typing import Any

import pypdfium2 as pdfium  # type: ignore[import-untyped]
import pypdfium2.raw as pdfium_c  # type: ignore[import-untyped]

from .archive import Recurse, member_limit
from .budget import Blob, Budget
from .detect import guess_type

_PDFIUM = threading.RLock()
_META = ("Title", "Subject", "Keywords")
# A page is a scan when it has fewer than this many non-blank characters of text ...
SCAN_MAX_CHARS = 32
# ... and images cover at least this share of it (a signature or a logo covers 1-3 %; a photo
# of an insurance card on a letter page about 8 %; a faxed page all of it).
SCAN_MIN_COVER = 0.05
_BLANKS = (" ", "\t", "\r", "\n", "\x0c", "\xa0")
_MAX_OBJECTS = 5000  # page objects looked at on one such page (a vector drawing can have more)


def _wide(fn: Any, *args: Any) -> str:
    """Call a PDFium "UTF-16LE into buffer" getter twice: for the size, then for the text."""
    size = int(fn(*args, None, 0))
    if size <= 2:
        return ""
    buf = (pdfium_c.FPDF_WCHAR * (size // 2))()
    fn(*args, buf, size)
    return bytes(buf).decode("utf-16-le", "replace").rstrip("\x00")


def _image_cover(page: Any) -> float:
    """Share of the page's area covered by image objects (directly on the page or inside a Form
    XObject, whose whole bounds then count), overlaps counted twice, capped at 1."""
    raw = page.raw
    left, bottom, right, top = (ctypes.c_float() for _ in range(4))
    box = [ctypes.byref(v) for v in (left, bottom, right, top)]
    width, height = page.get_size()
    page_area = float(width) * float(height)
    if page_area <= 0:
        return 0.0
    covered = 0.0
    count = min(int(pdfium_c.FPDFPage_CountObjects(raw)), _MAX_OBJECTS)
    for i in range(count):
        obj = pdfium_c.FPDFPage_GetObject(raw, i)
        if not obj:
            continue
        kind = pdfium_c.FPDFPageObj_GetType(obj)
        if kind == pdfium_c.FPDF_PAGEOBJ_FORM:
            if not _form_has_image(obj, 3):
                continue
        elif kind != pdfium_c.FPDF_PAGEOBJ_IMAGE:
            continue
        if not pdfium_c.FPDFPageObj_GetBounds(obj, *box):
            continue
        w = min(right.value, width) - max(left.value, 0.0)
        h = min(top.value, height) - max(bottom.value, 0.0)
        if w > 0 and h > 0:
            covered += w * h
    return min(1.0, covered / page_area)


def _form_has_image(form: Any, depth: int) -> bool:
    count = min(int(pdfium_c.FPDFFormObj_CountObjects(form)), _MAX_OBJECTS)
    for i in range(count):
        obj = pdfium_c.FPDFFormObj_GetObject(form, i)
        if not obj:
            continue
        kind = pdfium_c.FPDFPageObj_GetType(obj)
        if kind == pdfium_c.FPDF_PAGEOBJ_IMAGE:
            return True
        if kind == pdfium_c.FPDF_PAGEOBJ_FORM and depth > 1 and _form_has_image(obj, depth - 1):
            return True
    return False


def _is_scanned(page: Any, text: str, notes: list[str]) -> bool:
    """True for a page with (almost) no text whose area is largely images."""
    chars = sum(len(t) - sum(t.count(c) for c in _BLANKS) for t in (text, *notes))
    return chars < SCAN_MAX_CHARS and _image_cover(page) >= SCAN_MIN_COVER


def _annotations(page: Any, form: Any) -> list[str]:
    """Values of filled-in form fields (as "field: value") and the text of comments on a page."""
    found: list[str] = []
    for k in range(int(pdfium_c.FPDFPage_GetAnnotCount(page))):
        annot = pdfium_c.FPDFPage_GetAnnot(page, k)
        if not annot:
            continue
        try:
            widget = pdfium_c.FPDFAnnot_GetSubtype(annot) == pdfium_c.FPDF_ANNOT_WIDGET
            if widget and form is not None:
                value = _wide(pdfium_c.FPDFAnnot_GetFormFieldValue, form, annot)
                if value:
                    name = _wide(pdfium_c.FPDFAnnot_GetFormFieldName, form, annot)
                    found.append(f"{name}: {value}" if name else value)
            elif not widget:
                contents = _wide(pdfium_c.FPDFAnnot_GetStringValue, annot, b"Contents")
                if contents:
                    found.append(contents)
        finally:
            pdfium_c.FPDFPage_CloseAnnot(annot)
    return found


_STREAM = re.compile(rb"stream\r?\n")
_PROBE = 1 << 16


def _inflated_size(data: bytes, limit: int) -> int:
    """Bytes PDFium would inflate for the document's non-image Flate streams, counted with a
    bounded decompressor and stopped just past ``limit`` (PDFium itself inflates a stream whole,
    so a 300 KB PDF can otherwise make it allocate gigabytes)."""
    total = 0
    for m in _STREAM.finditer(data):
        start = m.end()
        head = data[max(0, start - 1024) : start]
        if b"/Image" in head[head.rfind(b"obj") :]:
            continue  # images are not decoded to extract text
        d = zlib.decompressobj()
        pos = start
        try:
            while not d.eof and pos < len(data):
                chunk = data[pos : pos + _PROBE]
                pos += len(chunk)
                out = d.decompress(chunk, limit - total + 1)
                total += len(out)
                while d.unconsumed_tail and total <= limit:
                    out = d.decompress(d.unconsumed_tail, limit - total + 1)
                    total += len(out)
                if total > limit:
                    return total
        except zlib.error:
            continue  # not Flate (or encrypted): nothing PDFium inflates here
    return total


def read_pdf(budget: Budget, blob: Blob, where: str, recurse: Recurse) -> None:
    """Text of every page (until the clock or the text budget runs out), then embedded files."""
    limit = member_limit(budget)
    inflated = _inflated_size(blob.data, limit)
    if inflated > limit or not budget.reserve(where, inflated):
        budget.fail(where, "too_large")
        return
    texts: list[str] = []
    embedded: list[tuple[int, str, bytes]] = []
    with _PDFIUM:
        try:
            doc = pdfium.PdfDocument(blob.data)
        except pdfium.PdfiumError as e:
            encrypted = getattr(e, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD
            budget.fail(where, "encrypted" if encrypted else "corrupt")
            return
        try:
            _read_document(budget, doc, where, texts, embedded)
        except Exception:
            budget.fail(where, "corrupt")
        finally:
            doc.close()
    budget.text(where, blob.kind, "\n".join(texts))
    for index, name, content in embedded:
        base = f"{blob.base}/inner[{index}]"
        ctype = guess_type(name)
        inner = f"{base} {ctype}"
        if not budget.part(inner):
            return
        if budget.deep(inner, blob.depth + 1) or not budget.reserve(inner, len(content)):
            continue
        recurse(budget, Blob(content, base, "attachment", ctype, name, None, blob.depth + 1))


def _read_document(
    budget: Budget,
    doc: Any,
    where: str,
    texts: list[str],
    embedded: list[tuple[int, str, bytes]],
) -> None:
    meta = doc.get_metadata_dict(skip_empty=True)
    texts.extend(str(meta[k]) for k in _META if k in meta)
    form = doc.formenv.raw if doc.init_forms() else None
    size = 0
    scanned = False
    for i in range(len(doc)):
        if budget.expired():
            return
        page = doc[i]
        try:
            textpage = page.get_textpage()
            try:
                text = str(textpage.get_text_range())
            finally:
                textpage.close()
            notes = _annotations(page, form)
            texts.append(text)
            texts.extend(notes)
            if not scanned and _is_scanned(page, text, notes):
                scanned = True
                budget.fail(where, "no_text_layer")
        finally:
            page.close()
        size += len(text)
        if size > budget.text_left:  # budget.text cuts it and records the cut
            return
    for j in range(int(doc.count_attachments())):
        attachment = doc.get_attachment(j)
        name = str(attachment.get_name())
        size_out = ctypes.c_ulong()
        pdfium_c.FPDFAttachment_GetFile(attachment, None, 0, ctypes.byref(size_out))
        inner = f"{where.rpartition(' ')[0]}/inner[{j}] {guess_type(name)}"
        if size_out.value > member_limit(budget):
            budget.fail(inner, "too_large")
            continue
        try:
            embedded.append((j, name, bytes(attachment.get_data())))
        except pdfium.PdfiumError:
            budget.fail(inner, "corrupt")
