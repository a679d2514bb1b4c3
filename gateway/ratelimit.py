"""Rate limits and anomaly actions on senders, with an in-process or a Redis backend.

What is counted: messages (at MAIL), recipients (at each RCPT) and PHI-bearing messages (at
the end of DATA, once the verdict is known), each per authenticated user, per envelope sender
(lower case, ``+tag`` removed: ``Alice+x@Example.org`` counts as ``alice@example.org``), per
sender domain and per client IP, in token buckets: a limit of N per minute, hour or day lets a
burst of N through and then one every window/N. The limits come from the first group in
``ratelimit.groups`` with a member matching the user, sender or IP (a group without members
matches everyone); a client in ``trusted_networks`` (an Exchange connector that carries every
staff member's mail) is limited per IP by ``ratelimit.trusted_ip`` instead, so ordinary senders
behind it do not use up each other's room. Exempt senders are not counted, and each exempted
transaction is logged (``ratelimit.exempt``). A refusal is ``451 4.7.1`` with the reason at the
stage that decided it; all buckets of one step are checked and taken together, so a refused
step takes nothing.

Anomaly detection (``gateway.anomaly``) scores every message against the sender's baseline;
the band reached picks the actions: ``alert`` (a ``ratelimit.alert`` event and the optional
webhook, once per sender, hour and band), ``hold`` (this and the sender's next messages are
spooled in the hold state for ``hold_for``; release them with ``phigate queue release``, lift
the hold with ``phigate limits clear``), ``lock`` (the user's AUTH is refused until ``phigate
user unlock``; the lock is written to the users file) and ``defer`` (``451 4.7.1``).

Backends: ``MemoryBackend`` (default) keeps the state in the worker process, so with
``workers > 1`` each worker counts on its own and a sender whose connections are spread over
the workers gets up to ``workers`` times the limits; it is saved to
``paths.var/ratelimit/worker-N.json`` every ``snapshot_interval`` so baselines survive a
restart. ``RedisBackend`` (``ratelimit.redis``) keeps it in Redis, updated by Lua scripts
(atomic), so every worker and node enforces one limit together. When Redis cannot be reached,
``on_redis_error`` decides: ``open`` accepts and logs ``ratelimit.alert`` (reason
``backend_unavailable``), ``closed`` answers ``451 4.3.0``; Redis is then left alone for a
second, so an outage costs no time per message.

Leased tokens (Redis only, to save a round trip per step): a bucket this worker took from
in the last second (``LEASE_FOR``) gets, with its next take, up to as many whole tokens again
(at most ``LEASE_MAX`` = 64 and a tenth of what the bucket refills in a second), which the
worker then spends locally for up to a second; the sender's flags read with them are trusted
for as long. Every leased token was taken from Redis, so the workers together never take more
than a bucket holds; but a lease not spent within its second is lost (a busy bucket runs short
by at most one lease per worker per second) and a worker may spend a token up to a second after
it left Redis (a window can see at most one lease per worker more). Sessions of one worker that
run out together wait for one refill rather than each asking Redis. A bucket that refills by
fewer than 10 tokens a second (e.g. 500 per minute or less) is never leased and stays exact, as
is every bucket a worker did not use in the previous second. A hold set by another worker is seen
here up to a second late; one set or cleared by this worker at once.

Anomaly counters (Redis only) are batched the same way: a worker that read a sender's hour and
baseline from Redis in the last second counts further messages locally and scores them against
that reading plus its own count; the local counts go to Redis with the next reading, or within
a second from the background flush (and on shutdown). Another node's messages are seen up to a
second late, a crash loses at most a second of one worker's counts, and an external domain that
two workers first see in the same second may count twice until the next reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from .anomaly import Assessment, Baseline, HourStats, assess, band_for, fold, hour_of
from .audit import AuditLog
from .config import Config, ConfigError, Limit, LimitGroup, RateLimitConfig, Selector
from .model import Verdict
from .users import UserDB

T = TypeVar("T")
HOUR_TTL = 15 * 86400  # per-hour anomaly counters wait this long to be learned
BREAKER = 1.0  # seconds Redis is left alone after a failure
LEASE_FOR = 1.0  # seconds a Redis worker may spend tokens it leased (and trust cached flags)
LEASE_MAX = 64  # tokens leased per bucket and call, at most
LEASE_SHARE = 0.1  # and at most this share of what the bucket refills in LEASE_FOR
ALERT_EVERY = 30.0  # backend_unavailable alerts at most this often (per worker)
WINDOW_WORDS = {"minute": "minute", "hour": "hour", "day": "24 hours"}


# --------------------------------------------------------------------------- identities


def normalize_sender(address: str) -> str:
    """One key per mailbox: lower case, plus-addressing removed."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    base, plus, _tag = local.partition("+")
    return f"{base if plus and base else local}@{domain}"


@dataclass(frozen=True)
class Subject:
    """Whom one SMTP transaction is counted under."""

    user: str | None
    sender: str  # normalized; "" for the null sender (bounces: not counted per sender)
    ip: str
    trusted_ip: bool

    @property
    def domain(self) -> str:
        return self.sender.rpartition("@")[2]

    def key(self, scope: str) -> str | None:
        if scope == "user":
            return self.user
        if scope == "sender":
            return self.sender or None
        if scope == "domain":
            return self.domain or None
        return self.ip or None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def matches(sel: Selector, s: Subject) -> bool:
    if sel.kind == "user":
        return s.user == sel.value
    if sel.kind == "ip":
        addr = _ip(s.ip)
        return addr is not None and sel.network is not None and addr in sel.network
    if sel.kind == "domain" or sel.value.startswith("@"):
        dom = sel.value.lstrip("@")
        return bool(s.sender) and (s.domain == dom or s.domain.endswith("." + dom))
    return bool(s.sender) and s.sender == normalize_sender(sel.value)


