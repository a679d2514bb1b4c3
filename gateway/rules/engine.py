"""The PHI detection engine: text in, findings out. Pure and deterministic.

All detector patterns go into one Hyperscan database (regexes, start-of-match reported), and
all literal vocabularies (drug names, condition terms, context words) into a second one
(Hyperscan's literal mode). One pass of each over a message's text yields every candidate;
Python then only validates candidates (checksums, code lists, phonenumbers) and checks their
context. Hyperscan never backtracks, so no admin pattern can make a scan slow, and it is
50-100x faster than Python's ``re`` over the same patterns (see bench/scan).

Decision (per message): PHI when a strong identifier appears (SSN, MBI, MRN, labelled DOB,
member or Medicaid ID, ...), or when a person in patient context appears with health
information or with another identifier, or when health information appears beside identifiers
in patient context. Provider identifiers (NPI, DEA) add to the score only next to patient
content. Matched text never leaves this module except masked, for ``--explain``.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hyperscan

from .validators import VALIDATORS

# Categories of detectors.
IDENTIFIER = "identifier"  # ties data to a person (SSN, phone, ...)
CLINICAL = "clinical"  # health information (diagnosis, drug, lab, code)
PERSON = "person"  # a person's name in patient context
PROVIDER = "provider"  # identifies a clinician (NPI, DEA), not a patient
CONTEXT = "context"  # words that signal a patient ("patient", "DOB", ...)
CATEGORIES = (IDENTIFIER, CLINICAL, PERSON, PROVIDER, CONTEXT)


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
    exclude_context: tuple[str, ...] = ()  # words that, just before a match, rule it out
    exclude_window: int = 25
    score: float = 1.0
    strong: bool = False
    examples_match: tuple[str, ...] = ()
    examples_no_match: tuple[str, ...] = ()
    source: str = ""  # file:line for messages


@dataclass(frozen=True)
class Chunk:
    where: str
    kind: str
    text: str


@dataclass(frozen=True)
class Hit:
    detector: str
    type: str
    category: str
    where: str
    start: int  # offset within the chunk's text
    end: int
    score: float
    strong: bool
    value: str = field(repr=False)  # in memory only: masked before anyone sees it

    def masked(self) -> str:
        v = self.value
        keep = 2 if len(v) > 6 else 0
        return "".join(c if i < keep or not c.isalnum() else "*" for i, c in enumerate(v))


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


class Engine:
    """Compiled detectors. Build once (start-up or reload); ``analyse`` is cheap."""

    def __init__(self, specs: Sequence[DetectorSpec],
                 extra_validators: dict[str, Callable[[str], bool]] | None = None,
                 cache_dir: Path | None = None) -> None:
        self.specs = list(specs)
        self.validators = {**VALIDATORS, **(extra_validators or {})}
        # Regexes are compiled into one database per rule file: the shipped file's database is
        # compiled once and cached, and an admin's edit recompiles only their own small file.
        groups: dict[str, tuple[list[bytes], list[int], list[int]]] = {}
        literals: list[bytes] = []
        lit_flags: list[int] = []
        self._literal_owner: list[tuple[int, bool]] = []  # id -> (spec index, is_context)
        context_index: dict[bytes, int] = {}
        self._context_ids: list[set[int]] = []  # spec index -> literal ids of its context
        self._exclude_ids: list[set[int]] = []
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
        self._regex_dbs: list[tuple[hyperscan.Database, list[int]]] = [
            (_database(exprs, fl, False, cache_dir), owners)
            for exprs, fl, owners in groups.values()
        ]
        self._literal_db: hyperscan.Database | None = None
        if literals:
            self._literal_db = _database(literals, lit_flags, True, cache_dir)

    # ------------------------------------------------------------------ scanning

    def _scan(self, data: bytes) -> tuple[dict[tuple[int, int], int], list[tuple[int, int, int]]]:
        """Regex candidates {(spec, start): end} (longest per start) and literal hits."""
        regex: dict[tuple[int, int], int] = {}
        literal: list[tuple[int, int, int]] = []
        owner: list[int] = []

        def on_regex(eid: int, start: int, end: int, flags: int, ctx: object) -> None:
            key = (owner[eid], start)
            if regex.get(key, -1) < end:
                regex[key] = end

        def on_literal(lid: int, start: int, end: int, flags: int, ctx: object) -> None:
            # literal mode has no \b: require word boundaries here
            if (start == 0 or not _is_word_char(data[start - 1])) and (
                    end >= len(data) or not _is_word_char(data[end])):
                literal.append((lid, start, end))

        for db, owners in self._regex_dbs:
            owner = owners
            db.scan(data, match_event_handler=on_regex)
        if self._literal_db is not None:
            self._literal_db.scan(data, match_event_handler=on_literal)
        return regex, literal

    def analyse(self, chunks: Sequence[Chunk]) -> Analysis:
        # One text for all chunks; separators keep matches and context inside one chunk.
        parts: list[bytes] = []
        starts: list[int] = []
        pos = 0
        for c in chunks:
            b = c.text.encode("utf-8", "replace")
            starts.append(pos)
            parts.append(b)
            pos += len(b) + 3
        data = b"\n\x00\n".join(parts)
        regex, literal = self._scan(data)

        context_pos: dict[int, list[int]] = {}
        candidates: list[tuple[int, int, int]] = []
        for lid, start, end in literal:
            spec_i, is_context = self._literal_owner[lid]
            if is_context:
                context_pos.setdefault(lid, []).append(start)
            else:
                candidates.append((spec_i, start, end))
        for positions in context_pos.values():
            positions.sort()
        candidates.extend((spec_i, start, end) for (spec_i, start), end in regex.items())
        hits: list[Hit] = []
        for spec_i, start, end in candidates:
            spec = self.specs[spec_i]
            if spec.validate and not self.validators[spec.validate](
                    data[start:end].decode("utf-8", "replace")):
                continue
            if spec.context_required and not _near(
                    self._context_ids[spec_i], start - spec.window, end + spec.window,
                    context_pos):
                continue
            if spec.exclude_context and _near(
                    self._exclude_ids[spec_i], start - spec.exclude_window, start - 1,
                    context_pos):
                continue
            hits.append(self._hit(spec_i, data, start, end, chunks, starts))
        hits = _dedupe(hits)
        return decide(hits)

    def _hit(self, spec_i: int, data: bytes, start: int, end: int,
             chunks: Sequence[Chunk], starts: list[int]) -> Hit:
        spec = self.specs[spec_i]
        ci = max(0, bisect.bisect_right(starts, start) - 1)
        base = starts[ci] if starts else 0
        return Hit(spec.id, spec.type, spec.category,
                   chunks[ci].where if chunks else "", start - base, end - base, spec.score,
                   spec.strong, data[start:end].decode("utf-8", "replace"))


def _near(ids: set[int], lo: int, hi: int, context_pos: dict[int, list[int]]) -> bool:
    """Does a context word of ``ids`` start within [lo, hi]?"""
    for lid in ids:
        positions = context_pos.get(lid)
        if not positions:
            continue
        k = bisect.bisect_left(positions, lo)
        if k < len(positions) and positions[k] <= hi:
            return True
    return False


def _dedupe(hits: list[Hit]) -> list[Hit]:
    """One hit per (type, where, span): two detectors finding the same SSN count once."""
    seen: set[tuple[str, str, int]] = set()
    out: list[Hit] = []
    for h in sorted(hits, key=lambda h: (h.where, h.start, -h.end)):
        key = (h.type, h.where, h.start)
        if key in seen:
            continue
        seen.add(key)
        out.append(h)
    return out


def decide(hits: Sequence[Hit]) -> Analysis:
    by_cat: dict[str, list[Hit]] = {c: [] for c in CATEGORIES}
    for h in hits:
        by_cat.setdefault(h.category, []).append(h)
    strong = [h for h in hits if h.strong]
    person = by_cat[PERSON]
    clinical = by_cat[CLINICAL]
    identifiers = by_cat[IDENTIFIER]
    context = by_cat[CONTEXT]
    reasons: list[str] = []
    if strong:
        reasons.append("strong_identifier")
    if person and (clinical or identifiers or strong):
        reasons.append("person_with_health_or_identifier")
    if clinical and identifiers and (context or person):
        reasons.append("health_with_identifier_in_patient_context")
    phi = bool(reasons)
    score = sum(h.score for h in hits if h.category != PROVIDER)
    if phi:
        score += sum(h.score for h in by_cat[PROVIDER])
    return Analysis(tuple(hits), phi, round(score, 2), tuple(reasons))
