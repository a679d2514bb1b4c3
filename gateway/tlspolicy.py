"""Outbound TLS policy: what a destination publishes or the admin pinned, and what one
transaction must therefore achieve.

Sources, strictest wins: the admin's static policy (``conf/tls_policy.yaml``), DANE (RFC 7672:
TLSA records for the MX host, only when the resolver validated them: the AD bit), MTA-STS
(RFC 8461: ``_mta-sts`` TXT, then the policy file over HTTPS, cached by id and max_age), else
the default, opportunistic ``may``. DANE wins over MTA-STS (RFC 8461 section 2). A failed
MTA-STS fetch never downgrades a cached ``enforce`` policy.

The requirement for a recipient combines that with the verdict: ``require_tls`` needs at
least ``encrypt`` (or the stricter published level); ``deliver`` is opportunistic but still
honours a published ``enforce``/DANE policy; a static ``portal`` level sends PHI to the portal
even over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.rdatatype
import dns.resolver

from .config import Config, DestinationTls

RANK = {"none": 0, "may": 1, "encrypt": 2, "verify": 3, "dane": 4}
MTA_STS_MAX_BYTES = 64 * 1024
MTA_STS_TIMEOUT = 10.0
# A cached policy is fetched again (in the background, and on use) once this share of its
# max_age has passed, so one used regularly never lapses (RFC 8461 section 5.1: refresh
# proactively); a failed refresh keeps the cached policy until it expires.
MTA_STS_REFRESH_AFTER = 0.5
MTA_STS_REFRESH_EVERY = 3600.0  # how often the background task looks at the cache


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes


@dataclass(frozen=True)
class Requirement:
    """What one SMTP transaction must achieve."""

    level: str  # none | may | encrypt | verify | dane
    source: str = "default"  # static | mta-sts | dane | default | verdict
    mx_patterns: tuple[str, ...] = ()  # MTA-STS: the MX host must match one
    names: tuple[str, ...] = ()  # `verify`: names the certificate may carry (empty: MX name)
    tlsa: Mapping[str, tuple[Tlsa, ...]] = field(default_factory=dict)  # per MX host
    ca_file: Path | None = None

    @property
    def strict(self) -> bool:
        """The message must not travel if this is not met."""
        return RANK[self.level] >= RANK["encrypt"]


@dataclass(frozen=True)
class Published:
    """A destination domain's effective policy before the verdict is applied."""

    requirement: Requirement
    portal: bool = False  # static `portal`: PHI always through the portal
    testing: str = ""  # an MTA-STS policy in testing mode (reported, not enforced)


def needed(published: Published, action: str) -> Requirement:
    """The requirement for one recipient whose verdict action is ``action``; ``notify`` is a
    portal notification: it carries no PHI, so only what the destination itself publishes
    (MTA-STS, DANE) binds it, not the admin's pin for PHI (a partner whose certificate broke
    still gets the notification)."""
    req = published.requirement
    if action == "require_tls" and RANK[req.level] < RANK["encrypt"]:
        return replace(req, level="encrypt", source="verdict")
    if action == "notify" and req.source in ("static", "verdict"):
        return Requirement("may", "default", ca_file=req.ca_file)
    return req


def mx_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """MTA-STS MX patterns: exact names, or ``*.example.net`` for one leftmost label."""
    host = host.lower().rstrip(".")
    for p in patterns:
        p = p.lower().rstrip(".")
        if p.startswith("*."):
            head, _, rest = host.partition(".")
            if head and rest == p[2:]:
                return True
        elif host == p:
            return True
    return False


