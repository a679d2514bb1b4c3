"""``phigate rules test``: classify and decide for message files without sending anything.

Output with ``--json`` is the design's contract: one object per message with ``file``, ``phi``,
``findings`` ({type, rule, count, score}), ``verdicts`` ({recipient, action, rule}) and
``errors``. Matched values are never printed; ``--explain`` shows them masked.
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import json
import sys
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from pathlib import Path

from .classify import Scanner, decide, load_rules
from .config import Config
from .model import Envelope


def _inputs(paths: list[str]) -> Iterator[tuple[str, bytes | None, str | None]]:
    for p in paths:
        if p == "-":
            yield "-", sys.stdin.buffer.read(), None
            continue
        path = Path(p)
        if path.is_dir():
            for f in sorted(x for x in path.rglob("*") if x.is_file()):
                if f.name.startswith(".") or f.suffix in (".json", ".jsonl"):
                    continue
                yield str(f), f.read_bytes(), None
        elif path.is_file():
            yield str(path), path.read_bytes(), None
        else:
            yield str(path), None, "not found"


def _envelope(raw: bytes, sender: str | None, recipients: list[str]) -> Envelope:
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    if sender is None:
        sender = email.utils.parseaddr(str(headers.get("From", "")))[1]
    if not recipients:
        values = [str(v) for k in ("To", "Cc") for v in headers.get_all(k, [])]
        recipients = [a for _, a in email.utils.getaddresses(values) if a]
    return Envelope(mail_from=sender or "", rcpt_tos=tuple(recipients or ["unknown@invalid"]))


def rules_test(args: argparse.Namespace, cfg: Config) -> int:
    ruleset, engine = load_rules(cfg)
    scanner = Scanner(engine)
    rc = 0
    for name, raw, error in _inputs(args.paths):
        if raw is None:
            rc = 1
            err: dict[str, object] = {"file": name, "phi": None, "findings": [], "verdicts": [],
                   "errors": [error or "unreadable"]}
            print(json.dumps(err) if args.json else f"{name}: {error}")
            continue
        env = _envelope(raw, args.sender, list(args.recipients))
        outcome = scanner.scan(raw, explain=args.explain)
        verdict = decide(ruleset, outcome, env, cfg.is_own_domain)
        if args.json:
            out: dict[str, object] = {
                "file": name,
                "phi": verdict.phi,
                "findings": [f.to_json() for f in verdict.findings],
                "verdicts": [v.to_json() for v in verdict.recipients],
                "errors": list(verdict.errors),
                "score": outcome.score,
                "reasons": list(outcome.reasons),
            }
            if verdict.monitor:
                out["monitor"] = [m.to_json() for m in verdict.monitor]
            if args.explain:
                out["explain"] = [e.__dict__ for e in outcome.explain]
            print(json.dumps(out))
            continue
        label = "PHI" if verdict.phi else "no PHI"
        print(f"{name}: {label} (score {outcome.score:g}"
              + (f"; {', '.join(outcome.reasons)})" if outcome.reasons else ")"))
        for f in verdict.findings:
            print(f"  found {f.type} x{f.count} by {f.rule}")
        if args.explain:
            for e in outcome.explain:
                print(f"    {e.where}: {e.type} ({e.detector}) {e.masked}")
        for v in verdict.recipients:
            pol = ruleset.policy(v.rule)
            why = f" - {pol.description}" if pol and pol.description else ""
            print(f"  -> {v.recipient}: {v.action} by rule {v.rule}{why}")
        for m in verdict.monitor:
            print(f"  (monitor) {m.recipient}: would {m.action} by rule {m.rule}")
    return rc
