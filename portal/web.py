"""The pickup portal's web application (aiohttp).

A recipient's journey: the link in the notification (``/p/<id>/<secret>``) -> ask for a
one-time code (sent to their address) -> enter it -> a session cookie -> the message page
(``/m/<id>``: body, attachments, print view, secure reply). Only the link carries the secret
that opens a message; a session holds that message's key wrapped under its own cookie secret,
so neither the database nor a cookie alone opens anything.

Safety: every form carries a CSRF token (double-submit, bound to a SameSite=Strict cookie);
responses carry a strict Content-Security-Policy (no script at all), ``nosniff``,
``Referrer-Policy: no-referrer`` and ``frame-ancestors 'none'`` (HSTS over HTTPS); URLs hold
only random ids; every access is an audit event with no content. No access log is written (a
link's URL is a credential).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import BodyPartReader, web

from gateway.audit import AuditLog
from gateway.config import PortalConfig
from gateway.passphrase import normalise as normalise_passphrase

from . import crypto
from .mail import Composer, SubmitError, Submitter, original_headers
from .model import OneTimeCode, Pickup, PortalStore, Reply, Session, StoreError
from .render import View, render, unpack

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "phigate_session"
CSRF_COOKIE = "phigate_csrf"
MAX_REPLY = 30 * 1024 * 1024
TOUCH_EVERY = 30.0  # seconds: the idle timer is refreshed at most this often
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def mask_address(address: str) -> str:
    """j***@example.net: enough for the recipient to recognise, not to harvest."""
    local, _, domain = address.partition("@")
    return (local[:1] + "***@" + domain) if domain else "***"


def _when(ts: float) -> str:
    return time.strftime("%d %B %Y, %H:%M UTC", time.gmtime(ts))


class Page(Exception):
    """An error page with a status: raised anywhere in a handler."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.text = text


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


@dataclass
class Access:
    """A verified session's view of one pickup."""

    pickup: Pickup
    key: bytes
    session_hash: bytes


