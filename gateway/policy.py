"""The classify/decide step behind one interface.

The relay calls ``Policy.decide`` at end of DATA with the envelope and the parsed message and
gets a ``Verdict`` back. Until the PHI engine is plugged in, ``DeliverPolicy`` is the built-in
policy: every recipient gets ``deliver`` (opportunistic TLS).
"""

from __future__ import annotations

from typing import Protocol

from .mime import ParsedMessage
from .model import Envelope, RecipientVerdict, Verdict


class Policy(Protocol):
    def decide(self, envelope: Envelope, message: ParsedMessage) -> Verdict:
        """Classify the message and choose an action per recipient. May raise: the caller
        answers 451 (fail closed) and the client retries."""
        ...


class DeliverPolicy:
    """Deliver everything, opportunistic TLS."""

    def decide(self, envelope: Envelope, message: ParsedMessage) -> Verdict:
        return Verdict(
            recipients=tuple(RecipientVerdict(r, "deliver", "default") for r in envelope.rcpt_tos)
        )