def tlsa_matches(records: tuple[Tlsa, ...], cert_der: bytes) -> bool:
    """DANE-EE (usage 3) against the end-entity certificate or its public key. Other usages
    need the peer's chain, which this Python cannot show; they never match (RFC 7672 2.2:
    then TLS is still required, unauthenticated, which ``encrypt`` ensures)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki: bytes | None = None
    for r in records:
        if r.usage != 3:
            continue
        if r.selector == 0:
            content = cert_der
        else:
            if spki is None:
                spki = x509.load_der_x509_certificate(cert_der).public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            content = spki
        if r.mtype == 0:
            digest = content
        elif r.mtype == 1:
            digest = hashlib.sha256(content).digest()
        elif r.mtype == 2:
            digest = hashlib.sha512(content).digest()
        else:
            continue
        if digest == r.data:
            return True
    return False


# --------------------------------------------------------------------------- MTA-STS


@dataclass(frozen=True)
class StsPolicy:
    id: str
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: float
    fetched: float

    def fresh(self, now: float) -> bool:
        return now < self.fetched + self.max_age

    def due(self, now: float) -> bool:
        """Time to fetch it again (it is still in force until it expires)."""
        return now >= self.fetched + self.max_age * MTA_STS_REFRESH_AFTER


def parse_sts_txt(texts: list[str]) -> str | None:
    """The policy id from ``_mta-sts`` TXT records (exactly one valid v=STSv1 record)."""
    found = []
    for t in texts:
        fields = dict(f.strip().partition("=")[::2] for f in t.split(";") if "=" in f)
        if fields.get("v") == "STSv1" and fields.get("id"):
            found.append(fields["id"].strip())
    return found[0] if len(found) == 1 else None


def parse_sts_policy(text: str, policy_id: str, now: float) -> StsPolicy:
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise ValueError("not an STSv1 policy")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise ValueError(f"bad mode {mode!r}")
    try:
        max_age = float((fields.get("max_age") or [""])[0])
    except ValueError:
        raise ValueError("bad max_age") from None
    mx = tuple(fields.get("mx", []))
    if mode != "none" and not mx:
        raise ValueError("no mx patterns")
    return StsPolicy(policy_id, mode, mx, min(max_age, 31557600.0), now)


class MtaSts:
    """Looks up, fetches and caches MTA-STS policies (in process)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, port: int,
                 ca_file: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.port = port
        self.ca_file = ca_file
        self.clock = clock
        self._cache: dict[str, StsPolicy] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def policy(self, domain: str) -> StsPolicy | None:
        async with self._locks.setdefault(domain, asyncio.Lock()):
            return await self._policy(domain)

    async def _policy(self, domain: str) -> StsPolicy | None:
        now = self.clock()
        cached = self._cache.get(domain)
        try:
            ans = await self.resolver.resolve(f"_mta-sts.{domain}", "TXT")
            texts = [b"".join(r.strings).decode("ascii", "replace") for r in ans]
            policy_id = parse_sts_txt(texts)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            policy_id = None
            texts = []
        except dns.exception.DNSException:
            return cached  # cannot ask: keep what we know
        if policy_id is None:
            # No record (any more): a cached policy stays in force until it expires.
            return cached if cached is not None and cached.fresh(now) else None
        if cached is not None and cached.id == policy_id and cached.fresh(now) \
                and not cached.due(now):
            return cached
        try:
            fetched = parse_sts_policy(await self._fetch(domain), policy_id, now)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError, ssl.SSLError):
            # A failed fetch never downgrades a cached policy.
            return cached
        self._cache[domain] = fetched
        return fetched

    async def refresh(self) -> int:
        """Fetch again every cached policy that is due (the background task's step); drop
        expired ones. Returns how many were refreshed."""
        now = self.clock()
        done = 0
        for domain, cached in list(self._cache.items()):
            if not cached.fresh(now):
                self._cache.pop(domain, None)
            elif cached.due(now):
                fresh = await self.policy(domain)
                done += fresh is not None and fresh.fetched >= now
        return done

    async def run_refresh(self) -> None:
        """Refresh due policies every ``MTA_STS_REFRESH_EVERY`` seconds, for ever."""
        while True:
            await asyncio.sleep(MTA_STS_REFRESH_EVERY)
            with contextlib.suppress(Exception):  # one bad domain must not end the task
                await self.refresh()

    async def _fetch(self, domain: str) -> str:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.ca_file is not None:
            ctx.load_default_certs()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        port = "" if self.port == 443 else f":{self.port}"
        url = f"https://mta-sts.{domain}{port}/.well-known/mta-sts.txt"
        resolver = _AiohttpResolver(self.resolver)
        timeout = aiohttp.ClientTimeout(total=MTA_STS_TIMEOUT)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, resolver=resolver),
                timeout=timeout) as session, \
                session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            if resp.content_type != "text/plain":
                raise ValueError("not text/plain")
            body = await resp.content.read(MTA_STS_MAX_BYTES + 1)
            if len(body) > MTA_STS_MAX_BYTES:
                raise ValueError("policy too large")
            return body.decode("utf-8", "replace")