class Portal:
    def __init__(self, config: PortalConfig, store: PortalStore, audit: AuditLog,
                 composer: Composer, submitter: Submitter,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.audit = audit
        self.composer = composer
        self.submitter = submitter
        self.clock = clock
        self.secure = config.base_url.startswith("https://")
        self.origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(config.base_url))
        self.pages = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                                        autoescape=True, undefined=jinja2.StrictUndefined)

    # ------------------------------------------------------------------ plumbing

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._headers], client_max_size=MAX_REPLY)
        r = app.router
        r.add_get("/", self.home)
        r.add_get("/p/{id}/{secret}", self.link)
        r.add_post("/p/{id}/{secret}/send", self.send_code)
        r.add_post("/p/{id}/{secret}/verify", self.verify)
        r.add_get("/m/{id}", self.message)
        r.add_get("/m/{id}/a/{n}", self.download)
        r.add_post("/m/{id}/reply", self.reply)
        r.add_post("/logout", self.logout)
        r.add_get("/healthz", self.health)
        r.add_static("/static/", HERE / "static", append_version=False)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except Page as page:
            resp = self._page("error.html", page.status, title=page.title, text=page.text)
        except StoreError:
            resp = self._page("error.html", 503, title="Temporarily unavailable",
                              text="The secure message service cannot be reached right now. "
                                   "Please try again in a few minutes.")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = self._page("error.html", exc.status, title=exc.reason,
                              text="This page does not exist.")
        h = resp.headers
        h["Content-Security-Policy"] = CSP
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        h["X-Frame-Options"] = "DENY"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        h["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if not request.path.startswith("/static/"):
            h["Cache-Control"] = "no-store"
        if self.secure:
            h["Strict-Transport-Security"] = "max-age=31536000"
        return resp

    def _page(self, template: str, status: int = 200, **values: Any) -> web.Response:
        values.setdefault("phrase", self.config.anti_phishing_phrase)
        values.setdefault("organisation", self.composer.organisation)
        values.setdefault("csrf", "")
        html = self.pages.get_template(template).render(**values)
        return web.Response(text=html, status=status, content_type="text/html",
                            charset="utf-8")

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def _cookie(self, resp: web.StreamResponse, name: str, value: str) -> None:
        resp.set_cookie(name, value, httponly=True, secure=self.secure, samesite="Strict",
                        path="/")

    def _csrf(self, request: web.Request, resp_cookies: dict[str, str]) -> str:
        """The form token: the CSRF cookie's value (set now if the browser has none)."""
        token = request.cookies.get(CSRF_COOKIE, "")
        if len(token) < 20:
            token = secrets.token_urlsafe(24)
            resp_cookies[CSRF_COOKIE] = token
        return token

    async def _form(self, request: web.Request) -> dict[str, Any]:
        """The posted form, after the CSRF and origin checks."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != self.origin and origin != "null":
            raise Page(403, "Request refused", "This form was not sent from this site.")
        form: dict[str, Any] = dict(await request.post())
        cookie = request.cookies.get(CSRF_COOKIE, "")
        token = form.get("csrf")
        if not cookie or not isinstance(token, str) or not hmac.compare_digest(cookie, token):
            raise Page(403, "Request refused",
                       "This form has expired or was not sent from this site. Go back, "
                       "reload the page and try again.")
        return form

    def _event(self, action: str, request: web.Request, pickup: Pickup | None,
               outcome: str = "success", fields: dict[str, Any] | None = None) -> None:
        data: dict[str, Any] = {"event.outcome": outcome, "source.ip": request.remote or ""}
        if pickup is not None:
            data.update({"portal.id": pickup.id, "email.to.address": pickup.recipient,
                         "email.from.address": pickup.sender,
                         "email.local_id": pickup.queue_id})
        data.update(fields or {})
        self.audit.emit(action, data)

    def _live(self, pickup: Pickup | None, request: web.Request) -> Pickup:
        if pickup is None:
            raise Page(404, "Link not valid",
                       "This link is not valid. Check that you opened the whole link from "
                       "the email; if it still fails, ask the sender to send the message again.")
        if pickup.revoked is not None:
            self._event("portal.denied", request, pickup, "failure", {"event.reason": "revoked"})
            raise Page(410, "Message withdrawn",
                       f"The sender has withdrawn this message. Contact {pickup.sender} if you "
                       "still need it.")
        if pickup.expires <= self.clock():
            self._event("portal.denied", request, pickup, "failure", {"event.reason": "expired"})
            raise Page(410, "Message expired",
                       f"This message expired on {_when(pickup.expires)}. Ask "
                       f"{pickup.sender} to send it again.")
        return pickup

    async def _by_link(self, request: web.Request) -> tuple[Pickup, str]:
        pid, secret = request.match_info["id"], request.match_info["secret"]
        pickup = await self._io(self.store.pickup, pid)
        if pickup is not None and not crypto.same(pickup.token_hash, crypto.token_hash(secret)):
            self._event("portal.denied", request, pickup, "failure",
                        {"event.reason": "bad_token"})
            pickup = None
        return self._live(pickup, request), secret

    async def _session(self, request: web.Request) -> tuple[Session, str] | None:
        secret = request.cookies.get(SESSION_COOKIE, "")
        if len(secret) < 20:
            return None
        session = await self._io(self.store.session, crypto.token_hash(secret), self.clock())
        return (session, secret) if session is not None else None

    async def _access(self, request: web.Request) -> Access:
        pickup = await self._io(self.store.pickup, request.match_info["id"])
        found = await self._session(request)
        if pickup is None or found is None:
            raise Page(403, "Please open the link again",
                       "Your session has ended or this page belongs to another message. "
                       "Open the link in your email again to continue.")
        session, secret = found
        pickup = self._live(pickup, request)
        wrapped = None
        if session.recipient == pickup.recipient and session.sender == pickup.sender:
            wrapped = await self._io(self.store.granted, session.id_hash, pickup.id)
        if wrapped is None:
            self._event("portal.denied", request, pickup, "failure",
                        {"event.reason": "no_grant"})
            raise Page(403, "Please open the link again",
                       "This session cannot open this message. Open the link in your email "
                       "to continue.")
        key = crypto.unseal(crypto.derive(secret, "session", pickup.id), wrapped, pickup.id)
        now = self.clock()
        if now - session.last_seen >= TOUCH_EVERY:  # a write per page view would dominate
            await self._io(self.store.touch_session, session.id_hash, now,
                           now + self.config.session_idle)
        return Access(pickup, key, session.id_hash)

    # ------------------------------------------------------------------ pages

    async def home(self, request: web.Request) -> web.StreamResponse:
        return self._page("error.html", title="Secure messages",
                          text="Open the link in the email you received to read your message.")

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def link(self, request: web.Request) -> web.StreamResponse:
        pickup, secret = await self._by_link(request)
        cookies: dict[str, str] = {}
        csrf = self._csrf(request, cookies)
        if "s" not in request.query:
            # The link was followed from a mail client: a cross-site navigation, on which a
            # SameSite=Strict cookie is not sent. One same-site hop lets a verified session in.
            resp: web.StreamResponse = self._page("continue.html", next=f"{request.path}?s=1")
        else:
            found = await self._session(request)
            session = found[0] if found else None
            if found and session and session.recipient == pickup.recipient \
                    and session.sender == pickup.sender and not pickup.passphrase:
                key = crypto.derive(secret, "pickup", pickup.id)
                await self._grant(found[1], session.id_hash, pickup, key)
                self._event("portal.open", request, pickup, "success", {"event.reason": "session"})
                resp = see_other(f"/m/{pickup.id}")
            else:
                code = await self._io(self.store.code, pickup.id)
                pending = code is not None and not code.used and code.expires > self.clock()
                resp = self._page("verify.html", **self._verify_values(pickup, secret, csrf,
                                                                       pending))
        for name, value in cookies.items():
            self._cookie(resp, name, value)
        return resp

    async def send_code(self, request: web.Request) -> web.StreamResponse:
        pickup, secret = await self._by_link(request)
        form = await self._form(request)
        now = self.clock()
        existing: OneTimeCode | None = await self._io(self.store.code, pickup.id)
        values = self._verify_values(pickup, secret, form["csrf"], True)
        if existing is not None and now - existing.created < self.config.code_resend:
            wait = int(self.config.code_resend - (now - existing.created)) + 1
            values["error"] = (f"A code was sent a moment ago. Check your inbox (and spam "
                               f"folder); you can ask for a new one in {wait} seconds.")
            return self._page("verify.html", 429, **values)
        code = crypto.new_code(self.config.code_digits)
        key = crypto.derive(secret, "pickup", pickup.id)
        await self._io(self.store.set_code, OneTimeCode(
            pickup.id, crypto.code_hash(key, code), now, now + self.config.code_ttl))
        try:
            await self.submitter.submit(self.config.from_address, pickup.recipient,
                                        self.composer.code(pickup.recipient, code, now))
        except SubmitError as exc:
            self._event("portal.code_sent", request, pickup, "failure",
                        {"error.type": str(exc)})
            values["error"] = "We could not send the code just now. Please try again shortly."
            values["code_sent"] = False
            return self._page("verify.html", 503, **values)
        self._event("portal.code_sent", request, pickup)
        return self._page("verify.html", **values)

    async def verify(self, request: web.Request) -> web.StreamResponse:
        pickup, secret = await self._by_link(request)
        form = await self._form(request)
        now = self.clock()
        values = self._verify_values(pickup, secret, form["csrf"], True)
        if pickup.locked_until > now:
            return self._locked(request, pickup, values)
        code = "".join(ch for ch in str(form.get("code", "")) if ch.isdigit())
        key = crypto.derive(secret, "pickup", pickup.id)
        content_key: bytes | None = key
        if pickup.passphrase:  # checked first: a wrong passphrase does not use up the code
            content_key = await self._io(self._passphrase_key, pickup, key,
                                         str(form.get("passphrase", "")))
        ok = content_key is not None and len(code) == self.config.code_digits and await self._io(
            self.store.use_code, pickup.id, crypto.code_hash(key, code), now)
        if not ok or content_key is None:
            failures, locked_until = await self._io(
                self.store.record_failure, pickup.id, now, self.config.max_failures,
                self.config.lockout)
            self._event("portal.code_failed", request, pickup, "failure",
                        {"portal.failures": failures})
            if locked_until > now:
                pickup = Pickup(**{**pickup.__dict__, "locked_until": locked_until})
                self._event("portal.locked", request, pickup, "failure")
                return self._locked(request, pickup, values)
            left = self.config.max_failures - failures
            what = ("The passphrase or the code is not right, or the code has expired"
                    if pickup.passphrase else "That code is not right, or it has expired")
            values["error"] = (f"{what}. You have {left} more "
                               f"{'try' if left == 1 else 'tries'}; you can also ask for "
                               "a new code.")
            return self._page("verify.html", 400, **values)
        await self._io(self.store.unlock, pickup.id)
        session_secret = secrets.token_urlsafe(32)
        session_hash = crypto.token_hash(session_secret)
        await self._io(self.store.add_session,
                       Session(session_hash, pickup.recipient, pickup.sender, now, now),
                       now + self.config.session_idle)
        await self._grant(session_secret, session_hash, pickup, content_key)
        self._event("portal.verified", request, pickup)
        resp = see_other(f"/m/{pickup.id}")
        self._cookie(resp, SESSION_COOKIE, session_secret)
        return resp

    def _verify_values(self, pickup: Pickup, secret: str, csrf: str,
                       code_sent: bool) -> dict[str, Any]:
        return {"pickup_id": pickup.id, "secret": secret, "csrf": csrf,
                "masked": mask_address(pickup.recipient), "digits": self.config.code_digits,
                "code_sent": code_sent, "passphrase": pickup.passphrase, "error": None}

    @staticmethod
    def _passphrase_key(pickup: Pickup, link_key: bytes, given: str) -> bytes | None:
        """The content key from the passphrase the recipient typed, or None when it does not
        open the message (scrypt: run in a thread)."""
        phrase = normalise_passphrase(given)
        if not phrase or len(phrase) > 200:
            return None
        key = crypto.passphrase_key(link_key, phrase, pickup.id)
        try:
            crypto.unseal(key, pickup.sealed, pickup.id)
        except crypto.SealError:
            return None
        return key

    def _locked(self, request: web.Request, pickup: Pickup,
                values: dict[str, Any]) -> web.StreamResponse:
        values["error"] = (
            f"Too many wrong codes. For your security this message is locked until "
            f"{_when(pickup.locked_until)}. Try again after that, or ask {pickup.sender} to "
            "have it unlocked.")
        values["locked"] = True
        return self._page("verify.html", 429, **values)

    async def _grant(self, session_secret: str, session_hash: bytes, pickup: Pickup,
                     key: bytes) -> None:
        wrapped = crypto.seal(crypto.derive(session_secret, "session", pickup.id), key,
                              pickup.id)
        await self._io(self.store.grant, session_hash, pickup.id, wrapped)
        first = await self._io(self.store.mark_opened, pickup.id, self.clock())
        if first and self.config.notify_sender_on_open:
            data = self.composer.opened(pickup.sender, pickup.recipient, pickup.created,
                                        self.clock())
            with contextlib.suppress(SubmitError):  # a courtesy; the open is in the audit log
                await self.submitter.submit(self.config.from_address, pickup.sender, data)

    def _open(self, access: Access) -> tuple[View, bytes]:
        if not access.pickup.sealed:
            raise Page(410, "Message withdrawn", "This message is no longer available.")
        return unpack(crypto.unseal(access.key, access.pickup.sealed, access.pickup.id))

    async def message(self, request: web.Request) -> web.StreamResponse:
        access = await self._access(request)
        shown, _ = self._open(access)
        replies = []
        for r in await self._io(self.store.replies, access.pickup.id):
            body = render(crypto.unseal(access.key, r.sealed, access.pickup.id))
            replies.append({"when": _when(r.created), "text": body.text or "",
                            "files": [a.filename for a in body.attachments]})
        cookies: dict[str, str] = {}
        csrf = self._csrf(request, cookies)
        self._event("portal.view", request, access.pickup)
        resp = self._page("message.html", m=shown, pickup=access.pickup, replies=replies,
                          csrf=csrf, expires=_when(access.pickup.expires),
                          printing=request.query.get("view") == "print",
                          sent="sent" in request.query)
        for name, value in cookies.items():
            self._cookie(resp, name, value)
        return resp

    async def download(self, request: web.Request) -> web.StreamResponse:
        access = await self._access(request)
        _, raw = self._open(access)
        try:
            n = int(request.match_info["n"])
            att = (await self._io(render, raw)).attachments[n]
        except (ValueError, IndexError):
            raise Page(404, "Not found", "This attachment does not exist.") from None
        self._event("portal.download", request, access.pickup, "success", {"portal.attachment": n})
        quoted = urllib.parse.quote(att.filename, safe="")
        ascii_name = att.filename.encode("ascii", "replace").decode().replace('"', "'")
        return web.Response(body=att.data, headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; "
                                   f"filename*=UTF-8''{quoted}"})

    async def reply(self, request: web.Request) -> web.StreamResponse:
        access = await self._access(request)
        origin_hdr = request.headers.get("Origin")
        if origin_hdr is not None and origin_hdr not in (self.origin, "null"):
            raise Page(403, "Request refused", "This form was not sent from this site.")
        reader = await request.multipart()
        fields: dict[str, str] = {}
        files: list[tuple[str, str, bytes]] = []
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name or ""
            filename = part.filename
            data = await part.read(decode=True)
            if filename:
                if data:
                    ctype = part.headers.get("Content-Type", "application/octet-stream")
                    files.append((filename, ctype, bytes(data)))
            else:
                fields[name] = bytes(data).decode("utf-8", "replace")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie, fields.get("csrf", "")):
            raise Page(403, "Request refused",
                       "This form has expired. Go back, reload the page and try again.")
        text = fields.get("text", "").strip()
        if not text and not files:
            raise Page(400, "Nothing to send", "Write a reply or attach a file, then send.")
        _, raw = self._open(access)
        original = original_headers(raw, access.pickup.sender)
        original = original.__class__(original.sender_name, access.pickup.sender,
                                      original.subject, original.message_id)
        now = self.clock()
        data = self.composer.reply(original, access.pickup.recipient, text, files, now)
        try:
            await self.submitter.submit(self.config.from_address, access.pickup.sender, data)
        except SubmitError as exc:
            self._event("portal.reply", request, access.pickup, "failure",
                        {"error.type": str(exc)})
            raise Page(503, "Reply not sent",
                       "Your reply could not be sent just now. Go back and try again in a few "
                       "minutes; your text was not kept.") from None
        await self._io(self.store.add_reply, Reply(
            crypto.new_id(), access.pickup.id, now,
            crypto.seal(access.key, data, access.pickup.id)))
        self._event("portal.reply", request, access.pickup, "success",
                    {"email.attachments.count": len(files)})
        return see_other(f"/m/{access.pickup.id}?sent=1")

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await self._form(request)
        found = await self._session(request)
        if found is not None:
            await self._io(self.store.delete_session, found[0].id_hash)
        resp = self._page("error.html", title="Signed out",
                          text="You are signed out. Open the link in your email to read the "
                               "message again.")
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp
