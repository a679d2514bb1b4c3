"""The Redis backend against a real redis-server: the same limits as in process, shared by two
limiters (two gateway processes), and an outage answered as configured, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.audit import AuditLog
from gateway.ratelimit import RateLimiter, RedisBackend
from tests.redis_server import (  # noqa: F401  (fixtures)
    RedisServer,
    redis_module_fixture,
    redis_server_fixture,
)
from tests.unit.test_ratelimit import MONDAY, NO_LIMITS, STAFF, Clock, make_config, send


def limiter(tmp_path: Path, url: str, *sets: str, clock: Clock | None = None,
            name: str = "a") -> RateLimiter:
    cfg = make_config(tmp_path, f"ratelimit.redis={url}", *sets)
    audit = AuditLog(tmp_path / f"audit-{name}.jsonl", stdout=False)
    return RateLimiter(cfg, audit, clock or Clock())


def count_calls(backends: tuple[RedisBackend, ...], script: str) -> dict[str, int]:
    """Count the calls of one Lua script (``_take``, ``_record``) over several backends."""
    calls = {"n": 0}
    for be in backends:
        real = getattr(be, script)

        async def counted(*args: object, _s: object = real, **kw: object) -> object:
            calls["n"] += 1
            return await _s(*args, **kw)  # type: ignore[operator]

        setattr(be, script, counted)
    return calls


async def test_two_limiters_share_one_limit(tmp_path: Path, redis_server: RedisServer) -> None:
    clock = Clock()
    a = limiter(tmp_path, redis_server.url, STAFF, clock=clock, name="a")
    b = limiter(tmp_path, redis_server.url, STAFF, clock=clock, name="b")
    assert isinstance(a.backend, RedisBackend)
    replies = []
    for i in range(8):
        rl = a if i % 2 else b
        replies.append((await send(rl, f"Alice+{i}@example.org", ["x@dest.test"]))[1])
    assert replies[:5] == [None] * 5 and all(r and r.startswith("451 4.7.1") for r in replies[5:])
    clock.t += 60
    assert (await send(a, "alice@example.org", ["x@dest.test"]))[1] is None
    # usage as `limits show` sees it
    u = await b.usage("alice@example.org")
    used = {(x["scope"], x["metric"], x["window"]): x["used"] for x in u["limits"]}
    assert used[("sender", "messages", "minute")] == 1
    await a.close()
    await b.close()


async def test_baseline_shared_and_surge_flagged(tmp_path: Path,
                                                 redis_server: RedisServer) -> None:
    clock = Clock()
    a = limiter(tmp_path, redis_server.url, NO_LIMITS, clock=clock, name="a")
    b = limiter(tmp_path, redis_server.url, NO_LIMITS, clock=clock, name="b")
    for day in range(5):
        for hour in range(9, 17):
            for k in range(2):
                clock.t = MONDAY + day * 86400 + hour * 3600 + k * 900
                rl = a if k else b
                assert (await send(rl, "alice@example.org", ["c@example.org"]))[1] is None
    base = await a.backend.baseline("alice@example.org")
    assert base is not None and base.messages >= 70 and 1 < base.hod[12] < 2.5
    held_at = None
    for i in range(60):
        clock.t = MONDAY + 5 * 86400 + 12 * 3600 + i * 20
        _, _, held = await send(a if i % 2 else b, "alice@example.org", [f"p@n{i}.test"])
        if held:
            held_at = i
            break
    assert held_at is not None and held_at < 40
    assert await a.backend.senders() == ["alice@example.org"]
    await a.close()
    await b.close()


async def test_outage_fail_open_and_fail_closed(tmp_path: Path,
                                                redis_server: RedisServer) -> None:
    open_ = limiter(tmp_path, redis_server.url, STAFF, name="open")
    closed = limiter(tmp_path, redis_server.url, STAFF, "ratelimit.on_redis_error=closed",
                     name="closed")
    assert (await send(open_, "a@example.org", ["x@dest.test"]))[1] is None
    redis_server.stop()
    assert (await send(open_, "a@example.org", ["x@dest.test"]))[1] is None
    stage, reply, _ = await send(closed, "a@example.org", ["x@dest.test"])
    assert stage == "mail" and reply is not None and reply.startswith("451 4.3.0")
    ev = [json.loads(x) for x in (tmp_path / "audit-open.jsonl").read_text().splitlines()]
    alert = [e for e in ev if e["event.action"] == "ratelimit.alert"]
    assert alert and alert[0]["event.reason"] == "backend_unavailable"
    assert alert[0]["ratelimit.on_error"] == "open"
    redis_server.start()
    open_._down_until = 0.0  # skip the one-second breaker
    assert (await send(open_, "a@example.org", ["x@dest.test"]))[1] is None
    ev = [json.loads(x) for x in (tmp_path / "audit-open.jsonl").read_text().splitlines()]
    assert any(e["event.action"] == "ratelimit.backend_recovered" for e in ev)
    await open_.close()
    await closed.close()


async def test_leased_tokens_shared_by_two_processes(redis_server: RedisServer) -> None:
    """A busy bucket is leased in batches (fewer Redis calls), yet two processes together
    never take more than it holds; a bucket refilling slowly is never leased (exact)."""
    from gateway.ratelimit import LEASE_FOR, Bucket

    a = RedisBackend(redis_server.url, 1.0)
    b = RedisBackend(redis_server.url, 1.0)
    calls = count_calls((a, b), "_take")
    busy = Bucket("sender:x:messages:second", 100.0, 100.0, 1.0, 2)
    slow = Bucket("sender:x:messages:day", 1000.0, 1000.0 / 86400, 1.0, 86401)
    for _ in range(10):  # learn the demand: nothing leased yet
        assert (await a.take([busy, slow], 0.0)).denied == -1
        assert (await b.take([busy, slow], 0.0)).denied == -1
    assert calls["n"] == 20
    t = LEASE_FOR * 1.5  # a new period: the busy bucket is full again
    ok = 0
    while True:
        ra, rb = await a.take([busy], t), await b.take([busy], t)
        ok += (ra.denied == -1) + (rb.denied == -1)
        if ra.denied >= 0 and rb.denied >= 0:
            break
    assert ok == 100  # every token spent once, by one of the two
    assert calls["n"] < 20 + 100 // 3
    # the slow bucket: each take is one exact call, nothing held back
    calls["n"] = 0
    for _ in range(5):
        assert (await a.take([slow], t)).denied == -1
    assert calls["n"] == 5 and not a._leases.get(slow.key)
    await a.close()
    await b.close()


async def test_anomaly_counts_batched_yet_exact(redis_server: RedisServer) -> None:
    """Within a second a worker counts a sender's messages locally (one Redis call, not one per
    message), scores them against Redis's reading plus its own count, and sends the counts with
    the next reading or the flush: two workers' totals in Redis come out exact, and counts a
    failed call could not send are kept for the next one."""
    from gateway.anomaly import hour_of
    from gateway.ratelimit import LEASE_FOR

    a = RedisBackend(redis_server.url, 1.0)
    b = RedisBackend(redis_server.url, 1.0)
    calls = count_calls((a, b), "_record")
    t = MONDAY + 9 * 3600
    hour = hour_of(t)
    seen = []
    for i in range(40):  # 40 messages, 20 each, within 0.4 s
        be = a if i % 2 else b
        st, _ = await be.record("s@example.org", hour, [f"d{i % 4}.test"], 2.0, t + i * 0.01)
        seen.append(st.messages)
    assert calls["n"] == 2  # one reading per worker
    assert seen[0] == 1 and seen[1] == 2 and seen[-1] >= 21  # own count on top of the reading
    await a.flush(t + LEASE_FOR + 0.5)
    await b.flush(t + LEASE_FOR + 0.5)
    cur = await a.current("s@example.org", hour)
    assert (cur.messages, cur.domains, cur.phi_sum, cur.phi_sq) == (40, 4, 80.0, 160.0)
    # Redis gone: the counts stay with the worker and arrive once it is back
    t2 = t + 3 * LEASE_FOR
    redis_server.stop()
    try:
        await a.record("s@example.org", hour, ["late.test"], 1.0, t2)
        raise AssertionError("the record call reached a stopped server")
    except Exception as exc:
        assert "Connection" in type(exc).__name__ or isinstance(exc, OSError)
    redis_server.start()
    for _ in range(3):  # the first call after the restart may find the old connection closed
        try:
            await a.flush(t2 + 0.1, drop=True)
            break
        except Exception:
            continue
    c = RedisBackend(redis_server.url, 1.0)
    cur = await c.current("s@example.org", hour)
    # the test server keeps nothing across a restart: what is there is the kept message
    assert (cur.messages, cur.domains, cur.phi_sum) == (1, 1, 1.0)
    for be in (a, b, c):
        await be.close()


async def test_concurrent_sessions_share_one_refill(redis_server: RedisServer) -> None:
    """Sessions of one worker that run out of leased tokens together wait for one Redis call
    (and the tokens it leases) instead of each making its own."""
    import asyncio

    from gateway.ratelimit import LEASE_FOR, Bucket

    be = RedisBackend(redis_server.url, 1.0)
    calls = count_calls((be,), "_take")
    busy = Bucket("sender:y:messages:second", 1000.0, 1000.0, 1.0, 2)
    for _ in range(30):  # demand learned: the next call leases
        assert (await be.take([busy], 0.0)).denied == -1
    calls["n"] = 0
    t = LEASE_FOR * 1.5
    results = await asyncio.gather(*(be.take([busy], t) for _ in range(20)))
    assert all(r.denied == -1 for r in results)
    assert calls["n"] <= 2, calls  # 20 sessions at once: one refill (without sharing: 20)
    await be.close()


async def test_a_step_with_an_unleased_bucket_leases_nothing(redis_server: RedisServer) -> None:
    """A step that also takes from a bucket too slow to lease (a daily limit) goes to Redis
    every time: leasing from its other buckets then would hoard tokens nobody spends, and
    another worker sharing the busy bucket, well under the limit, would be refused."""
    from gateway.ratelimit import Bucket

    a = RedisBackend(redis_server.url, 1.0)
    b = RedisBackend(redis_server.url, 1.0)
    busy = Bucket("sender:z:messages:second", 100.0, 100.0, 1.0, 2)
    slow = Bucket("sender:z:messages:day", 10000.0, 10000.0 / 86400, 1.0, 86401)
    for i in range(150):  # 3 s: 50 a second from each worker against 100 a second
        now = i * 0.02
        assert (await a.take([busy, slow], now)).denied == -1, i
        assert (await b.take([busy], now + 0.01)).denied == -1, i
    assert not a._leases.get(busy.key)  # nothing hoarded
    await a.close()
    await b.close()
