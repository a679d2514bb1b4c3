"""``phigate audit verify|search``: check the audit log's hash chain, and show the decision
trail of a message. Added to the ``phigate`` command through :func:`add_parsers`; :func:`run`
takes the parsed arguments and the loaded configuration and returns the exit status.

``verify`` walks the chain (see ``gateway.audit.AuditChain``) and stops at the first line that
does not fit, saying what is wrong with it: edited (its MAC does not match its content, but the
next event still follows it), inserted (the next event follows the one before it), deleted (a
gap in the sequence numbers), reordered or duplicated (a number out of place). Several files
(rotation) are put in order and must link up: each file's first event carries the previous
file's last MAC. For the live file, the state file written beside it tells whether events were
cut from the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audit import GENESIS, chain_mac, load_or_create_key, read_state, split_chained
from .config import Config

Common = Callable[[argparse.ArgumentParser], None]


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
                common: Common) -> None:
    """Add ``audit verify`` and ``audit search``."""
    a = subparsers.add_parser("audit", help="verify the audit log; search a message's trail")
    asub = a.add_subparsers(dest="action", required=True)
    p = asub.add_parser(
        "verify", help="check the audit log's hash chain (exit 1 at the first broken event)",
        description="Without FILE: the configured log.audit_file and its rotated files.")
    common(p)
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help="audit files (rotated and .gz files too); put in chain order")
    p = asub.add_parser("search", help="the decision trail of a message, or events in a window")
    common(p)
    p.add_argument("--queue-id", help="a queue id (email.local_id); bounces and portal "
                   "events that refer to it are followed")
    p.add_argument("--sender", help="every message from this envelope sender")
    p.add_argument("--since",
                   help="ISO time (2025-01-31, 2025-01-31T08:00Z) or an age (30m, 2h, 7d)")
    p.add_argument("--until", help="the same forms as --since")
    p.add_argument("--file", dest="files", action="append", type=Path, default=[],
                   help="search these files instead of log.audit_file and its rotated files")
    p.add_argument("--json", action="store_true", help="the events as JSON lines")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "verify":
        return cmd_verify(args, cfg)
    if args.action == "search":
        return cmd_search(args, cfg)
    return 2


# --------------------------------------------------------------------------- files


_ROTATED = re.compile(r"^(?P<stem>[^.]+)\.\d{8}T\d{6}Z(-\d+)?(?P<suffix>\..*)$")


def audit_files(path: Path) -> list[Path]:
    """The live audit file and its rotated copies in the same folder: ours
    (``audit.20250131T080000Z.jsonl``) and logrotate's (``audit.jsonl.1``, ``audit.jsonl-2025…``,
    compressed or not)."""
    stem, _, suffix = path.name.partition(".")
    out: list[Path] = []
    if not path.parent.is_dir():
        return out
    for p in path.parent.iterdir():
        name = p.name
        if name.endswith((".state", ".tmp", ".key")) or not p.is_file():
            continue
        m = _ROTATED.match(name.removesuffix(".gz"))
        if name == path.name or name.startswith(path.name + ".") or \
                name.startswith(path.name + "-") or \
                (m is not None and m["stem"] == stem and m["suffix"] == "." + suffix):
            out.append(p)
    return out


def read_lines(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _first_event(path: Path) -> tuple[str, int]:
    """Sort key: the first chained event's timestamp and sequence number."""
    try:
        lines = read_lines(path)
    except (OSError, EOFError, gzip.BadGzipFile):
        return ("", 0)
    for line in lines:
        obj = _parse(line)
        if obj is not None and isinstance(obj.get("log.seq"), int):
            return (str(obj.get("@timestamp", "")), int(obj["log.seq"]))
    return ("", 0)


def chain_order(files: Sequence[Path]) -> list[Path]:
    return sorted(files, key=_first_event)


# --------------------------------------------------------------------------- verify


@dataclass
class Problem:
    file: Path
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@dataclass
class FileSummary:
    file: Path
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    last_mac: str = ""
    prev_file: str | None = None
    genesis: bool = False
    notes: list[str] = field(default_factory=list)


def _seq(line: bytes) -> int | None:
    obj = _parse(line)
    seq = obj.get("log.seq") if obj else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _follows(key: bytes, prev_mac: str, line: bytes | None) -> bool:
    parts = split_chained(line) if line is not None else None
    return parts is not None and chain_mac(key, prev_mac, parts[0]) == parts[1]


