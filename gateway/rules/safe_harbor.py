"""Validators for Safe Harbor identifiers as clinical notes write them: dates of an encounter
("admitted on the third of July"), ages over 89, hyphenated surnames, nicknames, labelled
codes (plates, biometric templates, study participant codes) and links to one patient's
record. The rule patterns (conf/rules/00-defaults.yaml) find the phrases in one Hyperscan pass;
these functions only look at a matched phrase and a few characters around it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from . import wordlists
from .builtin import _signature, _words
from .engine import ContextualValidator
from .validators import date

# --------------------------------------------------------------------------- dates

_MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_ORDINALS = {w: i + 1 for i, w in enumerate(re.findall(r"\S+", (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth "
    "twenty-first twenty-second twenty-third twenty-fourth twenty-fifth twenty-sixth "
    "twenty-seventh twenty-eighth twenty-ninth thirtieth thirty-first")))}
_WORD = re.compile(r"(?:twenty|thirty)[- ](?:first|second|third|fourth|fifth|sixth|seventh|"
                   r"eighth|ninth)|[a-z]+|\d+")


def encounter_date(text: str) -> bool:
    """A calendar date: numeric ('11/02/2023', '2023-11-02'), or with a month name and a day
    in digits or words, the year optional ('March 3', '3rd of March 2024', 'the third of
    July')."""
    low = text.lower()
    tokens = [t.replace(" ", "-") for t in _WORD.findall(low)]
    month = next((_MONTHS[t[:3]] for t in tokens if t[:3] in _MONTHS and not t.isdigit()
                  and (len(t) <= 4 or t.startswith(_FULL_MONTHS))), None)
    if month is None:
        return date(text)
    day = next((_ORDINALS[t] for t in tokens if t in _ORDINALS), None)
    nums = [int(t) for t in tokens if t.isdigit()]
    if day is None:
        if not nums:
            return False
        day = nums.pop(0) if nums[0] <= 31 else nums.pop()
    year_ok = all(1900 <= n <= 2099 for n in nums) and len(nums) <= 1
    return 1 <= day <= 31 and year_ok


# "01/02/2025 through 03/31/2025", "between ... and ...": a reporting period, not an encounter
_RANGE_AFTER = re.compile(r"^[ \t]*(?:through|thru|to|until|and|-|\u2013)[ \t]*\d", re.I)
_RANGE_BEFORE = re.compile(
    r"(?:\b(?:from|between|through|thru|to|until|since|and)|-|\u2013)[ \t]*$", re.I)


def _encounter_date(before: str, text: str, after: str) -> bool:
    """``encounter_date``, and not an end of a date range."""
    return not (_RANGE_AFTER.match(after) or _RANGE_BEFORE.search(before)) and encounter_date(
        text)


_FULL_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "sept", "october", "november", "december")

# --------------------------------------------------------------------------- ages

_AGE = re.compile(r"\d{2,3}")
# "aged 90 and over", "90+", "90-99", "90s", "over 90": a band of ages, not one person's age
_BAND_AFTER = re.compile(r"^(?:\+|s\b|[ \t]*(?:[-\u2013]|to|through|and|or)[ \t]*(?:\d|over|older|"
                         r"above|up|more|plus|beyond))", re.I)
_BAND_BEFORE = re.compile(r"(?:over|above|older[ \t]+than|>|\u2265|ages|between|from|"
                          r"patients|people|adults|residents|members|individuals|those)"
                          r"[ \t]*(?:aged?|age[ \t]+of)?[ \t]*$", re.I)


def _age_over_89(before: str, text: str, after: str) -> bool:
    """One person's age above 89 ('a 94-year-old woman', '92 y/o', 'aged 97'), not an age
    band in population figures ('patients aged 90 and over')."""
    m = _AGE.search(text)
    if m is None or not 90 <= int(m.group()) <= 125:
        return False
    return not (_BAND_AFTER.match(after) or _BAND_BEFORE.search(before))


