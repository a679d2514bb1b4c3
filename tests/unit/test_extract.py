"""Text extraction: every format gives its text with the right place, and bad input gives a
result (with the unscannable places named), never an exception, in bounded time and memory."""

from __future__ import annotations

import email
import email.policy
import gzip
import importlib
import io
import random
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from gateway.extract import (
    REASON_TEXT,
    Extracted,
    ExtractLimits,
    TextChunk,
    Unscannable,
    extract,
    extract_message,
)
from tests.unit import extract_samples as S

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"


def chunk(result: Extracted, where: str) -> TextChunk:
    found = [c for c in result.chunks if c.where == where]
    assert found, f"no chunk at {where!r}; have {[c.where for c in result.chunks]}"
    return found[0]


def reasons(result: Extracted) -> set[tuple[str, str]]:
    return {(u.where, u.reason) for u in result.unscannable}


def with_attachment(data: bytes, ctype: str, name: str, **kw: object) -> Extracted:
    return extract(S.message(attachments=[(data, ctype, name)], **kw))  # type: ignore[arg-type]


# ---- headers and text parts ----------------------------------------------------------------


def test_subject_headers_and_plain_body() -> None:
    raw = (
        b"From: =?utf-8?q?Jane_Testp=C3=A9rson?= <jane@example.test>\r\n"
        b'To: "Testperson, John" <john@example.test>, plain@example.test\r\n'
        b"Cc: Group: Carol Fake <carol@example.test>;\r\n"
        b"Subject: =?utf-8?b?UmU6IGxhYnMgZm9yIEphbmUgVGVzdHBlcnNvbg==?=\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + S.PATIENT.encode() + b"\r\n"
    )
    r = extract(raw)
    assert chunk(r, "subject") == TextChunk("subject", "subject", "Re: labs for Jane Testperson")
    assert chunk(r, "header from").text == "Jane Testpérson"
    assert chunk(r, "header from").kind == "header"
    assert chunk(r, "header to").text == "Testperson, John"
    assert chunk(r, "header cc").text == "Carol Fake"
    body = chunk(r, "body[0] text/plain")
    assert body.kind == "body" and S.PATIENT in body.text
    assert r.unscannable == () and r.attachment_types == () and r.part_count == 1


def test_html_is_visible_text_with_cells_apart() -> None:
    html = (
        "<html><head><title>Lab report</title><style>td{color:red}</style>"
        "<script>var secret='not shown';</script></head><body>"
        "<table><tr><th>DOB</th><td>01/02/1960</td></tr><tr><td>MRN</td><td>12345678</td></tr>"
        "</table><p>Jane&nbsp;Testperson &amp; family</p><!-- comment --><img alt='x-ray'>"
        "</body></html>"
    )
    r = extract(S.message(html=html))
    text = chunk(r, "body[1] text/html").text
    assert "DOB\t01/02/1960" in text and "MRN\t12345678" in text
    assert "Jane Testperson & family" in text and "x-ray" in text and "Lab report" in text
    assert (
        "secret" not in text and "color" not in text and "<" not in text and "comment" not in text
    )
    assert S.PATIENT in chunk(r, "body[0] text/plain").text


def test_charsets_8bit_and_encoded_bodies() -> None:
    raw = (
        b"Subject: t\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nPatient Jos\xe9 Testperson\r\n"
    )
    assert "José" in chunk(extract(raw), "body[0] text/plain").text
    qp = raw.replace(b"8bit", b"quoted-printable").replace(b"\xe9", b"=E9")
    assert "José" in chunk(extract(qp), "body[0] text/plain").text


# ---- attachments: every format -------------------------------------------------------------


def test_docx() -> None:
    r = with_attachment(S.docx_bytes(), DOCX, "referral.docx")
    c = chunk(r, f"attachment[1] {DOCX}")
    assert c.kind == "attachment"
    assert S.PATIENT in c.text
    assert "MRN\tMRN-0000-1234" in c.text  # a table row keeps its cells together
    assert "Clinic header: Jane Testperson chart" in c.text  # headers are read too
    assert chunk(r, "filename[1]") == TextChunk("filename[1]", "filename", "referral.docx")
    assert r.attachment_types == (DOCX,) and r.attachment_names == ("referral.docx",)


