"""``phigate portal run|list|revoke|unlock|purge``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable

from gateway.audit import AuditLog
from gateway.config import Config

from .model import PortalStore, StoreError
from .store import open_store


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("portal", help="the pickup portal: serve it alone, list, revoke, purge")
    psub = p.add_subparsers(dest="action", required=True)
    common(psub.add_parser("run", help="serve the portal alone (a DMZ host sharing the store)"))
    q = psub.add_parser("list", help="list stored messages (no content)")
    common(q)
    q.add_argument("--sender")
    q.add_argument("--recipient")
    q.add_argument("--json", action="store_true")
    for name, text in (("revoke", "withdraw stored messages (content deleted at once)"),
                       ("unlock", "let a recipient try codes again after a lockout")):
        q = psub.add_parser(name, help=text)
        common(q)
        q.add_argument("ids", nargs="+", metavar="ID", help="the id in the message's link")
        q.add_argument("--reason", default="", help="recorded in the audit log")
    common(psub.add_parser("purge", help="delete expired and revoked messages now"))


def _when(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        if args.action == "run":
            return _serve(cfg)
        store = open_store(cfg.portal.store)
        try:
            return _manage(args, cfg, store)
        finally:
            store.close()
    except StoreError as err:
        print(f"portal store {cfg.portal.store}: {err}", file=sys.stderr)
        return 1


def _manage(args: argparse.Namespace, cfg: Config, st: PortalStore) -> int:
    audit = AuditLog.from_config(cfg.log, stdout=False)
    now = time.time()
    if args.action == "list":
        rows = st.pickups(sender=args.sender, recipient=args.recipient)
        for pk in rows:
            row = {"id": pk.id, "queue_id": pk.queue_id, "sender": pk.sender,
                   "recipient": pk.recipient, "size": pk.size, "created": _when(pk.created),
                   "expires": _when(pk.expires), "opened": _when(pk.opened),
                   "revoked": _when(pk.revoked), "locked": pk.locked_until > now}
            if args.json:
                print(json.dumps(row))
            else:
                state = ("revoked" if pk.revoked else "expired" if pk.expires <= now
                         else "locked" if pk.locked_until > now
                         else "opened" if pk.opened else "unread")
                print(f"{pk.id:24} {state:8} {row['created']}  <{pk.sender}> -> "
                      f"<{pk.recipient}>")
        if not args.json:
            print(f"-- {len(rows)} message(s)")
        return 0
    if args.action == "purge":
        count = st.purge(now)
        audit.emit("portal.purged", {"count": count, "event.outcome": "success"})
        print(f"purged {count} message(s)")
        return 0
    code = 0
    for pid in args.ids:
        done = st.revoke(pid, now) if args.action == "revoke" else st.unlock(pid)
        audit.emit(f"portal.{args.action}", {"portal.id": pid, "admin.reason": args.reason,
                                             "event.outcome": "success" if done else "failure"})
        if done:
            print(f"{pid}: {args.action}d" if args.action == "revoke" else f"{pid}: unlocked")
        else:
            print(f"{pid}: not found (or already {args.action}d)", file=sys.stderr)
            code = 1
    return code


def _serve(cfg: Config) -> int:
    from gateway.app import bind

    from .service import PortalService

    async def main() -> None:
        audit = AuditLog.from_config(cfg.log)
        service = PortalService(cfg, audit)
        await service.serve(bind(cfg.portal.listen))
        service.start_purger()
        audit.emit("service.listen", {"listener": "portal",
                                      "listen.address": str(cfg.portal.listen)})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        with contextlib.suppress(Exception):
            await service.stop()

    asyncio.run(main())
    return 0
