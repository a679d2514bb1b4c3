"""What the pickup portal keeps, and the store interface its backends implement.

Every piece of message content is sealed (AES-256-GCM, see ``portal.crypto``) under a key
derived from the secret in the recipient's link; the store holds only the SHA-256 of that
secret. A copy of the database therefore reveals who wrote to whom and when, never what.
Times are seconds since the epoch from the injected clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Pickup:
    """One stored message for one recipient."""

    id: str  # public id in the link: random, carries no PHI
    token_hash: bytes  # SHA-256 of the link's secret; the secret itself is never stored
    sender: str
    recipient: str
    created: float
    expires: float
    sealed: bytes  # the original message (RFC 5322 bytes), sealed with the pickup key
    size: int = 0  # length of the original, for listings
    queue_id: str = ""  # the gateway's queue id, to correlate audit events
    opened: float | None = None  # first successful open
    revoked: float | None = None
    failures: int = 0  # wrong one-time codes since the last success
    locked_until: float = 0.0  # no code is accepted before this time
    passphrase: bool = False  # opens only with the sender's passphrase as well


@dataclass(frozen=True)
class Reply:
    """One entry of a pickup's thread (the recipient's secure reply), sealed with the
    pickup's key."""

    id: str
    pickup_id: str
    created: float
    sealed: bytes


@dataclass(frozen=True)
class OneTimeCode:
    """The code mailed to the recipient; ``code_hash`` is an HMAC under the pickup key, so
    the database alone cannot be searched for it."""

    pickup_id: str
    code_hash: bytes
    created: float
    expires: float
    used: bool = False


@dataclass(frozen=True)
class Session:
    """A verified recipient's browser session. The cookie holds a random secret; the store
    holds its SHA-256. Pickup keys granted to the session are wrapped under a key derived
    from the cookie secret (``grant``), so the database cannot open them either."""

    id_hash: bytes
    recipient: str
    sender: str
    created: float
    last_seen: float


class StoreError(Exception):
    """The store is unavailable (the portal answers 503, the gateway defers: fail closed)."""


class PortalStore(Protocol):
    """Both backends (SQLite, PostgreSQL) implement this and pass the same tests. Calls are
    blocking; the web app runs them in a thread. Every method may raise ``StoreError``."""

    def add_pickup(self, pickup: Pickup) -> None: ...

    def pickup(self, pickup_id: str) -> Pickup | None: ...

    def pickups(self, *, sender: str | None = None, recipient: str | None = None,
                queue_id: str | None = None) -> list[Pickup]:
        """Matching pickups, oldest first, with ``sealed`` left empty (for listings)."""
        ...

    def mark_opened(self, pickup_id: str, when: float) -> bool:
        """Record an open; True only for the first one."""
        ...

    def revoke(self, pickup_id: str, when: float) -> bool:
        """Revoke and drop the sealed content at once; False if unknown or already revoked."""
        ...

    def record_failure(self, pickup_id: str, now: float, max_failures: int,
                       lock_seconds: float) -> tuple[int, float]:
        """Atomically count a wrong code; at ``max_failures`` lock until now+lock_seconds and
        restart the count. Returns (failures, locked_until)."""
        ...

    def unlock(self, pickup_id: str) -> bool:
        """Clear failures and lock (admin's unlock path, and after a correct code)."""
        ...

    def purge(self, now: float) -> int:
        """Delete pickups past ``expires`` (and revoked ones) with their replies, codes and
        grants, and sessions idle past their expiry. Returns the number of pickups deleted."""
        ...

    def add_reply(self, reply: Reply) -> None: ...

    def replies(self, pickup_id: str) -> list[Reply]:
        """The thread, oldest first."""
        ...

    def set_code(self, code: OneTimeCode) -> None:
        """Store a new code for the pickup, replacing any earlier one."""
        ...

    def code(self, pickup_id: str) -> OneTimeCode | None: ...

    def use_code(self, pickup_id: str, code_hash: bytes, now: float) -> bool:
        """Atomically: True if the stored code has this hash, is unused and unexpired, and
        marks it used (a code works once, even under concurrent submissions)."""
        ...

    def add_session(self, session: Session, idle_expires: float) -> None: ...

    def session(self, id_hash: bytes, now: float) -> Session | None:
        """The session if it exists and has not idled out (and refresh its idle expiry is
        the caller's job via ``touch_session``)."""
        ...

    def touch_session(self, id_hash: bytes, now: float, idle_expires: float) -> None: ...

    def delete_session(self, id_hash: bytes) -> None: ...

    def grant(self, id_hash: bytes, pickup_id: str, wrapped_key: bytes) -> None:
        """Let a session open a pickup: its key, wrapped under the session's key."""
        ...

    def granted(self, id_hash: bytes, pickup_id: str) -> bytes | None: ...

    def close(self) -> None: ...
