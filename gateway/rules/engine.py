"""The PHI detection engine: text in, findings out. Pure and deterministic.

All detector patterns go into one Hyperscan database (regexes, start-of-match reported), and
all literal vocabularies (drug names, condition terms, context words) into a second one
(Hyperscan's literal mode). One pass of each over a message's text yields every candidate;
Python then only validates candidates (checksums, code lists, name lists, the few characters
around a match) and checks their context. Hyperscan never backtracks, so no admin pattern can
make a scan slow, and it is 50-100x faster than Python's ``re`` over the same patterns.

Context is either a word near the match (``context`` within ``window`` bytes) or, in tables
(CSV, TSV, spreadsheets, HTML tables as text), a word in the header of the match's column or
in the label cell of its row (``column_context``): a date under a "DOB" column is a birth date
however far the header is. A name under a "Patient" column is a labelled patient
(``patient_columns``).

The same text twice (a text/plain body and its HTML alternative) is scanned once. The display
names of the address headers are not scanned: a name mention that is the sender's, or a
clinician recipient's, is dropped (correspondents and clinicians are not patients).

Decision (per message, ``decide``), one reason per rule:

- ``strong_identifier``: an SSN, MBI, MRN, member or Medicaid ID, a labelled DOB or a date of
  birth right after a name;
- ``patient_with_details``: a labelled patient (after "Patient:", under a Patient column) with
  anything else: health information, an identifier, a phone number, another patient;
- ``person_with_health_or_identifier``: a name mentioned near health information (weighing at
  least ``HEALTH_WEIGHT``: a drug name alone could be a product) or near a non-contact
  identifier (an account, a card, a record link);
- ``addressee_with_own_health``: a message to a named person ("Dear Mr. Roe") that speaks of
  "your" condition, drug or result, unless it is bulk mail (an unsubscribe footer);
- ``health_with_identifier_in_patient_context``: health information beside an identifier and
  patient words;
- ``identifier_in_patient_context``: an identifier (a plate, an encounter date, an account, a
  device serial) within ``IDENTIFIER_NEAR`` bytes of patient words ("the patient's car, plate
  ...", "admitted 04/12/2025"): it is the patient's. Links and IPs, which are only found
  beside patient words, and contact details do not count by themselves.

Contact details (phone, e-mail, street address) identify a person but say nothing about
health: with a name alone they are a business card, not PHI. Provider identifiers (NPI, DEA)
add to the score only next to patient content. Matched text never leaves this module except
masked, for ``--explain``.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import hyperscan

from .validators import VALIDATORS

# Categories of detectors.
IDENTIFIER = "identifier"  # ties data to a person (SSN, account, card, ...)
CONTACT = "contact"  # reaches a person (phone, e-mail, street address): not health on its own
CLINICAL = "clinical"  # health information (diagnosis, drug, lab, code)
PERSON = "person"  # a person's name in patient context (labelled, patient column)
NAME = "name"  # a person's name mentioned in running text (not a correspondent or clinician)
PROVIDER = "provider"  # identifies a clinician (NPI, DEA), not a patient
CONTEXT = "context"  # words that signal a patient ("patient", "DOB", "your", ...)
CATEGORIES = (IDENTIFIER, CONTACT, CLINICAL, PERSON, NAME, PROVIDER, CONTEXT)
# Types of context detectors that decide() looks at.
SECOND_PERSON = "second_person"  # "your": the reader's own condition, drug or result
ADDRESSEE = "addressee"  # the named person a message is written to ("Dear Mr Roe", "Jane, your")
BULK = "bulk_mail"  # newsletter and marketing footers: not written to one patient
_NAMEISH = (PERSON, NAME)

# How far apart (bytes, same part of the message) a mention and what it is tied to may be.
NEAR = 400
IDENTIFIER_NEAR = 120  # an identifier this close to patient words is the patient's
_NEEDS_PATIENT_WORDS = frozenset({"url", "ip"})  # found only beside patient words
# Health information near a mentioned name must weigh this much (detector scores): a drug name
# alone (0.5) could be a product ("insulin pen needles"); a diagnosis, a lab result, a dose or
# two drug names are about someone's health.
HEALTH_WEIGHT = 1.0
# "your" this close before a clinical term addresses the reader's own health.
SECOND_PERSON_WINDOW = 40


@dataclass(frozen=True)
class DetectorSpec:
    id: str
    type: str
    category: str
    description: str = ""
    patterns: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    caseless: bool = True
    validate: str | None = None
    context: tuple[str, ...] = ()  # words that must (or may) be near
    context_required: bool = False
    window: int = 80
    column_context: tuple[str, ...] = ()  # words in the column header / row label of a table
    patient_columns: tuple[str, ...] = ()  # a name under such a column header is a patient
    exclude_context: tuple[str, ...] = ()  # words that, just before a match, rule it out
    exclude_window: int = 25
    score: float = 1.0
    strong: bool = False
    examples_match: tuple[str, ...] = ()
    examples_no_match: tuple[str, ...] = ()
    source: str = ""  # file:line for messages


@dataclass(frozen=True)
class ContextualValidator:
    """A validator that also sees the text just before and after the match (a title before a
    name, a credential after it). Called with the match alone it sees no context."""

    check: Callable[[str, str, str], bool]
    before: int = 60
    after: int = 40
    # a cheap test on the match alone: False rejects it without building the context
    prefilter: Callable[[str], bool] | None = None

    def __call__(self, text: str) -> bool:
        if self.prefilter is not None and not self.prefilter(text):
            return False
        return self.check("", text, "")


@dataclass(frozen=True)
class Chunk:
    where: str
    kind: str
    text: str


class Hit(NamedTuple):
    """One detector match. A named tuple rather than a dataclass: messages make thousands of
    candidates and a tuple is several times cheaper to build. Its repr hides the value."""

    detector: str
    type: str
    category: str
    where: str
    start: int  # offset within the chunk's text (bytes of its UTF-8 encoding)
    end: int
    score: float
    strong: bool
    value: str  # in memory only: masked before anyone sees it
    kind: str = ""  # the chunk's kind: subject, body, attachment, filename, header

    def __repr__(self) -> str:
        return (f"Hit(detector={self.detector!r}, type={self.type!r}, where={self.where!r}, "
                f"start={self.start}, end={self.end})")

    def masked(self) -> str:
        v = self.value
        keep = 2 if len(v) > 6 else 0
        return "".join(c if i < keep or not c.isalnum() else "*" for i, c in enumerate(v))


class _Plan(NamedTuple):
    """What ``analyse`` needs of one detector, precomputed (tuple unpacking is cheap)."""

    plain: bool  # no validator, context, exclusion or table: every match is a hit
    id: str
    type: str
    category: str
    score: float
    strong: bool
    nameish: bool  # a name pattern: only the longest end that ends a word is tried
    ctx_ids: tuple[int, ...]
    window: int
    context_required: bool
    col_words: re.Pattern[str] | None
    col_first: frozenset[bytes]
    excl_ids: tuple[int, ...]
    exclude_window: int
    validator: Callable[[str], bool] | None
    shared: str | None  # the validator's name when other detectors use it too (memoised)
    patient_cols: re.Pattern[str] | None
    is_name: bool
    # the validator taken apart (attribute lookups per candidate add up): a contextual one's
    # prefilter, check and context widths
    contextual: bool
    prefilter: Callable[[str], bool] | None
    check: Callable[..., bool] | None
    before: int
    after: int


@dataclass(frozen=True)
class Analysis:
    hits: tuple[Hit, ...]
    phi: bool
    score: float
    reasons: tuple[str, ...]  # which decision rule made it PHI (no values)


class RuleCompileError(ValueError):
    def __init__(self, spec: DetectorSpec, pattern: str, problem: str) -> None:
        super().__init__(f"{spec.source}: detector '{spec.id}': pattern {pattern!r}: {problem}")
        self.spec = spec


_ATOM = r"(?:\\.|\[(?:[^\]\\]|\\.)*\]|[^()|\\\[])"

# Hyperscan supports a subset of PCRE: no backreferences, no lookaround. Say so clearly.
_UNSUPPORTED = [
    (re.compile(r"\(\?<?[=!]"), "lookaround assertions are not supported"),
    (re.compile(r"\\[1-9]"), "backreferences are not supported"),
    # A group made of one repeated atom (plus optional ones) that is itself repeated, e.g.
    # (a+)+ or (\w+\s?)*: Hyperscan cannot backtrack, but such a pattern would hang any
    # backtracking engine a rule is ever copied to, and it is almost always a mistake.
    (re.compile(r"\((?:\?:)?" + _ATOM + r"[+*](?:" + _ATOM + r"[?*])*\)[+*{]"),
     "nested quantifiers can backtrack catastrophically; rewrite without a repeated group "
     "of repeated atoms"),
]


def check_pattern(spec: DetectorSpec, pattern: str) -> None:
    for rx, problem in _UNSUPPORTED:
        if rx.search(pattern):
            raise RuleCompileError(spec, pattern, problem)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise RuleCompileError(spec, pattern, f"invalid regular expression: {exc}") from None
    db = hyperscan.Database()
    try:
        db.compile(expressions=[pattern.encode()], ids=[0], elements=1,
                   flags=[_flags(spec)])
    except hyperscan.error as exc:
        raise RuleCompileError(spec, pattern, f"cannot compile: {exc}") from None


def _flags(spec: DetectorSpec) -> int:
    f = hyperscan.HS_FLAG_SOM_LEFTMOST
    if spec.caseless:
        f |= hyperscan.HS_FLAG_CASELESS
    return f


def _database(expressions: list[bytes], flags: list[int], literal: bool,
              cache_dir: Path | None) -> hyperscan.Database:
    """Compile (seconds for 100k words or many start-of-match patterns) or load the same
    database compiled before from ``cache_dir``."""
    digest = hashlib.sha256()
    digest.update(f"{getattr(hyperscan, '__version__', '')}:{literal}".encode())
    for expr, f in zip(expressions, flags, strict=True):
        digest.update(expr + b"\0" + str(f).encode() + b"\n")
    kind = "literal" if literal else "regex"
    path = cache_dir / f"hs-{kind}-{digest.hexdigest()[:32]}.db" if cache_dir else None
    if path is not None and path.exists():
        try:
            db = hyperscan.loadb(path.read_bytes(), hyperscan.HS_MODE_BLOCK)
            db.scratch = hyperscan.Scratch(db)
            return db
        except (hyperscan.error, OSError, ValueError):
            pass
    db = hyperscan.Database()
    db.compile(expressions=expressions, ids=list(range(len(expressions))),
               elements=len(expressions), flags=flags, literal=literal)
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(hyperscan.dumpb(db))
            os.replace(tmp, path)
    return db


def _is_word_char(b: int) -> bool:
    return (48 <= b <= 57) or (65 <= b <= 90) or (97 <= b <= 122) or b >= 128


_WORD_BYTE = tuple(_is_word_char(b) for b in range(256))  # the same, as a table


# --------------------------------------------------------------------------- tables

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def normalise_label(text: str) -> str:
    """'PatientName' / 'Date-of-Birth:' -> ' patient name ' / ' date of birth ' (for matching
    context words as whole words)."""
    return " " + _NON_ALNUM.sub(" ", _CAMEL.sub(" ", text).lower()).strip() + " "


_DIGIT = re.compile(rb"\d")
_MAX_ROW = 8192  # longer lines are not table rows (and searching back through them is slow)


@functools.lru_cache(maxsize=4096)
def _label(cell: bytes) -> str:
    return normalise_label(cell.decode("utf-8", "replace").strip(' "'))


def _split_cells(line: bytes) -> tuple[bytes, list[int]] | None:
    """The delimiter of a table row and the offsets where its cells start, or None when the
    line is not a row (CSV quoting respected)."""
    if b"\t" in line:
        delim = b"\t"
    elif line.count(b"|") >= 2:
        delim = b"|"
    elif b"," in line or line.count(b";") >= 2:
        delim = b"," if line.count(b",") >= line.count(b";") else b";"
    else:
        return None
    starts = [0]
    if b'"' not in line:
        pos = line.find(delim)
        while pos >= 0:
            starts.append(pos + 1)
            pos = line.find(delim, pos + 1)
        return delim, starts
    # a delimiter is inside quotes when an odd number of quotes comes before it
    quoted = False
    prev = 0
    pos = line.find(delim)
    while pos >= 0:
        if line.count(b'"', prev, pos) % 2:
            quoted = not quoted
        prev = pos
        if not quoted:
            starts.append(pos + 1)
        pos = line.find(delim, pos + 1)
    return delim, starts


def _header_like(line: bytes, starts: list[int]) -> bool:
    """Can this comma-separated line head a table? Every cell filled and short (a sentence
    with a comma, "Dear Mr. Roe,", is not a header)."""
    ends = [*(s - 1 for s in starts[1:]), len(line)]
    return all(0 < len(line[a:b].strip()) <= 40 for a, b in zip(starts, ends, strict=True))


class _Present:
    """Does any of a few words occur in the text at all (case-insensitive substring search,
    answered once per word list and message)? Spares table lookups for texts without the
    tables a detector looks for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._low: bytes | None = None
        self._answers: dict[frozenset[bytes], bool] = {}

    def any_of(self, words: frozenset[bytes]) -> bool:
        got = self._answers.get(words)
        if got is None:
            if self._low is None:
                self._low = self.data.lower()
            got = self._answers[words] = any(w in self._low for w in words)
        return got


