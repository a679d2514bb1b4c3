"""Synthetic identifiers that pass (or, for near misses, deliberately fail) real validators.

Every generator takes a ``random.Random`` so the corpus is reproducible; every identifier type
that has a public validity rule has a ``valid_*`` checker here, used by the corpus tests to prove
the generated values are well formed. The detector engine has its own validators: these exist
only so the corpus can check itself.
"""

from __future__ import annotations

import datetime as dt
import random
import re

DIGITS = "0123456789"

# --------------------------------------------------------------------------- checksums


def luhn_ok(number: str) -> bool:
    """Luhn (mod 10) check over the digits of ``number``."""
    digits = [int(c) for c in number if c.isdigit()]
    if not digits:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_check_digit(payload: str) -> str:
    """The digit that, appended to ``payload``, makes it pass the Luhn check."""
    for d in DIGITS:
        if luhn_ok(payload + d):
            return d
    raise AssertionError("unreachable")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(DIGITS) for _ in range(n))


# --------------------------------------------------------------------------- SSN

# Numbers that were published (wallet inserts, examples) and must never count as real SSNs.
ADVERTISING_SSNS = frozenset({"078051120", "219099999", "123456789", "111111111", "333333333"})


def valid_ssn(value: str) -> bool:
    d = re.sub(r"[\s-]", "", value)
    if not re.fullmatch(r"\d{9}", d):
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    if area in ("000", "666") or area[0] == "9":
        return False
    if group == "00" or serial == "0000":
        return False
    return d not in ADVERTISING_SSNS and not (d.startswith("98765432"))


def ssn_digits(rng: random.Random) -> str:
    while True:
        area = rng.randint(1, 899)
        if area == 666:
            continue
        d = f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
        if valid_ssn(d):
            return d


def invalid_ssn_digits(rng: random.Random) -> str:
    """Nine digits in SSN shape that fail SSN validation (for invoice and PO near misses)."""
    kind = rng.randrange(5)
    if kind == 0:
        d = f"000{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
    elif kind == 1:
        d = f"666{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
    elif kind == 2:
        d = f"9{rng.randint(0, 99):02d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
    elif kind == 3:
        d = f"{rng.randint(1, 899):03d}00{rng.randint(1, 9999):04d}"
    else:
        d = f"{rng.randint(1, 899):03d}{rng.randint(1, 99):02d}0000"
    assert not valid_ssn(d)
    return d


def fmt_ssn(d: str, style: int) -> str:
    if style == 0:
        return f"{d[:3]}-{d[3:5]}-{d[5:]}"
    if style == 1:
        return f"{d[:3]} {d[3:5]} {d[5:]}"
    return d


# --------------------------------------------------------------------------- MBI

MBI_LETTERS = "ACDEFGHJKMNPQRTUVWXY"  # A-Z without S, L, O, I, B, Z
_MBI_ALNUM = DIGITS + MBI_LETTERS
# Character class per position (1-based positions 1..11): n=numeric 1-9, N=numeric 0-9,
# a=alphabetic, x=alphanumeric.
_MBI_SHAPE = "naxNaxNaaNN"


def mbi(rng: random.Random) -> str:
    out = []
    for kind in _MBI_SHAPE:
        if kind == "n":
            out.append(rng.choice("123456789"))
        elif kind == "N":
            out.append(rng.choice(DIGITS))
        elif kind == "a":
            out.append(rng.choice(MBI_LETTERS))
        else:
            out.append(rng.choice(_MBI_ALNUM))
    return "".join(out)


def valid_mbi(value: str) -> bool:
    v = value.replace("-", "").upper()
    if len(v) != 11:
        return False
    for ch, kind in zip(v, _MBI_SHAPE, strict=True):
        ok = {
            "n": ch in "123456789",
            "N": ch in DIGITS,
            "a": ch in MBI_LETTERS,
            "x": ch in _MBI_ALNUM,
        }[kind]
        if not ok:
            return False
    return True


