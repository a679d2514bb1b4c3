"""Outbound TLS enforcement through the running gateway, against real SMTP servers on loopback
with certificates from a test CA: static levels, MTA-STS (a real HTTPS policy server, records
from a DNS server on loopback) and DANE (TLSA records with the AD bit), fallback to the
portal, and that no PHI ever reaches a destination in clear. Synthetic data only."""

from __future__ import annotations

import hashlib
import http.server
import json
import smtplib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import GatewayProc, Sink, start_sink
from tests.integration.adns import AdDns, port25_free
from tests.integration.delivery_harness import SinkHandler, start_custom_sink

PHI = ("Referral for Patient: Jane Testperson, DOB 03/04/1971, MRN 00123456.\r\n"
       "Diagnosis: type 2 diabetes (E11.9), HbA1c 9.1%.\r\n")
PHI_VALUES = (b"Testperson", b"03/04/1971", b"00123456", b"E11.9")
CLEAN = "The cafeteria is closed on Friday; lunch moves to the atrium.\r\n"


def _send(gw: GatewayProc, to: str, body: str, subject: str = "update",
          extra: str = "") -> None:
    data = (f"From: alice@example.org\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}"
            f"Message-ID: <{id(body)}.{to}@example.org>\r\n\r\n{body}").encode()
    with smtplib.SMTP("127.0.0.1", gw.relay, timeout=30) as c:
        c.ehlo("client.test")
        assert not c.sendmail("alice@example.org", [to], data)


