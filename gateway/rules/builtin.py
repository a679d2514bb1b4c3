"""Validators and word lists that need the large vocabularies (code lists, names, drugs)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import phonenumbers

from . import wordlists

_TITLE = re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Mx)\.?\s+([A-Z][a-z'-]+)")
_CAP = re.compile(r"[A-Z][a-z'-]+")
# Capitalised words that follow "Patient:" or "Re:" and are not names.
_NOT_NAMES = frozenset({
    "Portal", "Care", "Services", "Service", "Support", "Access", "Information", "Info",
    "Safety", "Experience", "Education", "Relations", "Advocate", "Financial", "Billing",
    "Meeting", "Update", "Updates", "Request", "Follow", "Your", "The", "Our", "This", "Team",
    "All", "Staff", "Colleagues", "Sir", "Madam", "Doctor", "Dr", "Customer", "Friends",
    "Valued", "Hello", "Hi", "Budget", "Schedule", "Agenda", "Invoice", "Order", "Name",
})


def icd10(text: str) -> bool:
    return text.replace(".", "").upper() in wordlists.icd10_codes()


def phone_number(text: str) -> bool:
    try:
        num = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(num))


def person_name(text: str) -> bool:
    """A name after a patient label or salutation: a title and a surname, or at least one
    word of the name in the first/last name lists and none in the not-a-name list."""
    first, last = wordlists.person_names()
    m = _TITLE.search(text)
    if m is not None and m.group(1) not in _NOT_NAMES:
        return True
    label_end = max(text.rfind(":"), text.rfind("-"))
    tail = text[label_end + 1:] if label_end >= 0 else text
    words = _CAP.findall(tail)
    if tail is text and words:
        words = words[1:]  # "Patient Jane Roe": the first capitalised word is the label
    if not words or any(w in _NOT_NAMES for w in words):
        return False
    return any(w in first or w in last for w in words)


def person_name_strict(text: str) -> bool:
    """First and last name: the first word a known first name, the last a known surname or
    at least a capitalised word that is not a common non-name."""
    first, last = wordlists.person_names()
    words = _CAP.findall(text)
    if len(words) < 2 or any(w in _NOT_NAMES for w in words):
        return False
    return words[0] in first and (words[-1] in last or words[-1] not in first)


@functools.cache
def validators() -> dict[str, Callable[[str], bool]]:
    return {"icd10": icd10, "phone_number": phone_number, "person_name": person_name,
            "person_name_strict": person_name_strict}


WORDLISTS: dict[str, Callable[[], Sequence[str]]] = {"drugs": wordlists.drug_names}
EXTRA_VALIDATORS = ("icd10", "phone_number", "person_name", "person_name_strict")