# --------------------------------------------------------------------------- names

# hyphenated compounds written in title case that are not surnames ("Follow-Up", "Check-In")
_NOT_SURNAME_PARTS = _words("""
Follow Up Check In Out Post Pre Op Self Pay Co Walk Drop Off Sign Non Anti Multi Inter Intra
Sub Semi Ex Ray Well Child Year Old Long Short Term High Low Risk Day Week Month Time Full Part
On Call Back Home Care Based Led Wide Free Level Step Down Left Right Side Hand Face Up To
Date Start Stop End Year New Old Mid Re Un Over Under Cross All Inclusive Point Of Add
""")
_DOCTOR_BEFORE = re.compile(r"\b(?:Dr|Doctor|Prof|Professor|Nurse|Rev|Dear|Hi|Hello|Hey|"
                            r"Attn|Attention)\.?[ \t,:]*$", re.I)
_ROLE_BEFORE = re.compile(r"\b(?:provider|prescriber|physician|attending|referring|ordering|"
                          r"from|to|cc|by|signed|contact|coordinator|manager|specialist|"
                          r"director|nurse|rn|staff)[ \t]*[:#,-]?[ \t]*$", re.I)
_CLINICIAN_AFTER = re.compile(
    r"^[ \t]*(?:,[ \t]*(?:M\.?D|D\.?O|N\.?P|PA-C|PA|R\.?N|LPN|Ph\.?D|PharmD|DDS|LCSW|APRN|FNP|"
    r"DNP|MSN|BSN|MPH|CNM|PsyD|[A-Z][A-Za-z]+[ \t]+(?:Specialist|Coordinator|Manager|Director|"
    r"Educator|Nurse|Navigator|Analyst))\b|<|\[mailto:|[ \t]*wrote:)")

@functools.cache
def _name_sets() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """(first names, last names, words that are not names) from the shared name lists."""
    from .builtin import NOT_NAMES  # imported late: builtin registers this module's validators

    first, last = wordlists.person_names()
    return first, last, NOT_NAMES


def _title(w: str) -> str:
    return w[:1] + w[1:].lower() if w.isupper() and len(w) > 1 else w


def surname_parts_ok(surname: str, need_listed: bool) -> bool:
    """'Ferndale-Ostrowski': two or three capitalised parts, none a compound word's part;
    with ``need_listed`` at least one part is in the name lists."""
    first, last, not_names = _name_sets()
    parts = [_title(p) for p in surname.split("-")]
    if not 2 <= len(parts) <= 3:
        return False
    for p in parts:
        if len(p) < 2 or not p[0].isupper() or not p[1:].islower() or (
                p in _NOT_SURNAME_PARTS or p in not_names):
            return False
    return not need_listed or any(p in last or p in first for p in parts)


def _not_a_patient_position(before: str, after: str) -> bool:
    """A clinician, a correspondent, an addressee or a signature rather than a patient."""
    line = before[before.rfind("\n") + 1:]
    return bool(_DOCTOR_BEFORE.search(line) or _ROLE_BEFORE.search(line)
                or _CLINICIAN_AFTER.match(after) or _signature(before))


def _hyphenated_name(before: str, text: str, after: str) -> bool:
    """'Marisol Ferndale-Ostrowski', 'Ana M. Reyes-Villalobos': a listed first name, an
    optional initial, and a hyphenated surname, not in a clinician's or correspondent's
    position."""
    first, _, not_names = _name_sets()
    words = text.split()
    given, surname = _title(words[0]), words[-1]
    if given not in first or given in not_names or _RUN_ON.match(after):
        return False
    return surname_parts_ok(surname, need_listed=False) and not _not_a_patient_position(
        before, after)


_RUN_ON = re.compile(r"^-?[A-Za-z]")  # the match cut a word short