def _tls_ctx(ca: trustme.CA, *names: str, max_version: ssl.TLSVersion | None = None
             ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = max_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def _events(gw: GatewayProc, action: str, rcpt: str) -> list[dict[str, Any]]:
    return [e for e in gw.events() if e["event.action"] == action
            and e.get("email.to.address") in (rcpt, [rcpt])]


def _no_phi(sink: Sink) -> None:
    for m in sink.messages:
        for v in PHI_VALUES:
            assert v not in m.data


# --------------------------------------------------------------------------- static levels


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def static_world(gateway_factory, ca, tmp_path: Path) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    sinks = {
        "verified.test": start_sink(tls_context=_tls_ctx(ca, "127.0.0.1")),
        "wrongname.test": start_sink(tls_context=_tls_ctx(ca, "wrong.test")),
        "old.test": start_sink(tls_context=_tls_ctx(ca, "127.0.0.1",
                                                    max_version=ssl.TLSVersion.TLSv1_1)),
        "consumer.test": start_sink(tls_context=_tls_ctx(ca, "127.0.0.1")),
        "plain.test": start_sink(),
        "example.org": start_sink(),
    }
    policy = tmp_path / "tls_policy.yaml"
    policy.write_text("policies:\n  verified.test: verify\n  wrongname.test: verify\n"
                      "  consumer.test: portal\n")
    gw = gateway_factory("rules.enabled=true", f"tls.policy_file={policy}",
                         f"tls.ca_file={ca_file}",
                         transport={d: s.port for d, s in sinks.items()})
    yield {"gw": gw, "sinks": sinks}
    for s in sinks.values():
        s.stop()


def test_static_levels(static_world: dict[str, Any]) -> None:
    gw: GatewayProc = static_world["gw"]
    sinks: dict[str, Sink] = static_world["sinks"]

    # verify + a valid certificate: delivered over TLS 1.2+
    _send(gw, "ann@verified.test", PHI)
    got = sinks["verified.test"].wait_for(1)[0]
    assert got.tls and b"Testperson" in got.data
    ev = gw.wait_event(lambda e: e["event.action"] == "delivery.delivered"
                       and e["email.to.address"] == "ann@verified.test")
    assert ev["tls.required"] == "verify" and ev["tls.policy_source"] == "static"
    assert ev["tls.version"] in ("TLSv1.2", "TLSv1.3")

    # verify + a certificate for another name: the PHI goes to the portal
    _send(gw, "ben@wrongname.test", PHI)
    note = sinks["wrongname.test"].wait_for(1)[0]
    assert b"Secure message from" in note.data
    fb = gw.wait_event(lambda e: e["event.action"] == "tls.fallback"
                       and e["email.to.address"] == "ben@wrongname.test")
    assert "certificate" in fb["event.reason"]

    # a server that offers only TLS 1.0/1.1: the PHI goes to the portal, and the notice
    # (no PHI) is delivered opportunistically (in clear after the failed handshake)
    _send(gw, "cat@old.test", PHI)
    note = sinks["old.test"].wait_for(1)[0]
    assert b"Secure message from" in note.data and not note.tls
    fb = gw.wait_event(lambda e: e["event.action"] == "tls.fallback"
                       and e["email.to.address"] == "cat@old.test")
    assert "handshake" in fb["event.reason"]
    # mail without PHI to the same server is delivered (opportunistic)
    _send(gw, "cat@old.test", CLEAN)
    assert b"cafeteria" in sinks["old.test"].wait_for(2)[1].data

    # the admin's `portal` level: PHI never goes directly, even over good TLS
    _send(gw, "dan@consumer.test", PHI)
    note = sinks["consumer.test"].wait_for(1)[0]
    assert b"Secure message from" in note.data

    # no STARTTLS; a TLS-Required: No header (RFC 8689) does not lower PHI protection
    _send(gw, "eve@plain.test", PHI, extra="TLS-Required: No\r\n")
    assert b"Secure message from" in sinks["plain.test"].wait_for(1)[0].data
    # ... and the next PHI message to it skips the connection: the host is known plaintext
    _send(gw, "fay@plain.test", PHI)
    sinks["plain.test"].wait_for(2)
    fb = gw.wait_event(lambda e: e["event.action"] == "tls.fallback"
                       and e["email.to.address"] == "fay@plain.test")
    assert "known from an earlier connection" in fb["event.reason"]
    # clean mail to the plaintext-only host is delivered as ever
    _send(gw, "gil@plain.test", CLEAN)
    assert b"cafeteria" in sinks["plain.test"].wait_for(3)[2].data

    for domain in ("wrongname.test", "old.test", "consumer.test", "plain.test"):
        _no_phi(sinks[domain])

    # what an admin sees for a destination
    out = gw.cli("tls", "probe", "verified.test", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["policy"] == {"level": "verify", "source": "static", "testing": None}
    host = report["hosts"][0]
    assert host["starttls"] and host["protocol"] in ("TLSv1.2", "TLSv1.3")
    assert host["name_match"] and host["chain_valid"] and "not_after" in host
    out = gw.cli("tls", "probe", "wrongname.test")
    assert "name match: no" in out.stdout and "effective policy: verify" in out.stdout


# --------------------------------------------------------------------------- MTA-STS and DANE


class _StsHandler(http.server.BaseHTTPRequestHandler):
    policies: dict[str, str] = {}

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").split(":")[0]
        body = self.policies.get(host)
        if self.path != "/.well-known/mta-sts.txt" or body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def _spki_sha256(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@pytest.fixture
def published_world(gateway_factory, ca, tmp_path: Path) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    hosts = {"sts": "127.0.31.2", "stsbad": "127.0.31.3", "dane": "127.0.31.4",
             "danebad": "127.0.31.5", "https": "127.0.31.9", "org": "127.0.31.6"}
    for ip in hosts.values():
        if ip != hosts["https"] and not port25_free(ip):
            pytest.skip(f"cannot listen on {ip}:25 (MX delivery always uses port 25)")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # MX servers on port 25: certificates valid for their MX names
    dane_cert = ca.issue_cert("mx.dane.test")
    dane_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    dane_cert.configure_cert(dane_ctx)
    sinks = {
        "sts": start_custom_sink(SinkHandler(), 25, hosts["sts"],
                                 _tls_ctx(ca, "mx.sts.test")),
        "stsbad": start_custom_sink(SinkHandler(), 25, hosts["stsbad"],
                                    _tls_ctx(ca, "mx.stsbad.test")),
        "dane": start_custom_sink(SinkHandler(), 25, hosts["dane"], dane_ctx),
        "danebad": start_custom_sink(SinkHandler(), 25, hosts["danebad"],
                                     _tls_ctx(ca, "mx.danebad.test")),
        "org": start_custom_sink(SinkHandler(), 25, hosts["org"]),
    }
    # the MTA-STS policy server (HTTPS, certificates for mta-sts.DOMAIN)
    https_ctx = _tls_ctx(ca, "mta-sts.sts.test", "mta-sts.stsbad.test")
    _StsHandler.policies = {
        "mta-sts.sts.test": "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n",
        # the policy lists another MX than the one DNS gives: never deliver in clear
        "mta-sts.stsbad.test": "version: STSv1\nmode: enforce\nmx: *.elsewhere.test\n"
                               "max_age: 86400\n",
    }
    httpd = http.server.ThreadingHTTPServer((hosts["https"], 0), _StsHandler)
    httpd.socket = https_ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    good_tlsa = f"3 1 1 {_spki_sha256(dane_cert.cert_chain_pems[0].bytes())}"
    records = {
        ("sts.test", "MX"): ["10 mx.sts.test."], ("mx.sts.test", "A"): [hosts["sts"]],
        ("_mta-sts.sts.test", "TXT"): ['"v=STSv1; id=20261128"'],
        ("mta-sts.sts.test", "A"): [hosts["https"]],
        ("stsbad.test", "MX"): ["10 mx.stsbad.test."],
        ("mx.stsbad.test", "A"): [hosts["stsbad"]],
        ("_mta-sts.stsbad.test", "TXT"): ['"v=STSv1; id=1"'],
        ("mta-sts.stsbad.test", "A"): [hosts["https"]],
        ("dane.test", "MX"): ["10 mx.dane.test."], ("mx.dane.test", "A"): [hosts["dane"]],
        ("_25._tcp.mx.dane.test", "TLSA"): [good_tlsa],
        ("danebad.test", "MX"): ["10 mx.danebad.test."],
        ("mx.danebad.test", "A"): [hosts["danebad"]],
        ("_25._tcp.mx.danebad.test", "TLSA"): ["3 1 1 " + "00" * 32],
        ("example.org", "MX"): ["10 mx.example.org."],
        ("mx.example.org", "A"): [hosts["org"]],
    }
    dns_server = AdDns(records, secure={"_25._tcp.mx.dane.test", "_25._tcp.mx.danebad.test"})
    gw = gateway_factory("rules.enabled=true", f"tls.ca_file={ca_file}",
                         f"tls.mta_sts_port={httpd.server_address[1]}",
                         "dns.nameservers=[127.0.0.1]", f"dns.port={dns_server.port}")
    yield {"gw": gw, "sinks": sinks}
    httpd.shutdown()
    dns_server.close()
    for s in sinks.values():
        s.stop()


def test_mta_sts_and_dane(published_world: dict[str, Any]) -> None:
    gw: GatewayProc = published_world["gw"]
    sinks: dict[str, Sink] = published_world["sinks"]

    # MTA-STS enforce, MX in the policy, valid certificate: even clean mail is verified
    _send(gw, "ann@sts.test", CLEAN)
    assert sinks["sts"].wait_for(1)[0].tls
    ev = gw.wait_event(lambda e: e["event.action"] == "delivery.delivered"
                       and e["email.to.address"] == "ann@sts.test")
    assert ev["tls.required"] == "verify" and ev["tls.policy_source"] == "mta-sts"

    # MTA-STS enforce with the MX outside the policy: nothing is sent, not even the
    # portal notification (the destination's own policy binds it too)
    _send(gw, "ben@stsbad.test", PHI)
    ev = gw.wait_event(lambda e: e["event.action"] == "delivery.deferred"
                       and e["email.to.address"] == "ben@stsbad.test")
    assert ev["tls.policy_source"] == "mta-sts" and "MTA-STS" in ev["tls.failure"]
    assert sinks["stsbad"].messages == []

    # DANE: the certificate matches the TLSA record (validated: AD bit)
    _send(gw, "cat@dane.test", PHI)
    got = sinks["dane"].wait_for(1)[0]
    assert got.tls and b"Testperson" in got.data
    ev = gw.wait_event(lambda e: e["event.action"] == "delivery.delivered"
                       and e["email.to.address"] == "cat@dane.test")
    assert ev["tls.required"] == "dane" and ev["tls.policy_source"] == "dane"

    # DANE mismatch: not delivered in any form
    _send(gw, "dan@danebad.test", PHI)
    ev = gw.wait_event(lambda e: e["event.action"] == "delivery.deferred"
                       and e["email.to.address"] == "dan@danebad.test")
    assert "TLSA" in ev["tls.failure"]
    assert sinks["danebad"].messages == []


async def test_mta_sts_policies_refreshed_before_they_expire(ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """RFC 8461 5.1: a cached policy is fetched again once half its max_age has passed (in the
    background, without a message to send), so it never lapses while the domain keeps it; a
    failed refresh keeps the cached policy in force until it expires."""
    import dns.asyncresolver

    from gateway.tlspolicy import MtaSts

    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    served = {"mta-sts.refresh.test": "version: STSv1\nmode: testing\nmx: mx.refresh.test\n"
                                      "max_age: 1000\n"}
    _StsHandler.policies = served
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StsHandler)
    httpd.socket = _tls_ctx(ca, "mta-sts.refresh.test").wrap_socket(httpd.socket,
                                                                     server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    dns_server = AdDns({("_mta-sts.refresh.test", "TXT"): ['"v=STSv1; id=7"'],
                        ("mta-sts.refresh.test", "A"): ["127.0.0.1"]}, secure=set())
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], dns_server.port
    now = [1_000_000.0]
    sts = MtaSts(resolver, httpd.server_address[1], ca_file, lambda: now[0])
    try:
        first = await sts.policy("refresh.test")
        assert first is not None and first.mode == "testing" and first.fetched == now[0]
        # the domain moves to enforce under the same id (allowed: the id names the version
        # the sender cached, a refresh picks the change up)
        served["mta-sts.refresh.test"] = served["mta-sts.refresh.test"].replace(
            "testing", "enforce")
        now[0] += 400  # not due yet: nothing fetched
        assert await sts.refresh() == 0 and (await sts.policy("refresh.test")).mode == "testing"  # type: ignore[union-attr]
        now[0] += 200  # past half its max_age: the background step fetches it again
        assert await sts.refresh() == 1
        renewed = sts._cache["refresh.test"]
        assert renewed.mode == "enforce" and renewed.fetched == now[0]
        # the policy server gone: the refresh fails, the cached policy stays in force
        httpd.shutdown()
        httpd.server_close()
        now[0] += 600
        assert await sts.refresh() == 0
        assert (await sts.policy("refresh.test")) is renewed
        now[0] += 500  # expired: dropped
        assert await sts.refresh() == 0 and "refresh.test" not in sts._cache
    finally:
        dns_server.close()
