"""Synthetic files and messages for the extraction tests (no real PHI: obviously fake values).

Office files and PDFs are made with the libraries that write them (python-docx, openpyxl,
python-pptx, fpdf2); the formats nobody writes from Python (TNEF, ZipCrypto, lying zip
headers) are assembled byte by byte here, after their specifications.
"""

from __future__ import annotations

import datetime
import io
import struct
import zlib
from collections.abc import Sequence
from email.message import EmailMessage
from email.policy import SMTP

PATIENT = "Patient: Jane Testperson, DOB 01/02/1960"


# ---- messages ----------------------------------------------------------------------------------


def message(
    body: str = PATIENT,
    subject: str = "Follow-up",
    html: str | None = None,
    attachments: Sequence[tuple[bytes, str, str]] = (),
    sender: str = "Dr Alice Example <alice@clinic.test>",
    to: str = "Bob Receiver <bob@partner.test>",
) -> bytes:
    """A message with a text body, an optional HTML alternative and attachments
    given as (data, content type, file name)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for data, ctype, name in attachments:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=SMTP)


def multipart_raw(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    """A hand-made multipart/mixed message from already formatted parts (headers + body)."""
    out = [
        b"From: a@clinic.test\r\nTo: b@partner.test\r\nSubject: many\r\nMIME-Version: 1.0\r\n",
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode(),
    ]
    for part in parts:
        out.append(f"--{boundary}\r\n".encode() + part + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def nested_rfc822(levels: int, inner: bytes | None = None) -> bytes:
    """A message forwarded inside itself ``levels`` times (message/rfc822 in message/rfc822)."""
    msg = inner or message()
    for i in range(levels):
        msg = (
            f"From: a@clinic.test\r\nTo: b@partner.test\r\nSubject: Fwd {i}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
        ).encode() + msg
    return msg


# ---- office documents and PDF ------------------------------------------------------------------


def docx_bytes() -> bytes:
    import docx

    doc = docx.Document()
    doc.sections[0].header.paragraphs[0].text = "Clinic header: Jane Testperson chart"
    doc.add_paragraph("Referral letter")
    doc.add_paragraph(PATIENT)
    table = doc.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "MRN"
    table.cell(0, 1).text = "MRN-0000-1234"
    table.cell(1, 0).text = "Diagnosis"
    table.cell(1, 1).text = "E11.9 Type 2 diabetes"
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def xlsx_bytes() -> bytes:
    import openpyxl  # type: ignore[import-untyped]

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Patients"
    ws.append(["Name", "DOB", "MRN", "HbA1c"])
    ws.append(["Jane Testperson", datetime.date(1960, 1, 2), 12345678, 9.1])
    ws.append(["John Fakename", datetime.date(1971, 3, 4), 87654321, 6.5])
    second = wb.create_sheet("Notes")
    second["A1"] = "Follow up with Jane Testperson"
    second["C3"] = "sparse cell"
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def pptx_bytes() -> bytes:
    import pptx
    from pptx.util import Inches

    prs = pptx.Presentation()
    slide = prs.slides.add_slide(prs.slide_layouts[1])
    slide.shapes.title.text = "Case review"
    slide.placeholders[1].text = PATIENT
    slide.notes_slide.notes_text_frame.text = "Speaker note: MRN 12345678"
    rows = slide.shapes.add_table(2, 2, Inches(1), Inches(4), Inches(4), Inches(1)).table
    rows.cell(0, 0).text = "Allergy"
    rows.cell(0, 1).text = "Penicillin"
    out = io.BytesIO()
    prs.save(out)
    return out.getvalue()


def pdf_bytes(pages: int = 5, password: str | None = None, note: bool = False) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    if password is not None:
        pdf.set_encryption(owner_password="owner-" + password, user_password=password)
    for p in range(pages):
        pdf.add_page()
        for i in range(40):
            line = f"Page {p} line {i}: {PATIENT}, MRN 12345678, dx E11.9"
            pdf.cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
        if note and p == 0:
            pdf.text_annotation(20, 20, "Reviewer note: call Jane Testperson")
    return bytes(pdf.output())


def _scan_image(width: int = 850, height: int = 1100) -> bytes:
    """A grey "faxed page": noise and dark bars where lines of text were (no text layer)."""
    import random

    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 235)
    draw = ImageDraw.Draw(img)
    rng = random.Random(7)
    for y in range(80, height - 80, 28):
        x = 60
        while x < width - 120:
            w = rng.randint(20, 90)
            draw.rectangle((x, y, x + w, y + 12), fill=rng.randint(20, 80))
            x += w + rng.randint(8, 18)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def scanned_pdf_bytes(pages: int = 2, text_pages: Sequence[int] = (), header: str = "",
                      image_size: tuple[float, float] | None = None) -> bytes:
    """A PDF like a scanner or fax server writes: every page one full-page image.

    Pages listed in ``text_pages`` are a typed cover sheet instead; ``header`` puts a short
    text line (a fax header) on the image pages; ``image_size`` (mm) shrinks the images."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    image = io.BytesIO(_scan_image())
    for p in range(pages):
        pdf.add_page()
        if p in text_pages:
            for i in range(20):
                pdf.cell(0, 5, f"Fax cover sheet line {i}: pages follow", new_x="LMARGIN",
                         new_y="NEXT")
            continue
        w, h = image_size or (pdf.epw, pdf.eph)
        pdf.image(image, x=pdf.l_margin, y=pdf.t_margin, w=w, h=h)
        if header:
            pdf.text(10, 8, header)
    return bytes(pdf.output())


