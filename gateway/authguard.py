"""Slows down and then refuses repeated AUTH failures, per client IP and per user name.

After ``max_failures`` failures of one user name within ``failure_window`` that user is refused
for ``lockout`` seconds, from any address; an IP address gets ``ip_factor`` times as many
failures (an office behind one NAT address has many users who mistype) before it is refused.
Before that, each failure's reply is delayed by ``tarpit`` seconds per failure so far (capped),
which makes guessing slow without hurting a user who mistypes once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Track:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class AuthGuard:
    MAX_DELAY = 10.0

    def __init__(self, max_failures: int, window: float, lockout: float, tarpit: float,
                 clock: Callable[[], float], ip_factor: int = 4) -> None:
        self.max_failures = max_failures
        self.ip_factor = ip_factor
        self.window = window
        self.lockout = lockout
        self.tarpit = tarpit
        self.clock = clock
        self._tracks: dict[str, _Track] = {}

    def _track(self, key: str) -> _Track:
        t = self._tracks.get(key)
        if t is None:
            if len(self._tracks) > 100_000:  # bound memory under a distributed attack
                self._expire()
            t = self._tracks[key] = _Track()
        return t

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, t in self._tracks.items()
                    if t.locked_until < now and (not t.failures or
                                                 t.failures[-1] < now - self.window)]:
            del self._tracks[key]

    def locked(self, ip: str, user: str | None) -> bool:
        now = self.clock()
        keys = [f"ip:{ip}"] + ([f"user:{user}"] if user else [])
        return any(k in self._tracks and self._tracks[k].locked_until > now for k in keys)

    def failure(self, ip: str, user: str | None) -> tuple[int, float, bool]:
        """Record a failure. Returns (failures in window for the IP, delay to apply,
        whether this failure started a lockout)."""
        now = self.clock()
        worst = 0
        started = False
        for key in [f"ip:{ip}"] + ([f"user:{user}"] if user else []):
            t = self._track(key)
            t.failures.append(now)
            while t.failures and t.failures[0] < now - self.window:
                t.failures.popleft()
            worst = max(worst, len(t.failures))
            limit = self.max_failures * (self.ip_factor if key.startswith("ip:") else 1)
            if len(t.failures) >= limit and t.locked_until <= now:
                t.locked_until = now + self.lockout
                started = True
        return worst, min(self.tarpit * worst, self.MAX_DELAY), started

    def success(self, ip: str, user: str) -> None:
        self._tracks.pop(f"user:{user}", None)

    def unlock(self, key: str) -> None:
        self._tracks.pop(key, None)