def test_xlsx_rows_with_separators_dates_and_labels() -> None:
    r = with_attachment(S.xlsx_bytes(), XLSX, "patients.xlsx")
    text = chunk(r, f"attachment[1] {XLSX}").text
    lines = text.splitlines()
    assert "[Patients]" in lines
    assert "Name\tDOB\tMRN\tHbA1c" in lines
    # each cell next to its column label, dates as dates, numbers as written
    assert "Name: Jane Testperson\tDOB: 01/02/1960\tMRN: 12345678\tHbA1c: 9.1" in lines
    assert "Name: John Fakename\tDOB: 03/04/1971\tMRN: 87654321\tHbA1c: 6.5" in lines
    assert "Follow up with Jane Testperson" in text and "[Notes]" in text


def test_pptx_with_notes_and_table() -> None:
    text = chunk(with_attachment(S.pptx_bytes(), PPTX, "case.pptx"), f"attachment[1] {PPTX}").text
    assert S.PATIENT in text and "Case review" in text
    assert "Speaker note: MRN 12345678" in text and "Allergy\tPenicillin" in text


def test_pdf_pages_and_annotations() -> None:
    r = with_attachment(S.pdf_bytes(pages=3, note=True), "application/pdf", "labs.pdf")
    text = chunk(r, "attachment[1] application/pdf").text
    assert "Page 2 line 39: " + S.PATIENT in text
    assert "Reviewer note: call Jane Testperson" in text
    assert r.unscannable == ()


def test_pdf_declared_as_octet_stream_is_still_read() -> None:
    r = with_attachment(S.pdf_bytes(pages=1), "application/octet-stream", "scan")
    assert S.PATIENT in chunk(r, "attachment[1] application/pdf").text


@pytest.mark.parametrize(
    ("data", "ctype", "name", "expected"),
    [
        (S.RTF, "application/rtf", "summary.rtf", "Patient: Jane Testperson\nDOB 01/02/1960"),
        (S.ICS, "text/calendar", "visit.ics", "SUMMARY:Dialysis session for Jane Testperson"),
        (b"name,dob\nJane Testperson,01/02/1960\n", "text/csv", "list.csv", "Jane Testperson,01"),
        (S.PATIENT.encode("utf-16"), "application/octet-stream", "notes.txt", S.PATIENT),
        (b"MSH|^~\\&|EHR|CLINIC\rPID|1||12345678||Testperson^Jane", "application/octet-stream",
         "adt.hl7", "PID|1||12345678||Testperson^Jane"),
    ],
)  # fmt: skip
def test_text_formats(data: bytes, ctype: str, name: str, expected: str) -> None:
    r = with_attachment(data, ctype, name)
    [c] = [c for c in r.chunks if c.where.startswith("attachment[1] ")]
    assert expected in c.text and c.kind == "attachment"


def test_ics_unfolds_and_unescapes() -> None:
    text = chunk(with_attachment(S.ICS, "text/calendar", "v.ics"), "attachment[1] text/calendar")
    assert "MRN 12345678\nBring insurance card, ID" in text.text


def test_tnef_winmail_dat() -> None:
    r = with_attachment(S.tnef_bytes(), "application/ms-tnef", "winmail.dat")
    assert chunk(r, "attachment[1]/subject").text == "TNEF subject: Jane Testperson"
    assert chunk(r, "attachment[1]/body text/plain").text == S.PATIENT
    assert chunk(r, "attachment[1]/body text/html").text == "MRN\t12345678"
    assert "allergy to penicillin" in chunk(r, "attachment[1]/body text/rtf").text
    inner = chunk(r, "attachment[1]/inner[0] text/csv")
    assert "Jane Testperson,01/02/1960" in inner.text
    assert chunk(r, "attachment[1]/filename[0]").text == "lab results.csv"
    assert r.attachment_names == ("winmail.dat", "lab_results.csv")
    assert r.attachment_types == ("application/ms-tnef", "text/csv")


