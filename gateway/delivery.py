"""Delivery workers: claim spooled messages, route and send them, retry, bounce, expire.

A message is claimed by renaming it into ``active/``; each recipient ends ``delivered``,
``bounced`` (5xx, a permanent routing error, or expiry: an RFC 3464 bounce with headers only
goes to the sender, never to the null sender) or stays ``pending`` for the next attempt, with
Postfix-like exponential back-off. Time comes from the injected clock, so tests drive retries
and expiry without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from . import passphrase as sender_passphrase
from .audit import AuditLog
from .config import Config
from .dkim import Signer
from .dsn import FailedRecipient, build_bounce, status_for
from .encrypt import Encrypted, Encryptor, audit_fields, key_problem_notice
from .encrypt.keystore import Found
from .model import DeliveryStatus, Envelope, RecipientStatus, RecipientVerdict, Verdict
from .routing import Route, RouteError, Router
from .smtpclient import Outcome, SmtpSender, Transaction
from .spool import Header, Spool, SpoolError
from .tlspolicy import Published, Requirement, TlsPolicy, needed

if TYPE_CHECKING:
    from portal.rewrite import Rewritten

FLUSH_TRIGGER = "flush"
# Verdict actions served by the pickup portal. ``encrypt`` falls back to the portal when no
# key is known for the recipient, and no key store exists yet. Without a portal (disabled)
# such recipients stay queued rather than receive the message unprotected.
PORTAL_ACTIONS = ("portal", "encrypt")


class Rewriter(Protocol):
    """The portal transform (``portal.rewrite.PortalRewriter``)."""

    def rewrite(self, queue_id: str, mail_from: str, raw: bytes, recipient: str,
                passphrase: str | None = None) -> Rewritten: ...
# A message claimed this long ago belongs to a worker process that died; deliver it again
# (at least once). Longer than any attempt can take with the default timeouts.
STALE_ACTIVE = 3600.0


@dataclass(frozen=True)
class Handoff:
    """A message intake has just spooled, passed on in memory."""

    envelope: Envelope
    verdict: Verdict
    raw: bytes


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} seconds"


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Delivery:
    def __init__(
        self,
        config: Config,
        spool: Spool,
        audit: AuditLog,
        router: Router,
        sender: SmtpSender,
        clock: Callable[[], float] = time.time,
        scanner: bool = True,
        portal: Rewriter | None = None,
        signer: Signer | None = None,
        tls_policy: TlsPolicy | None = None,
        encryptor: Encryptor | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.audit = audit
        self.router = router
        self.sender = sender
        self.clock = clock
        self.scanner = scanner
        self.portal = portal
        self.signer = signer
        self.tls_policy = tls_policy
        self.encryptor = encryptor
        self._queue: asyncio.Queue[tuple[str, str, Handoff | None]] = asyncio.Queue()
        self._deferred: list[tuple[float, str]] = []
        self._dest_sems: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(self.config.delivery.per_destination)
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[str] = set()
        self._stopping = False
        self._wake = asyncio.Event()
        self._flush_mtime = self._trigger_mtime()

    # ------------------------------------------------------------------ lifecycle

    def notify(self, queue_id: str, state: str = "incoming",
               handoff: Handoff | None = None) -> None:
        """Queue a message for an attempt. Intake hands over what it just wrote, so the first
        attempt need not read it back, unless a backlog builds up (memory stays bounded)."""
        if state in ("incoming", "deferred") and not self._stopping:
            if handoff is not None and self._queue.qsize() > 2 * self.config.delivery.concurrency:
                handoff = None
            self._queue.put_nowait((queue_id, state, handoff))

    def start(self) -> None:
        for _ in range(self.config.delivery.concurrency):
            self._tasks.append(asyncio.create_task(self._worker()))
        self._tasks.append(asyncio.create_task(self._scheduler()))
        if self.scanner:
            self.scan_disk()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking work; let attempts in flight finish (bounded), then close connections.
        Anything unfinished stays in ``active/`` and is recovered at the next start."""
        self._stopping = True
        deadline = time.monotonic() + grace  # real time, whatever clock drives retries
        while self._inflight and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.sender.close()

    def scan_disk(self) -> None:
        """Queue what is on disk: incoming now, deferred by its next attempt time."""
        for qid in self.spool.ids("incoming"):
            self.notify(qid, "incoming")
        for qid in self.spool.ids("deferred"):
            try:
                header = self.spool.read_header("deferred", qid)
            except (FileNotFoundError, SpoolError):
                continue
            status = self.spool.status(qid, header.envelope.rcpt_tos)
            heapq.heappush(self._deferred, (status.next_attempt, qid))

    def _trigger_mtime(self) -> float:
        try:
            return os.stat(self.spool.root / FLUSH_TRIGGER).st_mtime
        except FileNotFoundError:
            return 0.0

    async def _scheduler(self) -> None:
        interval = self.config.delivery.scan_interval
        last_reap = self.clock()
        last_scan = self.clock()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if self.scanner:
                mtime = self._trigger_mtime()
                if mtime != self._flush_mtime or self.clock() - last_scan > 60:
                    self._flush_mtime = mtime
                    last_scan = self.clock()
                    stale = self.spool.requeue_stale(STALE_ACTIVE)
                    if stale:
                        self.audit.emit("queue.requeued_stale", {"count": stale})
                    self._deferred.clear()
                    self.scan_disk()
            self.run_due_nowait()
            if self.clock() - last_reap >= 1.0:
                last_reap = self.clock()
                await self.sender.reap()

    def run_due_nowait(self) -> list[str]:
        now = self.clock()
        due: list[str] = []
        while self._deferred and self._deferred[0][0] <= now:
            _, qid = heapq.heappop(self._deferred)
            due.append(qid)
            self.notify(qid, "deferred")
        return due

    async def run_due(self) -> list[str]:
        """Attempt every deferred message whose time has come (by the injected clock), now,
        in this task. Used by tests and by ``queue flush`` without a running gateway."""
        now = self.clock()
        due: list[str] = []
        while self._deferred and self._deferred[0][0] <= now:
            due.append(heapq.heappop(self._deferred)[1])
        for qid in due:
            await self.process(qid, "deferred")
        return due

    async def drain(self) -> None:
        """Process everything queued so far in this task (tests, one-shot flush)."""
        while not self._queue.empty():
            qid, state, handoff = self._queue.get_nowait()
            await self.process(qid, state, handoff)

    async def _worker(self) -> None:
        while True:
            qid, state, handoff = await self._queue.get()
            if self._stopping:
                continue
            try:
                await self.process(qid, state, handoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.audit.emit("delivery.internal_error", {"email.local_id": qid,
                                                            "error.type": type(exc).__name__})

    # ------------------------------------------------------------------ one attempt

    async def process(self, queue_id: str, state: str, handoff: Handoff | None = None) -> bool:
        """Claim and attempt one message. False if another worker had it."""
        if not self.spool.claim(queue_id, state):
            return False
        self._inflight.add(queue_id)
        try:
            await self._attempt(queue_id, handoff)
        except SpoolError:
            self.spool.quarantine_corrupt("active", queue_id)
            self.audit.emit("queue.corrupt", {"email.local_id": queue_id})
        except asyncio.CancelledError:
            raise  # left in active/: recovered to incoming at the next start
        except Exception as exc:
            # Never lose the message: put it back for a later attempt.
            self.audit.emit("delivery.internal_error", {"email.local_id": queue_id,
                                                        "error.type": type(exc).__name__})
            self._defer_file(queue_id, self.clock() + self.config.delivery.retry.first)
        finally:
            self._inflight.discard(queue_id)
        return True

    def _defer_file(self, queue_id: str, when: float) -> None:
        if self.spool.move(queue_id, "active", "deferred"):
            heapq.heappush(self._deferred, (when, queue_id))

    async def _attempt(self, qid: str, handoff: Handoff | None = None) -> None:
        if handoff is not None:  # first attempt, straight from intake: nothing to read back
            header = Header(qid, handoff.envelope, handoff.verdict, "message",
                            handoff.envelope.received_at)
            status = DeliveryStatus.fresh(handoff.envelope.rcpt_tos)
            data = handoff.raw
        else:
            header = self.spool.read_header("active", qid)
            status = self.spool.status(qid, header.envelope.rcpt_tos)
            data = self.spool.read_message("active", qid)
        env = header.envelope
        # "[secure: phrase]": the phrase protects portal pickups and goes nowhere else
        data, phrase = sender_passphrase.take(data)
        pending = list(status.pending)
        attempt_no = status.attempts + 1
        started = self.clock()

        # Group recipients by route and TLS requirement; routing errors and actions that
        # cannot be carried out decide those recipients at once.
        groups: list[tuple[Route, Requirement, list[str]]] = []
        to_portal: list[tuple[Route, str]] = []
        to_encrypt: list[tuple[Route, str]] = []
        outcomes: list[Outcome] = []
        required: dict[str, Requirement] = {}
        published: dict[str, Published] = {}
        verdict = header.verdict
        for rcpt in pending:
            action = verdict.action_for(rcpt).action
            if action in PORTAL_ACTIONS and self.portal is None:
                # Fail closed: never send in clear what the policy wants protected.
                outcomes.append(Outcome(rcpt, 451, f"4.7.0 {action} delivery needs the portal, "
                                        "which is disabled on this gateway; held for retry",
                                        None, None))
                continue
            try:
                route = await self.router.route(_domain(rcpt))
            except RouteError as err:
                code = 550 if err.permanent else 451
                outcomes.append(Outcome(rcpt, code, f"{err.status} {err.text}", None, None))
                continue
            if self.encryptor is not None and (action == "encrypt" or (
                    action == "require_tls" and await self._key_known(rcpt))):
                # a recipient whose key is known gets PHI encrypted end to end rather than
                # depend on the transport (the default rules' "encrypt when a key is known")
                to_encrypt.append((route, rcpt))
                continue
            if action in PORTAL_ACTIONS:
                to_portal.append((route, rcpt))
                continue
            pub = await self._published(published, _domain(rcpt), route)
            if action == "require_tls" and pub.portal:
                # the admin's `portal` level: PHI for this domain never goes directly
                self._fallback(qid, rcpt, "tls policy: portal for this domain")
                to_portal.append((route, rcpt))
                continue
            req = required[rcpt] = needed(pub, action)
            for g_route, g_req, g_rcpts in groups:
                if g_route.key == route.key and g_req == req:
                    g_rcpts.append(rcpt)
                    break
            else:
                groups.append((route, req, [rcpt]))

        async def send_group(route: Route, rcpts: list[str], req: Requirement,
                             body: bytes) -> list[Outcome]:
            tx = Transaction(env.mail_from, rcpts, body, env.smtputf8, env.body_8bit, req)
            async with self._dest_sems[route.key]:
                return await self.sender.send(route, tx)

        # DKIM signing is the last transform: the message once for all its groups, each
        # portal notification on its own
        original = data
        if groups:
            data = await self._sign(qid, env, data)
        results = await asyncio.gather(*(send_group(r, rc, req, data) for r, req, rc in groups))
        # PHI whose destination could not meet the TLS requirement: to the portal (at once,
        # or after tls.fallback_after of retrying), never in clear
        routes = {rc: r for r, _, rcs in groups for rc in rcs}
        late = self.clock() - env.received_at >= self.config.tls.fallback_after
        for group in results:
            for o in group:
                if (o.tls_failure and late and self.portal is not None
                        and verdict.action_for(o.recipient).action == "require_tls"):
                    self._fallback(qid, o.recipient, o.tls_failure)
                    to_portal.append((routes[o.recipient], o.recipient))
                else:
                    outcomes.append(o)
        notices: list[tuple[Route, str, bytes, Requirement]] = []
        for route, rcpt in to_encrypt:
            body = await self._encrypt(qid, env, original, rcpt, attempt_no)
            if body is None:  # no usable key: the portal
                to_portal.append((route, rcpt))
                continue
            # encrypted end to end: like a notification, only the destination's own
            # published policy binds the transport
            pub = await self._published(published, _domain(rcpt), route)
            req = required[rcpt] = needed(pub, "notify")
            notices.append((route, rcpt, await self._sign(qid, env, body), req))
        for route, rcpt in to_portal:
            notice = await self._to_portal(qid, env, original, rcpt, phrase)
            if isinstance(notice, Outcome):
                outcomes.append(notice)
                continue
            # the notification carries no PHI: opportunistic TLS, but a destination's
            # published MTA-STS or DANE policy still holds
            pub = await self._published(published, _domain(rcpt), route)
            req = required[rcpt] = needed(pub, "notify")
            notices.append((route, rcpt, await self._sign(qid, env, notice), req))
        for group in await asyncio.gather(*(send_group(r, [rcpt], req, body)
                                            for r, rcpt, body, req in notices)):
            outcomes.extend(group)
        duration = self.clock() - started
        self._finish(qid, header.kind, env, data, status, outcomes, attempt_no, duration,
                     required)

    async def _published(self, cache: dict[str, Published], domain: str,
                         route: Route) -> Published:
        pub = cache.get(domain)
        if pub is None:
            if self.tls_policy is None:
                pub = Published(Requirement("may"))
            else:
                hosts = tuple(dict.fromkeys(h.name for h in route.hops))
                pub = await self.tls_policy.published(domain, hosts, route.source)
            cache[domain] = pub
        return pub

    def _fallback(self, qid: str, rcpt: str, reason: str) -> None:
        self.audit.emit("tls.fallback", {"email.local_id": qid, "email.to.address": rcpt,
                                         "event.reason": reason[:200],
                                         "verdict.action": "portal"})

    async def _key_known(self, rcpt: str) -> bool:
        """A key exists for ``rcpt``: a valid one (encrypt), or an expired or revoked one
        (the portal, and the sender is told)."""
        assert self.encryptor is not None
        found = await asyncio.to_thread(self.encryptor.store.lookup, rcpt, self.clock())
        return isinstance(found, Found) or found.reason != "none"

    async def _encrypt(self, qid: str, env: Envelope, data: bytes, rcpt: str,
                       attempt_no: int) -> bytes | None:
        """The message encrypted for ``rcpt`` (OpenPGP or S/MIME), or None when no valid key
        is known (the caller uses the portal; never clear text). A key that exists but is
        expired or revoked is reported to the sender once, without the message's content."""
        assert self.encryptor is not None
        res = await asyncio.to_thread(self.encryptor.encrypt_for, data, rcpt, self.clock())
        self.audit.emit("message.encrypt", {"email.local_id": qid, "email.to.address": rcpt,
                                            **audit_fields(res)})
        if isinstance(res, Encrypted):
            return res.message
        cfg = self.config
        if res.notify_sender and cfg.encrypt.notify_sender and env.mail_from \
                and attempt_no == 1:
            now = self.clock()
            notice = key_problem_notice(res, env.mail_from, cfg.portal.from_address,
                                        cfg.organisation, cfg.hostname, now)
            nenv = Envelope(mail_from="", rcpt_tos=(env.mail_from,), listener="notice",
                            received_at=now)
            verdict = Verdict(recipients=(RecipientVerdict(env.mail_from, "deliver",
                                                           "key-notice"),))
            nid = self.spool.store(nenv, verdict, notice, kind="bounce", now=now)
            self.audit.emit("encrypt.key_notice", {"email.local_id": nid,
                                                   "related.local_id": qid,
                                                   "email.to.address": env.mail_from})
            self.notify(nid, "incoming")
        return None

    async def _sign(self, qid: str, env: Envelope, data: bytes) -> bytes:
        if self.signer is None:
            return data
        signed = await self.signer.sign_async(data, env.mail_from)
        if not signed.signed:
            self.audit.emit("dkim.unsigned", {"email.local_id": qid,
                                              "event.reason": signed.reason or "dkim_no_key"})
        return signed.data

    async def _to_portal(self, qid: str, env: Envelope, data: bytes, rcpt: str,
                         phrase: str | None = None) -> bytes | Outcome:
        """Store the message for ``rcpt`` in the portal: the notification to send instead, or
        a temporary failure (the store is down: the message waits, it is never sent in
        clear)."""
        assert self.portal is not None
        try:
            done = await asyncio.to_thread(self.portal.rewrite, qid, env.mail_from, data, rcpt,
                                           phrase)
        except Exception as exc:  # StoreError, or a template an admin broke
            self.audit.emit("portal.stored", {"email.local_id": qid, "email.to.address": rcpt,
                                              "event.outcome": "failure",
                                              "error.type": type(exc).__name__})
            return Outcome(rcpt, 451, "4.3.0 the portal store is unavailable; will retry",
                           None, None)
        self.audit.emit("portal.stored", {
            "email.local_id": qid, "email.to.address": rcpt, "portal.id": done.pickup_id,
            "portal.expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(done.expires)),
            "event.outcome": "success"})
        return done.notification

    def _finish(self, qid: str, kind: str, env: Envelope, data: bytes, status: DeliveryStatus,
                outcomes: list[Outcome], attempt_no: int, duration: float,
                required: dict[str, Requirement] | None = None) -> None:
        by_rcpt = {o.recipient: o for o in outcomes}
        new_statuses: list[RecipientStatus] = []
        failed: list[FailedRecipient] = []
        for rs in status.recipients:
            o = by_rcpt.get(rs.recipient)
            if o is None:
                new_statuses.append(rs)
                continue
            self._log_outcome(qid, o, attempt_no, duration, (required or {}).get(o.recipient))
            state = {"delivered": "delivered", "bounced": "bounced"}.get(o.kind, "pending")
            new_statuses.append(RecipientStatus(rs.recipient, state, rs.attempts + 1,
                                                o.code, o.reply[:300]))
            if o.kind == "bounced":
                failed.append(self._failed(o))
        status = replace(status, recipients=tuple(new_statuses), attempts=attempt_no)
        now = self.clock()
        retry = self.config.delivery.retry
        if status.pending and now - env.received_at >= retry.expire:
            expired = []
            for rs in status.recipients:
                if rs.state == "pending":
                    expired.append(rs)
                    failed.append(FailedRecipient(
                        rs.recipient, "4.4.7",
                        f"message expired after {_duration(retry.expire)} in the queue; "
                        f"last error: {rs.last_code} {rs.last_reply}".strip(),
                        None))
            status = replace(status, recipients=tuple(
                replace(rs, state="bounced") if rs.state == "pending" else rs
                for rs in status.recipients))
            self.audit.emit("message.expired", {"email.local_id": qid,
                                                "email.to.address": [r.recipient for r in expired],
                                                "queue.age": round(now - env.received_at, 1)})
        if failed:
            self._bounce(qid, kind, env, data, failed)
        if not status.pending:
            self.spool.remove(qid, "active")
            self.audit.emit("queue.removed", {"email.local_id": qid,
                                              "queue.attempt": attempt_no})
            return
        if (not status.warned and kind == "message" and env.mail_from
                and now - env.received_at >= retry.delay_warning):
            self._bounce(qid, kind, env, data, [
                FailedRecipient(rs.recipient, status_for(rs.last_code, rs.last_reply),
                                f"{rs.last_code} {rs.last_reply}".strip(), None, "delayed")
                for rs in status.recipients if rs.state == "pending"], delayed=True)
            status = replace(status, warned=True)
        delay = min(retry.first * (2 ** (attempt_no - 1)), retry.max_backoff)
        status = replace(status, next_attempt=now + delay)
        self.spool.set_status(qid, status)
        self._defer_file(qid, status.next_attempt)
        self.audit.emit("message.deferred", {
            "email.local_id": qid, "queue.attempt": attempt_no, "queue.state": "deferred",
            "queue.next_attempt": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                time.gmtime(status.next_attempt)),
            "email.to.address": list(status.pending)})

    def _failed(self, o: Outcome) -> FailedRecipient:
        diag = f"smtp; {o.code} {o.reply}" if o.hop is not None else o.reply
        return FailedRecipient(o.recipient, status_for(o.code, o.reply), diag,
                               o.hop.name if o.hop else None)

    def _log_outcome(self, qid: str, o: Outcome, attempt_no: int, duration: float,
                     req: Requirement | None = None) -> None:
        fields: dict[str, Any] = {
            "email.local_id": qid,
            "email.to.address": o.recipient,
            "destination.domain": _domain(o.recipient),
            "event.outcome": "success" if o.kind == "delivered" else "failure",
            "smtp.code": o.code,
            "smtp.reply": o.reply,
            "queue.attempt": attempt_no,
            "delivery.duration": round(duration, 4),
            "tls.established": o.tls is not None,
        }
        if o.hop is not None:
            fields.update({"destination.address": o.hop.name, "destination.ip": o.hop.ip,
                           "destination.port": o.hop.port})
        if o.tls is not None:
            fields.update({"tls.version": o.tls.version, "tls.cipher": o.tls.cipher})
        if req is not None:
            fields.update({"tls.required": req.level, "tls.policy_source": req.source})
        if o.tls_failure:
            fields["tls.failure"] = o.tls_failure[:200]
        self.audit.emit(f"delivery.{o.kind}", fields)

    def _bounce(self, qid: str, kind: str, env: Envelope, data: bytes,
                failed: list[FailedRecipient], delayed: bool = False) -> None:
        if not env.mail_from or kind != "message":
            # RFC 5321 6.1: never bounce a bounce, never send to the null sender.
            self.audit.emit("bounce.suppressed", {"email.local_id": qid,
                                                  "event.reason": "null_sender"})
            return
        now = self.clock()
        raw = build_bounce(
            reporting_mta=self.config.hostname,
            original_sender=env.mail_from,
            original_queue_id=qid,
            arrival_date=env.received_at,
            recipients=failed,
            original=data,
            now=now,
            delayed=delayed,
        )
        benv = Envelope(mail_from="", rcpt_tos=(env.mail_from,), listener="bounce",
                        received_at=now, smtputf8=env.smtputf8)
        verdict = Verdict(recipients=(RecipientVerdict(env.mail_from, "deliver", "bounce"),))
        bid = self.spool.store(benv, verdict, raw, kind="warning" if delayed else "bounce",
                               now=now)
        self.audit.emit("bounce.created" if not delayed else "bounce.delay_warning", {
            "email.local_id": bid, "related.local_id": qid,
            "email.to.address": env.mail_from,
            "count": len(failed)})
        self.notify(bid, "incoming")