class _Tables:
    """Column headers and row labels of the delimited tables in one scanned text, computed
    lazily (only for candidates that need table context) and memoised per line."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._header: dict[int, int] = {}  # line start -> its table's header line start
        self._row: dict[int, tuple[int, bytes, tuple[bytes, list[int]] | None]] = {}
        self._labels: dict[tuple[int, int, bool], tuple[str, ...]] = {}
        self._at: dict[int, tuple[str, ...]] = {}
        self._header_cell: dict[tuple[int, int], str] = {}
        self._plain: dict[int, bool] = {}

    def _line(self, ls: int) -> tuple[int, bytes, tuple[bytes, list[int]] | None]:
        got = self._row.get(ls)
        if got is None:
            le = self.data.find(b"\n", ls)
            if le < 0:
                le = len(self.data)
            line = self.data[ls:le].rstrip(b"\r")
            got = (le, line, _split_cells(line))
            self._row[ls] = got
        return got

    def _prev_row(self, ls: int) -> int | None:
        """Start of the previous non-blank line, if any (blank lines separate HTML rows)."""
        pos = ls - 1
        for _ in range(3):
            if pos <= 0:
                return None
            start = self.data.rfind(b"\n", max(0, pos - _MAX_ROW), pos) + 1
            if start == 0 and pos > _MAX_ROW:
                return None
            if self.data[start:pos].strip(b"\r \t"):
                return start
            if b"\x00" in self.data[start:pos]:
                return None
            pos = start - 1
        return None

    def _header_of(self, ls: int) -> int:
        chain = []
        cur = ls
        while cur not in self._header:
            chain.append(cur)
            _, _, cells = self._line(cur)
            prev = self._prev_row(cur)
            if cells is None or prev is None:
                break
            _, pline, pcells = self._line(prev)
            if pcells is None or pcells[0] != cells[0] or len(pcells[1]) != len(cells[1]) or (
                    pcells[0] == b"," and not _header_like(pline, pcells[1])):
                break
            cur = prev
        top = self._header.get(cur, cur)
        for c in chain:
            self._header[c] = top
        return top

    def labels(self, pos: int) -> tuple[str, ...]:
        """The column header and the row label (first cell of a two-cell row, or the text
        before a colon in the same cell) of the table cell holding ``pos``, normalised."""
        got = self._at.get(pos)
        if got is None:
            got = self._at[pos] = self._labels_at(pos)
        return got

    def _labels_at(self, pos: int) -> tuple[str, ...]:
        ls = self.data.rfind(b"\n", max(0, pos - _MAX_ROW), pos) + 1
        if ls == 0 and pos > _MAX_ROW:
            return ()  # a line this long is not a table row
        plain = self._plain.get(ls)
        if plain is None:  # not a row, or a line of prose: no colon, not a two-cell row, no
            # header above
            _, line, cells = self._line(ls)
            plain = self._plain[ls] = cells is None or (b":" not in line and not (
                len(cells[1]) == 2 and cells[0] in (b"\t", b"|")) and self._header_of(ls) == ls)
        if plain:
            return ()
        _, line, cells = self._line(ls)
        if cells is None:
            return ()
        delim, starts = cells
        col = bisect.bisect_right(starts, pos - ls) - 1
        cell_end = starts[col + 1] - 1 if col + 1 < len(starts) else len(line)
        cell = line[starts[col]:cell_end]
        # spreadsheets as text: "Header: value" in each cell
        colon = cell.find(b":")
        after_colon = 0 < colon < pos - ls - starts[col]
        key = (ls, col, after_colon)
        got = self._labels.get(key)
        if got is not None:
            return got
        out = []
        if after_colon:
            out.append(cell[:colon])
        elif len(starts) == 2 and col == 1 and delim in (b"\t", b"|"):
            out.append(line[:starts[1] - 1])
        labels = [_label(c) for c in out]
        top = self._header_of(ls)
        if top != ls:
            hkey = (top, col)
            header = self._header_cell.get(hkey)
            if header is None:
                header = ""
                _, hline, hcells = self._line(top)
                if hcells is not None and col < len(hcells[1]):
                    hs = hcells[1]
                    hcell = hline[hs[col]:hs[col + 1] - 1 if col + 1 < len(hs) else len(hline)]
                    if _DIGIT.search(hcell) is None:
                        header = _label(hcell)
                self._header_cell[hkey] = header
            if header:
                labels.append(header)
        got = tuple(labels)
        self._labels[key] = got
        return got


# --------------------------------------------------------------------------- correspondents

_CREDENTIALS = frozenset({
    "md", "do", "np", "pa", "pa-c", "rn", "lpn", "phd", "pharmd", "rph", "dds", "dmd", "dpm",
    "od", "dc", "lcsw", "lmft", "lpc", "aprn", "crna", "fnp", "dnp", "cnm", "mph", "facp",
    "facc", "msn", "bsn", "psyd", "mbbs", "cnp", "fnp-c", "agnp", "pt", "dpt", "ot", "otr",
    "slp", "rd", "cde", "ms", "ma", "mba", "faafp", "faap", "mhs", "acnp",
})
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'-]*")
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof"})


def name_tokens(text: str) -> frozenset[str]:
    """Lower-case name words of a name as written (titles, initials and credentials
    dropped): 'Roe, Jane M.' and 'Ms. Jane Roe' -> {'jane', 'roe'}."""
    return frozenset(t for t in (w.lower() for w in _TOKEN.findall(text))
                     if len(t) > 1 and t not in _TITLES and t not in _CREDENTIALS)


def _correspondents(chunks: Sequence[Chunk]) -> list[frozenset[str]]:
    """Display names of the sender (always) and of recipients who are clinicians (a
    credential after the name): such names in the text are not patients."""
    out: list[frozenset[str]] = []
    for c in chunks:
        if c.kind != "header":
            continue
        field_name = c.where.rpartition(" ")[2]
        for display in c.text.split("\n"):
            head, _, tail = display.partition(",")
            credentialed = any(t.lower().strip(".") in _CREDENTIALS
                               for t in re.split(r"[\s,]+", tail) if t)
            if field_name in ("from", "sender", "reply-to") or credentialed:
                toks = name_tokens(head)
                if len(toks) >= 2:
                    out.append(toks)
    return out


# --------------------------------------------------------------------------- engine


class Engine:
    """Compiled detectors. Build once (start-up or reload); ``analyse`` is cheap."""

    def __init__(self, specs: Sequence[DetectorSpec],
                 extra_validators: Mapping[str, Callable[[str], bool]] | None = None,
                 cache_dir: Path | None = None) -> None:
        self.specs = list(specs)
        self.validators: dict[str, Callable[[str], bool]] = {
            **VALIDATORS, **(extra_validators or {})}
        # Regexes are compiled into one database per rule file: the shipped file's database is
        # compiled once and cached, and an admin's edit recompiles only their own small file.
        groups: dict[str, tuple[list[bytes], list[int], list[int]]] = {}
        literals: list[bytes] = []
        lit_flags: list[int] = []
        self._literal_owner: list[tuple[int, bool]] = []  # id -> (spec index, is_context)
        context_index: dict[bytes, int] = {}
        self._context_ids: list[set[int]] = []  # spec index -> literal ids of its context
        self._exclude_ids: list[set[int]] = []
        self._column_words: list[tuple[str, ...]] = []
        self._patient_columns: list[tuple[str, ...]] = []
        for i, spec in enumerate(self.specs):
            if spec.validate and spec.validate not in self.validators:
                raise RuleCompileError(spec, spec.validate, "unknown validator")
            for p in spec.patterns:
                check_pattern(spec, p)
                exprs, fl, owners = groups.setdefault(spec.source.rpartition(":")[0],
                                                      ([], [], []))
                exprs.append(p.encode())
                fl.append(_flags(spec))
                owners.append(i)
            for w in spec.words:
                literals.append(w.lower().encode())
                lit_flags.append(hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_SOM_LEFTMOST)
                self._literal_owner.append((i, False))

            def context_ids(words: tuple[str, ...]) -> set[int]:
                ids: set[int] = set()
                for w in words:
                    key = w.lower().encode()
                    if key not in context_index:
                        context_index[key] = len(literals)
                        literals.append(key)
                        lit_flags.append(hyperscan.HS_FLAG_CASELESS
                                         | hyperscan.HS_FLAG_SOM_LEFTMOST)
                        self._literal_owner.append((-1, True))
                    ids.add(context_index[key])
                return ids

            self._context_ids.append(context_ids(spec.context))
            self._exclude_ids.append(context_ids(spec.exclude_context))
            self._column_words.append(tuple(normalise_label(w) for w in spec.column_context))
            self._patient_columns.append(
                tuple(normalise_label(w) for w in spec.patient_columns))
        # the first word of each column word: if none is in the text, no table label can match
        self._column_first = [frozenset(w.split()[0].lower().encode() for w in spec.column_context
                                        if w.split()) for spec in self.specs]
        # validators used by more than one detector: their answers are shared within a message
        uses: dict[str, int] = {}
        for spec in self.specs:
            if spec.validate:
                uses[spec.validate] = uses.get(spec.validate, 0) + 1
        self._plans: list[_Plan] = []
        for i, spec in enumerate(self.specs):
            validator = self.validators[spec.validate] if spec.validate else None
            patient_cols = _words_rx(self._patient_columns[i])
            is_name = spec.category == NAME
            ctx_ids = tuple(sorted(self._context_ids[i]))
            excl_ids = tuple(sorted(self._exclude_ids[i])) if spec.exclude_context else ()
            plain = (validator is None and not spec.context_required and not excl_ids
                     and patient_cols is None and not is_name)
            self._plans.append(_Plan(
                plain, spec.id, spec.type, spec.category, spec.score, spec.strong,
                spec.category in _NAMEISH or spec.type == ADDRESSEE, ctx_ids, spec.window,
                spec.context_required, _words_rx(self._column_words[i]),
                self._column_first[i], excl_ids, spec.exclude_window, validator,
                (spec.validate or "") if uses.get(spec.validate or "", 0) > 1 else None,
                patient_cols, is_name, *_taken_apart(validator)))
        self._regex_dbs: list[tuple[hyperscan.Database, list[int]]] = [
            (_database(exprs, fl, False, cache_dir), owners)
            for exprs, fl, owners in groups.values()
        ]
        self._literal_db: hyperscan.Database | None = None
        if literals:
            self._literal_db = _database(literals, lit_flags, True, cache_dir)

    # ------------------------------------------------------------------ scanning

    def _scan(self, data: bytes) -> tuple[list[tuple[int, int, list[int]]],
                                          dict[int, list[int]]]:
        """Candidates [(spec, start, [ends])] in the order found (the literal database's
        first) and the start offsets of each context word found (in increasing order: one
        literal has one length, and matches come in the order they end)."""
        candidates: list[tuple[int, int, list[int]]] = []
        add = candidates.append
        context_pos: dict[int, list[int]] = {}
        index: dict[tuple[int, int], list[int]] = {}
        owner: list[int] = []
        literal_owner = self._literal_owner
        word = _WORD_BYTE
        n = len(data)

        def on_regex(eid: int, start: int, end: int, flags: int, ctx: object) -> None:
            key = (owner[eid], start)
            ends = index.get(key)
            if ends is None:
                index[key] = ends = [end]
                add((key[0], start, ends))
            else:
                ends.append(end)

        def on_literal(lid: int, start: int, end: int, flags: int, ctx: object) -> None:
            # literal mode has no \b: require word boundaries here
            if (start == 0 or not word[data[start - 1]]) and (end >= n or not word[data[end]]):
                spec_i, is_context = literal_owner[lid]
                if is_context:
                    got = context_pos.get(lid)
                    if got is None:
                        context_pos[lid] = [start]
                    else:
                        got.append(start)
                else:
                    add((spec_i, start, [end]))

        if self._literal_db is not None:
            self._literal_db.scan(data, match_event_handler=on_literal)
        for db, owners in self._regex_dbs:
            owner = owners
            db.scan(data, match_event_handler=on_regex)
        return candidates, context_pos

    def analyse(self, chunks: Sequence[Chunk]) -> Analysis:
        # The same text twice (a text/plain body and its text/html alternative, a file
        # attached twice) is scanned once, where it first appears.
        # Display names in the address headers are not scanned: they are the correspondents,
        # used only to recognise the sender's and clinicians' names in the text.
        headers = [c for c in chunks if c.kind == "header"]
        unique = [c for c in chunks if c.kind != "header"]
        if len(unique) > 1:
            seen: set[str] = set()
            chunks, unique = unique, []
            for c in chunks:
                key = " ".join(c.text.split())
                if key not in seen:
                    seen.add(key)
                    unique.append(c)
        chunks = unique
        if not chunks:
            return decide([])
        # One text for all chunks; separators keep matches and context inside one chunk.
        parts: list[bytes] = []
        starts: list[int] = []
        pos = 0
        for c in chunks:
            b = c.text.encode("utf-8", "replace").replace(b"\x00", b" ")
            starts.append(pos)
            parts.append(b)
            pos += len(b) + 3
        data = b"\n\x00\n".join(parts)
        candidates, context_pos = self._scan(data)
        for positions in context_pos.values():
            positions.sort()  # (already in order but for ties Hyperscan does not promise it)
        tables = _Tables(data)
        correspondents: list[frozenset[str]] | None = None
        hits: list[Hit] = []
        append = hits.append
        checked: dict[tuple[str, int, int], bool] = {}
        present = _Present(data)
        plans = self._plans
        n = len(data)
        single = len(chunks) == 1
        # does a column or row label hold one of a detector's words (memoised per message:
        # the cells of a column share their labels)?
        matched: dict[tuple[re.Pattern[str], tuple[str, ...]], bool] = {}

        where0, kind0 = chunks[0].where, chunks[0].kind
        labels_at = tables._at  # labels by position, memoised (tables.labels fills it)
        present_answers = present._answers
        new_hit = tuple.__new__  # Hit(...) without the named tuple's Python-level __new__
        for spec_i, start, ends in candidates:
            plan = plans[spec_i]
            longest = max(ends) if len(ends) > 1 else ends[0]
            if plan.plain:
                if single:
                    append(new_hit(Hit, (plan.id, plan.type, plan.category, where0, start, longest,
                                           plan.score, plan.strong,
                                           data[start:longest].decode("utf-8", "replace"),
                                           kind0)))
                else:
                    ci = bisect.bisect_right(starts, start) - 1
                    base = starts[ci]
                    append(new_hit(Hit, (plan.id, plan.type, plan.category, chunks[ci].where,
                                           start - base, longest - base, plan.score,
                                           plan.strong,
                                           data[start:longest].decode("utf-8", "replace"),
                                           chunks[ci].kind)))
                continue
            (_, sid, stype, scat, sscore, sstrong, nameish, ctx_ids, window, required,
             col_words, col_first, excl_ids, excl_window, validator, shared, patient_cols,
             is_name, contextual, prefilter, check, vbefore, vafter) = plan
            # cheap checks first: context words near (the window is measured from the longest
            # end, which can only make it wider), excluded words; then table labels (memoised
            # per place and shared by the column detectors), then validation (memoised when
            # several detectors validate the same span)
            if required and not (ctx_ids and _near(ctx_ids, start - window, longest + window,
                                                   context_pos)):
                if col_words is None:
                    continue
                has = present_answers.get(col_first)
                if has is None:
                    has = present.any_of(col_first)
                if not has:
                    continue
                labels = labels_at.get(start)
                if labels is None:
                    labels = tables.labels(start)
                if not labels:
                    continue
                mkey = (col_words, labels)
                got = matched.get(mkey)
                if got is None:
                    got = matched[mkey] = _labelled(col_words, labels)
                if not got:
                    continue
            if excl_ids and _near(excl_ids, start - excl_window, start - 1, context_pos):
                continue
            if validator is None:
                end = longest
            else:
                assert check is not None  # taken apart from the validator
                # name patterns match whole runs of capitalised words and their validators
                # look inside the run: a shorter run would only cut a name (and its
                # credential) short
                if longest >= n or not (_WORD_BYTE[data[longest]]
                                        and _WORD_BYTE[data[longest - 1]]):
                    tried: Sequence[int] = (longest,) if nameish or len(ends) == 1 else (
                        _word_ends(data, ends, 3))
                else:
                    tried = _word_ends(data, ends, 1 if nameish else 3)
                found = -1
                for e in tried:
                    if shared is not None:
                        vkey = (shared, start, e)
                        ok = checked.get(vkey)
                        if ok is not None:
                            if ok:
                                found = e
                                break
                            continue
                    # the validator on the span (a contextual one also sees the text around
                    # it, up to a chunk boundary)
                    text = data[start:e].decode("utf-8", "replace")
                    if not contextual:
                        ok = check(text)
                    elif prefilter is not None and not prefilter(text):
                        ok = False
                    else:
                        lo = data.rfind(b"\x00", max(0, start - vbefore), start) + 1
                        hi = data.find(b"\x00", e, e + vafter)
                        ok = check(data[max(lo, start - vbefore):start].decode("utf-8", "replace"),
                                   text,
                                   data[e:hi if hi >= 0 else e + vafter].decode("utf-8", "replace"))
                    if shared is not None:
                        checked[(shared, start, e)] = ok
                    if ok:
                        found = e
                        break
                if found < 0:
                    continue
                end = found
            if single:
                hit = new_hit(Hit, (sid, stype, scat, where0, start, end, sscore, sstrong,
                                    data[start:end].decode("utf-8", "replace"), kind0))
            else:
                ci = bisect.bisect_right(starts, start) - 1
                base = starts[ci]
                hit = new_hit(Hit, (sid, stype, scat, chunks[ci].where, start - base, end - base,
                                    sscore, sstrong, data[start:end].decode("utf-8", "replace"),
                                    chunks[ci].kind))
            if patient_cols is not None:
                labels = labels_at.get(start)
                if labels is None:
                    labels = tables.labels(start)
                if labels:
                    mkey = (patient_cols, labels)
                    got = matched.get(mkey)
                    if got is None:
                        got = matched[mkey] = _labelled(patient_cols, labels)
                    if got:
                        append(hit._replace(category=PERSON))
                        continue
            if is_name:
                if correspondents is None:
                    correspondents = _correspondents(headers)
                if correspondents:
                    toks = name_tokens(hit.value)
                    if any(len(toks & c) >= min(2, len(toks)) for c in correspondents):
                        continue
            append(hit)
        return decide(_dedupe(hits))


def _taken_apart(fn: Callable[[str], bool] | None) -> tuple[
        bool, Callable[[str], bool] | None, Callable[..., bool] | None, int, int]:
    if isinstance(fn, ContextualValidator):
        return True, fn.prefilter, fn.check, fn.before, fn.after
    return False, None, fn, 0, 0


def _word_ends(data: bytes, ends: list[int], tries: int = 3) -> list[int]:
    """The longest few ends of a candidate that do not cut a word in two."""
    out = []
    n = len(data)
    for e in sorted(set(ends), reverse=True):
        if e < n and e > 0 and _WORD_BYTE[data[e]] and _WORD_BYTE[data[e - 1]]:
            continue
        out.append(e)
        if len(out) == tries:
            break
    return out


def _near(ids: Iterable[int], lo: int, hi: int, context_pos: dict[int, list[int]]) -> bool:
    """Does a context word of ``ids`` start within [lo, hi]?"""
    for lid in ids:
        positions = context_pos.get(lid)
        if not positions:
            continue
        k = bisect.bisect_left(positions, lo)
        if k < len(positions) and positions[k] <= hi:
            return True
    return False


def _words_rx(words: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for a list of normalised label words (' patient name ' ...)."""
    return re.compile("|".join(re.escape(w) for w in words)) if words else None


