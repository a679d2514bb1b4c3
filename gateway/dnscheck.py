"""``phigate dns check DOMAIN``: are the DNS records that make our mail trusted in place?

SPF (parsed, includes followed within the 10-lookup limit of RFC 7208 4.6.4, evaluated for
this gateway's outbound addresses), DKIM (the key at each of our selectors matches our private
key), DMARC (policy, and whether our mail from DOMAIN aligns), MTA-STS and TLS-RPT records.
Each finding says what is wrong and what to publish instead. The resolver is the configured
one (``dns.nameservers``, ``dns.port``); lookups go through one small function so tests can
drive it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from .config import Config
from .dkimkeys import (
    ACTIVE,
    PENDING,
    KeyStore,
    load_private_key,
    parse_tags,
    public_key_b64,
    txt_value,
    zone_line,
)

OK, WARN, ERROR = "ok", "warn", "error"
SPF_LOOKUP_LIMIT = 10
SPF_VOID_LIMIT = 2
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsFailure(Exception):
    """The resolver could not answer (timeout, SERVFAIL): not proof that a record is absent."""


# Answers a query: a list of strings (TXT joined, A/AAAA as text, MX as "PREF HOST"); an
# empty list for NXDOMAIN or no data; DnsFailure when no answer could be had.
Lookup = Callable[[str, str], list[str]]


def resolver_lookup(config: Config) -> Lookup:
    res = dns.resolver.Resolver(configure=not config.dns.nameservers)
    if config.dns.nameservers:
        res.nameservers = list(config.dns.nameservers)
    res.port = config.dns.port
    res.timeout = res.lifetime = config.dns.timeout

    def lookup(name: str, rdtype: str) -> list[str]:
        try:
            answer = res.resolve(name, rdtype, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsFailure(f"{name} {rdtype}: {type(exc).__name__}") from None
        out = []
        for rr in answer:
            if rr.rdtype == dns.rdatatype.TXT:
                out.append(b"".join(rr.strings).decode("utf-8", "replace"))
            elif rr.rdtype == dns.rdatatype.MX:
                out.append(f"{rr.preference} {rr.exchange.to_text(omit_final_dot=True)}")
            else:
                out.append(rr.to_text())
        return out

    return lookup


@dataclass(frozen=True)
class Finding:
    check: str  # spf, dkim, dmarc, mta-sts, tls-rpt
    status: str  # OK, WARN or ERROR
    message: str
    fix: str | None = None


@dataclass
class Report:
    domain: str
    addresses: list[str]
    findings: list[Finding] = field(default_factory=list)

    def add(self, check: str, status: str, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(check, status, message, fix))

    @property
    def ok(self) -> bool:
        return all(f.status != ERROR for f in self.findings)

    def to_json(self) -> dict[str, object]:
        return {"domain": self.domain, "addresses": self.addresses, "ok": self.ok,
                "findings": [asdict(f) for f in self.findings]}

    def text(self) -> str:
        lines = [f"DNS check for {self.domain} (sending addresses: "
                 f"{', '.join(self.addresses) or 'unknown'})"]
        for f in self.findings:
            lines.append(f"{f.status.upper():5} {f.check:8} {f.message}")
            if f.fix:
                lines.extend(f"{'':15}fix: {line}" for line in f.fix.splitlines())
        errors = sum(f.status == ERROR for f in self.findings)
        warns = sum(f.status == WARN for f in self.findings)
        lines.append(f"{errors} error(s), {warns} warning(s)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- SPF


class SpfPermError(Exception):
    pass


@dataclass
class SpfWalk:
    """State of one SPF evaluation: DNS lookups used and void lookups seen."""

    lookup: Lookup
    lookups: int = 0
    voids: int = 0
    notes: list[str] = field(default_factory=list)

    def count(self, what: str) -> None:
        self.lookups += 1
        if self.lookups > SPF_LOOKUP_LIMIT:
            raise SpfPermError(f"more than {SPF_LOOKUP_LIMIT} DNS lookups (at {what})")

    def query(self, name: str, rdtype: str) -> list[str]:
        answer = self.lookup(name, rdtype)
        if not answer:
            self.voids += 1
        return answer


def spf_record(lookup: Lookup, domain: str) -> str | None:
    records = [r for r in lookup(domain, "TXT") if r.lower().startswith("v=spf1")
               and (len(r) == 6 or r[6] == " ")]
    if len(records) > 1:
        raise SpfPermError(f"{domain} publishes {len(records)} SPF records (only one allowed)")
    return records[0] if records else None


def _cidr(spec: str) -> tuple[str, int | None, int | None]:
    """Split ``domain/24//64`` into the domain and the IPv4 and IPv6 prefix lengths."""
    name, _, v6 = spec.partition("//")
    name, _, v4 = name.partition("/")
    return name, int(v4) if v4 else None, int(v6) if v6 else None


