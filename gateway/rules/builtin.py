"""Validators and word lists that need the large vocabularies (code lists, names, drugs).

The name validators decide whether capitalised words are a person's name (first and last
name lists from Faker, see ``wordlists``) and, from the few characters around the match,
whether that person is a clinician or a correspondent rather than a patient: a title or
credential ("Dr.", ", MD"), a role label ("Prescriber:"), a signature position (the line
after "Thanks,"), an e-mail display name ("Jane Roe <jane@...>"), a street ("42 Jane Roe
Lane") or a company ("Ross, Grant and Wolfe").
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import phonenumbers

from . import wordlists
from .engine import ContextualValidator
from .validators import date

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*\.?")
_TITLE_WORDS = frozenset({"Mr", "Mrs", "Ms", "Miss", "Mx"})
_LABEL_WORDS = frozenset({
    "patient", "patients", "pt", "pts", "name", "names", "client", "resident", "beneficiary",
    "insured", "member", "subscriber", "guarantor", "claimant", "last", "first", "re",
    "regarding", "patientname", "full", "legal", "of", "employee", "dependent",
})
_GREETINGS = frozenset({"dear", "hi", "hello", "hey", "good", "morning", "afternoon",
                        "evening", "attn", "attention"})

def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Capitalised words that follow a label or start a sentence and are not names, although many
# of them are in the name lists (Faker's lists hold "Floor", "Doctor", "Date", ...). Words that
# are common surnames or given names as well ("Brooks", "Ward", "Grant") are left out: a name
# needs a first and a last name from the lists, which such words rarely make together.
NOT_NAMES = _words("""
Portal Care Services Service Support Access Information Info Safety Experience Education
Relations Advocate Financial Billing Meeting Update Updates Request Follow Your The Our This
That These Those Team All Staff Colleagues Colleague Sir Madam Doctor Dr Customer Friends Valued
Hello Hi Budget Schedule Agenda Invoice Order Name Names Will Can Could Would Should Shall Must
Might Please Thanks Thank Regards Great Happy Dear Welcome Floor Room Date Read Fall Spring Note
Notes Center Centre Clinic Hospital Health Medical Medicine Group Associates Partners Family
Primary Urgent Emergency Department Dept Unit Office Front Desk Main South East Street Road
Avenue Drive Suite Apt Building Campus Lab Labs Laboratory Pharmacy Radiology Imaging Cardiology
Oncology Surgery Pediatrics Neurology Orthopedics Dermatology Psychiatry Behavioral Mental
Physical Therapy Rehab Home Hospice Nursing Senior Living Dental Vision Eye Plan Plans Insurance
Medicare Medicaid Blue Shield Mutual Life Trust Bank Union Harbor Valley River Mountain Lake Bay
Port Mount Saint St New Old Big Great Grand Royal General Chief Head Lead Junior Director
Manager Coordinator Specialist Analyst Assistant Associate Administrator Supervisor Officer
Representative Rep Nurse Physician Provider Prescriber Pharmacist Technician Counselor Therapist
Surgeon Resident Fellow Intern Student Volunteer Reception Receptionist Scheduler Scheduling
Registration Intake Records Record Chart Result Results Report Reports Review Reviewed Status
Summary Discharge Admission Admitted Referral Referrals Consult Consultation Visit Visits
Appointment Reminder Confirmation Monday Tuesday Wednesday Thursday Friday Saturday Sunday Mon
Tue Wed Thu Fri Sat Sun January February March August September October November December Jan
Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Today Tomorrow Yesterday Morning Afternoon Evening
Night Week Month Year Quarter Annual Daily Weekly Monthly Total Subtotal Balance Payment
Payments Account Amount Due Paid Credit Debit Card Visa Mastercard Discover Amex Check Cash
Refund Claim Claims Policy Policies Procedure Procedures Protocol Guideline Guidelines Pathway
Form Forms Letter Memo Notice Alert Warning Error Test Tests Testing Sample Samples Specimen
Specimens Orders Supply Supplies Item Items Product Products Pricing Quote Sale Sales Offer Free
Shipping Ship Delivery Tracking Package Box Yes No Not None Other Unknown Male Female Sex Gender
Age Dob Mrn Ssn Phone Fax Email Mail Address City State Zip Country County Inbox Sent Draft
Subject From To Cc Bcc Reply Forward Fwd Re Fw Wrote Original Message Confidential
Confidentiality Privileged Private Secure Security Privacy Compliance Hipaa Diagnosis Problem
Medication Medications Allergies Allergy History Assessment Impression Findings Exam Vitals
Level Levels High Low Normal Abnormal Critical Stable Positive Negative Pending Approved Denied
Active Inactive Closed Open Routine Stat Signature Signed Sincerely Cheers Respectfully Warmly
Yours Truly Kind Warm Many Catholic Baptist Methodist Presbyterian Lutheran Jewish Memorial
Community Regional Children Women Womens Mens Veterans Providence Advent Adventist Trinity
Sacred Heart Samaritan Angels American National International Global United States America
Pacific Atlantic Northern Southern Eastern Western Central Coastal Metro Metropolitan Urban
Rural Tri Bi Pro Plus Per Via Ave Blvd Rd Ln Ct Pl Hwy Pkwy Ste Attn Ref Inv Acct Num Id Ids
""")

_CREDENTIAL_AFTER = re.compile(
    r"^[ \t]*,?[ \t]*(?:M\.?D|D\.?O|N\.?P|PA-C|PA|R\.?N|LPN|CNA|CMA|MA|Ph\.?D|PharmD|RPh|DDS|"
    r"DMD|DPM|OD|DC|LCSW|LMFT|LPC|LMHC|APRN|CRNA|FNP(?:-[BC])?|DNP|MSN|BSN|CNM|MPH|FACP|FACC|"
    r"FAAFP|PsyD|MBBS|CNP|DPT|OTR|SLP|RD|CDE|CDCES|MBA|NP-C|AGNP|ACNP|PMHNP)\b\.?"
    r"(?![A-Za-z]|\.[A-Za-z]|\s*[:#]|\s+\d)")  # not "D.O.B.", "MA 02139", "PA: ..."
_CLINICIAN_BEFORE = re.compile(r"\b(?:Dr|Doctor|Prof|Professor|Nurse|Rev)\.?\s*$", re.I)
_ROLES = (
    r"educator|coordinator|manager|specialist|director|nurse|navigator|counsell?or|therapist|"
    r"assistant|representative|rep|analyst|officer|administrator|physician|pharmacist|"
    r"technician|technologist|dietitian|nutritionist|worker|chaplain|liaison|supervisor|"
    r"scheduler|receptionist|clerk|advocate|consultant|engineer|executive|president|founder|"
    r"surgeon|investigator|lead|chair|secretary|accountant|biller|coder|auditor|trainer|"
    r"instructor|professor|lecturer|researcher|scientist|agent|clinician|provider|"
    r"practitioner|midwife|paramedic|doula|aide|intern|fellow|attending|hospitalist|"
    r"intensivist|[a-z]+ologist|[a-z]+iatrist|[a-z]+ician")
_ROLE_LABEL_BEFORE = re.compile(
    r"\b(?:provider|prescriber|physician|attending|referring(?:\s+(?:provider|physician|md))?|"
    r"ordering(?:\s+(?:provider|physician|md))?|rendering(?:\s+provider)?|pcp|presenter|"
    r"speaker|keynote|author|from|to|cc|bcc|sender|(?<!emergency )contact|on[\s-]call|rn|staff|"
    r"assigned\s+to|covering|" + _ROLES + r")\s*[:#,\-]\s*$"
    r"|\b(?:prepared|reviewed|signed|approved|sent|dictated|authored|entered|submitted|"
    r"written|verified|transcribed|ordered|referred|seen|covered|read|interpreted|presented)"
    r"\s+by\s*:?\s*$"
    r"|\b(?:on\s+call|covering|cc'?ing|copying)\s*:?\s*$", re.I)
_SALUTATION_BEFORE = re.compile(
    r"\b(?:dear|hi|hello|hey|greetings|attn|attention|good\s+(?:morning|afternoon|evening))"
    r"[ \t:,]*$", re.I)
_EMAIL_AFTER = re.compile(r"^[ \t]*(?:<|\[mailto:)")
_WROTE_AFTER = re.compile(r"^[^\n]{0,80}\bwrote:", re.I)
_VALEDICTION = re.compile(
    r"(?:thanks|thank\s+you|many\s+thanks|regards|best|best\s+regards|kind\s+regards|"
    r"warm\s+regards|sincerely|cheers|respectfully|warmly|take\s+care|thx|--|-|v/r|"
    r"yours(?:\s+truly)?|all\s+the\s+best|with\s+thanks)[ \t]*[,.!]?", re.I)
_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
    r"Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Trail|Trl|Square|Sq|Loop|Row|Plaza|"
    r"Crossing|Xing|Pike|Alley|Run|Path|Walk|Pass|Point|Pt|Ridge|Heights|Hts|Hollow|Park|"
    r"Crescent|Close|Green|Gardens|Grove|Estates|Commons|Center|Centre|Mall|Hall|Building|Bldg|"
    r"Tower|Campus|Clinic|Hospital|Health|Medical|Healthcare|Group|Associates|Partners|"
    r"Pharmacy|Labs?|Laboratory|Laboratories|Center|Institute|University|College|School|"
    r"Foundation|Services|Systems|Solutions|Inc|LLC|Ltd|Corp|Company|Co|PC|PLLC|PA|LLP)")
_STREET_AFTER = re.compile(r"^[ \t]+" + _STREET_SUFFIX + r"\b\.?")
_NUMBER_BEFORE = re.compile(r"\b\d+[A-Za-z]? +(?:[NSEW]\.? +)?$")
_COMPANY_AFTER = re.compile(r"^,?[ \t]+(?:and|&)[ \t]+[A-Z]|^,[ \t]*[A-Z][A-Za-z'-]+,?[ \t]+"
                            r"(?:and|&)[ \t]")
_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Mx)\.?[ \t]+([A-Z][A-Za-z'-]*)")
# One pass each over the name's line before it and the text after it: is the name a
# clinician's, a correspondent's, an addressee's, a street's?
_LINE_NOT_PATIENT = re.compile("|".join(
    f"(?:{rx.pattern})" for rx in (_CLINICIAN_BEFORE, _ROLE_LABEL_BEFORE, _SALUTATION_BEFORE,
                                   _NUMBER_BEFORE)), re.I)
# Every alternative of _LINE_NOT_PATIENT ends the line: a title ("Dr."), a label's punctuation
# ("Prescriber:"), "by", "call", "covering", "copying", a greeting ("Dear") or a house number
# ("42 "). Searching a line for all of them costs microseconds (the role list is long); the
# line's last word or character says which one, if any, can match.
_CLINICIAN_END = frozenset({"dr", "doctor", "prof", "professor", "nurse", "rev"})
_ROLE_END = frozenset({"by", "call", "covering", "ccing", "ing", "copying"})  # "cc'ing": "ing"
_GREETING_END = frozenset({"dear", "hi", "hello", "hey", "greetings", "attn", "attention",
                           "morning", "afternoon", "evening"})
_NUMBER_BEFORE_I = re.compile(_NUMBER_BEFORE.pattern, re.I)  # as in _LINE_NOT_PATIENT
_LAST_ALNUM = re.compile(r"[A-Za-z0-9]+$")
_ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALNUM = _ALPHA + "0123456789"
_NON_ALPHA = "".join(chr(c) for c in range(128) if chr(c) not in _ALPHA)


def _label_finals() -> tuple[frozenset[str], tuple[str, ...]]:
    """The words that can end a match of _ROLE_LABEL_BEFORE or _SALUTATION_BEFORE (the last
    run of letters of the matched text), and the suffixes of the open-ended role words."""
    words = {"provider", "prescriber", "physician", "attending", "referring", "md", "ordering",
             "rendering", "pcp", "presenter", "speaker", "keynote", "author", "from", "to",
             "cc", "bcc", "sender", "contact", "call", "rn", "staff", "covering", "by", "ing",
             "ccing", "copying", "dear", "hi", "hello", "hey", "greetings", "attn", "attention",
             "morning", "afternoon", "evening"}
    suffixes = []
    for alt in _ROLES.split("|"):
        if alt.startswith("[a-z]+"):
            suffixes.append(alt[len("[a-z]+"):])
        elif alt == "counsell?or":
            words |= {"counselor", "counsellor"}
        else:
            assert alt.isalpha(), alt
            words.add(alt)
    return frozenset(words), tuple(suffixes)


_LABEL_FINALS, _LABEL_SUFFIXES = _label_finals()


def _line_not_patient(line: str) -> bool:
    """``_LINE_NOT_PATIENT.search(line)``, searching only with the alternative that can end
    the line."""
    core = line.rstrip()
    if not core:
        return False
    if not core.isascii() or "\n" in core:  # re.I folds a few non-ASCII letters onto ASCII
        return _LINE_NOT_PATIENT.search(line) is not None
    last = core[-1]
    if last in ":#,-":
        # a role label or a greeting ends with its word: searching the line for all of them
        # costs tens of microseconds, the last word says whether any can match
        rest = core.rstrip(_NON_ALPHA)
        word = rest[len(rest.rstrip(_ALPHA)):].lower()
        if word not in _LABEL_FINALS and not word.endswith(_LABEL_SUFFIXES):
            return False
        return bool(_ROLE_LABEL_BEFORE.search(line) or _SALUTATION_BEFORE.search(line))
    body = core[:-1] if last == "." else core
    tail = body[len(body.rstrip(_ALNUM)):].lower()  # _LAST_ALNUM, without its quadratic search
    if not tail:
        return False
    if tail in _CLINICIAN_END:
        return _CLINICIAN_BEFORE.search(line) is not None
    if tail in _ROLE_END:
        return _ROLE_LABEL_BEFORE.search(line) is not None
    if tail in _GREETING_END:
        return _SALUTATION_BEFORE.search(line) is not None
    if tail[0].isdigit() or tail in ("n", "s", "e", "w"):
        return _NUMBER_BEFORE_I.search(line) is not None
    return False


# "Jane Roe, Diabetes Educator", "Jane Roe\nRN Care Manager": a job title after the name
_ROLE_AFTER = (r"^(?:,[ \t]*|[ \t]*\r?\n[ \t]*|[ \t]+[-|][ \t]+)(?:[A-Z][A-Za-z&/.-]*[ \t]+){0,3}"
               r"(?i:" + _ROLES + r")\b")
_AFTER_NOT_PATIENT = re.compile(
    f"(?:{_CREDENTIAL_AFTER.pattern})|(?:{_EMAIL_AFTER.pattern})|(?i:{_WROTE_AFTER.pattern})"
    f"|(?:{_ROLE_AFTER})")
# the same without "wrote:" (searched for up to 80 characters ahead: cheaper to look for the
# word first)
_AFTER_NOT_PATIENT_NEAR = re.compile(
    f"(?:{_CREDENTIAL_AFTER.pattern})|(?:{_EMAIL_AFTER.pattern})|(?:{_ROLE_AFTER})")
_WROTE_AFTER_I = re.compile(_WROTE_AFTER.pattern, re.I)


_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _after_not_patient(after: str) -> bool:
    """``_AFTER_NOT_PATIENT.match(after)``."""
    # what the first characters must be for a credential (an upper-case letter after blanks
    # and a comma), an e-mail address ('<', '[mailto:') or a job title (after a comma, a line
    # break or a dash) to follow
    first = after[:1]
    rest = after.lstrip(" \t")
    c = rest[:1]
    if (c in _UPPER or c in ("<", "[", "\r", "\n", ",")
            or (c in ("-", "|") and first in (" ", "\t"))) and (
            _AFTER_NOT_PATIENT_NEAR.match(after) is not None):
        return True
    return "wrote:" in after[:86].lower() and _WROTE_AFTER_I.match(after) is not None


def _cap(word: str) -> str:
    """'ROE' -> 'Roe', "O'BRIEN" -> "O'brien" (Faker's lists are capitalised)."""
    return word[:1] + word[1:].lower() if word.isupper() and len(word) > 1 else word


def _names() -> tuple[frozenset[str], frozenset[str]]:
    return wordlists.person_names()


def _is_first(w: str) -> bool:
    w = _cap(w)
    return w in _names()[0] and w not in NOT_NAMES


def _is_last(w: str) -> bool:
    w = _cap(w)
    return w in _names()[1] and w not in NOT_NAMES


def _is_name(w: str) -> bool:
    return _is_first(w) or _is_last(w)


def _tokens(text: str) -> list[tuple[str, int]]:
    """Words with their offsets; a trailing '.' stays on initials and titles, a possessive
    "'s" is dropped ("Mark's labs")."""
    return list(zip(*_token_lists(text), strict=True))


_FIRST, _LAST = 1, 2


@functools.cache
def _name_flags() -> dict[str, int]:
    """Name word (as written: 'Roe' or 'ROE') -> _FIRST | _LAST, common words left out."""
    first, last = _names()
    flags: dict[str, int] = {}
    for names, bit in ((first, _FIRST), (last, _LAST)):
        for w in names:
            if w in NOT_NAMES:
                continue
            for form in (w, w.upper()):
                flags[form] = flags.get(form, 0) | bit
    return flags


_FLAGS: dict[str, int] = {}  # _name_flags(), without a cached call per candidate


def _flags() -> dict[str, int]:
    if not _FLAGS:
        _FLAGS.update(_name_flags())
    return _FLAGS


def _may_be_name(text: str) -> bool:
    """A title, or two words from the name lists: cheap set operations, no tokenising."""
    if "'" in text:  # a possessive: "Mark's labs"
        text = text.replace("'s", " ").replace("'S", " ")
    # (a comma or a period between words, cells of a pipe-delimited table)
    words = text.replace(",", " ").replace(".", " ").replace("|", " ").split()
    return not _TITLE_WORDS.isdisjoint(words) or len((_FLAGS or _flags()).keys() & words) >= 2


def _signature(before: str) -> bool:
    """Is the name alone at the start of a line that follows a valediction ('Thanks,')?"""
    nl = before.rfind("\n")
    if nl < 0 or before[nl + 1:].strip():
        return False
    prev = before[:nl].rstrip()
    return _VALEDICTION.fullmatch(prev[prev.rfind("\n") + 1:].strip()) is not None


def _token_lists(text: str) -> tuple[list[str], list[int]]:
    """``_tokens`` as two lists, words and offsets."""
    # findall and find rather than finditer (match objects are slow): a word starts at every
    # ASCII letter not inside the word before, so the next occurrence of a word after the
    # one before is where it was found
    ws: list[str] = []
    offs: list[int] = []
    find = text.find
    pos = 0
    for w in _WORD.findall(text):
        off = find(w, pos)
        pos = off + len(w)
        if len(w) > 2:
            w = w.rstrip(".")
            if w.endswith(("'s", "'S")):
                w = w[:-2]
        ws.append(w)
        offs.append(off)
    return ws, offs


def _name_span(text: str, prefiltered: bool = False) -> tuple[int, int] | None:
    """Where in ``text`` a person's name lies: 'Roe, Jane M.', 'Jane M. Roe', 'JANE ROE',
    'Ms. Jane Roe', 'Mr Roe'. Words around it that are not part of the name are allowed
    (the pattern that found the candidate is greedy). ``prefiltered``: ``_may_be_name(text)``
    is known to be true."""
    if not prefiltered and not _may_be_name(text):
        return None  # the common case, decided without tokenising
    get = (_FLAGS or _flags()).get
    ws, offs = _token_lists(text)
    bits = [get(w, 0) for w in ws]
    n = len(ws)
    # a title and a name-like word (a word keeps a final '.' only when it is one letter)
    if not _TITLE_WORDS.isdisjoint(ws):
        for i in range(n - 1):
            if ws[i].rstrip(".") in _TITLE_WORDS:
                nxt = _cap(ws[i + 1])
                if len(nxt) > 1 and nxt not in NOT_NAMES:
                    last = i + 2 if i + 2 < n and bits[i + 2] & _LAST else i + 1
                    return offs[i], offs[last] + len(ws[last])
    if n < 2:
        return None
    # "Last, First [M.]" (or "Last<tab>First", "Last | First" in a table)
    for i in range(n - 1):
        if bits[i] & _LAST and bits[i + 1] & _FIRST:
            off = offs[i]
            end = off + len(ws[i])
            if text[end:end + 1] in (",", "\t") or text[end:].lstrip(" \t")[:1] == "|":
                j = i + 1
                if j + 1 < n and len(ws[j + 1].rstrip(".")) == 1:
                    j += 1
                return off, offs[j] + len(ws[j])
    # "First [Middle | M.] Last"
    for i in range(n):
        if not bits[i] & _FIRST:
            continue
        for j in (i + 2, i + 1):
            if j >= n or not bits[j] & _LAST:
                continue
            if j == i + 2 and not (len(ws[i + 1].rstrip(".")) == 1 or bits[i + 1]):
                continue
            between = text[offs[i]:offs[j]]
            if "," in between or "\n" in between:
                continue
            return offs[i], offs[j] + len(ws[j])
    return None


def _mention(before: str, text: str, after: str, prefiltered: bool = False) -> bool:
    """A name in running text that is not a clinician's, a correspondent's, a street's or a
    company's."""
    span = _name_span(text, prefiltered)
    if span is None:
        return False
    s, e = span
    # what decides is on the name's own line (a title, a role label, a salutation, a house
    # number), on the line before it (a valediction) and just after it (a credential)
    before, after = before + text[:s], text[e:] + after
    line = before[before.rfind("\n") + 1:][-40:]
    return not (_line_not_patient(line) or _after_not_patient(after)
                or _signature(before) or _STREET_AFTER.match(after)
                or _COMPANY_AFTER.match(after))


def _prefiltered_mention(before: str, text: str, after: str) -> bool:
    """``_mention`` behind the ``_may_be_name`` prefilter (not repeated)."""
    return _mention(before, text, after, True)


def _labelled(before: str, text: str, after: str) -> bool:
    """A name after a patient label ("Patient: Roe, Jane", "pt John Miller",
    "PatientName: JANE ROE"): label words are skipped, then at least one word must be in the
    name lists, and the name must not be a clinician's ("Patient: Dr. ...")."""
    toks = _tokens(text)
    k = 0
    while k < len(toks) and toks[k][0].lower().rstrip(".") in _LABEL_WORDS:
        k += 1
    rest = toks[k:]
    if not rest:
        return False
    tail = text[rest[0][1]:]
    if _CLINICIAN_BEFORE.search(text[:rest[0][1]]) or _CREDENTIAL_AFTER.match(
            text[rest[-1][1] + len(rest[-1][0]):] + after):
        return False
    m = _TITLE.match(tail)
    if m is not None:
        return _cap(m.group(1)) not in NOT_NAMES
    names = [w for w, _ in rest if len(w.rstrip(".")) > 1]
    if not names or _cap(names[0]) in NOT_NAMES:
        return False
    return any(_is_name(w) for w in names[:3])


def _addressee(before: str, text: str, after: str) -> bool:
    """The person a message is written to: 'Dear Mr. Roe', 'Hi Jane Roe', 'Jane, your'.
    Clinicians ('Dear Dr. Roe', 'Hi Jane Roe, MD') and groups ('Dear Team') are not."""
    toks = [(w, o) for w, o in _tokens(text)
            if w.lower() not in _GREETINGS and w.lower() not in ("your", "you")]
    if not toks or toks[0][0].rstrip(".") in ("Dr", "Doctor", "Prof"):
        return False
    # the name is a title and a word, or up to three name words; a credential after it
    # makes the addressee a clinician
    if toks[0][0].rstrip(".") in _TITLE_WORDS:
        if len(toks) < 2 or _cap(toks[1][0]) in NOT_NAMES:
            return False
        last = 1
    else:
        last = 0
        while last + 1 < min(len(toks), 3) and (_is_name(toks[last + 1][0])
                                                 or len(toks[last + 1][0]) == 1):
            last += 1
        if not (_is_first(toks[0][0]) or _is_last(toks[last][0])):
            return False
    end = toks[last][1] + len(toks[last][0])
    return not _CREDENTIAL_AFTER.match(text[end:] + after)


_DATE_AFTER_NAME = re.compile(
    r"[ \t]*(?:\(|[-\u2013,]|[ \t])[ \t]*(?=\d|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
    r"[a-z]*\.?[ \t]+\d)", re.I)
_ID_AFTER_NAME = re.compile(r"[ \t]*\([ \t]*#?[ \t]*(?=[A-Z]{0,3}\d)")


def _name_then(rx: re.Pattern[str], value_ok: Callable[[str], bool]) -> Callable[
        [str, str, str], bool]:
    def check(before: str, text: str, after: str) -> bool:
        for m in rx.finditer(text):
            name, value = text[:m.start()], text[m.end():].rstrip(") \t")
            if value_ok(value) and _mention(before, name, after):
                return True
        return False
    return check


def _birth_date(text: str) -> bool:
    return date(text)


def _record_number(text: str) -> bool:
    """Six to twelve digits that are not a date ('Jane Roe (1987-02-14)' is a birth date)."""
    digits = sum(c.isdigit() for c in text)
    return 6 <= digits <= 12 and not date(text)


_LAB_VALUE = re.compile(
    r"^[ \t]*(?:level|result|value|count|reading|score|trough)?[ \t]*(?:of|was|is|=|:|at)?"
    r"[ \t]*:?[ \t]*\d+(?:\.\d+)?(?![\d/.-]*\d{4})")


def _lab_value(before: str, text: str, after: str) -> bool:
    """A lab or vital-sign name followed by its value ('HbA1c 9.1%', 'INR: 5.0'); not a
    comparison in a population figure ('HbA1c > 9% in 142 patients') nor a date."""
    return _LAB_VALUE.match(after) is not None


_NOT_OWN = re.compile(
    r"^[ \t]+(?:own[ \t]+)?(?:patients?|members?|clients?|residents?|staff|team|practice|clinic|"
    r"office|organi[sz]ation|facility|hospital|population|panel|providers?|physicians?|"
    r"doctors?|nurses?|colleagues|employees|customers|community|area|region|state|"
    r"company|group)\b", re.I)


def _own_reference(before: str, text: str, after: str) -> bool:
    """'your' about the reader themselves, not about the reader's patients or organisation."""
    return _NOT_OWN.match(after) is None


def icd10(text: str) -> bool:
    return text.replace(".", "").upper() in wordlists.icd10_codes()


_PART_OF_TOKEN_BEFORE = re.compile(r"[A-Za-z0-9][-/#]$|[-/#][A-Za-z0-9]*$")


def _icd10_in_text(before: str, text: str, after: str) -> bool:
    """A code from the ICD-10-CM list that is not the tail or head of a longer token (a
    serial number '2897-60790-T88', a part number 'T88-4')."""
    if _PART_OF_TOKEN_BEFORE.search(before) or after[:1] in ("-", "/"):
        return False
    return icd10(text)


@functools.lru_cache(maxsize=4096)
def phone_number(text: str) -> bool:
    try:
        num = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(num))