def _labelled(words: re.Pattern[str] | None, labels: tuple[str, ...]) -> bool:
    return words is not None and any(words.search(label) for label in labels)


_RANK = {c: i for i, c in enumerate((IDENTIFIER, PERSON, CLINICAL, NAME, CONTACT, PROVIDER,
                                     CONTEXT))}


def _dedupe(hits: list[Hit]) -> list[Hit]:
    """One hit per (type, where, start): two detectors finding the same SSN count once, and
    the stronger reading of a span wins (the longer match, a strong identifier over a weak
    one, a labelled patient over a mere mention). Ordered by place."""
    best: dict[tuple[str, str, int], Hit] = {}
    for h in hits:
        key = (h.type, h.where, h.start)
        old = best.get(key)
        if old is None or (h.end, h.strong, -_RANK.get(h.category, 99)) > (
                old.end, old.strong, -_RANK.get(old.category, 99)):
            best[key] = h
    return sorted(best.values(), key=_PLACE)


_PLACE = operator.itemgetter(3, 4)  # (where, start)


# --------------------------------------------------------------------------- decision

_WIDE = ("subject", "filename")  # a name or a condition there is about the whole message


class _Nearby:
    """Hits of one kind indexed by place, to ask how much of them lies near another hit in
    O(log n) (messages can hold thousands of names and conditions)."""

    def __init__(self, hits: Sequence[Hit]) -> None:
        self.wide = 0.0  # weight of hits in the subject or a file name: near everything
        self.total = 0.0
        places: dict[str, list[Hit]] = {}
        for h in hits:
            self.total += h.score
            if h.kind in _WIDE:
                self.wide += h.score
            else:
                places.setdefault(h.where, []).append(h)
        self.starts: dict[str, list[int]] = {}
        self.sums: dict[str, list[float]] = {}
        for where, hs in places.items():
            hs.sort(key=_START)
            self.starts[where] = [h.start for h in hs]
            acc = [0.0]
            for h in hs:
                acc.append(acc[-1] + h.score)
            self.sums[where] = acc
        self.any = bool(hits)

    def weight(self, h: Hit, window: int = NEAR) -> float:
        """Total score of the indexed hits near ``h`` (all of them when ``h`` is wide)."""
        if h.kind in _WIDE:
            return self.total
        starts = self.starts.get(h.where)
        near = self.wide
        if starts:
            lo = bisect.bisect_left(starts, h.start - window)
            hi = bisect.bisect_right(starts, h.start + window)
            sums = self.sums[h.where]
            near += sums[hi] - sums[lo]
        return near

    def has(self, h: Hit, window: int = NEAR) -> bool:
        if not self.any:
            return False
        if h.kind in _WIDE or self.wide:
            return True
        starts = self.starts.get(h.where)
        if not starts:
            return False
        k = bisect.bisect_left(starts, h.start - window)
        return k < len(starts) and starts[k] <= h.start + window