def _addr_match(ip: IPAddr, addrs: Sequence[str], v4: int | None, v6: int | None) -> bool:
    for a in addrs:
        try:
            candidate = ipaddress.ip_address(a)
        except ValueError:
            continue
        if candidate.version != ip.version:
            continue
        plen = v4 if ip.version == 4 else v6
        if plen is None:
            plen = candidate.max_prefixlen
        net = ipaddress.ip_network(f"{candidate}/{plen}", strict=False)
        if ip in net:
            return True
    return False


def spf_eval(walk: SpfWalk, domain: str, ip: IPAddr, depth: int = 0) -> str:
    """check_host() of RFC 7208 for ``ip``: pass, fail, softfail, neutral, none; raises
    SpfPermError on a limit or syntax problem. Macros are not expanded (reported)."""
    if depth > 12:
        raise SpfPermError("include/redirect loop")
    record = spf_record(walk.lookup, domain)
    if record is None:
        return "none"
    redirect = None
    for term in record.split()[1:]:
        if "=" in term.split(":")[0]:
            name, _, value = term.partition("=")
            if name.lower() == "redirect":
                redirect = value
            continue
        qual = term[0] if term[0] in "+-~?" else "+"
        mech = term[1:] if term[0] in "+-~?" else term
        name, _, arg = mech.partition(":")
        name = name.lower()
        if "%" in arg:
            walk.notes.append(f"{domain}: '{term}' uses macros, not evaluated here")
            if name in ("include", "a", "mx", "ptr", "exists"):
                walk.count(term)
            continue
        matched = False
        if "/" in name:  # a/24, mx/24 without a domain
            name, _, rest = name.partition("/")
            arg = f"{domain}/{rest}"
        if name == "all":
            matched = True
        elif name in ("ip4", "ip6"):
            try:
                matched = ip in ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise SpfPermError(f"{domain}: bad {name} value '{arg}'") from None
        elif name == "include":
            walk.count(term)
            result = spf_eval(walk, arg, ip, depth + 1)
            if result == "none":
                raise SpfPermError(f"{domain}: include:{arg} has no SPF record")
            matched = result == "pass"
        elif name == "a":
            walk.count(term)
            target, v4, v6 = _cidr(arg or domain)
            target = target or domain
            addrs = walk.query(target, "A" if ip.version == 4 else "AAAA")
            matched = _addr_match(ip, addrs, v4, v6)
        elif name == "mx":
            walk.count(term)
            target, v4, v6 = _cidr(arg or domain)
            hosts = [h.split()[-1] for h in walk.query(target or domain, "MX")][:10]
            for host in hosts:
                if _addr_match(ip, walk.lookup(host, "A" if ip.version == 4 else "AAAA"),
                               v4, v6):
                    matched = True
                    break
        elif name == "exists":
            walk.count(term)
            matched = bool(walk.query(arg, "A"))
        elif name == "ptr":
            walk.count(term)
            walk.notes.append(f"{domain}: 'ptr' is deprecated (RFC 7208 5.5) and slow; "
                              "not evaluated here")
        else:
            raise SpfPermError(f"{domain}: unknown mechanism '{term}'")
        if walk.voids > SPF_VOID_LIMIT:
            raise SpfPermError(f"more than {SPF_VOID_LIMIT} lookups found nothing")
        if matched:
            return {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}[qual]
    if redirect:
        walk.count("redirect=" + redirect)
        result = spf_eval(walk, redirect, ip, depth + 1)
        if result == "none":
            raise SpfPermError(f"{domain}: redirect={redirect} has no SPF record")
        return result
    return "neutral"


