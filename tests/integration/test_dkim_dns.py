"""DKIM and ``phigate dns check`` against a real authoritative DNS server (NSD) on loopback:
OpenDKIM verifies our signatures with the public keys fetched from it, and ``dns check``
reports good records as good and each broken one (SPF over the 10-lookup limit, a DKIM
record that does not match the private key, DMARC p=reject with misaligned mail).

Needs the Debian packages ``nsd`` and ``opendkim``; outside CI the tests are skipped when
they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import Config, load_config
from gateway.dkim import Signer
from gateway.dkimcli import add_parsers
from gateway.dkimkeys import KeyStore, keygen, load_private_key, rotate, txt_strings, txt_value
from gateway.dnscheck import ERROR, OK, check, resolver_lookup
from tests import opendkim
from tests.integration.dnsserver import NSD_PACKAGE, NsdServer, find_nsd

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf" / "gateway.yaml"
GATEWAY_IP = "192.0.2.25"


def _txt(name: str, value: str) -> str:
    return f"{name} IN TXT " + " ".join(f'"{s}"' for s in txt_strings(value))


def _zone(origin: str, body: list[str]) -> str:
    return "\n".join([f"$ORIGIN {origin}.", "$TTL 60",
                      f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60",
                      f"@ IN NS ns.{origin}.", "ns IN A 127.0.0.1", *body, ""])


@dataclass
class World:
    nsd: NsdServer
    var: Path
    sets: list[str]

    def config(self, *extra: str) -> Config:
        return load_config(CONF, [*self.sets, *extra])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if find_nsd() is None:
        msg = f"NSD is not installed (Debian package '{NSD_PACKAGE}')"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}: CI must install it")
        pytest.skip(f"{msg}; CI installs it")
    base = tmp_path_factory.mktemp("dkimdns")
    var = base / "var"
    sets = [f"paths.var={var}", "domains=[good.test, bad.test]", "dns.nameservers=[127.0.0.1]",
            f"outbound_addresses=[{GATEWAY_IP}]", "dns.timeout=3s"]
    cfg = load_config(CONF, sets)
    quiet = lambda _line: None  # noqa: E731
    good_rsa = keygen(cfg, "good.test", "phigate", out=quiet)
    good_ed = keygen(cfg, "good.test", "ed1", "ed25519", out=quiet)
    keygen(cfg, "bad.test", "phigate", out=quiet)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = _zone("good.test", [
        '@ IN TXT "v=spf1 ip4:198.51.100.0/24 include:_spf.good.test -all"',
        f'_spf IN TXT "v=spf1 ip4:{GATEWAY_IP} ~all"',
        _txt("phigate._domainkey", txt_value(load_private_key(good_rsa.path))),
        _txt("ed1._domainkey", txt_value(load_private_key(good_ed.path))),
        '_dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@good.test"',
        '_mta-sts IN TXT "v=STSv1; id=20240101T01"',
        '_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tls@good.test"',
    ])
    includes = [line for n in range(5) for line in (
        f'i{n} IN TXT "v=spf1 a mx -all"', f"i{n} IN A 198.51.100.{n}", f"i{n} IN MX 10 i{n}")]
    bad = _zone("bad.test", [
        # 6 includes, each costing 3 lookups (include, a, mx): 18 > 10
        '@ IN TXT "v=spf1 include:i0.bad.test include:i1.bad.test include:i2.bad.test '
        'include:i3.bad.test include:i4.bad.test include:last.bad.test -all"',
        *includes,
        f'last IN TXT "v=spf1 ip4:{GATEWAY_IP} a mx -all"',
        # the published key is not ours
        _txt("phigate._domainkey", txt_value(other)),
        '_dmarc IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"',
        # mail.bad.test: signed as d=bad.test (its parent), but its DMARC wants strict
        '_dmarc.mail IN TXT "v=DMARC1; p=reject; adkim=s"',
        '_smtp._tls IN TXT "v=TLSRPTv1; rua=ftp://nope"',
    ])
    srv = NsdServer(base / "nsd", {"good.test.": good, "bad.test.": bad})
    srv.start()
    yield World(srv, var, [*sets, f"dns.port={srv.port}"])
    srv.stop()


def _cli(world: World, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="phigate")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([*argv, "--config", str(CONF),
                              *[a for s in world.sets for a in ("--set", s)]])
    result: int = args.handler(args, load_config(args.config, args.overrides))
    return result


# --------------------------------------------------------------------------- OpenDKIM via DNS


def _keys_from_dns(world: World, signed: bytes) -> dict[str, str]:
    """The TXT record of every selector signing ``signed``, as NSD serves it."""
    lookup = resolver_lookup(world.config())
    names = re.findall(rb"\bs=([\w.-]+);[\s\S]*?", signed)
    domains = re.findall(rb"\bd=([\w.-]+);", signed)
    out = {}
    for s, d in zip(names, domains, strict=True):
        name = f"{s.decode()}._domainkey.{d.decode()}"
        (record,) = lookup(name, "TXT")
        out[name] = record
    return out


def test_opendkim_verifies_with_keys_from_dns(world, tmp_path):
    signer = Signer.from_config(world.config())
    msg = ("From: Dr. Ünal <dr@good.test>\r\nTo: pat@partner.test\r\nSubject: Résultats\r\n"
           f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
           "Message-ID: <x1@good.test>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           "Grüße\r\n").encode()
    signed = signer.sign(msg, "dr@good.test")
    results = opendkim.verify(signed, tmp_path, _keys_from_dns(world, signed))
    assert results == {"phigate._domainkey.good.test": "pass",
                       "ed1._domainkey.good.test": "pass"}
    # bad.test publishes someone else's key: the same verifier fails our signature
    bad = signer.sign(msg.replace(b"dr@good.test", b"dr@bad.test"), "dr@bad.test")
    results = opendkim.verify(bad, tmp_path / "bad", _keys_from_dns(world, bad))
    assert results == {"phigate._domainkey.bad.test": "fail"}


# --------------------------------------------------------------------------- dns check


def _by_status(report_json: dict[str, object]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in report_json["findings"]:  # type: ignore[attr-defined]
        out.setdefault(f["status"], []).append(f"{f['check']}: {f['message']}")
    return out


def test_dns_check_good_domain(world, capsys):
    assert _cli(world, ["dns", "check", "good.test"]) == 0
    text = capsys.readouterr().out
    assert "0 error(s), 0 warning(s)" in text, text
    assert f"{GATEWAY_IP} is authorised" in text
    assert "phigate._domainkey.good.test. (rsa, active): published key matches" in text
    assert "ed1._domainkey.good.test. (ed25519, active): published key matches" in text
    assert "passes DMARC via DKIM and SPF" in text
    report = check(world.config(), "good.test")
    assert report.ok and {f.check for f in report.findings if f.status == OK} == {
        "spf", "dkim", "dmarc", "mta-sts", "tls-rpt"}


def test_dns_check_reports_each_problem(world, capsys):
    assert _cli(world, ["dns", "check", "bad.test", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    errors = "\n".join(_by_status(report)[ERROR])
    assert "needs 18 DNS lookups; receivers stop at 10" in errors
    assert f"{GATEWAY_IP}: permerror: more than 10 DNS lookups" in errors
    assert ("phigate._domainkey.bad.test. (rsa, active): the published key does not match "
            "the private key") in errors
    assert "p=reject, but neither our DKIM signature nor SPF passes aligned for bad.test" in errors
    assert "tls-rpt" in errors
    warns = "\n".join(_by_status(report)["warn"])
    assert "no MTA-STS record" in warns
    # every finding that needs action says what to do
    assert all(f["fix"] for f in report["findings"] if f["status"] == ERROR)


def test_dns_check_strict_dmarc_misaligned_subdomain(world, capsys):
    rc = _cli(world, ["dns", "check", "mail.bad.test"])
    text = capsys.readouterr().out
    assert rc == 1
    assert ("our DKIM signature (d=bad.test) is not aligned with From domain mail.bad.test "
            "under adkim=s") not in text  # the key does not even verify: reported as such
    assert "p=reject, but neither our DKIM signature nor SPF passes aligned" in text
    # with a valid key at the parent, the misalignment itself is the finding
    report = check(world.config(), "mail.good.test")
    assert not any("aligned" in f.message and f.status == ERROR for f in report.findings)
    msgs = [f"{f.status} {f.message}" for f in check(world.config(), "mail.bad.test").findings]
    assert any(m.startswith("error mail.bad.test has no SPF record") for m in msgs), msgs


def test_dns_check_alignment_finding(world, tmp_path):
    """Mail from sub.good.test is signed d=good.test: fine under relaxed alignment, an error
    under strict alignment when the policy enforces."""
    from gateway.dnscheck import Report, check_dmarc

    cfg = world.config()
    lookup = resolver_lookup(cfg)

    def fake(name: str, rdtype: str) -> list[str]:
        if name == "_dmarc.sub.good.test":
            return ["v=DMARC1; p=reject; adkim=s"]
        return lookup(name, rdtype)

    report = Report("sub.good.test", [GATEWAY_IP])
    check_dmarc(report, fake, cfg, "sub.good.test", "good.test", {GATEWAY_IP: "fail"})
    errors = [f.message for f in report.findings if f.status == ERROR]
    assert ("our DKIM signature (d=good.test) is not aligned with From domain sub.good.test "
            "under adkim=s") in errors
    report = Report("sub.good.test", [GATEWAY_IP])
    check_dmarc(report, lookup, cfg, "sub.good.test", "good.test", {GATEWAY_IP: "fail"})
    assert report.ok  # falls back to _dmarc.good.test: relaxed, aligned


def test_rotation_switch_checks_the_real_dns(world):
    cfg = world.config()
    store = KeyStore(cfg)
    resolve = resolver_lookup(cfg)
    out: list[str] = []
    assert rotate(cfg, "good.test", selector="next", lookup=lambda n: resolve(n, "TXT"),
                  out=out.append) == 0
    out.clear()
    assert rotate(cfg, "good.test", lookup=lambda n: resolve(n, "TXT"), out=out.append) == 1
    assert out[0] == "not switched: next._domainkey.good.test. has no TXT record yet"
    assert out[1].startswith('  publish: next._domainkey.good.test. IN TXT "v=DKIM1; k=rsa; p=')
    assert [e.selector for e in store.entries("good.test") if e.status == "active"] == [
        "phigate", "ed1"]
