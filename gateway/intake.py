"""SMTP intake: the three listeners, admission (relay, AUTH, senders), and end of DATA.

aiosmtpd runs the protocol; ``GatewaySMTP`` changes three things in it:

* DATA is read in large chunks up to the ``<CRLF>.<CRLF>`` terminator instead of line by line
  (the stock reader spends most of its time in per-line ``readuntil`` calls), and the body is
  checked as a whole: bare CR or LF (SMTP smuggling), NUL bytes, overlong lines, size;
* AUTH verifies argon2 hashes off the event loop and goes through ``AuthGuard``;
* PIPELINING is advertised (aiosmtpd reads pipelined commands correctly already).

``IntakeHandler`` holds the policy: who may relay, which senders a user may use, and the end of
DATA pipeline (parse, decide, spool with fsync, then 250).
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import inspect
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session, TLSSetupException
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from .audit import AuditLog
from .authguard import AuthGuard
from .config import Config, ConfigError
from .delivery import Handoff
from .mime import header_section_size
from .model import Envelope
from .policy import Policy
from .quarantine import notify_reviewer
from .spool import Spool, new_queue_id
from .users import User, UserDB

if TYPE_CHECKING:
    from .ratelimit import Admission, RateLimiter

READ_CHUNK_LIMIT = 1 << 20  # StreamReader buffer while in DATA (pauses the socket at 2x)


class _PendingAuth(AuthResult):
    """Marker returned by the synchronous ``_authenticate`` hook: verify asynchronously."""


@dataclass
class Listener:
    name: str  # relay | submission | submissions
    require_auth: bool
    implicit_tls: bool


class IntakeState:
    """What every handler shares; replaced as a whole on reload."""

    def __init__(self, config: Config, policy: Policy, users: UserDB,
                 limiter: RateLimiter | None = None) -> None:
        self.config = config
        self.policy = policy
        self.users = users
        self.limiter = limiter


# RFC 3463 codes for aiosmtpd's own replies, which carry none (RFC 2034 asks for them on
# every reply but the greeting and HELO/EHLO once ENHANCEDSTATUSCODES is advertised).
_ENHANCED = {
    "221": "2.0.0", "250": "2.0.0", "421": "4.7.0", "451": "4.3.0", "452": "4.3.1",
    "454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1",
    "504": "5.5.4", "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "552": "5.3.4",
    "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}
_HAS_ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_UNKNOWN_COMMAND = re.compile(r'500 Error: command ".*" not recognized')

# Per-session caps on commands that carry no mail (Postfix's junk-command limit); mail
# commands are unlimited so a connector may send thousands of messages on one session.
CALL_LIMITS = {"NOOP": 100, "VRFY": 20, "EXPN": 20, "HELP": 20, "EHLO": 20, "HELO": 20,
               "STARTTLS": 5, "AUTH": 20, "*": 10**9}


class _FastInspect:
    """Stands in for the ``inspect`` module inside aiosmtpd: its ``SMTP.__init__`` runs
    ``inspect.getmembers`` on the protocol and the handler for every connection (about a tenth
    of the gateway's time at 5 KB) only to find ``auth_*`` methods. The names are cached per
    class; the members returned are the same."""

    _names: dict[type, list[str]] = {}

    @classmethod
    def getmembers(cls, obj: object) -> list[tuple[str, Any]]:
        names = cls._names.get(type(obj))
        if names is None:
            names = cls._names[type(obj)] = [n for n in dir(obj) if n.startswith("auth_")]
        return [(n, getattr(obj, n)) for n in names]

    signature = staticmethod(inspect.signature)


setattr(aiosmtpd.smtp, "inspect", _FastInspect)  # noqa: B010 - aiosmtpd has no stubs for it

# <local@domain> with nothing that needs RFC 5322 parsing; anything else takes aiosmtpd's path.
_SIMPLE_ADDR = re.compile(r"<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>(.*)", re.S)


def with_enhanced_code(status: str) -> str:
    if _UNKNOWN_COMMAND.fullmatch(status):
        return "500 5.5.2 Error: command not recognized"  # never echo the client's bytes
    code = status[:3]
    enh = _ENHANCED.get(code)
    if enh is None or len(status) < 4 or status[3] != " " or _HAS_ENHANCED.match(status):
        return status
    return f"{code} {enh} {status[4:]}"


class GatewaySMTP(SMTP):
    def __init__(self, handler: IntakeHandler, **kw: Any) -> None:
        self._bdat = bytearray()
        self._bdat_error: str | None = None
        self._greeting_or_hello = False
        super().__init__(handler, **kw)
        self.gw = handler

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's parser builds a Protocol class and runs the e-mail header parser on every
        # MAIL and RCPT; plain addresses (nearly all) are taken here.
        m = _SIMPLE_ADDR.match(arg.lstrip())
        if m is not None and ".." not in m.group(1) and not m.group(1).startswith("."):
            return m.group(1), m.group(2).strip()
        addr, rest = super()._getaddr(arg)
        return addr, rest

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._greeting_or_hello:
            status = with_enhanced_code(status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._greeting_or_hello = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._greeting_or_hello = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._greeting_or_hello = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._greeting_or_hello = False

    def _set_post_data_state(self) -> None:
        super()._set_post_data_state()  # type: ignore[no-untyped-call]
        self._bdat = bytearray()
        self._bdat_error = None

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first and self.session is not None:
            self.gw.on_connect(self.session)

    # ------------------------------------------------------------------ AUTH

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return _PendingAuth(success=False, handled=False, auth_data=(mechanism, auth_data))

    async def _finish_auth(self, result: AuthResult) -> AuthResult:
        if not isinstance(result, _PendingAuth):
            return result
        data: Any = result.auth_data
        mechanism, lp = data
        assert isinstance(lp, LoginPassword) and self.session is not None
        return await self.gw.authenticate(self.session, mechanism, lp)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._finish_auth(await super().auth_LOGIN(_, args))

    # ------------------------------------------------------------------ DATA

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self._bdat or self._bdat_error:
            await self.push("503 5.5.1 Error: DATA after BDAT in one transaction")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.gw.in_data += 1
        try:
            reply = await self._read_data()
            if reply is None:
                reply = await self.gw.end_of_data(self.session, self.envelope)
        finally:
            self.gw.in_data -= 1
        self._set_post_data_state()
        await self.push(reply)

    async def _read_data(self) -> str | None:
        """Read up to the terminator. On success sets ``envelope.content``; otherwise returns
        the error reply (after the whole DATA has been read, RFC 5321 4.2.5)."""
        assert self.envelope is not None
        reader = self._reader
        limit = self.data_size_limit or 0
        old_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = READ_CHUNK_LIMIT  # type: ignore[attr-defined]
        buf = bytearray()
        total = 0
        too_big = False
        self._reset_timeout(self.gw.state.config.smtp.data_timeout)
        try:
            while True:
                try:
                    piece = await reader.readuntil(b".\r\n")
                except asyncio.LimitOverrunError as e:
                    piece = await reader.read(e.consumed)
                    found = False
                else:
                    found = True
                total += len(piece)
                buf += piece
                self._reset_timeout(self.gw.state.config.smtp.data_timeout)
                if found and (total == 3 or buf[-5:-3] == b"\r\n"):
                    # the terminator itself (".\r\n") is not message data
                    too_big = too_big or bool(limit and total - 3 > limit)
                    break
                if limit and total > limit:
                    too_big = True
                    del buf[:-4]  # keep just enough to recognise the terminator
        finally:
            reader._limit = old_limit  # type: ignore[attr-defined]
            self._reset_timeout()
        if too_big:
            return "552 5.3.4 Message size exceeds fixed maximum message size"
        del buf[-3:]  # the ".\r\n" of the terminator
        data = bytes(buf)
        del buf
        return self.gw.check_body(self.envelope, data, dot_stuffed=True)

    # ------------------------------------------------------------------ BDAT (RFC 3030)

    async def smtp_BDAT(self, arg: str | None) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        assert self.envelope is not None and self.session is not None
        words = (arg or "").split()
        if (not words or not words[0].isdigit() or len(words) > 2
                or (len(words) == 2 and words[1].upper() != "LAST")):
            # Without a valid size we cannot tell where the chunk ends: end the session.
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]; closing connection")
            assert self.transport is not None
            self.transport.close()
            return
        size, last = int(words[0]), len(words) == 2
        limit = self.data_size_limit or 0
        remaining = size
        self._reset_timeout(self.gw.state.config.smtp.data_timeout)
        while remaining:
            piece = await self._reader.read(min(remaining, READ_CHUNK_LIMIT))
            if not piece:
                raise ConnectionResetError("client closed during BDAT")
            remaining -= len(piece)
            if self._bdat_error is None:
                self._bdat += piece
        self._reset_timeout()
        if self._bdat_error is None:
            if not self.session.authenticated and self.gw.listener.require_auth:
                self._bdat_error = "530 5.7.0 Authentication required"
            elif not self.envelope.rcpt_tos:
                self._bdat_error = "503 5.5.1 Error: need RCPT command"
            elif limit and len(self._bdat) > limit:
                self._bdat_error = "552 5.3.4 Message size exceeds fixed maximum message size"
        if self._bdat_error is not None:
            self._bdat = bytearray()
        if not last:
            await self.push(self._bdat_error or f"250 2.0.0 {size} octets received")
            return
        reply = self._bdat_error
        if reply is None:
            data = bytes(self._bdat)
            self._bdat = bytearray()
            reply = self.gw.check_body(self.envelope, data, dot_stuffed=False)
        if reply is None:
            self.gw.in_data += 1
            try:
                reply = await self.gw.end_of_data(self.session, self.envelope)
            finally:
                self.gw.in_data -= 1
        self._set_post_data_state()
        await self.push(reply)


def _address_problem(address: str, smtputf8: bool) -> str | None:
    """Refuse, at once, addresses that could never be delivered: bytes that are not UTF-8
    (aiosmtpd hands them over as surrogates) or non-ASCII without SMTPUTF8 (RFC 6531)."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return "501 X.X.X Address is not valid UTF-8"
    if not smtputf8 and not address.isascii():
        return "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    return None


class IntakeHandler:
    """aiosmtpd handler for one listener."""

    def __init__(
        self,
        listener: Listener,
        state: IntakeState,
        spool: Spool,
        audit: AuditLog,
        guard: AuthGuard,
        on_queued: Callable[[str, str, Handoff | None], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.listener = listener
        self.state = state
        self.spool = spool
        self.audit = audit
        self.guard = guard
        self.on_queued = on_queued
        self.clock = clock
        self.in_data = 0
        # the rate limiter's decision for each open transaction (dropped with the envelope)
        self.admissions: weakref.WeakKeyDictionary[SmtpEnvelope, Admission] = (
            weakref.WeakKeyDictionary())

    # ------------------------------------------------------------------ helpers

    def _peer(self, session: Session) -> tuple[str, int]:
        peer = session.peer
        if isinstance(peer, tuple) and len(peer) >= 2:
            return str(peer[0]), int(peer[1])
        return "", 0

    def _base(self, session: Session) -> dict[str, Any]:
        ip, port = self._peer(session)
        return {"source.ip": ip, "source.port": port, "listener": self.listener.name}

    def on_connect(self, session: Session) -> None:
        self.audit.emit("smtp.connect", self._base(session))

    # ------------------------------------------------------------------ hooks

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        responses.insert(-1, "250-PIPELINING")
        responses.insert(-1, "250-ENHANCEDSTATUSCODES")
        responses.insert(-1, "250-CHUNKING")
        if self.listener.name == "relay":
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return responses

    async def authenticate(self, session: Session, mechanism: str,
                           lp: LoginPassword) -> AuthResult:
        ip, _ = self._peer(session)
        login = lp.login.decode("utf-8", "replace") if lp.login else ""
        password = lp.password.decode("utf-8", "replace") if lp.password else ""
        base = {**self._base(session), "auth.mechanism": mechanism, "user.name": login[:64]}
        if self.guard.locked(ip, login):
            self.audit.emit("auth.refused", {**base, "event.outcome": "failure",
                                             "event.reason": "locked_out"})
            return AuthResult(success=False, handled=False,
                              message="454 4.7.0 Too many failed logins; try again later")
        try:
            self.state.users = self.state.users.fresh()
        except ConfigError as err:
            self.audit.emit("config.reload_failed", {"config.file": str(self.state.users.path),
                                                     "config.problems": err.problems})
            self.state.users.mtime = UserDB.mtime_of(self.state.users.path)  # log once
        loop = asyncio.get_running_loop()
        user: User | None = await loop.run_in_executor(
            None, self.state.users.verify, login, password
        )
        if user is None:
            failures, delay, started = self.guard.failure(ip, login)
            self.audit.emit("auth.failure", {**base, "event.outcome": "failure",
                                             "auth.failures": failures})
            if started:
                self.audit.emit("auth.lockout", {**base, "auth.failures": failures})
            if delay:
                await asyncio.sleep(delay)
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 Authentication credentials invalid")
        self.guard.success(ip, login)
        if user.locked:  # by anomaly detection: only `phigate user unlock` lifts it
            self.audit.emit("auth.refused", {**base, "event.outcome": "failure",
                                             "event.reason": "account_locked"})
            return AuthResult(success=False, handled=False, message=(
                "535 5.7.8 Account locked after unusual sending; ask an administrator"))
        self.audit.emit("auth.success", {**base, "event.outcome": "success"})
        return AuthResult(success=True, handled=False, auth_data=user)

    def _user(self, session: Session) -> User | None:
        data = session.auth_data
        return data if isinstance(data, User) else None

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, mail_options: list[str]) -> str:
        cfg = self.state.config
        sender = "" if address == "<>" else address
        smtputf8 = any(o.upper() == "SMTPUTF8" for o in mail_options)
        bad = _address_problem(sender, smtputf8)
        if bad is not None:
            return bad.replace("X.X.X", "5.1.7") + " (sender)"
        user = self._user(session)
        ip, _ = self._peer(session)
        if self.listener.require_auth and user is None:
            return "530 5.7.0 Authentication required"
        if user is not None:
            # The null sender (bounces, receipts) claims no identity, so it is allowed.
            if sender and not user.may_send_as(sender):
                self.audit.emit("smtp.mail_refused", {
                    **self._base(session), "user.name": user.name,
                    "email.from.address": sender, "event.reason": "sender_not_owned"})
                return f"553 5.7.1 Sender address <{sender}> not allowed for user {user.name}"
        elif (cfg.domains and sender and cfg.is_trusted(ip)
              and not cfg.is_own_domain(sender.rpartition("@")[2])):
            self.audit.emit("smtp.mail_refused", {
                **self._base(session), "email.from.address": sender,
                "event.reason": "foreign_sender_domain"})
            return "553 5.7.1 Sender domain is not one of this organisation's domains"
        if self.state.limiter is not None:
            adm, reply = await self.state.limiter.on_mail(
                user.name if user else None, sender, ip, self._base(session))
            if adm is not None:
                self.admissions[envelope] = adm
            if reply is not None:
                return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        cfg = self.state.config
        ip, _ = self._peer(session)
        if self._user(session) is None and not cfg.is_trusted(ip):
            self.audit.emit("smtp.relay_denied", {**self._base(session),
                                                  "event.outcome": "failure",
                                                  "email.to.address": address})
            return "554 5.7.1 Relay access denied"
        if "@" not in address:
            return "501 5.1.3 Bad recipient address syntax"
        bad = _address_problem(address, bool(envelope.smtp_utf8))
        if bad is not None:
            return bad.replace("X.X.X", "5.1.3") + " (recipient)"
        if len(envelope.rcpt_tos) >= cfg.smtp.max_recipients:
            return "452 4.5.3 Too many recipients"
        if self.state.limiter is not None:
            reply = await self.state.limiter.on_rcpt(self.admissions.get(envelope), address)
            if reply is not None:
                return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            cause = error.__cause__
            self.audit.emit("smtp.tls_failed", {
                "listener": self.listener.name, "event.outcome": "failure",
                "error.type": type(cause).__name__ if cause else "TLSSetupException"})
            return "454 4.7.0 TLS negotiation failed"
        self.audit.emit("smtp.internal_error", {"error.type": type(error).__name__,
                                                "listener": self.listener.name})
        return "451 4.3.0 Internal error, please try again later"

    # ------------------------------------------------------------------ end of DATA

    def check_body(self, envelope: SmtpEnvelope, data: bytes, dot_stuffed: bool) -> str | None:
        """Validate the raw body (dot-stuffed when it came by DATA) and store the unstuffed
        bytes on the envelope. Returns an error reply or None."""
        limits = self.state.config.smtp
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            return "550 5.5.2 Message contains bare <CR> or <LF>; lines must end with <CR><LF>"
        if b"\x00" in data:
            return "550 5.6.0 Message contains NUL characters"
        if dot_stuffed:
            if data.startswith(b"."):
                data = data[1:]
            data = data.replace(b"\r\n.", b"\r\n")
        if crlf and max(map(len, data.split(b"\r\n"))) > limits.max_line_length:
            return (f"500 5.5.2 Line too long (the limit is {limits.max_line_length} bytes; "
                    "encode long lines with quoted-printable or base64)")
        if header_section_size(data, limits.max_header_size) > limits.max_header_size:
            return "552 5.3.4 Message header section too large"
        envelope.original_content = data
        envelope.content = data
        return None

    def _received(self, session: Session, envelope: SmtpEnvelope, qid: str) -> bytes:
        ip, _ = self._peer(session)
        proto = "UTF8SMTP" if envelope.smtp_utf8 else "ESMTP"
        if session.ssl is not None or self.listener.implicit_tls:
            proto += "S"
        if self._user(session) is not None:
            proto += "A"
        helo = "".join(c for c in (session.host_name or "unknown") if c.isprintable())[:100]
        host = self.state.config.hostname
        rcpt = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        date = email.utils.formatdate(self.clock(), localtime=True)
        return (f"Received: from {helo} ([{ip}])\r\n\tby {host} (phigate) with {proto} "
                f"id {qid}{rcpt};\r\n\t{date}\r\n").encode("utf-8", "replace")

    async def end_of_data(self, session: Session, smtp_env: SmtpEnvelope) -> str:
        content: bytes = smtp_env.original_content or b""
        ip, _ = self._peer(session)
        user = self._user(session)
        mail_from = smtp_env.mail_from or ""
        mail_from = "" if mail_from == "<>" else mail_from
        declared_8bit = smtp_env.smtp_utf8 or any(
            o.upper() == "BODY=8BITMIME" for o in smtp_env.mail_options)
        undeclared_8bit = not content.isascii() and not declared_8bit
        env = Envelope(
            mail_from=mail_from,
            rcpt_tos=tuple(smtp_env.rcpt_tos),
            client_ip=ip,
            client_helo=(session.host_name or "")[:255],
            auth_user=user.name if user else None,
            listener=self.listener.name,
            smtputf8=bool(smtp_env.smtp_utf8),
            body_8bit=not content.isascii(),
            received_at=self.clock(),
        )
        qid = new_queue_id()
        base = {**self._base(session), "email.local_id": qid,
                "email.from.address": env.mail_from, "email.to.address": list(env.rcpt_tos),
                "email.size": len(content), "user.name": env.auth_user}
        try:
            verdict = await asyncio.wait_for(self.state.policy.decide(env, content),
                                             self.state.config.rules.scan_timeout)
        except Exception as exc:
            self.audit.emit("message.deferred", {**base, "event.outcome": "failure",
                                                 "event.reason": "policy_error",
                                                 "error.type": type(exc).__name__})
            return "451 4.3.0 Message could not be checked; please try again later"
        self.audit.emit("message.verdict", {
            "email.local_id": qid, "phi.detected": verdict.phi,
            "phi.findings": [f.to_json() for f in verdict.findings],
            "verdict.recipients": [rv.to_json() for rv in verdict.recipients],
            "verdict.monitor": [m.to_json() for m in verdict.monitor] or None})
        if verdict.reject_reason is not None:
            self.audit.emit("message.rejected", {**base, "event.outcome": "failure",
                                                 "event.reason": "policy_reject"})
            return f"550 5.7.1 {verdict.reject_reason}"
        limited = False
        if self.state.limiter is not None:
            reply, limited = await self.state.limiter.on_message(
                self.admissions.get(smtp_env), env.rcpt_tos, verdict, {"email.local_id": qid})
            if reply is not None:
                self.audit.emit("message.deferred", {**base, "event.outcome": "failure",
                                                     "event.reason": "rate_limited"})
                return reply
        raw = self._received(session, smtp_env, qid) + content
        state = "hold" if verdict.held or limited else "incoming"
        loop = asyncio.get_running_loop()
        try:
            # In a thread: fsync of file and folder releases the GIL, so other sessions go on.
            await loop.run_in_executor(None, lambda: self.spool.store(
                env, verdict, raw, state=state, queue_id=qid))
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self.audit.emit("message.deferred", {
                **base, "event.outcome": "failure",
                "event.reason": "spool_full" if full else "spool_error",
                "error.type": type(exc).__name__})
            if full:
                return "452 4.3.1 Insufficient system storage, please try again later"
            return "451 4.3.0 Could not queue the message, please try again later"
        self.audit.emit("message.accepted", {**base, "event.outcome": "success",
                                             "queue.state": state,
                                             "body.8bit": undeclared_8bit or None})
        if state == "hold" and self.state.config.quarantine.notify:
            await notify_reviewer(self.state.config, self.spool, self.audit, self.on_queued,
                                  qid, env, verdict, self.state.policy, self.clock())
        if state == "incoming":
            self.on_queued(qid, state, Handoff(env, verdict, raw))
        return f"250 2.0.0 Ok: queued as {qid}"