def spf_lookup_total(lookup: Lookup, domain: str, depth: int = 0,
                     seen: frozenset[str] = frozenset()) -> int:
    """DNS lookups needed to evaluate the whole record: what an address matching nothing
    (or matched only at the end) costs a receiver."""
    if depth > 12 or domain in seen:
        return SPF_LOOKUP_LIMIT + 1
    try:
        record = spf_record(lookup, domain)
    except SpfPermError:
        return 0
    total = 0
    for term in (record or "").split()[1:]:
        body = term.lstrip("+-~?")
        name, _, arg = body.partition(":")
        name = name.partition("/")[0].lower()
        if name.startswith("redirect="):
            name, arg = "include", body.partition("=")[2]
        if name in ("a", "mx", "ptr", "exists"):
            total += 1
        elif name == "include" and "%" not in arg:
            total += 1 + spf_lookup_total(lookup, arg, depth + 1, seen | {domain})
        if total > 4 * SPF_LOOKUP_LIMIT:
            break
    return total


def check_spf(report: Report, lookup: Lookup, domain: str,
              addresses: Sequence[str]) -> dict[str, str]:
    """Adds findings; returns the SPF result for each address."""
    results: dict[str, str] = {}
    try:
        record = spf_record(lookup, domain)
    except SpfPermError as exc:
        report.add("spf", ERROR, str(exc), "merge them into one v=spf1 TXT record")
        return {a: "permerror" for a in addresses}
    if record is None:
        ips = " ".join(f"ip{ipaddress.ip_address(a).version}:{a}" for a in addresses)
        report.add("spf", ERROR, f"{domain} has no SPF record",
                   f'publish: {domain}. IN TXT "v=spf1 {ips or "ip4:ADDRESS"} -all"')
        return {a: "none" for a in addresses}
    report.add("spf", OK, f"record: {record}")
    total = spf_lookup_total(lookup, domain)
    if total > SPF_LOOKUP_LIMIT:
        report.add("spf", ERROR,
                   f"evaluating the record needs {total} DNS lookups; receivers stop at "
                   f"{SPF_LOOKUP_LIMIT} and answer permerror (RFC 7208 4.6.4), which fails "
                   "SPF and DMARC",
                   "flatten includes into ip4:/ip6: ranges or drop services that no longer "
                   "send for you, until `phigate dns check` counts 10 or fewer")
    for a in addresses:
        walk = SpfWalk(lookup)
        try:
            result = spf_eval(walk, domain, ipaddress.ip_address(a))
        except SpfPermError as exc:
            result = "permerror"
            report.add("spf", ERROR, f"{a}: permerror: {exc}",
                       "fix the record so receivers can evaluate it")
        for note in walk.notes:
            report.add("spf", WARN, note)
        results[a] = result
        if result == "pass":
            report.add("spf", OK, f"{a} is authorised ({walk.lookups} lookups)")
        elif result != "permerror":
            mech = f"ip{ipaddress.ip_address(a).version}:{a}"
            report.add("spf", ERROR, f"{a} is not authorised (result: {result})",
                       f"add {mech} to the record before its 'all'")
    return results


# --------------------------------------------------------------------------- DKIM


def check_dkim(report: Report, lookup: Lookup, config: Config, domain: str) -> str | None:
    """Adds findings; returns the d= our mail from ``domain`` carries if its key verifies."""
    store = KeyStore(config)
    name = domain
    entries = []
    while name:
        entries = [e for e in store.entries(name)]
        if any(e.status == ACTIVE for e in entries):
            break
        name = name.partition(".")[2]
    if not entries:
        report.add("dkim", ERROR, f"phigate has no DKIM key for {domain}; its mail leaves "
                   "unsigned", f"phigate dkim keygen --domain {domain} --selector phigate")
        return None
    signing_ok = True
    for e in entries:
        try:
            key = load_private_key(e.path)
        except Exception as exc:
            report.add("dkim", ERROR, str(exc))
            signing_ok = False
            continue
        want = public_key_b64(key)
        try:
            records = lookup(e.dns_name, "TXT")
        except DnsFailure as exc:
            report.add("dkim", ERROR, f"could not look up {e.dns_name}: {exc}",
                       "check the DNS servers of the zone, then run this again")
            signing_ok = signing_ok and e.status != ACTIVE
            continue
        tags = [parse_tags(r) for r in records]
        status = ERROR if e.status == ACTIVE else WARN
        label = f"{e.dns_name} ({e.algorithm}, {e.status})"
        if not tags:
            report.add("dkim", status, f"{label}: no record", f"publish: {zone_line(e, key)}")
        elif not any(t.get("p") == want for t in tags):
            report.add("dkim", status,
                       f"{label}: the published key does not match the private key {e.path}",
                       f"replace the record with: {zone_line(e, key)}")
        else:
            t = next(t for t in tags if t.get("p") == want)
            if t.get("k", "rsa") != e.algorithm:
                report.add("dkim", status, f"{label}: record says k={t.get('k')}",
                           f"publish: {zone_line(e, key)}")
            elif "y" in t.get("t", "").split(":"):
                report.add("dkim", WARN, f"{label}: key is in test mode (t=y); receivers may "
                           "treat signatures as unsigned", f'publish: "{txt_value(key)}"')
            else:
                report.add("dkim", OK, f"{label}: published key matches")
                continue
        if e.status == ACTIVE:
            signing_ok = False
    pending = [e for e in entries if e.status == PENDING]
    for e in pending:
        report.add("dkim", OK, f"rotation: selector {e.selector} is pending; "
                   f"`phigate dkim rotate --domain {e.domain}` switches to it")
    return name if signing_ok else None


