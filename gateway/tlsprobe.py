"""``phigate tls probe DOMAIN``: what the gateway would do for a destination, and what each
MX host offers (STARTTLS, protocol, cipher, certificate, name match, chain validity, DANE)."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiosmtplib
from cryptography import x509

from .config import Config
from .routing import Hop, RouteError, Router, make_resolver
from .smtpclient import _cert_has_name
from .tlspolicy import TlsPolicy, tlsa_matches
from .tlsutil import client_context


def add_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                common: Callable[[argparse.ArgumentParser], None]) -> None:
    t = sub.add_parser("tls", help="outbound TLS: probe a destination")
    tsub = t.add_subparsers(dest="action", required=True)
    p = tsub.add_parser("probe", help="MX hosts, STARTTLS, certificate, MTA-STS, DANE, policy")
    common(p)
    p.add_argument("domain")
    p.add_argument("--json", action="store_true")


async def _handshake(hop: Hop, helo: str, ctx: ssl.SSLContext,
                     wait: float) -> tuple[dict[str, Any], bytes]:
    client = aiosmtplib.SMTP(hostname=hop.ip, port=hop.port, local_hostname=helo,
                             timeout=wait, start_tls=False, use_tls=False)
    await client.connect(timeout=wait)
    try:
        await client.ehlo()
        info: dict[str, Any] = {"starttls": client.supports_extension("starttls")}
        if not info["starttls"]:
            return info, b""
        await client.starttls(tls_context=ctx, server_hostname=hop.name)
        sslobj = client.get_transport_info("ssl_object")
        cipher = sslobj.cipher() if sslobj is not None else None
        info.update({"protocol": sslobj.version() if sslobj is not None else None,
                     "cipher": cipher[0] if cipher else None})
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else b""
        return info, der or b""
    finally:
        client.close()


async def _probe_host(hop: Hop, cfg: Config, policy: TlsPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {"host": hop.name, "ip": hop.ip, "port": hop.port}
    timeout = cfg.delivery.connect_timeout
    try:
        info, der = await _handshake(hop, cfg.hostname, client_context(verify=False), timeout)
    except (TimeoutError, OSError, aiosmtplib.SMTPException, ssl.SSLError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]
        return out
    out.update(info)
    if der:
        cert = x509.load_der_x509_certificate(der)
        out.update({"subject": cert.subject.rfc4514_string(),
                    "issuer": cert.issuer.rfc4514_string(),
                    "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "name_match": _cert_has_name(der, (hop.name,))})
        verify_ctx = client_context(verify=True, cafile=cfg.tls.ca_file)
        if cfg.tls.ca_file is not None:
            verify_ctx.load_default_certs()
        try:
            await _handshake(hop, cfg.hostname, verify_ctx, timeout)
            out["chain_valid"] = True
        except ssl.SSLCertVerificationError as exc:
            out["chain_valid"] = False
            out["chain_error"] = exc.verify_message
        except (TimeoutError, OSError, aiosmtplib.SMTPException, ssl.SSLError) as exc:
            out["chain_valid"] = False
            out["chain_error"] = type(exc).__name__
    return out


async def probe(cfg: Config, domain: str) -> dict[str, Any]:
    resolver = make_resolver(cfg)
    router = Router(cfg, resolver, time.time)
    policy = TlsPolicy(cfg, resolver)
    report: dict[str, Any] = {"domain": domain}
    try:
        route = await router.route(domain)
    except RouteError as err:
        report["route_error"] = f"{err.status} {err.text}"
        return report
    report["route"] = route.source
    hosts = tuple(dict.fromkeys(h.name for h in route.hops))
    pub = await policy.published(domain, hosts, route.source)
    req = pub.requirement
    sts = policy.sts._cache.get(domain)
    report["mta_sts"] = ({"mode": sts.mode, "mx": list(sts.mx), "id": sts.id,
                          "max_age": sts.max_age} if sts else None)
    report["dane"] = {h: len(r) for h, r in req.tlsa.items()} or None
    static = policy.static(domain)
    report["static"] = ({"level": static.level, "source": static.source} if static else None)
    report["policy"] = {"level": "portal (PHI) / " + req.level if pub.portal else req.level,
                        "source": req.source, "testing": pub.testing or None}
    hops = []
    for hop in route.hops:
        h = await _probe_host(hop, cfg, policy)
        if req.tlsa.get(hop.name.lower()) and "subject" in h:
            try:
                _, der = await _handshake(hop, cfg.hostname, client_context(verify=False),
                                          cfg.delivery.connect_timeout)
                h["dane_match"] = tlsa_matches(req.tlsa[hop.name.lower()], der)
            except (TimeoutError, OSError, aiosmtplib.SMTPException, ssl.SSLError):
                h["dane_match"] = False
        hops.append(h)
    report["hosts"] = hops
    return report


def run(args: argparse.Namespace, cfg: Config) -> int:
    report = asyncio.run(probe(cfg, args.domain.lower().rstrip(".")))
    if args.json:
        print(json.dumps(report))
        return 0 if "route_error" not in report else 1
    print(f"{report['domain']}:")
    if "route_error" in report:
        print(f"  no route: {report['route_error']}")
        return 1
    pol = report["policy"]
    print(f"  effective policy: {pol['level']} (source: {pol['source']})"
          + (f", {pol['testing']}" if pol["testing"] else ""))
    if report["static"]:
        print(f"  static policy: {report['static']['level']} ({report['static']['source']})")
    sts = report["mta_sts"]
    print(f"  MTA-STS: {sts['mode'] + ' mx=' + ','.join(sts['mx']) if sts else 'none'}")
    print(f"  DANE: {'TLSA for ' + ', '.join(report['dane']) if report['dane'] else 'none'}")
    for h in report["hosts"]:
        print(f"  {h['host']} [{h['ip']}]:{h['port']}")
        if "error" in h:
            print(f"    connection failed: {h['error']}")
            continue
        if not h["starttls"]:
            print("    STARTTLS: not offered (PHI goes to the portal)")
            continue
        print(f"    STARTTLS: {h.get('protocol')} {h.get('cipher')}")
        if "subject" in h:
            print(f"    certificate: {h['subject']} issued by {h['issuer']}, "
                  f"expires {h['not_after']}")
            print(f"    name match: {'yes' if h['name_match'] else 'no'}; chain: "
                  f"{'valid' if h.get('chain_valid') else 'not valid'}"
                  + (f" ({h['chain_error']})" if h.get("chain_error") else ""))
        if "dane_match" in h:
            print(f"    DANE: {'matches' if h['dane_match'] else 'DOES NOT match'} TLSA")
    return 0
