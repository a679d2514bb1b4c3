"""Classify and decide: message bytes -> findings -> a verdict per recipient.

``Scanner`` is pure (extraction, then the detection engine); ``decide`` walks the policy chain
for each recipient. ``PhiPolicy`` is what the relay calls at end of DATA: it runs the scanner in
a process pool sized to the cores, so scanning never blocks the event loop, and fails closed
(the caller answers 451) when the pool is overloaded or times out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.policy
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser

from .config import Config
from .extract import ExtractLimits, extract
from .mime import header_section_size
from .model import Envelope, Finding, RecipientVerdict, Verdict
from .rules.builtin import WORDLISTS, validators
from .rules.engine import Chunk, Engine, Hit
from .rules.ruleset import MessageFacts, RuleSet, build_engine, choose, load_ruleset

UNSCANNABLE_SCORE = 5.0
_HEADERS = BytesHeaderParser(policy=email.policy.compat32)
SECURE_KEYWORD = "[secure]"


@dataclass(frozen=True)
class Explained:
    detector: str
    type: str
    where: str
    masked: str


@dataclass(frozen=True)
class ScanOutcome:
    """What the scanner found. Crosses the process boundary, so it holds no message content
    except the subject and a few headers, which policies may test and which are never logged."""

    findings: tuple[Finding, ...]
    phi: bool
    score: float
    reasons: tuple[str, ...]
    subject: str
    headers: dict[str, str]
    attachment_types: tuple[str, ...]
    size: int
    explain: tuple[Explained, ...] = ()
    errors: tuple[str, ...] = field(default_factory=tuple)


def load_rules(config: Config) -> tuple[RuleSet, Engine]:
    """Load and compile the rule files (raises ConfigError with file:line problems)."""
    ruleset = load_ruleset(config.rules_dir, WORDLISTS)
    engine = build_engine(ruleset, validators(), config.rules.cache_dir)
    return ruleset, engine


def _aggregate(hits: Sequence[Hit], unscannable: Sequence[str]) -> tuple[Finding, ...]:
    agg: dict[tuple[str, str], list[float]] = {}
    for h in hits:
        if h.category == "context":
            continue
        agg.setdefault((h.type, h.detector), []).append(h.score)
    for reason in unscannable:
        agg.setdefault(("unscannable", f"extract:{reason}"), []).append(UNSCANNABLE_SCORE)
    return tuple(Finding(t, r, len(s), round(sum(s), 2)) for (t, r), s in sorted(agg.items()))


class Scanner:
    def __init__(self, engine: Engine, limits: ExtractLimits | None = None) -> None:
        self.engine = engine
        self.limits = limits or ExtractLimits()

    def scan(self, raw: bytes, explain: bool = False) -> ScanOutcome:
        ex = extract(raw, self.limits)
        chunks = [Chunk(c.where, c.kind, c.text) for c in ex.chunks]
        analysis = self.engine.analyse(chunks)
        reasons = [u.reason for u in ex.unscannable]
        subject = next((c.text for c in ex.chunks if c.kind == "subject"), "")
        # Header conditions in policies look at the message's own header fields (in memory
        # only: a subject can hold PHI and is never logged).
        parsed = _HEADERS.parsebytes(raw[:header_section_size(raw, 1 << 20)])
        headers: dict[str, str] = {}
        for name, value in parsed.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else str(value)
        return ScanOutcome(
            findings=_aggregate(analysis.hits, reasons),
            phi=analysis.phi,
            score=analysis.score + UNSCANNABLE_SCORE * len(reasons),
            reasons=analysis.reasons,
            subject=subject,
            headers=headers,
            attachment_types=tuple(t.lower() for t in ex.attachment_types),
            size=len(raw),
            explain=tuple(Explained(h.detector, h.type, h.where, h.masked())
                          for h in analysis.hits) if explain else (),
        )


def decide(ruleset: RuleSet, outcome: ScanOutcome, envelope: Envelope,
           own_domain: Callable[[str], bool]) -> Verdict:
    counts: dict[str, int] = {}
    for f in outcome.findings:
        counts[f.type] = counts.get(f.type, 0) + f.count
    facts = MessageFacts(
        sender=envelope.mail_from,
        subject=outcome.subject,
        headers=outcome.headers,
        attachment_types=outcome.attachment_types,
        size=outcome.size,
        finding_counts=counts,
        score=outcome.score,
        phi=outcome.phi,
    )
    verdicts: list[RecipientVerdict] = []
    monitored: list[RecipientVerdict] = []
    reject: str | None = None
    for rcpt in envelope.rcpt_tos:
        policy, mon = choose(ruleset.policies, facts, rcpt, own_domain)
        verdicts.append(RecipientVerdict(rcpt, policy.action, policy.id))
        monitored.extend(RecipientVerdict(rcpt, m.action, m.id) for m in mon)
        if policy.action == "reject" and reject is None:
            reject = policy.description or f"refused by policy {policy.id}"
    return Verdict(
        recipients=tuple(verdicts),
        phi=outcome.phi or counts.get("unscannable", 0) > 0,
        findings=outcome.findings,
        errors=outcome.errors,
        reject_reason=reject,
        monitor=tuple(monitored),
    )


# --------------------------------------------------------------------------- process pool

_WORKER_SCANNER: Scanner | None = None


def _init_worker(config: Config) -> None:
    global _WORKER_SCANNER
    _, engine = load_rules(config)
    _WORKER_SCANNER = Scanner(engine)


def _scan_in_worker(raw: bytes) -> ScanOutcome:
    assert _WORKER_SCANNER is not None
    return _WORKER_SCANNER.scan(raw)


class PhiPolicy:
    """The relay's classify/decide step, with scanning in a process pool."""

    def __init__(self, config: Config, processes: int | None = None,
                 timeout: float = 60.0) -> None:
        self.config = config
        # Compiling here validates the rules before the pool is used; the engine itself is
        # only needed in the pool's processes.
        self.ruleset, _ = load_rules(config)
        self.timeout = timeout
        n = processes or config.rules.processes or max(
            1, (os.cpu_count() or 1) // max(1, config.workers))
        ctx = multiprocessing.get_context("forkserver")
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=n, mp_context=ctx, initializer=_init_worker, initargs=(config,))

    async def decide(self, envelope: Envelope, raw: bytes) -> Verdict:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, _scan_in_worker, raw)
        outcome = await asyncio.wait_for(fut, self.timeout)
        return decide(self.ruleset, outcome, envelope, self.config.is_own_domain)

    def close(self, wait: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)
