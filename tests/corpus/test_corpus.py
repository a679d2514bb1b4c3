"""Checks on the synthetic corpus: determinism, balance, parseability, label truthfulness.

Every recorded value (the strings behind the labels) must appear in the message's readable text:
subject, text parts, and the text of CSV, DOCX, XLSX, PDF, ICS, zip and forwarded-message
attachments. Identifiers with a public validity rule must pass it.
"""

from __future__ import annotations

import email
import html
import io
import json
import re
import zipfile
from collections import Counter
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.corpus import identifiers as ids
from tests.corpus import vocab
from tests.corpus.generate import STRUCTURED_TYPES, TYPE_LABELS, Sample, generate, main, write

N = 200
SEED = 4321


@pytest.fixture(scope="module")
def corpus() -> list[Sample]:
    return generate(N, SEED)


def _zip_text(data: bytes) -> str:
    out: list[str] = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            blob = z.read(name)
            if name.lower().endswith((".csv", ".txt")):
                out.append(blob.decode("utf-8-sig"))
    return "\n".join(out)


def _docx_text(data: bytes) -> str:
    from docx import Document

    doc = Document(io.BytesIO(data))
    parts = [p.text for p in doc.paragraphs]
    for table in doc.tables:
        for row in table.rows:
            parts.extend(cell.text for cell in row.cells)
    return "\n".join(parts)


def _xlsx_text(data: bytes) -> str:
    from openpyxl import load_workbook

    wb = load_workbook(io.BytesIO(data), read_only=True)
    parts: list[str] = []
    for ws in wb.worksheets:
        for row in ws.iter_rows(values_only=True):
            parts.extend("" if v is None else str(v) for v in row)
    return "\n".join(parts)


def _pdf_text(data: bytes) -> str:
    pypdf = pytest.importorskip("pypdf")
    reader = pypdf.PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() or "" for page in reader.pages)


def _ics_text(text: str) -> str:
    text = re.sub(r"\r?\n[ \t]", "", text)
    return text.replace("\\n", "\n").replace("\\,", ",").replace("\\;", ";").replace("\\\\", "\\")


def message_text(msg: EmailMessage) -> str:
    """Everything a reader (or a scanner) can see, as text."""
    parts = [str(msg.get("Subject", ""))]
    for part in msg.walk():
        if part is not msg and "Subject" in part:  # a forwarded message/rfc822
            parts.append(str(part["Subject"]))
        filename = part.get_filename()
        if filename:
            parts.append(filename)
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if part.get_content_maintype() == "text":
            text = part.get_content()
            if ctype == "text/html":
                text = html.unescape(text)
            elif ctype == "text/calendar":
                text = _ics_text(text)
            parts.append(text)
            continue
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        if ctype == "application/pdf":
            parts.append(_pdf_text(data))
        elif ctype == "application/zip":
            parts.append(_zip_text(data))
        elif ctype.endswith("wordprocessingml.document"):
            parts.append(_docx_text(data))
        elif ctype.endswith("spreadsheetml.sheet"):
            parts.append(_xlsx_text(data))
        else:
            raise AssertionError(f"unexpected attachment type {ctype}")
    return "\n".join(parts)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


# --------------------------------------------------------------------------- tests


def test_deterministic_for_a_seed(corpus: list[Sample]) -> None:
    again = generate(N, SEED)
    assert [s.raw for s in again] == [s.raw for s in corpus]
    assert [s.label() for s in again] == [s.label() for s in corpus]
    other = generate(20, SEED + 1)
    assert [s.raw for s in other] != [s.raw for s in corpus[:20]]


def test_half_phi_and_names_unique(corpus: list[Sample]) -> None:
    assert len(corpus) == N
    assert sum(s.phi for s in corpus) == N // 2
    assert len({s.name for s in corpus}) == N
    for s in corpus:
        assert s.name.startswith("phi-" if s.phi else "clean-")


def test_family_coverage(corpus: list[Sample]) -> None:
    phi_cats = {s.category for s in corpus if s.phi}
    clean_cats = {s.category for s in corpus if not s.phi}
    assert len(phi_cats) >= 15
    assert len(clean_cats) >= 15
    assert not phi_cats & clean_cats


def test_labels_consistent(corpus: list[Sample]) -> None:
    for s in corpus:
        assert s.types == {t for t, _ in s.values}
        assert s.other_types == {t for t, _ in s.other_values}
        assert (s.types | s.other_types) <= TYPE_LABELS
        assert s.structured == bool(s.types & STRUCTURED_TYPES)
        if s.phi:
            assert s.types, s.name
        else:
            assert not s.types and not s.structured, s.name
    phi = [s for s in corpus if s.phi]
    # both kinds of PHI message are present: structured, and clinical content with a name only
    assert sum(s.structured for s in phi) > len(phi) // 2
    assert any(not s.structured and "name" in s.types for s in phi)
    # some carry a strong identifier and nothing clinical
    clinical = {"icd10", "cpt", "medication", "diagnosis", "lab"}
    assert any(s.types & {"ssn", "mbi"} and not s.types & clinical for s in phi)


def test_messages_parse_with_headers(corpus: list[Sample]) -> None:
    for s in corpus:
        assert b"\r\n" in s.raw and b"\n" not in s.raw.replace(b"\r\n", b"")
        msg = parse(s.raw)
        assert not msg.defects, (s.name, msg.defects)
        for header in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
            assert msg[header], (s.name, header)
        assert msg["Date"].datetime is not None
        for part in msg.walk():
            assert not part.defects, (s.name, part.defects)


