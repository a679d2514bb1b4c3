"""Outbound SMTP: one transaction to one route, with per-recipient outcomes, STARTTLS at the
level the TLS policy requires (TLS 1.2+), and idle connections kept for reuse by the next
message to the same host when they meet its requirement.

Levels (``tlspolicy.Requirement``): ``may`` uses STARTTLS when offered and falls back to
plaintext if the handshake fails, as Postfix does; ``encrypt`` needs TLS 1.2+ with any
certificate; ``verify`` a certificate valid for the MX name (or the policy's names) from the
system CAs or ``tls.ca_file``; ``dane`` a certificate matching the host's TLSA records (a host
of the domain without TLSA records still needs ``encrypt``). A strict level that cannot be met
gives a 4.7.5 outcome with ``tls_failure`` set: the message is not sent."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

from .routing import Hop, Route
from .tlspolicy import RANK, Capabilities, Requirement, mx_matches, tlsa_matches
from .tlsutil import client_context

OPPORTUNISTIC = Requirement("may")


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
    tls_failure: str = ""  # why a strict TLS requirement was not met (nothing was sent)

    @property
    def kind(self) -> str:
        if 200 <= self.code < 300:
            return "delivered"
        if 500 <= self.code < 600:
            return "bounced"
        return "deferred"


class _TlsFailed(Exception):
    """TLS was not established as required (the connection is closed). ``retry_plain``: the
    level allows plaintext instead."""

    def __init__(self, reason: str, retry_plain: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_plain = retry_plain


class _TlsNotMet(Exception):
    def __init__(self, reason: str, hop: Hop | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hop = hop


@dataclass
class _Conn:
    client: aiosmtplib.SMTP
    hop: Hop
    tls: TlsInfo | None
    last_used: float
    achieved: str = "none"  # none | encrypt | verify | dane


def _host_level(req: Requirement, hop: Hop) -> str:
    if req.level == "dane":
        return "dane" if hop.name.lower().rstrip(".") in req.tlsa else "encrypt"
    return req.level


def _cert_has_name(der: bytes, names: tuple[str, ...]) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    dns_names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return any(mx_matches(name, tuple(dns_names)) or name in ips for name in names)


class Transaction:
    """What to send: envelope sender, recipients, bytes, and the ESMTP needs of the body."""

    def __init__(self, mail_from: str, recipients: list[str], data: bytes,
                 smtputf8: bool, body_8bit: bool, tls: Requirement = OPPORTUNISTIC) -> None:
        self.mail_from = mail_from
        self.recipients = recipients
        self.data = data
        self.smtputf8 = smtputf8
        self.body_8bit = body_8bit
        self.tls = tls


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
                 idle_timeout: float, clock: Callable[[], float] = time.monotonic,
                 capabilities: Capabilities | None = None) -> None:
        self.local_hostname = local_hostname
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.capabilities = capabilities
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._tls_ctx = client_context(verify=False)
        self._verify_ctx: dict[str, ssl.SSLContext] = {}

    # ------------------------------------------------------------------ connections

    def _context(self, level: str, req: Requirement) -> ssl.SSLContext:
        if level != "verify":
            return self._tls_ctx
        key = str(req.ca_file or "")
        ctx = self._verify_ctx.get(key)
        if ctx is None:
            ctx = client_context(verify=True, cafile=req.ca_file)
            if req.ca_file is not None:
                ctx.load_default_certs()  # the system store as well
            self._verify_ctx[key] = ctx
        if req.names:  # names are checked after the handshake, against the policy's list
            alt = self._verify_ctx.get(key + "#names")
            if alt is None:
                alt = client_context(verify=True, cafile=req.ca_file)
                if req.ca_file is not None:
                    alt.load_default_certs()
                alt.check_hostname = False
                self._verify_ctx[key + "#names"] = alt
            return alt
        return ctx

    async def _open(self, hop: Hop, req: Requirement, use_tls: bool = True) -> _Conn:
        level = _host_level(req, hop)
        strict = RANK[level] >= RANK["encrypt"]
        if req.mx_patterns and not mx_matches(hop.name, req.mx_patterns):
            raise _TlsFailed(f"{hop.name} is not an MX host of the MTA-STS policy")
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
        offered = client.supports_extension("starttls")
        if self.capabilities is not None:
            self.capabilities.record(hop.name, offered)
        if level == "none" or not use_tls:
            return _Conn(client, hop, None, self.clock())
        if not offered:
            if strict:
                client.close()
                raise _TlsFailed(f"{hop.name} does not offer STARTTLS")
            return _Conn(client, hop, None, self.clock())
        try:
            await client.starttls(tls_context=self._context(level, req),
                                  server_hostname=hop.name)
        except ssl.SSLCertVerificationError as exc:
            client.close()
            raise _TlsFailed(f"certificate of {hop.name} not valid: "
                             f"{exc.verify_message or 'verification failed'}") from exc
        except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
            client.close()
            raise _TlsFailed(f"TLS handshake with {hop.name} failed ({type(exc).__name__})",
                             retry_plain=not strict) from exc
        sslobj = client.get_transport_info("ssl_object")
        if not isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket):
            client.close()
            raise _TlsFailed(f"no TLS session with {hop.name}", retry_plain=not strict)
        achieved = "encrypt"
        der = sslobj.getpeercert(binary_form=True) or b""
        if level == "verify":
            if req.names and not _cert_has_name(der, req.names):
                client.close()
                raise _TlsFailed(f"certificate of {hop.name} carries none of the policy's "
                                 "names")
            achieved = "verify"
        elif level == "dane":
            if not tlsa_matches(req.tlsa.get(hop.name.lower().rstrip("."), ()), der):
                client.close()
                raise _TlsFailed(f"certificate of {hop.name} does not match its TLSA records")
            achieved = "dane"
        cipher = sslobj.cipher()
        tls = TlsInfo(sslobj.version() or "", cipher[0] if cipher else "")
        if self.capabilities is not None:
            self.capabilities.record(hop.name, True, tls.version)
        await client.ehlo()
        return _Conn(client, hop, tls, self.clock(), achieved)

    async def _known_plaintext(self, route: Route, req: Requirement) -> bool:
        """Every hop is known (recently, here or by another node) to offer no STARTTLS."""
        if self.capabilities is None or not route.hops:
            return False
        await self.capabilities.fetch(h.name for h in route.hops)
        caps = [self.capabilities.get(h.name) for h in route.hops]
        return all(c is not None and not c.starttls for c in caps)

    async def _connect(self, route: Route, req: Requirement = OPPORTUNISTIC) -> _Conn:
        """A reused idle connection to any hop of the route that meets the requirement, or a
        new one, trying hops in order. Raises _TlsNotMet when hops answered but none could
        meet a strict TLS requirement, else the last error when no hop answers."""
        now = self.clock()
        for hop in route.hops:
            pool = self._idle.get((hop.ip, hop.port))
            need = _host_level(req, hop)
            keep: list[_Conn] = []
            found = None
            while pool:
                conn = pool.pop()
                if not conn.client.is_connected or now - conn.last_used >= self.idle_timeout:
                    conn.client.close()
                elif RANK[need] >= RANK["encrypt"] and RANK[conn.achieved] < RANK[need]:
                    keep.append(conn)  # fine for other mail, not this one
                else:
                    found = conn
                    break
            if pool is not None:
                pool.extend(keep)
            if found is not None:
                return found
        if req.strict and await self._known_plaintext(route, req):
            raise _TlsNotMet("destination offers no STARTTLS (known from an earlier "
                             "connection)", route.hops[0])
        last: Exception = ConnectionError("no route")
        tls_failure: _TlsNotMet | None = None
        for hop in route.hops:
            try:
                return await self._open(hop, req)
            except _TlsFailed as exc:
                if not exc.retry_plain:
                    tls_failure = _TlsNotMet(exc.reason, hop)
                    continue
                # Opportunistic TLS: a failed handshake falls back to plaintext, as
                # Postfix's "may" level does.
                try:
                    return await self._open(hop, req, use_tls=False)
                except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc2:
                    last = exc2
            except (TimeoutError, OSError, aiosmtplib.SMTPException) as exc:
                last = exc
        if tls_failure is not None:
            raise tls_failure
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
            conn = await self._connect(route, tx.tls)
        except _TlsNotMet as exc:
            reply = (f"4.7.5 TLS required ({tx.tls.level}, policy: {tx.tls.source}) "
                     f"not met: {exc.reason}")
            return [Outcome(r, 451, reply, exc.hop, None, exc.reason) for r in tx.recipients]
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

        if tx.tls.strict and conn.tls is None:  # defensive: _connect never gives one
            return [Outcome(r, 451, "4.7.5 TLS required by policy; not negotiated", conn.hop,
                            None, "no TLS") for r in tx.recipients], True
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
