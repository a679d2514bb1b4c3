"""Shared test harness: free ports, real SMTP sinks on loopback, and the gateway itself, either
as a real ``phigate run`` subprocess or in-process with an injected clock."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

from tests.portal_pg import pg_dsn, pg_server  # noqa: F401  (fixtures for every test)

ROOT = Path(__file__).resolve().parent.parent
PHIGATE = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool


class SinkHandler:
    """Records messages. ``script`` maps a recipient to replies to give on successive RCPTs
    (e.g. ["451 4.3.0 try later", "250 OK"]); ``data_reply`` likewise for DATA."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.rcpt_script: dict[str, list[str]] = {}
        self.data_script: list[str] = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        with self.lock:
            script = self.rcpt_script.get(address)
            reply = script.pop(0) if script else "250 2.1.5 OK"
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.data_script:
                reply = self.data_script.pop(0)
                if not reply.startswith("2"):
                    return reply
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content, session.ssl is not None))
        return "250 2.0.0 OK: stored"

    def wait_for(self, n: int, timeout: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"sink got {len(self.messages)} message(s), expected {n}")


class _SinkController(Controller):  # type: ignore[misc]
    def __init__(self, handler: SinkHandler, port: int, tls_context: Any = None) -> None:
        self._tls = tls_context
        super().__init__(handler, hostname="127.0.0.1", port=port)

    def factory(self) -> AioSMTP:
        return AioSMTP(self.handler, tls_context=self._tls, enable_SMTPUTF8=True,
                       hostname="sink.test", data_size_limit=None)


@dataclass
class Sink:
    port: int
    handler: SinkHandler
    controller: _SinkController

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    def wait_for(self, n: int, timeout: float = 20.0) -> list[Received]:
        return self.handler.wait_for(n, timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.controller.stop()


def start_sink(port: int | None = None, tls_context: Any = None) -> Sink:
    port = port or free_port()
    handler = SinkHandler()
    ctl = _SinkController(handler, port, tls_context)
    ctl.start()
    return Sink(port, handler, ctl)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = start_sink()
    yield s
    s.stop()


@dataclass
class GatewayProc:
    """A ``phigate run`` subprocess on free loopback ports with its own var folder."""

    var: Path
    relay: int
    submission: int
    submissions: int
    overrides: list[str]
    portal: int = 0
    config: Path = ROOT / "conf" / "gateway.yaml"
    proc: subprocess.Popen[bytes] | None = None
    out: Path = field(default_factory=lambda: Path("/dev/null"))

    def args(self) -> list[str]:
        a = ["--config", str(self.config)]
        for o in self.overrides:
            a += ["--set", o]
        return a

    def start(self) -> None:
        self.out = self.var / "stdout.log"
        self.var.mkdir(parents=True, exist_ok=True)
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen([*PHIGATE, "run", *self.args()], cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_port(self.relay)
            time.sleep(0.05)
            if self.proc.poll() is not None:  # the port may belong to someone else
                raise TimeoutError
        except TimeoutError:
            raise AssertionError(self.out.read_text(errors="replace")[-3000:]) from None

    def cli(self, *argv: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        sub, rest = argv[0], list(argv[1:])
        if sub in ("queue", "user", "portal", "tls", "dkim", "limits", "keys", "audit"):
            cmd = [*PHIGATE, sub, rest[0], *self.args(), *rest[1:]]
        else:
            cmd = [*PHIGATE, sub, *self.args(), *rest]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              input=input.decode() if input else None, timeout=60)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def events(self) -> list[dict[str, Any]]:
        path = self.var / "log" / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_event(self, pred: Callable[[dict[str, Any]], bool],
                   timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events():
                if pred(ev):
                    return ev
            time.sleep(0.05)
        raise AssertionError("expected audit event not seen")


def make_gateway(var: Path, *extra: str, transport: dict[str, int] | None = None,
                 users: Path | None = None) -> GatewayProc:
    relay, sub, subs, portal = free_port(), free_port(), free_port(), free_port()
    overrides = [
        f"portal.listen=127.0.0.1:{portal}",
        f"portal.base_url=http://127.0.0.1:{portal}",
        f"paths.var={var}",
        f"listen.relay=127.0.0.1:{relay}",
        f"listen.submission=127.0.0.1:{sub}",
        f"listen.submissions=127.0.0.1:{subs}",
        "hostname=phigate.test",
        "domains=[example.org]",
        "delivery.retry.first=2s",
        "delivery.scan_interval=0.2s",
        "auth.tarpit=0.05s",
        f"auth.users_file={users or var / 'users.yaml'}",
        # Relay tests run without the PHI engine (its own tests turn it on); compiled
        # Hyperscan databases are shared between test gateways.
        "rules.enabled=false",
        # Rate limits would slow the load tests (hundreds of messages from one sender); the
        # rate-limit tests turn them on.
        "ratelimit.enabled=false",
        "metrics.listen=off",  # the metrics tests give their gateways a free port
        f"rules.cache_dir={ROOT / '.cache' / 'hyperscan'}",
    ]
    if transport:
        tm = ", ".join(f'"{d}": "127.0.0.1:{p}"' for d, p in transport.items())
        overrides.append(f"delivery.transport={{{tm}}}")
    overrides += list(extra)
    return GatewayProc(var, relay, sub, subs, overrides, portal)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    started: list[GatewayProc] = []

    def factory(*extra: str, transport: dict[str, int] | None = None, start: bool = True,
                name: str = "gw") -> GatewayProc:
        gw = make_gateway(tmp_path / name, *extra, transport=transport)
        if start:
            gw.start()
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.stop()


def message(subject: str = "hello", body: str = "synthetic test body\r\n",
            frm: str = "alice@example.org", to: str = "bob@dest.test") -> bytes:
    return (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@example.org>\r\n\r\n{body}").encode()


os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
