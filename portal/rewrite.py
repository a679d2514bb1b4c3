"""The ``portal`` transform: store a message for one recipient and give back the notification
that goes to them instead. Called by the gateway's delivery worker (in a thread: the store
does blocking I/O)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from . import crypto
from .mail import Composer, original_headers
from .model import Pickup, PortalStore
from .render import pack


@dataclass(frozen=True)
class Rewritten:
    pickup_id: str
    expires: float
    notification: bytes


class PortalRewriter:
    def __init__(self, store: PortalStore, composer: Composer, base_url: str, expire: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.composer = composer
        self.base_url = base_url.rstrip("/")
        self.expire = expire
        self.clock = clock

    def rewrite(self, queue_id: str, mail_from: str, raw: bytes, recipient: str,
                passphrase: str | None = None) -> Rewritten:
        """Store ``raw`` for ``recipient``; with the sender's (normalised) ``passphrase`` the
        pickup opens only with it as well as the code."""
        now = self.clock()
        # A retry after a failed notification makes a new link; the old one was never seen
        # (or is superseded), so it is revoked rather than left to expire.
        for old in self.store.pickups(queue_id=queue_id, recipient=recipient):
            if old.revoked is None:
                self.store.revoke(old.id, now)
        pickup_id, secret = crypto.new_id(), crypto.new_secret()
        key = crypto.derive(secret, "pickup", pickup_id)
        if passphrase:
            key = crypto.passphrase_key(key, passphrase, pickup_id)
        expires = now + self.expire
        original = original_headers(raw, mail_from)
        self.store.add_pickup(Pickup(
            id=pickup_id, token_hash=crypto.token_hash(secret),
            sender=(mail_from or original.sender_address).lower(),
            recipient=recipient.lower(), created=now, expires=expires,
            sealed=crypto.seal(key, pack(raw), pickup_id), size=len(raw), queue_id=queue_id,
            passphrase=bool(passphrase)))
        link = f"{self.base_url}/p/{pickup_id}/{secret}"
        return Rewritten(pickup_id, expires,
                         self.composer.notification(original, recipient, link, expires, now))
