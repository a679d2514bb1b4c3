"""Where a recipient domain's mail goes: the transport map first, then the smarthost or MX.

MX lookup follows RFC 5321 section 5.1: MX records in preference order (shuffled within one
preference), the domain's own A/AAAA when it has no MX, a null MX (RFC 7505) or a nonexistent
domain is a permanent failure, and a DNS failure is temporary. Host names are resolved with the
same configured resolver, so tests can serve the whole zone from a DNS server on loopback.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from .config import Config


@dataclass(frozen=True)
class Hop:
    """One address to try: the MX name (for TLS and logs), its IP and port."""

    name: str
    ip: str
    port: int


@dataclass(frozen=True)
class Route:
    key: str  # destination identity, for grouping recipients and concurrency
    source: str  # transport | smarthost | mx
    hops: tuple[Hop, ...]


class RouteError(Exception):
    def __init__(self, permanent: bool, status: str, text: str) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.status = status
        self.text = text


def make_resolver(config: Config) -> dns.asyncresolver.Resolver:
    if config.dns.nameservers:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = list(config.dns.nameservers)
        r.port = config.dns.port
    else:
        r = dns.asyncresolver.Resolver()
    r.lifetime = config.dns.timeout
    r.timeout = config.dns.timeout
    return r


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Router:
    CACHE_MAX_TTL = 300.0

    def __init__(self, config: Config, resolver: dns.asyncresolver.Resolver,
                 clock: Callable[[], float]) -> None:
        self.config = config
        self.resolver = resolver
        self.clock = clock
        self._cache: dict[str, tuple[float, Route | RouteError]] = {}

    def static_route(self, domain: str) -> Route | None:
        cfg = self.config.delivery
        d = domain.lower().rstrip(".")
        hp = cfg.transport.get(d)
        if hp is None:
            parts = d.split(".")
            for i in range(1, len(parts)):
                hp = cfg.transport.get("." + ".".join(parts[i:]))
                if hp is not None:
                    break
        if hp is not None:
            return Route(f"transport:{hp}", "transport", (Hop(hp.host, hp.host, hp.port),))
        if cfg.mode == "smarthost" and cfg.smarthost is not None:
            sh = cfg.smarthost
            return Route(f"smarthost:{sh}", "smarthost", (Hop(sh.host, sh.host, sh.port),))
        return None

    async def route(self, domain: str) -> Route:
        static = self.static_route(domain)
        if static is not None:
            return await self._resolve_static(static)
        key = domain.lower().rstrip(".")
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], RouteError):
                raise cached[1]
            return cached[1]
        try:
            route, ttl = await self._mx_route(key)
        except RouteError as err:
            if err.permanent:
                self._cache[key] = (now + 60.0, err)
            raise
        self._cache[key] = (now + min(ttl, self.CACHE_MAX_TTL), route)
        return route

    async def _resolve_static(self, route: Route) -> Route:
        hops: list[Hop] = []
        for hop in route.hops:
            if _is_ip(hop.ip):
                hops.append(hop)
            else:
                ips, _ = await self._addresses(hop.name)
                hops.extend(Hop(hop.name, ip, hop.port) for ip in ips)
        if not hops:
            raise RouteError(False, "4.4.3", f"cannot resolve {route.key}")
        return Route(route.key, route.source, tuple(hops))

    async def _addresses(self, name: str) -> tuple[list[str], float]:
        ips: list[str] = []
        ttl = self.CACHE_MAX_TTL
        errors = 0
        for rtype in ("A", "AAAA"):
            try:
                ans = await self.resolver.resolve(name, rtype)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers):
                errors += 1
                continue
            ttl = min(ttl, float(ans.rrset.ttl if ans.rrset is not None else ttl))
            ips.extend(r.to_text() for r in ans)
        if not ips and errors:
            raise RouteError(False, "4.4.3", f"DNS failure resolving {name}")
        return ips, ttl

    async def _mx_route(self, domain: str) -> tuple[Route, float]:
        port = 25
        try:
            ans = await self.resolver.resolve(domain, "MX")
            records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in ans]
            ttl = float(ans.rrset.ttl) if ans.rrset is not None else 300.0
        except dns.resolver.NXDOMAIN:
            raise RouteError(True, "5.1.2", f"domain {domain} does not exist") from None
        except dns.resolver.NoAnswer:
            records, ttl = [], 300.0
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise RouteError(False, "4.4.3", f"DNS failure looking up MX for {domain}: "
                             f"{type(exc).__name__}") from None
        if len(records) == 1 and records[0][1] in ("", "."):
            raise RouteError(True, "5.1.10", f"domain {domain} accepts no mail (null MX)")
        if not records:
            names = [domain]  # implicit MX: the domain's own address records
        else:
            records = [r for r in records if r[1] not in ("", ".")]
            by_pref: dict[int, list[str]] = {}
            for pref, name in records:
                by_pref.setdefault(pref, []).append(name)
            names = []
            for pref in sorted(by_pref):
                group = by_pref[pref]
                random.shuffle(group)
                names.extend(group)
        hops: list[Hop] = []
        dns_trouble: RouteError | None = None
        for name in names:
            try:
                ips, a_ttl = await self._addresses(name)
            except RouteError as err:
                dns_trouble = err
                continue
            ttl = min(ttl, a_ttl)
            hops.extend(Hop(name, ip, port) for ip in ips)
        if not hops:
            if not records:
                if dns_trouble is not None:  # could not ask: never bounce on a DNS failure
                    raise dns_trouble
                raise RouteError(True, "5.1.2", f"domain {domain} has no MX and no address")
            raise RouteError(False, "4.4.3", f"no address for the MX hosts of {domain}")
        return Route(f"mx:{domain}", "mx", tuple(hops)), ttl