# --------------------------------------------------------------------------- DMARC


def _org(config: Config, domain: str) -> str:
    """Organisational domain: the shortest configured domain above it, else the last two
    labels (no public-suffix list here)."""
    own = [d for d in config.domains if domain == d or domain.endswith("." + d)]
    return min(own, key=len) if own else ".".join(domain.split(".")[-2:])


def _aligned(a: str, b: str, mode: str, config: Config) -> bool:
    return a == b if mode == "s" else _org(config, a) == _org(config, b)


def check_dmarc(report: Report, lookup: Lookup, config: Config, domain: str,
                dkim_domain: str | None, spf: dict[str, str]) -> None:
    org = _org(config, domain)
    where = f"_dmarc.{domain}"
    records = [r for r in lookup(where, "TXT") if r.replace(" ", "").startswith("v=DMARC1")]
    if not records and org != domain:
        where = f"_dmarc.{org}"
        records = [r for r in lookup(where, "TXT") if r.replace(" ", "").startswith("v=DMARC1")]
    if not records:
        report.add("dmarc", WARN, f"no DMARC record for {domain}: receivers apply no policy "
                   "and send no reports",
                   f'publish: _dmarc.{org}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc@{org}" '
                   "then move to p=quarantine/reject once the reports are clean")
        return
    if len(records) > 1:
        report.add("dmarc", ERROR, f"{where} has {len(records)} DMARC records; receivers "
                   "ignore them all", "keep exactly one")
        return
    tags = {k.lower(): v.lower() for k, v in parse_tags(records[0]).items()}
    policy = tags.get("sp", tags.get("p", "")) if where != f"_dmarc.{domain}" else tags.get("p")
    policy = policy or ""
    adkim, aspf = tags.get("adkim", "r"), tags.get("aspf", "r")
    if policy not in ("none", "quarantine", "reject"):
        report.add("dmarc", ERROR, f"{where}: missing or invalid p= ('{policy}')",
                   "set p=none, p=quarantine or p=reject")
        return
    report.add("dmarc", OK, f"{where}: p={policy}, adkim={adkim}, aspf={aspf}"
               + (f", pct={tags['pct']}" if "pct" in tags else ""))
    if "rua" not in tags:
        report.add("dmarc", WARN, f"{where}: no rua=, so no aggregate reports",
                   f"add rua=mailto:dmarc-reports@{org}")
    dkim_ok = dkim_domain is not None and _aligned(dkim_domain, domain, adkim, config)
    spf_ok = bool(spf) and all(r == "pass" for r in spf.values())  # MAIL FROM is the From domain
    if dkim_domain is not None and not dkim_ok:
        report.add("dmarc", ERROR if policy != "none" else WARN,
                   f"our DKIM signature (d={dkim_domain}) is not aligned with From domain "
                   f"{domain} under adkim={adkim}",
                   f"give {domain} its own key (phigate dkim keygen --domain {domain} "
                   "--selector phigate) or relax alignment (adkim=r)")
    if dkim_ok or spf_ok:
        report.add("dmarc", OK, "mail from this gateway passes DMARC via "
                   + " and ".join(n for n, ok in (("DKIM", dkim_ok), ("SPF", spf_ok)) if ok))
    elif policy in ("quarantine", "reject"):
        report.add("dmarc", ERROR, f"p={policy}, but neither our DKIM signature nor SPF "
                   f"passes aligned for {domain}: receivers will {policy} this gateway's mail",
                   "fix the DKIM and SPF findings above")
    else:
        report.add("dmarc", WARN, f"neither DKIM nor SPF passes aligned for {domain} "
                   "(p=none: delivered, but reported as failing)")


