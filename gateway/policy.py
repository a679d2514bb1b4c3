"""The classify/decide step behind one interface.

The relay calls ``Policy.decide`` at end of DATA with the envelope and the raw message and gets
a ``Verdict`` back. ``PhiPolicy`` (gateway.classify) is the real one; ``DeliverPolicy`` delivers
everything with opportunistic TLS (``rules.enabled: false``).
"""

from __future__ import annotations

from typing import Protocol

from .model import Envelope, RecipientVerdict, Verdict


class Policy(Protocol):
    async def decide(self, envelope: Envelope, raw: bytes) -> Verdict:
        """Classify the message and choose an action per recipient. May raise: the caller
        answers 451 (fail closed) and the client retries."""
        ...

    def close(self, wait: bool = False) -> None:
        """Release resources (worker processes); ``wait`` for them to exit."""
        ...


class DeliverPolicy:
    """Deliver everything, opportunistic TLS."""

    async def decide(self, envelope: Envelope, raw: bytes) -> Verdict:
        return Verdict(
            recipients=tuple(RecipientVerdict(r, "deliver", "default") for r in envelope.rcpt_tos)
        )

    def close(self, wait: bool = False) -> None:
        return None
