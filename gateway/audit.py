"""The decision log: one JSON event per decision, to stdout (journald) and ``log.audit_file``.

The schema is closed: an event may carry only the fields listed in ``FIELDS`` (Elastic Common
Schema names where one exists), and none of them holds message content. Subjects, bodies,
attachment names and matched PHI never reach this module; a field outside the schema is a
programming error and raises. Library loggers (aiosmtpd's ``mail.log`` prints senders and
whole command lines) are silenced, and Python tracebacks are reduced to the exception type.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import structlog

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
    "service.state": (str,),
    "admin.reason": (str,),
    "body.8bit": (bool,),
    "listen.address": (str,),
    "count": (int,),
    "portal.id": (str,),
    "portal.expires": (str,),
    "portal.attachment": (int,),
    "portal.failures": (int,),
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

    One write per line keeps lines whole when several worker processes share the file.
    """

    def __init__(self, path: Path | None, stdout: bool) -> None:
        self._fds: list[int] = []
        if stdout:
            self._fds.append(sys.stdout.fileno())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fds.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
        self._own = self._fds[1:] if stdout else list(self._fds)

    def msg(self, line: str) -> None:
        data = (line + "\n").encode("utf-8", "replace")
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


class AuditLog:
    """Structured, schema-checked event log."""

    def __init__(self, path: Path | None, stdout: bool = True,
                 extra: Mapping[str, Any] | None = None) -> None:
        self._writer = _Writer(path, stdout)
        self.path = path
        self._extra = dict(extra or {})
        self._log = structlog.wrap_logger(
            self._writer,
            processors=[_validate, structlog.processors.JSONRenderer(serializer=_dumps)],
            wrapper_class=structlog.BoundLogger,
            cache_logger_on_first_use=True,
        )

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