def blank_pdf_bytes(pages: int = 1, text: str = "") -> bytes:
    """Blank pages, or one short line of text on each: no images."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for _ in range(pages):
        pdf.add_page()
        if text:
            pdf.cell(0, 5, text)
    return bytes(pdf.output())


def logo_pdf_bytes() -> bytes:
    """A short letter page with a small logo and a signature image: not a scan."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    pdf.add_page()
    logo = io.BytesIO(_scan_image(120, 60))
    pdf.image(logo, x=10, y=10, w=30, h=15)
    pdf.set_y(40)
    pdf.cell(0, 5, "Thanks, see you soon.")
    pdf.image(io.BytesIO(_scan_image(200, 60)), x=10, y=60, w=50, h=15)
    return bytes(pdf.output())


# ---- archives ----------------------------------------------------------------------------------


def zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return out.getvalue()


def raw_zip(entries: list[tuple[str, bytes, int, int, int, int, int]]) -> bytes:
    """A zip written by hand: (name, stored bytes, method, flags, crc, compressed size,
    declared uncompressed size) per entry, so that headers can lie."""
    local, central = [], []
    offset = 0
    for name, stored, method, flags, crc, csize, usize in entries:
        bname = name.encode()
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, csize, usize, len(bname), 0
        )
        local.append(header + bname + stored)
        fields = (20, 20, flags, method, 0, 0x21, crc, csize, usize, len(bname), 0, 0, 0, 0, 0)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, *fields, offset) + bname)
        offset += len(header) + len(bname) + len(stored)
    cd = b"".join(central)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), offset, 0)
    return b"".join(local) + cd + end


