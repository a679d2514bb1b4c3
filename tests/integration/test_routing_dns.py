"""MX routing against a real authoritative DNS server (NSD) on loopback: preference order,
equal preferences, implicit MX, null MX (RFC 7505), NXDOMAIN, SERVFAIL, an unreachable or
silent nameserver, caching by the injected clock, transport entries by host name, and
delivery consequences (a null-MX recipient bounces at once; MX fallback on port 25).

Needs the Debian package ``nsd``; outside CI the module is skipped when it is missing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.routing import RouteError
from tests.conftest import Sink, SinkHandler, start_sink
from tests.integration.delivery_harness import (
    Harness,
    check_dsn_fields,
    harness_maker,
    make_message,
    start_custom_sink,
)
from tests.integration.dnsserver import (
    NSD_PACKAGE,
    BlackHoleDNS,
    NsdServer,
    ScriptedDNS,
    find_nsd,
)

pytestmark = pytest.mark.timeout(60)

SENDER = "alice@example.org"

ZONE = """\
$ORIGIN dnstest.
$TTL 60
@            IN SOA ns.dnstest. hostmaster.dnstest. 1 3600 600 86400 60
@            IN NS  ns.dnstest.
ns           IN A   127.0.0.1
; listed out of order; 5 < 10 < 20 as numbers but not as text
pref         IN MX  10 a.pref
pref         IN MX  5  b.pref
pref         IN MX  20 c.pref
a.pref       IN A   127.0.25.1
b.pref       IN A   127.0.25.2
c.pref       IN A   127.0.25.3
; two hosts of equal preference, then a backup
eq           IN MX  10 x.eq
eq           IN MX  10 y.eq
eq           IN MX  20 z.eq
x.eq         IN A   127.0.26.1
y.eq         IN A   127.0.26.2
z.eq         IN A   127.0.26.3
; an MX host with IPv4 and IPv6 addresses
dual         IN MX  10 mx.dual
mx.dual      IN A   127.0.27.1
mx.dual      IN AAAA ::1
; no MX: the domain's own address is the implicit MX
implicit     IN A   127.0.25.4
; RFC 7505 null MX
nullmx       IN MX  0 .
; exists, but no MX and no address
noaddr       IN TXT "v=spf1 -all"
; the preferred MX host has no address at all; the backup has one
partial      IN MX  10 gone.partial
partial      IN MX  20 ok.partial
ok.partial   IN A   127.0.28.1
; the only MX host lives in a zone that answers SERVFAIL
mxservfail   IN MX  10 mx.broken.example.
; a smart relay named in the transport map by host name
relay        IN A   127.0.0.1
; end-to-end MX fallback on port 25: nothing listens on mx1, a sink on mx2
fallback     IN MX  10 mx1.fallback
fallback     IN MX  20 mx2.fallback
mx1.fallback IN A   127.0.29.1
mx2.fallback IN A   127.0.29.2
; both MX hosts down
alldown      IN MX  10 mx1.alldown
alldown      IN MX  20 mx2.alldown
mx1.alldown  IN A   127.0.29.1
mx2.alldown  IN A   127.0.29.3
"""


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdServer]:
    if find_nsd() is None:
        msg = f"NSD is not installed (Debian package '{NSD_PACKAGE}')"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}: CI must install it")
        pytest.skip(f"{msg}; CI installs it")
    srv = NsdServer(tmp_path_factory.mktemp("nsd"), {"dnstest.": ZONE},
                    broken_zones=("broken.example",))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
async def harness_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Harness]]:
    async with harness_maker(tmp_path) as make:
        yield make


@pytest.fixture
def dns_h(harness_factory: Callable[..., Harness], nsd: NsdServer) -> Harness:
    return harness_factory(dns_port=nsd.port)


@pytest.fixture
def bounce_sink() -> Iterator[Sink]:
    s = start_sink()
    yield s
    s.stop()


def hops(route: object) -> list[tuple[str, str, int]]:
    return [(h.name, h.ip, h.port) for h in route.hops]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the Router


async def test_mx_records_in_preference_order(dns_h):
    route = await dns_h.router.route("pref.dnstest")
    assert route.source == "mx" and route.key == "mx:pref.dnstest"
    assert hops(route) == [("b.pref.dnstest", "127.0.25.2", 25),
                           ("a.pref.dnstest", "127.0.25.1", 25),
                           ("c.pref.dnstest", "127.0.25.3", 25)]


async def test_equal_preferences_come_first_in_varying_order(dns_h):
    orders = set()
    for _ in range(40):
        route = await dns_h.router.route("EQ.dnstest.")  # case and final dot do not matter
        names = [h.name for h in route.hops]
        assert set(names[:2]) == {"x.eq.dnstest", "y.eq.dnstest"}
        assert names[2:] == ["z.eq.dnstest"]
        orders.add(tuple(names[:2]))
        dns_h.clock.advance(61)  # past the 60 s TTL: a fresh lookup
    assert len(orders) == 2, "hosts of equal preference should be tried in random order"


async def test_mx_host_with_ipv4_and_ipv6(dns_h):
    route = await dns_h.router.route("dual.dnstest")
    assert sorted(hops(route)) == [("mx.dual.dnstest", "127.0.27.1", 25),
                                   ("mx.dual.dnstest", "::1", 25)]


async def test_implicit_mx_uses_the_domain_address(dns_h):
    route = await dns_h.router.route("implicit.dnstest")
    assert hops(route) == [("implicit.dnstest", "127.0.25.4", 25)]


async def test_mx_host_without_address_is_skipped(dns_h):
    route = await dns_h.router.route("partial.dnstest")
    assert hops(route) == [("ok.partial.dnstest", "127.0.28.1", 25)]


@pytest.mark.parametrize(("domain", "status"), [
    ("nullmx.dnstest", "5.1.10"),   # RFC 7505 null MX
    ("nx.dnstest", "5.1.2"),        # NXDOMAIN
    ("noaddr.dnstest", "5.1.2"),    # no MX, no address
])
async def test_permanent_route_errors(dns_h, domain, status):
    with pytest.raises(RouteError) as info:
        await dns_h.router.route(domain)
    assert info.value.permanent is True
    assert info.value.status == status


@pytest.mark.parametrize("domain", ["x.broken.example", "mxservfail.dnstest"])
async def test_servfail_is_temporary(dns_h, domain):
    with pytest.raises(RouteError) as info:
        await dns_h.router.route(domain)
    assert info.value.permanent is False
    assert info.value.status.startswith("4.")


async def test_unreachable_nameserver_is_temporary(harness_factory):
    h = harness_factory()  # the nameserver is 127.0.0.1 on a closed port
    with pytest.raises(RouteError) as info:
        await asyncio.wait_for(h.router.route("pref.dnstest"), 10)
    assert info.value.permanent is False and info.value.status.startswith("4.")


async def test_silent_nameserver_times_out_as_temporary(harness_factory):
    hole = BlackHoleDNS()
    try:
        h = harness_factory("dns.timeout=1s", dns_port=hole.port)
        started = time.monotonic()
        with pytest.raises(RouteError) as info:
            await asyncio.wait_for(h.router.route("pref.dnstest"), 15)
        assert info.value.permanent is False and info.value.status.startswith("4.")
        assert time.monotonic() - started < 8, "dns.timeout was not honoured"
    finally:
        hole.close()


async def test_no_mx_and_address_lookup_servfail_is_temporary(harness_factory):
    """No MX records (NOERROR, empty) and the address queries fail with SERVFAIL: that is a
    DNS failure, not proof that the domain has no address, so the mail must wait (4.4.3),
    not bounce (RFC 5321 5.1: a temporary DNS error is a temporary failure)."""
    dns_srv = ScriptedDNS({("flaky.test", "MX"): "NOERROR",
                           ("flaky.test", "A"): "SERVFAIL",
                           ("flaky.test", "AAAA"): "SERVFAIL"})
    try:
        h = harness_factory(dns_port=dns_srv.port)
        with pytest.raises(RouteError) as info:
            await asyncio.wait_for(h.router.route("flaky.test"), 10)
        assert ("flaky.test", "A") in dns_srv.queries
        assert info.value.permanent is False, \
            f"a SERVFAIL became a permanent failure: {info.value.status} {info.value.text}"
        assert info.value.status.startswith("4.")
    finally:
        dns_srv.close()


async def test_routes_are_cached_by_the_injected_clock(dns_h):
    first = await dns_h.router.route("pref.dnstest")
    # the nameserver goes away: within the TTL (60 s) the cached route still answers
    dns_h.router.resolver.port = 9  # discard: nothing answers DNS there
    dns_h.clock.advance(59)
    assert await dns_h.router.route("pref.dnstest") == first
    dns_h.clock.advance(2)
    with pytest.raises(RouteError) as info:
        await asyncio.wait_for(dns_h.router.route("pref.dnstest"), 10)
    assert info.value.permanent is False


# --------------------------------------------------------------------------- delivery


@pytest.mark.parametrize(("domain", "status"), [("nullmx.dnstest", "5.1.10"),
                                                ("nx.dnstest", "5.1.2")])
async def test_permanent_dns_failure_bounces_at_once(harness_factory, nsd, bounce_sink,
                                                     domain, status):
    h = harness_factory(transport={"example.org": bounce_sink.port}, dns_port=nsd.port)
    raw, msgid = make_message(to=f"bob@{domain}", body="BODY-MARKER-91 not to be returned\r\n")
    qid = h.store(SENDER, [f"bob@{domain}"], raw)
    await h.delivery.process(qid, "incoming")
    # decided on the first attempt: no deferral, no retry scheduled
    assert h.spool.find(qid) is None and h.status(qid) is None
    assert not h.events("message.deferred", qid)
    (bounced,) = h.events("delivery.bounced", qid)
    assert bounced["email.to.address"] == f"bob@{domain}"
    assert "destination.address" not in bounced  # no SMTP server was contacted
    h.clock.advance(7 * 86400)
    assert await h.delivery.run_due() == []
    (created,) = h.events("bounce.created")
    assert created["related.local_id"] == qid
    await h.delivery.drain()
    (b,) = bounce_sink.wait_for(1, timeout=5)
    assert b.rcpt_tos == [SENDER]
    assert f"Status: {status}".encode() in b.data
    assert f"Final-Recipient: rfc822; bob@{domain}".encode() in b.data
    assert msgid.encode() in b.data
    assert b"BODY-MARKER-91" not in b.data
    assert h.queued() == {}


async def test_dns_servfail_defers_without_bounce(harness_factory, nsd, bounce_sink):
    h = harness_factory(transport={"example.org": bounce_sink.port}, dns_port=nsd.port)
    raw, _ = make_message(to="bob@x.broken.example")
    qid = h.store(SENDER, ["bob@x.broken.example"], raw)
    await h.delivery.process(qid, "incoming")
    assert h.spool.find(qid) == "deferred"
    st = h.status(qid)
    assert st is not None
    (rs,) = st["recipients"]
    assert rs["state"] == "pending" and 400 <= rs["last_code"] < 500
    assert rs["last_reply"].startswith("4.4.3")
    assert not h.events("bounce.created")


async def test_transport_host_name_resolved_through_dns(harness_factory, nsd, sink):
    h = harness_factory(dns_port=nsd.port,
                        transport_hosts={"partner.test": f"relay.dnstest:{sink.port}"})
    raw, msgid = make_message(to="bob@partner.test")
    qid = h.store(SENDER, ["bob@partner.test"], raw)
    await h.delivery.process(qid, "incoming")
    (got,) = sink.wait_for(1, timeout=5)
    assert msgid.encode() in got.data
    (ev,) = h.events("delivery.delivered", qid)
    assert ev["destination.address"] == "relay.dnstest"
    assert ev["destination.ip"] == "127.0.0.1" and ev["destination.port"] == sink.port


def _port25_sink(host: str) -> Sink:
    try:
        return start_custom_sink(SinkHandler(), port=25, host=host)
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot listen on {host}:25 (MX delivery always uses port 25): {exc}")


def _closed(host: str, port: int = 25) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


async def test_mx_fallback_to_the_backup_host_on_port_25(harness_factory, nsd):
    if not _closed("127.0.29.1"):
        pytest.skip("something listens on 127.0.29.1:25")
    backup = _port25_sink("127.0.29.2")
    try:
        h = harness_factory(dns_port=nsd.port)
        raw, msgid = make_message(to="bob@fallback.dnstest")
        qid = h.store(SENDER, ["bob@fallback.dnstest"], raw)
        await h.delivery.process(qid, "incoming")
        (got,) = backup.wait_for(1, timeout=10)
        assert msgid.encode() in got.data and got.rcpt_tos == ["bob@fallback.dnstest"]
        (ev,) = h.events("delivery.delivered", qid)
        assert ev["destination.address"] == "mx2.fallback.dnstest"
        assert ev["destination.ip"] == "127.0.29.2" and ev["destination.port"] == 25
        assert h.queued() == {}
    finally:
        backup.stop()


async def test_all_mx_hosts_down_defers(harness_factory, nsd):
    if not (_closed("127.0.29.1") and _closed("127.0.29.3")):
        pytest.skip("something listens on 127.0.29.1:25 or 127.0.29.3:25")
    h = harness_factory(dns_port=nsd.port)
    raw, _ = make_message(to="bob@alldown.dnstest")
    qid = h.store(SENDER, ["bob@alldown.dnstest"], raw)
    await h.delivery.process(qid, "incoming")
    assert h.spool.find(qid) == "deferred"
    (ev,) = h.events("message.deferred", qid)
    assert ev["queue.attempt"] == 1
    assert not h.events("bounce.created")


async def test_null_mx_bounce_fields_follow_rfc3464_syntax(harness_factory, nsd, bounce_sink):
    """The reason for a routing failure is local (no SMTP reply): its Diagnostic-Code still
    needs a diagnostic-type, e.g. ``X-Phigate; 5.1.10 domain ... accepts no mail``."""
    h = harness_factory(transport={"example.org": bounce_sink.port}, dns_port=nsd.port)
    raw, _ = make_message(to="bob@nullmx.dnstest")
    qid = h.store(SENDER, ["bob@nullmx.dnstest"], raw)
    await h.delivery.process(qid, "incoming")
    await h.delivery.drain()
    (b,) = bounce_sink.wait_for(1, timeout=5)
    assert b"Diagnostic-Code:" in b.data
    check_dsn_fields(b.data)
