"""The PHI scan pool: a scan that overruns is killed with its process, which is replaced, and
the other messages go on. Real forkserver processes; the slow scans are real (a regular
expression that backtracks for ever inside C, which no Python-level timeout can interrupt).

Synthetic data only. No timing assertions: timeouts are short only to keep the tests short."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from gateway.classify import PhiPolicy, ScanFn, ScanOutcome, ScanWorkerDied, default_scanner
from gateway.config import Config, load_config
from gateway.model import Envelope
from tests.conftest import ROOT

HANG = b"X-Test-Scan: hang"
GREEDY = b"X-Test-Scan: allocate"
CRASH = b"X-Test-Scan: crash"


def _msg(marker: bytes = b"", body: bytes = b"Lunch on Friday?\r\n") -> bytes:
    return (b"From: alice@example.org\r\nTo: bob@partner.test\r\nSubject: hello\r\n"
            + (marker + b"\r\n" if marker else b"") + b"\r\n" + body)


def _endless() -> None:
    # catastrophic backtracking: one call into the C regex engine, for ever
    re.match(r"(a+)+$", "a" * 64 + "b")


def _misbehave(raw: bytes) -> None:
    if HANG in raw:
        _endless()
    if GREEDY in raw:
        bytearray(8 * 2**30)  # 8 GiB: only possible without a memory limit
    if CRASH in raw:
        os._exit(3)


def _light(config: Config) -> ScanFn:
    """A scanner without the rules (fast to start), which misbehaves on request."""

    def scan(raw: bytes) -> ScanOutcome:
        _misbehave(raw)
        return ScanOutcome(findings=(), phi=False, score=0.0, reasons=(), subject="",
                           headers={"pid": str(os.getpid())}, attachment_types=(), size=len(raw))

    return scan


def _real(config: Config) -> ScanFn:
    """The shipped rules' scanner, which misbehaves on request."""
    scanner = default_scanner(config)

    def scan(raw: bytes) -> ScanOutcome:
        _misbehave(raw)
        return scanner(raw)

    return scan


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    var = tmp_path_factory.mktemp("var")
    return load_config(ROOT / "conf" / "gateway.yaml",
                       [f"paths.var={var}", f"rules.cache_dir={ROOT / '.cache' / 'hyperscan'}",
                        "rules.enabled=true"])


ENV = Envelope(mail_from="alice@example.org", rcpt_tos=("bob@partner.test",),
               client_ip="127.0.0.1", client_helo="client.test", auth_user=None,
               listener="relay", smtputf8=False, body_8bit=False, received_at=0.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child not yet reaped is a zombie
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


async def _decide(policy: PhiPolicy, raw: bytes) -> str:
    """"ok", "timeout" (the relay answers 451), or the exception's name (also 451)."""
    try:
        await policy.decide(ENV, raw)
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        return type(exc).__name__
    return "ok"


def test_an_endless_scan_is_killed_and_its_worker_replaced(config: Config) -> None:
    policy = PhiPolicy(config, processes=1, timeout=3.0, scanner=_light)
    try:
        async def run() -> None:
            assert await _decide(policy, _msg()) == "ok"  # the worker is up
            [before] = policy.pool.pids()
            assert await _decide(policy, _msg(HANG)) == "timeout"
            assert await _decide(policy, _msg()) == "ok"  # the one replacement answers
            assert not _alive(before)  # killed (and reaped), not left spinning
            [after] = policy.pool.pids()
            assert after != before and _alive(after)
            assert policy.pool.replaced == 1

        asyncio.run(run())
    finally:
        policy.close(wait=True)


def test_other_messages_go_on_while_one_scan_hangs(config: Config) -> None:
    policy = PhiPolicy(config, processes=2, timeout=4.0, scanner=_light)
    try:
        async def run() -> None:
            hang = asyncio.ensure_future(_decide(policy, _msg(HANG)))
            others = [await _decide(policy, _msg()) for _ in range(5)]
            assert others == ["ok"] * 5  # served by the other worker meanwhile
            assert await hang == "timeout"
            assert [await _decide(policy, _msg()) for _ in range(3)] == ["ok"] * 3
            assert len(policy.pool.pids()) == 2

        asyncio.run(run())
    finally:
        policy.close(wait=True)


def test_the_relays_own_timeout_also_kills_the_worker(config: Config) -> None:
    """The relay wraps decide() in rules.scan_timeout: a cancel kills the worker too."""
    policy = PhiPolicy(config, processes=1, timeout=600.0, scanner=_light)
    try:
        async def run() -> None:
            assert await _decide(policy, _msg()) == "ok"
            [before] = policy.pool.pids()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(policy.decide(ENV, _msg(HANG)), 2.0)
            assert await _decide(policy, _msg()) == "ok"
            assert not _alive(before) and policy.pool.replaced == 1

        asyncio.run(run())
    finally:
        policy.close(wait=True)


def test_a_worker_that_dies_fails_its_message_only(config: Config) -> None:
    policy = PhiPolicy(config, processes=1, timeout=60.0, scanner=_light)
    try:
        async def run() -> None:
            assert await _decide(policy, _msg(CRASH)) == ScanWorkerDied.__name__
            assert await _decide(policy, _msg()) == "ok"

        asyncio.run(run())
    finally:
        policy.close(wait=True)


def test_memory_limit_fails_the_greedy_message_only(config: Config) -> None:
    policy = PhiPolicy(config, processes=1, timeout=60.0, memory_mb=1024, scanner=_light)
    try:
        async def run() -> None:
            assert await _decide(policy, _msg(GREEDY)) == ScanWorkerDied.__name__  # MemoryError
            assert await _decide(policy, _msg()) == "ok"

        asyncio.run(run())
    finally:
        policy.close(wait=True)


def test_real_rules_and_pdfium_under_a_memory_limit_then_a_hang(config: Config) -> None:
    """The shipped rules and a PDF read by PDFium work within 1 GiB of address space; a hang
    after that is still killed, and the replacement loads the rules and scans again."""
    from tests.unit import extract_samples as S

    raw = S.message(attachments=[(S.pdf_bytes(pages=3), "application/pdf", "labs.pdf")])
    policy = PhiPolicy(config, processes=1, timeout=60.0, memory_mb=1024, scanner=_real)
    try:
        async def run() -> None:
            verdict = await policy.decide(ENV, raw)
            assert verdict.phi and {"mrn", "dob"} <= {f.type for f in verdict.findings}
            policy.timeout = 5.0
            assert await _decide(policy, _msg(HANG)) == "timeout"
            policy.timeout = 60.0
            verdict = await policy.decide(ENV, raw)
            assert verdict.phi and policy.pool.replaced == 1

        asyncio.run(run())
    finally:
        policy.close(wait=True)


def test_close_lets_idle_workers_exit(config: Config) -> None:
    policy = PhiPolicy(config, processes=2, timeout=60.0, scanner=_light)

    async def run() -> None:
        assert await _decide(policy, _msg()) == "ok"

    asyncio.run(run())
    pids = policy.pool.pids()
    policy.close(wait=True)
    assert pids and not any(_alive(p) for p in pids)
    assert asyncio.run(_decide(policy, _msg())) != "ok"  # closed: fails closed (451)