# --------------------------------------------------------------------------- MTA-STS, TLS-RPT


def check_mta_sts(report: Report, lookup: Lookup, domain: str) -> None:
    records = [r for r in lookup(f"_mta-sts.{domain}", "TXT") if r.startswith("v=STSv1")]
    if not records:
        report.add("mta-sts", WARN, f"no MTA-STS record (_mta-sts.{domain}): senders cannot "
                   f"insist on TLS to {domain}",
                   f'publish _mta-sts.{domain}. IN TXT "v=STSv1; id=YYYYMMDD01" and the policy '
                   f"at https://mta-sts.{domain}/.well-known/mta-sts.txt (RFC 8461)")
        return
    if len(records) > 1:
        report.add("mta-sts", ERROR, f"_mta-sts.{domain} has {len(records)} STS records",
                   "keep exactly one")
        return
    tags = parse_tags(records[0])
    sts_id = tags.get("id", "")
    if not sts_id or not sts_id.isalnum() or len(sts_id) > 32:
        report.add("mta-sts", ERROR, f"_mta-sts.{domain}: id= missing or not 1-32 letters "
                   "and digits", "set id= to a new value whenever the policy changes")
    else:
        report.add("mta-sts", OK, f"_mta-sts.{domain}: id={sts_id} (policy file not fetched)")


def check_tls_rpt(report: Report, lookup: Lookup, domain: str) -> None:
    name = f"_smtp._tls.{domain}"
    records = [r for r in lookup(name, "TXT") if r.startswith("v=TLSRPTv1")]
    if not records:
        report.add("tls-rpt", WARN, f"no TLS-RPT record ({name}): no reports of TLS failures "
                   f"delivering to {domain}",
                   f'publish {name}. IN TXT "v=TLSRPTv1; rua=mailto:tls-reports@{domain}"')
        return
    rua = parse_tags(records[0]).get("rua", "")
    if len(records) > 1 or not rua or not all(
            u.startswith(("mailto:", "https:")) for u in rua.split(",")):
        report.add("tls-rpt", ERROR, f"{name}: needs exactly one record with rua=mailto: or "
                   "https: addresses", f'publish "v=TLSRPTv1; rua=mailto:tls-reports@{domain}"')
    else:
        report.add("tls-rpt", OK, f"{name}: rua={rua}")


# --------------------------------------------------------------------------- all together


def sending_addresses(config: Config, lookup: Lookup, extra: Sequence[str] = ()) -> list[str]:
    """``--ip`` values, else ``outbound_addresses``, else the addresses of ``hostname``."""
    if extra or config.outbound_addresses:
        return [str(ipaddress.ip_address(a)) for a in (extra or config.outbound_addresses)]
    out: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            out += lookup(config.hostname, rdtype)
        except DnsFailure:
            continue
    return out


def check(config: Config, domain: str, lookup: Lookup | None = None,
          addresses: Sequence[str] = ()) -> Report:
    lookup = lookup or resolver_lookup(config)
    domain = dns.name.from_text(domain).to_text(omit_final_dot=True).lower()
    report = Report(domain, sending_addresses(config, lookup, addresses))
    if not config.is_own_domain(domain):
        report.add("config", WARN, f"{domain} is not one of the organisation's domains in "
                   f"{config.source}; phigate does not sign or send for it")
    if not report.addresses:
        report.add("spf", WARN, f"no sending address known ({config.hostname} has none)",
                   f"set outbound_addresses in {config.source}, or pass --ip")
    steps: list[tuple[str, Callable[[], object]]] = []
    spf: dict[str, str] = {}
    dkim_domain: str | None = None

    def run_spf() -> None:
        nonlocal spf
        spf = check_spf(report, lookup, domain, report.addresses)

    def run_dkim() -> None:
        nonlocal dkim_domain
        dkim_domain = check_dkim(report, lookup, config, domain)

    steps = [("spf", run_spf), ("dkim", run_dkim),
             ("dmarc", lambda: check_dmarc(report, lookup, config, domain, dkim_domain, spf)),
             ("mta-sts", lambda: check_mta_sts(report, lookup, domain)),
             ("tls-rpt", lambda: check_tls_rpt(report, lookup, domain))]
    for name, step in steps:
        try:
            step()
        except DnsFailure as exc:
            report.add(name, ERROR, f"DNS lookup failed: {exc}",
                       "check that the zone's servers answer, then run this again")
    return report