_START = operator.attrgetter("start")


def _addressed(clinical: Sequence[Hit], second: Sequence[Hit]) -> bool:
    """Is a clinical hit preceded closely by "your" (ends within SECOND_PERSON_WINDOW)?"""
    ends: dict[str, list[int]] = {}
    for s in second:
        ends.setdefault(s.where, []).append(s.end)
    for positions in ends.values():
        positions.sort()
    for c in clinical:
        near = ends.get(c.where)
        if near:
            k = bisect.bisect_left(near, c.start - SECOND_PERSON_WINDOW)
            if k < len(near) and near[k] <= c.start:
                return True
    return False


def decide(hits: Sequence[Hit]) -> Analysis:
    by_cat: dict[str, list[Hit]] = {c: [] for c in CATEGORIES}
    for h in hits:
        by_cat.setdefault(h.category, []).append(h)
    strong = [h for h in hits if h.strong]
    patients = by_cat[PERSON]
    names = by_cat[NAME]
    clinical = by_cat[CLINICAL]
    identifiers = by_cat[IDENTIFIER]
    contacts = by_cat[CONTACT]
    context = [h for h in by_cat[CONTEXT] if h.type not in (SECOND_PERSON, ADDRESSEE, BULK)]
    second = [h for h in by_cat[CONTEXT] if h.type == SECOND_PERSON]
    addressees = [h for h in by_cat[CONTEXT] if h.type == ADDRESSEE]
    bulk = any(h.type == BULK for h in by_cat[CONTEXT])
    reasons: list[str] = []
    if strong:
        reasons.append("strong_identifier")
    if patients and (clinical or identifiers or contacts or strong or len(patients) > 1
                     or names):
        reasons.append("patient_with_details")
    if names:
        near_ids, near_health = _Nearby(identifiers), _Nearby(clinical)
        if any(near_ids.has(n) or near_health.weight(n) >= HEALTH_WEIGHT for n in names):
            reasons.append("person_with_health_or_identifier")
    if addressees and not bulk and _addressed(clinical, second):
        reasons.append("addressee_with_own_health")
    if clinical and identifiers and (context or patients or names):
        reasons.append("health_with_identifier_in_patient_context")
    if identifiers and context and "health_with_identifier_in_patient_context" not in reasons:
        near_context = _Nearby(context)
        if any(near_context.has(h, IDENTIFIER_NEAR) for h in identifiers
               if h.type not in _NEEDS_PATIENT_WORDS):
            reasons.append("identifier_in_patient_context")
    if "addressee_with_own_health" in reasons:
        # the person the message is written to is the patient: their name is PHI too
        hits = [h._replace(type="name", category=NAME) if h.type == ADDRESSEE else h
                for h in hits]
    phi = bool(reasons)
    score = sum(h.score for h in hits if h.category != PROVIDER)
    if phi:
        score += sum(h.score for h in by_cat[PROVIDER])
    return Analysis(tuple(hits), phi, round(score, 2), tuple(reasons))
