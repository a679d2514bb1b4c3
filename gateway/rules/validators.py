"""Checksums and format rules that turn a pattern match into an identifier (or reject it).

Each validator takes the matched text and returns True when it is a plausible identifier of
its kind; the detector names it with ``validate: NAME`` in the rule files.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

_DIGITS = re.compile(r"\d")

# Numbers printed in advertising and specimen cards, never issued to a person.
_SSN_ADVERTISING = {"078051120", "219099999", "123456789", "111111111", "333333333"}


def digits(text: str) -> str:
    return "".join(_DIGITS.findall(text))


def ssn(text: str) -> bool:
    d = digits(text)
    if len(d) != 9 or d in _SSN_ADVERTISING:
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    seps = [c for c in text if not c.isdigit()]
    # 123-45-6789 or 123 45 6789 or bare; not 12-345-6789 or mixed separators
    return not seps or (len(seps) == 2 and seps[0] == seps[1] and text[3] == seps[0])


def luhn(number: str) -> bool:
    d = digits(number)
    if not d:
        return False
    total = 0
    for i, ch in enumerate(reversed(d)):
        n = int(ch)
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def credit_card(text: str) -> bool:
    d = digits(text)
    if not 13 <= len(d) <= 19 or len(set(d)) < 2 or not luhn(d):
        return False
    # Issuer prefixes: Visa 4, Mastercard 51-55/2221-2720, Amex 34/37, Discover 6011/65/644-649
    return (
        d[0] == "4"
        or 51 <= int(d[:2]) <= 55
        or 2221 <= int(d[:4]) <= 2720
        or d[:2] in ("34", "37")
        or d.startswith(("6011", "65"))
        or 644 <= int(d[:3]) <= 649
    )


def aba_routing(text: str) -> bool:
    d = digits(text)[-9:]
    if len(d) != 9 or d == "000000000":
        return False
    w = (3, 7, 1) * 3
    return sum(int(c) * k for c, k in zip(d, w, strict=True)) % 10 == 0 and int(d[:2]) <= 80


def npi(text: str) -> bool:
    d = digits(text)[-10:]
    return len(d) == 10 and d[0] in "12" and luhn("80840" + d)


def dea(text: str) -> bool:
    t = text.strip().upper()[-9:]
    registrant_ok = t[:2].isalpha() or (t[:1].isalpha() and t[1:2] == "9")
    if len(t) != 9 or not registrant_ok:
        return False
    if not t[2:].isdigit():
        return False
    d = [int(c) for c in t[2:]]
    check = (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10
    return check == d[6]


_VIN_MAP = {**{str(i): i for i in range(10)},
            **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
            **dict(zip("JKLMN", range(1, 6), strict=True)), "P": 7, "R": 9,
            **dict(zip("STUVWXYZ", range(2, 10), strict=True))}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def vin(text: str) -> bool:
    t = text.strip().upper()
    if len(t) != 17 or any(c not in _VIN_MAP for c in t) or t.isdigit() or t.isalpha():
        return False
    total = sum(_VIN_MAP[c] * w for c, w in zip(t, _VIN_WEIGHTS, strict=True))
    check = total % 11
    return t[8] == ("X" if check == 10 else str(check))


_MBI = re.compile(
    r"[1-9][AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d[AC-HJKMNP-RT-Y][AC-HJKMNP-RT-Y0-9]\d"
    r"[AC-HJKMNP-RT-Y]{2}\d{2}"
)


def mbi(text: str) -> bool:
    t = text.strip().upper().replace("-", "")
    return len(t) == 11 and _MBI.fullmatch(t) is not None


def ipv4(text: str) -> bool:
    parts = text.strip().split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return False
    nums = [int(p) for p in parts]
    return all(n <= 255 for n in nums) and nums[0] not in (0, 255) and nums != [127, 0, 0, 1]


def licence_number(text: str) -> bool:
    """A licence-like number after its label: some digits, and long enough to be issued to a
    person (US driver's licences are 7-13 letters and digits)."""
    value = text.rsplit(":", 1)[-1].rsplit("#", 1)[-1]
    return len(digits(value)) >= 2 and sum(c.isalnum() for c in value) >= 7


_URL_ID = re.compile(r"[/=](?=[A-Za-z0-9-]*\d)[A-Za-z0-9-]{6,}(?:[/?&#]|$)")


def record_url(text: str) -> bool:
    """A link to one record: a path segment or query value of six or more letters and digits
    with a digit in it (https://portal/mychart/patient/3fa9c2e1/results, ?mrn=00123456), not
    a site's home or login page."""
    url = text.strip().rstrip("\"'<>")
    rest = url.split("://", 1)[-1]
    path = rest[rest.find("/"):] if "/" in rest else ""
    return _URL_ID.search(path) is not None


def ip_address(text: str) -> bool:
    """An IPv4 address as ``ipv4`` accepts, or an IPv6 address (not loopback or unspecified)."""
    t = text.strip()
    if ":" not in t:
        return ipv4(t)
    try:
        addr = ipaddress.IPv6Address(t)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_unspecified)


_NUMBER = re.compile(r"\d+")
_MONTH = re.compile(r"jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec")


def date(text: str) -> bool:
    """A calendar date that could be a birth date (year 1900-2030, month and day in range)."""
    nums = [int(n) for n in _NUMBER.findall(text)]
    if _MONTH.search(text.lower()) is not None:  # a month name
        if len(nums) < 2:
            return False
        day, year = nums[0], nums[-1]
        if day > 31:
            day, year = nums[-1], nums[0]
        return 1 <= day <= 31 and (1900 <= year <= 2030 or year < 100)
    if len(nums) != 3:
        return False
    a, b, c = nums
    if a >= 1000:  # ISO: year-month-day
        return 1900 <= a <= 2030 and 1 <= b <= 12 and 1 <= c <= 31
    year_ok = 1900 <= c <= 2030 or c < 100
    return year_ok and ((1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31))


def phone(text: str) -> bool:
    d = digits(text)
    if len(d) == 11 and d[0] == "1":
        d = d[1:]
    fictional = d[3:6] == "555" and d[6:8] == "01"  # 555-0100..0199 are for fiction
    if len(d) != 10 or d[0] in "01" or d[3] in "01" or fictional:
        return False
    return len(set(d)) > 2


VALIDATORS: dict[str, Callable[[str], bool]] = {
    "ssn": ssn,
    "luhn": luhn,
    "credit_card": credit_card,
    "aba_routing": aba_routing,
    "npi": npi,
    "dea": dea,
    "vin": vin,
    "mbi": mbi,
    "ipv4": ipv4,
    "ip_address": ip_address,
    "record_url": record_url,
    "licence_number": licence_number,
    "date": date,
    "phone": phone,
}