def zeros_deflate(total: int, block: int = 1 << 20) -> bytes:
    """A raw deflate stream of ``total`` zero bytes, built from one compressed block: after a
    full flush the compressor's output for the same input repeats byte for byte."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    return one * (total // block) + b"\x03\x00"  # an empty final block ends the stream


def zip_bomb(total: int = 1 << 30, declared: int | None = None) -> bytes:
    """One member of ``total`` zeros (1 GiB by default) in about a megabyte; ``declared`` makes
    the headers lie about the uncompressed size."""
    data = zeros_deflate(total)
    size = total if declared is None else declared
    return raw_zip([("zeros.txt", data, 8, 0, 0, len(data), size)])


def nested_zip(levels: int) -> bytes:
    """A zip in a zip ... ``levels`` deep, with a text file at the bottom."""
    data = zip_bytes([("note.txt", PATIENT.encode())])
    for i in range(levels - 1):
        data = zip_bytes([(f"level{i}.zip", data)])
    return data


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return table


def zipcrypto_zip(name: str, data: bytes, password: bytes) -> bytes:
    """A zip with one member encrypted with traditional PKWARE encryption (ZipCrypto)."""
    table = _crc_table()
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(c: int) -> None:
        keys[0] = (keys[0] >> 8) ^ table[(keys[0] ^ c) & 0xFF]
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = (keys[2] >> 8) ^ table[(keys[2] ^ (keys[1] >> 24)) & 0xFF]

    def encrypt(plain: bytes) -> bytes:
        out = bytearray()
        for c in plain:
            k = (keys[2] | 2) & 0xFFFF
            out.append(c ^ (((k * (k ^ 1)) >> 8) & 0xFF))
            update(c)
        return bytes(out)

    for c in password:
        update(c)
    crc = zlib.crc32(data)
    header = bytes(11) + bytes([crc >> 24])  # the last byte checks the password
    stored = encrypt(header) + encrypt(data)
    return raw_zip([(name, stored, 0, 0x1, crc, len(stored), len(data))])


# ---- TNEF (winmail.dat) ------------------------------------------------------------------------

_TNEF_SIGNATURE = 0x223E9F78


def _tnef_attr(level: int, name: int, atype: int, data: bytes) -> bytes:
    return (
        struct.pack("<BHHI", level, name, atype, len(data))
        + data
        + struct.pack("<H", sum(data) & 0xFFFF)
    )


def _mapi_binary(prop: int, ptype: int, value: bytes) -> bytes:
    padded = value + bytes(-len(value) % 4)
    return struct.pack("<HHII", ptype, prop, 1, len(value)) + padded


def tnef_bytes() -> bytes:
    """A winmail.dat with a subject, a plain body, an HTML body, a compressed RTF body and one
    attachment (a CSV) with a long file name, as Outlook writes them."""
    from compressed_rtf import compress  # type: ignore[import-untyped]

    html = b"<html><body><table><tr><td>MRN</td><td>12345678</td></tr></table></body></html>"
    rtf = compress(b"{\\rtf1\\ansi RTF body: allergy to penicillin\\par}", compressed=True)
    mapi_props = struct.pack("<I", 2) + _mapi_binary(0x1013, 0x0102, html)
    mapi_props += _mapi_binary(0x1009, 0x0102, rtf)
    attach_props = struct.pack("<I", 1) + _mapi_binary(0x3707, 0x001E, b"lab_results.csv\x00")
    csv = b"name,dob\nJane Testperson,01/02/1960\n"
    out = struct.pack("<IH", _TNEF_SIGNATURE, 0x0102)
    out += _tnef_attr(1, 0x9006, 0x0008, struct.pack("<I", 0x10000))
    out += _tnef_attr(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))
    out += _tnef_attr(1, 0x8008, 0x0007, b"IPM.Microsoft Mail.Note\x00")
    out += _tnef_attr(1, 0x8004, 0x0001, b"TNEF subject: Jane Testperson\x00")
    out += _tnef_attr(1, 0x800C, 0x0002, PATIENT.encode())
    out += _tnef_attr(1, 0x9003, 0x0006, mapi_props)
    out += _tnef_attr(2, 0x9002, 0x0006, bytes(14))
    out += _tnef_attr(2, 0x8010, 0x0001, b"LAB_RE~1.CSV\x00")
    out += _tnef_attr(2, 0x800F, 0x0006, csv)
    out += _tnef_attr(2, 0x9005, 0x0006, attach_props)
    return out


def tnef_loop_bomb() -> bytes:
    """A TNEF whose MAPI list claims four billion properties (tnefparse would loop on it)."""
    out = struct.pack("<IH", _TNEF_SIGNATURE, 0x0102)
    out += _tnef_attr(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))
    out += _tnef_attr(1, 0x9003, 0x0006, struct.pack("<I", 0xFFFFFFFF) + bytes(16))
    return out


RTF = (
    b"{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Times New Roman;}}"
    b"\\f0\\fs24 Discharge summary\\par Patient: Jane Testperson\\par DOB 01/02/1960\\par}"
)
ICS = (
    b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nSUMMARY:Dialysis session for Jane Te\r\n"
    b" stperson\r\nDESCRIPTION:MRN 12345678\\nBring insurance card\\, ID\r\nEND:VEVENT\r\n"
    b"END:VCALENDAR\r\n"
)


def pdf_flate_bomb(megabytes: int) -> bytes:
    """A one-page PDF whose second content stream inflates to ``megabytes`` MiB of spaces
    (about 1 KB of compressed data per MiB)."""
    c = zlib.compressobj(9)
    block = b" " * (1 << 20)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    data = first + again * (megabytes - 1) + c.flush()
    text = b"BT /F1 12 Tf 72 712 Td (Jane Testperson) Tj ET\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents [4 0 R 5 0 R]"
        b" /Resources << /Font << /F1 6 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out