def test_tnef_with_absurd_counts_is_corrupt_not_a_hang() -> None:
    started = time.monotonic()
    r = with_attachment(S.tnef_loop_bomb(), "application/ms-tnef", "winmail.dat")
    assert ("attachment[1] application/ms-tnef", "corrupt") in reasons(r)
    assert time.monotonic() - started < 2


def test_zip_members_recursively() -> None:
    inner = S.zip_bytes([("deeper/note.txt", b"deep note: Jane Testperson")])
    data = S.zip_bytes(
        [("Jane_Testperson_referral.docx", S.docx_bytes()), ("more.zip", inner), ("empty/", b"")]
    )
    r = with_attachment(data, "application/zip", "bundle.zip")
    assert S.PATIENT in chunk(r, f"attachment[1]/inner[0] {DOCX}").text
    assert chunk(r, "attachment[1]/filename[0]").text == "Jane Testperson referral.docx"
    assert "deep note" in chunk(r, "attachment[1]/inner[1]/inner[0] text/plain").text
    assert "deeper/note.txt" in r.attachment_names
    assert r.attachment_types == ("application/zip", DOCX, "application/zip", "text/plain")


def test_gzip() -> None:
    r = with_attachment(gzip.compress(S.PATIENT.encode()), "application/gzip", "notes.txt.gz")
    assert chunk(r, "attachment[1]/inner[0] text/plain").text == S.PATIENT
    tgz = io.BytesIO()
    import tarfile

    with tarfile.open(fileobj=tgz, mode="w:gz") as tf:
        info = tarfile.TarInfo("export/patients.csv")
        payload = b"Jane Testperson,01/02/1960\n"
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    r = with_attachment(tgz.getvalue(), "application/gzip", "export.tgz")
    assert "Jane Testperson" in chunk(r, "attachment[1]/inner[0]/inner[0] text/csv").text


def test_nested_message_rfc822() -> None:
    inner = S.message(subject="Inner: Jane Testperson", body="Forwarded: " + S.PATIENT)
    outer = email.message_from_bytes(S.message(), policy=email.policy.default)
    outer.make_mixed()
    part = email.message.EmailMessage()
    part.set_content(email.message_from_bytes(inner, policy=email.policy.default))
    outer.attach(part)
    r = extract(outer.as_bytes())
    assert chunk(r, "attachment[1]/subject").text == "Inner: Jane Testperson"
    assert chunk(r, "attachment[1]/subject").kind == "subject"
    assert "Forwarded: " + S.PATIENT in chunk(r, "attachment[1]/body[0] text/plain").text
    assert chunk(r, "attachment[1]/header from").text == "Dr Alice Example"
    assert "message/rfc822" in r.attachment_types


def test_small_image_is_a_logo_its_type_recorded() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    r = with_attachment(png, "image/png", "logo.png")
    assert [c.where for c in r.chunks if c.kind == "attachment"] == []
    assert r.attachment_types == ("image/png",) and r.attachment_names == ("logo.png",)
    assert r.unscannable == ()


def test_images_that_may_be_scans_are_unscannable() -> None:
    """A photo, screenshot or scan cannot be read without OCR: unscannable (so the policy treats
    it as PHI); a TIFF, the fax format, at any size; an image sent as octet-stream too."""
    big_jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 80  # 20 KB
    r = with_attachment(big_jpeg, "image/jpeg", "wound.jpg")
    assert [(u.where, u.reason) for u in r.unscannable] == [("attachment[1] image/jpeg", "image")]
    tiff = b"II*\x00" + bytes(200)
    r = with_attachment(tiff, "image/tiff", "fax.tif")
    assert [u.reason for u in r.unscannable] == ["image"]
    r = with_attachment(big_jpeg, "application/octet-stream", "scan0001")
    assert [u.reason for u in r.unscannable] == ["image"]
    declared_only = b"not an image at all" * 2000  # says image/png, bytes say otherwise
    r = with_attachment(declared_only, "image/png", "x.png")
    assert "image" not in [u.reason for u in r.unscannable]


