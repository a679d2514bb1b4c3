"""In-process delivery harness: the real Spool, AuditLog, Router, SmtpSender and Delivery wired
by hand around a fake clock, so retries, back-off and expiry are driven by advancing the clock
(never by sleeping), while every SMTP hop still goes over a real socket to a real sink.

Also: sinks with extra instrumentation (connections counted, slow DATA, any bind address) and
a small synthetic message builder with a unique Message-ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

from gateway.audit import AuditLog
from gateway.config import Config, load_config
from gateway.delivery import Delivery
from gateway.model import Envelope, RecipientVerdict, Verdict
from gateway.routing import Router, make_resolver
from gateway.smtpclient import SmtpSender
from gateway.spool import Spool
from tests.conftest import ROOT, Sink, SinkHandler, free_port

# --------------------------------------------------------------------------- clock


class FakeClock:
    """A wall clock that moves only when told to. Starts at a whole second near real time, so
    timestamps derived from it (Date headers, ISO times in events) still look sensible."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, when: float) -> None:
        assert when >= self.now, "the clock never goes back"
        self.now = when


# --------------------------------------------------------------------------- messages


def make_message(*, subject: str = "synthetic test", body: str = "synthetic test body\r\n",
                 frm: str = "alice@example.org", to: str = "bob@dest.test",
                 msgid: str | None = None) -> tuple[bytes, str]:
    """A small RFC 5322 message with CRLF line ends; returns (bytes, Message-ID)."""
    msgid = msgid or f"<{secrets.token_hex(8)}@example.org>"
    raw = (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
           f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: {msgid}\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}")
    return raw.encode(), msgid


def check_dsn_fields(raw: bytes) -> None:
    """RFC 3464 section 2.2/2.3 syntax of the fields a bounce carries: typed addresses and
    MTA names (``type; value``), and a Diagnostic-Code that starts with its diagnostic-type
    (``smtp;`` for a remote reply, e.g. ``X-Phigate;`` for a local reason)."""
    typed = ("Reporting-MTA", "Final-Recipient", "Original-Recipient", "Remote-MTA",
             "Diagnostic-Code")
    for line in raw.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition(":")
        if sep and name in typed:
            assert re.match(r" ?[A-Za-z][A-Za-z0-9-]*; ?\S", value), \
                f"RFC 3464: '{name}' needs 'type; value', got {line!r}"
        if sep and name == "Status":
            assert re.fullmatch(r" ?[245]\.\d{1,3}\.\d{1,3}", value), line
        if sep and name == "Action":
            assert value.strip() in ("failed", "delayed", "delivered", "relayed", "expanded")


# --------------------------------------------------------------------------- sinks


class CountingHandler(SinkHandler):
    """Sink handler that records the peer (client ip, port) of every transaction, so a test
    can count the SMTP connections a sequence of messages used."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[tuple[str, int]] = []

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        with self.lock:
            self.peers.append(tuple(session.peer[:2]))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"


class SlowHandler(SinkHandler):
    """Sink handler that takes ``delay`` seconds to answer DATA (a slow remote server)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


class _Ctl(Controller):  # type: ignore[misc]
    def __init__(self, handler: SinkHandler, host: str, port: int,
                 tls_context: ssl.SSLContext | None) -> None:
        self._tls = tls_context
        super().__init__(handler, hostname=host, port=port)

    def factory(self) -> AioSMTP:
        return AioSMTP(self.handler, tls_context=self._tls, enable_SMTPUTF8=True,
                       hostname="sink.test", data_size_limit=None)


def start_custom_sink(handler: SinkHandler, port: int | None = None, host: str = "127.0.0.1",
                      tls_context: ssl.SSLContext | None = None) -> Sink:
    """Like ``tests.conftest.start_sink`` but with any handler and bind address."""
    port = port or free_port()
    ctl = _Ctl(handler, host, port, tls_context)
    ctl.start()
    return Sink(port, handler, ctl)


