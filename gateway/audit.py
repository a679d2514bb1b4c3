"""The decision log: one JSON event per decision, to stdout (journald) and ``log.audit_file``.

The schema is closed: an event may carry only the fields listed in ``FIELDS`` (Elastic Common
Schema names where one exists), and none of them holds message content. Subjects, bodies,
attachment names and matched PHI never reach this module; a field outside the schema is a
programming error and raises. Library loggers (aiosmtpd's ``mail.log`` prints senders and
whole command lines) are silenced, and Python tracebacks are reduced to the exception type.

Every line of the audit file is chained (see ``AuditChain``): it carries a sequence number and
an HMAC-SHA256 over its own bytes and the previous line's MAC, so ``phigate audit verify`` finds
an edited, deleted, inserted or reordered event. Several processes append to one file; an
``flock`` on a small state file beside it serialises "read the last MAC, append, record".
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .config import ConfigError, LogConfig

# Field name -> allowed Python types. Free text about a message has no field to go in.
FIELDS: dict[str, tuple[type, ...]] = {
    "event.action": (str,),
    "event.outcome": (str,),
    "event.reason": (str,),
    "email.local_id": (str,),
    "related.local_id": (str,),
    "email.from.address": (str,),
    "email.to.address": (list, str),
    "email.size": (int,),
    "email.message_id_hash": (str,),
    "email.attachments.count": (int,),
    "source.ip": (str,),
    "source.port": (int,),
    "client.helo": (str,),
    "user.name": (str,),
    "listener": (str,),
    "destination.domain": (str,),
    "destination.address": (str,),
    "destination.ip": (str,),
    "destination.port": (int,),
    "tls.established": (bool,),
    "tls.version": (str,),
    "tls.cipher": (str,),
    "tls.required": (str,),
    "tls.policy_source": (str,),
    "tls.failure": (str,),
    "smtp.code": (int,),
    "smtp.enhanced": (str,),
    "smtp.reply": (str,),
    "smtp.stage": (str,),
    "auth.mechanism": (str,),
    "auth.failures": (int,),
    "verdict.action": (str,),
    "verdict.rule": (str,),
    "verdict.recipients": (list,),
    "verdict.monitor": (list,),
    "phi.detected": (bool,),
    "phi.findings": (list,),
    "queue.state": (str,),
    "queue.attempt": (int,),
    "queue.next_attempt": (str,),
    "queue.age": (float, int),
    "queue.count": (int,),
    "delivery.duration": (float,),
    "error.type": (str,),
    "config.file": (str,),
    "config.problems": (list,),
    "process.pid": (int,),
    "process.worker": (int,),
    "process.exit_code": (int,),
    "process.exit_signal": (str, int),
    "process.restart_delay": (float,),
    "error.location": (str,),
    "service.state": (str,),
    "admin.reason": (str,),
    "body.8bit": (bool,),
    "listen.address": (str,),
    "count": (int,),
    "portal.id": (str,),
    "portal.expires": (str,),
    "portal.attachment": (int,),
    "portal.failures": (int,),
    "ratelimit.scope": (str,),
    "ratelimit.metric": (str,),
    "ratelimit.window": (str,),
    "ratelimit.limit": (int,),
    "ratelimit.group": (str,),
    "ratelimit.selector": (str,),
    "ratelimit.backend": (str,),
    "ratelimit.on_error": (str,),
    "anomaly.score": (float, int),
    "anomaly.band": (float, int),
    "anomaly.actions": (list,),
    "anomaly.features": (dict,),
    "encrypt.method": (str,),  # pgp | smime
    "encrypt.key_fingerprint": (str,),  # OpenPGP fingerprint or certificate SHA-256
    "encrypt.algorithm": (str,),  # openpgp | aes-256-gcm | aes-256-cbc
    "encrypt.signed": (bool,),
    "encrypt.key_source": (str,),  # keyring | smime_dir | wkd
    "encrypt.key_problem": (str,),  # none | expired | revoked | unusable | error
}

# Remote SMTP replies can quote an address back; they never carry our message content,
# but we still bound their length so a hostile peer cannot fill the log.
_MAX_TEXT = 300


class SchemaError(ValueError):
    """An event used a field that the audit schema does not have."""


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _validate(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    action = event.pop("event")
    out: dict[str, Any] = {"@timestamp": _now_iso(), "event.action": action}
    for key, value in event.items():
        allowed = FIELDS.get(key)
        if allowed is None:
            raise SchemaError(f"audit field '{key}' is not in the schema")
        if value is None:
            continue
        if not isinstance(value, allowed):
            raise SchemaError(f"audit field '{key}' has type {type(value).__name__}")
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            value = value[:_MAX_TEXT]
        out[key] = value
    return out


class _Writer:
    """Writes each rendered line with one ``write()`` on O_APPEND descriptors.

    One write per line keeps lines whole when several worker processes share the file. With a
    chain, the file line is written by the chain (under its lock) and stdout gets the same line.
    """

    def __init__(self, path: Path | None, stdout: bool, chain: AuditChain | None = None) -> None:
        self._fds: list[int] = []
        self._chain = chain
        if stdout:
            self._fds.append(sys.stdout.fileno())
        if path is not None and chain is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fds.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
        self._own = self._fds[1:] if stdout else list(self._fds)

    def msg(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "replace")
        if self._chain is not None:
            with contextlib.suppress(OSError):  # as below: stdout still gets the event
                data = self._chain.append(data)
        for fd in self._fds:
            try:
                os.write(fd, data)
            except OSError:
                # A full disk or closed stdout must not take the gateway down; the other
                # sink still receives the event.
                continue

    def close(self) -> None:
        for fd in self._own:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if self._chain is not None:
            self._chain.close()


class AuditLog:
    """Structured, schema-checked event log."""

    def __init__(self, path: Path | None, stdout: bool = True,
                 extra: Mapping[str, Any] | None = None, *, key_file: Path | None = None,
                 rotate_size: int = 0) -> None:
        chain = None
        if path is not None:
            key = load_or_create_key(key_file or default_key_file(path))
            chain = AuditChain(path, key, rotate_size)
        self._writer = _Writer(path, stdout, chain)
        self.path = path
        self._extra = dict(extra or {})
        # called with (action, fields) after each logged event; must not raise (gateway.metrics)
        self.observers: list[Callable[[str, Mapping[str, Any]], None]] = []
        self._log = structlog.wrap_logger(
            self._writer,
            processors=[_validate, structlog.processors.JSONRenderer(serializer=_dumps)],
            wrapper_class=structlog.BoundLogger,
            cache_logger_on_first_use=True,
        )

    @classmethod
    def from_config(cls, log: LogConfig, stdout: bool | None = None,
                    extra: Mapping[str, Any] | None = None) -> AuditLog:
        """The audit log as configured (``log.*``); ``stdout=False`` for commands."""
        return cls(log.audit_file, log.stdout if stdout is None else stdout, extra,
                   key_file=log.hmac_key_file, rotate_size=log.rotate_size)

    def bind(self, **extra: Any) -> None:
        self._extra.update(extra)

    def emit(self, action: str, fields: Mapping[str, Any] | None = None, /, **kw: Any) -> None:
        """Log one event. ``fields`` uses ECS dotted names; keywords are a shorthand where
        ``__`` stands for a dot (``source__ip="..."``)."""
        event: dict[str, Any] = dict(self._extra)
        if fields:
            event.update(fields)
        for key, value in kw.items():
            event[key.replace("__", ".")] = value
        self._log.msg(action, **event)
        for observe in self.observers:
            observe(action, event)

    def close(self) -> None:
        self._writer.close()


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


class _SanitisingHandler(logging.Handler):
    """Routes stray library log records into the schema, keeping only where and what type."""

    def __init__(self, emit: Callable[..., None]) -> None:
        super().__init__(logging.WARNING)
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        err = record.exc_info[1] if record.exc_info else None
        with contextlib.suppress(Exception):  # logging must never raise into the caller
            self._emit(
                "internal.log",
                {
                    "event.outcome": "failure" if record.levelno >= logging.ERROR else "unknown",
                    "event.reason": f"{record.name}:{record.levelname}",
                    "error.type": type(err).__name__ if err else None,
                },
            )


def configure_stdlib_logging(audit: AuditLog) -> None:
    """Silence libraries that log content (aiosmtpd's ``mail.log`` logs whole SMTP lines)
    and turn any other warning into a content-free schema event."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_SanitisingHandler(audit.emit))
    root.setLevel(logging.WARNING)
    for name in ("mail.log", "aiosmtpd", "mail"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = False
        lg.disabled = True


# --------------------------------------------------------------------------- hash chain

GENESIS = "0" * 64  # the "previous MAC" of the first event of a new chain
MAC_FIELD = b',"log.mac":"'
_MAC_TAIL = len(MAC_FIELD) + 64 + 2  # ,"log.mac":"<64 hex>"}
_STATE_SIZE = 256
_TAIL_READ = 65536


class AuditKeyError(ConfigError):
    """The audit chain's key cannot be read or created."""


def default_key_file(audit_file: Path) -> Path:
    """``log.hmac_key_file``'s default for a caller that passes only the audit file:
    ``<var>/audit.key`` when the file is in ``<var>/log/`` (the default), else beside it.
    Use ``AuditLog.from_config`` to honour a configured key file."""
    parent = audit_file.parent
    return (parent.parent if parent.name == "log" else parent) / "audit.key"


def load_or_create_key(path: Path, create: bool = True) -> bytes:
    """The chain key (32 random bytes, hex, mode 0600), created on first use. Concurrent first
    starts agree on one key: each writes a temporary file and the first ``link()`` wins."""
    try:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            if not create:
                raise AuditKeyError([f"{path}: no audit log key here (log.hmac_key_file); "
                                     "restore it from the backup"]) from None
            text = _create_key(path)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not text"
        raise AuditKeyError([f"{path}: cannot read the audit log key: {why} (run the command "
                             "as the gateway's user, or set log.hmac_key_file)"]) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise AuditKeyError([f"{path}: not an audit log key (expected 64 hex digits); restore "
                             "it from the backup, or move it away to start a new chain"])
    return key


def _create_key(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = os.urandom(32).hex()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (text + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        text = path.read_text(encoding="ascii").strip()
    finally:
        os.unlink(tmp)
    return text


def chain_mac(key: bytes, prev_mac: str, body: bytes) -> str:
    """The MAC of one line: over the previous MAC and the line's bytes up to its own MAC."""
    return hmac.new(key, prev_mac.encode("ascii") + b"\n" + body, hashlib.sha256).hexdigest()


def split_chained(line: bytes) -> tuple[bytes, str] | None:
    """``(body, mac)`` of a chained line (without its newline), or None if it carries no MAC."""
    if len(line) <= _MAC_TAIL or not line.endswith(b'"}'):
        return None
    if line[-_MAC_TAIL:-66] != MAC_FIELD:
        return None
    mac = line[-66:-2].decode("ascii", "replace")
    if any(c not in "0123456789abcdef" for c in mac):
        return None
    return line[:-_MAC_TAIL], mac


def state_file(audit_file: Path) -> Path:
    """The chain's lock and state file beside the audit file (never rotated)."""
    return audit_file.with_name(audit_file.name + ".state")


@dataclass(frozen=True)
class ChainState:
    """What the last writer appended: which file (device, inode), its size, seq and MAC."""

    dev: int
    ino: int
    size: int
    seq: int
    mac: str

    def encode(self) -> bytes:
        text = f"v1 {self.dev} {self.ino} {self.size} {self.seq} {self.mac}"
        return text.ljust(_STATE_SIZE - 1).encode("ascii") + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> ChainState | None:
        parts = data.decode("ascii", "replace").split()
        if len(parts) != 6 or parts[0] != "v1" or not all(p.isdigit() for p in parts[1:5]):
            return None
        return cls(int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]), parts[5])


def read_state(audit_file: Path) -> ChainState | None:
    try:
        return ChainState.decode(state_file(audit_file).read_bytes()[:_STATE_SIZE])
    except OSError:
        return None


def last_chained(path: Path) -> tuple[int, str] | None:
    """``(seq, mac)`` of the last chained line of a file, read from its tail."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _TAIL_READ))
            tail = f.read()
    except OSError:
        return None
    for line in reversed(tail.split(b"\n")):
        parts = split_chained(line)
        if parts is None:
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            seq = json.loads(line)["log.seq"]
            if isinstance(seq, int):
                return seq, parts[1]
    return None


class AuditChain:
    """Appends chained lines to the audit file; safe across threads and processes.

    Under an exclusive ``flock`` on the state file: find the previous line's seq and MAC (from
    the state file when it describes the current file, else from the file's tail after a
    crash), notice a file that was moved away (logrotate) or truncated, rotate by size if asked,
    append the line with one ``write()``, record the new state. The first line of every file
    names the previous file and carries its last MAC (``log.prev_file``, ``log.prev_mac``), so
    the chain continues across files.
    """

    def __init__(self, path: Path, key: bytes, rotate_size: int = 0) -> None:
        self.path = path
        self._key = key
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # keyed once, copied per line
        self._state_raw = b""  # the state as this process last wrote it, and decoded
        self._state: ChainState | None = None
        self._rotate_size = rotate_size
        self._lock = threading.Lock()
        self._fd = -1
        self._sfd = -1
        self._smap: mmap.mmap | None = None  # the state, shared: no syscall to read or write it
        self._pid = -1
        self._file_id = (0, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        self.close()
        self._sfd = os.open(state_file(self.path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        fcntl.flock(self._sfd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._sfd).st_size < _STATE_SIZE:
                os.ftruncate(self._sfd, _STATE_SIZE)
        finally:
            fcntl.flock(self._sfd, fcntl.LOCK_UN)
        self._smap = mmap.mmap(self._sfd, _STATE_SIZE)
        self._state_raw = b""
        self._open_file()
        self._pid = os.getpid()

    def _open_file(self) -> os.stat_result:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o640)
        st = os.fstat(self._fd)
        self._file_id = (st.st_dev, st.st_ino)
        return st

    def close(self) -> None:
        if self._smap is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._smap.close()
            self._smap = None
        for fd in (self._fd, self._sfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._sfd = -1

    def append(self, data: bytes) -> bytes:
        """Chain and append one rendered event (a JSON object and a newline); returns the
        line as written."""
        if not data.endswith(b"}\n"):
            raise ValueError("an audit line must be one JSON object")
        with self._lock:
            if self._pid != os.getpid():  # forked: a shared descriptor would share the flock
                self._open()
            fcntl.flock(self._sfd, fcntl.LOCK_EX)
            try:
                return self._append_locked(data)
            finally:
                fcntl.flock(self._sfd, fcntl.LOCK_UN)

    def _append_locked(self, data: bytes) -> bytes:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._file_id:
            st = self._open_file()  # moved away (logrotate) or deleted: continue in a new file
        assert self._smap is not None
        raw = self._smap[:_STATE_SIZE]
        state = self._state if raw == self._state_raw else ChainState.decode(raw)
        seq, mac, first, prev_file = self._previous(st, state)
        if self._rotate_size and st.st_size and st.st_size + len(data) > self._rotate_size:
            prev_file = self._rotate()
            first = True
            st = os.fstat(self._fd)
        seq += 1
        extra = f',"log.seq":{seq}'
        if first:
            extra += f',"log.prev_mac":"{mac}"'
            if prev_file is not None:
                extra += ',"log.prev_file":' + json.dumps(prev_file)
        body = data[:-2] + extra.encode("ascii")
        h = self._mac.copy()
        h.update(mac.encode("ascii") + b"\n")
        h.update(body)
        new_mac = h.hexdigest()  # == chain_mac(key, mac, body)
        line = body + MAC_FIELD + new_mac.encode("ascii") + b'"}\n'
        written = os.write(self._fd, line)
        self._state = ChainState(st.st_dev, st.st_ino, st.st_size + written, seq, new_mac)
        self._state_raw = self._state.encode()
        self._smap[:_STATE_SIZE] = self._state_raw
        return line

    def _previous(self, st: os.stat_result,
                  state: ChainState | None) -> tuple[int, str, bool, str | None]:
        """``(seq, mac, first line of a file?, previous file's name)`` to chain the next line to."""
        if state is not None and (state.dev, state.ino, state.size) == (
                st.st_dev, st.st_ino, st.st_size):
            return state.seq, state.mac, False, None
        if st.st_size:
            tail = last_chained(self.path)  # a writer died between append and state update
            if tail is not None:
                return tail[0], tail[1], False, None
        if state is None:
            return 0, GENESIS, True, None
        if (state.dev, state.ino) == (st.st_dev, st.st_ino):
            return state.seq, state.mac, True, ""  # truncated in place (copytruncate)
        return state.seq, state.mac, True, self._name_of(state.dev, state.ino)

    def _name_of(self, dev: int, ino: int) -> str | None:
        """Where the previous file went, if it is still in this folder (logrotate's rename)."""
        with contextlib.suppress(OSError), os.scandir(self.path.parent) as it:
            for entry in it:
                if entry.inode() == ino and entry.stat(follow_symlinks=False).st_dev == dev:
                    return entry.name
        return None

    def _rotate(self) -> str:
        stem, dot, suffix = self.path.name.partition(".")
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        n = 0
        while True:
            name = f"{stem}.{stamp}{'-' + str(n) if n else ''}{dot}{suffix}"
            if not (self.path.parent / name).exists():
                break
            n += 1
        os.rename(self.path, self.path.parent / name)
        self._open_file()
        return name
