"""The ``phigate`` command. Every subcommand takes ``--config`` and ``--set KEY=VALUE`` so it
finds the same spool, keys and users as the running gateway."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .audit import AuditLog
from .auditcli import add_parsers as add_audit_parsers
from .config import DEFAULT_CONFIG, Config, ConfigError, _duration, load_config
from .delivery import FLUSH_TRIGGER
from .dkim import Signer
from .dkimcli import add_parsers as add_dkim_parsers
from .dkimkeys import DkimKeyError
from .keyscli import add_parsers as add_keys_parsers
from .model import SpoolEntry
from .quarantine import fmt_age, held_rules, matches, release_to_portal
from .ratelimitcli import add_parsers as add_limits_parsers
from .ratelimitcli import add_user_unlock
from .spool import STATES, Spool, SpoolError
from .tlsprobe import add_parsers as add_tls_parsers
from .users import UserDB


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="configuration file (default: conf/gateway.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key by its dotted path (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phigate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the gateway")
    _common(p)
    p = sub.add_parser("check-config", help="validate the configuration and exit")
    _common(p)

    q = sub.add_parser("queue", help="inspect and manage the spool")
    qsub = q.add_subparsers(dest="action", required=True)
    p = qsub.add_parser("list", help="list queued messages")
    _common(p)
    p.add_argument("--state", choices=STATES, action="append")
    p.add_argument("--sender", help="only messages from this envelope sender")
    p.add_argument("--rule", help="only messages a rule with this id decided (held messages: "
                   "the rule that held them, or 'ratelimit')")
    p.add_argument("--older-than", dest="older_than", type=_age, metavar="DURATION",
                   help="only messages queued longer than this (e.g. 30m, 4h, 2d)")
    p.add_argument("--json", action="store_true")
    p = qsub.add_parser("show", help="show one message's envelope, verdict and status")
    _common(p)
    p.add_argument("queue_id")
    p.add_argument("--headers", action="store_true", help="also print the message headers")
    for name, text in (("hold", "hold messages (stop delivering them)"),
                       ("release", "release held messages for delivery"),
                       ("delete", "delete messages from the spool")):
        p = qsub.add_parser(name, help=text)
        _common(p)
        p.add_argument("queue_ids", nargs="+", metavar="QUEUE_ID")
        p.add_argument("--reason", default="", help="recorded in the audit log")
        if name == "release":
            p.add_argument("--to-portal", dest="to_portal", action="store_true",
                           help="deliver through the pickup portal: every recipient not "
                                "encrypted end to end gets a notification and a link")
    p = qsub.add_parser("flush", help="attempt every deferred message now")
    _common(p)

    r = sub.add_parser("rules", help="work with the PHI rules")
    rsub = r.add_subparsers(dest="action", required=True)
    p = rsub.add_parser("test", help="classify and decide for message files, without sending")
    _common(p)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a message file, a folder of them, or - for standard input")
    p.add_argument("--from", dest="sender", help="envelope sender (default: the From header)")
    p.add_argument("--to", dest="recipients", action="append", default=[],
                   help="envelope recipient (repeatable; default: To and Cc headers)")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--explain", action="store_true",
                   help="show which detectors fired where (values masked) and which rule decided")

    u = sub.add_parser("user", help="manage SMTP AUTH users (conf/users.yaml)")
    usub = u.add_subparsers(dest="action", required=True)
    for name, text in (("add", "add a user"), ("passwd", "change a password")):
        p = usub.add_parser(name, help=text)
        _common(p)
        p.add_argument("name")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input")
        if name == "add":
            p.add_argument("--sender", action="append", default=[], required=True,
                           help="address or @domain the user may send as (repeatable)")
    for name, text in (("disable", "refuse a user's logins"), ("enable", "allow logins again")):
        p = usub.add_parser(name, help=text)
        _common(p)
        p.add_argument("name")
    add_user_unlock(usub, _common)
    p = usub.add_parser("list", help="list users")
    _common(p)

    from portal.cli import add_parsers as portal_parsers

    portal_parsers(sub, _common)
    add_dkim_parsers(sub)
    add_tls_parsers(sub, _common)
    add_keys_parsers(sub, _common)
    add_limits_parsers(sub, _common)
    add_audit_parsers(sub, _common)
    return parser


def _age(text: str) -> float:
    try:
        return _duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from .app import run

            return run(args.config, args.overrides)
        if args.command == "check-config":
            cfg = _load(args)
            UserDB.load(cfg.auth.users_file)
            try:
                Signer.from_config(cfg)
            except DkimKeyError as err:
                raise ConfigError([str(err)]) from None
            from .encrypt import check_setup

            if problems := check_setup(cfg):
                raise ConfigError(problems)
            if cfg.rules.enabled:
                from .classify import load_rules
                from .rules.ruleset import check_examples

                ruleset, engine = load_rules(cfg)
                problems = check_examples(engine, ruleset)
                if problems:
                    raise ConfigError(problems)
                print(f"{cfg.rules_dir}: {len(ruleset.detectors)} detectors, "
                      f"{len(ruleset.policies)} policies, examples ok")
            print(f"{args.config}: ok")
            return 0
        if args.command == "rules":
            from .rulestest import rules_test

            return rules_test(args, _load(args))
        if args.command == "queue":
            return _queue(args, _load(args))
        if args.command == "user":
            return _user(args, _load(args))
        if args.command in ("dkim", "dns", "limits") or (
                args.command == "user" and args.action == "unlock"):
            return int(args.handler(args, _load(args)))
        if args.command == "audit":
            from .auditcli import run as audit_run

            return audit_run(args, _load(args))
        if args.command == "keys":
            from .keyscli import run as keys_run

            return keys_run(args, _load(args))
        if args.command == "tls":
            from .tlsprobe import run as tls_run

            return tls_run(args, _load(args))
        if args.command == "portal":
            from portal.cli import run as portal_run

            return portal_run(args, _load(args))
    except ConfigError as err:
        print("\n".join(err.problems), file=sys.stderr)
        return 1
    return 2


# --------------------------------------------------------------------------- queue


def _entry_json(e: SpoolEntry, now: float) -> dict[str, object]:
    return {
        "queue_id": e.queue_id,
        "state": e.state,
        "kind": e.kind,
        "size": e.size,
        "arrival": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.envelope.received_at)),
        "age": round(now - e.envelope.received_at, 1),
        "sender": e.envelope.mail_from,
        "recipients": [r.to_json() for r in e.status.recipients],
        "attempts": e.status.attempts,
        "next_attempt": e.status.next_attempt or None,
        "verdict": e.verdict.to_json()["recipients"],
    }


def _touch_trigger(spool: Spool) -> None:
    path = spool.root / FLUSH_TRIGGER
    path.touch()
    os.utime(path, None)


def _queue(args: argparse.Namespace, cfg: Config) -> int:
    spool = Spool(cfg.paths.spool)
    spool.ensure()
    now = time.time()
    if args.action == "list":
        states = tuple(args.state) if args.state else STATES
        count = 0
        for e in spool.entries(states):
            if not matches(e, now, sender=args.sender, rule=args.rule,
                           older_than=args.older_than):
                continue
            count += 1
            if args.json:
                print(json.dumps(_entry_json(e, now)))
                continue
            pending = [r for r in e.status.recipients if r.state == "pending"]
            print(f"{e.queue_id:22} {e.state:9} {e.size:>9} "
                  f"{time.strftime('%a %b %d %H:%M:%S', time.localtime(e.envelope.received_at))}"
                  f"  <{e.envelope.mail_from}>")
            if e.state == "hold":
                print(f"{'':33}held by {', '.join(held_rules(e.verdict))}, "
                      f"{fmt_age(now - e.envelope.received_at)} ago, "
                      f"{len(e.envelope.rcpt_tos)} recipient(s)")
            for r in pending:
                reason = f" ({r.last_code} {r.last_reply})" if r.last_code else ""
                print(f"{'':33}<{r.recipient}>{reason[:120]}")
        if not args.json:
            print(f"-- {count} message(s)")
        return 0
    audit = AuditLog.from_config(cfg.log, stdout=False)
    if args.action == "show":
        state = spool.find(args.queue_id)
        if state is None:
            print(f"{args.queue_id}: not in the queue", file=sys.stderr)
            return 1
        try:
            e = spool.entry(state, args.queue_id)
        except SpoolError as err:
            print(f"{args.queue_id}: unreadable queue file ({err})", file=sys.stderr)
            return 1
        out = _entry_json(e, now)
        out["envelope"] = e.envelope.to_json()
        print(json.dumps(out, indent=2))
        if args.headers:
            raw = spool.read_message(state, args.queue_id)
            end = raw.find(b"\r\n\r\n")
            print(raw[: end if end >= 0 else len(raw)].decode("utf-8", "replace"))
        return 0
    if args.action == "flush":
        n = 0
        for qid in spool.ids("deferred"):
            try:
                e = spool.entry("deferred", qid)
            except (FileNotFoundError, SpoolError):
                continue
            spool.set_status(qid, e.status.__class__(e.status.recipients, e.status.attempts,
                                                     0.0, e.status.warned))
            n += 1
        _touch_trigger(spool)
        audit.emit("queue.flush", {"count": n, "user.name": _admin()})
        print(f"flushed {n} deferred message(s)")
        return 0
    to_portal = bool(getattr(args, "to_portal", False))
    if to_portal and not cfg.portal.enabled:
        print("release --to-portal needs the pickup portal, which is disabled "
              "(portal.enabled: false)", file=sys.stderr)
        return 1
    rc = 0
    for qid in args.queue_ids:
        state = spool.find(qid)
        ok = False
        extra: dict[str, object] = {}
        if state is None:
            print(f"{qid}: not in the queue", file=sys.stderr)
        elif state == "active":
            print(f"{qid}: being delivered right now; try again in a moment", file=sys.stderr)
        elif args.action == "hold":
            ok = state == "hold" or spool.move(qid, state, "hold")
        elif args.action == "release":
            if state != "hold":
                print(f"{qid}: not held (state {state})", file=sys.stderr)
            else:
                try:
                    if to_portal:
                        verdict = release_to_portal(spool, qid)
                        extra = {"verdict.action": "portal",
                                 "verdict.recipients": [rv.to_json()
                                                        for rv in verdict.recipients]}
                    ok = spool.move(qid, "hold", "incoming")
                except (OSError, SpoolError) as err:
                    print(f"{qid}: cannot release: {err}", file=sys.stderr)
        elif args.action == "delete":
            spool.remove(qid, state)
            ok = True
        if ok:
            audit.emit(f"queue.{args.action}", {"email.local_id": qid, "queue.state": state,
                                                "admin.reason": args.reason[:200] or None,
                                                "user.name": _admin(), **extra})
            print(f"{qid}: {args.action}{' to the portal' if extra else ''} done")
        else:
            rc = 1
    if args.action == "release":
        _touch_trigger(spool)
    return rc


def _admin() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


# --------------------------------------------------------------------------- users


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != pw:
            raise SystemExit("passwords do not match")
    if len(pw) < 8:
        raise SystemExit("password too short (at least 8 characters)")
    return pw


def _user(args: argparse.Namespace, cfg: Config) -> int:
    db = UserDB.load(cfg.auth.users_file)
    audit = AuditLog.from_config(cfg.log, stdout=False)
    if args.action == "list":
        for u in sorted(db.users.values(), key=lambda u: u.name):
            state = "disabled" if u.disabled else ("locked" if u.locked else "active")
            print(f"{u.name:24} {state:9} {', '.join(u.senders)}")
        return 0
    if args.action == "add":
        if args.name in db.users:
            print(f"user {args.name} exists; use 'phigate user passwd'", file=sys.stderr)
            return 1
        db.set_user(args.name, password=_read_password(args), senders=args.sender,
                    disabled=False)
    elif args.name not in db.users:
        print(f"no such user: {args.name}", file=sys.stderr)
        return 1
    elif args.action == "passwd":
        db.set_user(args.name, password=_read_password(args))
    else:
        db.set_user(args.name, disabled=args.action == "disable")
    db.save()
    audit.emit(f"user.{args.action}", {"user.name": args.name})
    print(f"{args.name}: {args.action} done (a running gateway picks it up on SIGHUP)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