def test_values_appear_in_the_message(corpus: list[Sample]) -> None:
    for s in corpus:
        text = message_text(parse(s.raw))
        flat = " ".join(text.split())
        squashed = _squash(text)
        for typ, value in (*s.values, *s.other_values):
            v = " ".join(value.split())
            assert v in flat or _squash(v) in squashed, (s.name, typ, value)


def test_subject_only_phi_is_only_in_the_subject(corpus: list[Sample]) -> None:
    for s in corpus:
        if s.category != "subject_only":
            continue
        msg = parse(s.raw)
        subject = str(msg["Subject"])
        body = message_text(msg).replace(subject, "", 1)
        for _, value in s.values:
            assert value in subject, (s.name, value)
            assert value not in body, (s.name, value)


def test_identifier_validators_hold(corpus: list[Sample]) -> None:
    phonenumbers = pytest.importorskip("phonenumbers")
    checks: dict[str, Callable[[str], bool]] = {
        "ssn": ids.valid_ssn,
        "mbi": ids.valid_mbi,
        "npi": ids.valid_npi,
        "dea": ids.valid_dea,
        "routing": ids.valid_aba,
        "credit_card": ids.valid_card,
        "vin": ids.valid_vin,
        "icd10": lambda v: v in vocab.ICD10_CODES,
        "cpt": lambda v: v in {c for c, _ in vocab.CPT},
        "medication": lambda v: any(v.startswith(m) for m in vocab.MEDICATION_NAMES),
        "phone": lambda v: (
            len(re.sub(r"\D", "", v)) < 10
            or phonenumbers.is_valid_number(phonenumbers.parse(v, "US"))
        ),
    }
    seen: Counter[str] = Counter()
    for s in corpus:
        for typ, value in (*s.values, *s.other_values):
            check = checks.get(typ)
            if check is not None:
                seen[typ] += 1
                assert check(value), (s.name, typ, value)
    for typ in ("ssn", "mbi", "npi", "icd10", "medication", "phone"):
        assert seen[typ] > 0, typ


def test_validators_themselves() -> None:
    import random

    rng = random.Random(7)
    for _ in range(2000):
        assert ids.valid_ssn(ids.ssn_digits(rng))
        assert not ids.valid_ssn(ids.invalid_ssn_digits(rng))
        assert ids.valid_mbi(ids.mbi(rng))
        assert ids.valid_npi(ids.npi(rng))
        assert ids.valid_dea(ids.dea(rng, "Smith"))
        assert ids.valid_aba(ids.aba(rng))
        assert ids.valid_card(ids.credit_card(rng)[1])
        assert ids.valid_vin(ids.vin(rng))
    for bad in (
        "078-05-1120",
        "219-09-9999",
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
    ):
        assert not ids.valid_ssn(bad)
    # published examples: CMS's MBI format sample, a real-format NPI, DEA and routing examples
    assert ids.valid_mbi("1EG4-TE5-MK73")
    assert not ids.valid_mbi("1EG4-TE5-MK7S")
    assert ids.valid_npi("1234567893")
    assert ids.valid_dea("AB1234563")
    assert ids.valid_aba("011000015")
    assert ids.valid_vin("1M8GDM9AXKP042788")
    assert ids.valid_card("4111111111111111")


def test_icd10_codes_are_real() -> None:
    icd10 = pytest.importorskip("icd10")
    for code, _ in vocab.ICD10:
        found = icd10.find(code)
        assert found is not None and found.billable, code
    assert len(vocab.ICD10) >= 200


def test_attachments_present_in_expected_share(corpus: list[Sample]) -> None:
    kinds: Counter[str] = Counter()
    with_att = {True: 0, False: 0}
    for s in corpus:
        msg = parse(s.raw)
        atts = list(msg.iter_attachments())
        if atts:
            with_att[s.phi] += 1
        for part in msg.walk():
            if part.get_content_disposition() == "attachment":
                kinds[part.get_content_type()] += 1
        if s.category in (
            "csv_attachment",
            "zip_attachment",
            "docx_attachment",
            "pdf_attachment",
            "xlsx_attachment",
        ):
            assert atts, s.name
    n_phi = N // 2
    # Attachment families are about a fifth of the PHI half, plus attachments in other
    # families; the clean half carries attachments too, so attachments alone do not mean PHI.
    assert 0.2 * n_phi <= with_att[True] <= 0.5 * n_phi, with_att
    assert 0.1 * n_phi <= with_att[False] <= 0.4 * n_phi, with_att
    for ctype in (
        "application/pdf",
        "application/zip",
        "text/csv",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ):
        assert kinds[ctype] > 0, (ctype, kinds)


def test_write_and_cli(tmp_path: Path, corpus: list[Sample]) -> None:
    write(corpus[:10], tmp_path / "a")
    files = sorted(p.name for p in (tmp_path / "a").glob("*.eml"))
    assert len(files) == 10
    labels = [
        json.loads(line) for line in (tmp_path / "a" / "labels.jsonl").read_text().splitlines()
    ]
    assert [lab["name"] + ".eml" for lab in labels] == [s.name + ".eml" for s in corpus[:10]]
    assert set(labels[0]) >= {"name", "phi", "types", "structured", "category"}
    assert main(["--n", "12", "--seed", "3", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert len(list((tmp_path / "b").glob("*.eml"))) == 12