def person_name(text: str) -> bool:
    """A name after a patient label (no context: see ``_labelled``)."""
    return _labelled("", text, "")


def person_name_strict(text: str) -> bool:
    """First and last name, both in the name lists ('Jane Roe', 'Roe, Jane', 'JANE ROE')."""
    return _name_span(text) is not None


def person_mention(text: str) -> bool:
    return _mention("", text, "")


_US_STATES = _words("""
AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM
NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR VI GU AS MP MH PW FM AA AE AP
""")


def zip_code(text: str) -> bool:
    """'MA 02139' or 'Zip: 02139-4307': a state abbreviation before it when there is one."""
    words = text.replace(",", " ").split()
    return len(words) < 2 or words[0].upper() in _US_STATES or not words[0].isalpha() or (
        words[0].lower().startswith(("zip", "postal")))


@functools.cache
def validators() -> dict[str, Callable[[str], bool]]:
    from . import places, safe_harbor  # imported here: they use this module's name lists

    return {
        "icd10": icd10, "phone_number": phone_number, "person_name": person_name,
        "person_name_strict": person_name_strict, "zip_code": zip_code,
        "patient_name": ContextualValidator(_labelled),
        "person_mention": ContextualValidator(_prefiltered_mention, prefilter=_may_be_name),
        "addressee": ContextualValidator(_addressee),
        "name_with_birth_date": ContextualValidator(_name_then(_DATE_AFTER_NAME, _birth_date)),
        "name_with_record_number": ContextualValidator(
            _name_then(_ID_AFTER_NAME, _record_number)),
        "lab_value": ContextualValidator(_lab_value, before=0, after=30),
        "icd10_code": ContextualValidator(_icd10_in_text, before=12, after=2),
        "own_reference": ContextualValidator(_own_reference, before=0, after=24),
        **places.validators(),  # cities and counties in patient context
        **safe_harbor.validators(),  # encounter dates, ages over 89, hyphenated names, ...
    }


WORDLISTS: dict[str, Callable[[], Sequence[str]]] = {
    "drugs": wordlists.drug_names,
    "conditions": wordlists.condition_terms,
}
