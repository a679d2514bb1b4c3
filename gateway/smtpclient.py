"""Outbound SMTP: one transaction to one route, with per-recipient outcomes, STARTTLS when
offered (TLS 1.2+), and idle connections kept for reuse by the next message to the same host."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

from .routing import Hop, Route
from .tlsutil import client_context


@dataclass(frozen=True)
class TlsInfo:
    version: str
    cipher: str


@dataclass(frozen=True)
class Outcome:
    recipient: str
    code: int
    reply: str
    hop: Hop | None
    tls: TlsInfo | None

    @property
    def kind(self) -> str:
        if 200 <= self.code < 300:
            return "delivered"
        if 500 <= self.code < 600:
            return "bounced"
        return "deferred"


class _TlsFailed(Exception):
    """The STARTTLS handshake failed (the connection is closed)."""


@dataclass
class _Conn:
    client: aiosmtplib.SMTP
    hop: Hop
    tls: TlsInfo | None
    last_used: float


class Transaction:
    """What to send: envelope sender, recipients, bytes, and the ESMTP needs of the body."""

    def __init__(self, mail_from: str, recipients: list[str], data: bytes,
                 smtputf8: bool, body_8bit: bool, require_tls: bool = False) -> None:
        self.mail_from = mail_from
        self.recipients = recipients
        self.data = data
        self.smtputf8 = smtputf8
        self.body_8bit = body_8bit
        self.require_tls = require_tls


async def _send_data(c: aiosmtplib.SMTP, data: bytes, wait: float) -> aiosmtplib.SMTPResponse:
    """DATA with dot-stuffing by ``bytes.replace``. aiosmtplib's ``data()`` runs two regexes
    over the body (line endings, dot-stuffing), a quarter of the gateway's time at 100 KB;
    intake already guarantees CRLF-only lines, so only stuffing is left to do."""
    if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\r\n"):
        return await c.data(data)  # not CRLF-clean (should not happen): let aiosmtplib fix it
    start = await c.execute_command(b"DATA", timeout=wait)
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    body = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    proto = c.protocol
    if proto is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    proto.write(body)
    proto.write(b".\r\n")
    # No await between the write and read_response: the reply cannot arrive unexpected.
    resp = await proto.read_response(timeout=wait)
    if resp.code != 250:
        raise aiosmtplib.SMTPDataError(resp.code, resp.message)
    return resp


class SmtpSender:
    def __init__(self, local_hostname: str, connect_timeout: float, command_timeout: float,
                 idle_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.local_hostname = local_hostname
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._tls_ctx = client_context(verify=False)

    # ------------------------------------------------------------------ connections

    async def _open(self, hop: Hop, use_tls: bool) -> _Conn:
        client = aiosmtplib.SMTP(
            hostname=hop.ip,
            port=hop.port,
            local_hostname=self.local_hostname,
            timeout=self.command_timeout,
            start_tls=False,
            use_tls=False,
        )
        await client.connect(timeout=self.connect_timeout)
        tls: TlsInfo | None = None
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()
        if use_tls and client.supports_extension("starttls"):
            try:
                await client.starttls(tls_context=self._tls_ctx, server_hostname=hop.name)
            except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
                client.close()
                raise _TlsFailed(str(type(exc).__name__)) from exc
            await client.ehlo()
            sslobj = client.get_transport_info("ssl_object")
            if isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket):
                cipher = sslobj.cipher()
                tls = TlsInfo(sslobj.version() or "", cipher[0] if cipher else "")
        return _Conn(client, hop, tls, self.clock())

    async def _connect(self, route: Route) -> _Conn:
        """A reused idle connection to any hop of the route, or a new one, trying hops in order.
        Raises the last error when no hop answers."""
        now = self.clock()
        for hop in route.hops:
            pool = self._idle.get((hop.ip, hop.port))
            while pool:
                conn = pool.pop()
                if conn.client.is_connected and now - conn.last_used < self.idle_timeout:
                    return conn
                conn.client.close()
        last: Exception = ConnectionError("no route")
        for hop in route.hops:
            try:
                return await self._open(hop, use_tls=True)
            except _TlsFailed:
                # Opportunistic TLS: a failed handshake falls back to plaintext, as
                # Postfix's "may" level does. Strict levels come with the TLS policy.
                try:
                    return await self._open(hop, use_tls=False)
                except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc2:
                    last = exc2
            except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
                last = exc
        raise last

    def _release(self, conn: _Conn) -> None:
        conn.last_used = self.clock()
        self._idle.setdefault((conn.hop.ip, conn.hop.port), []).append(conn)

    async def reap(self) -> None:
        """Close idle connections past their time."""
        now = self.clock()
        for key, pool in list(self._idle.items()):
            keep = []
            for conn in pool:
                if now - conn.last_used >= self.idle_timeout or not conn.client.is_connected:
                    await self._quit(conn)
                else:
                    keep.append(conn)
            self._idle[key] = keep

    async def _quit(self, conn: _Conn) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.client.quit(), 2.0)
        conn.client.close()

    async def close(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                await self._quit(conn)
        self._idle.clear()

    # ------------------------------------------------------------------ sending

    async def send(self, route: Route, tx: Transaction) -> list[Outcome]:
        try:
            conn = await self._connect(route)
        except Exception as exc:
            reply = f"connection failed: {type(exc).__name__}"
            code = getattr(exc, "code", 0)
            code = code if isinstance(code, int) and 400 <= code < 600 else 421
            # A 5xx greeting is still a temporary problem for the message (RFC 5321 3.8).
            code = 421 if code >= 500 else code
            return [Outcome(r, code, reply, None, None) for r in tx.recipients]
        try:
            outcomes, reusable = await self._transaction(conn, tx)
        except Exception as exc:  # connection lost or protocol error mid-transaction
            conn.client.close()
            reply = f"lost connection with {conn.hop.name}: {type(exc).__name__}"
            return [Outcome(r, 421, reply, conn.hop, conn.tls) for r in tx.recipients]
        if reusable:
            self._release(conn)
        else:
            await self._quit(conn)
        return outcomes

    async def _transaction(self, conn: _Conn, tx: Transaction) -> tuple[list[Outcome], bool]:
        c = conn.client

        def out(rcpt: str, code: int, msg: str) -> Outcome:
            return Outcome(rcpt, code, msg, conn.hop, conn.tls)

        if tx.require_tls and conn.tls is None:
            # The policy says this content may only travel encrypted: do not send it.
            return [out(r, 451, f"4.7.5 TLS required by policy; {conn.hop.name} did not "
                                "negotiate TLS 1.2+") for r in tx.recipients], True
        options: list[str] = []
        if tx.smtputf8:
            if not c.supports_extension("smtputf8"):
                return [out(r, 553, "5.6.7 destination does not support SMTPUTF8")
                        for r in tx.recipients], True
            options.append("SMTPUTF8")
        if tx.body_8bit and c.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        if c.supports_extension("size"):
            options.append(f"SIZE={len(tx.data)}")
        enc = "utf-8" if tx.smtputf8 else "ascii"
        try:
            await c.mail(tx.mail_from, options=options, encoding=enc)
        except (UnicodeEncodeError, ValueError):
            # Never sendable as it is: permanent, not a connection problem.
            return [out(r, 553, "5.6.7 sender address cannot be sent to this destination")
                    for r in tx.recipients], c.is_connected
        except aiosmtplib.SMTPSenderRefused as exc:
            with contextlib.suppress(Exception):
                await c.rset()
            return [out(r, exc.code, exc.message) for r in tx.recipients], True
        accepted: list[str] = []
        results: dict[str, Outcome] = {}
        for rcpt in tx.recipients:
            try:
                resp = await c.rcpt(rcpt, encoding=enc)
                accepted.append(rcpt)
                results[rcpt] = out(rcpt, resp.code, resp.message)
            except aiosmtplib.SMTPRecipientRefused as exc:
                results[rcpt] = out(rcpt, exc.code, exc.message)
            except (UnicodeEncodeError, ValueError):
                results[rcpt] = out(rcpt, 553, "5.1.3 recipient address cannot be sent "
                                    "to this destination")
        if not accepted:
            await c.rset()
            return [results[r] for r in tx.recipients], True
        try:
            resp = await _send_data(c, tx.data, self.command_timeout)
            for rcpt in accepted:
                results[rcpt] = out(rcpt, resp.code, resp.message)
        except aiosmtplib.SMTPDataError as exc:
            for rcpt in accepted:
                results[rcpt] = out(rcpt, exc.code, exc.message)
            with contextlib.suppress(Exception):
                await c.rset()
        return [results[r] for r in tx.recipients], c.is_connected
