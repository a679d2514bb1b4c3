"""Durable queue on disk, in the manner of Postfix's queue directories.

Layout under the spool root::

    tmp/        files being written (never read; cleared at start-up)
    incoming/   accepted, waiting for a delivery worker
    active/     claimed by a delivery worker (moved back to incoming at start-up)
    deferred/   waiting for the next attempt
    hold/       quarantined or held by an admin
    corrupt/    unreadable queue files, kept for inspection
    status/     per-message delivery progress (``ID.json``), absent until the first attempt

A queue file is ``PHIGATE1 <n>\\n`` + a JSON header of n bytes (envelope, verdict) + ``\\n`` +
the message bytes, written once: temp file, fsync, rename, fsync of the directory. Only then may
the SMTP side answer 250. Moving between states is a rename, so a file is always in exactly one
state, and a rename is also how a worker claims a message: of two processes renaming the same
file, one wins and the other gets ENOENT.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .model import DeliveryStatus, Envelope, SpoolEntry, Verdict

STATES = ("incoming", "active", "deferred", "hold", "corrupt")
MAGIC = b"PHIGATE1 "


class SpoolError(Exception):
    """A queue file could not be read back."""


def new_queue_id() -> str:
    """Time-ordered, unique across processes: microseconds then 24 random bits."""
    return f"{time.time_ns() // 1000:014X}{secrets.token_hex(3).upper()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Header:
    queue_id: str
    envelope: Envelope
    verdict: Verdict
    kind: str
    created: float


def _encode_header(h: Header) -> bytes:
    return json.dumps(
        {
            "queue_id": h.queue_id,
            "envelope": h.envelope.to_json(),
            "verdict": h.verdict.to_json(),
            "kind": h.kind,
            "created": h.created,
        },
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")


def _read_header(f: BinaryIO) -> tuple[Header, int]:
    first = f.readline(64)
    if not first.startswith(MAGIC) or not first.endswith(b"\n"):
        raise SpoolError("not a phigate queue file")
    try:
        n = int(first[len(MAGIC) : -1])
        raw = f.read(n)
        if len(raw) != n or f.read(1) != b"\n":
            raise SpoolError("truncated header")
        d = json.loads(raw)
        header = Header(
            queue_id=str(d["queue_id"]),
            envelope=Envelope.from_json(d["envelope"]),
            verdict=Verdict.from_json(d["verdict"]),
            kind=str(d.get("kind", "message")),
            created=float(d.get("created", 0.0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SpoolError(f"bad header: {type(exc).__name__}") from None
    return header, len(first) + n + 1


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        for d in ("tmp", "status", *STATES):
            (self.root / d).mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, state: str, queue_id: str) -> Path:
        return self.root / state / queue_id

    def _status_path(self, queue_id: str) -> Path:
        return self.root / "status" / f"{queue_id}.json"

    # ------------------------------------------------------------------ writing

    def store(
        self,
        envelope: Envelope,
        verdict: Verdict,
        message: bytes,
        *,
        state: str = "incoming",
        kind: str = "message",
        queue_id: str | None = None,
        now: float | None = None,
    ) -> str:
        """Write a message durably and return its queue id. Raises OSError on failure,
        leaving nothing behind in any state directory."""
        qid = queue_id or new_queue_id()
        header = _encode_header(
            Header(qid, envelope, verdict, kind, time.time() if now is None else now)
        )
        tmp = self.root / "tmp" / f"{qid}.{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(b"".join((MAGIC, str(len(header)).encode(), b"\n", header,
                                            b"\n", message)))
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path(state, qid))
            _fsync_dir(self.root / state)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return qid

    def set_status(self, queue_id: str, status: DeliveryStatus) -> None:
        path = self._status_path(queue_id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        data = json.dumps(status.to_json(), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)

    # ------------------------------------------------------------------ reading

    def read_header(self, state: str, queue_id: str) -> Header:
        with open(self.path(state, queue_id), "rb") as f:
            return _read_header(f)[0]

    def read_message(self, state: str, queue_id: str) -> bytes:
        with open(self.path(state, queue_id), "rb") as f:
            _, offset = _read_header(f)
            f.seek(offset)
            return f.read()

    def status(self, queue_id: str, recipients: tuple[str, ...]) -> DeliveryStatus:
        try:
            raw = self._status_path(queue_id).read_bytes()
        except FileNotFoundError:
            return DeliveryStatus.fresh(recipients)
        try:
            return DeliveryStatus.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            return DeliveryStatus.fresh(recipients)

    def entry(self, state: str, queue_id: str) -> SpoolEntry:
        path = self.path(state, queue_id)
        with open(path, "rb") as f:
            header, offset = _read_header(f)
            size = os.fstat(f.fileno()).st_size - offset
        pending = header.envelope.rcpt_tos
        return SpoolEntry(
            queue_id=queue_id,
            envelope=header.envelope,
            verdict=header.verdict,
            state=state,
            status=self.status(queue_id, pending),
            size=size,
            kind=header.kind,
        )

    def ids(self, state: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.root / state) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def entries(self, states: tuple[str, ...] = STATES) -> Iterator[SpoolEntry]:
        for state in states:
            for qid in self.ids(state):
                try:
                    yield self.entry(state, qid)
                except FileNotFoundError:
                    continue  # moved while we listed
                except SpoolError:
                    self.quarantine_corrupt(state, qid)

    def find(self, queue_id: str) -> str | None:
        if not queue_id or "/" in queue_id or queue_id.startswith("."):
            return None
        for state in STATES:
            if self.path(state, queue_id).exists():
                return state
        return None

    def count(self, state: str) -> int:
        return len(self.ids(state))

    # ------------------------------------------------------------------ moving

    def move(self, queue_id: str, src: str, dst: str) -> bool:
        """Rename between states. False if the file was not in ``src`` (someone else moved
        it): this is how concurrent workers claim messages."""
        try:
            os.rename(self.path(src, queue_id), self.path(dst, queue_id))
        except FileNotFoundError:
            return False
        return True

    def claim(self, queue_id: str, src: str) -> bool:
        return self.move(queue_id, src, "active")

    def requeue_stale(self, older_than: float, now: float | None = None) -> int:
        """Hand back to incoming what has sat in ``active/`` too long: its worker process
        died. A rename updates the inode's ctime, so ctime is when it was claimed."""
        now = time.time() if now is None else now
        n = 0
        for qid in self.ids("active"):
            try:
                claimed = os.stat(self.path("active", qid)).st_ctime
            except FileNotFoundError:
                continue
            if now - claimed > older_than and self.move(qid, "active", "incoming"):
                n += 1
        return n

    def remove(self, queue_id: str, state: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(state, queue_id))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._status_path(queue_id))

    def quarantine_corrupt(self, state: str, queue_id: str) -> None:
        self.move(queue_id, state, "corrupt")

    def recover(self) -> dict[str, Any]:
        """At start-up (before any worker runs): clear half-written temp files and hand every
        message that was being delivered back to incoming. Returns counts for the log."""
        self.ensure()
        removed = 0
        for name in os.listdir(self.root / "tmp"):
            with contextlib.suppress(OSError):
                os.unlink(self.root / "tmp" / name)
                removed += 1
        for name in os.listdir(self.root / "status"):
            if ".tmp" in name:
                with contextlib.suppress(OSError):
                    os.unlink(self.root / "status" / name)
        requeued = 0
        for qid in self.ids("active"):
            if self.move(qid, "active", "incoming"):
                requeued += 1
        corrupt = 0
        for state in ("incoming", "deferred", "hold"):
            for qid in self.ids(state):
                try:
                    with open(self.path(state, qid), "rb") as f:
                        _read_header(f)
                except SpoolError:
                    self.quarantine_corrupt(state, qid)
                    corrupt += 1
                except FileNotFoundError:
                    continue
        _fsync_dir(self.root / "incoming")
        return {"tmp_removed": removed, "requeued": requeued, "corrupt": corrupt}