class _AiohttpResolver(aiohttp.abc.AbstractResolver):
    """aiohttp resolves ``mta-sts.DOMAIN`` with the gateway's own DNS resolver."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: int = 0) -> list[aiohttp.abc.ResolveResult]:
        import socket

        out: list[aiohttp.abc.ResolveResult] = []
        for rtype, fam in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            try:
                ans = await self.resolver.resolve(host, rtype)
            except dns.exception.DNSException:
                continue
            out.extend({"hostname": host, "host": r.to_text(), "port": port, "family": fam,
                        "proto": 0, "flags": 0} for r in ans)
        if not out:
            raise OSError(f"cannot resolve {host}")
        return out

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------- DANE


async def tlsa_records(resolver: dns.asyncresolver.Resolver, host: str,
                       port: int = 25) -> tuple[Tlsa, ...] | None:
    """TLSA records for the host, only if the resolver validated them (AD bit); None when
    there are none or they are not secure. Raises DNSException on a lookup failure."""
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = resolver.nameservers
    r.port = resolver.port
    r.lifetime = resolver.lifetime
    r.timeout = resolver.timeout
    r.use_edns(0, dns.flags.DO, 1232)
    r.flags = dns.flags.RD | dns.flags.AD
    try:
        ans = await r.resolve(f"_{port}._tcp.{host.rstrip('.')}", "TLSA")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    if not ans.response.flags & dns.flags.AD:
        return None  # not validated: DANE does not apply (RFC 7672 2.2)
    return tuple(Tlsa(rr.usage, rr.selector, rr.mtype, rr.cert) for rr in ans)


# --------------------------------------------------------------------------- capabilities


@dataclass(frozen=True)
class Capability:
    starttls: bool
    version: str
    checked: float


class Capabilities:
    """What each MX host offered last time (in process), so a destination known to have no
    STARTTLS goes straight to the portal without a wasted connection."""

    async def fetch(self, hosts: Iterable[str]) -> None:
        """Learn what other workers and nodes saw of ``hosts`` (nothing to learn here)."""
        return None

    async def close(self) -> None:
        return None

    def __init__(self, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._hosts: dict[str, Capability] = {}

    def get(self, host: str) -> Capability | None:
        c = self._hosts.get(host.lower())
        if c is None or self.clock() - c.checked > self.ttl:
            return None
        return c

    def record(self, host: str, starttls: bool, version: str = "") -> None:
        self._hosts[host.lower()] = Capability(starttls, version, self.clock())


class SharedCapabilities(Capabilities):
    """The capability cache shared through Redis by every worker and node (the design's
    multi-node default): what one node learns, the others use. Redis is a help, never a
    dependency: each lookup waits at most ``timeout``, a failure leaves Redis alone for
    ``BREAKER`` seconds, and the local cache goes on working."""

    BREAKER = 5.0

    def __init__(self, ttl: float, url: str, timeout: float = 0.5,
                 clock: Callable[[], float] = time.time, prefix: str = "tlscap:") -> None:
        super().__init__(ttl, clock)
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), decode_responses=True)
        self.prefix = prefix
        self.timeout = timeout
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, host: str, starttls: bool, version: str = "") -> None:
        super().record(host, starttls, version)
        if time.monotonic() < self._down_until:
            return
        task = asyncio.ensure_future(self._store(host.lower(), self._hosts[host.lower()]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _store(self, host: str, c: Capability) -> None:
        try:
            async with self.client.pipeline(transaction=False) as p:
                p.hset(self.prefix + host, mapping={"s": int(c.starttls), "v": c.version,
                                                    "t": repr(c.checked)})
                p.expire(self.prefix + host, max(1, int(self.ttl)))
                await asyncio.wait_for(p.execute(), self.timeout * 2)
        except Exception:  # redis errors, timeouts: the local cache still has it
            self._down_until = time.monotonic() + self.BREAKER

    async def fetch(self, hosts: Iterable[str]) -> None:
        missing = [h.lower() for h in hosts if self.get(h) is None]
        if not missing or time.monotonic() < self._down_until:
            return
        try:
            async with self.client.pipeline(transaction=False) as p:
                for h in missing:
                    p.hmget(self.prefix + h, "s", "v", "t")
                rows = await asyncio.wait_for(p.execute(), self.timeout * 2)
        except Exception:
            self._down_until = time.monotonic() + self.BREAKER
            return
        for h, (s, v, t) in zip(missing, rows, strict=True):
            if s is not None and t is not None:
                seen = Capability(s == "1", v or "", float(t))
                known = self._hosts.get(h)
                if known is None or known.checked < seen.checked:
                    self._hosts[h] = seen

    async def close(self) -> None:
        for t in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, self.timeout * 2)
        with contextlib.suppress(Exception):
            await self.client.aclose()


# --------------------------------------------------------------------------- resolution


class TlsPolicy:
    """The effective policy for destination domains."""

    def __init__(self, config: Config, resolver: dns.asyncresolver.Resolver,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.resolver = resolver
        self.clock = clock
        self.sts = MtaSts(resolver, config.tls.mta_sts_port, config.tls.ca_file, clock)
        self.capabilities = (
            SharedCapabilities(config.tls.capability_ttl, config.tls.capability_redis,
                               clock=clock)
            if config.tls.capability_redis else Capabilities(config.tls.capability_ttl, clock))

    def static(self, domain: str) -> DestinationTls | None:
        d = domain.lower().rstrip(".")
        pol = self.config.tls.policies
        if d in pol:
            return pol[d]
        parts = d.split(".")
        for i in range(1, len(parts)):
            hit = pol.get("." + ".".join(parts[i:]))
            if hit is not None:
                return hit
        return None

    async def published(self, domain: str, mx_hosts: tuple[str, ...],
                        route_source: str = "mx") -> Published:
        cfg = self.config.tls
        static = self.static(domain)
        base = Requirement("may", "default", ca_file=cfg.ca_file)
        if static is not None and static.level != "portal":
            base = Requirement(static.level, "static", names=static.match, ca_file=cfg.ca_file)
        portal = static is not None and static.level == "portal"
        if static is not None and static.level in ("none", "dane"):
            if static.level == "dane":
                base = await self._dane(base, mx_hosts, required=True)
            return Published(base, portal)
        testing = ""
        # Published policies apply to real MX delivery, not to a transport or smarthost
        # the admin chose (Postfix: a nexthop from the transport map is the admin's policy).
        if route_source == "mx":
            if cfg.dane:
                dane = await self._dane(base, mx_hosts, required=False)
                if dane.level == "dane":
                    return Published(dane, portal)
            if cfg.mta_sts:
                sts = await self.sts.policy(domain)
                if sts is not None and sts.mode == "enforce" and RANK[base.level] <= RANK["verify"]:
                    base = replace(base, level="verify", source="mta-sts", mx_patterns=sts.mx)
                elif sts is not None and sts.mode == "testing":
                    testing = "mta-sts testing"
        return Published(base, portal, testing)

    async def _dane(self, base: Requirement, hosts: tuple[str, ...],
                    required: bool) -> Requirement:
        found: dict[str, tuple[Tlsa, ...]] = {}
        for host in hosts:
            try:
                records = await tlsa_records(self.resolver, host)
            except dns.exception.DNSException:
                records = None
            if records:
                found[host.lower()] = records
        if found:
            return replace(base, level="dane", source="dane" if not required else "static",
                           tlsa=found)
        if required:  # the admin asked for DANE and there is none: TLS is still mandatory
            return replace(base, level="encrypt")
        return base
