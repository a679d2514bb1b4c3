"""Checksums and format rules behind the identifier detectors."""

from __future__ import annotations

import pytest

from gateway.rules import validators as v


@pytest.mark.parametrize("text,ok", [
    ("123-45-6780", True), ("123456780", True), ("123 45 6780", True),
    ("000-12-3456", False), ("666-12-3456", False), ("900-12-3456", False),
    ("123-00-4567", False), ("123-45-0000", False), ("078-05-1120", False),
    ("123-456780", False), ("12-345-6780", False), ("123-45 6780", False),
])
def test_ssn(text, ok):
    assert v.ssn(text) is ok


def test_checksums():
    assert v.luhn("79927398713") and not v.luhn("79927398710")
    assert v.credit_card("4111 1111 1111 1111") and not v.credit_card("4111 1111 1111 1112")
    assert not v.credit_card("9111 1111 1111 1116")  # no issuer starts with 9
    assert v.aba_routing("021000021") and not v.aba_routing("021000022")
    assert v.npi("1234567893") and not v.npi("1234567890") and not v.npi("3234567893")
    assert v.dea("AB1234563") and not v.dea("AB1234564")
    assert v.vin("1M8GDM9AXKP042788") and not v.vin("1M8GDM9A1KP042788")


def test_mbi_positions():
    assert v.mbi("1EG4-TE5-MK73") and v.mbi("1EG4TE5MK73")
    assert not v.mbi("0EG4TE5MK73")  # position 1 is 1-9
    assert not v.mbi("1SG4TE5MK73")  # S is never used
    assert not v.mbi("1EG4TE5MK7")


def test_dates_and_ip_and_phone():
    for good in ("01/02/1960", "1960-01-02", "Jan 2, 1960", "2 January 1960", "31.12.1999"):
        assert v.date(good), good
    for bad in ("13/13/1960", "2026-13-01", "00/00/00"):
        assert not v.date(bad), bad
    assert v.ipv4("10.20.30.40") and not v.ipv4("300.1.1.1") and not v.ipv4("127.0.0.1")
    assert v.phone("(617) 253-1000") and not v.phone("123-456-7890")


def test_licence_number_and_ip_address():
    assert v.licence_number("Driver's License: WA WDLZ6NSYHJ82")
    assert v.licence_number("DL No. S12345678") and not v.licence_number("DL: AB1")
    assert v.ip_address("198.51.100.7") and v.ip_address("2001:db8:1:2::7")
    assert not v.ip_address("::1") and not v.ip_address("2001:db8::zz")


def test_validators_that_need_word_lists_or_context():
    from gateway.rules import builtin as b

    assert b.zip_code("MA 02139") and b.zip_code("Zip: 02139") and not b.zip_code("PO 12345")
    assert b._lab_value("", "HbA1c", " 9.1%") and b._lab_value("", "INR", ": 5.0")
    assert not b._lab_value("", "HbA1c", " > 9% in 142 patients")
    assert not b._lab_value("", "weight", " loss")
    assert b._icd10_in_text("Dx: ", "E11.9", "") and not b._icd10_in_text("2897-60790-", "T88", "")
