"""The TLS-capability cache shared through a real redis-server (the design's multi-node
default): what one node learns of an MX (no STARTTLS), another uses without a wasted
connection; Redis down, each node keeps its own memory and nothing fails."""

from __future__ import annotations

from gateway.routing import Hop, Route
from gateway.smtpclient import SmtpSender, Transaction
from gateway.tlspolicy import Requirement, SharedCapabilities
from tests.conftest import start_sink
from tests.redis_server import (  # noqa: F401  (fixtures)
    RedisServer,
    redis_module_fixture,
    redis_server_fixture,
)

MSG = b"From: a@example.org\r\nTo: b@plain.test\r\nSubject: x\r\n\r\nno PHI here\r\n"


def _node(url: str) -> tuple[SmtpSender, SharedCapabilities]:
    caps = SharedCapabilities(3600.0, url, timeout=0.5)
    return SmtpSender("node.test", 10.0, 30.0, 0.0, capabilities=caps), caps


async def test_one_node_learns_the_other_uses(redis_server: RedisServer) -> None:
    sink = start_sink()  # offers no STARTTLS
    try:
        route = Route("plain.test", "mx", (Hop("mx.plain.test", "127.0.0.1", sink.port),))
        strict = Requirement("encrypt", "static")
        a, caps_a = _node(redis_server.url)
        b, caps_b = _node(redis_server.url)
        [first] = await a.send(route, Transaction("a@example.org", ["b@plain.test"], MSG,
                                                  False, False, strict))
        assert first.tls_failure and "known from an earlier" not in first.tls_failure
        await caps_a.close()  # the record has reached Redis
        [second] = await b.send(route, Transaction("a@example.org", ["b@plain.test"], MSG,
                                                   False, False, strict))
        assert "known from an earlier connection" in second.tls_failure
        assert sink.handler.messages == []  # nothing travelled in clear
        # clean mail still goes (opportunistic), and the cache never blocks it
        [ok] = await b.send(route, Transaction("a@example.org", ["b@plain.test"], MSG,
                                               False, False))
        assert ok.code == 250 and len(sink.wait_for(1)) == 1
        await caps_b.close()

        # Redis gone: a fresh node learns by connecting, as without Redis, and fails nothing
        redis_server.stop()
        c, caps_c = _node(redis_server.url)
        [third] = await c.send(route, Transaction("a@example.org", ["b@plain.test"], MSG,
                                                  False, False, strict))
        assert third.tls_failure and "known from an earlier" not in third.tls_failure
        [fourth] = await c.send(route, Transaction("a@example.org", ["b@plain.test"], MSG,
                                                   False, False, strict))
        assert "known from an earlier connection" in fourth.tls_failure  # its own memory
        await caps_c.close()
    finally:
        sink.stop()