def _labelled_hyphenated(before: str, text: str, after: str) -> bool:
    """'patient Reyes-Villalobos', 'Patient: Ana Reyes-Villalobos': a hyphenated surname,
    one of its parts in the name lists, after a patient label."""
    if _RUN_ON.match(after):
        return False
    surname = text.split()[-1]
    return surname_parts_ok(surname, need_listed=True) and not _DOCTOR_BEFORE.search(
        text[:text.rfind(surname)])


_NICK = re.compile(r"[A-Z][A-Za-z'-]+$")


def nickname(text: str) -> bool:
    """The name after 'prefers to be called', 'goes by', 'nickname': one capitalised word
    that is not an everyday word of the name lists' stop list."""
    m = _NICK.search(text.rstrip("'\"\u2019\u201d"))
    if m is None:
        return False
    _, _, not_names = _name_sets()
    return _title(m.group()) not in not_names


# --------------------------------------------------------------------------- labelled codes

_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*$")


def labelled_code(text: str) -> bool:
    """The value after a label (a study participant code, a biometric template id): four or
    more letters and digits with at least one digit, not a bare year."""
    m = _VALUE.search(text)
    if m is None:
        return False
    v = m.group()
    alnum = sum(c.isalnum() for c in v)
    return alnum >= 4 and any(c.isdigit() for c in v) and not (
        v.isdigit() and len(v) == 4 and v[:2] in ("19", "20"))


_PLATE = re.compile(r"[A-Z0-9]{1,4}[- ]?[A-Z0-9]{1,5}$")


def vehicle_plate(text: str) -> bool:
    """A licence plate after its label: 5 to 8 letters and digits, both kinds present."""
    m = _PLATE.search(text)
    if m is None:
        return False
    v = m.group().replace("-", "").replace(" ", "")
    return 5 <= len(v) <= 8 and any(c.isdigit() for c in v) and any(c.isalpha() for c in v)


# --------------------------------------------------------------------------- links

_PATIENT_PATH = re.compile(
    r"/(?:patients?|pt|members?|chart)/(?=[A-Za-z0-9-]*\d)[A-Za-z0-9-]{3,}(?:[/?#.]|$)"
    r"|[?&](?:patient_?id|pid|mrn|member_?id|patientid|chart_?id)=[A-Za-z0-9-]*\d", re.I)
_PERSONAL_PATH = re.compile(
    r"/(?:u|users?|members?|profiles?|patients?|pt|~)/[A-Za-z][A-Za-z0-9._-]{2,}(?:[/?#]|$)"
    r"|/~[A-Za-z][A-Za-z0-9._-]{2,}", re.I)
_NOT_PERSONAL = re.compile(r"/(?:login|signin|sign-in|logout|register|signup|sign-up|home|"
                           r"help|settings|search|new|me|self|profile|dashboard)(?:[/?#]|$)",
                           re.I)


def _path(url: str) -> str:
    rest = url.strip().rstrip("\"'<>.,;)").split("://", 1)[-1]
    return rest[rest.find("/"):] if "/" in rest else ""


def patient_record_url(text: str) -> bool:
    """A link naming one patient's record: /patient/994201, ?mrn=00123456."""
    return _PATIENT_PATH.search(_path(text)) is not None


def personal_url(text: str) -> bool:
    """A link to one person's page: /u/jroe, /users/jane.roe, /~jroe (not /login)."""
    path = _path(text)
    m = _PERSONAL_PATH.search(path)
    return m is not None and _NOT_PERSONAL.search(m.group()) is None


def validators() -> dict[str, Callable[[str], bool]]:
    return {
        "encounter_date": ContextualValidator(_encounter_date, before=12, after=12),
        "age_over_89": ContextualValidator(_age_over_89, before=30, after=16),
        "hyphenated_name": ContextualValidator(_hyphenated_name, before=60, after=40),
        "hyphenated_patient": ContextualValidator(_labelled_hyphenated, before=0, after=4),
        "nickname": nickname,
        "labelled_code": labelled_code,
        "vehicle_plate": vehicle_plate,
        "patient_record_url": patient_record_url,
        "personal_url": personal_url,
    }