def group_for(cfg: RateLimitConfig, s: Subject) -> LimitGroup | None:
    for g in cfg.groups:
        if not g.members or any(matches(m, s) for m in g.members):
            return g
    return None


class Bucket(NamedTuple):
    key: str
    capacity: float
    rate: float  # tokens per second
    amount: float
    ttl: int  # seconds until an untouched bucket is full again (and may be dropped)


def bucket_key(scope: str, key: str, metric: str, window: str) -> str:
    return f"{scope}:{key}:{metric}:{window}"


def buckets_for(cfg: RateLimitConfig, group: LimitGroup | None, s: Subject, metric: str,
                amount: float = 1.0) -> tuple[list[Bucket], list[Limit]]:
    limits = [lim for lim in (group.limits if group else ()) if lim.metric == metric
              and not (lim.scope == "ip" and s.trusted_ip)]
    if s.trusted_ip:
        limits += [lim for lim in cfg.trusted_ip if lim.metric == metric]
    out: list[Bucket] = []
    used: list[Limit] = []
    for lim in limits:
        key = s.key(lim.scope)
        if key is None:
            continue
        out.append(Bucket(bucket_key(lim.scope, key, metric, lim.window), float(lim.count),
                          lim.count / lim.seconds, amount, int(lim.seconds) + 1))
        used.append(lim)
    return out, used


@dataclass(frozen=True)
class TakeResult:
    denied: int  # index of the first bucket without enough tokens, or -1
    tokens: float  # tokens left in that bucket
    flags: Mapping[str, float]  # the sender's flags (field -> until), when asked for


# --------------------------------------------------------------------------- backends


