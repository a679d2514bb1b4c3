"""Legacy Office files and Outlook items: .doc, .xls, .ppt, .msg (OLE compound files).

Synthetic samples: Excel files written by xlwt, the others by tests/unit/ole_samples.py."""

from __future__ import annotations

import pytest

from gateway.extract import Extracted, extract
from tests.unit import extract_samples as S
from tests.unit import ole_samples as O

DOC, XLS, PPT, MSG = ("application/msword", "application/vnd.ms-excel",
                      "application/vnd.ms-powerpoint", "application/vnd.ms-outlook")


def attach(data: bytes, ctype: str, name: str) -> Extracted:
    return extract(S.message(attachments=[(data, ctype, name)]))


def texts(r: Extracted) -> dict[str, str]:
    return {c.where: c.text for c in r.chunks if c.where.startswith("attachment")}


def reasons(r: Extracted) -> set[tuple[str, str]]:
    return {(u.where, u.reason) for u in r.unscannable}


def test_word_97_pieces_8bit_and_utf16() -> None:
    r = attach(O.doc_bytes(), DOC, "referral.doc")
    assert r.unscannable == ()
    text = texts(r)[f"attachment[1] {DOC}"]
    assert text == "Patient: Jane Testperson\nDOB 01/02/1960, MRN 12345678 \u2013 caf\u00e9\n"


def test_word_field_codes_and_cells_become_separators() -> None:
    doc = O.doc_bytes(("Name\x07Jane Testperson\x07\x07\r", "\x13 MERGEFIELD x \x14MRN\x15 1\r"))
    text = texts(attach(doc, DOC, "t.doc"))[f"attachment[1] {DOC}"]
    assert "Name\tJane Testperson" in text and "MRN  1" in text
    assert not any(ch in text for ch in "\x07\x13\x14\x15\r")


def test_word_declared_as_octet_stream_is_still_read() -> None:
    r = attach(O.doc_bytes(), "application/octet-stream", "referral.doc")
    assert "Jane Testperson" in texts(r)[f"attachment[1] {DOC}"]


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"encrypted": True}, "encrypted"),
    ({"nfib": 0x0065}, "unsupported"),  # Word 6/95: another layout, not read
])  # fmt: skip
def test_word_not_read_is_unscannable(kwargs: dict[str, object], reason: str) -> None:
    r = attach(O.doc_bytes(**kwargs), DOC, "x.doc")  # type: ignore[arg-type]
    assert reasons(r) == {(f"attachment[1] {DOC}", reason)}
    assert f"attachment[1] {DOC}" not in texts(r)


def test_word_embedded_file_is_read_and_unknown_object_is_unsupported() -> None:
    csv = b"name,mrn\nJane Testperson,12345678\n"
    doc = O.doc_bytes(objects={
        "_1000/\x01Ole10Native": O.ole10_native("list.csv", csv),
        "_1000/\x01CompObj": bytes(20),
        "_1001/\x01CompObj": bytes(20),  # an equation, a chart: nothing we read
        "_1001/Equation Native": bytes(40),
    })  # fmt: skip
    r = attach(doc, DOC, "with-objects.doc")
    assert "Jane Testperson,12345678" in texts(r)["attachment[1]/inner[0] text/csv"]
    assert reasons(r) == {("attachment[1]/inner[1] application/x-ole-storage", "unsupported")}


def test_excel_97_rows_cells_dates_and_numbers() -> None:
    r = attach(O.xls_bytes(), XLS, "patients.xls")
    assert r.unscannable == ()
    text = texts(r)[f"attachment[1] {XLS}"]
    assert "Name\tDOB\tMRN\tBalance\nJane Testperson\t01/02/1960\t12345678\t12.5" in text


def test_csv_named_xls_is_read_as_text() -> None:
    r = attach(b"name,dob\nJane Testperson,01/02/1960\n", XLS, "export.xls")
    assert r.unscannable == ()
    assert "Jane Testperson,01/02/1960" in texts(r)[f"attachment[1] {XLS}"]


def test_powerpoint_97_text_atoms() -> None:
    r = attach(O.ppt_bytes(), PPT, "case.ppt")
    assert r.unscannable == ()
    assert texts(r)[f"attachment[1] {PPT}"] == "Case review\nPatient: Jane Testperson"


def test_outlook_msg_is_scanned_like_a_nested_message() -> None:
    r = attach(O.msg_bytes(), MSG, "referral.msg")
    assert r.unscannable == ()
    t = texts(r)
    assert t["attachment[1]/subject"] == "Referral Testperson"
    assert t["attachment[1]/header names"] == "Dr Alice Example\nBob Receiver\nCarol Recipient"
    assert "DOB 01/02/1960" in t["attachment[1]/body text/plain"]
    assert "Jane Testperson,01/02/1960" in t["attachment[1]/inner[0] text/csv"]
    assert t["attachment[1]/filename[0]"] == "patients.csv"
    assert t["attachment[1]/inner[1]/subject"] == "Lab results"  # an attached item, recursed
    assert "MRN 87654321" in t["attachment[1]/inner[1]/body text/plain"]
    assert {"patients.csv", "referral.msg"} <= set(r.attachment_names)
    assert {"text/csv", MSG} <= set(r.attachment_types)


def test_outlook_msg_html_body_and_nested_doc() -> None:
    r = attach(O.msg_bytes(attachment=O.doc_bytes(), nested=False, html_only=True), MSG, "m.msg")
    t = texts(r)
    assert "Patient: Jane Testperson" in t["attachment[1]/body text/html"]
    assert "MRN 12345678" in t["attachment[1]/inner[0] text/csv"]  # declared text/csv, is a doc
    assert r.unscannable == ()


def test_outlook_msg_compressed_rtf_body() -> None:
    r = attach(O.msg_bytes(nested=False, rtf_only=True), MSG, "m.msg")
    assert "Patient: Jane Testperson\nMRN 12345678" in texts(r)["attachment[1]/body text/rtf"]
    assert r.unscannable == ()


@pytest.mark.parametrize(("data", "ctype", "name", "reason"), [
    (O.compound_file({"Contents": b"x" * 100, "VisioDocument": bytes(64)}),
     "application/octet-stream", "drawing.vsd", "unsupported"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\xff" * 3000, DOC, "cut.doc", "corrupt"),
    (O.doc_bytes()[:1800], DOC, "cut.doc", "corrupt"),
    (O.xls_bytes()[:3000], XLS, "cut.xls", "corrupt"),
    (bytes(range(256)) * 8, DOC, "garbage.doc", "corrupt"),  # binary, not OLE
    (bytes(range(256)) * 8, MSG, "garbage.msg", "corrupt"),
])  # fmt: skip
def test_unreadable_ole_is_unscannable(data: bytes, ctype: str, name: str, reason: str) -> None:
    r = attach(data, ctype, name)
    assert [u.reason for u in r.unscannable] == [reason], r.unscannable


def test_mangled_ole_files_never_raise() -> None:
    import random

    rng = random.Random(3)
    for sample in (O.doc_bytes(), O.msg_bytes(), O.ppt_bytes(), O.xls_bytes()):
        for _ in range(40):
            data = bytearray(sample)
            for _ in range(rng.randint(1, 30)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            r = attach(bytes(data), "application/octet-stream", "x.bin")
            assert r.chunks  # never raises; a verdict every time