# --------------------------------------------------------------------------- the harness


@dataclass
class Harness:
    cfg: Config
    clock: FakeClock
    spool: Spool
    audit: AuditLog
    audit_path: Path
    router: Router
    sender: SmtpSender
    delivery: Delivery

    def store(self, mail_from: str, rcpts: list[str], raw: bytes, kind: str = "message") -> str:
        env = Envelope(mail_from=mail_from, rcpt_tos=tuple(rcpts), client_ip="127.0.0.1",
                       client_helo="client.test", listener="relay",
                       received_at=self.clock())
        verdict = Verdict(recipients=tuple(RecipientVerdict(r, "deliver", "default")
                                           for r in rcpts))
        return self.spool.store(env, verdict, raw, kind=kind, now=self.clock())

    def events(self, action: str | None = None, qid: str | None = None) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        out = []
        for line in self.audit_path.read_text().splitlines():
            if not line.strip():
                continue
            ev = json.loads(line)
            if action is not None and ev["event.action"] != action:
                continue
            if qid is not None and ev.get("email.local_id") != qid:
                continue
            out.append(ev)
        return out

    def status(self, qid: str) -> dict[str, Any] | None:
        path = self.spool.root / "status" / f"{qid}.json"
        if not path.exists():
            return None
        return dict(json.loads(path.read_text()))

    def queued(self) -> dict[str, list[str]]:
        """Every queue file by state (tmp included), empty states left out."""
        out: dict[str, list[str]] = {}
        for state in ("tmp", "incoming", "active", "deferred", "hold", "corrupt"):
            ids = self.spool.ids(state)
            if ids:
                out[state] = ids
        return out

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sender.close(), 5)
        self.audit.close()


def build_harness(tmp_path: Path, *overrides: str, transport: dict[str, int] | None = None,
                  clock: FakeClock | None = None, dns_port: int | None = None,
                  transport_hosts: dict[str, str] | None = None) -> Harness:
    """Config from conf/gateway.yaml plus overrides; parts wired as app.Gateway does, with the
    fake clock for Router and Delivery. Domains not in the transport map go to MX lookup via
    the DNS server on 127.0.0.1:``dns_port`` (a closed port by default, so nothing ever
    reaches the machine's resolver)."""
    clock = clock or FakeClock()
    var = tmp_path / "var"
    tm = {d: f"127.0.0.1:{p}" for d, p in (transport or {}).items()}
    tm.update(transport_hosts or {})
    base = [
        f"paths.var={var}",
        "hostname=phigate.test",
        "domains=[example.org]",
        "log.stdout=false",
        "dns.nameservers=[127.0.0.1]",
        f"dns.port={dns_port or free_port()}",
        "dns.timeout=1s",
        "delivery.retry.first=60s",
        "delivery.transport=" + json.dumps(tm),
    ]
    cfg = load_config(ROOT / "conf" / "gateway.yaml", [*base, *overrides])
    spool = Spool(cfg.paths.spool)
    spool.ensure()
    audit_path = var / "log" / "audit.jsonl"
    audit = AuditLog(audit_path, stdout=False)
    router = Router(cfg, make_resolver(cfg), clock)
    sender = SmtpSender(cfg.hostname, 5, 10, 5)
    delivery = Delivery(cfg, spool, audit, router, sender, clock=clock, scanner=False)
    return Harness(cfg, clock, spool, audit, audit_path, router, sender, delivery)



@contextlib.asynccontextmanager
async def harness_maker(tmp_path: Path) -> AsyncIterator[Callable[..., Harness]]:
    """Yields ``make(*overrides, transport={...}, dns_port=...)`` -> Harness; every harness
    made is closed on exit. Test modules wrap it in a ``harness_factory`` fixture."""
    made: list[Harness] = []

    def make(*overrides: str, **kw: Any) -> Harness:
        h = build_harness(tmp_path / f"h{len(made)}", *overrides, **kw)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            await h.close()
