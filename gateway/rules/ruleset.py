"""Rule files: detectors and the policy chain, loaded from ``conf/rules/*.yaml`` then
``conf/rules/local.d/*.yaml`` (admins' files; shipped defaults are never edited in place).

A later file may add detectors and policies, replace one by id with ``override: true``, or
switch one off with ``disable_detectors`` / ``disable_policies``. Added policies go before the
final default policy unless ``before: ID`` says where. Every problem, including a failing inline
example, is reported as ``file:line: what is wrong``; nothing half-loaded is ever used.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, _load_with_lines, _size
from ..model import ACTIONS
from ..passphrase import as_secure
from .builtin import validators as builtin_validators
from .engine import CATEGORIES, Chunk, DetectorSpec, Engine, RuleCompileError
from .validators import VALIDATORS

DETECTOR_KEYS = {
    "id", "type", "category", "description", "pattern", "patterns", "words", "wordlist",
    "caseless", "validate", "context", "context_required", "window", "score", "strong",
    "examples", "override", "exclude_context", "exclude_window", "column_context",
    "patient_columns",
}
POLICY_KEYS = {"id", "description", "when", "action", "monitor", "override", "before",
               "examples"}
WHEN_KEYS = {
    "phi", "finding", "finding_min", "score_at_least", "unscannable", "sender", "recipient",
    "recipient_domain", "own_domain_recipient", "subject_contains", "header",
    "attachment_type", "size_over", "any", "not",
}


@dataclass(frozen=True)
class MessageFacts:
    """What policies may look at for one message (no content beyond the subject keywords
    check, which happens here and is not kept)."""

    sender: str
    subject: str
    headers: Mapping[str, str]
    attachment_types: tuple[str, ...]
    size: int
    finding_counts: Mapping[str, int]
    score: float
    phi: bool


@dataclass(frozen=True)
class Policy:
    id: str
    description: str
    when: Mapping[str, Any] | None
    action: str
    monitor: bool = False
    source: str = ""
    examples: tuple[Mapping[str, Any], ...] = ()


@dataclass
class RuleSet:
    detectors: list[DetectorSpec]
    policies: list[Policy]
    files: list[Path] = field(default_factory=list)
    wordlists: Mapping[str, Callable[[], Sequence[str]]] = field(default_factory=dict)

    def policy(self, pid: str) -> Policy | None:
        return next((p for p in self.policies if p.id == pid), None)


# --------------------------------------------------------------------------- conditions


def _domain_match(domain: str, patterns: Iterable[str]) -> bool:
    d = domain.lower()
    for p in patterns:
        p = p.lower()
        if p.startswith("*."):
            if d.endswith(p[1:]) or d == p[2:]:
                return True
        elif d == p:
            return True
    return False


def _address_match(address: str, patterns: Iterable[str]) -> bool:
    a = address.lower()
    dom = a.rpartition("@")[2]
    for p in patterns:
        p = p.lower()
        if p.startswith("@"):
            if dom == p[1:]:
                return True
        elif a == p:
            return True
    return False


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def matches(when: Mapping[str, Any] | None, facts: MessageFacts, recipient: str,
            own_domain: Callable[[str], bool]) -> bool:
    if not when:
        return True
    for key, val in when.items():
        if key == "phi":
            ok = facts.phi == bool(val)
        elif key == "finding":
            ok = any(facts.finding_counts.get(t, 0) > 0 for t in _as_list(val))
        elif key == "finding_min":
            ok = all(facts.finding_counts.get(t, 0) >= int(n) for t, n in val.items())
        elif key == "score_at_least":
            ok = facts.score >= float(val)
        elif key == "unscannable":
            ok = (facts.finding_counts.get("unscannable", 0) > 0) == bool(val)
        elif key == "sender":
            ok = _address_match(facts.sender, _as_list(val))
        elif key == "recipient":
            ok = _address_match(recipient, _as_list(val))
        elif key == "recipient_domain":
            ok = _domain_match(recipient.rpartition("@")[2], _as_list(val))
        elif key == "own_domain_recipient":
            ok = own_domain(recipient.rpartition("@")[2]) == bool(val)
        elif key == "subject_contains":
            subj = as_secure(facts.subject).lower()  # "[secure: phrase]" is "[secure]"
            ok = any(str(k).lower() in subj for k in _as_list(val))
        elif key == "header":
            ok = all(str(v).lower() in facts.headers.get(str(h).lower(), "").lower()
                     for h, v in val.items())
        elif key == "attachment_type":
            ok = any(fnmatch.fnmatch(t, str(p).lower()) for t in facts.attachment_types
                     for p in _as_list(val))
        elif key == "size_over":
            ok = facts.size > _size(val)
        elif key == "any":
            ok = any(matches(sub, facts, recipient, own_domain) for sub in val)
        elif key == "not":
            ok = not matches(val, facts, recipient, own_domain)
        else:  # refused at load time
            ok = False
        if not ok:
            return False
    return True


def choose(policies: Sequence[Policy], facts: MessageFacts, recipient: str,
           own_domain: Callable[[str], bool]) -> tuple[Policy, list[Policy]]:
    """The first enforcing policy that matches, and the monitor-mode ones that matched
    before it."""
    monitored: list[Policy] = []
    for p in policies:
        if matches(p.when, facts, recipient, own_domain):
            if p.monitor:
                monitored.append(p)
                continue
            return p, monitored
    return policies[-1], monitored


# --------------------------------------------------------------------------- loading


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, text: str) -> None:
        self.items.append(f"{where}: {text}")


def _check_when(when: Any, where: str, probs: _Problems, path: str) -> None:
    if when is None:
        return
    if not isinstance(when, dict):
        probs.add(where, f"{path}: expected a mapping of conditions")
        return
    for key, val in when.items():
        if key not in WHEN_KEYS:
            probs.add(where, f"{path}: unknown condition '{key}' "
                             f"(expected one of: {', '.join(sorted(WHEN_KEYS))})")
        elif key in ("any",) and not (isinstance(val, list) and val):
            probs.add(where, f"{path}.any: expected a list of condition mappings")
        elif key == "any":
            for i, sub in enumerate(val):
                _check_when(sub, where, probs, f"{path}.any[{i}]")
        elif key == "not":
            _check_when(val, where, probs, f"{path}.not")
        elif key in ("finding_min", "header") and not isinstance(val, dict):
            probs.add(where, f"{path}.{key}: expected a mapping")
        elif key == "size_over":
            try:
                _size(val)
            except ValueError as exc:
                probs.add(where, f"{path}.size_over: {exc}")


def load_ruleset(rules_dir: Path,
                 wordlists: Mapping[str, Callable[[], Sequence[str]]] | None = None) -> RuleSet:
    """Load and validate every rule file. Raises ConfigError listing every problem."""
    files = sorted(rules_dir.glob("*.yaml")) + sorted((rules_dir / "local.d").glob("*.yaml"))
    if not files:
        raise ConfigError([f"{rules_dir}:1: no rule files (*.yaml) found"])
    wl = dict(wordlists or {})
    probs = _Problems()
    detectors: dict[str, DetectorSpec] = {}
    policies: list[Policy] = []
    for path in files:
        try:
            data, lines = _load_with_lines(path.read_text(encoding="utf-8"), str(path))
        except ConfigError as err:
            probs.items.extend(err.problems)
            continue
        if data is None:
            continue

        def at(key: str, path: Path = path, lines: dict[str, int] = lines) -> str:
            return f"{path}:{lines.get(key, 1)}"

        if not isinstance(data, dict):
            probs.add(f"{path}:1", "expected a mapping with detectors: and policies:")
            continue
        for key in data:
            if key not in ("detectors", "policies", "disable_detectors", "disable_policies"):
                probs.add(at(str(key)), f"unknown key '{key}' (expected one of: detectors, "
                          "disable_detectors, disable_policies, policies)")
        for i, d in enumerate(data.get("detectors") or []):
            spec = _detector(d, f"detectors[{i}]", at, probs, wl)
            if spec is None:
                continue
            if spec.id in detectors and not (isinstance(d, dict) and d.get("override")):
                probs.add(spec.source, f"detector '{spec.id}' is already defined; "
                          "add 'override: true' to replace it")
                continue
            detectors[spec.id] = spec
        for did in data.get("disable_detectors") or []:
            if detectors.pop(str(did), None) is None:
                probs.add(at("disable_detectors"), f"no detector '{did}' to disable")
        for i, p in enumerate(data.get("policies") or []):
            pol = _policy(p, f"policies[{i}]", at, probs)
            if pol is None:
                continue
            existing = next((k for k, q in enumerate(policies) if q.id == pol.id), None)
            if existing is not None:
                if not p.get("override"):
                    probs.add(pol.source, f"policy '{pol.id}' is already defined; "
                              "add 'override: true' to replace it")
                else:
                    policies[existing] = pol
                continue
            before = p.get("before")
            if before is not None:
                idx = next((k for k, q in enumerate(policies) if q.id == before), None)
                if idx is None:
                    probs.add(pol.source, f"before: no policy '{before}'")
                    continue
                policies.insert(idx, pol)
            elif policies and policies[-1].when is None and path != files[0]:
                policies.insert(len(policies) - 1, pol)
            else:
                policies.append(pol)
        for pid in data.get("disable_policies") or []:
            k = next((k for k, q in enumerate(policies) if q.id == pid), None)
            if k is None:
                probs.add(at("disable_policies"), f"no policy '{pid}' to disable")
            else:
                policies.pop(k)
    if not policies or policies[-1].when is not None:
        probs.add(f"{files[0]}:1", "the policy chain must end with a default policy that has "
                  "no 'when' (it decides when nothing else matched)")
    if probs.items:
        raise ConfigError(probs.items)
    return RuleSet(list(detectors.values()), policies, files, wl)


def _entry_id(entry: Any, path: str, kind: str, keys: set[str], at: Callable[[str], str],
              probs: _Problems) -> str | None:
    """The id of a detector or policy entry, after reporting a non-mapping, unknown keys and
    a missing id (None when the entry cannot be used)."""
    if not isinstance(entry, dict):
        probs.add(at(path), f"{path}: expected a mapping")
        return None
    for k in entry:
        if k not in keys:
            probs.add(at(f"{path}.{k}"), f"{path}: unknown key '{k}' "
                      f"(expected one of: {', '.join(sorted(keys))})")
    eid = entry.get("id")
    if not isinstance(eid, str) or not eid:
        probs.add(at(path), f"{path}: every {kind} needs an 'id'")
        return None
    return eid


def _detector(d: Any, path: str, at: Callable[[str], str], probs: _Problems,
              wordlists: Mapping[str, Callable[[], Sequence[str]]]) -> DetectorSpec | None:
    where = at(path)
    did = _entry_id(d, path, "detector", DETECTOR_KEYS, at, probs)
    if did is None:
        return None
    category = d.get("category", "identifier")
    if category not in CATEGORIES:
        probs.add(at(f"{path}.category"), f"detector '{did}': unknown category '{category}' "
                  f"(expected one of: {', '.join(CATEGORIES)})")
        return None
    patterns = d.get("patterns") or ([d["pattern"]] if "pattern" in d else [])
    words = list(d.get("words") or [])
    if "wordlist" in d:
        loader = wordlists.get(str(d["wordlist"]))
        if loader is None:
            probs.add(at(f"{path}.wordlist"), f"detector '{did}': unknown wordlist "
                      f"'{d['wordlist']}' (expected one of: {', '.join(sorted(wordlists))})")
            return None
        words.extend(loader())
    if not patterns and not words:
        probs.add(where, f"detector '{did}': needs pattern, patterns, words or wordlist")
        return None
    validate = d.get("validate")
    if validate is not None and validate not in VALIDATORS and validate not in (
            builtin_validators()):
        probs.add(at(f"{path}.validate"), f"detector '{did}': unknown validator '{validate}'")
        return None
    ex = d.get("examples") or {}
    spec = DetectorSpec(
        id=did,
        type=str(d.get("type", did)),
        category=category,
        description=str(d.get("description", "")),
        patterns=tuple(str(p) for p in patterns),
        words=tuple(str(w) for w in words),
        caseless=bool(d.get("caseless", True)),
        validate=validate,
        context=tuple(str(c) for c in d.get("context") or ()),
        context_required=bool(d.get("context_required", False)),
        exclude_context=tuple(str(c) for c in d.get("exclude_context") or ()),
        exclude_window=int(d.get("exclude_window", 25)),
        window=int(d.get("window", 80)),
        column_context=tuple(str(c) for c in d.get("column_context") or ()),
        patient_columns=tuple(str(c) for c in d.get("patient_columns") or ()),
        score=float(d.get("score", 1.0)),
        strong=bool(d.get("strong", False)),
        examples_match=tuple(str(x) for x in ex.get("match") or ()),
        examples_no_match=tuple(str(x) for x in ex.get("no_match") or ()),
        source=where,
    )
    if spec.context_required and not (spec.context or spec.column_context):
        probs.add(where, f"detector '{did}': context_required needs a context or "
                  "column_context word list")
    return spec


def _policy(p: Any, path: str, at: Callable[[str], str], probs: _Problems) -> Policy | None:
    where = at(path)
    pid = _entry_id(p, path, "policy", POLICY_KEYS, at, probs)
    if pid is None:
        return None
    action = p.get("action")
    if action not in ACTIONS:
        probs.add(at(f"{path}.action"), f"unknown action '{action}' "
                  f"(expected one of: {', '.join(ACTIONS)})")
        return None
    _check_when(p.get("when"), at(f"{path}.when"), probs, f"policy '{pid}' when")
    return Policy(pid, str(p.get("description", "")), p.get("when"), action,
                  bool(p.get("monitor", False)), where, tuple(p.get("examples") or ()))


# --------------------------------------------------------------------------- examples


def check_examples(engine: Engine, ruleset: RuleSet) -> list[str]:
    """Run every detector's inline examples. Returns ``file:line: problem`` lines."""
    problems: list[str] = []
    for spec in ruleset.detectors:
        for text in spec.examples_match:
            a = engine.analyse([Chunk("example", "body", text)])
            if not any(h.detector == spec.id for h in a.hits):
                problems.append(f"{spec.source}: detector '{spec.id}': example does not "
                                f"match: {text!r}")
        for text in spec.examples_no_match:
            a = engine.analyse([Chunk("example", "body", text)])
            if any(h.detector == spec.id for h in a.hits):
                problems.append(f"{spec.source}: detector '{spec.id}': example must not "
                                f"match but does: {text!r}")
    return problems


def build_engine(ruleset: RuleSet, validators: Mapping[str, Callable[[str], bool]],
                 cache_dir: Path | None = None) -> Engine:
    try:
        return Engine(ruleset.detectors, dict(validators), cache_dir)
    except RuleCompileError as err:
        raise ConfigError([str(err)]) from None
