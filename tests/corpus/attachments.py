"""Attachment builders (CSV, DOCX, XLSX, PDF, ZIP, ICS), byte-for-byte deterministic.

DOCX and XLSX are written with python-docx and openpyxl, PDFs with fpdf2, so the files are the
kind real software produces. Those libraries stamp the current time into zip entries and document
properties; ``_normalise_zip`` rewrites them with a fixed timestamp so a seed always yields the
same bytes.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
from collections.abc import Sequence

FIXED_ZIP_TIME = (2025, 1, 1, 0, 0, 0)


def _normalise_zip(data: bytes, when: dt.datetime) -> bytes:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            blob = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                text = blob.decode("utf-8")
                text = re.sub(
                    r"(<dcterms:(created|modified)[^>]*>)[^<]*(</dcterms:\2>)",
                    lambda m: m.group(1) + stamp + m.group(3),
                    text,
                )
                blob = text.encode("utf-8")
            zi = zipfile.ZipInfo(info.filename, date_time=when.timetuple()[:6])
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o600 << 16
            dst.writestr(zi, blob)
    return out.getvalue()


def csv_bytes(rows: Sequence[Sequence[str]], delimiter: str = ",", bom: bool = False) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\r\n")
    for row in rows:
        writer.writerow(row)
    data = buf.getvalue().encode("utf-8")
    return (b"\xef\xbb\xbf" + data) if bom else data


def docx_bytes(
    title: str,
    paragraphs: Sequence[str],
    table: Sequence[Sequence[str]] | None = None,
    when: dt.datetime | None = None,
    author: str = "",
) -> bytes:
    from docx import Document  # imported lazily: only attachment families need it

    when = when or dt.datetime(*FIXED_ZIP_TIME)
    doc = Document()
    doc.core_properties.author = author
    doc.core_properties.title = ""
    doc.core_properties.created = when
    doc.core_properties.modified = when
    doc.core_properties.last_modified_by = author
    doc.core_properties.revision = 1
    doc.add_heading(title, level=1)
    for para in paragraphs:
        doc.add_paragraph(para)
    if table:
        t = doc.add_table(rows=0, cols=len(table[0]))
        t.style = "Table Grid"
        for row in table:
            cells = t.add_row().cells
            for cell, value in zip(cells, row, strict=True):
                cell.text = value
    buf = io.BytesIO()
    doc.save(buf)
    return _normalise_zip(buf.getvalue(), when)


def xlsx_bytes(
    sheets: Sequence[tuple[str, Sequence[Sequence[object]]]],
    when: dt.datetime | None = None,
    author: str = "",
) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    when = when or dt.datetime(*FIXED_ZIP_TIME)
    wb = Workbook()
    wb.properties.creator = author
    wb.properties.created = when
    wb.properties.modified = when
    first = True
    for name, rows in sheets:
        ws = wb.active if first else wb.create_sheet()
        assert ws is not None
        first = False
        ws.title = name[:31]
        for r, row in enumerate(rows, start=1):
            for c, value in enumerate(row, start=1):
                cell = ws.cell(row=r, column=c, value=value)
                if r == 1:
                    cell.font = Font(bold=True)
    buf = io.BytesIO()
    wb.save(buf)
    return _normalise_zip(buf.getvalue(), when)


def _latin1(text: str) -> str:
    # The PDF core fonts are Latin-1 only; Faker's en_US data is ASCII, so this is a safety net.
    return text.encode("latin-1", "replace").decode("latin-1")


def pdf_bytes(
    title: str,
    paragraphs: Sequence[str],
    table: Sequence[Sequence[str]] | None = None,
    when: dt.datetime | None = None,
    author: str = "",
    header: str = "",
) -> bytes:
    from fpdf import FPDF

    when = when or dt.datetime(*FIXED_ZIP_TIME)
    pdf = FPDF(format="Letter")
    pdf.set_creation_date(when.replace(tzinfo=dt.UTC))
    pdf.set_producer("fpdf2")
    if author:
        pdf.set_author(_latin1(author))
    pdf.set_margins(18, 18, 18)
    pdf.add_page()
    if header:
        pdf.set_font("Helvetica", size=8)
        pdf.multi_cell(0, 4, _latin1(header), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.set_font("Helvetica", style="B", size=14)
    pdf.multi_cell(0, 8, _latin1(title), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", size=10)
    for para in paragraphs:
        pdf.multi_cell(0, 5, _latin1(para), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    if table:
        pdf.set_font("Helvetica", size=8)
        with pdf.table() as t:
            for row in table:
                r = t.row()
                for value in row:
                    r.cell(_latin1(value))
    return bytes(pdf.output())


def zip_bytes(files: Sequence[tuple[str, bytes]], when: dt.datetime | None = None) -> bytes:
    when = when or dt.datetime(*FIXED_ZIP_TIME)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, blob in files:
            zi = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            z.writestr(zi, blob)
    return out.getvalue()


def _ics_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,").replace("\n", "\\n")


def _ics_fold(line: str) -> str:
    out, cur = [], line
    while len(cur.encode("utf-8")) > 75:
        out.append(cur[:74])
        cur = " " + cur[74:]
    out.append(cur)
    return "\r\n".join(out)


def ics_bytes(
    uid: str,
    summary: str,
    description: str,
    location: str,
    start: dt.datetime,
    minutes: int,
    stamp: dt.datetime,
    organizer: str,
) -> bytes:
    end = start + dt.timedelta(minutes=minutes)
    fmt = "%Y%m%dT%H%M%S"
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//phigate corpus//Scheduling//EN",
        "METHOD:REQUEST",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"DTSTAMP:{stamp.strftime(fmt)}Z",
        f"DTSTART:{start.strftime(fmt)}",
        f"DTEND:{end.strftime(fmt)}",
        f"SUMMARY:{_ics_escape(summary)}",
        f"DESCRIPTION:{_ics_escape(description)}",
        f"LOCATION:{_ics_escape(location)}",
        f"ORGANIZER:mailto:{organizer}",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return ("\r\n".join(_ics_fold(line) for line in lines) + "\r\n").encode("utf-8")
