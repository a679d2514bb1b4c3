"""Rule files: loading, overrides, file:line errors, inline examples, the policy chain."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.model import Envelope
from gateway.rules.builtin import WORDLISTS, validators
from gateway.rules.engine import Chunk
from gateway.rules.ruleset import (
    MessageFacts,
    build_engine,
    check_examples,
    choose,
    load_ruleset,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "conf" / "rules"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hs-cache")


@pytest.fixture(scope="module")
def shipped(cache):
    rs = load_ruleset(SHIPPED, WORDLISTS)
    return rs, build_engine(rs, validators(), cache)


def _rules(tmp_path: Path, local: str, name: str = "rules") -> Path:
    d = tmp_path / name
    shutil.copytree(SHIPPED, d)
    (d / "local.d").mkdir(exist_ok=True)
    (d / "local.d" / "site.yaml").write_text(local)
    return d


def test_shipped_rules_examples_pass(shipped):
    rs, engine = shipped
    assert check_examples(engine, rs) == []
    assert [p.id for p in rs.policies][-1] == "default"


def _problems(tmp_path, text):
    with pytest.raises(ConfigError) as exc:
        load_ruleset(_rules(tmp_path, text), WORDLISTS)
    return exc.value.problems


def test_unknown_action_is_reported_with_file_and_line(tmp_path):
    probs = _problems(tmp_path, "policies:\n  - id: typo\n    when: {phi: true}\n"
                                "    action: encrpyt\n")
    site = tmp_path / "rules" / "local.d" / "site.yaml"
    assert probs == [f"{site}:4: unknown action 'encrpyt' (expected one of: deliver, "
                     "require_tls, portal, encrypt, quarantine, reject)"]


def test_unknown_keys_and_conditions(tmp_path):
    probs = _problems(tmp_path, "detectors:\n  - id: x\n    patern: 'a'\n"
                                "policies:\n  - id: p\n    when: {phii: true}\n"
                                "    action: portal\n")
    text = "\n".join(probs)
    assert "site.yaml:3: detectors[0]: unknown key 'patern'" in text
    assert "unknown condition 'phii'" in text


def test_duplicate_id_needs_override_and_override_replaces(tmp_path, cache):
    probs = _problems(tmp_path, "policies:\n  - id: default\n    action: portal\n")
    assert "policy 'default' is already defined; add 'override: true'" in probs[0]
    rs = load_ruleset(_rules(tmp_path, "policies:\n  - id: default\n    override: true\n"
                                       "    action: require_tls\n", "rules2"), WORDLISTS)
    assert rs.policy("default").action == "require_tls"
    assert rs.policies[-1].id == "default"


@pytest.mark.parametrize("pattern,problem", [
    ("(?<=MRN)\\d+", "lookaround assertions are not supported"),
    ("(a)\\1", "backreferences are not supported"),
    ("(\\d+)+x", "nested quantifiers can backtrack catastrophically"),
    ("[unclosed", "invalid regular expression"),
])
def test_bad_patterns_are_refused(tmp_path, cache, pattern, problem):
    d = _rules(tmp_path, f"detectors:\n  - id: org-mrn\n    type: mrn\n"
                         f"    pattern: '{pattern}'\n")
    rs = load_ruleset(d, WORDLISTS)
    with pytest.raises(ConfigError) as exc:
        build_engine(rs, validators(), cache)
    assert problem in exc.value.problems[0]
    assert "site.yaml:2: detector 'org-mrn'" in exc.value.problems[0]


def test_failing_example_is_refused(tmp_path, cache):
    d = _rules(tmp_path, "detectors:\n  - id: org-mrn\n    type: mrn\n    strong: true\n"
                         "    pattern: '\\bEXH-\\d{7}\\b'\n    examples:\n"
                         "      match: ['EXH-1234567', 'EXH-12']\n"
                         "      no_match: ['EXH-7654321']\n")
    rs = load_ruleset(d, WORDLISTS)
    probs = check_examples(build_engine(rs, validators(), cache), rs)
    assert len(probs) == 2
    assert "example does not match: 'EXH-12'" in probs[0]
    assert "example must not match but does: 'EXH-7654321'" in probs[1]


def test_organisation_pattern_makes_phi(tmp_path, cache):
    d = _rules(tmp_path, "detectors:\n  - id: org-mrn\n    type: mrn\n    strong: true\n"
                         "    pattern: '\\bEXH-\\d{7}\\b'\n")
    rs = load_ruleset(d, WORDLISTS)
    engine = build_engine(rs, validators(), cache)
    a = engine.analyse([Chunk("body", "body", "see EXH-1234567")])
    assert a.phi and [h.type for h in a.hits] == ["mrn"]


def test_chain_must_end_with_default(tmp_path):
    probs = _problems(tmp_path, "disable_policies: [default]\n")
    assert any("must end with a default policy" in p for p in probs)


def _facts(**kw):
    base = dict(sender="a@example.org", subject="", headers={}, attachment_types=(), size=100,
                finding_counts={}, score=0.0, phi=False)
    base.update(kw)
    return MessageFacts(**base)


def test_policy_chain_per_recipient_and_monitor(tmp_path):
    rs = load_ruleset(_rules(tmp_path, """
policies:
  - id: baa-partner
    description: partners under a BAA get PHI over verified TLS
    when: {phi: true, recipient_domain: ["*.partner.test"]}
    action: deliver
    before: phi-requires-tls
  - id: pilot-quarantine
    when: {finding: ssn}
    action: quarantine
    monitor: true
    before: secure-keyword
"""), WORDLISTS)

    def own(d):
        return d == "example.org"

    phi = _facts(phi=True, finding_counts={"ssn": 1})
    p, mon = choose(rs.policies, phi, "x@mail.partner.test", own)
    assert p.id == "baa-partner" and [m.id for m in mon] == ["pilot-quarantine"]
    p, _ = choose(rs.policies, phi, "x@gmail.test", own)
    assert p.id == "phi-requires-tls" and p.action == "require_tls"
    p, _ = choose(rs.policies, _facts(subject="Re: [SECURE] results"), "x@gmail.test", own)
    assert p.id == "secure-keyword" and p.action == "portal"
    p, _ = choose(rs.policies, _facts(finding_counts={"unscannable": 1}), "x@gmail.test", own)
    assert p.action == "require_tls"
    p, _ = choose(rs.policies, _facts(), "x@gmail.test", own)
    assert p.id == "default" and p.action == "deliver"
    assert Envelope  # the chain sees recipients, not envelopes