class Backend(Protocol):
    name: str

    async def take(self, buckets: Sequence[Bucket], now: float,
                   flags: str | None = None) -> TakeResult:
        """Take ``amount`` from every bucket, or from none if one lacks it."""
        ...

    async def levels(self, buckets: Sequence[Bucket], now: float) -> list[float]: ...

    async def flags(self, key: str, now: float) -> dict[str, float]: ...

    async def set_flag(self, key: str, name: str, until: float, now: float) -> None: ...

    async def clear(self, key: str) -> None: ...

    async def once(self, key: str, ttl: float, now: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` seconds."""
        ...

    async def record(self, sender: str, hour: int, domains: Sequence[str],
                     findings: float, now: float) -> tuple[HourStats, Baseline | None]:
        """Count one message in the sender's hour; return the hour so far and the baseline."""
        ...

    async def flush(self, now: float, drop: bool = False) -> None:
        """Send counts kept locally for a while (all of them with ``drop``; a no-op where
        nothing is kept)."""
        ...

    async def claim_fold(self, sender: str, hour: int) -> bool: ...

    async def hours(self, sender: str, first: int, upto: int) -> dict[int, HourStats]: ...

    async def save_baseline(self, sender: str, baseline: Baseline) -> None: ...

    async def baseline(self, sender: str) -> Baseline | None: ...

    async def current(self, sender: str, hour: int) -> HourStats: ...

    async def senders(self) -> list[str]: ...

    async def close(self) -> None: ...


class MemoryBackend:
    """State in this process (one worker). ``to_json``/``from_json`` save and restore it."""

    name = "memory"

    def __init__(self) -> None:
        self.buckets: dict[str, list[float]] = {}  # key -> [tokens, updated]
        self.bucket_ttl: dict[str, int] = {}
        self._flags: dict[str, dict[str, float]] = {}
        self._once: dict[str, float] = {}
        self._hours: dict[str, dict[int, list[Any]]] = {}  # sender -> hour -> [m, ps, pq, set]
        self._base: dict[str, Baseline] = {}
        self.changes = 0

    @staticmethod
    def _level(state: list[float] | None, b: Bucket, now: float) -> float:
        if state is None:
            return b.capacity
        tokens, ts = state
        return min(b.capacity, tokens + max(0.0, now - ts) * b.rate)

    async def take(self, buckets: Sequence[Bucket], now: float,
                   flags: str | None = None) -> TakeResult:
        found = await self.flags(flags, now) if flags else {}
        levels = []
        for i, b in enumerate(buckets):
            level = self._level(self.buckets.get(b.key), b, now)
            if level < b.amount:
                return TakeResult(i, level, found)
            levels.append(level)
        for b, level in zip(buckets, levels, strict=True):
            self.buckets[b.key] = [level - b.amount, now]
            self.bucket_ttl[b.key] = b.ttl
        self.changes += 1
        if len(self.buckets) > 200_000:
            self.expire(now)
        return TakeResult(-1, 0.0, found)

    def expire(self, now: float) -> None:
        """Drop buckets that have refilled (untouched for a whole window)."""
        for key in [k for k, (_, ts) in self.buckets.items()
                    if now - ts > self.bucket_ttl.get(k, 86401)]:
            del self.buckets[key]
            self.bucket_ttl.pop(key, None)
        self._once = {k: v for k, v in self._once.items() if v > now}
        for key in list(self._flags):
            live = {f: u for f, u in self._flags[key].items() if u > now}
            if live:
                self._flags[key] = live
            else:
                del self._flags[key]

    async def levels(self, buckets: Sequence[Bucket], now: float) -> list[float]:
        return [self._level(self.buckets.get(b.key), b, now) for b in buckets]

    async def flags(self, key: str, now: float) -> dict[str, float]:
        return {f: u for f, u in self._flags.get(key, {}).items() if u > now}

    async def set_flag(self, key: str, name: str, until: float, now: float) -> None:
        self._flags.setdefault(key, {})[name] = until
        self.changes += 1

    async def clear(self, key: str) -> None:
        self._flags.pop(key, None)
        self.changes += 1

    async def once(self, key: str, ttl: float, now: float) -> bool:
        if self._once.get(key, 0.0) > now:
            return False
        self._once[key] = now + ttl
        return True

    async def record(self, sender: str, hour: int, domains: Sequence[str],
                     findings: float, now: float) -> tuple[HourStats, Baseline | None]:
        hours = self._hours.setdefault(sender, {})
        st = hours.get(hour)
        if st is None:
            st = hours[hour] = [0, 0.0, 0.0, set()]
        st[0] += 1
        st[1] += findings
        st[2] += findings * findings
        st[3].update(domains)
        self.changes += 1
        return HourStats(st[0], len(st[3]), st[1], st[2]), self._base.get(sender)

    async def flush(self, now: float, drop: bool = False) -> None:
        return None

    async def claim_fold(self, sender: str, hour: int) -> bool:
        return True  # one event loop: nobody else folds concurrently

    async def hours(self, sender: str, first: int, upto: int) -> dict[int, HourStats]:
        hours = self._hours.get(sender, {})
        out = {h: HourStats(s[0], len(s[3]), s[1], s[2]) for h, s in hours.items()
               if first <= h < upto}
        for h in [h for h in hours if h < upto]:
            del hours[h]  # learned now
        return out

    async def save_baseline(self, sender: str, baseline: Baseline) -> None:
        self._base[sender] = baseline
        self.changes += 1

    async def baseline(self, sender: str) -> Baseline | None:
        return self._base.get(sender)

    async def current(self, sender: str, hour: int) -> HourStats:
        st = self._hours.get(sender, {}).get(hour)
        return HourStats(st[0], len(st[3]), st[1], st[2]) if st else HourStats()

    async def senders(self) -> list[str]:
        return sorted(set(self._base) | set(self._hours))

    async def close(self) -> None:
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "buckets": {k: [round(v[0], 4), v[1], self.bucket_ttl.get(k, 86401)]
                        for k, v in self.buckets.items()},
            "flags": self._flags,
            "hours": {s: {str(h): [st[0], st[1], st[2], sorted(st[3])] for h, st in hs.items()}
                      for s, hs in self._hours.items()},
            "baselines": {s: b.to_json() for s, b in self._base.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MemoryBackend:
        m = cls()
        for k, (tokens, ts, ttl) in d.get("buckets", {}).items():
            m.buckets[k] = [float(tokens), float(ts)]
            m.bucket_ttl[k] = int(ttl)
        m._flags = {k: {f: float(u) for f, u in v.items()} for k, v in d.get("flags", {}).items()}
        m._hours = {s: {int(h): [int(st[0]), float(st[1]), float(st[2]), set(st[3])]
                        for h, st in hs.items()} for s, hs in d.get("hours", {}).items()}
        m._base = {s: Baseline.from_json(b) for s, b in d.get("baselines", {}).items()}
        return m


# KEYS: bucket keys, then (optional) the flags hash. ARGV: now, number of buckets, then
# capacity, rate, amount, ttl and lease for each bucket. Takes ``amount`` from every bucket or
# from none; on success also takes up to ``lease`` more whole tokens from each (as many as it
# has) for the caller to spend locally. Returns {denied index (0 = none), tokens left there,
# flags as a flat list, the tokens leased from each bucket...}.
_TAKE = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local levels = {}
local flags = {}
if #KEYS > n then flags = redis.call('HGETALL', KEYS[n + 1]) end
for i = 1, n do
  local a = 3 + (i - 1) * 5
  local cap, rate, amt = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local v = redis.call('HMGET', KEYS[i], 't', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil then tokens = cap; ts = now end
  if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate) end
  if tokens < amt then return {i, tostring(tokens), flags} end
  levels[i] = tokens - amt
end
local out = {0, '0', flags}
for i = 1, n do
  local a = 3 + (i - 1) * 5
  local grant = math.max(0, math.min(tonumber(ARGV[a + 4]), math.floor(levels[i])))
  redis.call('HSET', KEYS[i], 't', tostring(levels[i] - grant), 'ts', ARGV[1])
  redis.call('EXPIRE', KEYS[i], ARGV[a + 3])
  out[3 + i] = grant
end
return out
"""

# KEYS: hour hash, hour domain set, baseline. ARGV: messages, sum of findings, sum of their
# squares, ttl, domains... Returns the hour's counts after adding these and the baseline.
_RECORD = """
if tonumber(ARGV[1]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'm', ARGV[1])
  redis.call('HINCRBYFLOAT', KEYS[1], 'p', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], 'q', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
if #ARGV > 4 then
  redis.call('SADD', KEYS[2], unpack(ARGV, 5))
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local h = redis.call('HMGET', KEYS[1], 'm', 'p', 'q')
return {h[1] or 0, h[2] or 0, h[3] or 0, redis.call('SCARD', KEYS[2]),
        redis.call('GET', KEYS[3])}
"""


@dataclass
class _SenderHour:
    """A Redis worker's view of one sender's hour: the counts Redis had at the last reading,
    the baseline read with them, and what this worker counted since (not yet sent)."""

    hour: int
    remote: HourStats = field(default_factory=HourStats)
    baseline: Baseline | None = None
    fresh_until: float = 0.0
    messages: int = 0
    findings: float = 0.0
    squares: float = 0.0
    domains: set[str] = field(default_factory=set)  # not yet sent
    sent: set[str] = field(default_factory=set)  # sent by this worker this hour
    busy: bool = False  # a reading is on its way

    def add(self, domains: Sequence[str], findings: float) -> None:
        self.messages += 1
        self.findings += findings
        self.squares += findings * findings
        self.domains.update(d for d in domains if d not in self.sent)

    def estimate(self) -> HourStats:
        r = self.remote
        return HourStats(r.messages + self.messages, r.domains + len(self.domains),
                         r.phi_sum + self.findings, r.phi_sq + self.squares)

    def take(self) -> tuple[int, float, float, list[str]]:
        """The local counts, handed over for sending (``give_back`` if that fails)."""
        out = (self.messages, self.findings, self.squares, sorted(self.domains))
        self.messages, self.findings, self.squares = 0, 0.0, 0.0
        self.domains = set()
        return out

    def give_back(self, batch: tuple[int, float, float, list[str]]) -> None:
        self.messages += batch[0]
        self.findings += batch[1]
        self.squares += batch[2]
        self.domains.update(batch[3])


class RedisBackend:
    """State in Redis, shared by every worker and node; each step is one Lua script call, or
    none while this worker holds leased tokens for every bucket of the step."""

    name = "redis"

    def __init__(self, url: str, timeout: float, prefix: str = "rl:") -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.prefix = prefix
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), decode_responses=True)
        self._take = self.client.register_script(_TAKE)
        self._record = self.client.register_script(_RECORD)
        self._leases: dict[str, list[float]] = {}  # bucket key -> [tokens, spend before]
        self._demand: dict[str, list[float]] = {}  # bucket key -> [takes, since, last period]
        self._flag_cache: dict[str, tuple[float, dict[str, float]]] = {}  # key -> (until, ..)
        self._hours: dict[str, _SenderHour] = {}  # sender -> this hour as this worker sees it
        self._asking: dict[tuple[str | None, ...], asyncio.Future[None]] = {}  # steps in flight

    def _k(self, *parts: object) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    def _lease_size(self, b: Bucket, now: float) -> int:
        """How many tokens to lease beyond this take: what this process took from the bucket
        in the last lease period or so far in this one (a burst after a quiet spell doubles
        its lease with each call, like TCP's slow start), at most ``LEASE_MAX`` and a tenth of
        what the bucket refills in a period (so a small limit is never leased, and is
        exact)."""
        d = self._demand.get(b.key)
        if d is None or now - d[1] > 2 * LEASE_FOR:
            d = self._demand[b.key] = [0.0, now, 0.0]
        elif now - d[1] > LEASE_FOR:
            d[:] = [0.0, now, d[0]]
        d[0] += 1
        if b.amount != 1.0:
            return 0
        return int(min(LEASE_MAX, max(d[2], d[0]), b.rate * LEASE_FOR * LEASE_SHARE))

    async def take(self, buckets: Sequence[Bucket], now: float,
                   flags: str | None = None) -> TakeResult:
        spent = self._spend_leased(buckets, now, flags)
        if spent is not None:
            return spent
        # Another session of this worker is already asking Redis for the same buckets: wait
        # for its answer (and the tokens it leases) rather than ask again.
        step = (flags, *(b.key for b in buckets))
        pending = self._asking.get(step)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
            spent = self._spend_leased(buckets, now, flags)
            if spent is not None:
                return spent
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asking[step] = fut
        try:
            return await self._take_from_redis(buckets, now, flags)
        finally:
            if self._asking.get(step) is fut:
                del self._asking[step]
            fut.set_result(None)

    def _spend_leased(self, buckets: Sequence[Bucket], now: float,
                      flags: str | None) -> TakeResult | None:
        """The step taken from this worker's leased tokens (and cached flags), or None when
        they do not cover it."""
        cached = self._flag_cache.get(flags) if flags else None
        live = cached[1] if cached is not None and cached[0] > now else None
        if flags is None or live is not None:
            leases = [self._leases.get(b.key) for b in buckets]
            if all(ls is not None and ls[1] > now and ls[0] >= b.amount
                   for ls, b in zip(leases, buckets, strict=True)):
                for ls, b in zip(leases, buckets, strict=True):
                    assert ls is not None
                    ls[0] -= b.amount
                    self._lease_size(b, now)  # counts the demand
                return TakeResult(-1, 0.0, {f: u for f, u in (live or {}).items() if u > now})
        return None

    async def _take_from_redis(self, buckets: Sequence[Bucket], now: float,
                               flags: str | None) -> TakeResult:
        keys = [self._k("b", b.key) for b in buckets]
        if flags:
            keys.append(self._k("f", flags))
        args: list[Any] = [repr(now), len(buckets)]
        leases = [self._lease_size(b, now) for b in buckets]
        if min(leases) == 0:
            # leased tokens are spent only for a step whose every bucket has some: leasing
            # from the others would only take tokens nobody spends
            leases = [0] * len(buckets)
        for b, lease in zip(buckets, leases, strict=True):
            args += [repr(b.capacity), repr(b.rate), repr(b.amount), b.ttl, lease]
        denied, tokens, flat, *grants = await self._take(keys=keys, args=args)
        found = {str(flat[i]): float(flat[i + 1]) for i in range(0, len(flat), 2)}
        if flags:
            self._flag_cache[flags] = (now + LEASE_FOR, found)
        for b, g in zip(buckets, grants, strict=False):
            if int(g) > 0:
                ls = self._leases.get(b.key)
                left = ls[0] if ls is not None and ls[1] > now else 0.0
                self._leases[b.key] = [left + int(g), now + LEASE_FOR]
        if len(self._leases) > 10_000 or len(self._flag_cache) > 10_000:
            self._forget(now)
        return TakeResult(int(denied) - 1, float(tokens),
                          {f: u for f, u in found.items() if u > now})

    def _forget(self, now: float) -> None:
        self._leases = {k: v for k, v in self._leases.items() if v[1] > now}
        self._flag_cache = {k: v for k, v in self._flag_cache.items() if v[0] > now}
        self._demand = {k: v for k, v in self._demand.items() if now - v[1] <= 2 * LEASE_FOR}

    async def levels(self, buckets: Sequence[Bucket], now: float) -> list[float]:
        async with self.client.pipeline(transaction=False) as p:
            for b in buckets:
                p.hmget(self._k("b", b.key), "t", "ts")
            rows = await p.execute()
        out = []
        for b, (tokens, ts) in zip(buckets, rows, strict=True):
            if tokens is None:
                out.append(b.capacity)
            else:
                out.append(min(b.capacity, float(tokens) + max(0.0, now - float(ts)) * b.rate))
        return out

    async def flags(self, key: str, now: float) -> dict[str, float]:
        found = await self.client.hgetall(self._k("f", key))
        return {str(f): float(u) for f, u in found.items() if float(u) > now}

    async def set_flag(self, key: str, name: str, until: float, now: float) -> None:
        k = self._k("f", key)
        async with self.client.pipeline(transaction=True) as p:
            p.hset(k, name, repr(until))
            p.expire(k, max(1, math.ceil(until - now)))
            await p.execute()
        cached = self._flag_cache.get(key)
        if cached is not None:
            cached[1][name] = until

    async def clear(self, key: str) -> None:
        self._flag_cache.pop(key, None)
        await self.client.delete(self._k("f", key))

    async def once(self, key: str, ttl: float, now: float) -> bool:
        return bool(await self.client.set(self._k("o", key), "1", nx=True,
                                          ex=max(1, math.ceil(ttl))))

    async def record(self, sender: str, hour: int, domains: Sequence[str],
                     findings: float, now: float) -> tuple[HourStats, Baseline | None]:
        sh = self._hours.get(sender)
        if sh is not None and sh.hour != hour:
            await self._send(sender, sh, now)  # the last hour's remainder, to its own keys
            sh = None
        if sh is None:
            sh = self._hours[sender] = _SenderHour(hour)
            if len(self._hours) > 10_000:
                await self.flush(now, drop=True)
                self._hours[sender] = sh
        sh.add(domains, float(findings))
        if sh.fresh_until <= now and not sh.busy:
            await self._send(sender, sh, now)
        return sh.estimate(), sh.baseline

    async def _send(self, sender: str, sh: _SenderHour, now: float) -> None:
        """Add this worker's counts to Redis and read the hour and baseline back."""
        keys = [self._k("a", sender, sh.hour), self._k("a", sender, sh.hour, "d"),
                self._k("a", sender, "base")]
        batch = sh.take()
        sh.busy = True
        try:
            m, p, q, d, base = await self._record(
                keys=keys, args=[batch[0], repr(batch[1]), repr(batch[2]), HOUR_TTL, *batch[3]])
        except BaseException:
            sh.give_back(batch)
            raise
        finally:
            sh.busy = False
        sh.sent.update(batch[3])
        sh.remote = HourStats(int(m), int(d), float(p), float(q))
        sh.baseline = Baseline.from_json(json.loads(base)) if base else None
        sh.fresh_until = now + LEASE_FOR

    async def flush(self, now: float, drop: bool = False) -> None:
        """Send every count kept for a second or more (all of them with ``drop``, which also
        forgets every sender: the next message of each reads Redis again)."""
        for sender, sh in list(self._hours.items()):
            if sh.busy:
                continue
            if (sh.messages or sh.domains) and (drop or sh.fresh_until <= now):
                await self._send(sender, sh, now)
            if drop or sh.fresh_until + 3600 < now:
                self._hours.pop(sender, None)

    async def claim_fold(self, sender: str, hour: int) -> bool:
        return bool(await self.client.set(self._k("a", sender, "fold", hour), "1", nx=True,
                                          ex=3600))

    async def hours(self, sender: str, first: int, upto: int) -> dict[int, HourStats]:
        span = list(range(max(first, upto - 24 * 28), upto))
        async with self.client.pipeline(transaction=False) as p:
            for h in span:
                p.hmget(self._k("a", sender, h), "m", "p", "q")
                p.scard(self._k("a", sender, h, "d"))
            rows = await p.execute()
        out = {}
        for i, h in enumerate(span):
            (m, ps, pq), d = rows[2 * i], rows[2 * i + 1]
            if m is not None:
                out[h] = HourStats(int(m), int(d), float(ps or 0), float(pq or 0))
        return out

    async def save_baseline(self, sender: str, baseline: Baseline) -> None:
        await self.client.set(self._k("a", sender, "base"), json.dumps(baseline.to_json()))
        sh = self._hours.get(sender)
        if sh is not None:
            sh.baseline = baseline

    async def baseline(self, sender: str) -> Baseline | None:
        raw = await self.client.get(self._k("a", sender, "base"))
        return Baseline.from_json(json.loads(raw)) if raw else None

    async def current(self, sender: str, hour: int) -> HourStats:
        m, ps, pq = await self.client.hmget(self._k("a", sender, hour), "m", "p", "q")
        d = await self.client.scard(self._k("a", sender, hour, "d"))
        return HourStats(int(m or 0), int(d), float(ps or 0), float(pq or 0))

    async def senders(self) -> list[str]:
        found = set()
        pattern = self._k("a", "*", "base")
        async for key in self.client.scan_iter(match=pattern, count=1000):
            found.add(key[len(self.prefix) + 2:-len(":base")])
        return sorted(found)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


def open_backend(cfg: RateLimitConfig) -> Backend:
    if cfg.redis:
        return RedisBackend(cfg.redis, cfg.redis_timeout)
    return MemoryBackend()


def _backend_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, asyncio.TimeoutError, ConnectionError]
    with contextlib.suppress(ImportError):
        import redis.exceptions

        errors.append(redis.exceptions.RedisError)
    return tuple(errors)


# --------------------------------------------------------------------------- the limiter


@dataclass
class Admission:
    """What the limiter decided for one transaction, from MAIL to the end of DATA."""

    subject: Subject
    group: LimitGroup | None
    exempt: bool = False
    hold: bool = False
    base: dict[str, Any] = field(default_factory=dict)  # audit fields of the session


class _Unavailable(Exception):
    """The backend failed; the configured behaviour applies."""


def snapshot_path(var: Path, worker: int) -> Path:
    return var / "ratelimit" / f"worker-{worker}.json"


def clear_requests_path(var: Path) -> Path:
    return var / "ratelimit" / "clear.json"


class RateLimiter:
    """The intake's view: ``on_mail``, ``on_rcpt`` and ``on_message`` return a reply to give
    instead of the usual one, or None."""

    def __init__(self, config: Config, audit: AuditLog, clock: Callable[[], float] = time.time,
                 worker: int = 0, backend: Backend | None = None) -> None:
        self.config = config
        self.cfg = config.ratelimit
        self.audit = audit
        self.clock = clock
        self.worker = worker
        self.backend: Backend = backend or open_backend(self.cfg)
        self._errors = _backend_errors()
        self._down_until = 0.0
        self._down_alerted = 0.0
        self._down = False
        self._users: UserDB | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http: Any = None
        self._saved = 0
        self._clear_mtime = 0.0
        self._cleared_through = time.time()  # clear requests older than this worker are done

    # ------------------------------------------------------------------ lifecycle

    def reconfigure(self, config: Config) -> None:
        old = self.cfg
        self.config = config
        self.cfg = config.ratelimit
        if (old.redis or None) != (self.cfg.redis or None):
            stale = self.backend
            self.backend = open_backend(self.cfg)
            self._spawn(stale.close())

    async def start(self) -> None:
        if isinstance(self.backend, MemoryBackend):
            path = snapshot_path(self.config.paths.var, self.worker)
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                self.backend = MemoryBackend.from_json(json.loads(path.read_text()))
                self._saved = self.backend.changes
            if self.config.workers > 1 and self.cfg.enabled:
                self.audit.emit("ratelimit.backend", {
                    "ratelimit.backend": "memory", "process.worker": self.worker,
                    "event.reason": "per_worker_limits"})
        self._spawn(self._housekeeping())
        if isinstance(self.backend, RedisBackend):
            self._spawn(self._flusher())

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self.save()
        with contextlib.suppress(_Unavailable):
            await self._call(self.backend.flush(self.clock(), drop=True))
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
        await self.backend.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.snapshot_interval)
            with contextlib.suppress(Exception):
                await self._apply_clear_requests()
                self.save()

    async def _flusher(self) -> None:
        """Send the anomaly counts workers keep locally (Redis) within about a second."""
        while True:
            await asyncio.sleep(LEASE_FOR)
            with contextlib.suppress(_Unavailable):
                await self._call(self.backend.flush(self.clock()))

    def save(self) -> None:
        """Write the in-process state (atomically) if it changed."""
        b = self.backend
        if not isinstance(b, MemoryBackend) or b.changes == self._saved:
            return
        b.expire(self.clock())
        path = snapshot_path(self.config.paths.var, self.worker)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(b.to_json(), separators=(",", ":")))
            os.replace(tmp, path)
            self._saved = b.changes

    async def _apply_clear_requests(self) -> None:
        """``phigate limits clear`` writes requests to a file: apply them to this worker."""
        path = clear_requests_path(self.config.paths.var)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime == self._clear_mtime:
            return
        self._clear_mtime = mtime
        requests: dict[str, float] = json.loads(path.read_text())
        for sender, when in requests.items():
            if when > self._cleared_through:
                await self.backend.clear(sender)
        self._cleared_through = max([self._cleared_through, *requests.values()])

    # ------------------------------------------------------------------ backend calls

    async def _call(self, op: Awaitable[T]) -> T:
        if time.monotonic() < self._down_until:
            if asyncio.iscoroutine(op):
                op.close()
            raise _Unavailable
        try:
            result = await asyncio.wait_for(op, self.cfg.redis_timeout * 2)
        except self._errors as exc:
            self._down_until = time.monotonic() + BREAKER
            now = time.monotonic()
            if not self._down or now - self._down_alerted > ALERT_EVERY:
                self._down_alerted = now
                self.audit.emit("ratelimit.alert", {
                    "event.reason": "backend_unavailable", "event.outcome": "failure",
                    "ratelimit.backend": self.backend.name, "error.type": type(exc).__name__,
                    "process.worker": self.worker,
                    "ratelimit.on_error": self.cfg.on_redis_error})
            self._down = True
            raise _Unavailable from None
        if self._down:
            self._down = False
            self.audit.emit("ratelimit.backend_recovered", {
                "ratelimit.backend": self.backend.name, "event.outcome": "success",
                "process.worker": self.worker})
        return result

    def _unavailable_reply(self) -> str | None:
        if self.cfg.on_redis_error == "closed":
            return "451 4.3.0 Sending limits cannot be checked right now; please try again later"
        return None

    # ------------------------------------------------------------------ SMTP stages

    async def on_mail(self, user: str | None, sender: str, ip: str,
                      base: Mapping[str, Any]) -> tuple[Admission | None, str | None]:
        if not self.cfg.enabled:
            return None, None
        s = Subject(user, normalize_sender(sender) if sender else "", ip,
                    self.config.is_trusted(ip))
        adm = Admission(s, group_for(self.cfg, s), base=dict(base))
        for sel in self.cfg.exempt:
            if matches(sel, s):
                adm.exempt = True
                self.audit.emit("ratelimit.exempt", {
                    **adm.base, "email.from.address": sender or None, "user.name": user,
                    "ratelimit.selector": str(sel)})
                return adm, None
        if user is not None and self._locked(user):
            self.audit.emit("ratelimit.refused", {
                **adm.base, "user.name": user, "event.reason": "account_locked",
                "smtp.stage": "mail"})
            return adm, (f"451 4.7.1 Account {user} is locked after unusual sending; "
                         "an administrator must unlock it")
        buckets, limits = buckets_for(self.cfg, adm.group, s, "messages")
        try:
            res = await self._call(self.backend.take(buckets, self.clock(), s.sender or None))
        except _Unavailable:
            return adm, self._unavailable_reply()
        adm.hold = "hold" in res.flags
        if res.denied >= 0:
            return adm, self._refuse(adm, limits[res.denied], buckets[res.denied], res.tokens,
                                     "mail")
        return adm, None

    async def on_rcpt(self, adm: Admission | None, recipient: str) -> str | None:
        if adm is None or adm.exempt:
            return None
        buckets, limits = buckets_for(self.cfg, adm.group, adm.subject, "recipients")
        if not buckets:
            return None
        try:
            res = await self._call(self.backend.take(buckets, self.clock()))
        except _Unavailable:
            return self._unavailable_reply()
        if res.denied >= 0:
            return self._refuse(adm, limits[res.denied], buckets[res.denied], res.tokens,
                                "rcpt")
        return None

    async def on_message(self, adm: Admission | None, recipients: Sequence[str],
                         verdict: Verdict, fields: Mapping[str, Any]) -> tuple[str | None, bool]:
        """At the end of DATA with the verdict: PHI-bearing message limits and the anomaly
        score. Returns (reply instead of 250, or None; whether to hold the message)."""
        if adm is None or adm.exempt:
            return None, False
        reply, hold = await self._on_message(adm, recipients, verdict, fields)
        if reply is None and hold:
            self.audit.emit("ratelimit.held", {
                **adm.base, **fields, "email.from.address": adm.subject.sender,
                "user.name": adm.subject.user, "event.reason": "anomaly",
                "queue.state": "hold"})
        return reply, hold

    async def _on_message(self, adm: Admission, recipients: Sequence[str],
                          verdict: Verdict, fields: Mapping[str, Any]) -> tuple[str | None, bool]:
        now = self.clock()
        s = adm.subject
        if verdict.phi:
            buckets, limits = buckets_for(self.cfg, adm.group, s, "phi_messages")
            if buckets:
                try:
                    res = await self._call(self.backend.take(buckets, now))
                except _Unavailable:
                    return self._unavailable_reply(), adm.hold
                if res.denied >= 0:
                    return self._refuse(adm, limits[res.denied], buckets[res.denied],
                                        res.tokens, "data", fields), False
        an = self.cfg.anomaly
        if not (an.enabled and s.sender):
            return None, adm.hold
        external = sorted({r.rpartition("@")[2].lower() for r in recipients
                           if not self.config.is_own_domain(r.rpartition("@")[2])})
        findings = float(sum(f.count for f in verdict.findings))
        hour = hour_of(now)
        try:
            current, baseline = await self._call(
                self.backend.record(s.sender, hour, external, findings, now))
            if baseline is None:
                baseline = Baseline(hour, hour)
                await self._call(self.backend.save_baseline(s.sender, baseline))
            elif baseline.through < hour and await self._call(
                    self.backend.claim_fold(s.sender, hour)):
                hours = await self._call(self.backend.hours(s.sender, baseline.through, hour))
                baseline = fold(baseline, hours, hour, an)
                await self._call(self.backend.save_baseline(s.sender, baseline))
        except _Unavailable:
            return self._unavailable_reply(), adm.hold
        result = assess(baseline, current, hour, findings, an)
        band = band_for(result.score, an.bands)
        if band is None:
            return None, adm.hold
        return await self._act(adm, band.score, band.actions, result, hour, fields)

    async def _act(self, adm: Admission, band: float, actions: tuple[str, ...],
                   result: Assessment, hour: int,
                   fields: Mapping[str, Any]) -> tuple[str | None, bool]:
        s = adm.subject
        now = self.clock()
        an = self.cfg.anomaly
        ev = {**adm.base, **fields, "email.from.address": s.sender, "user.name": s.user,
              "ratelimit.group": adm.group.name if adm.group else None,
              "anomaly.score": result.score, "anomaly.band": band,
              "anomaly.actions": list(actions), "anomaly.features": result.features}
        try:
            first = await self._call(self.backend.once(f"{s.sender}:{hour}:{band}", 3600.0, now))
            if "hold" in actions and not adm.hold:
                await self._call(self.backend.set_flag(s.sender, "hold", now + an.hold_for, now))
        except _Unavailable:
            first = False
        if "hold" in actions:
            adm.hold = True
        if first and "alert" in actions:
            self.audit.emit("ratelimit.alert", {**ev, "event.reason": "anomaly"})
            if an.webhook:
                self._spawn(self._post(self._summary(adm, band, actions, result, now)))
        if "lock" in actions and s.user is not None:
            locked = await asyncio.get_running_loop().run_in_executor(None, self._lock, s.user)
            if locked:
                self.audit.emit("ratelimit.locked", {**ev, "event.reason": "anomaly"})
        if "defer" in actions:
            self.audit.emit("ratelimit.deferred", {**ev, "event.reason": "anomaly",
                                                   "smtp.stage": "data"})
            return ("451 4.7.1 Unusual sending from this account; the message is deferred, "
                    "please try again later or contact your administrator"), adm.hold
        return None, adm.hold

    def _refuse(self, adm: Admission, lim: Limit, b: Bucket, tokens: float, stage: str,
                fields: Mapping[str, Any] | None = None) -> str:
        s = adm.subject
        wait = max(1, math.ceil((b.amount - tokens) / b.rate)) if b.rate else 60
        what = {"user": f"user {s.user}", "sender": f"<{s.sender}>",
                "domain": f"domain {s.domain}", "ip": f"address {s.ip}"}[lim.scope]
        noun = {"messages": "messages", "recipients": "recipients",
                "phi_messages": "messages with health information"}[lim.metric]
        self.audit.emit("ratelimit.deferred", {
            **adm.base, **(fields or {}), "email.from.address": s.sender or None,
            "user.name": s.user, "event.reason": "limit", "smtp.stage": stage,
            "ratelimit.scope": lim.scope, "ratelimit.metric": lim.metric,
            "ratelimit.window": lim.window, "ratelimit.limit": lim.count,
            "ratelimit.group": adm.group.name if adm.group else None})
        return (f"451 4.7.1 Too many {noun} from {what} (limit {lim.count} per "
                f"{WINDOW_WORDS[lim.window]}); try again in {wait} seconds")

    # ------------------------------------------------------------------ account lock

    def _locked(self, user: str) -> bool:
        """A lock written by any worker (or node sharing the users file), read from the file
        when it changed (one stat per MAIL of an authenticated session)."""
        try:
            if self._users is None:
                self._users = UserDB.load(self.config.auth.users_file)
            else:
                self._users = self._users.fresh()
        except (ConfigError, OSError):
            return False
        u = self._users.users.get(user)
        return bool(u and u.locked)

    def _lock(self, user: str) -> bool:
        try:
            db = UserDB.load(self.config.auth.users_file)
        except (ConfigError, OSError):
            return False
        u = db.users.get(user)
        if u is None or u.locked:
            return False
        db.set_user(user, locked=True)
        db.save()
        return True

    # ------------------------------------------------------------------ webhook

    def _summary(self, adm: Admission, band: float, actions: Iterable[str],
                 result: Assessment, now: float) -> dict[str, Any]:
        """The webhook's JSON: who and how unusual; never recipients, subjects or content."""
        s = adm.subject
        return {
            "event": "ratelimit.alert",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "gateway": self.config.hostname,
            "sender": s.sender,
            "user": s.user,
            "client_ip": s.ip,
            "group": adm.group.name if adm.group else None,
            "score": result.score,
            "band": band,
            "actions": list(actions),
            "features": result.features,
        }

    async def _post(self, payload: dict[str, Any]) -> None:
        import aiohttp

        url = self.cfg.anomaly.webhook
        if not url:
            return
        try:
            if self._http is None:
                self._http = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=self.cfg.anomaly.webhook_timeout))
            async with self._http.post(url, json=payload) as resp:
                if resp.status >= 300:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
        except Exception as exc:
            self.audit.emit("ratelimit.webhook_failed", {"event.outcome": "failure",
                                                         "error.type": type(exc).__name__})

    # ------------------------------------------------------------------ show

    async def usage(self, sender: str, user: str | None = None) -> dict[str, Any]:
        """Current usage and baseline of one sender (``phigate limits show SENDER``)."""
        now = self.clock()
        s = Subject(user, normalize_sender(sender), "", False)
        group = group_for(self.cfg, s)
        out: dict[str, Any] = {"sender": s.sender, "group": group.name if group else None,
                               "limits": []}
        for metric in ("messages", "recipients", "phi_messages"):
            buckets, limits = buckets_for(self.cfg, group, s, metric)
            levels = await self.backend.levels(buckets, now)
            for lim, b, level in zip(limits, buckets, levels, strict=True):
                out["limits"].append({"scope": lim.scope, "metric": metric,
                                      "window": lim.window, "limit": lim.count,
                                      "used": round(b.capacity - level, 1)})
        base = await self.backend.baseline(s.sender)
        hour = hour_of(now)
        current = await self.backend.current(s.sender, hour)
        out["this_hour"] = {"messages": current.messages, "external_domains": current.domains,
                            "phi_findings": current.phi_sum}
        out["flags"] = await self.backend.flags(s.sender, now)
        if base is not None:
            out["baseline"] = {
                "learning": not base.learned(hour, self.cfg.anomaly),
                "since": time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(base.first_hour * 3600)),
                "messages_per_hour_of_day": [round(x, 2) for x in base.hod],
                "external_domains_per_hour": round(base.domains, 2),
                "phi_findings_per_message": round(base.phi, 2),
                "messages_learned": base.messages,
            }
            out["score"] = assess(base, current, hour, 0.0, self.cfg.anomaly).score
        return out
