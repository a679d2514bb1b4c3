"""Classify and decide: message bytes -> findings -> a verdict per recipient.

``Scanner`` is pure (extraction, then the detection engine); ``decide`` walks the policy chain
for each recipient. ``PhiPolicy`` is what the relay calls at end of DATA: it runs the scanner in
a process pool sized to the cores (``ScanPool``), so scanning never blocks the event loop, and
fails closed (the caller answers 451) when the pool is overloaded or times out. A scan that
times out has its process killed and replaced, so one endless library call cannot keep a worker
busy for ever; each process can also be given an address-space limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.policy
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

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
#
# Each scanner process takes one message at a time over its own pipe. A scan that overruns its
# time is ended by killing its process (SIGKILL): a long call inside a library (a PDFium page, a
# regex in C) cannot be interrupted any other way. The killed process is replaced at once and
# the other processes go on with their messages; the caller of the overrun scan gets
# ``TimeoutError`` and answers 451. A process that dies on its own (a crash, the memory limit)
# is replaced the same way and its message gets ``ScanWorkerDied`` (also 451).

ScanFn = Callable[[bytes], ScanOutcome]
ScannerFactory = Callable[[Config], ScanFn]


class ScanWorkerDied(RuntimeError):
    """The scanner process ended (or failed) before answering; the message was not scanned."""


def default_scanner(config: Config) -> ScanFn:
    """The worker's scanner: the compiled rules of ``config``."""
    _, engine = load_rules(config)
    return Scanner(engine).scan


def _limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        import resource

        limit = megabytes * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _worker_main(conn: Connection, config: Config, factory: ScannerFactory,
                 memory_mb: int) -> None:
    """A scanner process: say "ready", then answer one message after another until EOF."""
    try:
        _limit_memory(memory_mb)
        scan = factory(config)
    except BaseException as exc:  # reported to the parent, then exit
        conn.send(("error", type(exc).__name__))
        return
    conn.send(("ready", None))
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[str, object] = ("ok", scan(raw))
        except BaseException as exc:  # MemoryError, a bug: this message only
            answer = ("error", type(exc).__name__)
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False


@dataclass
class _Job:
    """One message's trip to a worker, shared by the waiting coroutine and the pool's thread."""

    raw: bytes
    lock: threading.Lock = field(default_factory=threading.Lock)
    worker: _Worker | None = None
    abandoned: bool = False  # the caller stopped waiting: the worker is killed


class ScanPool:
    """``processes`` scanner processes (forkserver), each fed by one thread of this process."""

    def __init__(self, config: Config, processes: int, memory_mb: int = 0,
                 factory: ScannerFactory = default_scanner) -> None:
        self.config = config
        self.memory_mb = memory_mb
        self.factory = factory
        self._ctx = multiprocessing.get_context("forkserver")
        self._lock = threading.Lock()
        self._closed = False
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: set[_Worker] = set()
        self.replaced = 0  # processes killed or lost and started anew
        for _ in range(processes):
            self._idle.put(self._spawn())
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=processes, thread_name_prefix="phi-scan")

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, name="phigate-scan", daemon=True,
                                 args=(child, self.config, self.factory, self.memory_mb))
        proc.start()
        child.close()  # else the parent never sees EOF when the worker dies
        worker = _Worker(proc, parent)
        with self._lock:
            self._all.add(worker)
        return worker

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._all if w.process.pid is not None]

    async def scan(self, raw: bytes, time_limit: float) -> ScanOutcome:
        """Scan in a worker; on timeout or cancellation the worker is killed and replaced."""
        job = _Job(raw)
        fut = asyncio.wrap_future(self._threads.submit(self._run, job))
        try:
            return await asyncio.wait_for(fut, time_limit)
        except BaseException:  # TimeoutError, CancelledError (the relay's own timeout)
            with job.lock:  # the thread lets go of the worker only under this lock
                job.abandoned = True
                if job.worker is not None:
                    _kill(job.worker)
            raise

    def _run(self, job: _Job) -> ScanOutcome:
        """In a pool thread: hand the message to an idle worker and wait for its answer."""
        worker = self._idle.get()
        with job.lock:
            if job.abandoned:  # timed out while waiting for a worker: it stays idle
                self._idle.put(worker)
                raise TimeoutError
            job.worker = worker
        try:
            kind, value = self._exchange(worker, job.raw)
        except BaseException as exc:  # EOF: killed (timeout) or died; anything else: unsure
            with job.lock:
                job.worker = None
                abandoned = job.abandoned
            self._replace(worker)
            if abandoned:
                raise TimeoutError from None
            if isinstance(exc, (EOFError, OSError)):
                raise ScanWorkerDied("scanner process died") from None
            raise
        with job.lock:
            job.worker = None
        self._release(worker)
        if kind != "ok" or not isinstance(value, ScanOutcome):
            raise ScanWorkerDied(f"scanner failed: {value}")
        return value

    @staticmethod
    def _exchange(worker: _Worker, raw: bytes) -> tuple[str, object]:
        if not worker.ready:
            kind, value = worker.conn.recv()
            if kind != "ready":
                raise EOFError(value)
            worker.ready = True
        worker.conn.send_bytes(raw)
        kind, value = worker.conn.recv()
        return str(kind), value

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            self._retire(worker)
        else:
            self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        _kill(worker)
        self._retire(worker)
        with self._lock:
            self.replaced += 1
            closed = self._closed
        if not closed:
            self._idle.put(self._spawn())

    def _retire(self, worker: _Worker) -> None:
        worker.conn.close()  # an idle worker reads EOF and exits
        worker.process.join(5.0)
        if worker.process.exitcode is None:
            _kill(worker)
            worker.process.join(5.0)
        with self._lock:
            self._all.discard(worker)

    def close(self, wait: bool = False) -> None:
        """Stop taking messages; idle workers exit now, busy ones after their message.
        ``wait``: wait for that, killing what is still running after ``rules.scan_timeout``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._threads.shutdown(wait=False, cancel_futures=True)
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            worker.conn.close()
        if wait:
            self._threads.shutdown(wait=True)
            with self._lock:
                left = list(self._all)
            for worker in left:
                worker.process.join(5.0)
                if worker.process.exitcode is None:
                    _kill(worker)
                    worker.process.join(5.0)


def _kill(worker: _Worker) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        worker.process.kill()


class PhiPolicy:
    """The relay's classify/decide step, with scanning in a process pool."""

    def __init__(self, config: Config, processes: int | None = None,
                 timeout: float | None = None, *, memory_mb: int | None = None,
                 scanner: ScannerFactory = default_scanner) -> None:
        self.config = config
        # Compiling here validates the rules before the pool is used; the engine itself is
        # only needed in the pool's processes.
        self.ruleset, _ = load_rules(config)
        self.timeout = config.rules.scan_timeout if timeout is None else timeout
        n = processes or config.rules.processes or max(
            1, (os.cpu_count() or 1) // max(1, config.workers))
        mb = config.rules.worker_memory_mb if memory_mb is None else memory_mb
        self.pool = ScanPool(config, n, mb, scanner)

    async def decide(self, envelope: Envelope, raw: bytes) -> Verdict:
        outcome = await self.pool.scan(raw, self.timeout)
        return decide(self.ruleset, outcome, envelope, self.config.is_own_domain)

    def close(self, wait: bool = False) -> None:
        self.pool.close(wait=wait)