def verify_file(path: Path, key: bytes,
                before: FileSummary | None) -> tuple[FileSummary, Problem | None]:
    """Walk one file's chain; ``before`` is the file that precedes it, if being checked."""
    summary = FileSummary(path)
    try:
        lines = read_lines(path)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        return summary, Problem(path, 0, f"cannot read: {exc}")
    if not lines:
        summary.notes.append("empty")
        return summary, None
    anchor = ""
    last_seq = 0
    for i, line in enumerate(lines, 1):
        parts = split_chained(line)
        obj = _parse(line)
        if parts is None:
            what = "not JSON" if obj is None else "no log.mac"
            return summary, Problem(path, i, f"not a chained event ({what}): a line was "
                                             "inserted or edited, or written without the chain")
        body, mac = parts
        seq = obj.get("log.seq") if obj is not None else None
        if obj is None or not isinstance(seq, int) or isinstance(seq, bool):
            return summary, Problem(path, i, "edited: the line is no longer a valid event "
                                             "(unparseable JSON or no log.seq)")
        prev_mac = obj.get("log.prev_mac")
        if i == 1:
            if not isinstance(prev_mac, str):
                return summary, Problem(
                    path, 1, f"the file starts at event {seq} without a link to the file "
                             "before it: its first lines were deleted")
            anchor = prev_mac
            summary.first_seq = seq
            summary.genesis = prev_mac == GENESIS
            pf = obj.get("log.prev_file")
            summary.prev_file = pf if isinstance(pf, str) else None
            if before is not None:
                problem = _check_link(path, before, seq, prev_mac)
                if problem:
                    return summary, problem
            elif not summary.genesis:
                name = summary.prev_file or "an earlier file"
                summary.notes.append(f"continues {name} at event {seq} (link not checked: "
                                     "pass that file too)")
        elif prev_mac is not None:
            why = ("a new chain starts here (lines before it were replaced, or the writer lost "
                   "its key and state)" if prev_mac == GENESIS else
                   "a file's first event in the middle of a file (files joined, or a line "
                   "inserted)")
            return summary, Problem(path, i, why)
        if chain_mac(key, anchor, body) != mac:
            return summary, Problem(path, i, _diagnose(key, lines, i, seq, last_seq, anchor, mac))
        if i > 1 and seq != last_seq + 1:  # a valid MAC with a wrong number: not our writer
            return summary, Problem(path, i, f"event {seq} follows event {last_seq}")
        anchor, last_seq = mac, seq
        summary.events += 1
    summary.last_seq, summary.last_mac = last_seq, anchor
    return summary, None


def _diagnose(key: bytes, lines: list[bytes], i: int, seq: int, last_seq: int,
              anchor: str, mac: str) -> str:
    """Why line ``i`` (1-based) does not follow the line before it."""
    nxt = lines[i] if i < len(lines) else None
    if i > 1 and seq > last_seq + 1:
        for j in range(i, len(lines)):
            later = _seq(lines[j])
            if later is not None and last_seq < later < seq:
                return (f"reordered: event {seq} comes after event {last_seq}; event {later} "
                        f"is further down, at line {j + 1}")
        gap = (f"event {last_seq + 1} is" if seq == last_seq + 2 else
               f"events {last_seq + 1}..{seq - 1} are")
        return f"deleted: {gap} missing before this line"
    if i > 1 and seq <= last_seq:
        for j in range(i - 1):
            if _seq(lines[j]) == seq:
                return (f"inserted: event {seq} appears again (first at line {j + 1}); "
                        "a copy was inserted or lines were reordered")
        return f"reordered: event {seq} comes after event {last_seq}"
    if _follows(key, mac, nxt):
        return "edited: the MAC does not match the event's content"
    if _follows(key, anchor, nxt):
        return "inserted: this event is not part of the chain (the next event follows the " \
               "one before it)"
    if nxt is None:
        return "edited or forged: the MAC does not match the event's content"
    return "edited or inserted: the MAC does not match the event's content"


def _check_link(path: Path, before: FileSummary, seq: int, prev_mac: str) -> Problem | None:
    if prev_mac == GENESIS:
        return Problem(path, 1, f"a new chain starts here instead of continuing {before.file} "
                                f"(which ends at event {before.last_seq})")
    if seq > before.last_seq + 1:
        return Problem(path, 1, f"deleted: events {before.last_seq + 1}..{seq - 1} are missing "
                                f"between {before.file} and this file")
    if seq <= before.last_seq or prev_mac != before.last_mac:
        return Problem(path, 1, f"does not continue {before.file} (which ends at event "
                                f"{before.last_seq}): the end of that file was cut or "
                                "replaced, or the files are from different chains")
    return None


def verify(files: Sequence[Path], key: bytes,
           live: Path | None = None) -> tuple[list[FileSummary], Problem | None]:
    """Verify files in chain order; ``live`` is the configured audit file, whose state file
    tells how far the chain went (so cutting the last events off is found too)."""
    summaries: list[FileSummary] = []
    before: FileSummary | None = None
    for path in chain_order(files):
        summary, problem = verify_file(path, key, before)
        summaries.append(summary)
        if problem is not None:
            return summaries, problem
        if summary.events:
            before = summary
    if live is not None and before is not None:
        problem = _check_end(live, summaries)
        if problem is not None:
            return summaries, problem
    return summaries, None


