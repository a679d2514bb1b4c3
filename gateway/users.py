"""SMTP users in ``conf/users.yaml``: argon2id password hashes and the senders each may use.

File format::

    users:
      alice:
        password: "$argon2id$v=19$..."
        senders: [alice@example.org, "@billing.example.org"]
        disabled: false
        locked: true          # set by anomaly detection; cleared by `phigate user unlock`

A sender entry is an address (case-insensitive) or ``@domain`` / ``domain`` for any address
in that domain.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .config import ConfigError, _load_with_lines

_HASHER = PasswordHasher()
# Verified against when the user does not exist, so that timing does not tell who exists.
_DUMMY_HASH = _HASHER.hash("phigate-dummy-password")


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    senders: tuple[str, ...]
    disabled: bool = False
    locked: bool = False  # AUTH refused until `phigate user unlock` (anomaly detection)

    def may_send_as(self, address: str) -> bool:
        addr = address.lower()
        domain = addr.rpartition("@")[2]
        for pattern in self.senders:
            p = pattern.lower()
            if "@" in p and not p.startswith("@"):
                if addr == p:
                    return True
            elif domain == p.lstrip("@"):
                return True
        return False


class UserDB:
    def __init__(self, path: Path, users: dict[str, User], mtime: float = 0.0) -> None:
        self.path = path
        self.users = users
        self.mtime = mtime

    @staticmethod
    def mtime_of(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def fresh(self) -> UserDB:
        """This database, or a newly loaded one when the file changed on disk, so that
        `phigate user disable` takes effect at the next login without a reload. A broken
        file raises ConfigError and the caller keeps the old one."""
        if self.mtime_of(self.path) == self.mtime:
            return self
        return UserDB.load(self.path)

    @classmethod
    def load(cls, path: Path) -> UserDB:
        mtime = cls.mtime_of(path)
        if not mtime:
            return cls(path, {})
        data, lines = _load_with_lines(path.read_text(encoding="utf-8"), str(path))
        problems: list[str] = []

        def where(key: str) -> str:
            return f"{path}:{lines.get(key, 1)}"

        users: dict[str, User] = {}
        if data is None:
            data = {}
        if not isinstance(data, dict) or not isinstance(data.get("users") or {}, dict):
            raise ConfigError([f"{path}:1: expected 'users:' mapping user names to settings"])
        for name, entry in (data.get("users") or {}).items():
            key = f"users.{name}"
            if not isinstance(entry, dict):
                problems.append(f"{where(key)}: {key}: expected a mapping")
                continue
            unknown = set(entry) - {"password", "senders", "disabled", "locked"}
            for u in sorted(unknown):
                problems.append(f"{where(key + '.' + u)}: {key}: unknown key '{u}' "
                                "(expected one of: disabled, locked, password, senders)")
            pw = entry.get("password")
            if not isinstance(pw, str) or not pw.startswith("$argon2"):
                problems.append(f"{where(key)}: {key}.password: expected an argon2 hash "
                                "(set it with: phigate user passwd NAME)")
                continue
            senders = entry.get("senders") or []
            if isinstance(senders, str):
                senders = [senders]
            if not isinstance(senders, list) or not all(isinstance(s, str) for s in senders):
                problems.append(f"{where(key + '.senders')}: {key}.senders: expected a list")
                continue
            users[str(name)] = User(str(name), pw, tuple(senders), bool(entry.get("disabled")),
                                    bool(entry.get("locked")))
        if problems:
            raise ConfigError(problems)
        return cls(path, users, mtime)

    def verify(self, login: str, password: str) -> User | None:
        """Check a password. Slow on purpose (argon2): call it off the event loop."""
        user = self.users.get(login)
        try:
            _HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if user is None or user.disabled:
            return None
        return user

    # ------------------------------------------------------------------ admin

    def set_user(self, name: str, *, password: str | None = None,
                 senders: Iterable[str] | None = None, disabled: bool | None = None,
                 locked: bool | None = None) -> User:
        old = self.users.get(name)
        if old is None and password is None:
            raise KeyError(name)
        user = old or User(name, "", ())
        if password is not None:
            user = replace(user, password_hash=_HASHER.hash(password))
        if senders is not None:
            user = replace(user, senders=tuple(senders))
        if disabled is not None:
            user = replace(user, disabled=disabled)
        if locked is not None:
            user = replace(user, locked=locked)
        self.users[name] = user
        return user

    def save(self) -> None:
        data: dict[str, Any] = {
            "users": {
                u.name: {"password": u.password_hash, "senders": list(u.senders),
                         "disabled": u.disabled, **({"locked": True} if u.locked else {})}
                for u in sorted(self.users.values(), key=lambda u: u.name)
            }
        }
        text = "# phigate SMTP users; manage with `phigate user add|passwd|disable`\n"
        text += yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