def test_rfc2231_and_encoded_file_names() -> None:
    raw = S.multipart_raw(
        [
            b"Content-Type: text/plain\r\nContent-Disposition: attachment;\r\n"
            b" filename*=utf-8''J%C3%A9r%C3%B4me_Testperson.txt\r\n\r\nx",
            b'Content-Type: text/plain; name="=?utf-8?q?Ren=C3=A9e=2Etxt?="\r\n'
            b"Content-Disposition: attachment\r\n\r\ny",
        ]
    )
    r = extract(raw)
    assert r.attachment_names == ("Jérôme_Testperson.txt", "Renée.txt")
    assert chunk(r, "filename[0]").text == "Jérôme Testperson.txt"


def test_extract_message_accepts_a_tree_parsed_with_policy_default() -> None:
    raw = S.message(attachments=[(S.docx_bytes(), DOCX, "r.docx")], html="<p>Hi</p>")
    tree = email.message_from_bytes(raw, policy=email.policy.default)
    assert extract_message(tree) == extract(raw)


# ---- what cannot be scanned ----------------------------------------------------------------


def test_encrypted_pdf() -> None:
    r = with_attachment(S.pdf_bytes(pages=1, password="s3cret"), "application/pdf", "locked.pdf")
    assert reasons(r) == {("attachment[1] application/pdf", "encrypted")}
    assert r.attachment_names == ("locked.pdf",)


def test_encrypted_zip_member() -> None:
    data = S.zipcrypto_zip("results.txt", S.PATIENT.encode(), b"pw")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # a real ZipCrypto file: the password opens it
        zf.setpassword(b"pw")
        assert zf.read("results.txt") == S.PATIENT.encode()
    r = with_attachment(data, "application/zip", "results.zip")
    assert reasons(r) == {("attachment[1]/inner[0] text/plain", "encrypted")}
    assert "results.txt" in r.attachment_names


def test_password_protected_office_file_is_encrypted() -> None:
    # Office writes a protected DOCX as an OLE compound file holding an "EncryptedPackage"
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500) + "EncryptedPackage".encode("utf-16-le")
    r = with_attachment(ole + bytes(600), DOCX, "protected.docx")
    assert reasons(r) == {(f"attachment[1] {DOCX}", "encrypted")}