def _check_end(live: Path, summaries: list[FileSummary]) -> Problem | None:
    state = read_state(live)
    if state is None:
        return None
    for s in summaries:
        try:
            st = s.file.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) != (state.dev, state.ino):
            continue
        if state.seq > s.last_seq:
            return Problem(s.file, s.events + 1,
                           f"deleted: the file ends at event {s.last_seq}, but the gateway "
                           f"wrote up to event {state.seq} (the last events were cut off)")
        if state.seq == s.last_seq and state.mac != s.last_mac:
            return Problem(s.file, s.events, "the last event is not the one the gateway wrote")
    return None


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    key_file = cfg.log.hmac_key_file
    key = load_or_create_key(key_file, create=False)
    if key_file.stat().st_mode & 0o077:
        print(f"warning: {key_file} is readable by others; chmod 600 it", file=sys.stderr)
    files = list(args.files) or audit_files(cfg.log.audit_file)
    if not files:
        print(f"{cfg.log.audit_file}: no audit file", file=sys.stderr)
        return 1
    live = cfg.log.audit_file if cfg.log.audit_file.exists() else None
    summaries, problem = verify(files, key, live)
    for s in summaries:
        if problem is not None and s.file == problem.file:
            break
        span = f"events {s.first_seq}..{s.last_seq}" if s.events else "no events"
        notes = "".join(f"; {n}" for n in s.notes)
        print(f"{s.file}: {s.events} event(s), {span}, intact{notes}")
    if problem is not None:
        print(str(problem))
        return 1
    total = sum(s.events for s in summaries)
    print(f"ok: {total} event(s) in {len(summaries)} file(s), chain intact")
    return 0


# --------------------------------------------------------------------------- search


_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or an age such as ``2h``."""
    now = now or dt.datetime.now(dt.UTC)
    m = _AGE.match(text.strip())
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
        return now - dt.timedelta(seconds=float(m[1]) * mult)
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"'{text}': expected an ISO time (2025-01-31T08:00Z) or an age "
                         "(30m, 2h, 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _when(ev: dict[str, Any]) -> dt.datetime | None:
    with_ts = ev.get("@timestamp")
    try:
        return dt.datetime.fromisoformat(str(with_ts))
    except ValueError:
        return None


def events(files: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """The events of the files, in chain order; unreadable lines are skipped (``verify`` is
    the command that reports them)."""
    for path in chain_order(files):
        try:
            lines = read_lines(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        for line in lines:
            obj = _parse(line)
            if obj is not None:
                yield obj


_LINK_KEYS = ("email.local_id", "related.local_id", "portal.id")


def trail(evs: Sequence[dict[str, Any]], queue_ids: set[str] | None,
          sender: str | None) -> list[dict[str, Any]]:
    """The events of the given messages (or of every message from ``sender``), following
    bounces (``related.local_id``) and portal pickups (``portal.id``)."""
    ids: set[str] = set(queue_ids or ())
    direct: list[int] = []
    if sender:
        want = sender.lower()
        for n, ev in enumerate(evs):
            if str(ev.get("email.from.address", "")).lower() == want:
                direct.append(n)
                if ev.get("email.local_id"):
                    ids.add(str(ev["email.local_id"]))
    linked: set[str] = set(ids)
    changed = True
    while changed:  # a bounce of a portal notification links two hops away
        changed = False
        for ev in evs:
            keys = {str(ev[k]) for k in _LINK_KEYS if ev.get(k)}
            if keys & linked and not keys <= linked:
                linked |= keys
                changed = True
    keep = set(direct)
    for n, ev in enumerate(evs):
        if any(ev.get(k) and str(ev[k]) in linked for k in _LINK_KEYS):
            keep.add(n)
    return [evs[n] for n in sorted(keep)]


_SHOWN_FIRST = ("event.outcome", "email.local_id", "related.local_id", "email.from.address",
                "email.to.address", "verdict.action", "verdict.rule", "smtp.code")


def _human(ev: dict[str, Any]) -> str:
    parts = [str(ev.get("@timestamp", "?")), str(ev.get("event.action", "?"))]
    rest = {k: v for k, v in ev.items()
            if k not in ("@timestamp", "event.action") and not k.startswith("log.")}
    ordered = [k for k in _SHOWN_FIRST if k in rest] + [k for k in rest if k not in _SHOWN_FIRST]
    for k in ordered:
        v = rest[k]
        text = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        parts.append(f"{k}={text}")
    return "  ".join(parts)


def cmd_search(args: argparse.Namespace, cfg: Config) -> int:
    if not (args.queue_id or args.sender or args.since):
        print("say what to search for: --queue-id ID, --sender ADDRESS or --since TIME",
              file=sys.stderr)
        return 2
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return 2
    files = list(args.files) or audit_files(cfg.log.audit_file)
    evs = list(events(files))
    if since or until:
        def inside(ev: dict[str, Any]) -> bool:
            when = _when(ev)
            return when is not None and (since is None or when >= since) and \
                (until is None or when <= until)
        evs = [ev for ev in evs if inside(ev)]
    if args.queue_id or args.sender:
        evs = trail(evs, {args.queue_id} if args.queue_id else None, args.sender)
    for ev in evs:
        print(json.dumps(ev, ensure_ascii=False, separators=(",", ":")) if args.json
              else _human(ev))
    if not args.json:
        print(f"-- {len(evs)} event(s)", file=sys.stderr)
    return 0 if evs else 1