def fmt_mbi(v: str, dashes: bool) -> str:
    return f"{v[:4]}-{v[4:7]}-{v[7:]}" if dashes else v


# --------------------------------------------------------------------------- NPI, DEA


def npi(rng: random.Random) -> str:
    body = rng.choice("12") + _digits(rng, 8)
    return body + luhn_check_digit("80840" + body)


def valid_npi(value: str) -> bool:
    return bool(re.fullmatch(r"[12]\d{9}", value)) and luhn_ok("80840" + value)


DEA_FIRST = "ABFGM"


def dea(rng: random.Random, last_name: str) -> str:
    d = [rng.randrange(10) for _ in range(6)]
    check = (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10
    second = last_name[:1].upper() if last_name[:1].isalpha() else "X"
    return rng.choice(DEA_FIRST) + second + "".join(map(str, d)) + str(check)


def valid_dea(value: str) -> bool:
    if not re.fullmatch(r"[A-Z][A-Z9]\d{7}", value):
        return False
    d = [int(c) for c in value[2:]]
    return (d[0] + d[2] + d[4] + 2 * (d[1] + d[3] + d[5])) % 10 == d[6]


# --------------------------------------------------------------------------- ABA routing

_ABA_PREFIXES = [f"{i:02d}" for i in (*range(1, 13), *range(21, 33), *range(61, 73), 80)]


def aba(rng: random.Random) -> str:
    body = rng.choice(_ABA_PREFIXES) + _digits(rng, 6)
    d = [int(c) for c in body]
    partial = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5])
    return body + str((10 - partial % 10) % 10)


def valid_aba(value: str) -> bool:
    if not re.fullmatch(r"\d{9}", value) or value[:2] not in _ABA_PREFIXES:
        return False
    d = [int(c) for c in value]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8])) % 10 == 0


# --------------------------------------------------------------------------- payment cards


def credit_card(rng: random.Random) -> tuple[str, str]:
    """(brand, digits) with a valid Luhn check digit and a brand-correct prefix and length."""
    brand = rng.choice(["Visa", "Visa", "Mastercard", "Mastercard", "Amex", "Discover"])
    if brand == "Visa":
        payload = "4" + _digits(rng, 14)
    elif brand == "Mastercard":
        payload = rng.choice(["51", "52", "53", "54", "55"]) + _digits(rng, 13)
    elif brand == "Amex":
        payload = rng.choice(["34", "37"]) + _digits(rng, 12)
    else:
        payload = "6011" + _digits(rng, 11)
    return brand, payload + luhn_check_digit(payload)


def valid_card(value: str) -> bool:
    d = re.sub(r"[\s-]", "", value)
    if not re.fullmatch(r"\d{15,16}", d):
        return False
    brand_ok = (
        (d[0] == "4" and len(d) == 16)
        or (d[:2] in ("51", "52", "53", "54", "55") and len(d) == 16)
        or (d[:2] in ("34", "37") and len(d) == 15)
        or (d.startswith("6011") and len(d) == 16)
    )
    return brand_ok and luhn_ok(d)


def fmt_card(d: str, style: int) -> str:
    if style == 0:
        return d
    sep = " " if style == 1 else "-"
    if len(d) == 15:
        return sep.join((d[:4], d[4:10], d[10:]))
    return sep.join(d[i : i + 4] for i in range(0, 16, 4))


# --------------------------------------------------------------------------- VIN

_VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ" + DIGITS
_VIN_VALUES = {
    **{str(i): i for i in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
_VIN_WMI = ("1HG", "1FT", "1G1", "2T1", "3VW", "5YJ", "JTD", "WVW", "KMH", "1C4", "4T1", "5NP")
_VIN_YEARS = "ABCDEFGHJKLMNPRS"  # 2010 .. 2025


def _vin_check(vin17: str) -> str:
    total = sum(_VIN_VALUES[c] * w for c, w in zip(vin17, _VIN_WEIGHTS, strict=True))
    r = total % 11
    return "X" if r == 10 else str(r)


def vin(rng: random.Random) -> str:
    chars = list(
        rng.choice(_VIN_WMI)
        + "".join(rng.choice(_VIN_CHARS) for _ in range(5))
        + "0"
        + rng.choice(_VIN_YEARS)
        + rng.choice(_VIN_CHARS)
        + _digits(rng, 6)
    )
    chars[8] = _vin_check("".join(chars))
    return "".join(chars)


def valid_vin(value: str) -> bool:
    if not re.fullmatch(r"[A-HJ-NPR-Z0-9]{17}", value):
        return False
    return value[8] == _vin_check(value)


# --------------------------------------------------------------------------- other identifiers


def mrn(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return _digits(rng, 8)
    if kind == 1:
        return "00" + rng.choice("123456789") + _digits(rng, 5)
    if kind == 2:
        return rng.choice("EMH") + rng.choice("123456789") + _digits(rng, 6)
    if kind == 3:
        return rng.choice("123456789") + _digits(rng, 6)
    return rng.choice("123456789") + _digits(rng, 9)


def medicaid_id(rng: random.Random, state: str) -> str:
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    if state == "NY":
        return rng.choice(letters) + rng.choice(letters) + _digits(rng, 5) + rng.choice(letters)
    if state == "CA":
        return "9" + _digits(rng, 7) + rng.choice("ABCDEFGH")
    if state in ("MA", "OH"):
        return "10" + _digits(rng, 10)
    if state in ("FL", "PA"):
        return rng.choice("123456789") + _digits(rng, 9)
    return rng.choice("123456789") + _digits(rng, 8)


def member_id(rng: random.Random) -> str:
    letters = "ABCDEFGHJKMNPQRTUVWXYZ"
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(rng.choice(letters) for _ in range(3)) + _digits(rng, 9)
    if kind == 1:
        return "W" + _digits(rng, 9)
    if kind == 2:
        return rng.choice("123456789") + _digits(rng, 8) + rng.choice(["01", "02", "00"])
    return (
        "".join(rng.choice(letters) for _ in range(2)) + _digits(rng, 7) + "-0" + rng.choice("12")
    )


def account_number(rng: random.Random) -> str:
    return rng.choice("123456789") + _digits(rng, rng.choice([6, 8, 9, 10, 11]))


def bank_account(rng: random.Random) -> str:
    return rng.choice("123456789") + _digits(rng, rng.choice([7, 9, 10, 11]))


DL_STATES = ("CA", "NY", "TX", "FL", "IL", "PA", "WA", "MA", "OH", "GA")


def drivers_license(rng: random.Random, state: str) -> str:
    up = "ABCDEFGHJKLMNPRSTUVWXYZ"
    if state == "CA":
        return rng.choice(up) + _digits(rng, 7)
    if state == "NY":
        d = _digits(rng, 9)
        return f"{d[:3]} {d[3:6]} {d[6:]}"
    if state in ("TX", "PA"):
        return rng.choice("123456789") + _digits(rng, 7)
    if state == "FL":
        d = _digits(rng, 12)
        return f"{rng.choice(up)}{d[:3]}-{d[3:6]}-{d[6:8]}-{d[8:11]}-{d[11]}"
    if state == "IL":
        d = _digits(rng, 11)
        return f"{rng.choice(up)}{d[:3]}-{d[3:7]}-{d[7:]}"
    if state == "WA":
        return "WDL" + "".join(rng.choice(up + DIGITS) for _ in range(9))
    if state == "MA":
        return "S" + _digits(rng, 8)
    if state == "OH":
        return rng.choice(up) + rng.choice(up) + _digits(rng, 6)
    return rng.choice("123456789") + _digits(rng, 8)


def passport(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice("123456789") + _digits(rng, 8)
    return rng.choice("ACEFGHJKLMN") + _digits(rng, 8)


def device_serial(rng: random.Random) -> str:
    up = "ABCDEFGHJKLMNPRTUVWXYZ"
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(rng.choice(up) for _ in range(3)) + _digits(rng, 6) + rng.choice(up)
    if kind == 1:
        return rng.choice(up) + rng.choice(up) + _digits(rng, 7)
    if kind == 2:
        return f"{_digits(rng, 4)}-{_digits(rng, 5)}-{rng.choice(up)}{_digits(rng, 2)}"
    return "SN" + _digits(rng, 9)


def claim_number(rng: random.Random) -> str:
    return rng.choice(["CLM", "CL-", ""]) + _digits(rng, 10)


# --------------------------------------------------------------------------- phone, ip

AREA_CODES = (
    "201", "202", "203", "206", "212", "213", "214", "215", "216", "224", "248", "267", "281",
    "301", "303", "305", "312", "313", "314", "317", "319", "401", "402", "404", "407", "410",
    "412", "414", "415", "425", "443", "469", "480", "502", "503", "504", "505", "508", "510",
    "512", "513", "515", "517", "518", "585", "602", "603", "608", "612", "614", "615", "617",
    "619", "630", "646", "650", "651", "678", "702", "704", "713", "714", "716", "717", "718",
    "720", "732", "757", "763", "774", "781", "801", "804", "813", "814", "816", "817", "818",
    "847", "857", "860", "901", "904", "916", "919", "925", "949", "952", "954", "972", "978",
)  # fmt: skip


def phone_digits(rng: random.Random) -> str:
    while True:
        exch = rng.randint(200, 999)
        if exch % 100 == 11 or exch == 555 or exch == 950 or exch == 958 or exch == 959:
            continue
        return f"{rng.choice(AREA_CODES)}{exch}{rng.randint(0, 9999):04d}"


def fmt_phone(d: str, style: int) -> str:
    a, e, n = d[:3], d[3:6], d[6:]
    return [
        f"({a}) {e}-{n}",
        f"{a}-{e}-{n}",
        f"{a}.{e}.{n}",
        f"+1 {a} {e} {n}",
        f"1-{a}-{e}-{n}",
        f"({a}){e}-{n}",
        f"+1 ({a}) {e}-{n}",
    ][style % 7]


_PUBLIC_FIRST_OCTETS = (
    24,
    47,
    50,
    64,
    67,
    68,
    69,
    70,
    71,
    73,
    74,
    75,
    76,
    96,
    97,
    98,
    99,
    104,
    107,
    108,
    135,
    136,
    142,
    162,
    166,
    173,
    174,
    184,
    207,
    208,
    209,
)


def public_ip(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return f"{rng.choice(['198.51.100', '203.0.113', '192.0.2'])}.{rng.randint(1, 254)}"
    return (
        f"{rng.choice(_PUBLIC_FIRST_OCTETS)}.{rng.randint(0, 255)}."
        f"{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    )


def private_ip(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if kind == 1:
        return f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def ipv6(rng: random.Random) -> str:
    return (
        "2001:db8:"
        + ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(3))
        + "::"
        + (f"{rng.randint(1, 0xFFFF):x}")
    )


# --------------------------------------------------------------------------- dates

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip

DATE_STYLES = 12


def fmt_date(d: dt.date, style: int) -> str:
    """One of the many ways people write dates (US ordering when numeric)."""
    m, day, y = d.month, d.day, d.year
    mon, month = _MONTHS[m - 1][:3], _MONTHS[m - 1]
    return [
        f"{m:02d}/{day:02d}/{y}",
        f"{m}/{day}/{y}",
        f"{y}-{m:02d}-{day:02d}",
        f"{mon} {day} {y}",
        f"{mon} {day}, {y}",
        f"{month} {day}, {y}",
        f"{day} {month} {y}",
        f"{day:02d}-{mon}-{y}",
        f"{m:02d}-{day:02d}-{y % 100:02d}",
        f"{m:02d}/{day:02d}/{y % 100:02d}",
        f"{m:02d}.{day:02d}.{y}",
        f"{day:02d}-{mon.upper()}-{y}",
    ][style % DATE_STYLES]


def random_date(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randint(0, (end - start).days))
