"""``phigate limits show [SENDER]``, ``phigate limits clear SENDER`` and ``phigate user unlock
NAME``: the parsers and handlers. ``cli.build_parser`` adds ``limits`` through
:func:`add_parsers`; ``user unlock`` belongs to the ``user`` group that ``cli.py`` builds, so
:func:`cmd_user_unlock` is its handler there. ``python -m gateway.ratelimitcli`` offers all three
on its own.

``limits show`` reads the same state the gateway uses: Redis when ``ratelimit.redis`` is set,
else the in-process snapshots each worker saves under ``paths.var/ratelimit`` (up to
``snapshot_interval`` old; one section per worker, since each worker counts on its own).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .audit import AuditLog
from .config import DEFAULT_CONFIG, Config, ConfigError, load_config
from .ratelimit import (
    MemoryBackend,
    RateLimiter,
    RedisBackend,
    clear_requests_path,
    normalize_sender,
    snapshot_path,
)
from .users import UserDB

Common = Callable[[argparse.ArgumentParser], None]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="configuration file (default: conf/gateway.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key by its dotted path (repeatable)")


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                common: Common = _common) -> None:
    """Add ``limits``; each leaf sets ``handler(args, config) -> int``."""
    lim = subparsers.add_parser("limits", help="sending limits: current usage and baselines")
    lsub = lim.add_subparsers(dest="action", required=True)
    p = lsub.add_parser("show", help="usage against each limit and the anomaly baseline")
    common(p)
    p.add_argument("sender", nargs="?", help="an envelope sender (default: list all)")
    p.add_argument("--user", help="also show the per-user limits of this SMTP user")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=cmd_show)
    p = lsub.add_parser("clear", help="lift an anomaly hold on a sender (held messages stay "
                                      "held: release them with 'phigate queue release')")
    common(p)
    p.add_argument("sender")
    p.set_defaults(handler=cmd_clear)


def add_user_unlock(usub: argparse._SubParsersAction[argparse.ArgumentParser],
                    common: Common = _common) -> None:
    p = usub.add_parser("unlock", help="let an account locked by anomaly detection log in")
    common(p)
    p.add_argument("name")
    p.set_defaults(handler=cmd_user_unlock)


def _admin() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


# --------------------------------------------------------------------------- handlers


def cmd_user_unlock(args: argparse.Namespace, cfg: Config) -> int:
    db = UserDB.load(cfg.auth.users_file)
    user = db.users.get(args.name)
    if user is None:
        print(f"no such user: {args.name}", file=sys.stderr)
        return 1
    if not user.locked:
        print(f"{args.name}: not locked")
        return 0
    db.set_user(args.name, locked=False)
    db.save()
    AuditLog.from_config(cfg.log, stdout=False).emit(
        "user.unlock", {"user.name": args.name, "admin.reason": f"by {_admin()}"[:200]})
    print(f"{args.name}: unlocked (takes effect at the next login)")
    return 0


def _limiters(cfg: Config) -> list[tuple[str, RateLimiter]]:
    audit = AuditLog(None, stdout=False)
    if cfg.ratelimit.redis:
        backend = RedisBackend(cfg.ratelimit.redis, max(cfg.ratelimit.redis_timeout, 2.0))
        return [("redis", RateLimiter(cfg, audit, backend=backend))]
    out = []
    for w in range(cfg.workers):
        path = snapshot_path(cfg.paths.var, w)
        try:
            backend_m = MemoryBackend.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{path}: unreadable ({type(exc).__name__})", file=sys.stderr)
            continue
        out.append((f"worker {w}", RateLimiter(cfg, audit, backend=backend_m)))
    return out


async def _show(args: argparse.Namespace, cfg: Config) -> int:
    limiters = _limiters(cfg)
    if not limiters:
        print(f"no rate-limit state yet (in-process state is saved under "
              f"{cfg.paths.var / 'ratelimit'} every {cfg.ratelimit.snapshot_interval:g} s)")
        return 0
    try:
        for where, rl in limiters:
            senders = [args.sender] if args.sender else await rl.backend.senders()
            for sender in senders:
                u = await rl.usage(sender, args.user)
                u["state"] = where
                if args.json:
                    print(json.dumps(u))
                else:
                    _print_usage(u, detail=bool(args.sender))
    finally:
        for _, rl in limiters:
            await rl.backend.close()
    return 0


def _print_usage(u: dict[str, Any], detail: bool) -> None:
    hour = u["this_hour"]
    flags = ", ".join(f"{k} until {time.strftime('%Y-%m-%d %H:%M', time.localtime(v))}"
                      for k, v in u["flags"].items())
    base = u.get("baseline")
    if not detail:
        expected = "learning" if not base or base["learning"] else (
            f"score {u.get('score', 0)}")
        print(f"{u['sender']:40} {u['group'] or '-':12} this hour {hour['messages']:>5} msg "
              f"{hour['external_domains']:>4} ext domains  {expected}  {flags}  [{u['state']}]")
        return
    print(f"{u['sender']}  group {u['group'] or '-'}  [{u['state']}]")
    for lim in u["limits"]:
        print(f"  {lim['scope']:7} {lim['metric']:13} {lim['used']:>8g} of {lim['limit']:>6} "
              f"per {lim['window']}")
    print(f"  this hour: {hour['messages']} messages, {hour['external_domains']} external "
          f"domains, {hour['phi_findings']:g} PHI findings")
    if flags:
        print(f"  {flags}")
    if base is None:
        print("  baseline: none yet")
        return
    state = "learning" if base["learning"] else f"score now {u.get('score', 0)}"
    hod = " ".join(f"{x:.1f}" for x in base["messages_per_hour_of_day"])
    print(f"  baseline since {base['since']} ({state}, {base['messages_learned']} messages "
          f"learned): {base['external_domains_per_hour']} external domains per active hour, "
          f"{base['phi_findings_per_message']} PHI findings per message")
    print(f"  messages per hour of day (UTC 00-23): {hod}")


def cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    return asyncio.run(_show(args, cfg))


async def _clear_redis(cfg: Config, sender: str) -> None:
    assert cfg.ratelimit.redis
    backend = RedisBackend(cfg.ratelimit.redis, max(cfg.ratelimit.redis_timeout, 2.0))
    try:
        await backend.clear(sender)
    finally:
        await backend.close()


def cmd_clear(args: argparse.Namespace, cfg: Config) -> int:
    sender = normalize_sender(args.sender)
    if cfg.ratelimit.redis:
        asyncio.run(_clear_redis(cfg, sender))
        print(f"{sender}: hold lifted")
    else:
        path = clear_requests_path(cfg.paths.var)
        try:
            requests: dict[str, float] = json.loads(path.read_text())
        except (OSError, ValueError):
            requests = {}
        now = time.time()
        requests = {s: t for s, t in requests.items() if now - t < 86400}
        requests[sender] = now
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(requests))
        os.replace(tmp, path)
        print(f"{sender}: hold lifted (each worker applies it within "
              f"{cfg.ratelimit.snapshot_interval:g} s)")
    AuditLog.from_config(cfg.log, stdout=False).emit(
        "ratelimit.cleared", {"email.from.address": sender, "user.name": _admin()})
    return 0


# --------------------------------------------------------------------------- standalone


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.ratelimitcli",
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    u = sub.add_parser("user", help="SMTP users")
    add_user_unlock(u.add_subparsers(dest="action", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args, load_config(args.config, args.overrides)))
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