def test_smime_and_pgp_are_encrypted() -> None:
    smime = S.multipart_raw(
        [b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx"]
    )  # fmt: skip
    assert ("attachment[0] application/pkcs7-mime", "encrypted") in reasons(extract(smime))
    pgp = S.message(body="-----BEGIN PGP MESSAGE-----\n\nhQEMA+abc\n-----END PGP MESSAGE-----")
    assert ("body[0] text/plain", "encrypted") in reasons(extract(pgp))


PDF_WHERE = "attachment[1] application/pdf"
CORRUPT = [
    (b"this is not a PDF at all", "application/pdf", "fake.pdf", PDF_WHERE),
    (S.pdf_bytes(pages=1)[:300], "application/pdf", "cut.pdf", PDF_WHERE),
    (S.docx_bytes()[:2000], DOCX, "cut.docx", f"attachment[1] {DOCX}"),
    (b"PK\x03\x04garbage" * 10, "application/zip", "bad.zip", "attachment[1] application/zip"),
    (
        S.zip_bytes([("xl/workbook.xml", b"<not xml"), ("[Content_Types].xml", b"")]),
        XLSX,
        "bad.xlsx",
        f"attachment[1] {XLSX}",
    ),
    (b"\x1f\x8b\x08\x00garbage", "application/gzip", "bad.gz", "attachment[1] application/gzip"),
    (
        b"\x78\x9f\x3e\x22\x00\x00\x01\x06\x90\x08\x00\x00\x00",
        "application/ms-tnef",
        "winmail.dat",
        "attachment[1] application/ms-tnef",
    ),
]


@pytest.mark.parametrize(("data", "ctype", "name", "where"), CORRUPT)
def test_corrupt_files(data: bytes, ctype: str, name: str, where: str) -> None:
    assert (where, "corrupt") in reasons(with_attachment(data, ctype, name))


def test_bad_base64_only_when_nothing_decodes() -> None:
    part = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    r = extract(S.multipart_raw([part + b"!!!! **** ????", part + b"UGF0aWVudDog@@SmFuZQ"]))
    assert reasons(r) == {("body[0] text/plain", "bad_encoding")}
    assert chunk(r, "body[1] text/plain").text.startswith("Patient: ")


def test_unknown_charset() -> None:
    head = b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
    r = extract(S.multipart_raw([head + b"Readable text, Jane Testperson"]))
    assert r.unscannable == () and "Jane Testperson" in r.chunks[-1].text
    garbage = random.Random(3).randbytes(4000)
    r = extract(S.multipart_raw([head + garbage]))
    assert ("body[0] text/plain", "unsupported_charset") in reasons(r)
    for charset in (b"punycode", b"idna", b"rot13", b"zlib", b"utf-8'\"", b"\xff\xfe"):
        head = b"Content-Type: text/plain; charset=" + charset + b"\r\n\r\n"
        r = extract(S.multipart_raw([head + "Jos\u00e9".encode("latin-1") * 1000]))
        assert isinstance(r, Extracted)


# ---- limits and hostile input --------------------------------------------------------------


def test_zip_bomb_one_gibibyte_of_zeros() -> None:
    bomb = S.zip_bomb(1 << 30)
    assert len(bomb) < 2 << 20
    limits = ExtractLimits(max_member=16 << 20)
    tracemalloc.start()
    started = time.monotonic()
    r = extract(S.message(attachments=[(bomb, "application/zip", "bomb.zip")]), limits)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert ("attachment[1]/inner[0] text/plain", "too_large") in reasons(r)
    assert elapsed < 5
    assert peak < 80 << 20  # the limit plus copies, never the gibibyte


def test_zip_bomb_with_lying_headers_and_total_budget() -> None:
    liar = S.zip_bomb(64 << 20, declared=100)  # says 100 bytes, inflates to 64 MiB
    r = extract(S.message(attachments=[(liar, "application/zip", "small.zip")]))
    assert ("attachment[1]/inner[0] text/plain", "too_large") in reasons(r)
    many = S.zip_bytes([(f"f{i}.txt", bytes(8 << 20)) for i in range(6)])
    r = extract(
        S.message(attachments=[(many, "application/zip", "m.zip")]),
        ExtractLimits(max_expanded=20 << 20),
    )
    assert any(u.reason == "too_large" for u in r.unscannable)


def test_pdf_stream_bomb_never_reaches_pdfium() -> None:
    small = with_attachment(S.pdf_flate_bomb(2), "application/pdf", "ok.pdf")
    assert "Jane Testperson" in chunk(small, "attachment[1] application/pdf").text
    bomb = S.pdf_flate_bomb(256)  # ~270 KB that PDFium would inflate to 256 MiB in memory
    started = time.monotonic()
    r = with_attachment(bomb, "application/pdf", "bomb.pdf")
    assert reasons(r) == {("attachment[1] application/pdf", "too_large")}
    assert time.monotonic() - started < 5


def test_gzip_bomb() -> None:
    bomb = gzip.compress(bytes(256 << 20), compresslevel=1)
    started = time.monotonic()
    r = extract(
        S.message(attachments=[(bomb, "application/gzip", "z.gz")]),
        ExtractLimits(max_member=8 << 20),
    )
    assert ("attachment[1] application/gzip", "too_large") in reasons(r)
    assert time.monotonic() - started < 5


def test_nested_zips_are_too_deep() -> None:
    started = time.monotonic()
    r = with_attachment(S.nested_zip(20), "application/zip", "deep.zip")
    assert any(u.reason == "too_deep" for u in r.unscannable)
    assert time.monotonic() - started < 5
    shallow = with_attachment(S.nested_zip(3), "application/zip", "ok.zip")
    assert shallow.unscannable == ()
    assert any(S.PATIENT in c.text for c in shallow.chunks)


def test_ten_thousand_parts() -> None:
    parts = [b"Content-Type: text/plain\r\n\r\npart %d" % i for i in range(10_000)]
    raw = S.multipart_raw(parts)
    started = time.monotonic()
    r = extract(raw)
    assert time.monotonic() - started < 15
    assert any(u.reason == "too_many_parts" for u in r.unscannable)
    assert r.part_count == ExtractLimits().max_parts + 1


def test_zip_with_many_members_counts_against_parts() -> None:
    data = S.zip_bytes([(f"{i}.txt", b"x") for i in range(50)])
    r = extract(
        S.message(attachments=[(data, "application/zip", "many.zip")]), ExtractLimits(max_parts=20)
    )
    assert any(u.reason == "too_many_parts" for u in r.unscannable)


def test_deeply_nested_rfc822() -> None:
    r = extract(S.nested_rfc822(50))
    assert any(u.reason == "too_deep" for u in r.unscannable)
    assert chunk(r, "subject").text == "Fwd 49"
    started = time.monotonic()
    r = extract(S.nested_rfc822(3000))  # deeper than the email parser's own recursion can go
    assert any(u.reason == "too_deep" for u in r.unscannable)
    assert time.monotonic() - started < 15


def test_deeply_nested_multipart() -> None:
    raw = b"Subject: deep\r\n"
    for i in range(200):
        raw += b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
    raw += b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    assert any(u.reason == "too_deep" for u in extract(raw).unscannable)


def test_fifty_megabytes_of_text() -> None:
    line = (S.PATIENT + " " * 20 + "\r\n").encode()
    raw = b"Subject: big\r\nContent-Type: text/plain\r\n\r\n" + line * (50 * 2**20 // len(line))
    started = time.monotonic()
    r = extract(raw, ExtractLimits(max_text=8 * 2**20))
    assert time.monotonic() - started < 20
    assert sum(len(c.text) for c in r.chunks) <= 8 * 2**20
    assert ("body[0] text/plain", "too_large") in reasons(r)


def test_fifty_megabytes_of_html() -> None:
    html = ("<tr><td>Jane</td><td>Testperson</td></tr>\n" * (50 * 2**20 // 42)).encode()
    raw = b"Subject: big\r\nContent-Type: text/html\r\n\r\n<table>" + html
    started = time.monotonic()
    r = extract(raw, ExtractLimits(max_text=2 * 2**20))
    assert time.monotonic() - started < 20
    assert sum(len(c.text) for c in r.chunks) <= 2 * 2**20


def test_max_text_cuts_and_says_so() -> None:
    r = extract(S.message(body="x" * 5000), ExtractLimits(max_text=1000))
    assert sum(len(c.text) for c in r.chunks) == 1000
    assert any(u.reason == "too_large" for u in r.unscannable)


def test_timeout_stops_and_is_recorded() -> None:
    raw = S.message(attachments=[(S.pdf_bytes(pages=2), "application/pdf", "a.pdf")] * 5)
    r = extract(raw, ExtractLimits(timeout=0.0))
    assert Unscannable("message", "timeout") in r.unscannable
    assert r.unscannable.count(Unscannable("message", "timeout")) == 1


def test_binary_garbage_never_raises() -> None:
    rng = random.Random(7)
    for size in (0, 1, 100, 10_000, 300_000):
        assert isinstance(extract(rng.randbytes(size)), Extracted)
    assert isinstance(extract(b"\x00" * 1000 + b"\r\n\r\n" + rng.randbytes(1000)), Extracted)
    headers = b"Subject: =?x-bad?q?=FF=FE?= =?utf-8?b?####?=\r\nFrom: \xff\xfe <@@@>\r\n"
    assert isinstance(extract(headers + b"\r\n" + rng.randbytes(500)), Extracted)


def test_mangled_attachments_never_raise() -> None:
    samples = [
        (S.docx_bytes(), DOCX), (S.xlsx_bytes(), XLSX), (S.pptx_bytes(), PPTX),
        (S.pdf_bytes(pages=1), "application/pdf"), (S.tnef_bytes(), "application/ms-tnef"),
        (S.zip_bytes([("a.txt", b"hello")]), "application/zip"), (S.RTF, "application/rtf"),
        (gzip.compress(b"hello"), "application/gzip"),
    ]  # fmt: skip
    rng = random.Random(11)
    started = time.monotonic()
    for _round in range(25):
        for data, ctype in samples:
            mangled = bytearray(data)
            for _ in range(rng.randrange(1, 20)):
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            if rng.random() < 0.3:
                mangled = mangled[: rng.randrange(len(mangled))]
            r = with_attachment(bytes(mangled), ctype, "f")
            assert isinstance(r, Extracted)
            assert all(u.reason in ("corrupt", "encrypted", "too_large") for u in r.unscannable)
    assert time.monotonic() - started < 20


def _cpython_email_corpus() -> list[Path]:
    candidates = []
    try:  # CPython's own test package, where the interpreter ships it
        test_package = importlib.import_module("test")
        candidates.append(Path(str(test_package.__file__)).parent / "test_email" / "data")
    except ImportError:
        pass
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates += Path("/root/.pyenv/versions").glob(f"*/lib/{version}/test/test_email/data")
    candidates += Path("/usr/lib").glob(f"{version}/test/test_email/data")
    for folder in candidates:
        files = sorted(folder.glob("*.txt"))
        if files:
            return files
    return []


def test_cpython_malformed_mime_corpus() -> None:
    files = _cpython_email_corpus()
    if not files:
        pytest.skip("CPython's test/test_email/data corpus is not installed with this Python")
    for path in files:
        r = extract(path.read_bytes())
        assert isinstance(r, Extracted), path.name
        assert all(isinstance(c, TextChunk) and c.text for c in r.chunks)


# ---- scanned PDFs (no text layer) --------------------------------------------------------------


def test_scanned_pdf_without_text_is_unscannable() -> None:
    r = with_attachment(S.scanned_pdf_bytes(pages=2), "application/pdf", "referral.pdf")
    assert reasons(r) == {(PDF_WHERE, "no_text_layer")}
    assert REASON_TEXT["no_text_layer"] == "pdf has no text layer (scanned image)"


@pytest.mark.parametrize(
    "data",
    [
        S.scanned_pdf_bytes(pages=3, text_pages=(0,)),  # a typed fax cover sheet, then scans
        S.scanned_pdf_bytes(pages=1, header="From 555 0100 p.1"),  # a fax header line
        S.scanned_pdf_bytes(pages=1, image_size=(86.0, 54.0)),  # a photographed insurance card
    ],
    ids=["cover-sheet", "fax-header", "card-photo"],
)
def test_scanned_pages_are_found_beside_some_text(data: bytes) -> None:
    r = with_attachment(data, "application/pdf", "fax.pdf")
    assert (PDF_WHERE, "no_text_layer") in reasons(r)


@pytest.mark.parametrize(
    "data",
    [S.blank_pdf_bytes(), S.blank_pdf_bytes(pages=3, text="ok"), S.logo_pdf_bytes(),
     S.pdf_bytes(pages=1)],
    ids=["blank", "short-text", "logo-and-signature", "text"],
)
def test_blank_short_or_text_pdfs_are_not_scans(data: bytes) -> None:
    assert with_attachment(data, "application/pdf", "note.pdf").unscannable == ()
